// Forward-mode jets of an MLP that carry chosen second derivatives in x: each second-order
// slab is a sum of d_i d_j over a list of pairs (i <= j < d). MLP::fused_jets carries one
// slab, the Laplacian (every (i, i)); the score PDE's gradient form needs grad(div s),
// which mixes components, so it carries the whole Hessian, one slab per pair (i <= j).
//
// One sweep, one autograd node (detail::SecondOrderSweep) with a hand-written reverse pass,
// laid out as MLP::fused_jets: the slabs [K, N, w] of a layer are (a, da/dx_1..da/dx_d,
// [da/dt], second-order slabs) and go through each weight matrix in one matmul. The
// elementwise work of the activation (forward and reverse) is one loop over blocks of a
// layer, with act .. act''' computed once per element, instead of dozens of tensor passes.
// Differentiable once (parameters and input), which is what a training loss needs.
#pragma once

#include <cstring>
#include <utility>
#include <vector>

#include "mfglab/nn.h"

namespace mfglab::nn {

// Which second derivatives a sweep carries.
enum class SecondOrderKind : int64_t {
  laplacian = 0,  // one slab: sum_i d_i d_i
  hessian = 1,    // d (d + 1) / 2 slabs: d_i d_j for i <= j, in the order of hessian_slab()
  // For a scalar potential U with a time column: every d_p d_q over the directions x_1..x_d,
  // t except (t, t), in the order of hessian_slab(p, q, d + 1), and the third-order slabs
  // d_k Lap U, k < d (silu and tanh only: their reverse pass needs act'''').
  potential = 2,
};

// The slab of pair (i, j) (either order) among the Hessian's: row-major upper triangle.
inline int64_t hessian_slab(int64_t i, int64_t j, int64_t d) {
  if (i > j) std::swap(i, j);
  return i * d - i * (i - 1) / 2 + (j - i);
}

// An MLP's output with its first derivatives and the requested second derivatives in x.
struct SecondOrderJets {
  torch::Tensor value;     // [N, m]
  torch::Tensor jacobian;  // [N, d, m]: jacobian[n][k][j] = d out_j / d x_k
  torch::Tensor time;      // [N, m], undefined without a time column
  torch::Tensor second;    // [S, N, m]: one row per second-order slab
  torch::Tensor third;     // [d, N, m]: d_k Lap out (kind potential), else undefined
};

namespace detail {

using PairList = std::vector<std::pair<int64_t, int64_t>>;

// The second-order slabs of a sweep with d space and k first-order directions.
inline std::vector<PairList> second_order_pairs(SecondOrderKind kind, int64_t d, int64_t k) {
  std::vector<PairList> slabs;
  if (kind == SecondOrderKind::potential) {
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = i; j < k; ++j)
        if (i < d) slabs.push_back({{i, j}});
  } else if (kind == SecondOrderKind::laplacian) {
    PairList all;
    for (int64_t i = 0; i < d; ++i) all.emplace_back(i, i);
    slabs.push_back(all);
  } else {
    for (int64_t i = 0; i < d; ++i)
      for (int64_t j = i; j < d; ++j) slabs.push_back({{i, j}});
  }
  return slabs;
}

// act, act', act'', act''' at one point, for the looped activations.
// act and its first three derivatives at one point, for the looped activations. silu = a s
// with u = s (1 - s), c = 1 - 2 s: s' = u, s'' = u c, s''' = u (c^2 - 2 u), s'''' = u c (c^2 - 8 u),
// and silu^(n) = a s^(n) + n s^(n-1). tanh with p = 1 - tanh^2: p' = -2 tanh p.
template <class T>
inline void silu_point4(T a, T& v, T& d1, T& d2, T& d3) {
  const T s = T(1) / (T(1) + fast::exp(-a));
  const T u = s * (T(1) - s), c = T(1) - T(2) * s;
  v = a * s;
  d1 = s + v * (T(1) - s);
  d2 = u * (T(2) + a * c);
  d3 = u * (c * (T(3) + a * c) - T(2) * a * u);
}
template <class T>
inline void tanh_point4(T a, T& v, T& d1, T& d2, T& d3) {
  T slope;
  tanh_point<T>(a, v, slope);
  d1 = slope;
  d2 = T(-2) * v * slope;
  d3 = T(2) * slope * (T(2) * v * v - slope);
}
// act'''' alone: only the third-order sweep needs it, and a separate loop keeps both
// loops vectorised (GCC gives up on one loop with six arrays).
template <class T>
inline T silu_fourth(T a) {
  const T s = T(1) / (T(1) + fast::exp(-a));
  const T u = s * (T(1) - s), c = T(1) - T(2) * s;
  return u * (T(4) * (c * c - T(2) * u) + a * c * (c * c - T(8) * u));
}
template <class T>
inline T tanh_fourth(T a) {
  T v, slope;
  tanh_point<T>(a, v, slope);
  return T(8) * v * slope * (T(2) * slope - v * v);
}

template <class T>
__attribute__((always_inline)) inline void derivs4_body(bool silu, const T* a, T* v, T* d1, T* d2, T* d3, int64_t n) {
  if (silu)
    for (int64_t e = 0; e < n; ++e) silu_point4<T>(a[e], v[e], d1[e], d2[e], d3[e]);
  else
    for (int64_t e = 0; e < n; ++e) tanh_point4<T>(a[e], v[e], d1[e], d2[e], d3[e]);
}
template <class T>
__attribute__((always_inline)) inline void fourth_body(bool silu, const T* a, T* d4, int64_t n) {
  if (silu)
    for (int64_t e = 0; e < n; ++e) d4[e] = silu_fourth<T>(a[e]);
  else
    for (int64_t e = 0; e < n; ++e) d4[e] = tanh_fourth<T>(a[e]);
}
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) inline void derivs4_loop(
    bool silu, const float* a, float* v, float* d1, float* d2, float* d3, int64_t n) {
  derivs4_body<float>(silu, a, v, d1, d2, d3, n);
}
inline void derivs4_loop(bool silu, const double* a, double* v, double* d1, double* d2, double* d3, int64_t n) {
  derivs4_body<double>(silu, a, v, d1, d2, d3, n);
}
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) inline void fourth_loop(
    bool silu, const float* a, float* d4, int64_t n) {
  fourth_body<float>(silu, a, d4, n);
}
inline void fourth_loop(bool silu, const double* a, double* d4, int64_t n) { fourth_body<double>(silu, a, d4, n); }

