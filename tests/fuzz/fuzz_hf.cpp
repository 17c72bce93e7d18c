// libFuzzer harness: a Hugging Face checkpoint directory (trainer/hf_checkpoint.h): config.json through
// parse_hf_config (range-checked with the config schema), then the whole directory reader with that config.json
// and the rest of the input as model.safetensors.index.json. Split at the line "--bitforge-fuzz--".
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "trainer/checkpoint_io.h"
#include "trainer/hf_checkpoint.h"

namespace {

const std::string& dir() {
  static const std::string d = [] {
    std::string t = "/dev/shm/bitforge-fuzz-hf-" + std::to_string(::getpid());
    bitforge::ckpt::remove_tree(t);
    ::mkdir(t.c_str(), 0700);
    return t;
  }();
  return d;
}

void put(const std::string& name, const std::string& bytes) {
  std::FILE* f = std::fopen((dir() + "/" + name).c_str(), "wb");
  if (!f) return;
  if (!bytes.empty()) std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string in(reinterpret_cast<const char*>(data), size), sep = "\n--bitforge-fuzz--\n";
  const size_t s = in.find(sep);
  const std::string config = in.substr(0, s), index = s == std::string::npos ? "" : in.substr(s + sep.size());
  try {
    (void)bitforge::parse_hf_config(config, "config.json");
  } catch (const bitforge::HfCheckpointError&) {
  }
  put("config.json", config);
  ::unlink((dir() + "/model.safetensors.index.json").c_str());
  if (s != std::string::npos) put("model.safetensors.index.json", index);
  try {
    (void)bitforge::read_hf_checkpoint(dir());
  } catch (const bitforge::HfCheckpointError&) {
  }
  return 0;
}
