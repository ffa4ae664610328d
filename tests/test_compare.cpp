// compare (engine/src/compare.h and the `mfglab compare` command) on hand-made run folders:
// natural order of configurations, the wall-time column, per-seed values, paired statistics
// against a baseline (pairs by seed, unpaired seeds, Holm, verdicts from metric_better),
// the errors of a bad baseline, and that compare only reads.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "cli.h"
#include "compare.h"
#include "results.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace mfglab::engine;
using mfglab::test::mfglab_cli;
using mfglab::test::TempDir;

namespace {

struct Run {
  std::string experiment = "study";
  std::string label = "default";
  std::string variant;
  uint64_t seed = 0;
  std::string status = "ok";
  json metrics = json::object();
  double train_seconds = 10, sample_seconds = 1;
  json metric_better;  // null: none
};

// A run folder as the engine leaves it: summary.json and config.json.
void write_run(const fs::path& root, const Run& r) {
  const std::string id = (r.label == "default" ? "" : r.label + ",") + fmt::format("seed={}", r.seed);
  const fs::path dir = root / r.experiment / id;
  fs::create_directories(dir);
  json s = {{"experiment", r.experiment}, {"run_id", id}, {"label", r.label}, {"seed", r.seed},
            {"status", r.status}, {"metrics", r.status == "ok" ? r.metrics : json::object()},
            {"train_seconds", r.train_seconds}, {"error", nullptr}};
  if (r.status == "ok") s["sample_seconds"] = r.sample_seconds, s["seconds_per_iteration"] = 0.01;
  if (!r.metric_better.is_null()) s["metric_better"] = r.metric_better;
  std::ofstream(dir / "summary.json") << s.dump(2);
  json c = {{"name", r.experiment}, {"label", r.label}, {"seed", r.seed}, {"run_id", id}};
  if (!r.variant.empty()) c["variant"] = r.variant;
  std::ofstream(dir / "config.json") << c.dump(2);
}

// Hollander & Wolfe's paired data (R's wilcox.test example): the differences x - y have
// signed-rank statistic V = 40 and exact two-sided p = 0.0390625.
const std::vector<double> kX = {1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30};
const std::vector<double> kY = {0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29};

// Two variants over seeds 0..8: arm "a" gets x, baseline "b" gets y as `metric`.
void write_study(const fs::path& root, const std::string& metric, json better = nullptr, json extra_a = json::object(),
                 json extra_b = json::object()) {
  for (uint64_t s = 0; s < kX.size(); ++s) {
    Run a;
    a.label = "variant=a", a.variant = "a", a.seed = s, a.metric_better = better;
    a.metrics = extra_a;
    a.metrics[metric] = kX[s];
    write_run(root, a);
    Run b = a;
    b.label = "variant=b", b.variant = "b";
    b.metrics = extra_b;
    b.metrics[metric] = kY[s];
    write_run(root, b);
  }
}

const MetricComparison& metric_of(const ArmComparison& arm, const std::string& name) {
  for (const auto& m : arm.metrics)
    if (m.metric == name) return m;
  FAIL("no metric " << name);
  throw;
}

// Every file under `dir` with its size and modification time, one line each.
std::string snapshot(const fs::path& dir) {
  std::map<std::string, std::string> lines;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    lines[e.path().string()] = fmt::format("{} {}", e.is_regular_file() ? e.file_size() : 0,
                                           e.last_write_time().time_since_epoch().count());
  std::string out;
  for (const auto& [path, line] : lines) out += path + " " + line + "\n";
  return out;
}

}  // namespace

