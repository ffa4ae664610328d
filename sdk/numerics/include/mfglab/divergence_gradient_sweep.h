// grad(div out) of an MLP field out: R^d (+ time) -> R^d, with its value, Jacobian and time
// derivative, from first-order quantities only: no second-order slab goes through a
// weight matrix.
//
// Between two hidden layers an MLP is linear, so each second derivative of an output is a
// sum over hidden layers l of act'' times two tangents and one adjoint:
//   d_k d_i out_c = sum_l sum_u (d out_c / d h_l)_u act''(a_l)_u (d a_l / d x_k)_u (d a_l / d x_i)_u,
// with a_l the layer's pre-activation and h_l = act(a_l). Summed over c = i,
//   grad(div out)_k = sum_l sum_u act''(a_l)_u (d a_l / d x_k)_u P_l,u,
//   P_l = sum_i (d out_i / d h_l) (d a_l / d x_i).
// A sweep up carries the value and the d space tangents d a_l / d x_k; a sweep down carries
// the d output adjoints d out_i / d h_l, which at the input layer also give the Jacobian and
// d_t out. Per hidden-to-hidden weight matrix that is 1 + 2d slab products forward and
// 2 + 4d in the reverse pass, linear in d; the Hessian sweep (hessian_jets.h) takes
// 3 (2 + d + d (d + 1) / 2), quadratic in d, and autograd's d + 1 nested reverse passes more.
//
// One autograd node (detail::DivergenceGradientSweep) with a hand-written reverse pass,
// blocked over samples as second_order_jets is. Differentiable once (parameters and input),
// which is what a training loss needs.
#pragma once

#include <algorithm>
#include <vector>

#include "mfglab/hessian_jets.h"

