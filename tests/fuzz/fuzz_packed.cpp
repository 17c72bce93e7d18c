// libFuzzer harness: the packed native model reader (export/packed_format.h) and the model metadata it carries
// (model_config_from_json, range-checked with the config schema) on arbitrary bytes.
#include <cstdint>

#include <nlohmann/json.hpp>

#include "export/model_export.h"
#include "export/packed_format.h"
#include "config/config.h"

using namespace bitforge::formats;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    SafetensorsFile f = SafetensorsFile::from_bytes(std::vector<uint8_t>(data, data + size), "fuzz.packed.safetensors");
    PackedModel m = read_packed(f);
    for (const auto& [name, L] : m.layers)
      if (L.out * L.in <= (1 << 20)) (void)unpack_layer(L);
    nlohmann::json cj = nlohmann::json::parse(m.config, nullptr, false);
    if (cj.is_object() && cj.contains("model")) (void)model_config_from_json(cj["model"]);
  } catch (const FormatError&) {
  }
  return 0;
}