// Whether the activation's loops (and so the third-order sweep) apply to tensors like a.
inline bool looped(Activation act, const torch::Tensor& a) {
  return (act == Activation::silu || act == Activation::tanh) && a.device().is_cpu() &&
         (a.scalar_type() == torch::kFloat || a.scalar_type() == torch::kDouble);
}

// (act, act', act'', act''', act'''') at a [N, w]: loops for silu and tanh (act'''' only when
// `fourth`); closed forms otherwise, where act'''' is not needed and repeats act'''.
inline std::vector<torch::Tensor> derivs5(Activation act, const torch::Tensor& a, bool fourth) {
  if (!looped(act, a) || !a.is_contiguous()) {
    auto d = activation_derivatives3(act, a);
    auto third = d.third.contiguous();
    return {activate(act, a).contiguous(), d.first.contiguous(), d.second.contiguous(), third, third};
  }
  std::vector<torch::Tensor> out;
  for (int i = 0; i < 4; ++i) out.push_back(torch::empty_like(a));
  const bool silu = act == Activation::silu;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "derivs5", [&] {
    derivs4_loop(silu, a.data_ptr<scalar_t>(), out[0].data_ptr<scalar_t>(), out[1].data_ptr<scalar_t>(),
                 out[2].data_ptr<scalar_t>(), out[3].data_ptr<scalar_t>(), a.numel());
    if (fourth) {
      out.push_back(torch::empty_like(a));
      fourth_loop(silu, a.data_ptr<scalar_t>(), out[4].data_ptr<scalar_t>(), a.numel());
    } else {
      out.push_back(out[3]);
    }
  });
  return out;
}

