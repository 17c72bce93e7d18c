// llama_logits: evaluate a token-id sequence with stock llama.cpp (libllama) and dump the logits.
//
// Not part of the bitforge CMake build: scripts/build_llama_cpp.sh compiles it against the libllama it builds
// (vendored llama.cpp of llama-cpp-python 0.3.36), so it only uses the public llama.h API.
//
//   llama_logits MODEL.gguf TOKENS.txt OUT.f32 [--threads N] [--kv-f16] [--flash-attn] [--verbose]
//   llama_logits MODEL.gguf --tokenize TEXT.txt OUT.txt
//
// --tokenize: llama.cpp's own tokenizer (llama_tokenize with the GGUF's add_bos setting, special tokens not parsed)
// on the text file's bytes; OUT.txt receives the ids, whitespace-separated. Prints the token count.
//
// TOKENS.txt: whitespace-separated token ids (no tokenizer involved: the ids go to llama_decode as they are).
// All T tokens are decoded in ONE llama_batch (positions 0..T-1, sequence 0, logits requested for every
// position; n_ctx = n_batch = n_ubatch = T) and OUT.f32 receives the logits as raw little-endian float32,
// row-major [T, V]. Prints "T V" on stdout. The KV cache is F32 unless --kv-f16 (llama.cpp's default is F16,
// which would add fp16 rounding of K/V to the comparison); flash attention is off unless --flash-attn.
// llama.cpp's log goes to stderr at WARN and ERROR only (everything with --verbose).
// Exit status 1 with llama.cpp's message on stderr when the model does not load or decode fails.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "llama.h"

static int usage() {
  std::fprintf(stderr, "usage: llama_logits MODEL.gguf TOKENS.txt OUT.f32 [--threads N] [--kv-f16] [--flash-attn] [--verbose]\n");
  return 2;
}

