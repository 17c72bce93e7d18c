// Crash-safe checkpoint file handling, without LibTorch (trainer/checkpoint.cpp builds on it; the fuzz harnesses
// use it directly).
//
// Manifest. The COMPLETE marker, written last into the temporary directory, is a JSON object:
//   {"format": "bitforge.checkpoint", "version": 2, "step": N, "hash": "xxh3_64",
//    "files": {"model.safetensors": {"bytes": B, "xxh3": "<16 lowercase hex>"}, ...}}
// listing every other file of the checkpoint with its size and XXH3-64 (libxxhash). Loading verifies every listed
// file (size, then hash) before reading anything. A marker holding "ok" (bitforge before this format) is accepted
// without verification, with a warning.
//
// Replacement. A checkpoint is written into step-N.tmp-<pid>/ and published by a rename. When step-N/ already
// exists (re-saving a finished run), the two directories are swapped atomically (renameat2 RENAME_EXCHANGE) and
// the old one, now under the temporary name, is deleted; on file systems without RENAME_EXCHANGE the old one is
// renamed to step-N.old-<pid>/ first, the new one renamed in, then the old one deleted. Deleting (replacement,
// pruning) first renames the directory to step-N.del-<pid>/, so a kill mid-delete never leaves a step-N/ with
// COMPLETE but missing files. At every instant the newest complete checkpoint (or the previous one) is intact.
//
// Cleanup. clean_stale_temporaries() removes *.tmp-<pid> and *.del-<pid> left by processes that no longer run,
// and puts a *.old-<pid> back under its step name when the kill came between the two renames.
//
// Crash points (testing). BITFORGE_CRASH_AT=<point>[:<n>] makes the process SIGKILL itself the n-th time (default
// the first) it reaches <point>; the kill test (tests/python/test_crash_safety.py) drives it.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace bitforge {

/// A checkpoint that is missing, incomplete, corrupt or does not match the model. The message names the
/// directory or file and what was expected.
class CheckpointError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace ckpt {

constexpr const char* kCompleteMarker = "COMPLETE";

/// SIGKILLs the process when BITFORGE_CRASH_AT names this point (see the file comment). No-op otherwise.
void crash_point(const char* name);

/// XXH3-64 of a file's bytes as 16 lowercase hex digits; `size` receives the byte count. Throws CheckpointError.
std::string file_xxh3(const std::string& path, uint64_t* size = nullptr);

/// Writes the manifest (COMPLETE) for `files` (names inside `dir`), fsyncs them, the marker and the directory.
void write_manifest(const std::string& dir, const std::vector<std::string>& files, int64_t step);

/// Parses a manifest's text; throws CheckpointError naming `path` and what is wrong. Returns an empty object for a
/// legacy marker ("ok").
nlohmann::json parse_manifest(const std::string& text, const std::string& path);

/// Checks a checkpoint directory against its manifest: COMPLETE present and well-formed, every listed file
/// present with the recorded size and (when `hash`) the recorded XXH3-64. Throws CheckpointError naming the file,
/// the expected and the found value.
void verify_checkpoint_files(const std::string& dir, bool hash = true);

/// Parses trainer_state.json: a JSON object whose "step" is a non-negative integer. Throws CheckpointError naming
/// `path`.
nlohmann::json parse_trainer_state(const std::string& text, const std::string& path);

/// Replaces (or creates) `final_dir` by the complete directory `tmp_dir` without ever leaving `final_dir` absent
/// and without a partially deleted copy under a checkpoint name (see the file comment).
void publish_directory(const std::string& tmp_dir, const std::string& final_dir);

/// Deletes a checkpoint directory: renamed to <name>.del-<pid> first, then removed.
void remove_checkpoint_dir(const std::string& dir);

/// Removes temporaries of dead writers in a checkpoints directory and restores an interrupted replacement.
/// Returns the number of entries removed or restored.
int clean_stale_temporaries(const std::string& checkpoints_dir);

/// step-NNNNNNN directories that hold a COMPLETE marker, newest first.
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& checkpoints_dir);

/// Deletes a directory tree (not std::filesystem::remove_all: libtorch exports a broken copy of it).
void remove_tree(const std::string& path);

}  // namespace ckpt
}  // namespace bitforge
