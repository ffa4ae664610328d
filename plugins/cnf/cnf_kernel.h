// The cnf training objective and its exact parameter gradient by a hand-written kernel, for
// fixed-step RK4, on raw pointers (no LibTorch inside): the batch is cut into blocks of
// samples; each block integrates the augmented state [x, l], evaluates the NLL and runs the
// adjoint of RK4 (discretise-then-optimise) with a hand-written vector-Jacobian product of the
// right-hand side at every stage.
//
// Velocity MLP (weights stored [in, out], rows are samples), D hidden layers:
//   a_0 = x W_0x + t W_0t + b_0,  h_i = act(a_i),  a_i = h_{i-1} W_i + b_i,  v = h_{D-1} W_D + b_D.
// Divergence by K tangent directions u_k carried forward through the layers:
//   da_0^k = u_k W_0x,  dh_i^k = act'(a_i) da_i^k,  da_i^k = dh_{i-1}^k W_i,  dv^k = dh_{D-1}^k W_D,
//   exact:       u_k = e_k (k < d),              div = sum_k dv^k_k
//   Hutchinson:  u_k = eps_k (probes, per sample), div = (1/K) sum_k eps_k . dv^k
// The value row and the K tangent rows of a layer sit in one buffer [h; dh^1..dh^K], so that
// each hidden layer is one matrix product forward and two backward.
//
// Reverse sweep of one stage, from vbar (per sample) and divbar (a scalar per stage):
//   dvbar^k = divbar e_k (exact) or divbar / K eps_k,  [hbar; dhbar^k] = [vbar; dvbar^k] W_D^T,
//   abar_i = hbar_i act'(a_i) + act''(a_i) sum_k dhbar_i^k da_i^k,  dabar_i^k = dhbar_i^k act'(a_i),
//   W_i bar += [h_{i-1}; dh_{i-1}^k]^T [abar_i; dabar_i^k],  [hbar_{i-1}; dhbar_{i-1}^k] = [abar_i; dabar_i^k] W_i^T,
//   and at layer 0  W_0x bar += x^T abar_0 + sum_k u_k^T dabar_0^k,  xbar = abar_0 W_0x^T.
// For tanh act'' da = -2 h dh, so the pre-activations need not be kept.
//
// This header holds what the driver (cnf_loss.cpp) shares with the kernel; the kernel itself is
// cnf_kernel_impl.h, compiled once per instruction set and chosen at run time. Templated on
// the scalar: float for training, double for the tests against autograd.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace mfglab::cnf::kernel {

// Same order as mfglab::nn::Activation.
enum class Act : int { silu = 0, gelu = 1, tanh = 2, relu = 3, softplus = 4, logcosh = 5 };

// Raw views of the MLP's parameters (W_0, b_0, ..., W_D, b_D) and the gradient's layout.
template <class T>
struct Net {
  int d = 0, w = 0, depth = 0;  // data dim, width, hidden layers
  std::vector<const T*> W, b;   // depth + 1 layers
  std::vector<T> WoutT;         // W_D transposed, [d, w]
  std::vector<int64_t> offW, offb;
  int64_t size = 0;

  void prepare() {
    WoutT.assign(static_cast<size_t>(d) * w, T(0));
    for (int c = 0; c < w; ++c)
      for (int j = 0; j < d; ++j) WoutT[static_cast<size_t>(j) * w + c] = W[depth][c * d + j];
    offW.assign(depth + 1, 0), offb.assign(depth + 1, 0);
    int64_t o = 0;
    for (int i = 0; i <= depth; ++i) {
      const int64_t in = i == 0 ? d + 1 : w, out = i == depth ? d : w;
      offW[i] = o, o += in * out;
      offb[i] = o, o += out;
    }
    size = o;
  }
};

template <class T>
struct Config {
  int steps = 8;
  Act act = Act::tanh;
  bool exact = true;          // exact divergence (K = d) or Hutchinson (K = probes)
  int probes = 1;
  const T* eps = nullptr;     // Hutchinson probes [probes, n, d]
  T seed = 1;                 // upstream gradient of the loss
  int64_t n = 0;              // whole batch: the mean divides by it
  bool want_grad = true;
  T* log_prob = nullptr;      // optional [n]: log p of each sample
};

// One block's share of the summed NLL, the gradient of seed * loss (Net offsets) and the
// first RK4 step with a non-finite state (0: none).
template <class T>
struct Slot {
  double nll_sum = 0;
  std::vector<T> grad;
  int bad_step = 0;
};

// Runs blocks first, first + stride, ... of x [n, d] (B samples each, the last possibly fewer).
#define MFGLAB_CNF_RUN_BLOCKS(T)                                                                              \
  void run_blocks(const Net<T>& net, const Config<T>& cfg, const T* x, int64_t n, int B, int64_t first, \
                  int64_t stride, Slot<T>* slots)
namespace generic {
MFGLAB_CNF_RUN_BLOCKS(float);
MFGLAB_CNF_RUN_BLOCKS(double);
}  // namespace generic
#if defined(__x86_64__)
namespace avx2 {
MFGLAB_CNF_RUN_BLOCKS(float);
}
namespace avx512 {
MFGLAB_CNF_RUN_BLOCKS(float);
}
#endif

}  // namespace mfglab::cnf::kernel
