// End to end through the mfglab binary: runs, determinism across --jobs, learning,
// resumability, compare, and an out-of-tree plugin built against the installed SDK.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "cli.h"
#include "results.h"

namespace fs = std::filesystem;
using mfglab::test::mfglab_cli;
using mfglab::test::read_text;
using mfglab::test::shell;
using mfglab::test::TempDir;

namespace {

// A tiny sgm experiment on 8gaussians; `extra` is spliced into the top-level object.
std::string tiny_experiment(const std::string& name, int iterations, const std::string& seeds,
                            const std::string& extra = "") {
  return R"({"name": ")" + name + R"(", "seeds": )" + seeds + R"(,
    "dataset": {"plugin": "toy2d", "params": {"name": "8gaussians", "train_size": 4000, "test_size": 1000}},
    "model": {"plugin": "sgm", "params": {"width": 64, "depth": 2, "sample_steps": 200}},
    "train": {"iterations": )" + std::to_string(iterations) + R"(, "batch_size": 256,
              "optimizer": {"type": "adam", "lr": 0.003}, "log_every": 50},
    "eval": {"samples": 1000, "metrics": [{"plugin": "mmd", "params": {"bandwidth": [0.5, 1, 2]}},
                                          {"plugin": "sliced_wasserstein", "params": {"projections": 50}}]})" +
         extra + "}";
}

nlohmann::json summary(const fs::path& run_dir) {
  return nlohmann::json::parse(read_text((run_dir / "summary.json").string()));
}

}  // namespace

TEST_CASE("a run writes a complete run directory", "[e2e]") {
  TempDir tmp("e2e_run");
  auto file = tmp.file("exp.json", tiny_experiment("basic", 60, "[3]"));
  auto r = mfglab_cli("run " + file + " --out " + tmp.str() + "/out");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const fs::path run = tmp.path / "out" / "basic" / "seed=3";
  for (const char* f : {"config.json", "losses.csv", "samples.npy", "summary.json", "checkpoint.pt", "log.txt"})
    CHECK(fs::exists(run / f));
  auto s = summary(run);
  CHECK(s["status"] == "ok");
  CHECK(s["seed"] == 3);
  CHECK(s["iterations"] == 60);
  CHECK(s["train_seconds"].get<double>() > 0);
  CHECK(s["seconds_per_iteration"].get<double>() > 0);
  CHECK(s["error"].is_null());
  CHECK(s["metrics"].contains("mmd"));
  CHECK(s["metrics"].contains("sliced_wasserstein"));
  // The resolved config has every plugin default filled in.
  auto cfg = nlohmann::json::parse(read_text((run / "config.json").string()));
  CHECK(cfg["model"]["params"]["beta_max"] == 20.0);
  // losses.csv: a header and one row per iteration.
  auto csv = read_text((run / "losses.csv").string());
  CHECK(csv.rfind("iteration,lr,total,dsm,seconds\n", 0) == 0);
  CHECK(std::count(csv.begin(), csv.end(), '\n') == 61);
  // samples.npy is numpy format 1.0 with the declared shape.
  auto npy = read_text((run / "samples.npy").string());
  CHECK(npy.substr(1, 5) == "NUMPY");
  CHECK(npy.find("'shape': (1000, 2)") != std::string::npos);
  CHECK(r.out.find("results: " + tmp.str() + "/out/basic") != std::string::npos);

  SECTION("running again skips the finished run; --force reruns it") {
    auto again = mfglab_cli("run " + file + " --out " + tmp.str() + "/out");
    CHECK(again.exit_code == 0);
    CHECK(again.out.find("0 ok, 0 failed, 1 already finished") != std::string::npos);
    auto forced = mfglab_cli("run " + file + " --out " + tmp.str() + "/out --force");
    CHECK(forced.exit_code == 0);
    CHECK(forced.out.find("1 ok, 0 failed, 0 already finished") != std::string::npos);
  }
}