TEST_CASE("natural order: numbers inside labels compare as numbers", "[compare]") {
  CHECK(natural_less("steps=32", "steps=100"));
  CHECK_FALSE(natural_less("steps=100", "steps=32"));
  CHECK(natural_less("lr=1e-3", "lr=0.01"));
  CHECK(natural_less("lr=-1", "lr=0.5"));
  CHECK(natural_less("width=64,seed=2", "width=64,seed=10"));
  CHECK(natural_less("variant=cnf", "variant=otflow"));
  CHECK(natural_less("a-2", "a-10"));  // '-' after a letter is no sign
  CHECK(natural_less("x=0.1", "x=0.10"));  // equal numbers: byte order decides
  CHECK_FALSE(natural_less("same", "same"));

  TempDir tmp("compare_order");
  for (int steps : {1000, 8, 100, 32})
    for (uint64_t seed : {0, 1}) {
      Run r;
      r.label = fmt::format("steps={}", steps), r.seed = seed, r.metrics = {{"mmd", 0.1 * steps}};
      write_run(tmp.path, r);
    }
  auto rows = collect_runs({tmp.str()});
  REQUIRE(rows.size() == 4);
  CHECK(rows[0].label == "steps=8");
  CHECK(rows[1].label == "steps=32");
  CHECK(rows[2].label == "steps=100");
  CHECK(rows[3].label == "steps=1000");
  const auto table = format_table(rows);
  CHECK(table.find("steps=8 ") < table.find("steps=32 "));
  CHECK(table.find("steps=32 ") < table.find("steps=100 "));
}

TEST_CASE("the wall-time column sums train and sample seconds over the seeds", "[compare]") {
  TempDir tmp("compare_wall");
  for (uint64_t seed : {0, 1, 2}) {
    Run r;
    r.seed = seed, r.metrics = {{"mmd", 0.5}}, r.train_seconds = 100 + seed, r.sample_seconds = 2;
    if (seed == 2) r.status = "failed", r.train_seconds = 7;  // a failed run's time counts too
    write_run(tmp.path, r);
  }
  auto rows = collect_runs({tmp.str()});
  REQUIRE(rows.size() == 1);
  CHECK(rows[0].wall_seconds == Approx(102 + 103 + 7));
  CHECK(rows[0].runs_ok == 2);
  CHECK(rows[0].runs_failed == 1);
  const auto table = format_table(rows);
  CHECK(table.find("wall time") != std::string::npos);
  CHECK(table.find("3m32s") != std::string::npos);  // 212 s
  CHECK(format_json(rows)[0]["wall_seconds"] == Approx(212));
  CHECK(format_csv(rows).find(",wall_seconds\n") != std::string::npos);
}

TEST_CASE("the spread of the learned maps: mean distance between two seeds' images of the same points",
          "[compare][maps]") {
  TempDir tmp("compare_maps");
  auto points = torch::tensor({{0.0, 0.0}, {1.0, 2.0}, {-1.0, 0.5}}, torch::kFloat64);
  // Seed 1 moves every image by (3, 4), seed 2 by (0, 1): the pair distances are 5, 1 and |(3, 3)|.
  const std::vector<std::vector<double>> shifts = {{0, 0}, {3, 4}, {0, 1}, {7, 7}};
  for (uint64_t seed = 0; seed < 4; ++seed) {
    Run r;
    r.seed = seed, r.metrics = {{"nll", 1.0}};
    if (seed == 3) r.status = "failed";  // its map is not a learned one: left out
    write_run(tmp.path, r);
    const fs::path dir = tmp.path / "study" / fmt::format("seed={}", seed);
    mfglab::engine::save_npy((dir / "map.npy").string(), points + torch::tensor(shifts[seed], torch::kFloat64));
  }
  auto rows = collect_runs({tmp.str()});
  REQUIRE(rows.size() == 1);
  const auto& ms = rows[0].map_spread;
  CHECK(ms.maps == 3);
  REQUIRE(ms.distances.size() == 3);
  CHECK(ms.distances[0] == Approx(5.0));
  CHECK(ms.distances[1] == Approx(1.0));
  CHECK(ms.distances[2] == Approx(std::sqrt(18.0)));
  CHECK(ms.problem.empty());
  const double mean = (6 + std::sqrt(18.0)) / 3;
  CHECK(format_json(rows)[0]["map_spread"]["mean"].get<double>() == Approx(mean));
  CHECK(format_table(rows).find(fmt::format("{:.4g}", mean)) != std::string::npos);

  // A map of another shape is named and left out; a folder without maps has no section.
  Run other;
  other.seed = 5, other.metrics = {{"nll", 1.0}};
  write_run(tmp.path, other);
  mfglab::engine::save_npy((tmp.path / "study" / "seed=5" / "map.npy").string(), torch::zeros({2, 2}, torch::kFloat64));
  rows = collect_runs({tmp.str()});
  CHECK(rows[0].map_spread.maps == 3);
  CHECK_THAT(rows[0].map_spread.problem, Catch::Contains("seed=5") && Catch::Contains("differs"));
  TempDir bare("compare_no_maps");
  write_run(bare.path, other);
  CHECK(format_table(collect_runs({bare.str()})).find("learned maps") == std::string::npos);
}

