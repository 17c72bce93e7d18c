#include "export/mapped_file.h"
#include "export/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <stdexcept>

namespace bitforge::formats {

namespace {

constexpr uint32_t kMaxDims = 4;        // GGML_MAX_DIMS
constexpr int kMaxArrayNesting = 8;     // arrays of arrays: bounded recursion on hostile input
constexpr uint32_t kDefaultAlignment = 32;

size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::UINT8: case GgufType::INT8: case GgufType::BOOL: return 1;
    case GgufType::UINT16: case GgufType::INT16: return 2;
    case GgufType::UINT32: case GgufType::INT32: case GgufType::FLOAT32: return 4;
    case GgufType::UINT64: case GgufType::INT64: case GgufType::FLOAT64: return 8;
    default: return 0;
  }
}
bool known_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::FLOAT64); }


// ---- writer helpers ----
void put(std::vector<uint8_t>& o, const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  o.insert(o.end(), b, b + n);
}
template <typename T>
void put_le(std::vector<uint8_t>& o, T v) {
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "GGUF writer assumes a little-endian host");
  put(o, &v, sizeof(T));
}
void put_str(std::vector<uint8_t>& o, const std::string& s) {
  put_le<uint64_t>(o, s.size());
  put(o, s.data(), s.size());
}
void put_value(std::vector<uint8_t>& o, const GgufValue& v) {
  switch (v.type) {
    case GgufType::UINT8: put_le<uint8_t>(o, static_cast<uint8_t>(v.u)); break;
    case GgufType::INT8: put_le<int8_t>(o, static_cast<int8_t>(v.i)); break;
    case GgufType::UINT16: put_le<uint16_t>(o, static_cast<uint16_t>(v.u)); break;
    case GgufType::INT16: put_le<int16_t>(o, static_cast<int16_t>(v.i)); break;
    case GgufType::UINT32: put_le<uint32_t>(o, static_cast<uint32_t>(v.u)); break;
    case GgufType::INT32: put_le<int32_t>(o, static_cast<int32_t>(v.i)); break;
    case GgufType::FLOAT32: put_le<float>(o, static_cast<float>(v.f)); break;
    case GgufType::BOOL: put_le<uint8_t>(o, v.u ? 1 : 0); break;
    case GgufType::STRING: put_str(o, v.s); break;
    case GgufType::ARRAY:
      put_le<uint32_t>(o, static_cast<uint32_t>(v.elem_type));
      put_le<uint64_t>(o, v.elems.size());
      for (const auto& e : v.elems) put_value(o, e);
      break;
    case GgufType::UINT64: put_le<uint64_t>(o, v.u); break;
    case GgufType::INT64: put_le<int64_t>(o, v.i); break;
    case GgufType::FLOAT64: put_le<double>(o, v.f); break;
  }
}
uint64_t pad_to(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

// ---- reader cursor ----
struct Cursor {
  const uint8_t* base;
  uint64_t size;
  uint64_t pos = 0;
  const std::string& path;

  [[noreturn]] void fail(uint64_t at, const std::string& msg) const {
    throw FormatError(path + ": at byte " + std::to_string(at) + ": " + msg);
  }
  void need(uint64_t n, const char* what) const {
    if (n > size - pos)
      fail(pos, std::string(what) + " needs " + std::to_string(n) + " bytes but only " + std::to_string(size - pos) +
                    " remain (file is " + std::to_string(size) + " bytes)");
  }
  template <typename T>
  T get(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, base + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }
  std::string str(const char* what) {
    const uint64_t at = pos;
    const uint64_t n = get<uint64_t>(what);
    if (n > size - pos)
      fail(at, std::string(what) + " string length " + std::to_string(n) + " runs past the end of the file (" +
                   std::to_string(size - pos) + " bytes remain)");
    std::string s(reinterpret_cast<const char*>(base + pos), n);
    pos += n;
    return s;
  }
  GgufValue value(GgufType t, int depth, const std::string& key) {
    GgufValue v;
    v.type = t;
    switch (t) {
      case GgufType::UINT8: v.u = get<uint8_t>("u8 value"); break;
      case GgufType::INT8: v.i = get<int8_t>("i8 value"); break;
      case GgufType::UINT16: v.u = get<uint16_t>("u16 value"); break;
      case GgufType::INT16: v.i = get<int16_t>("i16 value"); break;
      case GgufType::UINT32: v.u = get<uint32_t>("u32 value"); break;
      case GgufType::INT32: v.i = get<int32_t>("i32 value"); break;
      case GgufType::FLOAT32: v.f = get<float>("f32 value"); break;
      case GgufType::BOOL: {
        const uint64_t at = pos;
        v.u = get<uint8_t>("bool value");
        if (v.u > 1) fail(at, "bool value of '" + key + "' is " + std::to_string(v.u) + "; expected 0 or 1");
        break;
      }
      case GgufType::STRING: v.s = str("string value"); break;
      case GgufType::UINT64: v.u = get<uint64_t>("u64 value"); break;
      case GgufType::INT64: v.i = get<int64_t>("i64 value"); break;
      case GgufType::FLOAT64: v.f = get<double>("f64 value"); break;
      case GgufType::ARRAY: {
        const uint64_t at = pos;
        if (depth >= kMaxArrayNesting) fail(at, "arrays of '" + key + "' nested deeper than 8 levels");
        const uint32_t et = get<uint32_t>("array element type");
        if (!known_type(et)) fail(at, "array '" + key + "' has unknown element type " + std::to_string(et) + "; expected 0..12");
        v.elem_type = static_cast<GgufType>(et);
        const uint64_t n = get<uint64_t>("array length");
        // Minimum bytes per element: scalar size, 8 for a string length, 12 for a nested array header.
        const uint64_t min_elem = v.elem_type == GgufType::STRING ? 8 : v.elem_type == GgufType::ARRAY ? 12 : scalar_size(v.elem_type);
        uint64_t need_bytes = 0;
        if (__builtin_mul_overflow(n, min_elem, &need_bytes) || need_bytes > size - pos)
          fail(at, "array '" + key + "' of " + std::to_string(n) + " " + gguf_type_name(v.elem_type) +
                       " elements runs past the end of the file (" + std::to_string(size - pos) + " bytes remain)");
        v.elems.reserve(n);
        for (uint64_t k = 0; k < n; ++k) v.elems.push_back(value(v.elem_type, depth + 1, key));
        break;
      }
    }
    return v;
  }
};

}  // namespace

