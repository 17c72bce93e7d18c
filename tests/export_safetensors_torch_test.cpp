// Torch adapter: round trip of every dtype, and interop both ways with the Python `safetensors` package
// (tests/fixtures/export/safetensors_interop.py) as an independent implementation. Also checks the plain
// fp16/bf16 converters of export/ggml_quants.h against c10::Half / c10::BFloat16.
#include "export/safetensors_torch.h"

#include <cstdlib>
#include <random>

#include "export/ggml_quants.h"
#include "tests/fixtures/export/test_util.h"

using bitforge::test::TempDir;

namespace {

bool python_env(std::string* py, std::string* script) {
  const char* p = std::getenv("BITFORGE_PYTHON");
  const char* s = std::getenv("BITFORGE_SOURCE_DIR");
  if (!p || !s || !*p || !*s) return false;
  *py = p;
  *script = std::string(s) + "/tests/fixtures/export/safetensors_interop.py";
  return true;
}

int run(const std::string& cmd) { return std::system(cmd.c_str()); }

std::map<std::string, torch::Tensor> sample() {
  torch::manual_seed(7);
  return {
      {"f32", torch::randn({3, 5})},
      {"f16", torch::randn({7}).to(torch::kHalf)},
      {"bf16", torch::randn({2, 3, 4}).to(torch::kBFloat16)},
      {"f64", torch::randn({2, 2}, torch::kDouble)},
      {"i64", torch::arange(-5, 7, torch::kLong).reshape({3, 4})},
      {"i32", torch::tensor({INT32_MIN, INT32_MAX, 0}, torch::kInt)},
      {"i16", torch::tensor({-32768, 32767}, torch::kShort)},
      {"i8", torch::tensor({-128, 0, 127}, torch::kChar)},
      {"u8", torch::arange(0, 256, 37, torch::kByte)},
      {"bool", torch::tensor({true, false, true})},
      {"u16", torch::tensor({0, 65535}, torch::kInt).to(torch::kUInt16)},
      {"scalar", torch::tensor(3.5f)},
      {"empty", torch::zeros({0, 4})},
      {"f8", torch::tensor({0.5f, -2.0f}).to(torch::kFloat8_e4m3fn)},
  };
}

}  // namespace

TEST(ExportSafetensorsTorch, RoundTripEveryDtype) {
  TempDir d;
  auto t = sample();
  t["noncontig"] = torch::randn({4, 6}).t();  // made contiguous on save
  const std::string p = d.file("t.safetensors");
  bitforge::safetensors::save(p, t, {{"k", "v"}});
  std::map<std::string, std::string> md;
  const auto r = bitforge::safetensors::load(p, &md);
  EXPECT_EQ(md.at("k"), "v");
  ASSERT_EQ(r.size(), t.size());
  for (const auto& [k, v] : t) {
    const auto& x = r.at(k);
    EXPECT_EQ(x.scalar_type(), v.scalar_type()) << k;
    EXPECT_EQ(x.sizes(), v.sizes()) << k;
    EXPECT_TRUE(x.device().is_cpu());
    // Compare bytes (works for every dtype, including uint16 and float8).
    auto a = x.contiguous().view({-1}).view(torch::kByte), b = v.contiguous().view({-1}).view(torch::kByte);
    if (v.numel() && v.dim() > 0) {
      EXPECT_TRUE(torch::equal(a, b)) << k;
    }
    if (v.dim() == 0) {
      EXPECT_EQ(x.item<float>(), v.item<float>());
    }
  }
  EXPECT_THROW(bitforge::safetensors::save(p, {{"c", torch::zeros({2}, torch::kComplexFloat)}}), std::invalid_argument);
  EXPECT_THROW(bitforge::safetensors::save(p, {{"u", torch::Tensor()}}), std::invalid_argument);
}

TEST(ExportSafetensorsTorch, ReadsFileWrittenByPythonSafetensors) {
  std::string py, script;
  if (!python_env(&py, &script)) GTEST_SKIP() << "BITFORGE_PYTHON and BITFORGE_SOURCE_DIR must both be set (tests/CMakeLists.txt passes them to ctest)";
  TempDir d;
  const std::string p = d.file("from_python.safetensors");
  ASSERT_EQ(run("'" + py + "' '" + script + "' write '" + p + "'"), 0);
  std::map<std::string, std::string> md;
  const auto t = bitforge::safetensors::load(p, &md);
  EXPECT_EQ(md.at("producer"), "python");
  EXPECT_EQ(md.at("note"), "héllo");
  ASSERT_EQ(t.size(), 12u);
  EXPECT_EQ(t.at("f16").scalar_type(), torch::kHalf);
  EXPECT_EQ(t.at("bf16").sizes(), (std::vector<int64_t>{2, 3, 4}));
  EXPECT_TRUE(torch::equal(t.at("i64"), torch::arange(-5, 7, torch::kLong).reshape({3, 4})));
  EXPECT_TRUE(torch::equal(t.at("i32"), torch::tensor({INT32_MIN, INT32_MAX, 0}, torch::kInt)));
  EXPECT_TRUE(torch::equal(t.at("bool"), torch::tensor({true, false, true})));
  EXPECT_TRUE(torch::equal(t.at("u8"), torch::arange(0, 256, 37, torch::kByte)));
  EXPECT_EQ(t.at("scalar").dim(), 0);
  EXPECT_EQ(t.at("scalar").item<float>(), 3.5f);
  EXPECT_EQ(t.at("empty").sizes(), (std::vector<int64_t>{0, 4}));
  // Write it back from C++: the Python side compares against the same generator's values.
  const std::string back = d.file("from_cpp.safetensors");
  bitforge::safetensors::save(back, t, {{"producer", "c++"}, {"format", "bitforge-test"}});
  EXPECT_EQ(run("'" + py + "' '" + script + "' check '" + back + "'"), 0);
}

TEST(ExportSafetensorsTorch, Fp16Bf16ConvertersMatchC10) {
  std::mt19937 g(3);
  for (int i = 0; i < 2'000'000; ++i) {
    uint32_t u = g();
    if (i % 4 == 0) u = (u & 0x807fffffu) | ((100u + g() % 50) << 23);  // concentrate near the fp16 range
    float f;
    std::memcpy(&f, &u, 4);
    if (std::isnan(f)) continue;
    ASSERT_EQ(bitforge::formats::fp32_to_fp16(f), c10::Half(f).x) << f;
    ASSERT_EQ(bitforge::formats::fp32_to_bf16(f), c10::BFloat16(f).x) << f;
  }
}