TEST_CASE("the same experiment with --jobs 1 and --jobs 2 gives byte-identical samples", "[e2e][determinism]") {
  TempDir tmp("e2e_det");
  auto file = tmp.file("exp.json", tiny_experiment("det", 40, "[0, 1]",
                                                   R"(, "sweep": {"model.params.width": [32, 48]})"));
  auto a = mfglab_cli("run " + file + " --jobs 1 --out " + tmp.str() + "/a");
  auto b = mfglab_cli("run " + file + " --jobs 2 --out " + tmp.str() + "/b");
  REQUIRE(a.exit_code == 0);
  REQUIRE(b.exit_code == 0);
  int compared = 0;
  for (const char* id : {"width=32,seed=0", "width=32,seed=1", "width=48,seed=0", "width=48,seed=1"}) {
    auto sa = read_text((tmp.path / "a/det" / id / "samples.npy").string());
    auto sb = read_text((tmp.path / "b/det" / id / "samples.npy").string());
    INFO(id);
    REQUIRE(sa.size() > 128);
    CHECK(sa == sb);
    ++compared;
  }
  CHECK(compared == 4);
  // Different seeds give different samples.
  CHECK(read_text((tmp.path / "a/det/width=32,seed=0/samples.npy").string()) !=
        read_text((tmp.path / "a/det/width=32,seed=1/samples.npy").string()));

  SECTION("compare: one row per configuration, mean and std over seeds") {
    auto c = mfglab_cli("compare " + tmp.str() + "/a --json");
    REQUIRE(c.exit_code == 0);
    auto rows = nlohmann::json::parse(c.out);
    REQUIRE(rows.size() == 2);
    CHECK(rows[0]["config"] == "width=32");
    CHECK(rows[0]["runs_ok"] == 2);
    const auto& mmd = rows[0]["metrics"]["mmd"];
    const double v0 = mmd["values"][0], v1 = mmd["values"][1];
    CHECK(mmd["mean"].get<double>() == Approx((v0 + v1) / 2));
    CHECK(mmd["std"].get<double>() == Approx(std::abs(v0 - v1) / std::sqrt(2.0)));
    auto table = mfglab_cli("compare " + tmp.str() + "/a");
    CHECK(table.out.find("width=48") != std::string::npos);
    auto csv = mfglab_cli("compare " + tmp.str() + "/a --csv");
    CHECK(csv.out.rfind("experiment,config,runs_ok,runs_failed,mmd_mean,mmd_std", 0) == 0);
  }
}

TEST_CASE("a trained sgm beats the untrained one by 10x in MMD", "[e2e][learns]") {
  // A smaller version of experiments/quickstart.json; iterations 0 is the untrained model.
  TempDir tmp("e2e_learn");
  auto file = tmp.file("exp.json", tiny_experiment("learn", 1500, "[0]",
                                                   R"(, "sweep": {"train.iterations": [0, 1500]})"));
  auto r = mfglab_cli("run " + file + " --jobs 2 --out " + tmp.str());
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const double untrained = summary(tmp.path / "learn" / "iterations=0,seed=0")["metrics"]["mmd"];
  const double trained = summary(tmp.path / "learn" / "iterations=1500,seed=0")["metrics"]["mmd"];
  INFO("untrained MMD " << untrained << ", trained MMD " << trained);
  CHECK(untrained > 0.05);
  CHECK(trained * 10 < untrained);
}

