#include "running/isolation.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <mutex>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mfglab/params.h"
#include "progress.h"
#include "results.h"
#include "plugin_host.h"
#include "running/assemble.h"
#include "running/run_directory.h"
#include "running/worker_spawn.h"
#include "version.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace mfglab::engine {

namespace {

constexpr double kStopGraceSeconds = 20;   // a stopped worker has this long to checkpoint
constexpr double kLimitGraceSeconds = 10;  // a worker past its time limit, the same
constexpr size_t kTailLines = 12;          // output lines kept for a crash report

// A worker's progress, sent to its parent as one JSON object per line.
class PipeProgress final : public ProgressSink {
 public:
  explicit PipeProgress(int fd) : fd_(fd) {}
  void set_run(int, const std::string&, long long iterations) override {
    send({{"event", "start"}, {"iterations", iterations}});
  }
  void iteration(int, long long iteration, double loss, bool log_line) override {
    // At most ten lines a second: a fast loop must not spend its time reporting.
    const auto now = Clock::now();
    if (!log_line && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    send({{"event", "iteration"}, {"iteration", iteration}, {"loss", std::isfinite(loss) ? nlohmann::json(loss) : nlohmann::json()},
          {"log", log_line}});
  }
  void message(const std::string& line) override { send({{"event", "message"}, {"text", line}}); }
  void run_finished(int, const std::string& status, const std::string& detail) override {
    send({{"event", "finished"}, {"status", status}, {"detail", detail}});
  }

 private:
  void send(const nlohmann::json& j) {
    std::lock_guard<std::mutex> lock(mutex_);
    write_all(fd_, j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
  }
  int fd_;
  std::mutex mutex_;
  Clock::time_point last_{};
};

std::string tail_of_file(const std::string& path, size_t lines) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  std::deque<std::string> kept;
  for (std::string line; std::getline(in, line);) {
    kept.push_back(line);
    if (kept.size() > lines) kept.pop_front();
  }
  std::string out;
  for (const auto& l : kept) out += l + "\n";
  return out;
}

}  // namespace

std::string describe_wait_status(int status) {
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    const char* abbrev = sigabbrev_np(sig);
    return fmt::format("SIG{} ({})", abbrev ? abbrev : std::to_string(sig).c_str(), strsignal(sig));
  }
  if (WIFEXITED(status)) return fmt::format("exit code {}", WEXITSTATUS(status));
  return "an unknown status";
}

// ---- the fork server -------------------------------------------------------------------

namespace {
ForkServer& the_fork_server() {
  static ForkServer server;
  return server;
}
}  // namespace

void adopt_fork_server(const ForkServer& server) { the_fork_server() = server; }

// ---- worker side -----------------------------------------------------------------------

int worker_main(const PluginHost& host, const WorkerRequest& request) {
  PipeProgress progress(kWorkerStatusFd);
  std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  Experiment ex;
  try {
    ex = parse_experiment(text, request.experiment_file, host);
  } catch (const ExperimentError& e) {
    std::string lines;
    for (const auto& l : e.lines) lines += (lines.empty() ? "" : "; ") + l;
    progress.run_finished(request.slot, "failed", "the worker could not read the experiment: " + lines);
    return 2;
  }
  if (request.run_index >= ex.runs.size()) {
    progress.run_finished(request.slot, "failed", fmt::format("the experiment has no run {}", request.run_index));
    return 2;
  }
  const RunSpec& spec = ex.runs[request.run_index];
  TrainOptions options;
  options.results_root = request.out_dir;
  options.threads = request.threads;
  options.resume = !request.force;
  options.plots = request.plots;
  options.index = request.slot;
  const std::string dir = (fs::path(request.out_dir) / ex.name / spec.run_id).string();
  run_one(spec, host, dir, options, progress);
  return 0;
}

// ---- parent side ---------------------------------------------------------------------

struct WorkerPool::Worker {
  pid_t pid = -1;
  size_t run_index = 0;
  int slot = 0;
  int status_fd = -1, output_fd = -1;
  std::string status_buffer, output_buffer;
  std::deque<std::string> output_tail;
  long long iteration = 0;
  bool finished = false;  // the worker reported its outcome
  std::string status, detail;
  Clock::time_point started;
  double time_limit = 0;
  int64_t memory_limit = 0;
  bool timed_out = false, stop_sent = false;
  Clock::time_point kill_at = Clock::time_point::max();
};

WorkerPool::WorkerPool(const Experiment& experiment, const PluginHost& host, WorkerLaunch launch, ProgressSink& progress)
    : experiment_(experiment), host_(host), launch_(std::move(launch)), progress_(progress) {
  ::signal(SIGPIPE, SIG_IGN);  // a worker that dies before reading its stdin must not end us
  // The libraries of the plugins the experiment uses: a worker loads only those.
  std::set<std::string> files;
  for (const auto& run : experiment.runs)
    for (const auto& name : run.plugins())
      if (const LoadedPlugin* p = host.find(name)) files.insert(p->file);
  plugin_files_.assign(files.begin(), files.end());
}

