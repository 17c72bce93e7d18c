// Issue #21 item 6: bounded corpus reads. Regular files only (a FIFO or device is refused, not read forever),
// a size limit per corpus file, and non-regular entries of a text_dir corpus (FIFOs, dangling symlinks,
// symlink loops) reported by name instead of skipped silently.
#include <gtest/gtest.h>

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "data/corpus.h"

using namespace bitforge::data;

namespace {

std::string make_dir(const std::string& name) {
  std::string d = "/tmp/bitforge_limits_" + name + "_" + std::to_string(::getpid());
  std::string cmd = "rm -rf '" + d + "' && mkdir -p '" + d + "'";
  if (std::system(cmd.c_str()) != 0) throw std::runtime_error("mkdir failed");
  return d;
}

/// Captures spdlog output while alive.
struct LogCapture {
  std::ostringstream out;
  std::shared_ptr<spdlog::logger> previous = spdlog::default_logger();
  LogCapture() {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink));
  }
  ~LogCapture() { spdlog::set_default_logger(previous); }
};

template <typename F>
double seconds(F&& f) {
  auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

TEST(FileLimits, TextFileOnACharacterDeviceIsRefusedNotReadForever) {
  double s = seconds([] {
    try {
      read_text_file("/dev/zero");
      FAIL() << "/dev/zero was read as a corpus";
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find("/dev/zero"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("regular file"), std::string::npos) << e.what();
    }
  });
  EXPECT_LT(s, 5.0);
}

TEST(FileLimits, FifoCorpusIsRefusedWithoutBlocking) {
  const std::string d = make_dir("fifo");
  const std::string fifo = d + "/corpus.jsonl";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  for (int fmt = 0; fmt < 2; ++fmt) {
    double s = seconds([&] {
      try {
        if (fmt == 0) read_text_file(fifo);
        else read_jsonl(fifo);
        FAIL() << "a FIFO was accepted as a corpus file";
      } catch (const DataError& e) {
        EXPECT_NE(std::string(e.what()).find("FIFO"), std::string::npos) << e.what();
      }
    });
    EXPECT_LT(s, 5.0);
  }
}

TEST(FileLimits, PerFileSizeLimit) {
  const std::string d = make_dir("size");
  {
    std::ofstream f(d + "/big.txt");
    f << std::string(5000, 'a');
    std::ofstream j(d + "/big.jsonl");
    for (int i = 0; i < 100; ++i) j << "{\"text\": \"" << std::string(100, 'b') << "\"}\n";
  }
  ::setenv("BITFORGE_MAX_CORPUS_FILE_BYTES", "4096", 1);
  for (const char* name : {"big.txt", "big.jsonl"}) {
    try {
      if (std::string(name) == "big.txt") read_text_file(d + "/" + name);
      else read_jsonl(d + "/" + name);
      ADD_FAILURE() << name << " above the per-file limit was read";
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("4096"), std::string::npos) << e.what();
    }
  }
  try {
    read_text_dir(d, "*.txt");
    ADD_FAILURE() << "text_dir read a file above the per-file limit";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("big.txt"), std::string::npos) << e.what();
  }
  ::unsetenv("BITFORGE_MAX_CORPUS_FILE_BYTES");
  EXPECT_EQ(read_text_file(d + "/big.txt")[0].text.size(), 5000u);
}

TEST(FileLimits, TextDirReportsNonRegularEntriesByName) {
  const std::string d = make_dir("dir");
  { std::ofstream(d + "/a.txt") << "hello world"; }
  ASSERT_EQ(::mkfifo((d + "/fifo.txt").c_str(), 0600), 0);
  ASSERT_EQ(::symlink((d + "/missing-target").c_str(), (d + "/dangling.txt").c_str()), 0);
  ASSERT_EQ(::symlink((d + "/loop2.txt").c_str(), (d + "/loop1.txt").c_str()), 0);
  ASSERT_EQ(::symlink((d + "/loop1.txt").c_str(), (d + "/loop2.txt").c_str()), 0);
  LogCapture cap;
  std::vector<Document> docs;
  double s = seconds([&] { docs = read_text_dir(d, "*.txt"); });
  EXPECT_LT(s, 5.0);
  ASSERT_EQ(docs.size(), 1u);
  const std::string log = cap.out.str();
  for (const char* name : {"fifo.txt", "dangling.txt", "loop1.txt", "loop2.txt"})
    EXPECT_NE(log.find(name), std::string::npos) << name << " not reported; log:\n" << log;
  EXPECT_NE(log.find("FIFO"), std::string::npos) << log;
  EXPECT_NE(log.find("dangling"), std::string::npos) << log;
  EXPECT_NE(log.find("loop"), std::string::npos) << log;
}

#include "data/tokenizer.h"

// Found by tests/fuzz/fuzz_tokenizer.cpp: a byte tokenizer file whose "kind" is not a string ended the process with
// an uncaught json type_error instead of a DataError naming the file.
TEST(FuzzRegressions, ByteTokenizerFileWithNonStringKindIsADataError) {
  for (const char* text : {"{\"kind\":2}", "{\"kind\":\"byte\",\"version\":\"1\"}", "{\"kind\":null,\"version\":1}"}) {
    try {
      tokenizer_from_bytes("byte", text);
      ADD_FAILURE() << text << " was accepted";
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find("not a byte tokenizer"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(tokenizer_from_bytes("byte", "{\"kind\":\"byte\",\"version\":1}")->vocab_size(), 258);
}
