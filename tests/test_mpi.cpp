// Sweeps across MPI ranks (here: several ranks on this machine over loopback): the same
// files and bytes as a single-machine run, a dead rank costs only its unfinished runs, and
// data-parallel training matches the single-process run.
#include <catch2/catch.hpp>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>
#include <torch/serialize.h>

#include "cli.h"

namespace fs = std::filesystem;
using mfglab::test::mfglab_cli;
using mfglab::test::read_text;
using mfglab::test::shell;
using mfglab::test::TempDir;

namespace {

const std::string kFaultDir = MFGLAB_TEST_FAULT_PLUGIN_DIR;

// As root mpirun needs to be told; --oversubscribe lets 3 ranks share 2 cores.
std::string mpirun(int ranks) {
  return "mpirun --allow-run-as-root --oversubscribe --mca btl self,vader,tcp --mca btl_vader_single_copy_mechanism none -np " +
         std::to_string(ranks) + " \"" + MFGLAB_BINARY + "\" ";
}

std::string sweep(int iterations) {
  return R"({"name": "spread", "seeds": [0, 1, 2],
    "dataset": {"plugin": "toy2d", "params": {"name": "8gaussians", "train_size": 512, "test_size": 256}},
    "model": {"plugin": "fault_model"},
    "train": {"iterations": )" + std::to_string(iterations) + R"(, "batch_size": 64, "log_every": 50, "checkpoint_every": 50},
    "eval": {"samples": 200, "metrics": [{"plugin": "mmd", "params": {"bandwidth": [1]}}]},
    "sweep": {"train.optimizer.lr": [0.01, 0.02]}})";
}

std::vector<fs::path> run_dirs(const fs::path& root) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(root))
    if (e.is_directory()) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

void check_same_samples(const fs::path& a, const fs::path& b) {
  auto da = run_dirs(a), db = run_dirs(b);
  REQUIRE(da.size() == 6);
  REQUIRE(db.size() == 6);
  for (size_t i = 0; i < da.size(); ++i) {
    INFO(da[i]);
    CHECK(da[i].filename() == db[i].filename());
    CHECK(nlohmann::json::parse(read_text((db[i] / "summary.json").string()))["status"] == "ok");
    CHECK(read_text((da[i] / "samples.npy").string()) == read_text((db[i] / "samples.npy").string()));
  }
}

std::vector<torch::Tensor> checkpoint_params(const fs::path& file) {
  torch::serialize::InputArchive archive;
  archive.load_from(file.string());
  std::vector<torch::Tensor> out;
  for (int i = 0;; ++i) {
    torch::Tensor t;
    if (!archive.try_read("param_" + std::to_string(i), t)) break;
    out.push_back(t);
  }
  return out;
}

}  // namespace

TEST_CASE("an MPI sweep gives the bytes of a single-machine run", "[mpi]") {
  TempDir tmp("mpi_sweep");
  auto file = tmp.file("exp.json", sweep(60));
  auto one = mfglab_cli("--plugin-dir " + kFaultDir + " run " + file + " --out " + tmp.str() + "/one --jobs 1 --no-plots");
  REQUIRE(one.exit_code == 0);
  auto r = shell(mpirun(3) + "--plugin-dir " + kFaultDir + " run " + file + " --out " + tmp.str() + "/mpi --jobs 1 --no-plots");
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("runs: 6 ok, 0 failed") != std::string::npos);
  check_same_samples(tmp.path / "one" / "spread", tmp.path / "mpi" / "spread");
  // compare reads them like any other results.
  auto c = mfglab_cli("compare " + tmp.str() + "/mpi/spread");
  CHECK(c.exit_code == 0);
  CHECK(c.out.find("lr=0.01") != std::string::npos);
}

