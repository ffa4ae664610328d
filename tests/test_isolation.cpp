// Runs in worker processes: a plugin that crashes, aborts, exits, throws a non-exception,
// eats memory or hangs ends its own run only, with the right status and message, while the
// healthy runs beside it finish with the bytes they have in a single process.
#include <catch2/catch.hpp>

#include <chrono>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "cli.h"
#include "running/cores.h"

namespace fs = std::filesystem;
using mfglab::test::mfglab_cli;
using mfglab::test::read_text;
using mfglab::test::shell;
using mfglab::test::TempDir;

namespace {

const std::string kFaultDir = MFGLAB_TEST_FAULT_PLUGIN_DIR;

// fault_model on a small 2-D set; `train_extra` is spliced into the "train" object.
std::string fault_experiment(const std::string& name, const std::string& faults, const std::string& train_extra = "") {
  return R"({"name": ")" + name + R"(", "seeds": [0],
    "dataset": {"plugin": "toy2d", "params": {"name": "8gaussians", "train_size": 512, "test_size": 256}},
    "model": {"plugin": "fault_model", "params": {"at": 5}},
    "train": {"iterations": 30, "batch_size": 64, "log_every": 10, "checkpoint_every": 10)" + train_extra + R"(},
    "eval": {"samples": 200, "metrics": [{"plugin": "mmd", "params": {"bandwidth": [1]}}]},
    "sweep": {"model.params.fault": )" + faults + "}}";
}

nlohmann::json summary_of(const fs::path& run) { return nlohmann::json::parse(read_text((run / "summary.json").string())); }

std::string run_cmd(const std::string& file, const std::string& out, const std::string& extra = "") {
  return "--plugin-dir " + kFaultDir + " run " + file + " --out " + out + " --no-plots " + extra;
}

}  // namespace

TEST_CASE("a crashing plugin ends its own run only, with the signal or exit code by name", "[isolation]") {
  TempDir tmp("iso_crash");
  auto file = tmp.file("exp.json", fault_experiment("faults", R"(["none", "segfault", "abort", "exit", "throw_int"])"));
  auto r = mfglab_cli(run_cmd(file, tmp.str() + "/out", "--jobs 2"));
  INFO(r.out << r.err);
  CHECK(r.exit_code == 1);
  CHECK(r.out.find("runs: 1 ok, 4 failed, 0 already finished") != std::string::npos);
  const fs::path root = tmp.path / "out" / "faults";
  CHECK(summary_of(root / "fault=none,seed=0")["status"] == "ok");

  auto segv = summary_of(root / "fault=segfault,seed=0");
  CHECK(segv["status"] == "crashed");
  CHECK(segv["error"].get<std::string>().find("SIGSEGV") != std::string::npos);
  CHECK(segv["iterations"].get<int>() < 5);

  auto abrt = summary_of(root / "fault=abort,seed=0");
  CHECK(abrt["status"] == "crashed");
  CHECK(abrt["error"].get<std::string>().find("SIGABRT") != std::string::npos);

  auto ex = summary_of(root / "fault=exit,seed=0");
  CHECK(ex["status"] == "crashed");
  CHECK(ex["error"].get<std::string>().find("exit code 3") != std::string::npos);

  auto thrown = summary_of(root / "fault=throw_int,seed=0");
  CHECK(thrown["status"] == "failed");
  CHECK(thrown["error"].get<std::string>().find("not a std::exception") != std::string::npos);

  SECTION("the healthy run has the bytes of a run in a single process") {
    auto single = tmp.file("one.json", fault_experiment("faults", R"(["none"])"));
    auto s = mfglab_cli(run_cmd(single, tmp.str() + "/single", "--in-process"));
    REQUIRE(s.exit_code == 0);
    CHECK(read_text((root / "fault=none,seed=0" / "samples.npy").string()) ==
          read_text((tmp.path / "single" / "faults" / "fault=none,seed=0" / "samples.npy").string()));
    CHECK(read_text((root / "fault=none,seed=0" / "losses.csv").string()).size() > 0);
  }
  SECTION("a rerun retries the failed runs only") {
    auto again = mfglab_cli(run_cmd(file, tmp.str() + "/out", "--jobs 2"));
    CHECK(again.exit_code == 1);
    CHECK(again.out.find("runs: 0 ok, 4 failed, 1 already finished") != std::string::npos);
  }
}

