// The OT-Flow objective of one block of samples and its exact parameter gradient, for a
// quadratic Hamiltonian H(p) = sum_k c_k p_k^2 / (2 lambda) (isotropic: c = 1; diagonal:
// c_k = lambda / lambda_k), on raw pointers (no LibTorch inside):
// forward RK4 over the augmented state z = [x, l, L, R], the loss terms, then the adjoint
// of RK4 with a hand-written vector-Jacobian product of the right-hand side at every stage.
//
// Right-hand side at s = (x, t), with g = grad_s Phi and tr = tr(Hess_xx Phi):
//   f = [v, div v, kin, res],  v_k = -c_k g_k / lambda,  div v = -tr / lambda,
//   kin = sum_k c_k g_k^2 / (2 lambda),  res = |kin - g_t|,
// where tr = sum_k c_k (Hess_xx Phi)_kk is the c-weighted trace.
// Potential (<mfglab/potential.h>; rows are samples, weights stored [in, out]):
//   a_0 = s K_0 + b_0,  u_0 = lc(a_0),  a_i = u_{i-1} K_i + b_i,  u_i = u_{i-1} + h lc(a_i),
//   th_i = tanh(a_i) = lc'(a_i),  sech_i = 1 - th_i^2 = lc''(a_i),      i = 1..M, h = 1/M
//   z_M = w,  z_{i-1} = z_i + h (th_i * z_i) K_i^T                       (z_i = dPhi/du_i)
//   g = s S + b + (th_0 * z_0) K_0^T,  S = A^T A
//   tr = (sech_0 * z_0) . q + sum_k c_k S_kk,  q_j = sum_{k<d} c_k K_0[k, j]^2
//        + sum_i h sum_k (sech_i * z_i) . (KJ_i^k)^2,
//   J_0^k = th_0 * sqrt(c_k) K_0[k, :],  KJ_i^k = J_{i-1}^k K_i,  J_i^k = J_{i-1}^k + h th_i * KJ_i^k
// (J_i^k = sqrt(c_k) du_i/dx_k as a row, k < d: the weights ride on the Jacobian rows, so the
// weighted trace costs nothing over the plain one; with c = 1 every product by c is exact and
// the isotropic results are bit for bit those of an unweighted kernel).
//
// Layout trick: per layer i the rows [u_{i-1}; J_{i-1}^0 .. J_{i-1}^{d-1}] sit in one buffer,
// so that a_i and all KJ_i come from one matrix product with K_i, and in the reverse sweep
// the three contributions to dK_i (from a_i, KJ_i and z_{i-1}) are one product too.
//
// The adjoints of l, L, R are constant in time (f does not depend on them), so each stage's
// output adjoint is a per-sample x part plus three scalars.
//
// This header holds what the driver (block_loss.cpp) shares with the kernel; the kernel itself
// is block_kernel_impl.h, compiled once per instruction set (block_kernel_*.cpp) and chosen at
// run time. Everything is templated on the scalar type: float for training, double for the
// tests against autograd.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace mfglab::otflow::kernel {

// Raw views of Potential::parameters() plus what every stage reuses.
template <class T>
struct Net {
  int d = 0, m = 0, M = 0, r = 0;  // data dim, width, residual layers, rows of A
  T h = 1;                         // ResNet step 1/M
  std::vector<const T*> K, b;      // K_0 [d+1, m], K_i [m, m]; b_i [m]
  const T *w = nullptr, *A = nullptr, *bvec = nullptr;
  std::vector<T> c;   // trace weights c_k, [d] (set before prepare(); empty: all 1)
  std::vector<T> S;   // A^T A, [d+1, d+1]
  std::vector<T> K0J; // sqrt(c_k) K_0[k, :], k < d: the rows J_0 is made of, [d, m]
  std::vector<T> q;   // q_j = sum_{k<d} c_k K_0[k, j]^2
  T trS = 0;          // sum_{k<d} c_k S_kk

  // Offsets of each parameter's gradient in the flat gradient (Potential::parameters()
  // order; A's slot holds dl/dS, converted to dl/dA once all blocks are summed).
  std::vector<int64_t> offK, offb;
  int64_t offw = 0, offS = 0, offbvec = 0, size = 0;

