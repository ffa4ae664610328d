// cnf's training NLL and its parameter gradient by the hand-written kernel (cnf_kernel.h):
// fixed-step RK4, exact or Hutchinson divergence. The batch is cut into fixed blocks of
// samples and the blocks' results are summed in block order, so the result does not depend
// on the number of threads.
#pragma once

#include <cstdint>
#include <vector>

#include <mfglab/sdk.h>

namespace mfglab::cnf {

struct FastSettings {
  int64_t steps = 8;      // RK4 steps on [0, 1]
  int activation = 2;     // mfglab::nn::Activation as an int
  int threads = 1;        // thread budget
};

// Whether the kernel covers this network, scalar type and number of tangent directions
// (d for the exact divergence, the probes for Hutchinson's) within its memory budget.
bool fast_supported(const std::vector<torch::Tensor>& params, torch::ScalarType dtype, int64_t directions,
                    const FastSettings& settings);

// Mean NLL of the batch x [N, d] (a scalar) for the velocity MLP whose parameters are params
// (W_0, b_0, ..., stored [in, out]). eps: the Hutchinson probes [probes, N, d], or undefined for
// the exact divergence. With grad mode on the result is differentiable once in params (the
// gradient is computed in the same call; x and eps get none). Throws mfglab::Error on a
// non-finite state, with the message of the tensor RK4.
torch::Tensor fast_nll(const torch::Tensor& x, const torch::Tensor& eps, const std::vector<torch::Tensor>& params,
                       const FastSettings& settings);

// log p of each point [N], no gradient.
torch::Tensor fast_log_prob(const torch::Tensor& x, const torch::Tensor& eps, const std::vector<torch::Tensor>& params,
                            const FastSettings& settings);

}  // namespace mfglab::cnf