const char* gguf_type_name(GgufType t) {
  static const char* names[] = {"UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32",
                                "BOOL", "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64"};
  const auto i = static_cast<uint32_t>(t);
  return i < 13 ? names[i] : "UNKNOWN";
}

// ---------------------------------------------------------------------------------------------------------
// GgufValue
// ---------------------------------------------------------------------------------------------------------

#define BF_SCALAR(fn, T, TYPE, field) \
  GgufValue GgufValue::fn(T v) {      \
    GgufValue g;                      \
    g.type = GgufType::TYPE;          \
    g.field = v;                      \
    return g;                         \
  }
BF_SCALAR(u8, uint8_t, UINT8, u)
BF_SCALAR(i8, int8_t, INT8, i)
BF_SCALAR(u16, uint16_t, UINT16, u)
BF_SCALAR(i16, int16_t, INT16, i)
BF_SCALAR(u32, uint32_t, UINT32, u)
BF_SCALAR(i32, int32_t, INT32, i)
BF_SCALAR(u64, uint64_t, UINT64, u)
BF_SCALAR(i64, int64_t, INT64, i)
BF_SCALAR(f32, float, FLOAT32, f)
BF_SCALAR(f64, double, FLOAT64, f)
#undef BF_SCALAR

GgufValue GgufValue::boolean(bool v) {
  GgufValue g;
  g.type = GgufType::BOOL;
  g.u = v ? 1 : 0;
  return g;
}
GgufValue GgufValue::str(std::string v) {
  GgufValue g;
  g.type = GgufType::STRING;
  g.s = std::move(v);
  return g;
}
GgufValue GgufValue::array(GgufType elem_type, std::vector<GgufValue> elems) {
  for (const auto& e : elems)
    if (e.type != elem_type)
      throw std::invalid_argument(std::string("GgufValue::array: element of type ") + gguf_type_name(e.type) +
                                  " in an array of " + gguf_type_name(elem_type));
  GgufValue g;
  g.type = GgufType::ARRAY;
  g.elem_type = elem_type;
  g.elems = std::move(elems);
  return g;
}
GgufValue GgufValue::strings(const std::vector<std::string>& v) {
  std::vector<GgufValue> e;
  e.reserve(v.size());
  for (const auto& s : v) e.push_back(str(s));
  return array(GgufType::STRING, std::move(e));
}
GgufValue GgufValue::f32s(const std::vector<float>& v) {
  std::vector<GgufValue> e;
  for (float x : v) e.push_back(f32(x));
  return array(GgufType::FLOAT32, std::move(e));
}
GgufValue GgufValue::i32s(const std::vector<int32_t>& v) {
  std::vector<GgufValue> e;
  for (int32_t x : v) e.push_back(i32(x));
  return array(GgufType::INT32, std::move(e));
}