namespace mfglab::nn {

// An MLP field's output with its first derivatives and grad(div out).
struct DivergenceGradientJets {
  torch::Tensor value;                // [N, d]
  torch::Tensor jacobian;             // [N, d, d]: jacobian[n][k][j] = d out_j / d x_k
  torch::Tensor time;                 // [N, d], undefined without a time column
  torch::Tensor divergence_gradient;  // [N, d]: d_k sum_i d_i out_i
};

namespace detail {

// Units per chunk of a row in the down-sweep loops: the chunk's scratch stays on the stack.
constexpr int64_t kDownChunk = 256;

// Samples per block of the sweep: larger blocks than second_order_jets' (fewer slabs per
// sample). bench/score_grad_bench, d = 2: 128 rows took 9.3-9.5 ms a step against 8.5-8.8 ms
// at 256-1024 (before the reverse loops were fused); 256, 512 and 1024 now measure the same.
constexpr int64_t kDivergenceRows = 512;

// sum_e x[e] y[e] with 16 independent partial sums, so that the loop vectorises without
// reassociating floating-point sums (and so gives the same result on every machine).
template <class T>
__attribute__((always_inline)) inline T row_dot(const T* __restrict x, const T* __restrict y, int64_t n) {
  T acc[16] = {};
  int64_t e = 0;
  for (; e + 16 <= n; e += 16)
    for (int64_t j = 0; j < 16; ++j) acc[j] += x[e + j] * y[e + j];
  for (; e < n; ++e) acc[0] += x[e] * y[e];
  T sum = T(0);
  for (int64_t j = 0; j < 16; ++j) sum += acc[j];
  return sum;
}

// One hidden layer of the down sweep, for nb rows of width w (slab stride nb w):
//   Ahat_i = act' D_i,  P = sum_i D_i da_i,  grad[n][k] += sum_u act'' P da_k,
// with U = (a, da_1 .. da_d) the layer's up slabs and D_i = d out_i / d h.
template <class T>
__attribute__((always_inline)) inline void down_forward_body(const T* U, const T* D, T* Ahat, const T* d1,
                                                             const T* d2, T* grad, int64_t d, int64_t nb, int64_t w) {
  const int64_t stride = nb * w;
  for (int64_t n = 0; n < nb; ++n)
    for (int64_t u0 = 0; u0 < w; u0 += kDownChunk) {
      const int64_t o = n * w + u0, m = std::min(kDownChunk, w - u0);
      const T* __restrict g1 = d1 + o;
      const T* __restrict g2 = d2 + o;
      T q[kDownChunk];
      #pragma GCC ivdep
      for (int64_t e = 0; e < m; ++e) q[e] = T(0);
      for (int64_t i = 0; i < d; ++i) {
        const T* __restrict di = D + i * stride + o;
        const T* __restrict ai = U + (1 + i) * stride + o;
        T* __restrict hi = Ahat + i * stride + o;
        #pragma GCC ivdep
        for (int64_t e = 0; e < m; ++e) {
          q[e] += di[e] * ai[e];
          hi[e] = g1[e] * di[e];
        }
      }
      #pragma GCC ivdep
      for (int64_t e = 0; e < m; ++e) q[e] *= g2[e];
      for (int64_t k = 0; k < d; ++k) grad[n * d + k] += row_dot<T>(q, U + (1 + k) * stride + o, m);
    }
}

// The reverse pass, with gg[n][k] the gradient of grad[n][k], Abar that of Ahat, and, as
// above, P = sum_i D_i da_i and G = sum_k gg_k da_k. The gradient of D_i is
//   Dbar_i = act'' G da_i + act' Abar_i,
// needed first: it runs up the down sweep (from the input layer) before the up sweep's
// reverse comes down to this layer.
template <class T>
__attribute__((always_inline)) inline void down_backward_body(const T* U, const T* Abar, const T* gg, const T* d1,
                                                              const T* d2, T* Dbar, int64_t d, int64_t nb, int64_t w) {
  const int64_t stride = nb * w;
  for (int64_t n = 0; n < nb; ++n)
    for (int64_t u0 = 0; u0 < w; u0 += kDownChunk) {
      const int64_t o = n * w + u0, m = std::min(kDownChunk, w - u0);
      const T* __restrict g1 = d1 + o;
      const T* __restrict g2 = d2 + o;
      T g[kDownChunk];  // act'' G
      #pragma GCC ivdep
      for (int64_t e = 0; e < m; ++e) g[e] = T(0);
      for (int64_t i = 0; i < d; ++i) {
        const T* __restrict ai = U + (1 + i) * stride + o;
        const T c = gg[n * d + i];
        #pragma GCC ivdep
        for (int64_t e = 0; e < m; ++e) g[e] += c * ai[e];
      }
      #pragma GCC ivdep
      for (int64_t e = 0; e < m; ++e) g[e] *= g2[e];
      for (int64_t i = 0; i < d; ++i) {
        const T* __restrict ai = U + (1 + i) * stride + o;
        const T* __restrict bi = Abar + i * stride + o;
        T* __restrict out = Dbar + i * stride + o;
        #pragma GCC ivdep
        for (int64_t e = 0; e < m; ++e) out[e] = g[e] * ai[e] + g1[e] * bi[e];
      }
    }
}

// The up sweep's reverse through one hidden layer, in place: GZ holds the gradient of the
// layer's output slabs Z = (act(a), act' da_1 .. act' da_d) and becomes that of its input
// slabs U = (a, da_1 .. da_d), to which the down sweep and grad(div) add their part:
//   Ubar_0 = act' GZ_0 + act'' (sum_m da_m GZ_m + sum_i D_i Abar_i) + act''' P G
//   Ubar_m = act' GZ_m + act'' (gg_m P + G D_m)
template <class T>
__attribute__((always_inline)) inline void up_backward_body(const T* U, const T* D, const T* Abar, const T* gg,
                                                            const T* d1, const T* d2, const T* d3, T* GZ, int64_t d,
                                                            int64_t nb, int64_t w) {
  const int64_t stride = nb * w;
  for (int64_t n = 0; n < nb; ++n)
    for (int64_t u0 = 0; u0 < w; u0 += kDownChunk) {
      const int64_t o = n * w + u0, m = std::min(kDownChunk, w - u0);
      const T* __restrict g1 = d1 + o;
      const T* __restrict g2 = d2 + o;
      const T* __restrict g3 = d3 + o;
      T p[kDownChunk], g[kDownChunk], f[kDownChunk];  // P, G, and the act'' sum of Ubar_0
      #pragma GCC ivdep
      for (int64_t e = 0; e < m; ++e) p[e] = g[e] = f[e] = T(0);
      for (int64_t i = 0; i < d; ++i) {
        const T* __restrict di = D + i * stride + o;
        const T* __restrict ai = U + (1 + i) * stride + o;
        const T* __restrict bi = Abar + i * stride + o;
        const T* __restrict zi = GZ + (1 + i) * stride + o;
        const T c = gg[n * d + i];
        #pragma GCC ivdep
        for (int64_t e = 0; e < m; ++e) {
          p[e] += di[e] * ai[e];
          g[e] += c * ai[e];
          f[e] += ai[e] * zi[e] + di[e] * bi[e];
        }
      }
      T* __restrict z0 = GZ + o;
      #pragma GCC ivdep
      for (int64_t e = 0; e < m; ++e) z0[e] = g1[e] * z0[e] + g2[e] * f[e] + g3[e] * p[e] * g[e];
      for (int64_t i = 0; i < d; ++i) {
        const T* __restrict di = D + i * stride + o;
        T* __restrict zi = GZ + (1 + i) * stride + o;
        const T c = gg[n * d + i];
        #pragma GCC ivdep
        for (int64_t e = 0; e < m; ++e) zi[e] = g1[e] * zi[e] + g2[e] * (c * p[e] + g[e] * di[e]);
      }
    }
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) inline void down_forward_loop(
    const float* U, const float* D, float* Ahat, const float* d1, const float* d2, float* grad, int64_t d, int64_t nb,
    int64_t w) {
  down_forward_body<float>(U, D, Ahat, d1, d2, grad, d, nb, w);
}
inline void down_forward_loop(const double* U, const double* D, double* Ahat, const double* d1, const double* d2,
                              double* grad, int64_t d, int64_t nb, int64_t w) {
  down_forward_body<double>(U, D, Ahat, d1, d2, grad, d, nb, w);
}
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) inline void down_backward_loop(
    const float* U, const float* Abar, const float* gg, const float* d1, const float* d2, float* Dbar, int64_t d,
    int64_t nb, int64_t w) {
  down_backward_body<float>(U, Abar, gg, d1, d2, Dbar, d, nb, w);
}
inline void down_backward_loop(const double* U, const double* Abar, const double* gg, const double* d1,
                               const double* d2, double* Dbar, int64_t d, int64_t nb, int64_t w) {
  down_backward_body<double>(U, Abar, gg, d1, d2, Dbar, d, nb, w);
}
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) inline void up_backward_loop(
    const float* U, const float* D, const float* Abar, const float* gg, const float* d1, const float* d2,
    const float* d3, float* GZ, int64_t d, int64_t nb, int64_t w) {
  up_backward_body<float>(U, D, Abar, gg, d1, d2, d3, GZ, d, nb, w);
}
inline void up_backward_loop(const double* U, const double* D, const double* Abar, const double* gg,
                             const double* d1, const double* d2, const double* d3, double* GZ, int64_t d, int64_t nb,
                             int64_t w) {
  up_backward_body<double>(U, D, Abar, gg, d1, d2, d3, GZ, d, nb, w);
}

