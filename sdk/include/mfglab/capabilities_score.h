// Optional capabilities of score models, beside those declared in <mfglab/sdk.h>.
// Header-only; include it next to <mfglab/sdk.h>.
#pragma once

#include "mfglab/sdk.h"

namespace mfglab {

// The second-order term of the score PDE a caller needs (mfglab/score_pde.h).
enum class ScoreSecondOrder : int {
  laplacian = 0,  // Lap s_j = sum_i d_i d_i s_j
  grad_div = 1,   // grad(div s)_j = sum_i d_j d_i s_i (the residual's "grad" form)
};

// "mfglab.score_derivatives/2": "mfglab.score_derivatives/1" with the second-order term
// chosen by the caller. A model offers it for the terms it computes in closed form
// (offers()); score_derivatives() then returns the score, its Jacobian, its time
// derivative and, in the `laplacian` field, the requested term, differentiable in the
// model's parameters (not in x or t). Callers fall back to "mfglab.score_derivatives/1"
// (Laplacian only), then to autograd, so models offering only version 1 keep working.
class ScoreDerivatives2 {
 public:
  virtual ~ScoreDerivatives2() = default;
  virtual bool offers(ScoreSecondOrder second) const = 0;
  virtual ScoreDerivativeValues score_derivatives(const torch::Tensor& x, const torch::Tensor& t,
                                                  ScoreSecondOrder second) = 0;
};
inline constexpr const char* kScoreDerivatives2 = "mfglab.score_derivatives/2";

}  // namespace mfglab