TEST_CASE("a run past its time limit is stopped and recorded as a timeout", "[isolation]") {
  TempDir tmp("iso_time");
  auto file = tmp.file("exp.json", fault_experiment("slow", R"(["none", "hang"])"));
  const auto t0 = std::chrono::steady_clock::now();
  auto r = mfglab_cli(run_cmd(file, tmp.str() + "/out", "--jobs 2 --time-limit 4"));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  INFO(r.out << r.err);
  CHECK(r.exit_code == 1);
  CHECK(secs < 40);  // 4 s, a grace period for the stuck plugin, then SIGKILL
  const fs::path root = tmp.path / "out" / "slow";
  CHECK(summary_of(root / "fault=none,seed=0")["status"] == "ok");
  auto hang = summary_of(root / "fault=hang,seed=0");
  CHECK(hang["status"] == "timeout");
  CHECK(hang["error"].get<std::string>().find("time limit of 4 s") != std::string::npos);

  SECTION("the limit can come from the experiment file") {
    auto limited = tmp.file("lim.json", fault_experiment("slow2", R"(["hang"])", R"(, "time_limit": 3)"));
    auto l = mfglab_cli(run_cmd(limited, tmp.str() + "/out"));
    CHECK(l.exit_code == 1);
    CHECK(summary_of(tmp.path / "out" / "slow2" / "fault=hang,seed=0")["status"] == "timeout");
  }
}

TEST_CASE("a run past its memory limit is recorded as out of memory", "[isolation]") {
  TempDir tmp("iso_mem");
  auto file = tmp.file("exp.json", fault_experiment("hog", R"(["none", "hog"])"));
  auto r = mfglab_cli(run_cmd(file, tmp.str() + "/out", "--jobs 2 --run-memory 3G"));
  INFO(r.out << r.err);
  CHECK(r.exit_code == 1);
  const fs::path root = tmp.path / "out" / "hog";
  CHECK(summary_of(root / "fault=none,seed=0")["status"] == "ok");
  auto hog = summary_of(root / "fault=hog,seed=0");
  CHECK(hog["status"] == "out_of_memory");
}

TEST_CASE("bad limits are bad input", "[isolation]") {
  TempDir tmp("iso_bad");
  auto file = tmp.file("exp.json", fault_experiment("bad", R"(["none"])"));
  CHECK(mfglab_cli(run_cmd(file, tmp.str() + "/out", "--time-limit 0")).exit_code == 2);
  CHECK(mfglab_cli(run_cmd(file, tmp.str() + "/out", "--run-memory 12Q")).exit_code == 2);
  auto neg = tmp.file("neg.json", fault_experiment("bad", R"(["none"])", R"(, "time_limit": -1)"));
  auto r = mfglab_cli(run_cmd(neg, tmp.str() + "/out"));
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("/train/time_limit") != std::string::npos);
}

TEST_CASE("one run per experiment folder at a time", "[isolation]") {
  TempDir tmp("iso_lock");
  auto file = tmp.file("exp.json", fault_experiment("locked", R"(["none"])"));
  fs::create_directories(tmp.path / "out" / "locked");
  // Another process holds the folder's lock (flock(1) takes the same kind of lock).
  auto r = shell("flock " + (tmp.path / "out" / "locked" / ".lock").string() + " \"" + MFGLAB_BINARY + "\" " +
                 run_cmd(file, tmp.str() + "/out"));
  INFO(r.out << r.err);
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("in use by another mfglab process") != std::string::npos);
  // The holder is gone: its lock is free again.
  CHECK(mfglab_cli(run_cmd(file, tmp.str() + "/out")).exit_code == 0);
}

TEST_CASE("the results folder never follows a symbolic link", "[isolation]") {
  TempDir tmp("iso_link");
  auto file = tmp.file("exp.json", fault_experiment("linked", R"(["none"])"));
  fs::create_directories(tmp.path / "out" / "linked");
  fs::create_directories(tmp.path / "elsewhere");
  fs::create_directory_symlink(tmp.path / "elsewhere", tmp.path / "out" / "linked" / "fault=none,seed=0");
  auto r = mfglab_cli(run_cmd(file, tmp.str() + "/out"));
  INFO(r.out << r.err);
  CHECK(r.exit_code == 1);
  CHECK(r.out.find("symbolic link") != std::string::npos);
  CHECK(fs::is_empty(tmp.path / "elsewhere"));
}