  void prepare() {
    const int d1 = d + 1;
    S.assign(d1 * d1, T(0));
    for (int i = 0; i < d1; ++i)
      for (int j = 0; j < d1; ++j) {
        T acc = 0;
        for (int k = 0; k < r; ++k) acc += A[k * d1 + i] * A[k * d1 + j];
        S[i * d1 + j] = acc;
      }
    if (c.empty()) c.assign(d, T(1));
    K0J.assign(static_cast<size_t>(d) * m, T(0));
    q.assign(m, T(0));
    for (int k = 0; k < d; ++k) {
      const T sc = std::sqrt(c[k]);
      for (int j = 0; j < m; ++j) {
        K0J[k * m + j] = sc * K[0][k * m + j];
        q[j] += c[k] * (K[0][k * m + j] * K[0][k * m + j]);
      }
    }
    trS = 0;
    for (int k = 0; k < d; ++k) trS += c[k] * S[k * d1 + k];
    offK.assign(M + 1, 0), offb.assign(M + 1, 0);
    int64_t o = 0;
    for (int i = 0; i <= M; ++i) {
      offK[i] = o, o += (i == 0 ? d1 : m) * m;
      offb[i] = o, o += m;
    }
    offw = o, o += m;
    offS = o, o += d1 * d1;  // A's place in the parameter list, holding dl/dS
    offbvec = o, o += d1;
    size = o + 1;  // c: no derivative depends on it
  }
};

// The settings of one loss evaluation.
template <class T>
struct Config {
  int steps = 8;
  T lambda = 1;
  T alpha[3] = {1, 100, 5};  // weights of L, C, R
  T seed[3] = {1, 1, 1};     // upstream gradients of the three weighted terms
  int64_t n = 0;             // whole batch size: every mean divides by it
  bool want_grad = true;
};

// What one block returns: its share of the three (weighted, batch-averaged) terms, the
// gradient of seed . terms (Net offsets), and the first RK4 step with a non-finite state
// (0: none).
template <class T>
struct Slot {
  double terms[3] = {0, 0, 0};
  std::vector<T> grad;
  int bad_step = 0;
};

// Per-stage intermediates of the right-hand side, for nb <= B rows.
// Runs blocks first, first + stride, ... of the batch x [n, d] (B samples each, the last one
// possibly fewer), each into its own slot. One scratch set for all of them.
#define MFGLAB_OTFLOW_RUN_BLOCKS(T) \
  void run_blocks(const Net<T>& net, const Config<T>& cfg, const T* x, int64_t n, int B, int64_t first, \
                  int64_t stride, Slot<T>* slots)
namespace generic {  // the compiler's default target (SSE2 on x86-64)
MFGLAB_OTFLOW_RUN_BLOCKS(float);
MFGLAB_OTFLOW_RUN_BLOCKS(double);
}  // namespace generic
#if defined(__x86_64__)
namespace avx2 {  // AVX2 and FMA
MFGLAB_OTFLOW_RUN_BLOCKS(float);
}  // namespace avx2
#endif

// grad_s Phi and the whole Hess_xx Phi of n points s [n, d+1] (for Hamiltonians without a
// closed form: otflow then takes H's own derivatives by autograd), and the vector-Jacobian
// product of both. With c_i = sech_i * z_i,
//   Hess_kl = sum_j c_0j K_0[k, j] K_0[l, j] + sum_{i>=1} h sum_j c_ij P_i^k_j P_i^l_j + S_kl,
//   J_0^k = th_0 * K_0[k],  P_i^k = J_{i-1}^k K_i,  J_i^k = J_{i-1}^k + h th_i * P_i^k
// (the unweighted J of the block kernel). The forward keeps what the reverse needs in a tape.
template <class T>
struct Tape {
  T *th, *z, *u, *J, *P;  // th_0..M, z_0..M-1, u_0..M-1 [n, m]; J_0..M-1, P_1..M [d, n, m]
  static size_t size(const Net<T>& net, int64_t n) {
    const size_t nm = static_cast<size_t>(n) * net.m, M = net.M, d = net.d;
    return (M + 1) * nm + 2 * M * nm + M * d * nm + (M + 1) * d * nm;
  }
  Tape(const Net<T>& net, int64_t n, T* base) {
    const size_t nm = static_cast<size_t>(n) * net.m, M = net.M, d = net.d;
    th = base, z = th + (M + 1) * nm, u = z + M * nm, J = u + M * nm, P = J + M * d * nm;
  }
};
// grad [n, d+1], hess [n, d, d]; the reverse takes gbar, hbar of those shapes, writes sbar
// [n, d+1] and adds the parameter adjoints into pgrad (Net offsets; S's slot holds dl/dS).
#define MFGLAB_OTFLOW_HESSIAN(T)                                                                          \
  void hessian_forward(const Net<T>& net, const T* s, int n, const Tape<T>& tape, T* grad, T* hess);    \
  void hessian_backward(const Net<T>& net, const T* s, int n, const Tape<T>& tape, const T* gbar,        \
                        const T* hbar, T* sbar, T* pgrad)
namespace generic {
MFGLAB_OTFLOW_HESSIAN(float);
MFGLAB_OTFLOW_HESSIAN(double);
}  // namespace generic
#if defined(__x86_64__)
namespace avx2 {
MFGLAB_OTFLOW_HESSIAN(float);
}  // namespace avx2
#endif

}  // namespace mfglab::otflow::kernel
