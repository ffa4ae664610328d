// OT-Flow's training objective for a quadratic Hamiltonian (isotropic or diagonal) by a hand-written kernel
// (block_kernel.h): the batch is cut into fixed blocks of samples, each block integrates,
// evaluates and back-propagates its samples on raw pointers, and the blocks' gradients are
// summed in block order, so the result does not depend on the number of threads.
#pragma once

#include <cstdint>
#include <vector>

#include <mfglab/sdk.h>

namespace mfglab::otflow {

struct BlockLossSettings {
  int64_t steps = 8;                   // RK4 steps on [0, 1]
  double lambda = 1;                   // H(p) = sum_k c_k p_k^2 / (2 lambda)
  std::vector<double> weights;         // c_k, one per dimension; empty: all 1 (isotropic)
  double alpha[3] = {1, 100, 5};       // weights of L, C, R
  int threads = 1;                     // thread budget
};

// The weighted terms {L, C, R} (scalars) of the batch x [N, d] for the potential whose
// Potential::parameters() are params (float32 or float64, as x). With grad mode on, the three
// are differentiable in params (the gradient is computed in the same call; x gets none).
// Throws mfglab::Error on a non-finite state.
std::vector<torch::Tensor> block_loss(const torch::Tensor& x, const std::vector<torch::Tensor>& params,
                                      const BlockLossSettings& settings);

// grad_s Phi [N, d+1] and Hess_xx Phi [N, d, d] at the points s = (x, t) [N, d+1] for the
// potential whose Potential::parameters() are params (float32 or float64, as s), by the
// hand-written sweep of block_kernel.h, one thread. Differentiable once in s and params.
std::vector<torch::Tensor> gradient_hessian(const torch::Tensor& s, const std::vector<torch::Tensor>& params);

}  // namespace mfglab::otflow
