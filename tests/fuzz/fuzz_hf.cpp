// libFuzzer harness: a Hugging Face checkpoint directory (trainer/hf_checkpoint.h): config.json through
// parse_hf_config (range-checked with the config schema), then the whole directory reader with that config.json
// and the rest of the input as model.safetensors.index.json. Split at the line "--bitforge-fuzz--".
#include <unistd.h>

#include <cstdint>
#include <string>

#include "tests/fuzz/fuzz_files.h"
#include "trainer/checkpoint_io.h"
#include "trainer/hf_checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = bitforge::fuzz::scratch_dir("hf");
  const std::vector<std::string> parts = bitforge::fuzz::split_input(data, size, 2);
  const std::string& config = parts[0];
  try {
    (void)bitforge::parse_hf_config(config, "config.json");
  } catch (const bitforge::HfCheckpointError&) {
  }
  bitforge::fuzz::put_file(dir, "config.json", config);
  ::unlink((dir + "/model.safetensors.index.json").c_str());
  if (parts.size() > 1) bitforge::fuzz::put_file(dir, "model.safetensors.index.json", parts[1]);
  try {
    (void)bitforge::read_hf_checkpoint(dir);
  } catch (const bitforge::HfCheckpointError&) {
  }
  return 0;
}
