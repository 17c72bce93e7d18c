// Issue #21 items 2 and 3: the packed file never fails its own checksum (empty tensors), its checksum covers the
// metadata, and the model config it carries is range-checked with the YAML schema's ranges.
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "export/ggml_quants.h"
#include "export/model_export.h"
#include "export/packed_format.h"
#include "tests/fixtures/export/test_util.h"

using namespace bitforge::formats;
using bitforge::test::TempDir;

namespace {

/// One binary layer without anchors (quant.anchor_fraction: 0) and fp32 dense tensors whose names sort before
/// the layer's (empty) anchor_value tensor, as `export.dtype: fp32` produces.
PackedModel model_without_anchors() {
  const int64_t out = 4, in = 16;
  std::vector<int8_t> codes(out * in);
  for (size_t i = 0; i < codes.size(); ++i) codes[i] = (i * 7 % 3) ? 1 : -1;
  std::vector<float> scales = {0.5f};
  PackedModel m;
  m.config = "{}";
  m.tokenizer_kind = "byte";
  m.tokenizer = {1, 2, 3};
  m.layers["model.layers.0.mlp.up_proj.weight"] =
      pack_layer(bitforge::WeightQuantizer::binary, bitforge::ScaleGranularity::tensor, in, out, in, codes.data(), scales.data());
  std::vector<float> emb(8 * in, 0.25f), norm(in, 1.0f);
  PackedTensor e{Dtype::F32, {8, uint64_t(in)}, {}};
  e.bytes.resize(emb.size() * 4);
  std::memcpy(e.bytes.data(), emb.data(), e.bytes.size());
  m.tensors["model.embed_tokens.weight"] = e;
  PackedTensor n{Dtype::F32, {uint64_t(in)}, {}};
  n.bytes.resize(norm.size() * 4);
  std::memcpy(n.bytes.data(), norm.data(), n.bytes.size());
  m.tensors["model.norm.weight"] = n;
  return m;
}

nlohmann::json good_model_json() {
  bitforge::ModelConfig c;
  c.vocab_size = 258;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.max_position_embeddings = 64;
  return model_config_to_json(c);
}

}  // namespace

// Item 2: crc32_z(crc, nullptr, 0) for an empty tensor reset the running checksum to 0, so an export without
// anchors and with fp32 dense tensors wrote a file that failed its own checksum.
TEST(PackedSafety, FileWithEmptyAnchorTensorsPassesItsOwnChecksum) {
  TempDir dir;
  const std::string path = dir.file("model.packed.safetensors");
  write_packed(path, model_without_anchors());
  PackedModel back;
  ASSERT_NO_THROW(back = read_packed(path));
  EXPECT_EQ(back.layers.size(), 1u);
  EXPECT_EQ(back.tensors.size(), 2u);
}

// Item 3: the config metadata (and every other metadata value) is covered by the checksum.
TEST(PackedSafety, ChecksumCoversTheMetadata) {
  auto w = make_packed_writer(model_without_anchors());
  for (const char* key : {"config", "layers", "tokenizer", "tokenizer_kind"}) {
    auto tampered = w;
    std::string v = tampered.metadata().at(key);
    v = std::string(key) == "layers" ? v + " " : (std::string(key) == "tokenizer" ? "AAAA" : v + "x");
    tampered.set_metadata(key, v);
    try {
      read_packed(SafetensorsFile::from_bytes(tampered.serialize(), "tampered.safetensors"));
      FAIL() << "metadata '" << key << "' was changed without a checksum error";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find("checksum"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("tampered.safetensors"), std::string::npos) << e.what();
    }
  }
  // The untampered image still reads.
  EXPECT_NO_THROW(read_packed(SafetensorsFile::from_bytes(w.serialize(), "ok.safetensors")));
}

// Item 3: model metadata is range-checked with the YAML schema's ranges (and names the key).
TEST(PackedSafety, ModelConfigFromJsonRangeChecksLikeTheYamlSchema) {
  EXPECT_NO_THROW(model_config_from_json(good_model_json()));
  struct Case {
    const char* key;
    nlohmann::json value;
  };
  const Case cases[] = {{"max_position_embeddings", 50000000}, {"rope_theta", 0.0},     {"rope_theta", -10000.0},
                        {"rms_norm_eps", -1e-6},               {"rms_norm_eps", 0.0},   {"hidden_size", 1 << 21},
                        {"num_hidden_layers", 5000},           {"vocab_size", 1 << 25}, {"head_dim", 3}};
  for (const auto& c : cases) {
    auto j = good_model_json();
    j[c.key] = c.value;
    try {
      model_config_from_json(j);
      FAIL() << c.key << " = " << c.value.dump() << " was accepted";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find(c.key), std::string::npos) << e.what();
    }
  }
}
