// The "mfglab.otflow.internals/1" capability of the otflow model: its closed-form
// derivatives and its augmented flow map, for tests and diagnostics that need more than
// the Model interface. Header-only; include it next to <mfglab/sdk.h>.
#pragma once

#include <mfglab/sdk.h>

namespace mfglab::otflow {

class Internals {
 public:
  virtual ~Internals() = default;
  // grad_s Phi at s = (x, t), [N, d+1] (grad_x Phi, then d_t Phi), and tr(Hess_xx Phi),
  // [N] (undefined unless want_trace), from the closed-form sweep; differentiable.
  virtual torch::Tensor gradient(const torch::Tensor& x, const torch::Tensor& t) = 0;
  virtual torch::Tensor hessian_trace(const torch::Tensor& x, const torch::Tensor& t) = 0;
  // The augmented state [x, l, L, R] at t1 ([N, d+3]), started from [x, 0, 0, 0] at t0, by
  // RK4 with `steps` steps (t1 < t0 integrates backwards); differentiable when grad mode is on.
  virtual torch::Tensor flow(const torch::Tensor& x, double t0, double t1, int64_t steps) = 0;
};

inline constexpr const char* kInternals = "mfglab.otflow.internals/1";

}  // namespace mfglab::otflow
