#include "export/mapped_file.h"
#include "export/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

namespace bitforge::formats {

namespace {

// safetensors/src/tensor.rs: MAX_HEADER_SIZE.
constexpr uint64_t kMaxHeaderSize = 100'000'000;

struct DtypeRow {
  Dtype dtype;
  const char* name;
  size_t size;
};
constexpr DtypeRow kDtypes[] = {
    {Dtype::BOOL, "BOOL", 1}, {Dtype::U8, "U8", 1},     {Dtype::I8, "I8", 1},     {Dtype::F8_E5M2, "F8_E5M2", 1},
    {Dtype::F8_E4M3, "F8_E4M3", 1}, {Dtype::I16, "I16", 2}, {Dtype::U16, "U16", 2}, {Dtype::F16, "F16", 2},
    {Dtype::BF16, "BF16", 2}, {Dtype::I32, "I32", 4},   {Dtype::U32, "U32", 4},   {Dtype::F32, "F32", 4},
    {Dtype::F64, "F64", 8},   {Dtype::I64, "I64", 8},   {Dtype::U64, "U64", 8},
};

std::string shape_str(const std::vector<uint64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

bool checked_numel(const std::vector<uint64_t>& shape, uint64_t* out) {
  uint64_t n = 1;
  for (uint64_t d : shape)
    if (__builtin_mul_overflow(n, d, &n)) return false;
  *out = n;
  return true;
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}


}  // namespace

size_t dtype_size(Dtype d) { return kDtypes[static_cast<int>(d)].size; }
const char* dtype_name(Dtype d) { return kDtypes[static_cast<int>(d)].name; }
bool parse_dtype(const std::string& s, Dtype* out) {
  for (const auto& r : kDtypes)
    if (s == r.name) {
      *out = r.dtype;
      return true;
    }
  return false;
}

uint64_t TensorInfo::numel() const {
  uint64_t n = 0;
  checked_numel(shape, &n);
  return n;
}

// ---------------------------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------------------------

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  auto m = map_file_readonly(path);
  holder_ = m.holder;
  base_ = m.data;
  size_ = m.size;
  parse();
}

SafetensorsFile SafetensorsFile::from_bytes(std::vector<uint8_t> bytes, const std::string& label) {
  SafetensorsFile f;
  f.path_ = label;
  auto buf = std::make_shared<std::vector<uint8_t>>(std::move(bytes));
  f.base_ = buf->data();
  f.size_ = buf->size();
  f.holder_ = buf;
  f.parse();
  return f;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

void SafetensorsFile::parse() {
  const std::string& p = path_;
  auto fail = [&](const std::string& msg) { throw FormatError(p + ": " + msg); };

  if (size_ < 8)
    fail("file is " + std::to_string(size_) + " bytes; expected at least 8 (the u64 header length)");
  const uint64_t n = read_u64_le(base_);
  if (n > kMaxHeaderSize)
    fail("header length " + std::to_string(n) + " at byte 0 exceeds the 100000000-byte limit");
  if (n > size_ - 8)
    fail("header length " + std::to_string(n) + " at byte 0 runs past the end of the file (" + std::to_string(size_) +
         " bytes); expected at most " + std::to_string(size_ - 8));
  header_len_ = n;
  const char* hdr = reinterpret_cast<const char*>(base_ + 8);

  // Parse, rejecting duplicate top-level keys (the reference's HashMap keeps the last one silently).
  std::set<std::string> seen;
  std::string duplicate;
  nlohmann::json::parser_callback_t cb = [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
    if (ev == nlohmann::json::parse_event_t::key && depth == 1) {
      const auto& k = parsed.get_ref<const std::string&>();
      if (!seen.insert(k).second && duplicate.empty()) duplicate = k;
    }
    return true;
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(hdr, hdr + n, cb);
  } catch (const nlohmann::json::exception& e) {
    fail("header (bytes 8.." + std::to_string(8 + n) + ") is not valid UTF-8 JSON: " + e.what());
  }
  if (!j.is_object()) fail(std::string("header is a JSON ") + j.type_name() + "; expected a JSON object");
  if (!duplicate.empty()) fail("tensor name '" + duplicate + "' appears twice in the header; expected unique names");

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (v.is_null()) continue;
      if (!v.is_object()) fail(std::string("__metadata__ is a JSON ") + v.type_name() + "; expected an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m->is_string())
          fail("__metadata__['" + m.key() + "'] is a JSON " + m->type_name() + "; expected a string");
        metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!v.is_object()) fail(where + " is a JSON " + v.type_name() + "; expected {dtype, shape, data_offsets}");
    TensorInfo t;
    t.name = name;
    auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string()) fail(where + ": missing or non-string \"dtype\"");
    if (!parse_dtype(dt->get<std::string>(), &t.dtype))
      fail(where + ": unknown dtype '" + dt->get<std::string>() +
           "'; expected one of F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL U16 U32 U64 F8_E5M2 F8_E4M3");
    auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array()) fail(where + ": missing or non-array \"shape\"");
    for (size_t i = 0; i < sh->size(); ++i) {
      const auto& d = (*sh)[i];
      if (!d.is_number_unsigned())
        fail(where + ": shape[" + std::to_string(i) + "] = " + d.dump() + "; expected a non-negative integer");
      t.shape.push_back(d.get<uint64_t>());
    }
    auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned())
      fail(where + ": \"data_offsets\" = " + (off == v.end() ? std::string("<missing>") : off->dump()) +
           "; expected [begin, end] of non-negative integers");
    t.data_begin = (*off)[0].get<uint64_t>();
    t.data_end = (*off)[1].get<uint64_t>();
    tensors_.push_back(std::move(t));
  }

  // Reference order: sort by offsets, then walk contiguously from 0.
  std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.data_begin != b.data_begin ? a.data_begin < b.data_begin : a.data_end < b.data_end;
  });
  const uint64_t data_size = size_ - 8 - n;
  uint64_t start = 0;
  for (const auto& t : tensors_) {
    const std::string where = "tensor '" + t.name + "' data_offsets [" + std::to_string(t.data_begin) + ", " +
                              std::to_string(t.data_end) + "]";
    if (t.data_end < t.data_begin) fail(where + ": end < begin");
    if (t.data_begin < start)
      fail(where + " overlap the previous tensor, which ends at " + std::to_string(start) +
           "; expected begin == " + std::to_string(start));
    if (t.data_begin > start)
      fail(where + " leave a hole: data bytes [" + std::to_string(start) + ", " + std::to_string(t.data_begin) +
           ") belong to no tensor; expected begin == " + std::to_string(start));
    uint64_t numel = 0, nbytes = 0;
    if (!checked_numel(t.shape, &numel))
      fail("tensor '" + t.name + "' shape " + shape_str(t.shape) + ": element count overflows 64 bits");
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(t.dtype)), &nbytes))
      fail("tensor '" + t.name + "' shape " + shape_str(t.shape) + " × " + dtype_name(t.dtype) +
           ": byte size overflows 64 bits");
    if (t.data_end - t.data_begin != nbytes)
      fail(where + " span " + std::to_string(t.data_end - t.data_begin) + " bytes; expected " + std::to_string(nbytes) +
           " (byte size mismatch: " + dtype_name(t.dtype) + " × shape " + shape_str(t.shape) + ")");
    if (t.data_end > data_size)
      fail(where + " run past the end of the data section (" + std::to_string(data_size) +
           " bytes, file truncated or offsets out of range)");
    start = t.data_end;
  }
  if (start != data_size)
    fail("tensors cover " + std::to_string(start) + " of " + std::to_string(data_size) + " data bytes; trailing bytes from file offset " +
         std::to_string(8 + n + start) + " are not covered by any tensor");
  for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& SafetensorsFile::at(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (!t) throw FormatError(path_ + ": no tensor '" + name + "'");
  return *t;
}