TEST_CASE("per-seed values on request", "[compare]") {
  TempDir tmp("compare_seeds");
  for (uint64_t seed : {0, 1}) {
    Run r;
    r.seed = seed, r.metrics = {{"mmd", seed == 0 ? 0.125 : 0.375}};
    write_run(tmp.path, r);
  }
  Run failed;
  failed.seed = 5, failed.status = "crashed";
  write_run(tmp.path, failed);
  auto rows = collect_runs({tmp.str()});
  CHECK(format_table(rows).find("per seed") == std::string::npos);
  const auto table = format_table(rows, {true, ""});
  const auto at = table.find("per seed");
  REQUIRE(at != std::string::npos);
  const auto per_seed = table.substr(at);
  CHECK(per_seed.find("0.125") != std::string::npos);
  CHECK(per_seed.find("0.375") != std::string::npos);
  CHECK(per_seed.find("crashed") != std::string::npos);
  const auto csv = format_csv(rows, {true, ""});
  CHECK(csv.rfind("experiment,config,seed,status,mmd,sec/iter,wall_seconds\n", 0) == 0);
  CHECK(csv.find("\"study\",\"default\",1,ok,0.375,0.01,11\n") != std::string::npos);
  CHECK(csv.find("\"study\",\"default\",5,crashed,,,10\n") != std::string::npos);
  const auto j = format_json(rows);
  REQUIRE(j[0]["runs"].size() == 3);
  CHECK(j[0]["runs"][1]["values"]["mmd"] == 0.375);
  CHECK(j[0]["runs"][2]["status"] == "crashed");
}

