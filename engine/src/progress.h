// Live progress of parallel runs: one refreshed status line on a terminal, plain log
// lines otherwise. Thread-safe.
#pragma once

#include <chrono>
#include <mutex>
#include <string>
#include <vector>

namespace mfglab::engine {

class Progress {
 public:
  // total_runs: how many runs this invocation will execute; iterations: per run.
  Progress(int total_runs, bool terminal, bool quiet = false);
  virtual ~Progress() = default;

  void set_run(int index, const std::string& run_id, long long iterations);
  void iteration(int index, long long iteration, double loss, bool log_line);
  void message(const std::string& line);  // a log line (kept above the status line)
  void run_finished(int index, const std::string& status, const std::string& detail);
  void finish();  // clears the status line

 private:
  struct RunState {
    std::string id;
    long long iteration = 0, iterations = 0;
    double loss = 0;
    bool active = false;
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
