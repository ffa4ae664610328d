// "mfglab.evaluation_params/1" (Plugin::capability), offered by models: the parameters that
// only sampling and evaluation read (a sampler, its number of steps, its tolerances). Such a
// parameter may be changed on a trained model: `mfglab evaluate RUN --set
// model.params.NAME=VALUE` rebuilds the model with it, takes the trained parameters from
// the run's checkpoint, and samples again. Every parameter not listed is taken to change
// what training produced, and `evaluate` refuses to change it. Header-only.
#pragma once

#include <string>
#include <vector>

#include "mfglab/sdk.h"

namespace mfglab {

class EvaluationParams {
 public:
  virtual ~EvaluationParams() = default;
  // Names of declared parameters of this model (its manifest's) that training never reads.
  virtual std::vector<std::string> evaluation_params() const = 0;
};
inline constexpr const char* kEvaluationParams = "mfglab.evaluation_params/1";

}  // namespace mfglab