bool GgufValue::operator==(const GgufValue& o) const {
  if (type != o.type) return false;
  switch (type) {
    case GgufType::STRING: return s == o.s;
    case GgufType::ARRAY: return elem_type == o.elem_type && elems == o.elems;
    case GgufType::FLOAT32: return static_cast<float>(f) == static_cast<float>(o.f);
    case GgufType::FLOAT64: return f == o.f;
    case GgufType::INT8: case GgufType::INT16: case GgufType::INT32: case GgufType::INT64: return i == o.i;
    default: return u == o.u;
  }
}

uint64_t GgufTensorInfo::numel() const {
  uint64_t n = 1;
  for (uint64_t d : ne) n *= d;
  return n;
}

// ---------------------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------------------

void GgufWriter::set(const std::string& key, GgufValue v) {
  if (key == "general.alignment" &&
      (v.type != GgufType::UINT32 || v.u == 0 || (v.u & (v.u - 1)) != 0))
    throw std::invalid_argument("gguf: general.alignment must be a u32 power of two");
  for (auto& kv : kv_)
    if (kv.first == key) {
      kv.second = std::move(v);
      return;
    }
  kv_.emplace_back(key, std::move(v));
}

uint32_t GgufWriter::alignment() const {
  for (const auto& kv : kv_)
    if (kv.first == "general.alignment") return static_cast<uint32_t>(kv.second.u);
  return kDefaultAlignment;
}

void GgufWriter::add_tensor(const std::string& name, const std::vector<uint64_t>& ne, GgmlType type,
                            std::vector<uint8_t> data) {
  for (const auto& t : tensors_)
    if (t.info.name == name) throw std::invalid_argument("gguf: duplicate tensor name '" + name + "'");
  if (ne.empty() || ne.size() > kMaxDims)
    throw std::invalid_argument("gguf: tensor '" + name + "' has " + std::to_string(ne.size()) + " dims; expected 1..4");
  const GgmlTypeTraits* tr = ggml_type_traits(static_cast<uint32_t>(type));
  if (!tr) throw std::invalid_argument("gguf: tensor '" + name + "' has an unknown ggml type");
  if (ne[0] % static_cast<uint64_t>(tr->block_size) != 0)
    throw std::invalid_argument("gguf: tensor '" + name + "' row length " + std::to_string(ne[0]) +
                                " is not a multiple of the " + tr->name + " block size " + std::to_string(tr->block_size));
  uint64_t nbytes = ne[0] / tr->block_size * tr->type_size;
  for (size_t i = 1; i < ne.size(); ++i)
    if (__builtin_mul_overflow(nbytes, ne[i], &nbytes))
      throw std::invalid_argument("gguf: tensor '" + name + "' size overflows");
  if (nbytes != data.size())
    throw std::invalid_argument("gguf: tensor '" + name + "' has " + std::to_string(data.size()) + " bytes; " + tr->name +
                                " with these dims needs " + std::to_string(nbytes));
  GgufTensorInfo info;
  info.name = name;
  info.ne = ne;
  info.type = type;
  info.nbytes = nbytes;
  tensors_.push_back({std::move(info), std::move(data)});
}