// Elements per block of the slab loops: every slab's block stays in L1. Every loop over a
// block's elements reads and writes element e only (the slabs are disjoint or the same
// array): "#pragma GCC ivdep" says so where GCC would otherwise give up or test at run time.
constexpr int64_t kJetBlock = 512;

// Through the activation, slabs A -> Z ([K, N, w] each, slab stride `stride`):
//   Z_0 = act(a),  Z_m = act' da_m,  Z_s = act'' sum_{(i,j) in s} da_i da_j + act' A_s.
template <class T>
__attribute__((always_inline)) inline void jet_forward_body(const T* A, T* Z, const T* v, const T* d1, const T* d2, int64_t k,
                             const std::vector<PairList>& slabs, int64_t stride, int64_t n) {
  for (int64_t b0 = 0; b0 < n; b0 += kJetBlock) {
    const int64_t nb = std::min(kJetBlock, n - b0);
    const T* __restrict g1 = d1 + b0;
    const T* __restrict g2 = d2 + b0;
    std::memcpy(Z + b0, v + b0, sizeof(T) * nb);
    for (int64_t m = 1; m <= k; ++m) {
      const T* __restrict in = A + m * stride + b0;
      T* __restrict out = Z + m * stride + b0;
      #pragma GCC ivdep
      for (int64_t e = 0; e < nb; ++e) out[e] = g1[e] * in[e];
    }
    for (size_t s = 0; s < slabs.size(); ++s) {
      const int64_t slab = 1 + k + static_cast<int64_t>(s);
      const T* __restrict in = A + slab * stride + b0;
      T* __restrict out = Z + slab * stride + b0;
      T q[kJetBlock];
      #pragma GCC ivdep
      for (int64_t e = 0; e < nb; ++e) q[e] = T(0);
      for (const auto& [i, j] : slabs[s]) {
        const T* __restrict ai = A + (1 + i) * stride + b0;
        const T* __restrict aj = A + (1 + j) * stride + b0;
        #pragma GCC ivdep
        for (int64_t e = 0; e < nb; ++e) q[e] += ai[e] * aj[e];
      }
      #pragma GCC ivdep
      for (int64_t e = 0; e < nb; ++e) out[e] = g2[e] * q[e] + g1[e] * in[e];
    }
  }
}