ByteSpan SafetensorsFile::bytes(const TensorInfo& t) const {
  return {base_ + 8 + header_len_ + t.data_begin, static_cast<size_t>(t.data_end - t.data_begin)};
}

ByteSpan SafetensorsFile::data_section() const {
  return {base_ + 8 + header_len_, static_cast<size_t>(size_ - 8 - header_len_)};
}

// ---------------------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------------------

void SafetensorsWriter::add(const std::string& name, Dtype dtype, const std::vector<uint64_t>& shape, const void* bytes,
                            size_t size) {
  const auto* p = static_cast<const uint8_t*>(bytes);
  add(name, dtype, shape, std::vector<uint8_t>(p, p + size));
}

void SafetensorsWriter::add(const std::string& name, Dtype dtype, const std::vector<uint64_t>& shape,
                            std::vector<uint8_t> bytes) {
  if (name.empty() || name == "__metadata__")
    throw std::invalid_argument("safetensors: invalid tensor name '" + name + "'");
  for (const auto& e : entries_)
    if (e.name == name) throw std::invalid_argument("safetensors: duplicate tensor name '" + name + "'");
  uint64_t numel = 0, nbytes = 0;
  if (!checked_numel(shape, &numel) || __builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(dtype)), &nbytes))
    throw std::invalid_argument("safetensors: tensor '" + name + "' size overflows");
  if (nbytes != bytes.size())
    throw std::invalid_argument("safetensors: tensor '" + name + "' has " + std::to_string(bytes.size()) +
                                " bytes; " + dtype_name(dtype) + " × " + shape_str(shape) + " needs " +
                                std::to_string(nbytes));
  entries_.push_back({name, dtype, shape, std::move(bytes)});
}