std::vector<uint8_t> GgufWriter::serialize() const {
  auto kv = kv_;
  bool has_align = false;
  for (const auto& p : kv) has_align = has_align || p.first == "general.alignment";
  if (!has_align) kv.emplace_back("general.alignment", GgufValue::u32(kDefaultAlignment));
  const uint64_t align = alignment();

  std::vector<uint8_t> o;
  put(o, "GGUF", 4);
  put_le<uint32_t>(o, 3);
  put_le<uint64_t>(o, tensors_.size());
  put_le<uint64_t>(o, kv.size());
  for (const auto& [k, v] : kv) {
    put_str(o, k);
    put_le<uint32_t>(o, static_cast<uint32_t>(v.type));
    put_value(o, v);
  }
  uint64_t off = 0;
  for (const auto& t : tensors_) {
    put_str(o, t.info.name);
    put_le<uint32_t>(o, static_cast<uint32_t>(t.info.ne.size()));
    for (uint64_t d : t.info.ne) put_le<uint64_t>(o, d);
    put_le<uint32_t>(o, static_cast<uint32_t>(t.info.type));
    put_le<uint64_t>(o, off);
    off = pad_to(off + t.data.size(), align);
  }
  o.resize(pad_to(o.size(), align), 0);
  for (const auto& t : tensors_) {
    put(o, t.data.data(), t.data.size());
    o.resize(pad_to(o.size(), align), 0);
  }
  return o;
}

void GgufWriter::write(const std::string& path) const {
  const auto bytes = serialize();
  write_file_atomic(path, [&](std::FILE* f) {
    if (std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size())
      throw std::runtime_error(path + ".tmp: write failed: " + std::strerror(errno));
  });
}

// ---------------------------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------------------------

GgufFile::GgufFile(const std::string& path) : path_(path) {
  auto m = map_file_readonly(path);
  holder_ = m.holder;
  base_ = m.data;
  size_ = m.size;
  parse();
}

GgufFile GgufFile::from_bytes(std::vector<uint8_t> bytes, const std::string& label) {
  GgufFile f;
  f.path_ = label;
  auto buf = std::make_shared<std::vector<uint8_t>>(std::move(bytes));
  f.base_ = buf->data();
  f.size_ = buf->size();
  f.holder_ = buf;
  f.parse();
  return f;
}