// Reverse of jet_forward_body, in place: G holds the gradient of the output slabs and is
// overwritten by that of the input slabs. With Q_s = sum_{(i,j) in s} da_i da_j,
//   gA_s = act' G_s
//   gA_m = act' G_m + act'' sum_s G_s dQ_s/d(da_m)
//   gA_0 = act' G_0 + act'' (sum_m da_m G_m + sum_s A_s G_s) + act''' sum_s Q_s G_s
template <class T>
__attribute__((always_inline)) inline void jet_backward_body(const T* A, T* G, const T* d1, const T* d2, const T* d3,
                                                             int64_t k, const std::vector<PairList>& slabs,
                                                             int64_t stride, int64_t n) {
  const int64_t S = static_cast<int64_t>(slabs.size());
  for (int64_t b0 = 0; b0 < n; b0 += kJetBlock) {
    const int64_t nb = std::min(kJetBlock, n - b0);
    const T* __restrict g1 = d1 + b0;
    const T* __restrict g2 = d2 + b0;
    const T* __restrict g3 = d3 + b0;
    T first[kJetBlock], third[kJetBlock];  // the act'' and act''' sums of gA_0
    #pragma GCC ivdep
    for (int64_t e = 0; e < nb; ++e) first[e] = third[e] = T(0);
    for (int64_t m = 1; m <= k; ++m) {
      const T* __restrict a = A + m * stride + b0;
      T* __restrict g = G + m * stride + b0;
      #pragma GCC ivdep
      for (int64_t e = 0; e < nb; ++e) {
        first[e] += a[e] * g[e];
        g[e] *= g1[e];
      }
    }
    for (int64_t s = 0; s < S; ++s) {
      const T* __restrict a = A + (1 + k + s) * stride + b0;
      T* __restrict g = G + (1 + k + s) * stride + b0;
      T gs[kJetBlock], w[kJetBlock];  // G_s and act'' G_s, before G_s is overwritten
      #pragma GCC ivdep
      for (int64_t e = 0; e < nb; ++e) {
        gs[e] = g[e];
        first[e] += a[e] * g[e];
        w[e] = g2[e] * g[e];
        g[e] *= g1[e];
      }
      for (const auto& [i, j] : slabs[s]) {
        const T* __restrict ai = A + (1 + i) * stride + b0;
        const T* __restrict aj = A + (1 + j) * stride + b0;
        T* __restrict oi = G + (1 + i) * stride + b0;
        if (i == j) {
          #pragma GCC ivdep
          for (int64_t e = 0; e < nb; ++e) {
            oi[e] += T(2) * w[e] * ai[e];
            third[e] += ai[e] * ai[e] * gs[e];
          }
        } else {
          T* __restrict oj = G + (1 + j) * stride + b0;
          #pragma GCC ivdep
          for (int64_t e = 0; e < nb; ++e) {
            oi[e] += w[e] * aj[e];
            oj[e] += w[e] * ai[e];
            third[e] += ai[e] * aj[e] * gs[e];
          }
        }
      }
    }
    T* __restrict g0 = G + b0;
    #pragma GCC ivdep
    for (int64_t e = 0; e < nb; ++e) g0[e] = g1[e] * g0[e] + g2[e] * first[e] + g3[e] * third[e];
  }
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) inline void jet_forward_loop(
    const float* A, float* Z, const float* v, const float* d1, const float* d2, int64_t k,
    const std::vector<PairList>& slabs, int64_t stride, int64_t n) {
  jet_forward_body<float>(A, Z, v, d1, d2, k, slabs, stride, n);
}
inline void jet_forward_loop(const double* A, double* Z, const double* v, const double* d1, const double* d2,
                             int64_t k, const std::vector<PairList>& slabs, int64_t stride, int64_t n) {
  jet_forward_body<double>(A, Z, v, d1, d2, k, slabs, stride, n);
}
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) inline void jet_backward_loop(
    const float* A, float* G, const float* d1, const float* d2, const float* d3, int64_t k,
    const std::vector<PairList>& slabs, int64_t stride, int64_t n) {
  jet_backward_body<float>(A, G, d1, d2, d3, k, slabs, stride, n);
}
inline void jet_backward_loop(const double* A, double* G, const double* d1, const double* d2, const double* d3,
                              int64_t k, const std::vector<PairList>& slabs, int64_t stride, int64_t n) {
  jet_backward_body<double>(A, G, d1, d2, d3, k, slabs, stride, n);
}

// S = sum_i (da_i)^2 and L = sum_i a_ii over the space directions i < d, for the nb elements
// of a block starting at b0: the sums that the third-order sweep and its reverse share.
template <class T>
__attribute__((always_inline)) inline void jet3_square_and_laplacian(const T* A, int64_t d, int64_t k, int64_t stride,
                                                                     int64_t b0, int64_t nb, T* __restrict sq,
                                                                     T* __restrict lap) {
  #pragma GCC ivdep
  for (int64_t e = 0; e < nb; ++e) sq[e] = lap[e] = T(0);
  for (int64_t i = 0; i < d; ++i) {
    const T* __restrict ai = A + (1 + i) * stride + b0;
    const T* __restrict aii = A + (1 + k + hessian_slab(i, i, k)) * stride + b0;
    #pragma GCC ivdep
    for (int64_t e = 0; e < nb; ++e) {
      sq[e] += ai[e] * ai[e];
      lap[e] += aii[e];
    }
  }
}