static bool g_verbose = false;
static void log_filter(ggml_log_level level, const char* text, void*) {
  static ggml_log_level last = GGML_LOG_LEVEL_INFO;
  if (level != GGML_LOG_LEVEL_CONT) last = level;
  if (g_verbose || last == GGML_LOG_LEVEL_WARN || last == GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
}

static int tokenize_file(const std::string& model_path, const std::string& text_path, const std::string& out_path) {
  std::ifstream in(text_path, std::ios::binary);
  if (!in) { std::fprintf(stderr, "llama_logits: cannot open %s\n", text_path.c_str()); return 1; }
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  llama_log_set(log_filter, nullptr);
  llama_backend_init();
  llama_model_params mparams = llama_model_default_params();
  mparams.n_gpu_layers = 0;
  mparams.vocab_only = true;
  llama_model* model = llama_model_load_from_file(model_path.c_str(), mparams);
  if (!model) { std::fprintf(stderr, "llama_logits: llama_model_load_from_file(%s) failed\n", model_path.c_str()); return 1; }
  const llama_vocab* vocab = llama_model_get_vocab(model);
  std::vector<llama_token> ids(text.size() + 16);
  int32_t n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), ids.data(),
                             static_cast<int32_t>(ids.size()), /*add_special=*/true, /*parse_special=*/false);
  if (n < 0) { std::fprintf(stderr, "llama_logits: llama_tokenize failed (%d)\n", n); return 1; }
  std::FILE* out = std::fopen(out_path.c_str(), "w");
  if (!out) { std::fprintf(stderr, "llama_logits: cannot write %s\n", out_path.c_str()); return 1; }
  for (int32_t i = 0; i < n; ++i) std::fprintf(out, "%d\n", ids[static_cast<size_t>(i)]);
  std::fclose(out);
  std::printf("%d\n", n);
  llama_model_free(model);
  llama_backend_free();
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 4) return usage();
  if (argc == 5 && !std::strcmp(argv[2], "--tokenize")) return tokenize_file(argv[1], argv[3], argv[4]);
  const std::string model_path = argv[1], tokens_path = argv[2], out_path = argv[3];
  int threads = 2;
  bool kv_f16 = false, flash = false;
  for (int i = 4; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--kv-f16")) kv_f16 = true;
    else if (!std::strcmp(argv[i], "--flash-attn")) flash = true;
    else if (!std::strcmp(argv[i], "--verbose")) g_verbose = true;
    else return usage();
  }

  std::vector<llama_token> tokens;
  {
    std::ifstream in(tokens_path);
    if (!in) { std::fprintf(stderr, "llama_logits: cannot open %s\n", tokens_path.c_str()); return 1; }
    long long t;
    while (in >> t) tokens.push_back(static_cast<llama_token>(t));
    if (!in.eof()) { std::fprintf(stderr, "llama_logits: %s: not a list of integers\n", tokens_path.c_str()); return 1; }
  }
  const int32_t T = static_cast<int32_t>(tokens.size());
  if (T == 0) { std::fprintf(stderr, "llama_logits: no tokens in %s\n", tokens_path.c_str()); return 1; }

  llama_log_set(log_filter, nullptr);
  llama_backend_init();
  llama_model_params mparams = llama_model_default_params();
  mparams.n_gpu_layers = 0;
  llama_model* model = llama_model_load_from_file(model_path.c_str(), mparams);
  if (!model) { std::fprintf(stderr, "llama_logits: llama_model_load_from_file(%s) failed\n", model_path.c_str()); return 1; }
  const llama_vocab* vocab = llama_model_get_vocab(model);
  const int32_t V = llama_vocab_n_tokens(vocab);
  for (llama_token t : tokens) {
    if (t < 0 || t >= V) { std::fprintf(stderr, "llama_logits: token %d outside [0, %d)\n", t, V); return 1; }
  }

  llama_context_params cparams = llama_context_default_params();
  cparams.n_ctx = static_cast<uint32_t>(T);
  cparams.n_batch = static_cast<uint32_t>(T);
  cparams.n_ubatch = static_cast<uint32_t>(T);
  cparams.n_seq_max = 1;
  cparams.n_threads = threads;
  cparams.n_threads_batch = threads;
  cparams.no_perf = true;
  cparams.flash_attn_type = flash ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
  if (!kv_f16) { cparams.type_k = GGML_TYPE_F32; cparams.type_v = GGML_TYPE_F32; }
  llama_context* ctx = llama_init_from_model(model, cparams);
  if (!ctx) { std::fprintf(stderr, "llama_logits: llama_init_from_model failed\n"); llama_model_free(model); return 1; }

  llama_batch batch = llama_batch_init(T, 0, 1);
  batch.n_tokens = T;
  for (int32_t i = 0; i < T; ++i) {
    batch.token[i] = tokens[i];
    batch.pos[i] = i;
    batch.n_seq_id[i] = 1;
    batch.seq_id[i][0] = 0;
    batch.logits[i] = 1;
  }
  const int32_t rc = llama_decode(ctx, batch);
  if (rc != 0) {
    std::fprintf(stderr, "llama_logits: llama_decode returned %d\n", rc);
    llama_batch_free(batch); llama_free(ctx); llama_model_free(model);
    return 1;
  }

  std::FILE* out = std::fopen(out_path.c_str(), "wb");
  if (!out) { std::fprintf(stderr, "llama_logits: cannot write %s\n", out_path.c_str()); return 1; }
  for (int32_t i = 0; i < T; ++i) {
    const float* row = llama_get_logits_ith(ctx, i);
    if (!row) { std::fprintf(stderr, "llama_logits: no logits for position %d\n", i); std::fclose(out); return 1; }
    if (std::fwrite(row, sizeof(float), static_cast<size_t>(V), out) != static_cast<size_t>(V)) {
      std::fprintf(stderr, "llama_logits: short write to %s\n", out_path.c_str()); std::fclose(out); return 1;
    }
  }
  std::fclose(out);
  std::printf("%d %d\n", T, V);

  llama_batch_free(batch);
  llama_free(ctx);
  llama_model_free(model);
  llama_backend_free();
  return 0;
}
