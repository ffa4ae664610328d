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

// "mfglab.metric_calibration/1", offered by metrics with a setting taken from data (mmd's
// median-heuristic bandwidth). Before a run's first evaluation the engine calls calibrate()
// once with the calibration set: the held-out data that the experiment's dataset gives
// for eval.calibration_seed (by default the experiment's first seed), the same for every
// run, seed and variant that shares the dataset. The metric then measures every run with
// the same setting, so that values compare across a study. It returns a one-line account
// of the setting it chose, which the engine writes to the run's log. A metric evaluated
// without calibration (mfglab metric on sample files) derives the setting from its input.
class MetricCalibration {
 public:
  virtual ~MetricCalibration() = default;
  virtual std::string calibrate(const torch::Tensor& calibration_set) = 0;
};
inline constexpr const char* kMetricCalibration = "mfglab.metric_calibration/1";

}  // namespace mfglab
