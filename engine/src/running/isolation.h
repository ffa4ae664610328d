// Runs in worker processes: each run of an experiment trains in a process of its own, so
// that a plugin that crashes, exits, hangs or eats memory takes down its own run only.
//
// A worker is started without its run (worker_spawn.h: forked by a single-threaded fork
// server that has LibTorch loaded, or a fork+exec of the mfglab binary); the parent then
// sends it its arguments and the experiment's text on stdin. The worker sends its progress
// back as one JSON object per line on file descriptor 3 and its stdout/stderr through
// another pipe. The parent enforces the time limit (SIGTERM, then SIGKILL), the
// worker sets its own memory limit (RLIMIT_AS) before it builds anything, and the parent
// writes the summary of a run whose process died without one ("crashed", "timeout",
// "out_of_memory").
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "experiment.h"
#include "running/trainer.h"
#include "running/worker_spawn.h"

namespace mfglab::engine {

class PluginHost;
class ProgressSink;

// ---- worker side -----------------------------------------------------------------------

struct WorkerRequest {
  std::string experiment_file;  // for messages; the text comes on stdin
  size_t run_index = 0;
  int slot = 0;  // the run's slot in the parent's progress display
  std::string out_dir;
  int threads = 1;
  bool force = false;
  bool plots = true;
};

// The body of `mfglab worker`: trains one run and reports on fd 3. Returns the exit code.
int worker_main(const PluginHost& host, const WorkerRequest& request);

// ---- parent side ---------------------------------------------------------------------

// The fork server the launcher started: WorkerPool asks it for workers, and starts them by
// fork+exec when it cannot.
void adopt_fork_server(const ForkServer& server);

struct WorkerLaunch {
  std::string executable;                // this mfglab binary
  std::string experiment_file, experiment_text;
  std::string out_dir;
  int threads = 1;
  bool force = false;
  bool plots = true;
  double time_limit = -1;    // seconds; < 0: each run's train.time_limit
  int64_t memory_limit = -1; // bytes; < 0: each run's train.memory_limit
};

class WorkerPool {
 public:
  WorkerPool(const Experiment& experiment, const PluginHost& host, WorkerLaunch launch, ProgressSink& progress);
  ~WorkerPool();  // kills what still runs
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Starts run `run_index` of the experiment in a new worker; `slot` is its progress slot.
  void start(size_t run_index, int slot);
  // Waits up to timeout_ms for events; returns the runs that ended (their index in the
  // experiment and their outcome).
  std::vector<std::pair<size_t, RunOutcome>> poll(int timeout_ms);
  size_t active() const { return workers_.size(); }
  // Forwards a stop request: every worker checkpoints and exits (killed after a grace time).
  void stop_all();

  struct Worker;

 private:
  void handle_event(Worker& w, const std::string& line);
  RunOutcome finish(Worker& w, int wait_status);
  const Experiment& experiment_;
  const PluginHost& host_;
  WorkerLaunch launch_;
  ProgressSink& progress_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::string> plugin_files_;  // the libraries a worker loads
  bool stopping_ = false;
};

// "SIGSEGV (Segmentation fault)" or "exit code 3" for a waitpid status.
std::string describe_wait_status(int status);

}  // namespace mfglab::engine