TEST_CASE("paired statistics against a baseline variant", "[compare][paired]") {
  TempDir tmp("compare_paired");

  SECTION("one metric: the signed-rank p of the published example; lower is better, so 'worse'") {
    write_study(tmp.path, "mmd", {{"mmd", "lower"}});
    auto rows = collect_runs({tmp.str()});
    REQUIRE(rows.size() == 2);
    CHECK(rows[0].variant == "a");
    auto pc = compare_paired(rows, "b");
    REQUIRE(pc.baselines.size() == 1);
    CHECK(pc.baselines[0]->label == "variant=b");
    REQUIRE(pc.arms.size() == 1);
    const auto& arm = pc.arms[0];
    CHECK(arm.paired_seeds.size() == 9);
    CHECK(arm.unpaired_seeds.empty());
    const auto& m = metric_of(arm, "mmd");
    CHECK(m.pairs == 9);
    double mean = 0;
    for (size_t i = 0; i < kX.size(); ++i) mean += (kX[i] - kY[i]) / kX.size();
    CHECK(m.diff.mean == Approx(mean));
    CHECK(m.test.method == stats::PairedTest::Method::wilcoxon_exact);
    CHECK(m.test.statistic == 40);
    CHECK(m.test.p == Approx(0.0390625));
    CHECK(m.p_holm == Approx(0.0390625));  // one metric: Holm changes nothing
    CHECK(m.better == "lower");
    CHECK(m.lower == 2);
    CHECK(m.wins() == 2);
    CHECK(m.verdict == "worse");
    // The timing column is not tested.
    CHECK(arm.metrics.size() == 1);

    const auto table = format_table(rows, {false, "b"});
    CHECK(table.find("paired against variant=b") != std::string::npos);
    CHECK(table.find("2/9") != std::string::npos);
    CHECK(table.find("0.0391") != std::string::npos);
    CHECK(table.find("worse") != std::string::npos);
    // "variant=b" as a label names the same baseline.
    CHECK(compare_paired(rows, "variant=b").baselines == pc.baselines);

    SECTION("the other way round it is 'better'") {
      auto back = compare_paired(rows, "a");
      REQUIRE(back.arms.size() == 1);
      CHECK(metric_of(back.arms[0], "mmd").verdict == "better");
      CHECK(metric_of(back.arms[0], "mmd").wins() == 7);
    }
  }

  SECTION("without metric_better the verdict says higher / lower") {
    write_study(tmp.path, "score");
    auto pc = compare_paired(collect_runs({tmp.str()}), "b");
    const auto& m = metric_of(pc.arms[0], "score");
    CHECK(m.better.empty());
    CHECK(m.verdict == "higher");
    CHECK(m.wins() == 7);  // pairs where the arm is higher
    const auto table = format_table(collect_runs({tmp.str()}), {false, "b"});
    CHECK(table.find("7/9 higher") != std::string::npos);
  }

  SECTION("Holm across the arm's metrics: a second, unchanged metric doubles the p-value") {
    write_study(tmp.path, "mmd", {{"mmd", "lower"}, {"nll", "lower"}}, {{"nll", 2.5}}, {{"nll", 2.5}});
    auto pc = compare_paired(collect_runs({tmp.str()}), "b");
    const auto& mmd = metric_of(pc.arms[0], "mmd");
    const auto& nll = metric_of(pc.arms[0], "nll");
    CHECK(nll.test.method == stats::PairedTest::Method::sign_exact);  // all nine differences are 0
    CHECK(nll.test.p == 1);
    CHECK(mmd.p_holm == Approx(2 * 0.0390625));
    CHECK(mmd.verdict == "no detectable difference");
    CHECK(nll.verdict == "no detectable difference");
  }

  SECTION("unpaired seeds are left out and counted; a skipped metric is n/a") {
    write_study(tmp.path, "mmd", {{"mmd", "lower"}}, json::object(), {{"transport_cost", 1.3}});
    Run extra;  // seed 9 ran in the arm only; seed 10 failed in the baseline
    extra.label = "variant=a", extra.variant = "a", extra.seed = 9, extra.metrics = {{"mmd", 1.0}};
    write_run(tmp.path, extra);
    extra.seed = 10;
    write_run(tmp.path, extra);
    Run failed = extra;
    failed.label = "variant=b", failed.variant = "b", failed.status = "failed";
    write_run(tmp.path, failed);
    auto rows = collect_runs({tmp.str()});
    auto pc = compare_paired(rows, "b");
    const auto& arm = pc.arms[0];
    CHECK(arm.paired_seeds.size() == 9);
    CHECK(arm.unpaired_seeds == std::vector<uint64_t>{9, 10});
    CHECK(metric_of(arm, "mmd").test.p == Approx(0.0390625));
    const auto& transport = metric_of(arm, "transport_cost");
    CHECK(transport.pairs == 0);
    CHECK(transport.missing == 9);
    CHECK(transport.verdict == "n/a");
    CHECK(std::isnan(transport.p_holm));
    CHECK(metric_of(arm, "mmd").p_holm == Approx(0.0390625));  // n/a is no hypothesis
    const auto table = format_table(rows, {false, "b"});
    CHECK(table.find("2 unpaired (seeds 9, 10") != std::string::npos);
    // The arm's transport_cost column.
    const auto first_row = table.substr(table.find("variant=a"), table.find('\n', table.find("variant=a")) - table.find("variant=a"));
    CHECK(first_row.find("n/a") != std::string::npos);
  }

  SECTION("five pairs cannot reach 0.05: the table says so") {
    for (uint64_t s = 0; s < 5; ++s) {
      Run a;
      a.label = "variant=a", a.variant = "a", a.seed = s, a.metrics = {{"mmd", 1.0 + s}};
      write_run(tmp.path, a);
      Run b = a;
      b.label = "variant=b", b.variant = "b", b.metrics = {{"mmd", 0.5 + s}};
      write_run(tmp.path, b);
    }
    auto rows = collect_runs({tmp.str()});
    auto pc = compare_paired(rows, "b");
    CHECK(metric_of(pc.arms[0], "mmd").test.p == Approx(0.0625));
    CHECK(metric_of(pc.arms[0], "mmd").verdict == "no detectable difference");
    CHECK(format_table(rows, {false, "b"}).find("smallest possible p 0.0625") != std::string::npos);
  }

  SECTION("CSV and JSON") {
    write_study(tmp.path, "mmd", {{"mmd", "lower"}});
    auto rows = collect_runs({tmp.str()});
    const auto csv = format_csv(rows, {false, "b"});
    CHECK(csv.rfind("experiment,config,baseline,metric,better,pairs,missing,unpaired,mean_diff,ci_low,ci_high,wins,"
                    "test,statistic,p,p_holm,verdict\n", 0) == 0);
    CHECK(csv.find("\"study\",\"variant=a\",\"variant=b\",\"mmd\",lower,9,0,0,") != std::string::npos);
    CHECK(csv.find(",2,wilcoxon_exact,40,0.0390625,0.0390625,\"worse\"\n") != std::string::npos);
    const auto j = format_json(rows, {false, "b"});
    REQUIRE(j.size() == 2);
    CHECK(j[1]["baseline"] == true);
    const auto& p = j[0]["paired"];
    CHECK(p["baseline"] == "variant=b");
    CHECK(p["pairs"] == 9);
    CHECK(p["metrics"]["mmd"]["p"] == Approx(0.0390625));
    CHECK(p["metrics"]["mmd"]["verdict"] == "worse");
    CHECK(p["metrics"]["mmd"]["differences"]["0"] == Approx(kX[0] - kY[0]));
    // t interval: mean ± t_{8,0.975} sd / 3.
    double mean = 0, ss = 0;
    for (size_t i = 0; i < 9; ++i) mean += (kX[i] - kY[i]) / 9;
    for (size_t i = 0; i < 9; ++i) ss += (kX[i] - kY[i] - mean) * (kX[i] - kY[i] - mean);
    const double half = 2.306004 * std::sqrt(ss / 8) / 3;
    CHECK(p["metrics"]["mmd"]["ci95"][0] == Approx(mean - half).margin(1e-6));
    CHECK(p["metrics"]["mmd"]["ci95"][1] == Approx(mean + half).margin(1e-6));
  }
}