// Through one hidden layer's activation, up slabs U -> Z: Z_0 = act(a) and, unless `top`
// (the last hidden layer, whose tangents nothing reads), Z_m = act' da_m. Returns act',
// act'' and act''' at a, which the down sweep and the reverse pass use.
inline std::vector<torch::Tensor> up_activation(Activation act, const torch::Tensor& U, const torch::Tensor& Z,
                                                int64_t d, bool top) {
  const auto a = U[0];
  auto z0 = Z[0];
  std::vector<torch::Tensor> dv;
  if (looped(act, a)) {
    for (int i = 0; i < 3; ++i) dv.push_back(torch::empty_like(a));
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "up_activation", [&] {
      derivs4_loop(act == Activation::silu, a.data_ptr<scalar_t>(), z0.data_ptr<scalar_t>(),
                   dv[0].data_ptr<scalar_t>(), dv[1].data_ptr<scalar_t>(), dv[2].data_ptr<scalar_t>(), a.numel());
    });
  } else {
    auto all = derivs5(act, a, false);
    z0.copy_(all[0]);
    dv = {all[1], all[2], all[3]};
  }
  if (!top) {
    auto tangents = Z.narrow(0, 1, d);
    torch::mul_out(tangents, U.narrow(0, 1, d), dv[0].unsqueeze(0));
  }
  return dv;
}