std::vector<const SafetensorsWriter::Entry*> SafetensorsWriter::ordered() const {
  std::vector<const Entry*> v;
  for (const auto& e : entries_) v.push_back(&e);
  // Reference `prepare`: descending dtype (alignment), then name.
  std::sort(v.begin(), v.end(), [](const Entry* a, const Entry* b) {
    return a->dtype != b->dtype ? a->dtype > b->dtype : a->name < b->name;
  });
  return v;
}

std::string SafetensorsWriter::header_json() const {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (!metadata_.empty()) {
    nlohmann::ordered_json md = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata_) md[k] = v;
    j["__metadata__"] = md;
  }
  uint64_t off = 0;
  for (const Entry* e : ordered()) {
    nlohmann::ordered_json t;
    t["dtype"] = dtype_name(e->dtype);
    t["shape"] = e->shape;
    t["data_offsets"] = {off, off + e->bytes.size()};
    off += e->bytes.size();
    j[e->name] = t;
  }
  std::string s;
  try {
    s = j.dump();  // strict: invalid UTF-8 in a name or metadata value throws
  } catch (const nlohmann::json::exception& ex) {
    throw std::invalid_argument(std::string("safetensors: header is not valid UTF-8: ") + ex.what());
  }
  s.append((8 - s.size() % 8) % 8, ' ');
  return s;
}

void SafetensorsWriter::for_each_data_chunk(const std::function<void(const uint8_t*, size_t)>& fn) const {
  for (const Entry* e : ordered()) fn(e->bytes.data(), e->bytes.size());
}

std::vector<uint8_t> SafetensorsWriter::serialize() const {
  const std::string h = header_json();
  size_t total = 8 + h.size();
  for_each_data_chunk([&](const uint8_t*, size_t s) { total += s; });
  std::vector<uint8_t> out(total);
  const uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
  std::memcpy(out.data() + 8, h.data(), h.size());
  size_t pos = 8 + h.size();
  for_each_data_chunk([&](const uint8_t* p, size_t s) {
    if (s) std::memcpy(out.data() + pos, p, s);
    pos += s;
  });
  return out;
}

void SafetensorsWriter::write(const std::string& path) const {
  const std::string h = header_json();
  write_file_atomic(path, [&](std::FILE* f) {
    uint8_t len[8];
    const uint64_t n = h.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
    bool ok = std::fwrite(len, 1, 8, f) == 8 && std::fwrite(h.data(), 1, h.size(), f) == h.size();
    for_each_data_chunk([&](const uint8_t* p, size_t s) { ok = ok && (s == 0 || std::fwrite(p, 1, s, f) == s); });
    if (!ok) throw std::runtime_error(path + ".tmp: write failed: " + std::strerror(errno));
  });
}

void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& body) {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw std::runtime_error(tmp + ": cannot create: " + std::strerror(errno));
  try {
    body(f);
    if (std::fflush(f) != 0 || fsync(fileno(f)) != 0)
      throw std::runtime_error(tmp + ": flush failed: " + std::strerror(errno));
  } catch (...) {
    std::fclose(f);
    std::remove(tmp.c_str());
    throw;
  }
  if (std::fclose(f) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error(tmp + ": close failed: " + std::strerror(errno));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot rename " + tmp + " to " + path + ": " + std::strerror(e));
  }
}

}  // namespace bitforge::formats
