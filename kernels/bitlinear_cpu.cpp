// CPU implementations of the BitLinear ops (schemas in registration.cpp, API in bitlinear_ops.h).
// Each op is one pass over the weight, parallel over output rows (at::parallel_for); anchors are handled by
// splitting each row into runs between anchor columns, so the inner loops stay branch-free.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "kernels/bitlinear_common.h"
#include "kernels/bitlinear_ops.h"

namespace bitforge::ops {
namespace {

using detail::check_weight_args;
using detail::lsq_scale_grad;
using detail::quantize_code;
using detail::ste_grad;

/// Validates anchors (sorted, unique, in range) once per call: O(n_anchors).
void check_anchors(const at::Tensor& anchor_index, int64_t numel) {
  const int64_t n = anchor_index.numel();
  const int64_t* a = anchor_index.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(a[i] >= 0 && a[i] < numel, "bitforge: anchor_index[", i, "] = ", a[i], " out of range [0, ",
                numel, ")");
    TORCH_CHECK(i == 0 || a[i] > a[i - 1], "bitforge: anchor_index must be sorted and unique (position ", i, ")");
  }
}

void check_scales_finite(const at::Tensor& scale) {
  TORCH_CHECK(at::isfinite(scale).all().item<bool>(), "bitforge: scale contains non-finite values");
}

/// The weight ops' inputs made contiguous and validated once (shapes, anchors; scales finite when asked).
struct WeightArgs {
  at::Tensor w, s, a;
  c10::optional<at::Tensor> mu;
  int64_t sr = 0, sc = 0;
  const float* center() const { return mu ? mu->data_ptr<float>() : nullptr; }
  const int64_t* anchors_begin() const { return a.data_ptr<int64_t>(); }
  const int64_t* anchors_end() const { return a.data_ptr<int64_t>() + a.numel(); }
};

WeightArgs prepare_weight_args(const at::Tensor& weight, const at::Tensor& scale,
                               const c10::optional<at::Tensor>& center, const at::Tensor& anchor_index,
                               int64_t quantizer, bool require_finite_scales) {
  WeightArgs r;
  std::tie(r.sr, r.sc) = check_weight_args(weight, scale, center, anchor_index, quantizer);
  r.w = weight.contiguous();
  r.s = scale.contiguous();
  r.a = anchor_index.contiguous();
  if (center.has_value() && center->defined()) r.mu = center->contiguous();
  check_anchors(r.a, r.w.numel());
  if (require_finite_scales) check_scales_finite(r.s);
  return r;
}

/// Iterates row r's columns group by group, splitting around anchors. fn(col_begin, col_end, group) handles a
/// run of non-anchor columns inside one group; anchor(col) handles an anchor column.
template <typename RunFn, typename AnchorFn>
inline void for_each_run(int64_t r, int64_t in, int64_t gsz, const int64_t* anchors_begin,
                         const int64_t* anchors_end, RunFn&& fn, AnchorFn&& anchor) {
  const int64_t row0 = r * in;
  const int64_t* ap = std::lower_bound(anchors_begin, anchors_end, row0);
  const int64_t* ae = std::lower_bound(ap, anchors_end, row0 + in);
  for (int64_t g0 = 0; g0 < in; g0 += gsz) {
    const int64_t g = g0 / gsz, gend = g0 + gsz;
    int64_t c = g0;
    while (ap != ae && *ap - row0 < gend) {
      const int64_t ac = *ap - row0;
      if (ac > c) fn(c, ac, g);
      anchor(ac);
      c = ac + 1;
      ++ap;
    }
    if (c < gend) fn(c, gend, g);
  }
}

/// Returns the first row holding a non-finite weight, or -1. W·0 is NaN exactly for ±inf and NaN, so one
/// vectorisable multiply-add per element detects both.
template <int64_t Q>
int64_t quantize_rows(const float* w, const float* scale, const float* center, int64_t sr, int64_t sc, int64_t out,
                      int64_t in, const int64_t* ab, const int64_t* ae, float lambda, float* y) {
  const int64_t gsz = in / sc;
  std::atomic<int64_t> bad_row{-1};
  at::parallel_for(0, out, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t srow = (sr == 1 ? 0 : r) * sc;
      const float* wr = w + r * in;
      float* yr = y + r * in;
      float probe = 0.f;
      for (int64_t c = 0; c < in; ++c) probe += wr[c] * 0.f;
      if (std::isnan(probe)) {
        int64_t expected = -1;
        bad_row.compare_exchange_strong(expected, r);
      }
      for_each_run(
          r, in, gsz, ab, ae,
          [&](int64_t c0, int64_t c1, int64_t g) {
            const float a = scale[srow + g];
            const float mu = center ? center[srow + g] : 0.f;
            if (lambda == 1.f) {
              for (int64_t c = c0; c < c1; ++c) yr[c] = a * quantize_code((wr[c] - mu) / a, Q);
            } else {
              for (int64_t c = c0; c < c1; ++c) {
                const float q = a * quantize_code((wr[c] - mu) / a, Q);
                yr[c] = wr[c] + lambda * (q - wr[c]);
              }
            }
          },
          [&](int64_t c) { yr[c] = wr[c]; });
    }
  });
  return bad_row.load();
}