TEST_CASE("a rank killed mid-sweep loses only its unfinished runs; the same command finishes them", "[mpi]") {
  TempDir tmp("mpi_kill");
  // Runs of a few seconds each, so that the others are still training when one has finished.
  auto file = tmp.file("exp.json", sweep(15000));
  const std::string cmd = mpirun(3) + "--plugin-dir " + kFaultDir + " run " + file + " --out " + tmp.str() + "/out --jobs 1 --no-plots";
  // In the background; its pid file lets the test find the ranks.
  shell("(" + cmd + " > " + tmp.str() + "/first.log 2>&1 & echo $! > " + tmp.str() + "/mpirun.pid)");
  // Wait until one run is finished, then kill rank 1 (found by its environment).
  const fs::path root = tmp.path / "out" / "spread";
  bool killed = false;
  for (int wait = 0; wait < 600 && !killed; ++wait) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    int finished = 0;
    if (fs::exists(root))
      for (const auto& d : run_dirs(root)) finished += fs::exists(d / "summary.json");
    if (finished < 1) continue;
    auto pids = shell("pgrep -f 'mfglab.*run " + file + "'");
    std::istringstream in(pids.out);
    for (std::string pid; in >> pid && !killed;) {
      const std::string env = read_text("/proc/" + pid + "/environ");
      if (env.find(std::string("OMPI_COMM_WORLD_RANK=1") + '\0') != std::string::npos) {
        ::kill(std::stoi(pid), SIGKILL);
        killed = true;
      }
    }
  }
  REQUIRE(killed);
  // mpirun ends the job when a rank dies.
  const std::string mpirun_pid = read_text(tmp.str() + "/mpirun.pid");
  for (int wait = 0; wait < 300 && fs::exists("/proc/" + mpirun_pid.substr(0, mpirun_pid.find('\n'))); ++wait)
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  int ok_before = 0;
  for (const auto& d : run_dirs(root))
    if (fs::exists(d / "summary.json") &&
        nlohmann::json::parse(read_text((d / "summary.json").string()))["status"] == "ok")
      ++ok_before;
  CHECK(ok_before < 6);
  // The same command again finishes exactly what is missing.
  auto again = shell(cmd);
  INFO(again.out << again.err);
  REQUIRE(again.exit_code == 0);
  CHECK(again.out.find(std::to_string(ok_before) + " already finished") != std::string::npos);
  auto single = mfglab_cli("--plugin-dir " + kFaultDir + " run " + file + " --out " + tmp.str() + "/single --no-plots");
  REQUIRE(single.exit_code == 0);
  check_same_samples(tmp.path / "single" / "spread", root);
}

TEST_CASE("data-parallel training over ranks matches the single-process run", "[mpi]") {
  TempDir tmp("mpi_dp");
  auto file = tmp.file("dp.json", R"({"name": "dp", "seeds": [3], "dtype": "float64",
    "dataset": {"plugin": "toy2d", "params": {"name": "8gaussians", "train_size": 2048, "test_size": 256}},
    "model": {"plugin": "otflow", "params": {"width": 16, "steps": 4}},
    "train": {"iterations": 50, "batch_size": 256, "data_parallel": true, "log_every": 25,
              "optimizer": {"type": "adam", "lr": 0.01}},
    "eval": {"samples": 100, "metrics": []}})");
  auto one = mfglab_cli("run " + file + " --out " + tmp.str() + "/one --no-plots");
  INFO(one.out << one.err);
  REQUIRE(one.exit_code == 0);
  auto two = shell(mpirun(2) + "run " + file + " --out " + tmp.str() + "/two --no-plots");
  INFO(two.out << two.err);
  REQUIRE(two.exit_code == 0);
  const fs::path a = tmp.path / "one" / "dp" / "seed=3", b = tmp.path / "two" / "dp" / "seed=3";
  CHECK(nlohmann::json::parse(read_text((b / "summary.json").string()))["data_parallel_ranks"] == 2);
  auto pa = checkpoint_params(a / "checkpoint.pt"), pb = checkpoint_params(b / "checkpoint.pt");
  REQUIRE(pa.size() == pb.size());
  REQUIRE(!pa.empty());
  double worst = 0;
  for (size_t i = 0; i < pa.size(); ++i) worst = std::max(worst, (pa[i] - pb[i]).abs().max().item<double>());
  CHECK(worst < 1e-10);
  // and the parameters did move: the check compares trained models
  CHECK(read_text((a / "losses.csv").string()).size() > 0);
}