TEST_CASE("one failing run does not stop the others; the exit code reports it", "[e2e]") {
  TempDir tmp("e2e_fail");
  // lr so large that the loss overflows: the NaN/Inf guard must name the step and term.
  auto file = tmp.file("exp.json", tiny_experiment("fail", 30, "[0]",
                                                   R"(, "sweep": {"train.optimizer.lr": [0.003, 1e30]})"));
  auto r = mfglab_cli("run " + file + " --out " + tmp.str());
  CHECK(r.exit_code == 1);
  CHECK(summary(tmp.path / "fail" / "lr=0.003,seed=0")["status"] == "ok");
  auto bad = summary(tmp.path / "fail" / "lr=1e+30,seed=0");
  CHECK(bad["status"] == "failed");
  const std::string error = bad["error"];
  INFO(error);
  CHECK((error.find("non-finite loss term 'dsm'") != std::string::npos ||
         error.find("samples contain NaN") != std::string::npos));
}

TEST_CASE("sgm with loss none trains on its regularizers alone, and refuses to train on nothing", "[e2e]") {
  TempDir tmp("e2e_loss_none");
  auto exp = nlohmann::json::parse(tiny_experiment("none", 20, "[0]"));
  exp["model"]["params"]["loss"] = "none";
  exp["eval"]["metrics"] = nlohmann::json::array({{{"plugin", "escaped"}}});
  exp["variants"] = {{"regularized", {{"regularizers", {{{"plugin", "terminal_ism"}, {"weight", 1.0}}}}}},
                     {"bare", {{"train", {{"iterations", 10}}}}},
                     {"zero", {{"regularizers", {{{"plugin", "terminal_ism"}, {"weight", 0.0}}}}}}};
  auto file = tmp.file("exp.json", exp.dump());
  auto r = mfglab_cli("run " + file + " --out " + tmp.str() + " --no-plots");
  INFO(r.out << r.err);
  CHECK(r.exit_code == 1);
  const fs::path run = tmp.path / "none" / "variant=regularized,seed=0";
  auto good = summary(run);
  CHECK(good["status"] == "ok");
  // The loss log has the regularizer's column and none of the model's own.
  const auto losses = read_text((run / "losses.csv").string());
  const auto header = losses.substr(0, losses.find('\n'));
  CHECK(header == "iteration,lr,total,terminal_ism,seconds");
  CHECK(good["metrics"]["escaped_fraction"].is_number());
  auto bare = summary(tmp.path / "none" / "variant=bare,seed=0");
  CHECK(bare["status"] == "failed");
  CHECK_THAT(bare["error"].get<std::string>(), Catch::Contains("nothing to train") && Catch::Contains("no regularizers"));
  // Only a weight-0 term: nothing depends on the parameters.
  auto zero = summary(tmp.path / "none" / "variant=zero,seed=0");
  CHECK(zero["status"] == "failed");
  CHECK_THAT(zero["error"].get<std::string>(), Catch::Contains("nothing to train") && Catch::Contains("weight 0"));
}

TEST_CASE("a regularizer at weight 0 keeps its column but is not evaluated", "[e2e]") {
  TempDir tmp("e2e_weight0");
  // hjb with equation mfg refuses a score model at its first penalty: evaluated, it fails the run.
  auto exp = nlohmann::json::parse(tiny_experiment("weight0", 10, "[0]"));
  exp["model"]["params"]["parameterization"] = "potential";
  exp["hamiltonian"] = {{"plugin", "quadratic"}};
  exp["eval"]["metrics"] = nlohmann::json::array({{{"plugin", "escaped"}}});
  auto hjb = [](double weight) {
    return nlohmann::json::array({{{"plugin", "hjb"}, {"weight", weight}, {"params", {{"equation", "mfg"}}}}});
  };
  exp["sweep"] = {{"regularizers", {hjb(0.0), hjb(0.1)}}};
  auto file = tmp.file("exp.json", exp.dump());
  auto r = mfglab_cli("run " + file + " --out " + tmp.str() + " --no-plots");
  INFO(r.out << r.err);
  CHECK(r.exit_code == 1);
  int ok = 0, failed = 0;
  for (const auto& e : fs::directory_iterator(tmp.path / "weight0")) {
    if (!fs::exists(e.path() / "summary.json")) continue;  // the experiment's own files
    auto s = summary(e.path());
    if (s["status"] == "ok") {
      ++ok;
      const auto losses = read_text((e.path() / "losses.csv").string());
      CHECK(losses.substr(0, losses.find('\n')) == "iteration,lr,total,dsm,hjb,seconds");
      CHECK(s["final_loss"]["hjb"] == 0.0);
    } else {
      ++failed;
      CHECK_THAT(s["error"].get<std::string>(), Catch::Contains("equation \"mfg\" does not apply"));
    }
  }
  CHECK(ok == 1);
  CHECK(failed == 1);
}

