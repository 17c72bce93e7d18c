// The packed native format: pack/unpack bit-exactness against the training-time effective weight for every
// quantizer × granularity, file round trips, and hostile packed files.
#include "export/packed_format.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <random>

#include "export/ggml_quants.h"
#include "tests/fixtures/export/test_util.h"

using namespace bitforge::formats;
using bitforge::ScaleGranularity;
using bitforge::WeightQuantizer;
using bitforge::test::TempDir;

namespace {

struct Trained {
  int64_t out, in, group_size;
  WeightQuantizer q;
  ScaleGranularity g;
  std::vector<int8_t> codes;  // anchors hold 0, as BitLinear::codes() does
  std::vector<float> scales;  // fp16-representable fp32
  std::vector<int64_t> anchor_index;
  std::vector<float> anchor_value;
  std::vector<float> w_eff;  // what training computes: scale * code, anchors at full precision
};

Trained make_trained(WeightQuantizer q, ScaleGranularity g, int64_t out, int64_t in, int64_t group_size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  Trained t{out, in, g == ScaleGranularity::group ? group_size : in, q, g, {}, {}, {}, {}, {}};
  const int64_t ng = in / t.group_size, sr = g == ScaleGranularity::tensor ? 1 : out;
  for (int64_t i = 0; i < sr * ng; ++i) t.scales.push_back(fp16_to_fp32(fp32_to_fp16(std::fabs(nd(rng)) + 1e-3f)));
  t.codes.resize(out * in);
  for (auto& c : t.codes) c = q == WeightQuantizer::binary ? (rng() & 1 ? 1 : -1) : static_cast<int8_t>(int(rng() % 3) - 1);
  for (int64_t i = 0; i < out * in; i += 1 + static_cast<int64_t>(rng() % 97)) {
    t.anchor_index.push_back(i);
    t.anchor_value.push_back(nd(rng) * 10);
    t.codes[i] = 0;
  }
  t.w_eff.resize(out * in);
  for (int64_t r = 0; r < out; ++r)
    for (int64_t c = 0; c < in; ++c)
      t.w_eff[r * in + c] = t.scales[(sr == 1 ? 0 : r) * ng + c / t.group_size] * static_cast<float>(t.codes[r * in + c]);
  for (size_t k = 0; k < t.anchor_index.size(); ++k) t.w_eff[t.anchor_index[k]] = t.anchor_value[k];
  return t;
}

PackedLayer pack(const Trained& t) {
  return pack_layer(t.q, t.g, t.group_size, t.out, t.in, t.codes.data(), t.scales.data(), t.anchor_index.data(),
                    t.anchor_value.data(), static_cast<int64_t>(t.anchor_index.size()));
}

void expect_bits_equal(const std::vector<float>& a, const std::vector<float>& b) {
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

PackedModel small_model() {
  PackedModel m;
  m.config = "model:\n  hidden: 64\n";
  m.tokenizer_kind = "bytes";
  m.tokenizer = {0, 1, 2, 250, 255};
  m.layers["model.layers.0.mlp.up_proj.weight"] = pack(make_trained(WeightQuantizer::binary, ScaleGranularity::group, 6, 256, 128, 1));
  m.layers["model.layers.0.mlp.down_proj.weight"] = pack(make_trained(WeightQuantizer::ternary, ScaleGranularity::channel, 5, 33, 0, 2));
  m.tensors["model.embed_tokens.weight"] = PackedTensor{Dtype::BF16, {4, 8}, std::vector<uint8_t>(64, 0x3f)};
  return m;
}

// Copies a valid packed file into a writer, letting `edit` change tensors/metadata; recomputes the checksum
// unless keep_checksum.
using Edit = std::function<void(std::map<std::string, PackedTensor>&, std::map<std::string, std::string>&)>;
std::vector<uint8_t> rebuild(const Edit& edit, bool recompute_checksum = true) {
  const auto img = make_packed_writer(small_model()).serialize();
  SafetensorsFile f = SafetensorsFile::from_bytes(img, "valid");
  std::map<std::string, PackedTensor> ts;
  for (const auto& t : f.tensors()) {
    const auto b = f.bytes(t);
    ts[t.name] = PackedTensor{t.dtype, t.shape, std::vector<uint8_t>(b.data, b.data + b.size)};
  }
  auto md = f.metadata();
  edit(ts, md);
  SafetensorsWriter w;
  for (const auto& [n, t] : ts) w.add(n, t.dtype, t.shape, t.bytes);
  w.set_metadata(md);
  if (recompute_checksum) w.set_metadata("checksum", packed_checksum(w));
  return w.serialize();
}

void read_image(const std::vector<uint8_t>& img) {
  TempDir d;
  const std::string p = d.file("bad.packed.safetensors");
  bitforge::test::write_bytes(p, img);
  read_packed(p);
}

void EXPECT_BAD_PACKED(const Edit& edit, const std::string& fragment) {
  BF_EXPECT_THROW_MSG(read_image(rebuild(edit)), FormatError, fragment);
}

const std::string kUp = "model.layers.0.mlp.up_proj.weight";
const std::string kDown = "model.layers.0.mlp.down_proj.weight";

}  // namespace

TEST(ExportPacked, UnpackIsBitIdenticalToTrainingEffectiveWeight) {
  for (WeightQuantizer q : {WeightQuantizer::binary, WeightQuantizer::ternary})
    for (ScaleGranularity g : {ScaleGranularity::tensor, ScaleGranularity::channel, ScaleGranularity::group})
      for (int64_t in : {1, 7, 33, 130, 257, 256}) {
        int64_t gs = in;
        if (g == ScaleGranularity::group) gs = in == 130 ? 65 : in == 256 ? 128 : in == 33 ? 11 : in;
        const Trained t = make_trained(q, g, 3, in, gs, static_cast<uint32_t>(in * 7 + int(g) * 3 + int(q)));
        const PackedLayer L = pack(t);
        EXPECT_EQ(static_cast<int64_t>(L.codes.size()), 3 * (q == WeightQuantizer::binary ? (in + 7) / 8 : (in + 3) / 4));
        expect_bits_equal(unpack_layer(L), t.w_eff);
      }
}

TEST(ExportPacked, FileRoundTripEachGranularityAndQuantizer) {
  TempDir d;
  PackedModel m;
  m.config = R"({"model": {"layers": 1}})";
  m.tokenizer_kind = "sentencepiece";
  for (int i = 0; i < 256; ++i) m.tokenizer.push_back(static_cast<uint8_t>(255 - i));
  std::map<std::string, Trained> trained;
  int k = 0;
  for (WeightQuantizer q : {WeightQuantizer::binary, WeightQuantizer::ternary})
    for (ScaleGranularity g : {ScaleGranularity::tensor, ScaleGranularity::channel, ScaleGranularity::group}) {
      const std::string name = "model.layers." + std::to_string(k) + ".self_attn.q_proj.weight";
      trained.emplace(name, make_trained(q, g, 4 + k, 130, 65, 100 + k));
      m.layers[name] = pack(trained.at(name));
      ++k;
    }
  std::vector<float> norm = {1.0f, 0.5f, -2.0f};
  std::vector<uint8_t> nb(12);
  std::memcpy(nb.data(), norm.data(), 12);
  m.tensors["model.norm.weight"] = PackedTensor{Dtype::F32, {3}, nb};
  const std::string p = d.file("model.packed.safetensors");
  write_packed(p, m);
  EXPECT_FALSE(bitforge::test::file_exists(p + ".tmp"));
  const PackedModel r = read_packed(p);
  EXPECT_EQ(r.config, m.config);
  EXPECT_EQ(r.tokenizer_kind, "sentencepiece");
  EXPECT_EQ(r.tokenizer, m.tokenizer);
  ASSERT_EQ(r.layers.size(), 6u);
  for (const auto& [name, t] : trained) {
    const PackedLayer& L = r.layers.at(name);
    EXPECT_EQ(L.quantizer, t.q);
    EXPECT_EQ(L.granularity, t.g);
    EXPECT_EQ(L.out, t.out);
    EXPECT_EQ(L.in, t.in);
    expect_bits_equal(unpack_layer(L), t.w_eff);
  }
  EXPECT_EQ(r.tensors.at("model.norm.weight").bytes, nb);
  // Any safetensors reader can list it: the container and its metadata are plain safetensors.
  SafetensorsFile f(p);
  EXPECT_EQ(f.metadata().at("format"), "bitforge.packed");
  EXPECT_EQ(f.at(trained.begin()->first + ".scales").dtype, Dtype::F16);
}

TEST(ExportPacked, PackRejectsInexactScalesAndBadCodes) {
  Trained t = make_trained(WeightQuantizer::binary, ScaleGranularity::tensor, 2, 8, 0, 5);
  t.scales[0] = 0.1f;
  BF_EXPECT_THROW_MSG(pack(t), std::invalid_argument, "not exactly representable in fp16");
  Trained b = make_trained(WeightQuantizer::binary, ScaleGranularity::tensor, 2, 200, 0, 6);
  int64_t pos = 1;
  while (std::find(b.anchor_index.begin(), b.anchor_index.end(), pos) != b.anchor_index.end()) ++pos;
  b.codes[pos] = 0;  // zero outside an anchor is not a binary code
  BF_EXPECT_THROW_MSG(pack(b), std::invalid_argument, "expected -1 or +1");
  Trained g = make_trained(WeightQuantizer::ternary, ScaleGranularity::group, 2, 10, 5, 7);
  BF_EXPECT_THROW_MSG(pack_layer(g.q, g.g, 4, g.out, g.in, g.codes.data(), g.scales.data()), std::invalid_argument,
                      "group_size 4 does not divide in = 10");
}

TEST(ExportPacked, Base64) {
  for (size_t n = 0; n < 10; ++n) {
    std::vector<uint8_t> v;
    for (size_t i = 0; i < n; ++i) v.push_back(static_cast<uint8_t>(i * 37 + 200));
    EXPECT_EQ(base64_decode(base64_encode(v.data(), v.size())), v);
  }
  const uint8_t foo[] = {'f', 'o', 'o', 'b'};
  EXPECT_EQ(base64_encode(foo, 4), "Zm9vYg==");
  EXPECT_THROW(base64_decode("Zm9vYg="), std::invalid_argument);
  EXPECT_THROW(base64_decode("Zm=vYg=="), std::invalid_argument);
  EXPECT_THROW(base64_decode("Zm9v!g=="), std::invalid_argument);
}

// ---- hostile packed files ----

TEST(ExportPackedHostile, ValidRebuildReads) { EXPECT_NO_THROW(read_image(rebuild([](auto&, auto&) {}))); }

TEST(ExportPackedHostile, MissingScales) {
  EXPECT_BAD_PACKED([](auto& ts, auto&) { ts.erase(kUp + ".scales"); },
                    "layer '" + kUp + "': missing tensor '" + kUp + ".scales'");
}

TEST(ExportPackedHostile, WrongFormatName) {
  EXPECT_BAD_PACKED([](auto&, auto& md) { md["format"] = "gguf"; },
                    "__metadata__.format is 'gguf'; expected 'bitforge.packed'");
  EXPECT_BAD_PACKED([](auto&, auto& md) { md.erase("format"); }, "__metadata__ has no 'format'");
}

TEST(ExportPackedHostile, UnknownVersion) {
  EXPECT_BAD_PACKED([](auto&, auto& md) { md["format_version"] = "2"; }, "unknown format_version '2'; expected '1'");
}

TEST(ExportPackedHostile, ChecksumMismatch) {
  auto img = rebuild([](auto&, auto&) {});
  img[img.size() - 3] ^= 0x10;  // flip a bit in the data section
  BF_EXPECT_THROW_MSG(read_image(img), FormatError, "checksum mismatch: __metadata__.checksum is 'crc32+meta:");
}

TEST(ExportPackedHostile, AnchorIndexOutOfRange) {
  EXPECT_BAD_PACKED(
      [](auto& ts, auto&) {
        auto& b = ts[kUp + ".anchor_index"].bytes;
        const int64_t big = 6 * 256;
        std::memcpy(b.data() + b.size() - 8, &big, 8);
      },
      "is out of range [0, 1536)");
}

TEST(ExportPackedHostile, UnsortedAnchors) {
  EXPECT_BAD_PACKED(
      [](auto& ts, auto&) {
        auto& b = ts[kUp + ".anchor_index"].bytes;
        std::vector<uint8_t> first(b.begin(), b.begin() + 8);
        std::copy(b.begin() + 8, b.begin() + 16, b.begin());
        std::copy(first.begin(), first.end(), b.begin() + 8);
      },
      "anchor_index is not sorted and unique: entry 1");
}

TEST(ExportPackedHostile, CodesShapeMismatch) {
  EXPECT_BAD_PACKED(
      [](auto& ts, auto&) {
        auto& t = ts[kUp + ".codes"];
        t.shape = {6, 31};
        t.bytes.resize(6 * 31);
      },
      "tensor '" + kUp + ".codes' has shape [6, 31]; expected [6, 32]");
}

TEST(ExportPackedHostile, GroupSizeNotDividingIn) {
  EXPECT_BAD_PACKED(
      [](auto&, auto& md) {
        auto j = md["layers"];
        const auto pos = j.find("\"group_size\":128");
        ASSERT_NE(pos, std::string::npos);
        md["layers"] = j.replace(pos, 16, "\"group_size\":100");
      },
      "group_size 100 does not divide in = 256");
}

TEST(ExportPackedHostile, ScalesShapeWrongForGranularity) {
  EXPECT_BAD_PACKED(
      [](auto& ts, auto&) {
        auto& t = ts[kDown + ".scales"];
        t.shape = {1, 1};
        t.bytes.resize(2);
      },
      "tensor '" + kDown + ".scales' has shape [1, 1]; expected [5, 1]");
}

TEST(ExportPackedHostile, InvalidTernaryCodeAndPadding) {
  EXPECT_BAD_PACKED([](auto& ts, auto&) { ts[kDown + ".codes"].bytes[0] |= 0x03; }, "holds the invalid 2-bit code 3");
  // in = 33: the last byte of each row holds one code in bits 0-1; bits 2-7 are padding.
  EXPECT_BAD_PACKED([](auto& ts, auto&) { ts[kDown + ".codes"].bytes[8] |= 0x40; }, "non-zero padding bits");
}

TEST(ExportPackedHostile, WrongDtypes) {
  EXPECT_BAD_PACKED(
      [](auto& ts, auto&) {
        auto& t = ts[kUp + ".scales"];
        t.dtype = Dtype::BF16;
      },
      "tensor '" + kUp + ".scales' is BF16; expected F16");
  EXPECT_BAD_PACKED(
      [](auto& ts, auto&) {
        ts["model.extra"] = PackedTensor{Dtype::I32, {1}, {0, 0, 0, 0}};
      },
      "tensor 'model.extra' is I32; expected BF16, F16 or F32");
}

TEST(ExportPackedHostile, BadLayersMetadata) {
  EXPECT_BAD_PACKED([](auto&, auto& md) { md["layers"] = "{not json"; }, "__metadata__.layers is not valid JSON");
  EXPECT_BAD_PACKED([](auto&, auto& md) { md.erase("layers"); }, "__metadata__ has no 'layers'");
  EXPECT_BAD_PACKED(
      [](auto&, auto& md) {
        auto j = md["layers"];
        const auto pos = j.find("\"ternary\"");
        md["layers"] = j.replace(pos, 9, "\"quinary\"");
      },
      "quantizer 'quinary'; expected binary or ternary");
  EXPECT_BAD_PACKED([](auto&, auto& md) { md["tokenizer"] = "abc"; }, "__metadata__.tokenizer is not valid base64");
}

TEST(ExportPackedHostile, OrphanLayerTensor) {
  EXPECT_BAD_PACKED(
      [](auto& ts, auto&) {
        ts["model.ghost.weight.anchor_value"] = PackedTensor{Dtype::F32, {1}, {0, 0, 0, 0}};
      },
      "tensor 'model.ghost.weight.anchor_value' looks like part of a quantized layer");
}
