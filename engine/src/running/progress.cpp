#include "progress.h"

#include <algorithm>
#include <cstdio>

#include <fmt/format.h>

namespace mfglab::engine {

Progress::Progress(int total_runs, bool terminal, bool quiet)
    : runs_(static_cast<size_t>(std::max(total_runs, 0))), total_(total_runs), terminal_(terminal), quiet_(quiet),
      start_(std::chrono::steady_clock::now()) {}

void Progress::set_run(int index, const std::string& run_id, long long iterations) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& r = runs_.at(static_cast<size_t>(index));
  r.id = run_id;
  r.iterations = iterations;
  r.iteration = 0;
  r.active = true;
  r.last_iteration = std::chrono::steady_clock::now();
  if (!terminal_ && !quiet_) std::fprintf(stderr, "[run %s] started (%lld iterations)\n", run_id.c_str(), iterations);
}

void Progress::iteration(int index, long long iteration, double loss, bool log_line) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& r = runs_.at(static_cast<size_t>(index));
  r.iteration = iteration;
  r.loss = loss;
  r.last_iteration = std::chrono::steady_clock::now();
  if (quiet_) return;
  if (terminal_) {
    auto now = std::chrono::steady_clock::now();
    if (now - last_render_ > std::chrono::milliseconds(200)) render_locked();
  } else if (log_line) {
    std::fprintf(stderr, "[run %s] iteration %lld/%lld loss %.6g\n", r.id.c_str(), iteration, r.iterations, loss);
  }
}

void Progress::message(const std::string& line) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (quiet_) return;
  clear_line_locked();
  std::fprintf(stderr, "%s\n", line.c_str());
  if (terminal_) render_locked();
}

void Progress::run_finished(int index, const std::string& status, const std::string& detail) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& r = runs_.at(static_cast<size_t>(index));
  r.active = false;
  ++done_;
  if (quiet_) return;
  clear_line_locked();
  std::fprintf(stderr, "[run %s] %s%s%s\n", r.id.c_str(), status.c_str(), detail.empty() ? "" : ": ", detail.c_str());
  if (terminal_) render_locked();
}

void Progress::refresh() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (terminal_ && !quiet_ && std::chrono::steady_clock::now() - last_render_ > std::chrono::milliseconds(500)) render_locked();
}

void Progress::finish() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (terminal_ && !quiet_) clear_line_locked();
}

void Progress::clear_line_locked() {
  if (terminal_) std::fprintf(stderr, "\r\033[K");
}

void Progress::render_locked() {
  last_render_ = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(last_render_ - start_).count();
  long long done_iters = 0, total_iters = 0;
  std::string active;
  for (const auto& r : runs_) {
    total_iters += r.iterations;
    done_iters += r.active ? r.iteration : (r.id.empty() ? 0 : r.iterations);
    if (!r.active) continue;
    active += fmt::format(" | {} {}/{} loss {:.4g}", r.id, r.iteration, r.iterations, r.loss);
    // A run that has not finished an iteration for a while may be stuck: show for how long.
    const auto idle = std::chrono::duration<double>(last_render_ - r.last_iteration).count();
    if (idle >= 10) active += fmt::format(" (idle {:.0f} s)", idle);
  }
  // Runs not started yet have unknown iteration counts; assume they match the average.
  const int started = static_cast<int>(std::count_if(runs_.begin(), runs_.end(), [](auto& r) { return !r.id.empty(); }));
  if (started > 0 && started < total_) total_iters = total_iters * total_ / started;
  std::string eta = "--";
  if (done_iters > 0 && total_iters > done_iters) {
    const int secs = static_cast<int>(elapsed * (total_iters - done_iters) / done_iters);
    eta = fmt::format("{}:{:02d}", secs / 60, secs % 60);
  }
  std::string line = fmt::format("runs {}/{} done{} | left ~{}", done_, total_, active, eta);
  if (line.size() > 160) line = line.substr(0, 157) + "...";
  std::fprintf(stderr, "\r%s\033[K", line.c_str());
  std::fflush(stderr);
}

}  // namespace mfglab::engine