TEST_CASE("eval.map_points: every seed maps the same held-out points; compare reports the spread", "[e2e][maps]") {
  TempDir tmp("e2e_maps");
  auto exp = nlohmann::json::parse(tiny_experiment("maps", 5, "[2, 5]"));
  exp["model"] = {{"plugin", "cnf"}, {"params", {{"width", 16}, {"depth", 2}, {"steps", 4}}}};
  exp["eval"]["map_points"] = 30;
  exp["eval"]["map_steps"] = 8;
  auto file = tmp.file("exp.json", exp.dump());
  auto r = mfglab_cli("run " + file + " --out " + tmp.str() + " --no-plots");
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  const auto a = mfglab::engine::load_npy_array((tmp.path / "maps" / "seed=2" / "map.npy").string());
  const auto b = mfglab::engine::load_npy_array((tmp.path / "maps" / "seed=5" / "map.npy").string());
  CHECK(a.sizes() == at::IntArrayRef({30, 2}));
  CHECK(a.scalar_type() == at::kDouble);
  CHECK(!at::equal(a, b));  // two seeds, two networks
  auto c = mfglab_cli("compare " + (tmp.path / "maps").string() + " --json");
  REQUIRE(c.exit_code == 0);
  const auto spread = nlohmann::json::parse(c.out)[0]["map_spread"];
  CHECK(spread["maps"] == 2);
  CHECK(spread["mean"].get<double>() == Approx((a - b).norm(2, 1).mean().item<double>()).epsilon(1e-12));
}

TEST_CASE("a metric that fails leaves the run, its model and the other metrics intact", "[e2e]") {
  TempDir tmp("e2e_metric_fail");
  auto exp = nlohmann::json::parse(tiny_experiment("metric_fail", 20, "[0]"));
  exp["eval"]["metrics"].push_back({{"plugin", "failing_metric"}});
  exp["eval"]["every"] = 10;
  auto file = tmp.file("exp.json", exp.dump());
  auto r = mfglab_cli("--plugin-dir " MFGLAB_TEST_FAILING_METRIC_DIR " run " + file + " --out " + tmp.str() + " --no-plots");
  INFO(r.out << r.err);
  CHECK(r.exit_code == 0);
  const fs::path run = tmp.path / "metric_fail" / "seed=0";
  auto s = summary(run);
  CHECK(s["status"] == "ok");
  CHECK(s["metrics"]["mmd"].is_number());
  CHECK(s["metrics"]["failing_metric"].is_null());
  CHECK_THAT(s["metric_errors"]["failing_metric"].get<std::string>(),
             Catch::Contains("metric 'failing_metric' failed") && Catch::Contains("deliberate"));
  CHECK(fs::exists(run / "checkpoint.pt"));
  CHECK(fs::exists(run / "samples.npy"));
  auto evals = nlohmann::json::parse(read_text((run / "evals.json").string()));
  REQUIRE(evals.size() == 1);  // at iteration 10 (the final evaluation goes to summary.json)
  CHECK(evals[0]["metric_errors"].contains("failing_metric"));
  CHECK(read_text((run / "log.txt").string()).find("deliberate") != std::string::npos);
}

