#include "export/packed_format.h"

#include <zlib.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "export/bitpack.h"
#include "export/ggml_quants.h"

namespace bitforge::formats {

namespace {

const char* const kSuffixes[] = {".codes", ".scales", ".anchor_index", ".anchor_value"};

bool parse_quantizer(const std::string& s, WeightQuantizer* q) {
  auto v = weight_quantizer_from_string(s);
  if (!v || *v == WeightQuantizer::none) return false;  // a packed layer is binary or ternary
  *q = *v;
  return true;
}
bool parse_granularity(const std::string& s, ScaleGranularity* g) {
  auto v = scale_granularity_from_string(s);
  if (!v) return false;
  *g = *v;
  return true;
}

std::string shape_str(const std::vector<uint64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

template <typename T>
std::vector<uint8_t> as_bytes(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

}  // namespace


int64_t PackedLayer::row_bytes() const {
  return quantizer == WeightQuantizer::binary ? sign_row_bytes(in) : ternary2_row_bytes(in);
}
int64_t PackedLayer::n_groups() const { return group_size > 0 ? in / group_size : 0; }
int64_t PackedLayer::scale_rows() const { return granularity == ScaleGranularity::tensor ? 1 : out; }

// ---------------------------------------------------------------------------------------------------------
// pack / unpack
// ---------------------------------------------------------------------------------------------------------

PackedLayer pack_layer(WeightQuantizer quantizer, ScaleGranularity granularity, int64_t group_size, int64_t out, int64_t in,
                       const int8_t* q_codes, const float* scales, const int64_t* anchor_index,
                       const float* anchor_value, int64_t n_anchors) {
  auto fail = [](const std::string& m) { throw std::invalid_argument("pack_layer: " + m); };
  if (out < 1 || in < 1) fail("out = " + std::to_string(out) + ", in = " + std::to_string(in) + "; expected >= 1");
  if (granularity != ScaleGranularity::group) group_size = in;
  if (group_size < 1 || in % group_size != 0)
    fail("group_size " + std::to_string(group_size) + " does not divide in = " + std::to_string(in));
  if (n_anchors < 0 || (n_anchors > 0 && (!anchor_index || !anchor_value))) fail("anchors given without data");

  PackedLayer L;
  L.quantizer = quantizer;
  L.granularity = granularity;
  L.group_size = group_size;
  L.out = out;
  L.in = in;
  const int64_t total = out * in;
  for (int64_t k = 0; k < n_anchors; ++k) {
    if (anchor_index[k] < 0 || anchor_index[k] >= total)
      fail("anchor_index[" + std::to_string(k) + "] = " + std::to_string(anchor_index[k]) + " is out of range [0, " +
           std::to_string(total) + ")");
    if (k > 0 && anchor_index[k] <= anchor_index[k - 1])
      fail("anchor_index is not strictly increasing at " + std::to_string(k));
  }
  L.anchor_index.assign(anchor_index, anchor_index + n_anchors);
  L.anchor_value.assign(anchor_value, anchor_value + n_anchors);

  std::vector<int8_t> codes(q_codes, q_codes + total);
  const int8_t anchor_code = quantizer == WeightQuantizer::binary ? 1 : 0;
  for (int64_t k = 0; k < n_anchors; ++k) {
    const int v = codes[anchor_index[k]];
    if (v < -1 || v > 1)
      fail("code at anchor position " + std::to_string(anchor_index[k]) + " is " + std::to_string(v));
    codes[anchor_index[k]] = anchor_code;
  }
  try {
    L.codes = quantizer == WeightQuantizer::binary ? pack_signs(codes.data(), out, in) : pack_ternary_2bit(codes.data(), out, in);
  } catch (const std::invalid_argument& e) {
    fail(e.what());
  }

  const int64_t ns = L.scale_rows() * L.n_groups();
  L.scales.resize(ns);
  for (int64_t k = 0; k < ns; ++k) {
    if (!fp16_exact(scales[k]) || !std::isfinite(scales[k]))
      fail("scale[" + std::to_string(k) + "] = " + std::to_string(scales[k]) +
           " is not exactly representable in fp16 (training must round scales to fp16 values)");
    L.scales[k] = fp32_to_fp16(scales[k]);
  }
  return L;
}

void validate_layer(const PackedLayer& L, const std::string& where) {
  auto fail = [&](const std::string& m) { throw FormatError(where + ": " + m); };
  if (L.out < 1 || L.in < 1) fail("out = " + std::to_string(L.out) + ", in = " + std::to_string(L.in) + "; expected >= 1");
  if (L.granularity == ScaleGranularity::group) {
    if (L.group_size < 1 || L.in % L.group_size != 0)
      fail("group_size " + std::to_string(L.group_size) + " does not divide in = " + std::to_string(L.in));
  } else if (L.group_size != L.in) {
    fail("group_size " + std::to_string(L.group_size) + " for " + to_string(L.granularity) +
         " granularity; expected in = " + std::to_string(L.in));
  }
  const int64_t rb = L.row_bytes();
  if (static_cast<int64_t>(L.codes.size()) != L.out * rb)
    fail("codes hold " + std::to_string(L.codes.size()) + " bytes; expected out × row_bytes = " + std::to_string(L.out) +
         " × " + std::to_string(rb));
  if (static_cast<int64_t>(L.scales.size()) != L.scale_rows() * L.n_groups())
    fail("scales hold " + std::to_string(L.scales.size()) + " values; expected " + std::to_string(L.scale_rows()) + " × " +
         std::to_string(L.n_groups()));
  for (size_t k = 0; k < L.scales.size(); ++k)
    if ((L.scales[k] & 0x7c00u) == 0x7c00u) fail("scale " + std::to_string(k) + " is not finite");
  // Codes: no invalid 2-bit code 3, padding bits zero (files are canonical).
  const int64_t per_byte = L.quantizer == WeightQuantizer::binary ? 8 : 4;
  const int bits = L.quantizer == WeightQuantizer::binary ? 1 : 2;
  for (int64_t r = 0; r < L.out; ++r)
    for (int64_t b = 0; b < rb; ++b) {
      const uint8_t byte = L.codes[r * rb + b];
      for (int64_t s = 0; s < per_byte; ++s) {
        const int64_t col = b * per_byte + s;
        const int v = (byte >> (s * bits)) & ((1 << bits) - 1);
        if (col >= L.in && v != 0)
          fail("codes row " + std::to_string(r) + " has non-zero padding bits after column " + std::to_string(L.in - 1));
        if (col < L.in && bits == 2 && v == 3)
          fail("codes row " + std::to_string(r) + ", col " + std::to_string(col) + " holds the invalid 2-bit code 3");
      }
    }
  if (L.anchor_index.size() != L.anchor_value.size())
    fail("anchor_index has " + std::to_string(L.anchor_index.size()) + " entries but anchor_value has " +
         std::to_string(L.anchor_value.size()));
  const int64_t total = L.out * L.in;
  for (size_t k = 0; k < L.anchor_index.size(); ++k) {
    const int64_t a = L.anchor_index[k];
    if (a < 0 || a >= total)
      fail("anchor_index[" + std::to_string(k) + "] = " + std::to_string(a) + " is out of range [0, " +
           std::to_string(total) + ")");
    if (k > 0 && a <= L.anchor_index[k - 1])
      fail("anchor_index is not sorted and unique: entry " + std::to_string(k) + " (" + std::to_string(a) +
           ") follows " + std::to_string(L.anchor_index[k - 1]));
  }
}

std::vector<int8_t> unpack_codes(const PackedLayer& L) {
  validate_layer(L, "unpack_codes");
  return L.quantizer == WeightQuantizer::binary ? unpack_signs(L.codes.data(), L.codes.size(), L.out, L.in)
                                          : unpack_ternary_2bit(L.codes.data(), L.codes.size(), L.out, L.in);
}

std::vector<float> unpack_layer(const PackedLayer& L) {
  const std::vector<int8_t> codes = unpack_codes(L);
  std::vector<float> w(static_cast<size_t>(L.out * L.in));
  const int64_t ng = L.n_groups();
  for (int64_t r = 0; r < L.out; ++r) {
    const int64_t sr = L.scale_rows() == 1 ? 0 : r;
    for (int64_t c = 0; c < L.in; ++c) {
      const float s = fp16_to_fp32(L.scales[sr * ng + c / L.group_size]);
      w[r * L.in + c] = s * static_cast<float>(codes[r * L.in + c]);
    }
  }
  for (size_t k = 0; k < L.anchor_index.size(); ++k) w[L.anchor_index[k]] = L.anchor_value[k];
  return w;
}

// ---------------------------------------------------------------------------------------------------------
// base64
// ---------------------------------------------------------------------------------------------------------

static const char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string base64_encode(const uint8_t* d, size_t n) {
  std::string o;
  o.reserve((n + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    const uint32_t v = (uint32_t(d[i]) << 16) | (uint32_t(d[i + 1]) << 8) | d[i + 2];
    o += kB64[v >> 18];
    o += kB64[(v >> 12) & 63];
    o += kB64[(v >> 6) & 63];
    o += kB64[v & 63];
  }
  if (n - i == 1) {
    const uint32_t v = uint32_t(d[i]) << 16;
    o += kB64[v >> 18];
    o += kB64[(v >> 12) & 63];
    o += "==";
  } else if (n - i == 2) {
    const uint32_t v = (uint32_t(d[i]) << 16) | (uint32_t(d[i + 1]) << 8);
    o += kB64[v >> 18];
    o += kB64[(v >> 12) & 63];
    o += kB64[(v >> 6) & 63];
    o += '=';
  }
  return o;
}

std::vector<uint8_t> base64_decode(const std::string& s) {
  if (s.size() % 4 != 0) throw std::invalid_argument("base64: length " + std::to_string(s.size()) + " is not a multiple of 4");
  auto val = [&](char c, size_t pos) -> uint32_t {
    const char* p = std::strchr(kB64, c);
    if (c == '\0' || !p) throw std::invalid_argument("base64: invalid character at position " + std::to_string(pos));
    return static_cast<uint32_t>(p - kB64);
  };
  std::vector<uint8_t> o;
  o.reserve(s.size() / 4 * 3);
  for (size_t i = 0; i < s.size(); i += 4) {
    const bool last = i + 4 == s.size();
    const int pad = (s[i + 3] == '=') + (s[i + 2] == '=' && s[i + 3] == '=');
    if (pad && !last) throw std::invalid_argument("base64: padding before the end at position " + std::to_string(i));
    if (s[i + 2] == '=' && s[i + 3] != '=') throw std::invalid_argument("base64: malformed padding");
    uint32_t v = (val(s[i], i) << 18) | (val(s[i + 1], i + 1) << 12);
    if (pad < 2) v |= val(s[i + 2], i + 2) << 6;
    if (pad < 1) v |= val(s[i + 3], i + 3);
    o.push_back(static_cast<uint8_t>(v >> 16));
    if (pad < 2) o.push_back(static_cast<uint8_t>(v >> 8));
    if (pad < 1) o.push_back(static_cast<uint8_t>(v));
  }
  return o;
}

// ---------------------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------------------

namespace {

constexpr const char* kChecksumPrefix = "crc32+meta:";
constexpr const char* kLegacyChecksumPrefix = "crc32:";

/// zlib's crc32_z treats a null buffer as "return the initial value": an empty tensor (nullptr data) would reset
/// the running checksum. Empty chunks are skipped instead.
uLong crc_update(uLong crc, const uint8_t* p, size_t n) { return n == 0 ? crc : crc32_z(crc, p, n); }

uLong crc_metadata(uLong crc, const std::map<std::string, std::string>& md) {
  for (const auto& [k, v] : md) {
    if (k == "checksum") continue;
    const uint8_t zero = 0;
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(v.size()) >> (8 * i));
    crc = crc_update(crc, reinterpret_cast<const uint8_t*>(k.data()), k.size());
    crc = crc_update(crc, &zero, 1);
    crc = crc_update(crc, len, 8);
    crc = crc_update(crc, reinterpret_cast<const uint8_t*>(v.data()), v.size());
  }
  return crc;
}

std::string crc_text(const char* prefix, uLong crc) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%s%08lx", prefix, static_cast<unsigned long>(crc));
  return buf;
}

}  // namespace

std::string packed_checksum(const SafetensorsWriter& w) {
  uLong crc = crc32(0L, Z_NULL, 0);
  w.for_each_data_chunk([&](const uint8_t* p, size_t n) { crc = crc_update(crc, p, n); });
  return crc_text(kChecksumPrefix, crc_metadata(crc, w.metadata()));
}

SafetensorsWriter make_packed_writer(const PackedModel& m) {
  SafetensorsWriter w;
  nlohmann::json layers = nlohmann::json::object();
  for (const auto& [name, L] : m.layers) {
    validate_layer(L, "layer '" + name + "'");
    const uint64_t out = L.out, rb = L.row_bytes(), n = L.anchor_index.size();
    w.add(name + ".codes", Dtype::U8, {out, rb}, L.codes);
    w.add(name + ".scales", Dtype::F16, {uint64_t(L.scale_rows()), uint64_t(L.n_groups())}, as_bytes(L.scales));
    w.add(name + ".anchor_index", Dtype::I64, {n}, as_bytes(L.anchor_index));
    w.add(name + ".anchor_value", Dtype::F32, {n}, as_bytes(L.anchor_value));
    layers[name] = {{"quantizer", to_string(L.quantizer)}, {"granularity", to_string(L.granularity)},
                    {"group_size", L.group_size}, {"in", L.in}, {"out", L.out}};
  }
  for (const auto& [name, t] : m.tensors) {
    if (t.dtype != Dtype::BF16 && t.dtype != Dtype::F16 && t.dtype != Dtype::F32)
      throw std::invalid_argument("packed: tensor '" + name + "' is " + dtype_name(t.dtype) + "; expected BF16, F16 or F32");
    if (m.layers.count(name)) throw std::invalid_argument("packed: tensor '" + name + "' is also a quantized layer");
    w.add(name, t.dtype, t.shape, t.bytes);
  }
  w.set_metadata("format", kPackedFormatName);
  w.set_metadata("format_version", kPackedFormatVersion);
  w.set_metadata("config", m.config);
  w.set_metadata("tokenizer_kind", m.tokenizer_kind);
  w.set_metadata("tokenizer", base64_encode(m.tokenizer.data(), m.tokenizer.size()));
  w.set_metadata("layers", layers.dump());
  w.set_metadata("checksum", packed_checksum(w));
  return w;
}

void write_packed(const std::string& path, const PackedModel& model) { make_packed_writer(model).write(path); }

// ---------------------------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------------------------

PackedModel read_packed(const std::string& path) {
  SafetensorsFile f(path);
  return read_packed(f);
}

PackedModel read_packed(const SafetensorsFile& f) {
  const std::string& p = f.path();
  auto fail = [&](const std::string& m) { throw FormatError(p + ": " + m); };
  const auto& md = f.metadata();
  auto meta = [&](const char* key) -> const std::string& {
    auto it = md.find(key);
    if (it == md.end()) fail(std::string("__metadata__ has no '") + key + "'; expected a bitforge.packed file");
    return it->second;
  };
  if (meta("format") != kPackedFormatName)
    fail("__metadata__.format is '" + meta("format") + "'; expected '" + kPackedFormatName + "'");
  if (meta("format_version") != kPackedFormatVersion)
    fail("unknown format_version '" + meta("format_version") + "'; expected '" + kPackedFormatVersion + "'");
  {
    const auto data = f.data_section();
    const uLong crc = crc_update(crc32(0L, Z_NULL, 0), data.data, data.size);
    const std::string& recorded = meta("checksum");
    if (recorded.rfind(kChecksumPrefix, 0) == 0) {
      const std::string got = crc_text(kChecksumPrefix, crc_metadata(crc, md));
      if (recorded != got)
        fail("checksum mismatch: __metadata__.checksum is '" + recorded + "' but the data section and metadata have '" +
             got + "'");
    } else if (recorded.rfind(kLegacyChecksumPrefix, 0) == 0) {  // before metadata was covered
      const std::string got = crc_text(kLegacyChecksumPrefix, crc);
      if (recorded != got)
        fail("checksum mismatch: __metadata__.checksum is '" + recorded + "' but the data section has '" + got + "'");
    } else {
      fail("__metadata__.checksum is '" + recorded + "'; expected 'crc32+meta:' and 8 hex digits");
    }
  }
  PackedModel m;
  m.config = meta("config");
  m.tokenizer_kind = meta("tokenizer_kind");
  try {
    m.tokenizer = base64_decode(meta("tokenizer"));
  } catch (const std::invalid_argument& e) {
    fail(std::string("__metadata__.tokenizer is not valid base64: ") + e.what());
  }
  nlohmann::json layers;
  try {
    layers = nlohmann::json::parse(meta("layers"));
  } catch (const nlohmann::json::exception& e) {
    fail(std::string("__metadata__.layers is not valid JSON: ") + e.what());
  }
  if (!layers.is_object()) fail("__metadata__.layers is not a JSON object");

  std::set<std::string> used;
  for (auto it = layers.begin(); it != layers.end(); ++it) {
    const std::string& name = it.key();
    const std::string where = "layer '" + name + "'";
    const auto& e = it.value();
    if (!e.is_object()) fail(where + ": metadata entry is not an object");
    PackedLayer L;
    auto str_field = [&](const char* k) -> std::string {
      auto f2 = e.find(k);
      if (f2 == e.end() || !f2->is_string()) fail(where + ": metadata field '" + k + "' missing or not a string");
      return f2->get<std::string>();
    };
    auto int_field = [&](const char* k) -> int64_t {
      auto f2 = e.find(k);
      if (f2 == e.end() || !f2->is_number_integer() || f2->get<int64_t>() < 0)
        fail(where + ": metadata field '" + k + "' missing or not a non-negative integer");
      return f2->get<int64_t>();
    };
    if (!parse_quantizer(str_field("quantizer"), &L.quantizer))
      fail(where + ": quantizer '" + str_field("quantizer") + "'; expected binary or ternary");
    if (!parse_granularity(str_field("granularity"), &L.granularity))
      fail(where + ": granularity '" + str_field("granularity") + "'; expected tensor, channel or group");
    L.group_size = int_field("group_size");
    L.in = int_field("in");
    L.out = int_field("out");
    if (L.in < 1 || L.out < 1 || L.in > (int64_t{1} << 40) || L.out > (int64_t{1} << 40) ||
        L.in > (int64_t{1} << 62) / L.out)
      fail(where + ": in = " + std::to_string(L.in) + ", out = " + std::to_string(L.out) + " out of range");
    if (L.granularity == ScaleGranularity::group && (L.group_size < 1 || L.in % L.group_size != 0))
      fail(where + ": group_size " + std::to_string(L.group_size) + " does not divide in = " + std::to_string(L.in));

    auto tensor = [&](const char* suffix, Dtype dt, const std::vector<uint64_t>& shape) -> ByteSpan {
      const std::string tn = name + suffix;
      const TensorInfo* t = f.find(tn);
      if (!t) fail(where + ": missing tensor '" + tn + "'");
      used.insert(tn);
      if (t->dtype != dt)
        fail("tensor '" + tn + "' is " + dtype_name(t->dtype) + "; expected " + dtype_name(dt));
      if (!shape.empty() && t->shape != shape)
        fail("tensor '" + tn + "' has shape " + shape_str(t->shape) + "; expected " + shape_str(shape));
      if (shape.empty() && t->shape.size() != 1)
        fail("tensor '" + tn + "' has shape " + shape_str(t->shape) + "; expected one dimension");
      return f.bytes(*t);
    };
    const int64_t ng = L.granularity == ScaleGranularity::group ? L.in / L.group_size : 1;
    if (L.granularity != ScaleGranularity::group) {
      if (L.group_size != L.in)
        fail(where + ": group_size " + std::to_string(L.group_size) + " for " + to_string(L.granularity) +
             " granularity; expected in = " + std::to_string(L.in));
    }
    const ByteSpan codes = tensor(".codes", Dtype::U8, {uint64_t(L.out), uint64_t(L.row_bytes())});
    const ByteSpan scales = tensor(".scales", Dtype::F16, {uint64_t(L.scale_rows()), uint64_t(ng)});
    const ByteSpan ai = tensor(".anchor_index", Dtype::I64, {});
    const ByteSpan av = tensor(".anchor_value", Dtype::F32, {});
    if (ai.size / 8 != av.size / 4)
      fail(where + ": anchor_index has " + std::to_string(ai.size / 8) + " entries but anchor_value has " +
           std::to_string(av.size / 4));
    L.codes.assign(codes.data, codes.data + codes.size);
    L.scales.resize(scales.size / 2);
    if (scales.size) std::memcpy(L.scales.data(), scales.data, scales.size);
    L.anchor_index.resize(ai.size / 8);
    if (ai.size) std::memcpy(L.anchor_index.data(), ai.data, ai.size);
    L.anchor_value.resize(av.size / 4);
    if (av.size) std::memcpy(L.anchor_value.data(), av.data, av.size);
    validate_layer(L, p + ": " + where);
    m.layers.emplace(name, std::move(L));
  }

  for (const auto& t : f.tensors()) {
    if (used.count(t.name)) continue;
    for (const char* s : kSuffixes) {
      const std::string suf(s);
      if (t.name.size() > suf.size() && t.name.compare(t.name.size() - suf.size(), suf.size(), suf) == 0 &&
          layers.contains(t.name.substr(0, t.name.size() - suf.size())) == false)
        fail("tensor '" + t.name + "' looks like part of a quantized layer but __metadata__.layers has no '" +
             t.name.substr(0, t.name.size() - suf.size()) + "'");
    }
    if (t.dtype != Dtype::BF16 && t.dtype != Dtype::F16 && t.dtype != Dtype::F32)
      fail("tensor '" + t.name + "' is " + dtype_name(t.dtype) + "; expected BF16, F16 or F32 for an unquantized tensor");
    const ByteSpan b = f.bytes(t);
    m.tensors[t.name] = PackedTensor{t.dtype, t.shape, std::vector<uint8_t>(b.data, b.data + b.size)};
  }
  return m;
}

}  // namespace bitforge::formats
