// `mfglab evaluate`: a trained run sampled and measured again without training, into a new
// folder beside it. Unchanged settings give the run's own bytes; evaluation-time settings
// change the samples; settings that would change the trained model are refused; the run
// itself is never touched.
#include <catch2/catch.hpp>

#include <filesystem>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "cli.h"
#include "results.h"

namespace fs = std::filesystem;
using mfglab::test::mfglab_cli;
using mfglab::test::read_text;
using mfglab::test::TempDir;

namespace {

std::map<std::string, std::string> files_of(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file()) out[e.path().filename().string()] = read_text(e.path().string());
  return out;
}

nlohmann::json json_of(const fs::path& file) { return nlohmann::json::parse(read_text(file.string())); }

}  // namespace

TEST_CASE("mfglab evaluate samples a trained run again without training", "[evaluate]") {
  TempDir tmp("evaluate");
  auto file = tmp.file("exp.json", R"({"name": "ev", "seeds": [0, 1],
    "dataset": {"plugin": "toy2d", "params": {"name": "8gaussians", "train_size": 256, "test_size": 128}},
    "model": {"plugin": "sgm", "params": {"width": 16, "depth": 1, "sample_steps": 20}},
    "train": {"iterations": 10, "batch_size": 32},
    "eval": {"samples": 64, "metrics": [{"plugin": "mmd", "params": {"bandwidth": [1]}}]}})");
  REQUIRE(mfglab_cli("run " + file + " --out " + tmp.str() + " --no-plots --quiet").exit_code == 0);
  const fs::path run = tmp.path / "ev" / "seed=0";
  const auto before = files_of(run);

  SECTION("unchanged settings reproduce the run's samples byte for byte") {
    auto r = mfglab_cli("evaluate " + run.string() + "/ --no-plots");  // a trailing slash changes nothing
    INFO(r.out << r.err);
    REQUIRE(r.exit_code == 0);
    const fs::path again = tmp.path / "ev" / "seed=0@evaluated";
    CHECK(read_text((again / "samples.npy").string()) == before.at("samples.npy"));
    const auto summary = json_of(again / "summary.json");
    CHECK(summary["status"] == "ok");
    CHECK(summary["iterations"] == 10);
    CHECK(summary["evaluated_from"].get<std::string>().find("checkpoint.pt") != std::string::npos);
    CHECK(summary["metrics"]["mmd"] == json_of(run / "summary.json")["metrics"]["mmd"]);
    CHECK(!fs::exists(again / "checkpoint.pt"));  // nothing was trained
  }

  SECTION("evaluation-time settings change the samples, in a folder of their own") {
    auto r = mfglab_cli("evaluate " + run.string() + " " + (tmp.path / "ev" / "seed=1").string() +
                        " --set model.params.sample_steps=5 --set eval.samples=50");
    INFO(r.out << r.err);
    REQUIRE(r.exit_code == 0);
    for (const char* seed : {"seed=0", "seed=1"}) {
      const fs::path out = tmp.path / "ev" / (std::string(seed) + "@sample_steps=5,samples=50");
      const auto config = json_of(out / "config.json");
      CHECK(config["model"]["params"]["sample_steps"] == 5);
      CHECK(config["model"]["params"]["width"] == 16);
      CHECK(config["eval"]["samples"] == 50);
      CHECK(mfglab::engine::load_samples((out / "samples.npy").string()).size(0) == 50);
      CHECK(fs::exists(out / "samples.png"));
      CHECK(json_of(out / "summary.json")["label"] == "default@sample_steps=5,samples=50");
    }
    // The same settings again are refused, unless replaced on purpose.
    CHECK(mfglab_cli("evaluate " + run.string() + " --set model.params.sample_steps=5 --set eval.samples=50").exit_code == 2);
    CHECK(mfglab_cli("evaluate " + run.string() + " --set model.params.sample_steps=5 --set eval.samples=50 --force --no-plots")
              .exit_code == 0);
  }

  SECTION("settings that would change the trained model are refused, and nothing is written") {
    auto width = mfglab_cli("evaluate " + run.string() + " --set model.params.width=32");
    CHECK(width.exit_code == 2);
    CHECK(width.err.find("would change the trained model") != std::string::npos);
    CHECK(width.err.find("sample_steps") != std::string::npos);  // what may be changed instead
    auto train = mfglab_cli("evaluate " + run.string() + " --set train.iterations=5");
    CHECK(train.exit_code == 2);
    CHECK(train.err.find("train.iterations") != std::string::npos);
    CHECK(mfglab_cli("evaluate " + run.string() + " --set model.params.sample_steps=0").exit_code == 2);  // validated
    CHECK(mfglab_cli("evaluate " + run.string() + " --set nonsense").exit_code == 2);
    CHECK(mfglab_cli("evaluate " + tmp.str()).exit_code == 2);  // not a run
    size_t folders = 0;
    for (const auto& e : fs::directory_iterator(tmp.path / "ev")) folders += e.is_directory();
    CHECK(folders == 2);
  }
  CHECK(files_of(run) == before);  // the run itself never changes
}

TEST_CASE("mfglab evaluate refuses model settings of a model that declares none", "[evaluate]") {
  TempDir tmp("evaluate_otflow");
  auto file = tmp.file("exp.json", R"({"name": "ot", "seeds": [0],
    "dataset": {"plugin": "toy2d", "params": {"name": "8gaussians", "train_size": 256, "test_size": 128}},
    "model": {"plugin": "otflow", "params": {"width": 8, "steps": 2}},
    "train": {"iterations": 3, "batch_size": 32},
    "eval": {"samples": 32, "metrics": []}})");
  REQUIRE(mfglab_cli("run " + file + " --out " + tmp.str() + " --no-plots --quiet").exit_code == 0);
  auto r = mfglab_cli("evaluate " + (tmp.path / "ot" / "seed=0").string() + " --set model.params.eval_steps=4");
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("declares no evaluation-time parameters") != std::string::npos);
  // The sample count is everybody's.
  CHECK(mfglab_cli("evaluate " + (tmp.path / "ot" / "seed=0").string() + " --set eval.samples=16 --no-plots").exit_code == 0);
}