at::Tensor quantize_weight_cpu(const at::Tensor& weight, const at::Tensor& scale,
                               const c10::optional<at::Tensor>& center, const at::Tensor& anchor_index,
                               int64_t quantizer, double lambda) {
  TORCH_CHECK(lambda >= 0.0 && lambda <= 1.0, "bitforge: lambda must be in [0, 1], got ", lambda);
  const auto x = prepare_weight_args(weight, scale, center, anchor_index, quantizer, true);
  auto y = at::empty_like(x.w);
  auto* run = quantizer == 1 ? &quantize_rows<1> : &quantize_rows<2>;
  const int64_t bad = run(x.w.data_ptr<float>(), x.s.data_ptr<float>(), x.center(), x.sr, x.sc, x.w.size(0),
                          x.w.size(1), x.anchors_begin(), x.anchors_end(), static_cast<float>(lambda),
                          y.data_ptr<float>());
  TORCH_CHECK(bad < 0, "bitforge: weight row ", bad, " contains non-finite values (NaN or inf)");
  return y;
}

template <int64_t Q, int64_t S>
void backward_rows(const float* g, const float* w, const float* scale, const float* center, int64_t sr, int64_t sc,
                   int64_t out, int64_t in, const int64_t* ab, const int64_t* ae, float clip, float lambda,
                   float keep, float* gw, float* gs_partial /* [out, sc] */) {
  const int64_t gsz = in / sc;
  at::parallel_for(0, out, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t srow = (sr == 1 ? 0 : r) * sc;
      const float* wr = w + r * in;
      const float* gr = g + r * in;
      float* gwr = gw + r * in;
      float* gsr = gs_partial + r * sc;
      std::fill(gsr, gsr + sc, 0.f);
      for_each_run(
          r, in, gsz, ab, ae,
          [&](int64_t c0, int64_t c1, int64_t grp) {
            const float a = scale[srow + grp];
            const float mu = center ? center[srow + grp] : 0.f;
            float acc = 0.f;
            for (int64_t c = c0; c < c1; ++c) {
              const float u = (wr[c] - mu) / a;
              const float code = quantize_code(u, Q);
              gwr[c] = gr[c] * (lambda * ste_grad(u, S, clip) + keep);
              acc += gr[c] * lsq_scale_grad(u, code, Q);
            }
            gsr[grp] += acc;
          },
          [&](int64_t c) { gwr[c] = gr[c]; });
    }
  });
}

template <int64_t Q>
void backward_dispatch_ste(int64_t ste, const float* g, const float* w, const float* s, const float* mu, int64_t sr,
                           int64_t sc, int64_t out, int64_t in, const int64_t* ab, const int64_t* ae, float clip,
                           float lambda, float keep, float* gw, float* gsp) {
  switch (ste) {
    case 0: backward_rows<Q, 0>(g, w, s, mu, sr, sc, out, in, ab, ae, clip, lambda, keep, gw, gsp); break;
    case 1: backward_rows<Q, 1>(g, w, s, mu, sr, sc, out, in, ab, ae, clip, lambda, keep, gw, gsp); break;
    case 2: backward_rows<Q, 2>(g, w, s, mu, sr, sc, out, in, ab, ae, clip, lambda, keep, gw, gsp); break;
    case 3: backward_rows<Q, 3>(g, w, s, mu, sr, sc, out, in, ab, ae, clip, lambda, keep, gw, gsp); break;
    default: TORCH_CHECK(false, "bitforge: unknown STE kind ", ste, " (0 identity, 1 clipped, 2 approx_sign, 3 tanh)");
  }
}