TEST_CASE("an out-of-tree plugin builds against the installed SDK and runs in the engine", "[e2e][sdk]") {
  TempDir tmp("e2e_sdk");
  const std::string prefix = tmp.str() + "/prefix";
  auto install = shell("cmake --install \"" + std::string(MFGLAB_BUILD_DIR) + "\" --prefix " + prefix);
  INFO(install.out << install.err);
  REQUIRE(install.exit_code == 0);
  REQUIRE(fs::exists(prefix + "/bin/mfglab"));
  REQUIRE(fs::exists(prefix + "/include/mfglab/plugin.h"));
  REQUIRE(fs::exists(prefix + "/lib/cmake/mfglab/mfglabConfig.cmake"));

  // The installed engine finds the installed built-in plugins with no flags.
  auto listed = shell(prefix + "/bin/mfglab plugins --json");
  REQUIRE(listed.exit_code == 0);
  auto plugins = nlohmann::json::parse(listed.out);
  bool has_sgm = false;
  for (const auto& p : plugins) has_sgm |= p["name"] == "sgm" && p["kind"] == "model";
  CHECK(has_sgm);

  const std::string build = tmp.str() + "/example-build";
  auto configure = shell("cmake -S \"" + std::string(MFGLAB_SOURCE_DIR) + "/sdk/example\" -B " + build +
                         " -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=" + prefix);
  INFO(configure.out << configure.err);
  REQUIRE(configure.exit_code == 0);
  auto compile = shell("cmake --build " + build);
  INFO(compile.out << compile.err);
  REQUIRE(compile.exit_code == 0);

  // A plugin written before the numerics toolkit was split off: plain mfglab_add_plugin, and
  // <mfglab/blas.h> included from a header beside its source. The scan links BLAS, or
  // --no-undefined would refuse the library.
  const fs::path legacy = tmp.path / "legacy";
  fs::create_directories(legacy);
  std::ofstream(legacy / "CMakeLists.txt") << R"(cmake_minimum_required(VERSION 3.25)
project(legacy_plugin LANGUAGES CXX)
find_package(mfglab REQUIRED)
if(NOT mfglab_NUMERICS_VERSION MATCHES "^[0-9]+\\.[0-9]+$")
  message(FATAL_ERROR "mfglab_NUMERICS_VERSION is '${mfglab_NUMERICS_VERSION}'")
endif()
mfglab_add_plugin(legacy_blas SOURCES legacy_blas.cpp)
)";
  std::ofstream(legacy / "squares.h") << R"(#pragma once
#include <mfglab/blas.h>
#include <mfglab/sdk.h>
// trace(X^T X) by one BLAS product: the sum of squares of X [n, d] (float64, contiguous).
inline double sum_of_squares(const torch::Tensor& x) {
  const int n = static_cast<int>(x.size(0)), d = static_cast<int>(x.size(1));
  auto g = torch::zeros({d, d}, torch::kFloat64);
  mfglab::blas::gemm(true, false, d, d, n, 1.0, x.data_ptr<double>(), d, x.data_ptr<double>(), d, 0.0,
                     g.data_ptr<double>(), d);
  return g.trace().item<double>();
}
)";
  std::ofstream(legacy / "legacy_blas.cpp") << R"(#include <mfglab/plugin.h>
