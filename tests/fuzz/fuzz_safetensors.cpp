// libFuzzer harness: the safetensors reader (export/safetensors.h) on arbitrary bytes.
#include <cstdint>

#include "export/safetensors.h"

using namespace bitforge::formats;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    SafetensorsFile f = SafetensorsFile::from_bytes(std::vector<uint8_t>(data, data + size), "fuzz.safetensors");
    uint64_t sum = 0;
    for (const auto& t : f.tensors()) {
      const ByteSpan b = f.bytes(t);
      if (b.size) sum += b.data[0] + b.data[b.size - 1];
      sum += t.numel();
    }
    for (const auto& [k, v] : f.metadata()) sum += k.size() + v.size();
    const ByteSpan d = f.data_section();
    sum += d.size;
    (void)sum;
  } catch (const FormatError&) {
  }
  return 0;
}