// The third-order slabs of kind potential through the activation, after jet_forward_body:
//   Z_Tk = act''' a_k S + act'' (2 M_k + a_k L) + act' A_Tk,
// with S = sum_i (da_i)^2, L = sum_i a_ii (Lap a), M_k = sum_i a_ik da_i over space
// directions i < d. pair(i, j) is the slab of d_i d_j (hessian_slab over k directions).
template <class T>
__attribute__((always_inline)) inline void jet3_forward_body(const T* A, T* Z, const T* d1, const T* d2, const T* d3,
                                                             int64_t d, int64_t k, int64_t S, int64_t stride,
                                                             int64_t n) {
  auto pair = [&](int64_t i, int64_t j) { return 1 + k + hessian_slab(i, j, k); };
  for (int64_t b0 = 0; b0 < n; b0 += kJetBlock) {
    const int64_t nb = std::min(kJetBlock, n - b0);
    const T* __restrict g1 = d1 + b0;
    const T* __restrict g2 = d2 + b0;
    const T* __restrict g3 = d3 + b0;
    T sq[kJetBlock], lap[kJetBlock];
    jet3_square_and_laplacian(A, d, k, stride, b0, nb, sq, lap);
    for (int64_t kk = 0; kk < d; ++kk) {
      const T* __restrict ak = A + (1 + kk) * stride + b0;
      const T* __restrict at = A + (1 + k + S + kk) * stride + b0;
      T* __restrict out = Z + (1 + k + S + kk) * stride + b0;
      T m[kJetBlock];
      #pragma GCC ivdep
      for (int64_t e = 0; e < nb; ++e) m[e] = T(0);
      for (int64_t i = 0; i < d; ++i) {
        const T* __restrict ai = A + (1 + i) * stride + b0;
        const T* __restrict aik = A + pair(i, kk) * stride + b0;
        #pragma GCC ivdep
        for (int64_t e = 0; e < nb; ++e) m[e] += aik[e] * ai[e];
      }
      #pragma GCC ivdep
      for (int64_t e = 0; e < nb; ++e)
        out[e] = g3[e] * ak[e] * sq[e] + g2[e] * (T(2) * m[e] + ak[e] * lap[e]) + g1[e] * at[e];
    }
  }
}

// Reverse of jet3_forward_body, after jet_backward_body: G's third-order slabs still hold
// the output gradient G_Tk, its other slabs already the input gradient, to which this adds
//   gA_0    += G_Tk (act'''' a_k S + act''' (2 M_k + a_k L) + act'' A_Tk)
//   gA_i    += G_Tk (2 act''' a_k a_i + 2 act'' a_ik),  gA_k += G_Tk (act''' S + act'' L)
//   gA_ik   += 2 act'' a_i G_Tk,  gA_ii += act'' a_k G_Tk
// and then sets gA_Tk = act' G_Tk.
template <class T>
__attribute__((always_inline)) inline void jet3_backward_body(const T* A, T* G, const T* d1, const T* d2, const T* d3,
                                                              const T* d4, int64_t d, int64_t k, int64_t S,
                                                              int64_t stride, int64_t n) {
  auto pair = [&](int64_t i, int64_t j) { return 1 + k + hessian_slab(i, j, k); };
  for (int64_t b0 = 0; b0 < n; b0 += kJetBlock) {
    const int64_t nb = std::min(kJetBlock, n - b0);
    const T* __restrict g1 = d1 + b0;
    const T* __restrict g2 = d2 + b0;
    const T* __restrict g3 = d3 + b0;
    const T* __restrict g4 = d4 + b0;
    T sq[kJetBlock], lap[kJetBlock];
    jet3_square_and_laplacian(A, d, k, stride, b0, nb, sq, lap);
    T* __restrict g0 = G + b0;
    for (int64_t kk = 0; kk < d; ++kk) {
      const T* __restrict ak = A + (1 + kk) * stride + b0;
      const T* __restrict at = A + (1 + k + S + kk) * stride + b0;
      T* __restrict gt = G + (1 + k + S + kk) * stride + b0;
      T m[kJetBlock], c2[kJetBlock], c3[kJetBlock];  // M_k, act'' G_Tk, act''' G_Tk
      #pragma GCC ivdep
      for (int64_t e = 0; e < nb; ++e) {
        m[e] = T(0);
        c2[e] = g2[e] * gt[e];
        c3[e] = g3[e] * gt[e];
      }
      for (int64_t i = 0; i < d; ++i) {
        const T* __restrict ai = A + (1 + i) * stride + b0;
        const T* __restrict aik = A + pair(i, kk) * stride + b0;
        T* __restrict gi = G + (1 + i) * stride + b0;
        T* __restrict gik = G + pair(i, kk) * stride + b0;
        #pragma GCC ivdep
        for (int64_t e = 0; e < nb; ++e) {
          m[e] += aik[e] * ai[e];
          gi[e] += T(2) * (c3[e] * ak[e] * ai[e] + c2[e] * aik[e]);
          gik[e] += T(2) * c2[e] * ai[e];
        }
      }
      for (int64_t i = 0; i < d; ++i) {
        T* __restrict gii = G + pair(i, i) * stride + b0;
        #pragma GCC ivdep
        for (int64_t e = 0; e < nb; ++e) gii[e] += c2[e] * ak[e];
      }
      T* __restrict gk = G + (1 + kk) * stride + b0;
      #pragma GCC ivdep
      for (int64_t e = 0; e < nb; ++e) {
        gk[e] += c3[e] * sq[e] + c2[e] * lap[e];
        g0[e] += gt[e] * (g4[e] * ak[e] * sq[e] + g3[e] * (T(2) * m[e] + ak[e] * lap[e]) + g2[e] * at[e]);
        gt[e] *= g1[e];
      }
    }
  }
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) inline void jet3_forward_loop(
    const float* A, float* Z, const float* d1, const float* d2, const float* d3, int64_t d, int64_t k, int64_t S,
    int64_t stride, int64_t n) {
  jet3_forward_body<float>(A, Z, d1, d2, d3, d, k, S, stride, n);
}
inline void jet3_forward_loop(const double* A, double* Z, const double* d1, const double* d2, const double* d3,
                              int64_t d, int64_t k, int64_t S, int64_t stride, int64_t n) {
  jet3_forward_body<double>(A, Z, d1, d2, d3, d, k, S, stride, n);
}
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) inline void jet3_backward_loop(
    const float* A, float* G, const float* d1, const float* d2, const float* d3, const float* d4, int64_t d,
    int64_t k, int64_t S, int64_t stride, int64_t n) {
  jet3_backward_body<float>(A, G, d1, d2, d3, d4, d, k, S, stride, n);
}
inline void jet3_backward_loop(const double* A, double* G, const double* d1, const double* d2, const double* d3,
                               const double* d4, int64_t d, int64_t k, int64_t S, int64_t stride, int64_t n) {
  jet3_backward_body<double>(A, G, d1, d2, d3, d4, d, k, S, stride, n);
}