TEST_CASE("a variant baseline crossed with a sweep pairs each sweep point with its own", "[compare][paired]") {
  TempDir tmp("compare_sweep");
  for (const char* v : {"a", "b"})
    for (const char* lr : {"0.1", "0.2"})
      for (uint64_t s = 0; s < 3; ++s) {
        Run r;
        r.variant = v, r.label = fmt::format("variant={},lr={}", v, lr), r.seed = s;
        r.metrics = {{"mmd", std::stod(lr) + (v[0] == 'a' ? 1.0 : 0.0) + 0.01 * s}};
        write_run(tmp.path, r);
      }
  auto rows = collect_runs({tmp.str()});
  REQUIRE(rows.size() == 4);
  auto pc = compare_paired(rows, "b");
  REQUIRE(pc.baselines.size() == 2);
  REQUIRE(pc.arms.size() == 2);
  for (const auto& arm : pc.arms) {
    REQUIRE(arm.baseline != nullptr);
    INFO(arm.arm->label);
    CHECK(arm.baseline->label == "variant=b," + arm.arm->label.substr(std::string("variant=a,").size()));
    CHECK(metric_of(arm, "mmd").diff.mean == Approx(1.0));
  }
  // A label names one configuration.
  auto one = compare_paired(rows, "variant=b,lr=0.1");
  REQUIRE(one.baselines.size() == 1);
  CHECK(one.arms.size() == 3);
}

