#include "runner.h"

#include <algorithm>
#include <filesystem>

#include <fmt/format.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <iostream>

#include "compare.h"
#include "mfglab/params.h"
#include "plugin_host.h"
#include "progress.h"
#include "running/assemble.h"
#include "running/isolation.h"
#include "running/run_directory.h"

namespace fs = std::filesystem;

namespace mfglab::engine {

namespace {

std::string run_dir(const Experiment& ex, const RunOptions& options, size_t i) {
  return (fs::path(options.out_dir) / ex.name / ex.runs[i].run_id).string();
}

void run_in_process(const Experiment& ex, const PluginHost& host, const RunOptions& options, Progress& progress,
                    const std::vector<size_t>& todo, std::vector<RunOutcome>& outcomes) {
  tbb::task_arena arena(std::max(1, options.jobs));
  arena.execute([&] {
    tbb::parallel_for(tbb::blocked_range<size_t>(0, todo.size(), 1), [&](const tbb::blocked_range<size_t>& range) {
      for (size_t k = range.begin(); k != range.end(); ++k) {
        const size_t i = todo[k];
        if (stop_requested()) {
          outcomes[i].status = "interrupted";
          outcomes[i].error = "not started";
          continue;
        }
        outcomes[i] = run_one(ex.runs[i], host, outcomes[i].dir, train_options(options, static_cast<int>(k)), progress);
      }
    }, tbb::simple_partitioner());
  });
}

void run_in_workers(const Experiment& ex, const PluginHost& host, const RunOptions& options, Progress& progress, const std::vector<size_t>& todo,
                    std::vector<RunOutcome>& outcomes) {
  WorkerPool pool(ex, host, worker_launch(ex, options), progress);
  size_t next = 0;
  while (next < todo.size() || pool.active() > 0) {
    if (stop_requested()) {
      pool.stop_all();
      for (; next < todo.size(); ++next) outcomes[todo[next]].status = "interrupted", outcomes[todo[next]].error = "not started";
    }
    while (next < todo.size() && pool.active() < static_cast<size_t>(std::max(1, options.jobs))) {
      pool.start(todo[next], static_cast<int>(next));
      ++next;
    }
    for (auto& [i, outcome] : pool.poll(50)) outcomes[i] = outcome;
    progress.refresh();
  }
}

}  // namespace

TrainOptions train_options(const RunOptions& options, int progress_slot) {
  TrainOptions t;
  t.results_root = options.out_dir;
  t.threads = options.threads;
  t.resume = !options.force;
  t.plots = options.plots;
  t.index = progress_slot;
  return t;
}

WorkerLaunch worker_launch(const Experiment& ex, const RunOptions& options) {
  WorkerLaunch launch;
  launch.executable = options.executable;
  launch.experiment_file = ex.file;
  launch.experiment_text = options.experiment_text;
  launch.out_dir = options.out_dir;
  launch.threads = options.threads;
  launch.force = options.force;
  launch.plots = options.plots;
  launch.time_limit = options.time_limit;
  launch.memory_limit = options.memory_limit;
  return launch;
}

std::vector<size_t> runs_to_do(const Experiment& ex, const PluginHost& host, const RunOptions& options) {
  std::vector<size_t> todo;
  for (size_t i = 0; i < ex.runs.size(); ++i) {
    const RunDirectory rd(run_dir(ex, options, i));
    // A finished run of another configuration is not this run (run_one refuses it).
    const bool done = !options.force && rd.finished() && rd.records(resolved_config(ex.runs[i], host));
    if (!done) todo.push_back(i);
  }
  return todo;
}

std::vector<RunOutcome> run_experiment(const Experiment& ex, const PluginHost& host, const RunOptions& options,
                                       Progress& progress) {
  const std::string folder = (fs::path(options.out_dir) / ex.name).string();
  refuse_symlinks(options.out_dir, folder);
  std::error_code ec;
  fs::create_directories(folder, ec);
  if (ec) throw Error(fmt::format("cannot create {}: {}", folder, ec.message()));
  // One `run` per experiment folder at a time (a dead holder's lock is free again).
  FileLock lock = FileLock::acquire((fs::path(folder) / run_files::lock).string(), "experiment folder " + folder);

  std::vector<RunOutcome> outcomes(ex.runs.size());
  for (size_t i = 0; i < ex.runs.size(); ++i) outcomes[i] = {ex.runs[i].run_id, run_dir(ex, options, i), "skipped", "", ""};
  const auto todo = runs_to_do(ex, host, options);
  for (size_t i : todo) outcomes[i].status = "";
  if (options.in_process) run_in_process(ex, host, options, progress, todo, outcomes);
  else run_in_workers(ex, host, options, progress, todo, outcomes);
  progress.finish();
  return outcomes;
}

// Prints what happened to each run and the table of results; returns the exit code.
int report_outcomes(const std::vector<RunOutcome>& outcomes, const std::string& folder) {
  int ok = 0, failed = 0, skipped = 0, interrupted = 0;
  for (const auto& o : outcomes) {
    if (o.status == "ok") ++ok;
    else if (o.status == "skipped") ++skipped;
    else if (o.status == "interrupted") ++interrupted;
    else ++failed;
  }
  std::cout << fmt::format("results: {}\n", folder);
  std::cout << fmt::format("runs: {} ok, {} failed, {} already finished (skipped; --force reruns them)\n", ok, failed, skipped);
  for (const auto& o : outcomes)
    if (o.status != "ok" && o.status != "skipped" && o.status != "interrupted")
      std::cout << fmt::format("{}: {}: {}\n", o.status, o.run_id, o.error);
  if (interrupted) {
    std::cout << fmt::format("interrupted: {} run(s); run the same command again to resume them\n", interrupted);
    return 130;
  }
  try {
    std::cout << "\n" << format_table(collect_runs({folder}));
  } catch (const std::exception&) {
  }
  return failed ? 1 : 0;
}

}  // namespace mfglab::engine
