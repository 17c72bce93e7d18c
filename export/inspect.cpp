// Model-file inspection; contract in export/inspect.h.
#include "export/inspect.h"

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "export/gguf.h"
#include "export/packed_format.h"
#include "export/safetensors.h"

namespace bitforge::formats {
namespace {

nlohmann::json tensor_entry(const std::string& name, const std::string& type, const std::vector<uint64_t>& shape,
                            uint64_t params, uint64_t bytes) {
  return {{"name", name},
          {"type", type},
          {"shape", shape},
          {"params", params},
          {"bytes", bytes},
          {"bits_per_weight", params ? 8.0 * double(bytes) / double(params) : 0.0}};
}

std::string shape_str(const std::vector<uint64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

std::string gguf_value_str(const GgufValue& v) {
  switch (v.type) {
    case GgufType::STRING: return v.s.size() > 80 ? "\"" + v.s.substr(0, 77) + "...\"" : "\"" + v.s + "\"";
    case GgufType::ARRAY:
      return std::string("[") + gguf_type_name(v.elem_type) + " x " + std::to_string(v.elems.size()) + "]";
    case GgufType::FLOAT32:
    case GgufType::FLOAT64: {
      char b[64];
      std::snprintf(b, sizeof b, "%g", v.f);
      return b;
    }
    case GgufType::BOOL: return v.u ? "true" : "false";
    case GgufType::INT8:
    case GgufType::INT16:
    case GgufType::INT32:
    case GgufType::INT64: return std::to_string(v.i);
    default: return std::to_string(v.u);
  }
}

/// A GGUF value as JSON of its own type: strings, numbers and booleans as such; arrays as {"type":
/// "array[<element type>]", "length", "values" (when at most 64 elements)}.
nlohmann::json gguf_value_json(const GgufValue& v) {
  switch (v.type) {
    case GgufType::STRING: return v.s;
    case GgufType::ARRAY: {
      nlohmann::json a{{"type", std::string("array[") + gguf_type_name(v.elem_type) + "]"}, {"length", v.elems.size()}};
      if (v.elems.size() <= 64) {
        a["values"] = nlohmann::json::array();
        for (const auto& e : v.elems) a["values"].push_back(gguf_value_json(e));
      }
      return a;
    }
    case GgufType::FLOAT32:
    case GgufType::FLOAT64: return v.f;
    case GgufType::BOOL: return v.u != 0;
    case GgufType::INT8:
    case GgufType::INT16:
    case GgufType::INT32:
    case GgufType::INT64: return v.i;
    default: return v.u;
  }
}

/// Floating-point tensors are parameters; integer and boolean ones (a checkpoint's anchor indices, counters) are
/// bookkeeping: counted in bytes, not in parameters or bits per weight.
bool is_float_dtype(Dtype d) {
  return d == Dtype::F16 || d == Dtype::BF16 || d == Dtype::F32 || d == Dtype::F64 || d == Dtype::F8_E5M2 ||
         d == Dtype::F8_E4M3;
}

/// "3.25x smaller" / "2.00x larger": the file against FP16.
std::string vs_fp16(double fp16_over_file) {
  char b[64];
  if (fp16_over_file >= 1.0 || fp16_over_file <= 0.0)
    std::snprintf(b, sizeof b, "%.2fx smaller", fp16_over_file);
  else
    std::snprintf(b, sizeof b, "%.2fx larger", 1.0 / fp16_over_file);
  return b;
}

void finish_totals(nlohmann::json& j) {
  uint64_t params = 0, bytes = 0;
  for (const auto& t : j["tensors"]) {
    params += t["params"].get<uint64_t>();
    bytes += t["bytes"].get<uint64_t>();
  }
  j["total_params"] = params;
  j["tensor_bytes"] = bytes;
  j["bits_per_weight"] = params ? 8.0 * double(bytes) / double(params) : 0.0;
  j["fp16_bytes"] = params * 2;
  j["compression_vs_fp16"] = j["file_bytes"].get<uint64_t>()
                                 ? double(params * 2) / double(j["file_bytes"].get<uint64_t>())
                                 : 0.0;
}

nlohmann::json inspect_safetensors(const SafetensorsFile& f) {
  nlohmann::json j;
  j["path"] = f.path();
  j["file_bytes"] = f.file_size();
  j["tensors"] = nlohmann::json::array();
  const auto& md = f.metadata();
  auto it = md.find("format");
  if (it != md.end() && it->second == kPackedFormatName) {
    const PackedModel m = read_packed(f);  // full validation (checksum, layers)
    j["kind"] = kPackedFormatName;
    for (const auto& [name, L] : m.layers) {
      const uint64_t bytes = L.codes.size() + L.scales.size() * 2 + L.anchor_index.size() * 12;
      auto e = tensor_entry(name, std::string(to_string(L.quantizer)) + (L.quantizer == WeightQuantizer::binary ? " (1-bit)" : " (2-bit)"),
                            {uint64_t(L.out), uint64_t(L.in)}, uint64_t(L.out * L.in), bytes);
      e["granularity"] = to_string(L.granularity);
      e["group_size"] = L.group_size;
      e["anchors"] = L.anchor_index.size();
      j["tensors"].push_back(e);
    }
    for (const auto& [name, t] : m.tensors) {
      uint64_t n = 1;
      for (auto d : t.shape) n *= d;
      j["tensors"].push_back(tensor_entry(name, dtype_name(t.dtype), t.shape, n, t.bytes.size()));
    }
    nlohmann::json meta = {{"format", md.at("format")}, {"format_version", md.at("format_version")},
                           {"tokenizer_kind", m.tokenizer_kind}, {"tokenizer_bytes", m.tokenizer.size()},
                           {"checksum", md.at("checksum")}};
    try {
      meta["config"] = nlohmann::json::parse(m.config);
    } catch (...) {
      meta["config"] = m.config;
    }
    j["metadata"] = meta;
  } else {
    j["kind"] = "safetensors";
    for (const auto& t : f.tensors()) {
      auto e = tensor_entry(t.name, dtype_name(t.dtype), t.shape, is_float_dtype(t.dtype) ? t.numel() : 0,
                            t.data_end - t.data_begin);
      if (!is_float_dtype(t.dtype)) e["elements"] = t.numel();  // not a parameter (indices, counters)
      j["tensors"].push_back(e);
    }
    j["metadata"] = md;
  }
  finish_totals(j);
  return j;
}

nlohmann::json inspect_gguf(const GgufFile& g, uint64_t file_bytes, bool json) {
  nlohmann::json j;
  j["path"] = g.path();
  j["kind"] = "gguf";
  j["file_bytes"] = file_bytes;
  j["tensors"] = nlohmann::json::array();
  for (const auto& t : g.tensors()) {
    const auto* tr = ggml_type_traits(uint32_t(t.type));
    j["tensors"].push_back(tensor_entry(t.name, tr ? tr->name : "?", t.ne, t.numel(), t.nbytes));
  }
  nlohmann::json kv = nlohmann::json::object();
  for (const auto& [k, v] : g.kv()) kv[k] = json ? gguf_value_json(v) : nlohmann::json(gguf_value_str(v));
  j["metadata"] = kv;
  j["gguf_version"] = g.version();
  finish_totals(j);
  return j;
}

std::string render_table(const nlohmann::json& j) {
  std::ostringstream o;
  o << j["path"].get<std::string>() << ": " << j["kind"].get<std::string>() << "\n";
  if (j.contains("metadata") && j["metadata"].is_object()) {
    for (auto it = j["metadata"].begin(); it != j["metadata"].end(); ++it) {
      std::string v = it.value().is_string() ? it.value().get<std::string>() : it.value().dump();
      if (v.size() > 200) v = v.substr(0, 197) + "...";
      o << "  " << it.key() << " = " << v << "\n";
    }
  }
  char line[512];
  std::snprintf(line, sizeof line, "%-52s %-16s %-20s %12s %12s %8s\n", "tensor", "type", "shape", "params", "bytes", "bpw");
  o << line;
  for (const auto& t : j["tensors"]) {
    std::string type = t["type"].get<std::string>();
    if (t.contains("granularity")) {
      type += " " + t["granularity"].get<std::string>();
      if (t["granularity"] == "group") type += std::to_string(t["group_size"].get<int64_t>());
    }
    std::snprintf(line, sizeof line, "%-52s %-16s %-20s %12llu %12llu %8.3f%s\n", t["name"].get<std::string>().c_str(),
                  type.c_str(), shape_str(t["shape"].get<std::vector<uint64_t>>()).c_str(),
                  static_cast<unsigned long long>(t["params"].get<uint64_t>()),
                  static_cast<unsigned long long>(t["bytes"].get<uint64_t>()), t["bits_per_weight"].get<double>(),
                  t.contains("anchors") ? ("  anchors " + std::to_string(t["anchors"].get<uint64_t>())).c_str() : "");
    o << line;
  }
  std::snprintf(line, sizeof line,
                "total: %llu params in %zu tensors, %llu tensor bytes (%.3f bits/weight); file %llu bytes vs FP16 %llu "
                "bytes (%s)\n",
                static_cast<unsigned long long>(j["total_params"].get<uint64_t>()), j["tensors"].size(),
                static_cast<unsigned long long>(j["tensor_bytes"].get<uint64_t>()), j["bits_per_weight"].get<double>(),
                static_cast<unsigned long long>(j["file_bytes"].get<uint64_t>()),
                static_cast<unsigned long long>(j["fp16_bytes"].get<uint64_t>()),
                vs_fp16(j["compression_vs_fp16"].get<double>()).c_str());
  o << line;
  return o.str();
}

}  // namespace

std::string inspect_file(const std::string& path, bool json) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  char magic[4] = {0, 0, 0, 0};
  in.read(magic, 4);
  in.seekg(0, std::ios::end);
  const uint64_t size = static_cast<uint64_t>(in.tellg());
  in.close();
  nlohmann::json j;
  if (size >= 4 && std::string(magic, 4) == "GGUF") {
    GgufFile g(path);
    j = inspect_gguf(g, size, json);
  } else {
    SafetensorsFile f(path);  // throws FormatError when it is not a safetensors file either
    j = inspect_safetensors(f);
  }
  return json ? j.dump(2) + "\n" : render_table(j);
}

}  // namespace bitforge::formats