std::tuple<at::Tensor, at::Tensor> quantize_weight_backward_cpu(
    const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& scale,
    const c10::optional<at::Tensor>& center, const at::Tensor& anchor_index, int64_t quantizer, int64_t ste,
    double ste_clip, double lambda, double scale_grad_factor) {
  TORCH_CHECK(grad.sizes() == weight.sizes() && grad.scalar_type() == at::kFloat,
              "bitforge: grad must match weight ", weight.sizes(), " float32, got ", grad.sizes(), " ",
              grad.scalar_type());
  const auto x = prepare_weight_args(weight, scale, center, anchor_index, quantizer, false);
  auto g = grad.contiguous();
  const int64_t out = x.w.size(0), in = x.w.size(1);
  auto gw = at::empty_like(x.w);
  auto gsp = at::empty({out, x.sc}, x.w.options());
  auto run = [&](auto qtag) {
    constexpr int64_t Q = decltype(qtag)::value;
    backward_dispatch_ste<Q>(ste, g.data_ptr<float>(), x.w.data_ptr<float>(), x.s.data_ptr<float>(), x.center(), x.sr,
                             x.sc, out, in, x.anchors_begin(), x.anchors_end(), static_cast<float>(ste_clip),
                             static_cast<float>(lambda),
                             static_cast<float>(1.0 - lambda),  // rounded once, as a double scalar would be
                             gw.data_ptr<float>(), gsp.data_ptr<float>());
  };
  if (quantizer == 1)
    run(std::integral_constant<int64_t, 1>{});
  else
    run(std::integral_constant<int64_t, 2>{});
  at::Tensor gs = x.sr == 1 ? gsp.sum(0, /*keepdim=*/true) : gsp;
  gs.mul_(lambda * scale_grad_factor);
  return {gw, gs};
}

at::Tensor codes_cpu(const at::Tensor& weight, const at::Tensor& scale, const c10::optional<at::Tensor>& center,
                     const at::Tensor& anchor_index, int64_t quantizer) {
  const auto x = prepare_weight_args(weight, scale, center, anchor_index, quantizer, true);
  const int64_t out = x.w.size(0), in = x.w.size(1), gsz = in / x.sc, sr = x.sr, sc = x.sc;
  auto codes = at::empty({out, in}, x.w.options().dtype(at::kChar));
  const float* wp = x.w.data_ptr<float>();
  const float* sp = x.s.data_ptr<float>();
  const float* cp = x.center();
  int8_t* qp = codes.data_ptr<int8_t>();
  const int64_t* ab = x.anchors_begin();
  const int64_t* ae = x.anchors_end();
  at::parallel_for(0, out, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t srow = (sr == 1 ? 0 : r) * sc;
      for_each_run(
          r, in, gsz, ab, ae,
          [&](int64_t c0, int64_t c1, int64_t g) {
            const float al = sp[srow + g];
            const float m = cp ? cp[srow + g] : 0.f;
            for (int64_t c = c0; c < c1; ++c)
              qp[r * in + c] = static_cast<int8_t>(quantize_code((wp[r * in + c] - m) / al, quantizer));
          },
          [&](int64_t c) { qp[r * in + c] = 0; });
    }
  });
  return codes;
}

at::Tensor quantize_activation_cpu(const at::Tensor& x, int64_t bits) {
  const auto dims = detail::check_activation_args(x, bits);
  const int64_t rows = dims.first, in = dims.second;
  auto xc = x.contiguous();
  auto y = at::empty_like(xc);
  const float qp = bits == 8 ? 127.f : 7.f, qn = -qp - 1.f;
  const float* xp = xc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * in;
      float* yr = yp + r * in;
      float m = 0.f;
      for (int64_t c = 0; c < in; ++c) m = std::max(m, std::fabs(xr[c]));
      // BitNet: scale = Qp / max|x|.clamp(min=1e-5); y = (x*scale).round().clamp(Qn, Qp) / scale
      const float s = qp / std::max(m, 1e-5f);
      for (int64_t c = 0; c < in; ++c) {
        float q = detail::round_half_even_small(xr[c] * s);  // |x·s| ≤ Qp + 1
        q = std::min(std::max(q, qn), qp);
        yr[c] = q / s;
      }
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(bitforge, CPU, m) {
  m.impl("bitlinear_quantize_weight", &quantize_weight_cpu);
  m.impl("bitlinear_quantize_weight_backward", &quantize_weight_backward_cpu);
  m.impl("bitlinear_codes", &codes_cpu);
  m.impl("quantize_activation_per_token", &quantize_activation_cpu);
}

}  // namespace bitforge::ops