// Samples per block of the sweep: a block's slabs (K x block x width floats, about 460 KB
// for K = 7 and width 128) stay in L2 between a layer's matrix product and its elementwise
// loop, where whole-batch slabs (3.7 MB at 1024 samples) would stream from memory.
constexpr int64_t kSweepRows = 128;

// The sweep as one autograd node. tensors = (input, W0, b0, W1, b1, ...); returns the
// output's slabs [K, N, m], K = 1 + cols + S. Each block of kSweepRows samples goes
// through all layers on its own; the weight gradients sum over blocks.
struct SecondOrderSweep : public torch::autograd::Function<SecondOrderSweep> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, at::TensorList tensors, int64_t d,
                               int64_t activation, int64_t kind) {
    torch::NoGradGuard no_grad;
    const auto act = static_cast<Activation>(activation);
    const auto& input = tensors[0];
    const size_t L = (tensors.size() - 1) / 2;
    const int64_t n = input.size(0), k = input.size(1);
    const auto slabs = second_order_pairs(static_cast<SecondOrderKind>(kind), d, k);
    const int64_t S = static_cast<int64_t>(slabs.size());
    const int64_t third = kind == static_cast<int64_t>(SecondOrderKind::potential) ? d : 0;
    const int64_t K = 1 + k + S + third;
    if (third > 0 && !looped(act, input))
      throw Error("second_order_jets: kind potential needs a silu or tanh network on the CPU");
    const auto& W0 = tensors[1];
    auto out = torch::empty({K, n, tensors[tensors.size() - 2].size(1)}, input.options());
    // Per block, then per hidden layer: the pre-activation slabs A, the activation slabs Z,
    // and act' .. act'''' at a.
    std::vector<torch::Tensor> pre, stacks, derivs;
    for (int64_t r0 = 0; r0 < n; r0 += kSweepRows) {
      const int64_t nb = std::min(kSweepRows, n - r0);
      // Layer 0 is affine in the input: da/dx_m is row m of W0 for every sample, no curvature.
      auto A = torch::empty({K, nb, W0.size(1)}, input.options());
      auto A0 = A[0];
      torch::addmm_out(A0, tensors[2], input.narrow(0, r0, nb), W0);
      A.narrow(0, 1, k).copy_(W0.unsqueeze(1));
      A.narrow(0, 1 + k, K - 1 - k).zero_();
      for (size_t i = 1; i < L; ++i) {
        auto Z = torch::empty_like(A);
        auto dv = derivs5(act, A[0], third > 0);
        AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "second_order_forward", [&] {
          jet_forward_loop(A.data_ptr<scalar_t>(), Z.data_ptr<scalar_t>(), dv[0].data_ptr<scalar_t>(),
                           dv[1].data_ptr<scalar_t>(), dv[2].data_ptr<scalar_t>(), k, slabs, A[0].numel(),
                           A[0].numel());
          if (third > 0)
            jet3_forward_loop(A.data_ptr<scalar_t>(), Z.data_ptr<scalar_t>(), dv[1].data_ptr<scalar_t>(),
                              dv[2].data_ptr<scalar_t>(), dv[3].data_ptr<scalar_t>(), d, k, S, A[0].numel(),
                              A[0].numel());
        });
        pre.push_back(A);
        stacks.push_back(Z);
        derivs.insert(derivs.end(), {dv[1], dv[2], dv[3], dv[4]});
        A = torch::mm(Z.view({K * nb, -1}), tensors[1 + 2 * i]).view({K, nb, -1});
        A[0].add_(tensors[2 + 2 * i]);
      }
      out.narrow(1, r0, nb).copy_(A);
    }
    ctx->save_for_backward(std::vector<torch::Tensor>(tensors.begin(), tensors.end()));
    ctx->saved_data["pre"] = pre;  // intermediates only: the output itself is never saved
    ctx->saved_data["stacks"] = stacks;
    ctx->saved_data["derivs"] = derivs;
    ctx->saved_data["d"] = d;
    ctx->saved_data["kind"] = kind;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (torch::GradMode::is_enabled())
      throw Error("second_order_jets is differentiable once; use MLP::jets for higher derivatives");
    auto saved = ctx->get_saved_variables();
    auto pre = ctx->saved_data["pre"].toTensorVector();
    auto stacks = ctx->saved_data["stacks"].toTensorVector();
    auto derivs = ctx->saved_data["derivs"].toTensorVector();
    const int64_t d = ctx->saved_data["d"].toInt(), kind = ctx->saved_data["kind"].toInt();
    const auto& input = saved[0];
    const size_t L = (saved.size() - 1) / 2, H = L - 1;  // H hidden layers
    const int64_t n = input.size(0), k = input.size(1);
    const auto slabs = second_order_pairs(static_cast<SecondOrderKind>(kind), d, k);
    const int64_t S = static_cast<int64_t>(slabs.size());
    const int64_t third = kind == static_cast<int64_t>(SecondOrderKind::potential) ? d : 0;
    const int64_t K = 1 + k + S + third;
    torch::autograd::variable_list out(saved.size() + 3);  // + the three non-tensor arguments
    if (!grads[0].defined()) return out;
    for (size_t p = 1; p < saved.size(); ++p) out[p] = torch::zeros_like(saved[p]);
    const bool input_grad = ctx->needs_input_grad(0);
    if (input_grad) out[0] = torch::empty_like(input);
    const auto& W0 = saved[1];
    int64_t block = 0;
    for (int64_t r0 = 0; r0 < n; r0 += kSweepRows, ++block) {
      const int64_t nb = std::min(kSweepRows, n - r0);
      // Gradient of the current layer's pre-activation slabs, this block's rows.
      auto G = grads[0].narrow(1, r0, nb).contiguous();
      for (size_t i = L - 1; i > 0; --i) {
        const size_t h = block * H + (i - 1);  // this block's hidden layer i - 1
        const auto& W = saved[1 + 2 * i];
        auto G2 = G.view({K * nb, -1});
        out[1 + 2 * i].addmm_(stacks[h].view({K * nb, -1}).t(), G2);
        out[2 + 2 * i].add_(G[0].sum(0));
        auto GZ = G2.mm(W.t()).view({K, nb, -1});
        const auto& A = pre[h];
        const auto* dv = &derivs[4 * h];
        AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "second_order_backward", [&] {
          jet_backward_loop(A.data_ptr<scalar_t>(), GZ.data_ptr<scalar_t>(),
                            dv[0].data_ptr<scalar_t>(), dv[1].data_ptr<scalar_t>(), dv[2].data_ptr<scalar_t>(), k,
                            slabs, A[0].numel(), A[0].numel());
          if (third > 0)
            jet3_backward_loop(A.data_ptr<scalar_t>(), GZ.data_ptr<scalar_t>(), dv[0].data_ptr<scalar_t>(),
                               dv[1].data_ptr<scalar_t>(), dv[2].data_ptr<scalar_t>(), dv[3].data_ptr<scalar_t>(), d, k,
                               S, A[0].numel(), A[0].numel());
        });
        G = GZ;
      }
      // Layer 0: a = input W0 + b0, da_m = W0[m]; its second-order slabs are constant zeros.
      out[1].addmm_(input.narrow(0, r0, nb).t(), G[0]);
      out[1].add_(G.narrow(0, 1, k).sum(1));
      out[2].add_(G[0].sum(0));
      if (input_grad) out[0].narrow(0, r0, nb).copy_(G[0].mm(W0.t()));
    }
    return out;
  }
};

}  // namespace detail

