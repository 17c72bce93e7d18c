// Crash-safe checkpoint file handling; contract in trainer/checkpoint_io.h. POSIX calls only (no
// std::filesystem: libtorch.so exports broken copies of some of its symbols).
#include "trainer/checkpoint_io.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <regex>

#include <fmt/format.h>

namespace bitforge::ckpt {
namespace {

std::string join_path(const std::string& a, const std::string& b) { return a.empty() ? b : a + "/" + b; }

std::string parent_of(const std::string& p) {
  const auto s = p.find_last_of('/');
  return s == std::string::npos ? "." : (s == 0 ? "/" : p.substr(0, s));
}

std::string base_of(const std::string& p) {
  const auto s = p.find_last_of('/');
  return s == std::string::npos ? p : p.substr(s + 1);
}

bool exists(const std::string& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0;
}

bool is_dir(const std::string& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

void fsync_path(const std::string& p, bool directory) {
  const int fd = ::open(p.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);  // best effort: durability across power loss; a kill -9 never needs it
  ::close(fd);
}

// Opens PATH read-only (never blocking on a FIFO) and fstat()s it into *ST; throws CheckpointError naming the
// path when it cannot be opened or is not a regular file.
int open_regular_file(const std::string& path, struct stat* st) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw CheckpointError(path + ": cannot open: " + std::strerror(errno));
  if (::fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
    ::close(fd);
    throw CheckpointError(path + ": not a regular file");
  }
  return fd;
}

std::string read_small_file(const std::string& path, size_t limit) {
  struct stat st {};
  const int fd = open_regular_file(path, &st);
  if (static_cast<uint64_t>(st.st_size) > limit) {
    ::close(fd);
    throw CheckpointError(fmt::format("{}: {} bytes, more than the {} bytes expected for this file", path,
                                      static_cast<uint64_t>(st.st_size), limit));
  }
  std::string s(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < s.size()) {
    const ssize_t r = ::read(fd, s.data() + got, s.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  ::close(fd);
  s.resize(got);
  return s;
}

bool process_alive(long pid) {
  if (pid <= 0) return false;
  if (pid == static_cast<long>(::getpid())) return false;  // ours, from an earlier save that threw
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

const std::regex& step_re() {
  static const std::regex re("step-(\\d{7})");
  return re;
}
const std::regex& temp_re() {
  static const std::regex re("(step-\\d{7})\\.(tmp|del|old)-(\\d+)(\\..*)?");  // (a chain: older naming)
  return re;
}

}  // namespace

void crash_point(const char* name) {
  static std::mutex mu;
  static std::map<std::string, int> hits;
  const char* spec = std::getenv("BITFORGE_CRASH_AT");
  if (!spec || !*spec) return;
  std::string s(spec), point = s;
  int n = 1;
  if (auto colon = s.rfind(':'); colon != std::string::npos && colon + 1 < s.size() &&
                                   s.find_first_not_of("0123456789", colon + 1) == std::string::npos) {
    point = s.substr(0, colon);
    n = std::atoi(s.c_str() + colon + 1);
  }
  if (point != name) return;
  std::lock_guard<std::mutex> lock(mu);
  if (++hits[point] == n) {
    std::fprintf(stderr, "bitforge: BITFORGE_CRASH_AT=%s reached: SIGKILL\n", spec);
    std::fflush(stderr);
    ::raise(SIGKILL);
  }
}

std::string file_xxh3(const std::string& path, uint64_t* size) {
  struct stat st {};
  const int fd = open_regular_file(path, &st);
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  std::vector<char> buf(1 << 20);
  uint64_t total = 0;
  for (;;) {
    const ssize_t r = ::read(fd, buf.data(), buf.size());
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      const int e = errno;
      ::close(fd);
      XXH3_freeState(state);
      throw CheckpointError(path + ": read failed: " + std::strerror(e));
    }
    if (r == 0) break;
    XXH3_64bits_update(state, buf.data(), static_cast<size_t>(r));
    total += static_cast<uint64_t>(r);
  }
  ::close(fd);
  const uint64_t h = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  if (size) *size = total;
  return fmt::format("{:016x}", h);
}

void write_manifest(const std::string& dir, const std::vector<std::string>& files, int64_t step) {
  nlohmann::json m = {{"format", "bitforge.checkpoint"}, {"version", 2}, {"step", step}, {"hash", "xxh3_64"}};
  nlohmann::json f = nlohmann::json::object();
  for (const auto& name : files) {
    uint64_t size = 0;
    const std::string path = join_path(dir, name);
    const std::string h = file_xxh3(path, &size);
    fsync_path(path, false);
    f[name] = {{"bytes", size}, {"xxh3", h}};
  }
  m["files"] = f;
  const std::string tmp = join_path(dir, std::string(kCompleteMarker) + ".tmp");
  const std::string text = m.dump(2) + "\n";
  std::FILE* fp = std::fopen(tmp.c_str(), "wb");
  if (!fp) throw CheckpointError(tmp + ": cannot open for writing: " + std::strerror(errno));
  const bool ok = std::fwrite(text.data(), 1, text.size(), fp) == text.size() && std::fflush(fp) == 0 &&
                  ::fsync(fileno(fp)) == 0;
  const int e = errno;
  std::fclose(fp);
  if (!ok) {
    std::remove(tmp.c_str());
    throw CheckpointError(tmp + ": write failed (disk full?): " + std::strerror(e));
  }
  if (std::rename(tmp.c_str(), join_path(dir, kCompleteMarker).c_str()) != 0)
    throw CheckpointError(tmp + ": cannot rename to " + kCompleteMarker + ": " + std::strerror(errno));
  fsync_path(dir, true);
}

nlohmann::json parse_manifest(const std::string& text, const std::string& path) {
  std::string trimmed = text;
  while (!trimmed.empty() && (trimmed.back() == '\n' || trimmed.back() == ' ' || trimmed.back() == '\r'))
    trimmed.pop_back();
  if (trimmed == "ok") return nlohmann::json::object();  // legacy marker: no checksums recorded
  nlohmann::json m = nlohmann::json::parse(text, nullptr, false);
  auto bad = [&](const std::string& what) {
    throw CheckpointError(path + ": " + what + "; expected the checkpoint manifest {\"format\": "
                                               "\"bitforge.checkpoint\", \"version\": 2, \"files\": {...}}");
  };
  if (m.is_discarded()) bad("not valid JSON");
  if (!m.is_object()) bad(std::string("a JSON ") + m.type_name());
  if (!m.contains("format") || m["format"] != "bitforge.checkpoint") bad("'format' is missing or wrong");
  if (!m.contains("version") || !m["version"].is_number_integer() || m["version"].get<int64_t>() != 2)
    bad("'version' is missing or not 2");
  if (!m.contains("files") || !m["files"].is_object()) bad("'files' is missing or not an object");
  for (auto it = m["files"].begin(); it != m["files"].end(); ++it) {
    const std::string& n = it.key();
    if (n.empty() || n == "." || n == ".." || n.find('/') != std::string::npos || n.find('\0') != std::string::npos ||
        n == kCompleteMarker)
      bad("file name '" + n + "' is not a plain file name of the checkpoint");
    const auto& e = it.value();
    if (!e.is_object() || !e.contains("bytes") || !e["bytes"].is_number_unsigned() || !e.contains("xxh3") ||
        !e["xxh3"].is_string() || e["xxh3"].get<std::string>().size() != 16 ||
        e["xxh3"].get<std::string>().find_first_not_of("0123456789abcdef") != std::string::npos)
      bad("entry for '" + n + "' is not {\"bytes\": <unsigned>, \"xxh3\": <16 hex digits>}");
  }
  return m;
}

void verify_checkpoint_files(const std::string& dir, bool hash) {
  const std::string marker = join_path(dir, kCompleteMarker);
  if (!exists(marker))
    throw CheckpointError(dir + ": incomplete checkpoint (no " + std::string(kCompleteMarker) +
                          " marker: its writing was interrupted); refusing to load it");
  const nlohmann::json m = parse_manifest(read_small_file(marker, 1 << 20), marker);
  if (m.empty()) {
    static std::once_flag warned;
    std::call_once(warned, [&] {
      spdlog::warn("{}: checkpoint written by an older bitforge (no checksums in {}); loading it unverified", dir,
                   kCompleteMarker);
    });
    return;
  }
  for (auto it = m["files"].begin(); it != m["files"].end(); ++it) {
    const std::string path = join_path(dir, it.key());
    const uint64_t want_bytes = it.value()["bytes"].get<uint64_t>();
    const std::string want = it.value()["xxh3"].get<std::string>();
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
      throw CheckpointError(fmt::format("{}: missing, but the checkpoint manifest {} lists it ({} bytes); the "
                                        "checkpoint is damaged",
                                        path, marker, want_bytes));
    if (!S_ISREG(st.st_mode)) throw CheckpointError(path + ": not a regular file");
    if (static_cast<uint64_t>(st.st_size) != want_bytes)
      throw CheckpointError(fmt::format("corrupt checkpoint: {}: {} bytes but the manifest records {} (truncated or "
                                        "overwritten; checksum not verified)",
                                        path, static_cast<uint64_t>(st.st_size), want_bytes));
    if (!hash) continue;
    const std::string got = file_xxh3(path);
    if (got != want)
      throw CheckpointError(fmt::format("corrupt checkpoint: {}: checksum mismatch: xxh3 {} but the manifest {} "
                                        "records {}",
                                        path, got, marker, want));
  }
}

nlohmann::json parse_trainer_state(const std::string& text, const std::string& path) {
  nlohmann::json st;
  try {
    st = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError(path + ": not valid JSON: " + e.what());
  }
  if (!st.is_object())
    throw CheckpointError(path + ": a JSON " + std::string(st.type_name()) +
                          "; expected an object {\"step\": N, \"tokens_seen\": ..., \"loader\": {...}}");
  auto it = st.find("step");
  if (it == st.end() || !it->is_number_integer() || it->get<int64_t>() < 0)
    throw CheckpointError(path + ": \"step\" is missing or not a non-negative integer");
  if (auto t = st.find("tokens_seen"); t != st.end() && (!t->is_number_integer() || t->get<int64_t>() < 0))
    throw CheckpointError(path + ": \"tokens_seen\" is not a non-negative integer");
  if (auto l = st.find("loader"); l != st.end() && !l->is_object())
    throw CheckpointError(path + ": \"loader\" is a JSON " + std::string(l->type_name()) + "; expected an object");
  return st;
}

void remove_tree(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    for (const auto& n : list_dir(path)) {
      remove_tree(join_path(path, n));
      crash_point("checkpoint:mid-delete");
    }
    ::rmdir(path.c_str());
  } else {
    ::unlink(path.c_str());
  }
}

void remove_checkpoint_dir(const std::string& dir) {
  if (!exists(dir)) return;
  // step-N.del-<pid>, also for a temporary (step-N.tmp-<pid> holding the old copy after a swap).
  std::string base = base_of(dir);
  if (const auto dot = base.find('.'); dot != std::string::npos) base = base.substr(0, dot);
  const std::string doomed = join_path(parent_of(dir), fmt::format("{}.del-{}", base, ::getpid()));
  remove_tree(doomed);
  if (std::rename(dir.c_str(), doomed.c_str()) != 0)
    throw CheckpointError(fmt::format("cannot rename {} to {} for deletion: {}", dir, doomed, std::strerror(errno)));
  fsync_path(parent_of(dir), true);
  crash_point("checkpoint:after-delete-rename");
  remove_tree(doomed);
}

void publish_directory(const std::string& tmp_dir, const std::string& final_dir) {
  const std::string parent = parent_of(final_dir);
  fsync_path(tmp_dir, true);
  if (!exists(final_dir)) {
    if (std::rename(tmp_dir.c_str(), final_dir.c_str()) != 0)
      throw CheckpointError(fmt::format("cannot rename {} to {}: {}", tmp_dir, final_dir, std::strerror(errno)));
    fsync_path(parent, true);
    return;
  }
  const char* no_exchange = std::getenv("BITFORGE_NO_RENAME_EXCHANGE");
  if (!(no_exchange && *no_exchange && std::string(no_exchange) != "0") &&
      ::renameat2(AT_FDCWD, tmp_dir.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
    // Atomic swap: final_dir is the new checkpoint, tmp_dir holds the old one.
    fsync_path(parent, true);
    crash_point("checkpoint:after-exchange");
    remove_checkpoint_dir(tmp_dir);
    return;
  }
  // No RENAME_EXCHANGE here: old aside, new in, old deleted. A kill between the renames leaves the old one
  // complete under *.old-<pid>; clean_stale_temporaries() puts it back.
  const std::string aside = fmt::format("{}.old-{}", final_dir, ::getpid());
  remove_tree(aside);
  if (std::rename(final_dir.c_str(), aside.c_str()) != 0)
    throw CheckpointError(fmt::format("cannot rename {} to {}: {}", final_dir, aside, std::strerror(errno)));
  fsync_path(parent, true);
  crash_point("checkpoint:after-aside");
  if (std::rename(tmp_dir.c_str(), final_dir.c_str()) != 0) {
    const int e = errno;
    std::rename(aside.c_str(), final_dir.c_str());
    throw CheckpointError(fmt::format("cannot rename {} to {}: {}", tmp_dir, final_dir, std::strerror(e)));
  }
  fsync_path(parent, true);
  crash_point("checkpoint:after-publish");
  remove_checkpoint_dir(aside);
}

int clean_stale_temporaries(const std::string& dir) {
  if (!is_dir(dir)) return 0;
  int n = 0;
  for (const auto& name : list_dir(dir)) {
    std::smatch m;
    if (!std::regex_match(name, m, temp_re())) continue;
    const long pid = std::atol(m[3].str().c_str());
    if (process_alive(pid)) continue;  // another writer at work
    const std::string path = join_path(dir, name), final_path = join_path(dir, m[1].str());
    if (m[2] == "old" && !m[4].matched && !exists(join_path(final_path, kCompleteMarker))) {
      bool intact = true;
      try {
        verify_checkpoint_files(path, true);
      } catch (const CheckpointError&) {
        intact = false;
      }
      if (intact) {
        remove_tree(final_path);
        if (std::rename(path.c_str(), final_path.c_str()) == 0) {
          spdlog::warn("restored checkpoint {} from {} (its replacement was interrupted by process {})", final_path,
                       name, pid);
          ++n;
          continue;
        }
      }
    }
    spdlog::warn("removing stale temporary checkpoint directory {} (left by process {}, which no longer runs)",
                 path, pid);
    remove_tree(path);
    ++n;
  }
  if (n) fsync_path(dir, true);
  return n;
}

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  for (const auto& name : list_dir(dir)) {
    std::smatch m;
    const std::string path = join_path(dir, name);
    if (!std::regex_match(name, m, step_re())) continue;
    if (!is_dir(path)) continue;
    if (!exists(join_path(path, kCompleteMarker))) {
      spdlog::warn("ignoring checkpoint without its {} marker: {}", kCompleteMarker, path);
      continue;
    }
    out.emplace_back(std::stoll(m[1]), path);
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return out;
}

}  // namespace bitforge::ckpt
