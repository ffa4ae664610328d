// Runs experiments: every run of seeds x sweep, each in a worker process of its own (by
// default), all in this process (--in-process, for debuggers), or spread over MPI ranks.
#pragma once

#include <string>
#include <vector>

#include "experiment.h"
#include "running/trainer.h"

namespace mfglab::engine {

class PluginHost;
class Progress;

struct RunOptions {
  std::string out_dir = "results";
  int jobs = 1;     // runs in parallel (per MPI rank)
  int threads = 1;  // intra-op threads per run
  bool force = false;
  bool plots = true;       // draw each successful run's figures (plot.h) into its directory
  bool in_process = false; // every run in this process (TBB tasks): no isolation
  double time_limit = -1;    // seconds per run; < 0: the experiment's train.time_limit
  int64_t memory_limit = -1; // bytes per run; < 0: the experiment's train.memory_limit
  // For worker processes: how to start them again.
  std::string executable;
  std::string experiment_text;
};

// Runs every run of the experiment into OUT/<experiment>/<run-id>/. A finished run (its
// summary says "ok" and its files are all there) is skipped unless options.force. One
// failing run does not stop the others. Holds OUT/<experiment>/.lock while it works: a
// second `run` of the same experiment into the same folder throws mfglab::Error.
std::vector<RunOutcome> run_experiment(const Experiment& experiment, const PluginHost& host,
                                       const RunOptions& options, Progress& progress);

// How a run trains in this process, and how worker processes are started, under `options`.
TrainOptions train_options(const RunOptions& options, int progress_slot);
struct WorkerLaunch;
WorkerLaunch worker_launch(const Experiment& experiment, const RunOptions& options);

// Indices of the runs that still have to run (not finished, or options.force).
std::vector<size_t> runs_to_do(const Experiment& experiment, const PluginHost& host, const RunOptions& options);

// Prints each run's outcome and the results table to stdout; returns run's exit code:
// 0 when every run succeeded, 1 when one failed, 130 when runs were interrupted.
int report_outcomes(const std::vector<RunOutcome>& outcomes, const std::string& folder);

}  // namespace mfglab::engine