// The output of `net` at `input` ([N, d] or [N, d + 1] with time last) with its first
// derivatives and the second derivatives in x that `kind` asks for, in one sweep.
inline SecondOrderJets second_order_jets(const MLP& net, const torch::Tensor& input, int64_t d, SecondOrderKind kind) {
  const auto params = net.parameters();
  const int64_t cols = input.size(1);
  if (d < 1 || d > cols || cols > d + 1 || params.empty() || cols != params[0].size(0))
    throw Error("second_order_jets: the input must have the network's " +
                std::to_string(params.empty() ? 0 : params[0].size(0)) + " columns: d = " + std::to_string(d) +
                " space columns and at most one time column");
  std::vector<torch::Tensor> tensors{input.contiguous()};
  tensors.insert(tensors.end(), params.begin(), params.end());
  auto out = detail::SecondOrderSweep::apply(at::TensorList(tensors), d, static_cast<int64_t>(net.activation()),
                                             static_cast<int64_t>(kind));
  SecondOrderJets result;
  result.value = out[0];
  result.jacobian = out.narrow(0, 1, d).permute({1, 0, 2});
  if (cols > d) result.time = out[d + 1];
  const int64_t third = kind == SecondOrderKind::potential ? d : 0;
  result.second = out.narrow(0, 1 + cols, out.size(0) - 1 - cols - third);
  if (third > 0) result.third = out.narrow(0, out.size(0) - third, third);
  return result;
}

// grad(div out)_j = sum_i d_j d_i out_i, [N, d], from the slabs of a SecondOrderKind::hessian
// sweep of an output with d components: one gather of the Hessian slabs' entries.
inline torch::Tensor divergence_gradient(const SecondOrderJets& jets, int64_t d) {
  const int64_t n = jets.value.size(0), S = jets.second.defined() ? jets.second.size(0) : 0;
  if (S != d * (d + 1) / 2 || jets.value.size(1) != d)
    throw Error("divergence_gradient: needs the d (d + 1) / 2 slabs of a SecondOrderKind::hessian sweep of an output "
                "with d = " + std::to_string(d) + " components");
  std::vector<int64_t> index;
  for (int64_t j = 0; j < d; ++j)
    for (int64_t i = 0; i < d; ++i) index.push_back(hessian_slab(i, j, d) * d + i);
  auto flat = jets.second.permute({1, 0, 2}).reshape({n, S * d});
  return flat.index_select(1, torch::tensor(index)).view({n, d, d}).sum(2);
}

}  // namespace mfglab::nn