// dst[s][n] = src[s] for every row n: dst [S, nb, w] contiguous, src [S, w]. Row copies: a
// broadcast copy of a transposed source takes LibTorch's slow strided path.
inline void fill_rows(const torch::Tensor& dst, const torch::Tensor& src) {
  auto rows = src.contiguous();
  const int64_t S = dst.size(0), nb = dst.size(1);
  const size_t bytes = static_cast<size_t>(dst.size(2) * dst.element_size());
  auto* out = static_cast<char*>(dst.data_ptr());
  const auto* in = static_cast<const char*>(rows.data_ptr());
  for (int64_t s = 0; s < S; ++s)
    for (int64_t n = 0; n < nb; ++n) std::memcpy(out + (s * nb + n) * bytes, in + s * bytes, bytes);
}

// sum_n x[s][n] for a contiguous x [S, nb, w] (or [nb, w]), [S, w] (or [w]): one pass that
// vectorises along w, where LibTorch reduces across rows with a strided loop.
template <class T>
inline void sum_rows_body(const T* x, T* out, int64_t S, int64_t nb, int64_t w) {
  for (int64_t s = 0; s < S; ++s) {
    T* __restrict o = out + s * w;
    for (int64_t u = 0; u < w; ++u) o[u] = T(0);
    for (int64_t n = 0; n < nb; ++n) {
      const T* __restrict row = x + (s * nb + n) * w;
      for (int64_t u = 0; u < w; ++u) o[u] += row[u];
    }
  }
}
inline torch::Tensor sum_rows(const torch::Tensor& x_in) {
  auto x = x_in.dim() == 2 ? x_in.unsqueeze(0) : x_in;
  auto out = torch::empty({x.size(0), x.size(2)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sum_rows", [&] {
    sum_rows_body<scalar_t>(x.contiguous().data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), x.size(0), x.size(1),
                            x.size(2));
  });
  return x_in.dim() == 2 ? out[0] : out;
}