void GgufFile::parse() {
  Cursor c{base_, size_, 0, path_};
  if (size_ < 4 || std::memcmp(base_, "GGUF", 4) != 0) {
    std::string got;
    for (uint64_t i = 0; i < std::min<uint64_t>(4, size_); ++i) {
      const char ch = static_cast<char>(base_[i]);
      got += (ch >= 32 && ch < 127) ? std::string(1, ch) : "\\x" + std::to_string(base_[i]);
    }
    c.fail(0, "bad magic '" + got + "'; expected 'GGUF'");
  }
  c.pos = 4;
  version_ = c.get<uint32_t>("version");
  if (version_ != 2 && version_ != 3)
    c.fail(4, "unsupported GGUF version " + std::to_string(version_) + "; expected 3 (or 2)");
  const uint64_t n_tensors = c.get<uint64_t>("tensor count");
  const uint64_t n_kv = c.get<uint64_t>("kv count");
  // Lower bounds: a tensor info takes at least 8 + 4 + 8 + 4 + 8 bytes, a KV pair 8 + 4 + 1.
  if (n_tensors > (size_ - c.pos) / 32)
    c.fail(8, "tensor count " + std::to_string(n_tensors) + " is more than the remaining " + std::to_string(size_ - c.pos) +
                  " bytes can hold (each tensor info needs at least 32 bytes)");
  if (n_kv > (size_ - c.pos) / 13)
    c.fail(16, "kv count " + std::to_string(n_kv) + " is more than the remaining " + std::to_string(size_ - c.pos) +
                   " bytes can hold (each pair needs at least 13 bytes)");

  std::set<std::string> keys;
  for (uint64_t k = 0; k < n_kv; ++k) {
    const uint64_t at = c.pos;
    std::string key = c.str("key");
    if (!keys.insert(key).second) c.fail(at, "duplicate key '" + key + "'");
    const uint64_t tat = c.pos;
    const uint32_t t = c.get<uint32_t>("value type");
    if (!known_type(t)) c.fail(tat, "key '" + key + "' has unknown value type " + std::to_string(t) + "; expected 0..12");
    GgufValue v = c.value(static_cast<GgufType>(t), 0, key);
    if (key == "general.alignment") {
      if (v.type != GgufType::UINT32 || v.u == 0 || (v.u & (v.u - 1)) != 0)
        c.fail(at, "general.alignment must be a non-zero power of two of type UINT32");
      alignment_ = static_cast<uint32_t>(v.u);
    }
    kv_.emplace_back(std::move(key), std::move(v));
  }

  std::set<std::string> names;
  for (uint64_t k = 0; k < n_tensors; ++k) {
    const uint64_t at = c.pos;
    GgufTensorInfo ti;
    ti.name = c.str("tensor name");
    if (!names.insert(ti.name).second) c.fail(at, "duplicate tensor name '" + ti.name + "'");
    const std::string where = "tensor '" + ti.name + "'";
    const uint64_t dat = c.pos;
    const uint32_t nd = c.get<uint32_t>("n_dims");
    if (nd < 1 || nd > kMaxDims) c.fail(dat, where + " has n_dims " + std::to_string(nd) + "; expected 1..4");
    uint64_t numel = 1;
    for (uint32_t d = 0; d < nd; ++d) {
      const uint64_t ne = c.get<uint64_t>("dimension");
      if (ne > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(numel, ne, &numel) ||
          numel > static_cast<uint64_t>(INT64_MAX))
        c.fail(dat, where + " dims overflow: the element count exceeds INT64_MAX");
      ti.ne.push_back(ne);
    }
    const uint64_t tat = c.pos;
    const uint32_t type = c.get<uint32_t>("ggml type");
    const GgmlTypeTraits* tr = ggml_type_traits(type);
    if (!tr) c.fail(tat, where + " has unknown ggml type " + std::to_string(type));
    ti.type = static_cast<GgmlType>(type);
    if (ti.ne[0] % static_cast<uint64_t>(tr->block_size) != 0)
      c.fail(dat, where + " row length " + std::to_string(ti.ne[0]) + " is not a multiple of the " + tr->name +
                      " block size " + std::to_string(tr->block_size));
    uint64_t nbytes = ti.ne[0] / tr->block_size * tr->type_size;
    for (size_t d = 1; d < ti.ne.size(); ++d)
      if (__builtin_mul_overflow(nbytes, ti.ne[d], &nbytes)) c.fail(dat, where + " byte size overflows 64 bits");
    ti.nbytes = nbytes;
    const uint64_t oat = c.pos;
    ti.offset = c.get<uint64_t>("tensor offset");
    if (ti.offset % alignment_ != 0)
      c.fail(oat, where + " offset " + std::to_string(ti.offset) + " is not a multiple of the alignment " +
                      std::to_string(alignment_));
    tensors_.push_back(std::move(ti));
  }

  // Data section starts at the next multiple of the alignment.
  data_offset_ = pad_to(c.pos, alignment_);
  const uint64_t data_size = data_offset_ <= size_ ? size_ - data_offset_ : 0;
  std::vector<const GgufTensorInfo*> order;
  for (const auto& t : tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      throw FormatError(path_ + ": tensor '" + t.name + "' data [" + std::to_string(t.offset) + ", +" +
                        std::to_string(t.nbytes) + ") is out of range of the " + std::to_string(data_size) +
                        "-byte data section at file offset " + std::to_string(data_offset_));
    order.push_back(&t);
  }
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < order.size(); ++i)
    if (order[i - 1]->offset + order[i - 1]->nbytes > order[i]->offset)
      throw FormatError(path_ + ": tensor '" + order[i]->name + "' at data offset " + std::to_string(order[i]->offset) +
                        " overlaps tensor '" + order[i - 1]->name + "' ending at " +
                        std::to_string(order[i - 1]->offset + order[i - 1]->nbytes));
}

const GgufValue* GgufFile::find(const std::string& key) const {
  for (const auto& kv : kv_)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

ByteSpan GgufFile::bytes(const GgufTensorInfo& t) const {
  return {base_ + data_offset_ + t.offset, static_cast<size_t>(t.nbytes)};
}

}  // namespace bitforge::formats
