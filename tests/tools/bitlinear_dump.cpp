// The C++ BitLinear as a reference for the Python one (tests/python/test_python_export.py, issue #22): one forward and
// backward of trainer/bitlinear.h's module on tensors given in a safetensors file, results written to another.
//
//   bitlinear_dump IN.safetensors OUT.safetensors [--set quant.key=value]... [--lambda L]
//
// IN:  weight [out, in] f32, weight_scale [S_r, S_c] f32 (when quantized), anchor_index [n] i64, x [N, in] f32,
//      gy [N, out] f32 (the upstream gradient), optional bias [out] f32 and input_norm_weight [in] f32.
// OUT: y [N, out] = forward(x); the gradients of sum(y · gy): grad_x, grad_weight, grad_weight_scale (learned scales),
//      grad_bias, grad_input_norm_weight (when present); w_eff [out, in] = effective_weight(). All f32.
// Exit status 0, or 1 with a message naming the file or tensor that is wrong.
#include <torch/torch.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "config/config.h"
#include "export/safetensors_torch.h"
#include "trainer/bitlinear.h"

using namespace bitforge;

int main(int argc, char** argv) try {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s IN.safetensors OUT.safetensors [--set quant.key=value]... [--lambda L]\n", argv[0]);
    return 2;
  }
  Config cfg;
  double lambda = 1.0;
  for (int i = 3; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
    if (a == "--set") apply_override(cfg, argv[++i]);
    else if (a == "--lambda") lambda = std::stod(argv[++i]);
    else throw std::runtime_error("unknown argument " + a);
  }
  auto in = safetensors::load(argv[1]);
  auto get = [&](const char* name) -> torch::Tensor {
    auto it = in.find(name);
    if (it == in.end()) throw std::runtime_error(std::string(argv[1]) + ": tensor '" + name + "' missing");
    return it->second;
  };
  const torch::Tensor w = get("weight");
  BitLinear layer(w.size(1), w.size(0), in.count("bias") > 0, cfg.quant);
  {
    torch::NoGradGuard ng;
    for (auto& p : layer->named_parameters()) p.value().copy_(get(p.key().c_str()));
    for (auto& b : layer->named_buffers()) {
      const torch::Tensor src = get(b.key().c_str());
      b.value().resize_(src.sizes());
      b.value().copy_(src);
    }
  }
  layer->set_lambda(lambda);
  torch::Tensor x = get("x").clone().requires_grad_(true);
  torch::Tensor y = layer->forward(x);
  (y * get("gy")).sum().backward();
  std::map<std::string, torch::Tensor> out = {{"y", y.detach()}, {"grad_x", x.grad()},
                                              {"w_eff", layer->effective_weight().detach()}};
  for (auto& p : layer->named_parameters())
    if (p.value().grad().defined()) out["grad_" + p.key()] = p.value().grad();
  safetensors::save(argv[2], out);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bitlinear_dump: %s\n", e.what());
  return 1;
}