TEST_CASE("a worker started ahead of its run waits for it on stdin", "[isolation]") {
  const std::string worker = std::string("\"") + MFGLAB_BINARY + "\" worker --standby";
  // No run came (the parent needed fewer workers): it ends quietly.
  auto none = shell(worker + " < /dev/null");
  CHECK(none.exit_code == 0);
  CHECK(none.out.empty());
  CHECK(none.err.empty());
  // An assignment that is not a count and lengths is refused, not guessed at.
  auto garbage = shell("printf 'x\\n' | " + worker);
  CHECK(garbage.exit_code == 2);
  CHECK(garbage.err.find("assignment") != std::string::npos);
  // A whole assignment is the worker's command line, then the experiment's text (here none):
  // the worker reports on fd 3 that it cannot read the experiment.
  TempDir tmp("iso_standby");
  const std::string out = tmp.str() + "/out", events = tmp.str() + "/events";
  auto r = shell("printf '6\\n6\\nworker4\\nnone11\\n--run-index1\\n05\\n--out" + std::to_string(out.size()) + "\\n" + out +
                 "' | " + worker + " 3> " + events);
  INFO(r.out << r.err);
  CHECK(r.exit_code == 2);
  const auto reported = read_text(events);
  CHECK(reported.find("\"finished\"") != std::string::npos);
  CHECK(reported.find("could not read the experiment") != std::string::npos);
}

TEST_CASE("workers come from a fork server that has LibTorch loaded, or by fork+exec", "[isolation]") {
  // While a run trains, the parent's children are listed: the fork server and the worker it
  // forked (adopted by the parent, so that the parent can wait for it), or a worker started by
  // fork+exec when MFGLAB_FORK_SERVER=0. Both ways give the same bytes.
  TempDir tmp("iso_fork");
  auto file = tmp.file("exp.json", R"({"name": "forked", "seeds": [0],
    "dataset": {"plugin": "toy2d", "params": {"name": "8gaussians", "train_size": 512, "test_size": 256}},
    "model": {"plugin": "fault_model", "params": {"at": 5}},
    "train": {"iterations": 50000, "batch_size": 64, "log_every": 10000},
    "eval": {"samples": 200, "metrics": []}})");
  auto children_while_training = [&](const std::string& env, const std::string& out) {
    const std::string list = tmp.str() + "/children_" + out, config = tmp.str() + "/" + out + "/forked/seed=0/config.json";
    auto r = shell(env + " \"" + MFGLAB_BINARY + "\" " + run_cmd(file, tmp.str() + "/" + out) + " > /dev/null 2>&1 & p=$!; " +
                   "for i in $(seq 300); do [ -f " + config + " ] && break; sleep 0.1; done; ps -o args= --ppid $p > " + list +
                   "; wait $p");
    CHECK(r.exit_code == 0);
    return read_text(list);
  };
  const std::string forked = children_while_training("", "a");
  INFO(forked);
  CHECK(forked.find("worker --fork-server") != std::string::npos);
  CHECK(forked.find("worker --forked") != std::string::npos);
  CHECK(forked.find("--standby") == std::string::npos);
  size_t lines = 0;  // the server and its worker
  for (char c : forked) lines += c == '\n';
  CHECK(lines == 2);

  const std::string execd = children_while_training("MFGLAB_FORK_SERVER=0", "b");
  INFO(execd);
  CHECK(execd.find("worker --standby") != std::string::npos);
  CHECK(execd.find("--fork-server") == std::string::npos);

  CHECK(read_text((tmp.path / "a" / "forked" / "seed=0" / "samples.npy").string()) ==
        read_text((tmp.path / "b" / "forked" / "seed=0" / "samples.npy").string()));
}

