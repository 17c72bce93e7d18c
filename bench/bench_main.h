// The entry point every benchmark program shares: `--help` / `-h` anywhere on the command line prints the
// program's usage on stdout and exits 0 before anything is loaded; an exception escaping the benchmark ends it with
// "<program>: error: <what>" on stderr and exit code 1 (never std::terminate / SIGABRT).
//   int main(int argc, char** argv) { return bitforge::bench::guarded_main(argc, argv, kUsage, run); }
#pragma once

#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

namespace bitforge::bench {

inline int guarded_main(int argc, char** argv, const char* usage, int (*body)(int, char**)) {
  std::string name = argc > 0 ? argv[0] : "bench";
  if (const auto slash = name.rfind('/'); slash != std::string::npos) name = name.substr(slash + 1);
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
      std::printf("usage: %s %s", name.c_str(), usage);
      return 0;
    }
  }
  try {
    return body(argc, argv);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s: error: %s\n", name.c_str(), e.what());
    return 1;
  } catch (...) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s: error: unknown exception\n", name.c_str());
    return 1;
  }
}

}  // namespace bitforge::bench