// The sweep as one autograd node. tensors = (input, W0, b0, W1, b1, ...), weights [in, out];
// returns [2 + k, N, d] for an input of k = d or d + 1 columns: row 0 the value, row 1 + m
// the derivative in input column m, row 1 + k grad(div out).
struct DivergenceGradientSweep : public torch::autograd::Function<DivergenceGradientSweep> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, at::TensorList tensors, int64_t d,
                               int64_t activation) {
    torch::NoGradGuard no_grad;
    const auto act = static_cast<Activation>(activation);
    const auto& input = tensors[0];
    const int64_t H = static_cast<int64_t>(tensors.size() - 1) / 2 - 1;  // hidden layers
    const int64_t n = input.size(0), k = input.size(1);
    const auto& W0 = tensors[1];
    const auto& Wout = tensors[1 + 2 * H];
    auto out = torch::empty({2 + k, n, d}, input.options());
    // Per block, per hidden layer: the up slabs U = (a, da_1..da_d) and Z = act(U) as jets,
    // the down slabs D_i = d out_i / d h and Ahat_i = d out_i / d a, and act' .. act'''.
    std::vector<torch::Tensor> ups, stacks, downs, hats, derivs;
    for (int64_t r0 = 0; r0 < n; r0 += kDivergenceRows) {
      const int64_t nb = std::min(kDivergenceRows, n - r0);
      auto U = torch::empty({1 + d, nb, W0.size(1)}, input.options());
      auto U0 = U[0];
      torch::addmm_out(U0, tensors[2], input.narrow(0, r0, nb), W0);
      fill_rows(U.narrow(0, 1, d), W0.narrow(0, 0, d));  // layer 0 is affine: da/dx_m = W0[m]
      const size_t first = ups.size();
      for (int64_t l = 0; l < H; ++l) {
        auto Z = torch::empty_like(U);
        auto dv = up_activation(act, U, Z, d, l + 1 == H);
        ups.push_back(U);
        stacks.push_back(Z);
        derivs.insert(derivs.end(), dv.begin(), dv.end());
        if (l + 1 < H) {
          U = torch::mm(Z.view({(1 + d) * nb, -1}), tensors[3 + 2 * l]).view({1 + d, nb, -1});
          U[0].add_(tensors[4 + 2 * l]);
        }
      }
      auto value = out[0].narrow(0, r0, nb);
      torch::addmm_out(value, tensors[2 + 2 * H], stacks.back()[0], Wout);
      // Down: D_i = column i of the output weights at the last hidden layer, then
      // D <- (act' D) W_l^T layer by layer.
      auto grad = torch::zeros({nb, d}, input.options());
      auto D = torch::empty({d, nb, Wout.size(0)}, input.options());
      fill_rows(D, Wout.t());
      downs.resize(first + H);
      hats.resize(first + H);
      for (int64_t l = H - 1; l >= 0; --l) {
        const auto& Ul = ups[first + l];
        const int64_t w = Ul.size(2);
        auto Ahat = torch::empty_like(D);
        const auto& d1 = derivs[3 * (first + l)];
        const auto& d2 = derivs[3 * (first + l) + 1];
        AT_DISPATCH_FLOATING_TYPES(U.scalar_type(), "divergence_gradient_down", [&] {
          down_forward_loop(Ul.data_ptr<scalar_t>(), D.data_ptr<scalar_t>(), Ahat.data_ptr<scalar_t>(),
                            d1.data_ptr<scalar_t>(), d2.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), d, nb, w);
        });
        downs[first + l] = D;
        hats[first + l] = Ahat;
        if (l > 0) D = torch::mm(Ahat.view({d * nb, w}), tensors[1 + 2 * l].t()).view({d, nb, -1});
      }
      // d out_i / d input_m = Ahat_i at layer 0 times row m of W0.
      auto T = torch::mm(hats[first].view({d * nb, -1}), W0.t()).view({d, nb, k});
      out.narrow(0, 1, k).narrow(1, r0, nb).copy_(T.permute({2, 1, 0}));
      out[1 + k].narrow(0, r0, nb).copy_(grad);
    }
    ctx->save_for_backward(std::vector<torch::Tensor>(tensors.begin(), tensors.end()));
    ctx->saved_data["ups"] = ups;
    ctx->saved_data["stacks"] = stacks;
    ctx->saved_data["downs"] = downs;
    ctx->saved_data["hats"] = hats;
    ctx->saved_data["derivs"] = derivs;
    ctx->saved_data["d"] = d;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (torch::GradMode::is_enabled())
      throw Error("divergence_gradient_jets is differentiable once; use MLP::jets for higher derivatives");
    auto saved = ctx->get_saved_variables();
    auto ups = ctx->saved_data["ups"].toTensorVector();
    auto stacks = ctx->saved_data["stacks"].toTensorVector();
    auto downs = ctx->saved_data["downs"].toTensorVector();
    auto hats = ctx->saved_data["hats"].toTensorVector();
    auto derivs = ctx->saved_data["derivs"].toTensorVector();
    const int64_t d = ctx->saved_data["d"].toInt();
    const auto& input = saved[0];
    const int64_t H = static_cast<int64_t>(saved.size() - 1) / 2 - 1;
    const int64_t n = input.size(0), k = input.size(1);
    torch::autograd::variable_list out(saved.size() + 2);  // + the two non-tensor arguments
    if (!grads[0].defined()) return out;
    for (size_t p = 1; p < saved.size(); ++p) out[p] = torch::zeros_like(saved[p]);
    const bool input_grad = ctx->needs_input_grad(0);
    if (input_grad) out[0] = torch::empty_like(input);
    const auto& W0 = saved[1];
    const auto& Wout = saved[1 + 2 * H];
    const auto& g_out = grads[0];
    // Blocks last to first: the forward pass touched the last block's slabs most recently.
    const int64_t blocks = (n + kDivergenceRows - 1) / kDivergenceRows;
    for (int64_t block = blocks - 1; block >= 0; --block) {
      const int64_t r0 = block * kDivergenceRows, nb = std::min(kDivergenceRows, n - r0);
      const int64_t base = block * H;
      auto g_value = g_out[0].narrow(0, r0, nb);
      auto g_first = g_out.narrow(0, 1, k).narrow(1, r0, nb).permute({2, 1, 0}).contiguous().view({d * nb, k});
      auto g_grad = g_out[1 + k].narrow(0, r0, nb).contiguous();
      // First derivatives = Ahat_0 W0^T.
      out[1].addmm_(g_first.t(), hats[base].view({d * nb, -1}));
      auto Abar = torch::mm(g_first, W0).view({d, nb, -1});
      // Reverse of the down sweep, from the input layer up: the gradients of Ahat_l (kept for
      // the up sweep's reverse) and of D_l.
      std::vector<torch::Tensor> abars(H);
      torch::Tensor Dbar;
      for (int64_t l = 0; l < H; ++l) {
        const auto& Ul = ups[base + l];
        const int64_t w = Ul.size(2);
        if (l > 0) {  // D_{l-1} = Ahat_l W_l^T
          auto flat = Dbar.view({d * nb, -1});
          out[1 + 2 * l].addmm_(flat.t(), hats[base + l].view({d * nb, w}));
          Abar = torch::mm(flat, saved[1 + 2 * l]).view({d, nb, w});
        }
        abars[l] = Abar;
        Dbar = torch::empty({d, nb, w}, input.options());
        const auto* dv = &derivs[3 * (base + l)];
        AT_DISPATCH_FLOATING_TYPES(Ul.scalar_type(), "divergence_gradient_down_backward", [&] {
          down_backward_loop(Ul.data_ptr<scalar_t>(), Abar.data_ptr<scalar_t>(), g_grad.data_ptr<scalar_t>(),
                             dv[0].data_ptr<scalar_t>(), dv[1].data_ptr<scalar_t>(), Dbar.data_ptr<scalar_t>(), d, nb,
                             w);
        });
      }
      out[1 + 2 * H].add_(sum_rows(Dbar).t());  // D at the last hidden layer is Wout's columns
      // Reverse of the up sweep, from the output down.
      const auto& last = stacks[base + H - 1];
      out[1 + 2 * H].addmm_(last[0].t(), g_value);
      out[2 + 2 * H].add_(g_value.sum(0));
      auto GZ = torch::empty_like(last);
      GZ.narrow(0, 1, d).zero_();
      auto GZ0 = GZ[0];
      torch::mm_out(GZ0, g_value, Wout.t());
      for (int64_t l = H - 1; l >= 0; --l) {
        const auto& Ul = ups[base + l];
        const auto* dv = &derivs[3 * (base + l)];
        AT_DISPATCH_FLOATING_TYPES(Ul.scalar_type(), "divergence_gradient_up_backward", [&] {
          up_backward_loop(Ul.data_ptr<scalar_t>(), downs[base + l].data_ptr<scalar_t>(),
                           abars[l].data_ptr<scalar_t>(), g_grad.data_ptr<scalar_t>(), dv[0].data_ptr<scalar_t>(),
                           dv[1].data_ptr<scalar_t>(), dv[2].data_ptr<scalar_t>(), GZ.data_ptr<scalar_t>(), d, nb,
                           Ul.size(2));
        });
        if (l > 0) {  // GZ is now the gradient of U_l
          auto flat = GZ.view({(1 + d) * nb, -1});
          out[1 + 2 * l].addmm_(stacks[base + l - 1].view({(1 + d) * nb, -1}).t(), flat);
          out[2 + 2 * l].add_(sum_rows(GZ[0]));
          GZ = torch::mm(flat, saved[1 + 2 * l].t()).view({1 + d, nb, -1});
        }
      }
      // Layer 0: a = input W0 + b0, da_m = W0[m].
      out[1].addmm_(input.narrow(0, r0, nb).t(), GZ[0]);
      out[1].narrow(0, 0, d).add_(sum_rows(GZ.narrow(0, 1, d)));
      out[2].add_(sum_rows(GZ[0]));
      if (input_grad) out[0].narrow(0, r0, nb).copy_(GZ[0].mm(W0.t()));
    }
    return out;
  }
};

}  // namespace detail

// The output of `net` at `input` ([N, d] or [N, d + 1] with time last; the output has d
// components) with its Jacobian, time derivative and grad(div out), in one sweep.
inline DivergenceGradientJets divergence_gradient_jets(const MLP& net, const torch::Tensor& input, int64_t d) {
  const auto params = net.parameters();
  const int64_t cols = input.size(1);
  if (d < 1 || d > cols || cols > d + 1 || params.size() < 4 || cols != params[0].size(0) ||
      params[params.size() - 2].size(1) != d)
    throw Error("divergence_gradient_jets: needs a network with at least one hidden layer, an input of d = " +
                std::to_string(d) + " space columns and at most one time column, and d outputs");
  std::vector<torch::Tensor> tensors{input.contiguous()};
  tensors.insert(tensors.end(), params.begin(), params.end());
  auto out = detail::DivergenceGradientSweep::apply(at::TensorList(tensors), d,
                                                    static_cast<int64_t>(net.activation()));
  DivergenceGradientJets result;
  result.value = out[0];
  result.jacobian = out.narrow(0, 1, d).permute({1, 0, 2});
  if (cols > d) result.time = out[d + 1];
  result.divergence_gradient = out[cols + 1];
  return result;
}

}  // namespace mfglab::nn