TEST_CASE("two experiments: the baseline by experiment name", "[compare][paired]") {
  TempDir tmp("compare_two");
  for (const char* e : {"cnf_arm", "otflow_arm"})
    for (uint64_t s = 0; s < 6; ++s) {
      Run r;
      r.experiment = e, r.seed = s, r.metrics = {{"nll", (e[0] == 'c' ? 2.0 : 3.0) + 0.1 * s}};
      write_run(tmp.path, r);
    }
  auto rows = collect_runs({tmp.str()});
  auto pc = compare_paired(rows, "otflow_arm");
  REQUIRE(pc.arms.size() == 1);
  CHECK(pc.arms[0].arm->experiment == "cnf_arm");
  const auto& m = metric_of(pc.arms[0], "nll");
  CHECK(m.diff.mean == Approx(-1.0));
  CHECK(m.test.p == Approx(2.0 / 64));  // six pairs, all lower
  CHECK(m.verdict == "lower");
}

TEST_CASE("compare --baseline on the command line", "[compare][cli]") {
  TempDir tmp("compare_cli");
  write_study(tmp.path, "mmd", {{"mmd", "lower"}});
  const fs::path results = tmp.path / "study";
  const auto before = snapshot(tmp.path);

  SECTION("table, CSV, JSON, per seed") {
    auto t = mfglab_cli("compare '" + results.string() + "' --baseline b --per-seed");
    INFO(t.err);
    CHECK(t.exit_code == 0);
    CHECK(t.out.find("per seed") != std::string::npos);
    CHECK(t.out.find("worse") != std::string::npos);
    auto c = mfglab_cli("compare '" + results.string() + "' --baseline b --csv");
    CHECK(c.exit_code == 0);
    CHECK(c.out.rfind("experiment,config,baseline,metric", 0) == 0);
    auto j = mfglab_cli("compare '" + results.string() + "' --baseline variant=b --json");
    CHECK(j.exit_code == 0);
    CHECK(json::parse(j.out)[0]["paired"]["metrics"]["mmd"]["verdict"] == "worse");
    auto both = mfglab_cli("compare '" + results.string() + "' --baseline b --csv --per-seed");
    CHECK(both.exit_code == 2);
    CHECK(both.err.find("--per-seed or --baseline") != std::string::npos);
    CHECK(snapshot(tmp.path) == before);  // compare only reads
  }
  SECTION("an unknown baseline is bad input") {
    auto r = mfglab_cli("compare '" + results.string() + "' --baseline c");
    CHECK(r.exit_code == 2);
    CHECK(r.out.empty());
    CHECK(r.err == "error: unknown baseline 'c': expected a variant name (a, b) or a configuration label "
                   "(variant=a, variant=b)\n");
    CHECK(snapshot(tmp.path) == before);
  }
  SECTION("a baseline without successful runs is bad input") {
    for (uint64_t s = 0; s < 2; ++s) {
      Run r;
      r.label = "variant=c", r.variant = "c", r.seed = s, r.status = "failed";
      write_run(tmp.path, r);
    }
    const auto with_failed = snapshot(tmp.path);
    auto r = mfglab_cli("compare '" + results.string() + "' --baseline c --json");
    CHECK(r.exit_code == 2);
    CHECK(r.out.empty());
    CHECK(r.err == "error: baseline 'c' has no successful runs\n");
    CHECK(snapshot(tmp.path) == with_failed);
  }
}
