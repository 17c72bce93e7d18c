// libFuzzer harness: the YAML config schema (config/config.h) on arbitrary text, then the round trip of an
// accepted config (to_yaml → parse_config must accept it again and give the same YAML).
#include <cstdint>
#include <string>

#include "config/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  bitforge::Config c;
  try {
    c = bitforge::parse_config(text, "fuzz.yaml");
  } catch (const bitforge::ConfigError&) {
    return 0;
  }
  const std::string y = bitforge::to_yaml(c);
  const std::string again = bitforge::to_yaml(bitforge::parse_config(y, "roundtrip.yaml"));  // must not throw
  if (again != y) __builtin_trap();  // the effective config must reload to the same config
  return 0;
}
