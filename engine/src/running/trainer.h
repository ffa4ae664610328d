// Trains and evaluates one run in this process: the engine's training loop, checkpoints and
// exact resume, periodic and final evaluation, figures, and the summary (written last).
#pragma once

#include <string>

#include "experiment.h"

namespace at { class Tensor; }

namespace mfglab::engine {

class PluginHost;
class ProgressSink;

struct RunOutcome {
  std::string run_id;
  std::string dir;
  // ok | failed | crashed | timeout | out_of_memory | skipped (already finished) | interrupted
  std::string status;
  std::string error;
  std::string detail;  // a short line of metrics for the console
};

// Collective operations across the processes that train one run together
// (train.data_parallel under MPI). Every rank calls them in the same order.
class Collective {
 public:
  virtual ~Collective() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual void sum(at::Tensor& t) = 0;        // in place; a contiguous CPU float/double/long tensor
  virtual void broadcast(at::Tensor& t) = 0;  // from rank 0, in place
};

struct TrainOptions {
  std::string results_root;  // OUT: the run directory must not leave it through a link
  int threads = 1;           // intra-op threads of this run
  bool resume = true;        // continue a checkpoint of the same configuration (false: --force)
  bool plots = true;         // draw the run's figures
  int index = 0;             // the run's slot in the progress display
  Collective* collective = nullptr;  // data-parallel training; rank 0 writes the files
  // `mfglab evaluate`: no training; the model takes its parameters and the generator its
  // state from this trained run's checkpoint.pt, then samples and evaluates as usual.
  std::string weights_from;
};

// Never throws: failures land in summary.json and the outcome. A stop request ends the
// training at its next iteration with a checkpoint and no summary (status "interrupted").
RunOutcome run_one(const RunSpec& spec, const PluginHost& host, const std::string& dir, const TrainOptions& options,
                   ProgressSink& progress);

// Asks running trainings to stop at their next iteration, saving a checkpoint and no
// summary (async-signal-safe: the CLI calls it from SIGINT/SIGTERM handlers).
void request_stop();
bool stop_requested();

}  // namespace mfglab::engine