#include "squares.h"
namespace {
class SumOfSquares final : public mfglab::Metric {
 public:
  SumOfSquares(const mfglab::Params&, const mfglab::RunContext&) {}
  mfglab::MetricValues evaluate(const mfglab::MetricInput& in) override {
    return {{"sum_of_squares", sum_of_squares(in.samples.to(torch::kFloat64).contiguous())}};
  }
};
}  // namespace
MFGLAB_PLUGIN(SumOfSquares, MFGLAB_KIND_METRIC, "legacy_blas", "1.0.0", "sum of squares by BLAS", "")
)";
  const std::string legacy_build = tmp.str() + "/legacy-build";
  auto legacy_configure = shell("cmake -S " + legacy.string() + " -B " + legacy_build +
                                " -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=" + prefix);
  INFO(legacy_configure.out << legacy_configure.err);
  REQUIRE(legacy_configure.exit_code == 0);
  auto legacy_compile = shell("cmake --build " + legacy_build);
  INFO(legacy_compile.out << legacy_compile.err);
  REQUIRE(legacy_compile.exit_code == 0);
  auto points = torch::arange(12, torch::kFloat64).reshape({6, 2});
  mfglab::engine::save_npy(tmp.str() + "/points.npy", points);
  auto squares = shell(prefix + "/bin/mfglab --plugin-dir " + legacy_build + " metric legacy_blas --samples " +
                       tmp.str() + "/points.npy --data " + tmp.str() + "/points.npy --json");
  INFO(squares.out << squares.err);
  REQUIRE(squares.exit_code == 0);
  CHECK(nlohmann::json::parse(squares.out)["sum_of_squares"].get<double>() == Approx(506.0));  // 0² + ... + 11²

  auto describe = shell(prefix + "/bin/mfglab --plugin-dir " + build + " describe gaussian_blob");
  CHECK(describe.exit_code == 0);
  CHECK(describe.out.find("dataset plugin") != std::string::npos);
  CHECK(describe.out.find("train_size") != std::string::npos);

  auto file = tmp.file("exp.json", R"({"name": "blob", "seeds": [0],
    "dataset": {"plugin": "gaussian_blob", "params": {"mean": 2.0, "std": 0.5, "train_size": 2000}},
    "model": {"plugin": "sgm", "params": {"width": 32, "depth": 2, "sample_steps": 100}},
    "train": {"iterations": 30, "batch_size": 128},
    "eval": {"samples": 500, "metrics": [{"plugin": "mmd"}]}})");
  // MFGLAB_PLUGIN_PATH is the other way to point at plugin folders.
  auto run = shell("MFGLAB_PLUGIN_PATH=" + build + " " + prefix + "/bin/mfglab run " + file + " --out " + tmp.str() + "/out");
  INFO(run.err);
  CHECK(run.exit_code == 0);
  CHECK(summary(tmp.path / "out" / "blob" / "seed=0")["status"] == "ok");
}

TEST_CASE("an interrupted run resumes exactly where it stopped", "[e2e][resume]") {
  TempDir tmp("e2e_resume");
  auto file = tmp.file("exp.json", tiny_experiment("resume", 20000, "[0]"));
  auto whole = mfglab_cli("run " + file + " --out " + tmp.str() + "/whole");
  REQUIRE(whole.exit_code == 0);

  // SIGINT once training has logged: the run saves a checkpoint, writes no summary and
  // exits with 130.
  const std::string losses = tmp.str() + "/cut/resume/seed=0/losses.csv";
  auto stopped = shell("\"" + std::string(MFGLAB_BINARY) + "\" run " + file + " --out " + tmp.str() +
                       "/cut & pid=$!; for i in $(seq 1200); do [ -f " + losses +
                       " ] && break; sleep 0.05; done; kill -INT $pid; wait $pid");
  INFO(stopped.out << stopped.err);
  REQUIRE(stopped.exit_code == 130);
  const fs::path run = tmp.path / "cut" / "resume" / "seed=0";
  REQUIRE_FALSE(fs::exists(run / "summary.json"));
  REQUIRE(fs::exists(run / "checkpoint.pt"));
  CHECK(stopped.out.find("run the same command again to resume") != std::string::npos);

  auto resumed = mfglab_cli("run " + file + " --out " + tmp.str() + "/cut");
  INFO(resumed.err);
  REQUIRE(resumed.exit_code == 0);
  CHECK(resumed.err.find("resuming at iteration") != std::string::npos);
  CHECK(read_text((run / "samples.npy").string()) ==
        read_text((tmp.path / "whole" / "resume" / "seed=0" / "samples.npy").string()));
  CHECK(summary(run)["iterations"] == 20000);
}
