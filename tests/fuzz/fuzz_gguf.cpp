// libFuzzer harness: the GGUF reader (export/gguf.h) on arbitrary bytes (through a memfd path).
#include <cstdint>

#include "export/gguf.h"
#include "tests/fuzz/fuzz_util.h"

using namespace bitforge::formats;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  bitforge::fuzz::MemFile file(data, size);
  try {
    GgufFile g(file.path());
    uint64_t sum = g.version() + g.alignment() + g.data_offset();
    for (const auto& [k, v] : g.kv()) sum += k.size();
    for (const auto& t : g.tensors()) {
      const ByteSpan b = g.bytes(t);
      if (b.size) sum += b.data[0] + b.data[b.size - 1];
      sum += t.numel();
    }
    (void)sum;
  } catch (const FormatError&) {
  }
  return 0;
}
