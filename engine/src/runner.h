// Runs experiments: one training + evaluation per RunSpec, many in parallel with TBB.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "experiment.h"

namespace mfglab::engine {

class PluginHost;
class Progress;

struct RunOptions {
  std::string out_dir = "results";
  int jobs = 1;     // runs in parallel
  int threads = 1;  // intra-op threads per run
  bool force = false;
  bool plots = true;  // draw each successful run's figures (plot.h) into its directory
};

struct RunOutcome {
  std::string run_id;
  std::string dir;
  std::string status;  // ok | failed | skipped (already finished) | interrupted
  std::string error;
};

// Runs every run of the experiment into OUT/<experiment>/<run-id>/. A run whose
// summary.json says "ok" is skipped unless options.force. One failing run does not
// stop the others.
std::vector<RunOutcome> run_experiment(const Experiment& experiment, const PluginHost& host,
                                       const RunOptions& options, Progress& progress);

// Trains and evaluates one run into `dir`; never throws: failures land in summary.json.
// With `resume`, a checkpoint of the same configuration left by an interrupted run is
// continued exactly (parameters, optimizer, generator, batch order).
RunOutcome run_one(const RunSpec& spec, const PluginHost& host, const std::string& dir,
                   int threads, bool resume, int run_index, Progress& progress, bool plots = true);

// Asks running trainings to stop at their next iteration, saving a checkpoint and no
// summary (async-signal-safe: the CLI calls it from SIGINT/SIGTERM handlers).
void request_stop();
bool stop_requested();

}  // namespace mfglab::engine