WorkerPool::~WorkerPool() {
  for (auto& w : workers_) {
    ::kill(w->pid, SIGKILL);
    int status = 0;
    ::waitpid(w->pid, &status, 0);
    if (w->status_fd >= 0) ::close(w->status_fd);
    if (w->output_fd >= 0) ::close(w->output_fd);
  }
}

void WorkerPool::start(size_t run_index, int slot) {
  const RunSpec& spec = experiment_.runs.at(run_index);
  auto w = std::make_unique<Worker>();
  w->run_index = run_index;
  w->slot = slot;
  w->time_limit = launch_.time_limit >= 0 ? launch_.time_limit : spec.train.time_limit;
  w->memory_limit = launch_.memory_limit >= 0 ? launch_.memory_limit : spec.train.memory_limit;

  std::vector<std::string> args = {"worker", launch_.experiment_file, "--run-index", std::to_string(run_index),
                                   "--slot", std::to_string(slot), "--out", launch_.out_dir,
                                   "--threads", std::to_string(launch_.threads)};
  if (launch_.force) args.push_back("--force");
  if (!launch_.plots) args.push_back("--no-plots");
  if (w->memory_limit > 0) args.insert(args.end(), {"--memory-limit", std::to_string(w->memory_limit)});
  // Last, one token each: a list option takes every value that follows it.
  for (const auto& f : plugin_files_) args.push_back("--plugin-file=" + f);

  // Forked by the fork server, which has loaded the engine already; else a fork+exec.
  WorkerProcess process;
  try {
    if (!fork_worker(the_fork_server(), process)) process = spawn_standby_worker(launch_.executable);
  } catch (const std::runtime_error& e) {
    throw Error(e.what());
  }
  assign_worker(process, args, launch_.experiment_text);
  w->pid = process.pid;
  w->status_fd = process.status_fd;
  w->output_fd = process.output_fd;
  ::fcntl(w->status_fd, F_SETFL, O_NONBLOCK);
  ::fcntl(w->output_fd, F_SETFL, O_NONBLOCK);
  w->started = Clock::now();
  workers_.push_back(std::move(w));
}

void WorkerPool::handle_event(Worker& w, const std::string& line) {
  const RunSpec& spec = experiment_.runs[w.run_index];
  nlohmann::json e;
  try {
    e = nlohmann::json::parse(line);
    const std::string kind = e.value("event", "");
    if (kind == "start") progress_.set_run(w.slot, spec.run_id, e.value("iterations", 0LL));
    else if (kind == "iteration") {
      w.iteration = e.value("iteration", 0LL);
      const double loss = e["loss"].is_number() ? e["loss"].get<double>() : NAN;
      progress_.iteration(w.slot, w.iteration, loss, e.value("log", false));
    } else if (kind == "message") progress_.message(e.value("text", ""));
    else if (kind == "finished") {
      w.finished = true;
      w.status = e.value("status", "failed");
      w.detail = e.value("detail", "");
    }
  } catch (const std::exception&) {
    progress_.message(fmt::format("[run {}] unreadable worker message: {}", spec.run_id, line));
  }
}

RunOutcome WorkerPool::finish(Worker& w, int wait_status) {
  const RunSpec& spec = experiment_.runs[w.run_index];
  const std::string dir = (fs::path(launch_.out_dir) / experiment_.name / spec.run_id).string();
  RunOutcome o{spec.run_id, dir, "", "", ""};
  std::string tail;
  for (const auto& l : w.output_tail) tail += l + "\n";
  const bool memory_message = tail.find("bad_alloc") != std::string::npos || tail.find("can't allocate memory") != std::string::npos ||
                              tail.find("Cannot allocate memory") != std::string::npos;
  if (w.finished && !(w.timed_out && w.status == "interrupted")) {
    o.status = w.status;
    (o.status == "ok" ? o.detail : o.error) = w.detail;
    if (!WIFEXITED(wait_status) || WEXITSTATUS(wait_status) > 2)
      progress_.message(fmt::format("[run {}] warning: its process ended with {} after the run had finished", spec.run_id,
                                    describe_wait_status(wait_status)));
  } else if (w.timed_out) {
    o.status = "timeout";
    o.error = fmt::format("stopped at its time limit of {:g} s after iteration {}{}", w.time_limit, w.iteration,
                          w.finished ? "; its checkpoint is kept and a rerun continues from it" : " (it did not stop in time and was killed)");
  } else if (w.stop_sent) {
    o.status = "interrupted";
    o.error = w.finished ? w.detail : "stopped before it could save a checkpoint";
  } else {
    o.status = w.memory_limit > 0 && memory_message ? "out_of_memory" : "crashed";
    o.error = fmt::format("its process {} after iteration {}", WIFSIGNALED(wait_status) ? "was killed by " + describe_wait_status(wait_status)
                                                                              : "ended with " + describe_wait_status(wait_status) + " before the run finished",
                          w.iteration);
    if (o.status == "out_of_memory") o.error = fmt::format("out of memory (limit {} bytes): {}", w.memory_limit, o.error);
    const std::string log_tail = tail_of_file(dir + "/" + run_files::log, 5);
    if (!log_tail.empty()) o.error += "\nlast lines of log.txt:\n" + log_tail;
    if (!tail.empty()) o.error += "\nlast lines of its output:\n" + tail;
    while (!o.error.empty() && o.error.back() == '\n') o.error.pop_back();
  }
  if (o.status == "crashed" || o.status == "timeout" || o.status == "out_of_memory") {
    // The worker could not write its summary: the parent does, so the run reads as failed
    // (and a rerun retries it).
    try {
      refuse_symlinks(launch_.out_dir, dir);
      const RunDirectory rd(dir);
      // Never over a directory that holds another configuration's run.
      if (fs::is_directory(dir) && (!rd.has(run_files::config) || rd.records(resolved_config(spec, host_)))) {
        nlohmann::json summary = {{"experiment", spec.experiment}, {"run_id", spec.run_id}, {"label", spec.label},
                                  {"seed", spec.seed}, {"status", o.status}, {"iterations", w.iteration},
                                  {"iterations_planned", spec.train.iterations}, {"metrics", nlohmann::json::object()},
                                  {"error", o.error}};
        summary.update(provenance(spec, host_));
        std::ofstream(dir + "/" + run_files::log, std::ios::app) << o.status << ": " << o.error << "\n";
        write_json_atomic(dir + "/" + run_files::summary, summary);
      }
    } catch (const std::exception& e) {
      o.error += fmt::format(" (and the summary could not be written: {})", e.what());
    }
  }
  progress_.run_finished(w.slot, o.status, o.status == "ok" ? o.detail : o.error.substr(0, o.error.find('\n')));
  return o;
}