TEST_CASE("by default a run starts as many workers at once as the cores it may use", "[isolation]") {
  // taskset confines the process, and the workers it starts, to one core, as mpirun's binding
  // confines a rank: the default counts that core, not the machine's, and more jobs are warned of.
  if (shell("taskset -c 0 true").exit_code != 0) {
    WARN("taskset cannot confine this process here: not checked");
    return;
  }
  TempDir tmp("iso_cores");
  auto file = tmp.file("exp.json", R"({"name": "cores", "seeds": [0, 1, 2],
    "dataset": {"plugin": "toy2d", "params": {"name": "8gaussians", "train_size": 512, "test_size": 256}},
    "model": {"plugin": "fault_model", "params": {"at": 5}},
    "train": {"iterations": 20, "batch_size": 64, "log_every": 10},
    "eval": {"samples": 100, "metrics": []}})");
  const std::string confined = "taskset -c 0 \"" + std::string(MFGLAB_BINARY) + "\" ";
  auto by_default = shell(confined + run_cmd(file, tmp.str() + "/a"));
  INFO(by_default.err);
  CHECK(by_default.exit_code == 0);
  CHECK(by_default.err.find("3 run(s), 1 in parallel") != std::string::npos);
  CHECK(by_default.err.find("warning") == std::string::npos);

  auto asked = shell(confined + run_cmd(file, tmp.str() + "/b", "--jobs 2"));
  INFO(asked.err);
  CHECK(asked.exit_code == 0);
  CHECK(asked.err.find("3 run(s), 2 in parallel") != std::string::npos);
  CHECK(asked.err.find("warning: 2 jobs x 1 threads") != std::string::npos);
}

TEST_CASE("a cgroup's CPU quota counts as the cores it pays for, rounded up", "[isolation]") {
  using mfglab::engine::quota_cores;
  CHECK(quota_cores("200000", "100000") == 2);
  CHECK(quota_cores("150000", "100000") == 2);
  CHECK(quota_cores("50000", "100000") == 1);
  CHECK(quota_cores("max", "100000") == 0);  // cgroup v2: no limit
  CHECK(quota_cores("-1", "100000") == 0);   // cgroup v1: no limit
  CHECK(quota_cores("", "") == 0);
  CHECK(mfglab::engine::usable_cores() >= 1);
  CHECK(mfglab::engine::usable_cores() <= mfglab::engine::machine_cores());
}

TEST_CASE("a run whose loss turns non-finite keeps its last good checkpoint and its loss figure", "[isolation]") {
  TempDir tmp("iso_nan");
  auto file = tmp.file("exp.json", fault_experiment("nan", R"(["nan"])"));
  const fs::path run = tmp.path / "out" / "nan" / "fault=nan,seed=0";
  auto r = mfglab_cli("--plugin-dir " + kFaultDir + " run " + file + " --out " + tmp.str() + "/out");
  INFO(r.out << r.err);
  CHECK(r.exit_code == 1);
  auto s = summary_of(run);
  CHECK(s["status"] == "failed");
  // The 5th loss of this process is NaN: iteration 5 (1-based); 4 good steps are kept.
  CHECK_THAT(s["error"].get<std::string>(), Catch::Contains("non-finite loss term 'fit'") &&
                                                Catch::Contains("the checkpoint holds the parameters after iteration 4"));
  CHECK(fs::exists(run / "checkpoint.pt"));
  CHECK(fs::exists(run / "losses.png"));
  // A rerun resumes from it (its own 5th loss is then iteration 9) and keeps the next one.
  auto again = mfglab_cli("--plugin-dir " + kFaultDir + " run " + file + " --out " + tmp.str() + "/out --no-plots");
  CHECK(again.exit_code == 1);
  CHECK_THAT(summary_of(run)["error"].get<std::string>(), Catch::Contains("at iteration 9") &&
                                                              Catch::Contains("after iteration 8"));
}

TEST_CASE("a model output of the wrong shape is reported as such, not passed on", "[isolation]") {
  TempDir tmp("iso_shape");
  auto exp = nlohmann::json::parse(fault_experiment("shape", R"(["none", "bad_velocity"])"));
  exp["eval"]["metrics"].push_back({{"plugin", "transport"}});
  auto file = tmp.file("exp.json", exp.dump());
  auto r = mfglab_cli(run_cmd(file, tmp.str() + "/out"));
  INFO(r.out << r.err);
  CHECK(r.exit_code == 0);  // a metric that fails leaves the run intact
  auto good = summary_of(tmp.path / "out" / "shape" / "fault=none,seed=0");
  CHECK(good["metrics"].contains("transport_cost"));
  auto bad = summary_of(tmp.path / "out" / "shape" / "fault=bad_velocity,seed=0");
  CHECK(!bad["metrics"].contains("transport_cost"));
  CHECK_THAT(bad["metric_errors"].dump(), Catch::Contains("model 'fault_model': velocity returned [256], expected [256, 2]"));
}
