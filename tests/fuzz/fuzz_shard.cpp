// libFuzzer harness: the token shard reader (data/shard.h) on arbitrary bytes (through a memfd path).
#include <cstdint>

#include "data/shard.h"
#include "tests/fuzz/fuzz_util.h"

using namespace bitforge::data;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  bitforge::fuzz::MemFile file(data, size);
  try {
    ShardReader r(file.path());
    const uint64_t n = r.size();
    if (n > 0) {
      auto s = r.slice(0, n < 16 ? n : 16);
      (void)s;
      (void)r[n - 1];
    }
    r.expect_vocab_size(r.vocab_size());
  } catch (const DataError&) {
  }
  return 0;
}
