// Live progress of parallel runs: one refreshed status line on a terminal, plain log
// lines otherwise. Thread-safe.
#pragma once

#include <chrono>
#include <mutex>
#include <string>
#include <vector>

namespace mfglab::engine {

// Where a run reports what it is doing. The console display implements it; so does a
// worker process, which forwards the events to its parent through a pipe.
class ProgressSink {
 public:
  virtual ~ProgressSink() = default;
  virtual void set_run(int index, const std::string& run_id, long long iterations) = 0;
  virtual void iteration(int index, long long iteration, double loss, bool log_line) = 0;
  virtual void message(const std::string& line) = 0;  // a log line
  virtual void run_finished(int index, const std::string& status, const std::string& detail) = 0;
};

class Progress : public ProgressSink {
 public:
  // total_runs: how many runs this invocation will execute; iterations: per run.
  Progress(int total_runs, bool terminal, bool quiet = false);

  void set_run(int index, const std::string& run_id, long long iterations) override;
  void iteration(int index, long long iteration, double loss, bool log_line) override;
  void message(const std::string& line) override;  // kept above the status line
  void run_finished(int index, const std::string& status, const std::string& detail) override;
  void refresh();  // redraws the status line (the idle times of active runs advance)
  void finish();   // clears the status line

 private:
  struct RunState {
    std::string id;
    long long iteration = 0, iterations = 0;
    double loss = 0;
    bool active = false;
    std::chrono::steady_clock::time_point last_iteration;  // a stuck run shows its idle time
  };
  void render_locked();
  void clear_line_locked();
  std::mutex mutex_;
  std::vector<RunState> runs_;
  int total_, done_ = 0;
  bool terminal_, quiet_;
  std::chrono::steady_clock::time_point start_, last_render_;
};

}  // namespace mfglab::engine