std::vector<std::pair<size_t, RunOutcome>> WorkerPool::poll(int timeout_ms) {
  std::vector<pollfd> fds;
  for (auto& w : workers_) {
    if (w->status_fd >= 0) fds.push_back({w->status_fd, POLLIN, 0});
    if (w->output_fd >= 0) fds.push_back({w->output_fd, POLLIN, 0});
  }
  if (!fds.empty()) ::poll(fds.data(), fds.size(), timeout_ms);
  else if (timeout_ms > 0) ::usleep(static_cast<useconds_t>(timeout_ms) * 1000);

  // Reads what a pipe holds; closes it at its end.
  auto drain = [&](Worker& w, int& fd, std::string& buffer, bool status) {
    if (fd < 0) return;
    char chunk[65536];
    for (;;) {
      const ssize_t n = ::read(fd, chunk, sizeof chunk);
      if (n > 0) {
        buffer.append(chunk, static_cast<size_t>(n));
        size_t nl;
        while ((nl = buffer.find('\n')) != std::string::npos) {
          std::string line = buffer.substr(0, nl);
          buffer.erase(0, nl + 1);
          if (status) handle_event(w, line);
          else {
            w.output_tail.push_back(line);
            if (w.output_tail.size() > kTailLines) w.output_tail.pop_front();
            progress_.message(fmt::format("[run {}] {}", experiment_.runs[w.run_index].run_id, line));
          }
        }
        if (!status && buffer.size() > 4096) {  // a very long line without an end
          w.output_tail.push_back(buffer.substr(0, 4096));
          buffer.clear();
        }
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      ::close(fd);  // end of file, or an error
      fd = -1;
      if (!status && !buffer.empty()) w.output_tail.push_back(buffer), buffer.clear();
      return;
    }
  };

  std::vector<std::pair<size_t, RunOutcome>> ended;
  const auto now = Clock::now();
  for (size_t k = 0; k < workers_.size();) {
    Worker& w = *workers_[k];
    drain(w, w.status_fd, w.status_buffer, true);
    drain(w, w.output_fd, w.output_buffer, false);
    // The time limit: first a stop request (the worker checkpoints), then SIGKILL.
    if (w.time_limit > 0 && !w.timed_out && now - w.started > std::chrono::duration<double>(w.time_limit)) {
      w.timed_out = true;
      ::kill(w.pid, SIGTERM);
      w.kill_at = std::min(w.kill_at, now + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(kLimitGraceSeconds)));
    }
    if (now >= w.kill_at) ::kill(w.pid, SIGKILL);
    int status = 0;
    const pid_t r = ::waitpid(w.pid, &status, WNOHANG);
    if (r == w.pid) {
      drain(w, w.status_fd, w.status_buffer, true);
      drain(w, w.output_fd, w.output_buffer, false);
      if (w.status_fd >= 0) ::close(w.status_fd);
      if (w.output_fd >= 0) ::close(w.output_fd);
      ended.emplace_back(w.run_index, finish(w, status));
      workers_.erase(workers_.begin() + static_cast<std::ptrdiff_t>(k));
      continue;
    }
    ++k;
  }
  return ended;
}

void WorkerPool::stop_all() {
  if (stopping_) return;
  stopping_ = true;
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(kStopGraceSeconds));
  for (auto& w : workers_) {
    w->stop_sent = true;
    ::kill(w->pid, SIGTERM);
    w->kill_at = std::min(w->kill_at, deadline);
  }
}

}  // namespace mfglab::engine
