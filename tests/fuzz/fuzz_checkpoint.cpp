// libFuzzer harness: the torch-free part of checkpoint loading (trainer/checkpoint_io.h): the manifest (COMPLETE)
// and its verification against the files, trainer_state.json, and model.safetensors. The input is split at the
// line "--bitforge-fuzz--" into COMPLETE, trainer_state.json and model.safetensors, written into a directory in
// /dev/shm (one per process), then read back as a checkpoint would be.
#include <cstdint>
#include <string>
#include <vector>

#include "export/safetensors.h"
#include "tests/fuzz/fuzz_files.h"
#include "trainer/checkpoint_io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = bitforge::fuzz::scratch_dir("ckpt");
  std::vector<std::string> parts = bitforge::fuzz::split_input(data, size, 3);
  parts.resize(3);
  bitforge::fuzz::put_file(dir, "COMPLETE", parts[0]);
  bitforge::fuzz::put_file(dir, "trainer_state.json", parts[1]);
  bitforge::fuzz::put_file(dir, "model.safetensors", parts[2]);
  try {
    bitforge::ckpt::verify_checkpoint_files(dir, true);
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
