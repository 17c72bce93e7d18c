// libFuzzer harness: the torch-free part of checkpoint loading (trainer/checkpoint_io.h): the manifest (COMPLETE)
// and its verification against the files, trainer_state.json, and model.safetensors. The input is split at the
// line "--bitforge-fuzz--" into COMPLETE, trainer_state.json and model.safetensors, written into a directory in
// /dev/shm (one per process), then read back as a checkpoint would be.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "export/safetensors.h"
#include "trainer/checkpoint_io.h"

namespace {

const std::string& dir() {
  static const std::string d = [] {
    std::string t = "/dev/shm/bitforge-fuzz-ckpt-" + std::to_string(::getpid());
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
  std::vector<std::string> parts;
  size_t pos = 0;
  while (parts.size() < 2) {
    const size_t s = in.find(sep, pos);
    if (s == std::string::npos) break;
    parts.push_back(in.substr(pos, s - pos));
    pos = s + sep.size();
  }
  parts.push_back(in.substr(pos));
  parts.resize(3);
  put("COMPLETE", parts[0]);
  put("trainer_state.json", parts[1]);
  put("model.safetensors", parts[2]);
  try {
    bitforge::ckpt::verify_checkpoint_files(dir(), true);
  } catch (const bitforge::CheckpointError&) {
  }
  try {
    (void)bitforge::ckpt::parse_trainer_state(parts[1], "trainer_state.json");
  } catch (const bitforge::CheckpointError&) {
  }
  try {
    auto f = bitforge::formats::SafetensorsFile::from_bytes(std::vector<uint8_t>(parts[2].begin(), parts[2].end()),
                                                           "model.safetensors");
    (void)f.tensors().size();
  } catch (const bitforge::formats::FormatError&) {
  }
  return 0;
}
