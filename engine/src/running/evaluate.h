// `mfglab evaluate`: sample and measure a trained run again, with other evaluation settings
// (the sample count, the metrics, the model's evaluation-time parameters such as a sampler's
// steps), without training. The results go to a new folder beside the run, never into it.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "running/trainer.h"

namespace mfglab::engine {

class PluginHost;
class ProgressSink;

// A run's resolved configuration (its config.json) as an experiment file of that one run.
nlohmann::json experiment_of_run(const nlohmann::json& config);

struct EvaluateRequest {
  std::string run_dir;                // a run directory holding config.json and checkpoint.pt
  std::vector<std::string> settings;  // "eval.samples=10000", "model.params.sample_steps=100", ...
  bool force = false;                 // replace an earlier evaluation with the same settings
  bool plots = true;
  int threads = 1;
};

// Evaluates one run into RUN_DIR@<settings>. Throws ExperimentError or mfglab::Error for bad
// input (nothing is written then); a failure while sampling lands in the new folder's
// summary, as in a run.
RunOutcome evaluate_run(const PluginHost& host, const EvaluateRequest& request, ProgressSink& progress);

}  // namespace mfglab::engine
