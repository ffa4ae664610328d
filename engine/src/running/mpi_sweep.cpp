#include "running/mpi_sweep.h"

#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "mfglab/params.h"
#include "plugin_host.h"
#include "progress.h"
#include "running/cores.h"
#include "running/isolation.h"
#include "running/run_directory.h"

namespace fs = std::filesystem;

namespace mfglab::engine {

namespace {

enum Tag : int { kRequest = 1, kAssign = 2, kResult = 3, kFinished = 4 };

void broadcast_string(std::string& s) {
  long long n = static_cast<long long>(s.size());
  MPI_Bcast(&n, 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD);
  s.resize(static_cast<size_t>(n));
  if (n > 0) MPI_Bcast(s.data(), static_cast<int>(n), MPI_CHAR, 0, MPI_COMM_WORLD);
}

// 1 on every rank when `ok` holds on every rank.
bool all_ranks(bool ok) {
  int mine = ok ? 1 : 0, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

void send_string(const std::string& s, int to, int tag) {
  MPI_Send(s.data(), static_cast<int>(s.size()), MPI_CHAR, to, tag, MPI_COMM_WORLD);
}

std::string receive_string(const MPI_Status& probed) {
  int n = 0;
  MPI_Get_count(&probed, MPI_CHAR, &n);
  std::string s(static_cast<size_t>(n), '\0');
  MPI_Recv(s.data(), n, MPI_CHAR, probed.MPI_SOURCE, probed.MPI_TAG, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  return s;
}

MPI_Datatype mpi_type(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32: return MPI_FLOAT;
    case torch::kFloat64: return MPI_DOUBLE;
    case torch::kInt64: return MPI_INT64_T;
    default: throw Error(fmt::format("no MPI type for {}", c10::toString(t.scalar_type())));
  }
}

class MpiCollective final : public Collective {
 public:
  MpiCollective(int rank, int size) : rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void sum(at::Tensor& t) override {
    if (!t.is_contiguous()) t = t.contiguous();
    MPI_Allreduce(MPI_IN_PLACE, t.data_ptr(), static_cast<int>(t.numel()), mpi_type(t), MPI_SUM, MPI_COMM_WORLD);
  }
  void broadcast(at::Tensor& t) override {
    if (!t.is_contiguous()) t = t.contiguous();
    MPI_Bcast(t.data_ptr(), static_cast<int>(t.numel()), mpi_type(t), 0, MPI_COMM_WORLD);
  }

 private:
  int rank_, size_;
};

nlohmann::json outcome_json(size_t k, const RunOutcome& o) {
  return {{"k", k}, {"status", o.status}, {"error", o.error}, {"detail", o.detail}};
}

// Rank 0: hands out the runs at positions `queue` of `todo` and collects every outcome.
void coordinate(const MpiWorld& world, const Experiment& ex, const std::vector<size_t>& todo, std::vector<size_t> queue,
                WorkerPool& pool, int jobs, Progress& progress, std::vector<RunOutcome>& outcomes) {
  size_t next = 0;
  int finished_ranks = 0;
  while (true) {
    const bool stopping = stop_requested();
    if (stopping) pool.stop_all();
    while (!stopping && next < queue.size() && pool.active() < static_cast<size_t>(jobs)) {
      pool.start(todo[queue[next]], static_cast<int>(queue[next]));
      ++next;
    }
    for (auto& [i, outcome] : pool.poll(20)) outcomes[i] = outcome;
    int flag = 0;
    MPI_Status st;
    while (MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, &st), flag) {
      if (st.MPI_TAG == kRequest) {
        int dummy = 0;
        MPI_Recv(&dummy, 1, MPI_INT, st.MPI_SOURCE, kRequest, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        long long k = -1;
        if (!stop_requested() && next < queue.size()) {
          k = static_cast<long long>(queue[next++]);
          const RunSpec& spec = ex.runs[todo[static_cast<size_t>(k)]];
          progress.set_run(static_cast<int>(k), spec.run_id, spec.train.iterations);
          progress.message(fmt::format("[run {}] on rank {}", spec.run_id, st.MPI_SOURCE));
        }
        MPI_Send(&k, 1, MPI_LONG_LONG, st.MPI_SOURCE, kAssign, MPI_COMM_WORLD);
      } else if (st.MPI_TAG == kResult) {
        auto j = nlohmann::json::parse(receive_string(st));
        const size_t k = j.at("k").get<size_t>();
        RunOutcome& o = outcomes[todo[k]];
        o.status = j.at("status").get<std::string>();
        o.error = j.at("error").get<std::string>();
        o.detail = j.at("detail").get<std::string>();
        progress.run_finished(static_cast<int>(k), o.status, o.status == "ok" ? o.detail : o.error.substr(0, o.error.find('\n')));
      } else if (st.MPI_TAG == kFinished) {
        int dummy = 0;
        MPI_Recv(&dummy, 1, MPI_INT, st.MPI_SOURCE, kFinished, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        ++finished_ranks;
      } else {
        receive_string(st);  // nothing else is sent to rank 0
      }
    }
    progress.refresh();
    const bool nothing_left = next >= queue.size() || stop_requested();
    if (nothing_left && pool.active() == 0 && finished_ranks == world.size() - 1) break;
  }
  for (size_t k = next; k < queue.size(); ++k) {
    outcomes[todo[queue[k]]].status = "interrupted";
    outcomes[todo[queue[k]]].error = "not started";
  }
}

// Ranks 1..N-1: ask for runs while a slot is free, run them isolated, report each outcome.
void serve(const std::vector<size_t>& todo, WorkerPool& pool, int jobs) {
  int asked = 0;  // requests not answered yet
  bool done = false;
  while (true) {
    const bool stopping = stop_requested();
    if (stopping) pool.stop_all();
    while (!done && !stopping && static_cast<int>(pool.active()) + asked < jobs) {
      int dummy = 0;
      MPI_Send(&dummy, 1, MPI_INT, 0, kRequest, MPI_COMM_WORLD);
      ++asked;
    }
    for (auto& [i, outcome] : pool.poll(20)) {
      const size_t k = static_cast<size_t>(std::find(todo.begin(), todo.end(), i) - todo.begin());
      send_string(outcome_json(k, outcome).dump(), 0, kResult);
    }
    int flag = 0;
    MPI_Status st;
    while (MPI_Iprobe(0, kAssign, MPI_COMM_WORLD, &flag, &st), flag) {
      long long k = -1;
      MPI_Recv(&k, 1, MPI_LONG_LONG, 0, kAssign, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      --asked;
      if (k < 0) {
        done = true;
      } else if (stop_requested()) {
        RunOutcome o{"", "", "interrupted", "not started", ""};
        send_string(outcome_json(static_cast<size_t>(k), o).dump(), 0, kResult);
      } else {
        pool.start(todo[static_cast<size_t>(k)], static_cast<int>(k));
      }
    }
    if ((done || stop_requested()) && asked == 0 && pool.active() == 0) break;
  }
  int dummy = 0;
  MPI_Send(&dummy, 1, MPI_INT, 0, kFinished, MPI_COMM_WORLD);
}

// Every rank must see the results folder: rank 0 writes a token there, the others read it.
bool shared_folder_visible(const MpiWorld& world, const std::string& folder, std::string& problem) {
  std::string probe = (fs::path(folder) / fmt::format(".rank-probe-{}", ::getpid())).string();
  std::string token;
  if (world.rank() == 0) {
    token = fmt::format("{}-{}", ::getpid(), std::random_device{}());
    std::ofstream(probe) << token;
  }
  broadcast_string(probe);
  broadcast_string(token);
  std::string seen;
  {
    std::ifstream in(probe);
    std::getline(in, seen);
  }
  int ok = seen == token ? 1 : 0;
  std::vector<int> all(static_cast<size_t>(world.size()));
  MPI_Gather(&ok, 1, MPI_INT, all.data(), 1, MPI_INT, 0, MPI_COMM_WORLD);
  std::string blind;
  if (world.rank() == 0) {
    std::error_code ec;
    fs::remove(probe, ec);
    for (int r = 0; r < world.size(); ++r)
      if (!all[static_cast<size_t>(r)]) blind += fmt::format("{}{}", blind.empty() ? "" : ", ", r);
  }
  broadcast_string(blind);
  if (!blind.empty())
    problem = fmt::format("the results folder {} is not shared by all ranks: rank(s) {} cannot see it; "
                          "--out must be on a file system every rank sees", folder, blind);
  return blind.empty();
}

}  // namespace

bool MpiWorld::launched() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(v)) return true;
  return false;
}

MpiWorld::MpiWorld(int* argc, char*** argv) {
  MPI_Init(argc, argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
}

MpiWorld::~MpiWorld() { MPI_Finalize(); }

int MpiWorld::ranks_on_this_node() const {
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node);
  int n = 1;
  MPI_Comm_size(node, &n);
  MPI_Comm_free(&node);
  return n;
}

int run_experiment_mpi(MpiWorld& world, const PluginHost& host, const std::string& file, RunOptions options, bool quiet) {
  const bool root = world.rank() == 0;
  auto say = [&](const std::string& line) {
    if (root) std::fprintf(stderr, "%s\n", line.c_str());
  };
  if (root)
    for (const auto& p : host.problems()) std::fprintf(stderr, "warning: %s\n", p.c_str());
  // Rank 0 reads the file; every rank validates the same text against its own plugins.
  std::string text;
  bool readable = true;
  if (root) {
    std::ifstream in(file, std::ios::binary);
    readable = static_cast<bool>(in);
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  MPI_Bcast(&readable, 1, MPI_C_BOOL, 0, MPI_COMM_WORLD);
  if (!readable) {
    say(fmt::format("error: {}: cannot open the experiment file", file));
    return 2;
  }
  broadcast_string(text);
  Experiment ex;
  std::vector<std::string> errors;
  try {
    ex = parse_experiment(text, file, host);
  } catch (const ExperimentError& e) {
    errors = e.lines;
  }
  if (!all_ranks(errors.empty())) {
    for (const auto& l : errors) say("error: " + l);
    if (errors.empty()) say(fmt::format("error: {}: the experiment is valid on rank 0 but not on another rank "
                                        "(are the same plugins installed on every machine?)", file));
    return 2;
  }
  long long runs = static_cast<long long>(ex.runs.size()), most = 0;
  MPI_Allreduce(&runs, &most, 1, MPI_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
  if (!all_ranks(runs == most)) {
    say(fmt::format("error: {}: the ranks expand the experiment into different runs (different plugins?)", file));
    return 2;
  }

  const int ranks_here = world.ranks_on_this_node();
  if (options.jobs <= 0) options.jobs = default_jobs(ranks_here, options.threads);
  if (root) warn_if_oversubscribed(options.jobs, options.threads, ranks_here);
  at::set_num_threads(options.threads);
  at::set_num_interop_threads(1);
  options.experiment_text = text;

  // The experiment folder: created and locked by rank 0, visible to every rank.
  const std::string folder = (fs::path(options.out_dir) / ex.name).string();
  FileLock lock;
  std::string problem;
  if (root) {
    try {
      refuse_symlinks(options.out_dir, folder);
      fs::create_directories(folder);
      lock = FileLock::acquire((fs::path(folder) / run_files::lock).string(), "experiment folder " + folder);
    } catch (const std::exception& e) {
      problem = e.what();
    }
  }
  broadcast_string(problem);
  if (problem.empty()) shared_folder_visible(world, folder, problem);
  if (!problem.empty()) {
    say("error: " + problem);
    return 2;
  }

  std::vector<size_t> todo;
  if (root) todo = runs_to_do(ex, host, options);
  long long n_todo = static_cast<long long>(todo.size());
  MPI_Bcast(&n_todo, 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD);
  todo.resize(static_cast<size_t>(n_todo));
  {
    std::vector<long long> t(todo.begin(), todo.end());
    if (n_todo > 0) MPI_Bcast(t.data(), static_cast<int>(n_todo), MPI_LONG_LONG, 0, MPI_COMM_WORLD);
    todo.assign(t.begin(), t.end());
  }
  if (root)
    std::fprintf(stderr, "experiment '%s': %zu run(s), %zu to do, over %d MPI ranks x %d job(s), %d thread(s) each, results in %s\n",
                 ex.name.c_str(), ex.runs.size(), todo.size(), world.size(), options.jobs, options.threads, folder.c_str());

  std::vector<RunOutcome> outcomes(ex.runs.size());
  for (size_t i = 0; i < ex.runs.size(); ++i)
    outcomes[i] = {ex.runs[i].run_id, (fs::path(folder) / ex.runs[i].run_id).string(), "skipped", "", ""};
  for (size_t i : todo) outcomes[i].status = "";
  Progress progress(static_cast<int>(todo.size()), root && ::isatty(STDERR_FILENO) != 0, quiet);

  // Data-parallel runs first: all ranks train each of them together, in this process.
  std::vector<size_t> queue;
  MpiCollective collective(world.rank(), world.size());
  for (size_t k = 0; k < todo.size(); ++k) {
    const size_t i = todo[k];
    if (!ex.runs[i].train.data_parallel) {
      queue.push_back(k);
      continue;
    }
    TrainOptions t = train_options(options, static_cast<int>(k));
    t.collective = &collective;
    Progress silent(static_cast<int>(todo.size()), false, true);
    RunOutcome o = run_one(ex.runs[i], host, outcomes[i].dir, t, root ? static_cast<ProgressSink&>(progress) : silent);
    if (root) outcomes[i] = o;
  }

  // The others: balanced over the ranks, each in a worker process.
  WorkerPool pool(ex, host, worker_launch(ex, options), progress);
  if (root) coordinate(world, ex, todo, queue, pool, options.jobs, progress, outcomes);
  else serve(todo, pool, options.jobs);
  progress.finish();
  if (!root) return 0;
  return report_outcomes(outcomes, folder);
}

}  // namespace mfglab::engine
