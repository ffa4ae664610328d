// Experiment validation: every malformed file gets its exact one-line error (file, JSON
// path, reason); a good file expands into seeds x sweep runs; the CLI exits with code 2
// on bad input and writes nothing.
#include <filesystem>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "cli.h"
#include "experiment.h"
#include "plugin_host.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace mfglab::engine;

namespace {

// The built-in plugins plus the test regularizers needs_value and needs_hamiltonian.
const PluginHost& host() {
  static const PluginHost h({MFGLAB_TEST_PLUGIN_DIR, MFGLAB_TEST_EXTRA_PLUGIN_DIR});
  return h;
}

// A small valid experiment; each case below breaks one thing in it. Ordered, so that
// the text keeps the key order written here (sweep keys are expanded in file order).
nlohmann::ordered_json base() {
  return nlohmann::ordered_json::parse(R"({
    "name": "unit",
    "seeds": [0],
    "dataset": {"plugin": "toy2d", "params": {"name": "moons", "train_size": 100, "test_size": 50}},
    "model": {"plugin": "sgm", "params": {"width": 32, "depth": 2}},
    "train": {"iterations": 10, "batch_size": 16, "optimizer": {"type": "adam", "lr": 0.001}},
    "eval": {"samples": 100, "metrics": [{"plugin": "mmd"}]}
  })");
}

// The base experiment with an RFC 7386 merge patch applied (null deletes a key).
std::string patched(const std::string& patch) {
  auto j = base();
  j.merge_patch(nlohmann::ordered_json::parse(patch));
  return j.dump(2);
}

// The error lines for an experiment text, or a test failure when it is accepted.
std::vector<std::string> errors_of(const std::string& text) {
  try {
    auto ex = parse_experiment(text, "bad.json", host());
    FAIL("accepted, with " << ex.runs.size() << " run(s)");
  } catch (const ExperimentError& e) {
    return e.lines;
  }
  return {};
}

// Exactly one error line, in full.
// The loaded plugins of one kind as the messages list them ("a, b"), so that adding a
// built-in plugin does not change what these tests expect.
std::string available(int32_t kind) {
  std::string out;
  for (const auto& n : host().names(kind)) out += (out.empty() ? "" : ", ") + n;
  return out;
}

#define CHECK_ERROR(text, line) CHECK(errors_of(text) == std::vector<std::string>{line})

}  // namespace

TEST_CASE("the base experiment is valid", "[experiment]") {
  REQUIRE(host().problems().empty());
  auto ex = parse_experiment(base().dump(), "good.json", host());
  CHECK(ex.name == "unit");
  REQUIRE(ex.runs.size() == 1);
  CHECK(ex.runs[0].run_id == "seed=0");
  CHECK(ex.runs[0].label == "default");
  CHECK(ex.runs[0].train.iterations == 10);
  CHECK(ex.runs[0].eval.metrics.size() == 1);
}

TEST_CASE("malformed JSON and a malformed root", "[experiment]") {
  SECTION("syntax error: line and column of the offending character") {
    CHECK_ERROR("{\n  \"name\": \"x\",\n  \"model\": ,\n}",
                "bad.json:3:12: JSON syntax error: syntax error while parsing value - unexpected ','; "
                "expected '[', '{', or a literal");
  }
  SECTION("truncated file") {
    CHECK_ERROR("{\n  \"name\": \"x\"",
                "bad.json:2:14: JSON syntax error: syntax error while parsing object - unexpected end of "
                "input; expected '}'");
  }
  SECTION("root is not an object") {
    CHECK_ERROR("[1, 2]", "bad.json: /: expected a JSON object describing an experiment, got [1,2]");
  }
}

TEST_CASE("top-level keys", "[experiment]") {
  SECTION("missing name") {
    CHECK_ERROR(patched(R"({"name": null})"),
                "bad.json: /: missing key 'name' (a short identifier, used as the results folder)");
  }
  SECTION("bad names") {
    const std::string expected = "bad.json: /name: expected a name of letters, digits, '_', '-', '.' (not "
                                 "starting with '.'), got ";
    CHECK_ERROR(patched(R"({"name": "my run/1"})"), expected + "\"my run/1\"");
    CHECK_ERROR(patched(R"({"name": ".hidden"})"), expected + "\".hidden\"");
    CHECK_ERROR(patched(R"({"name": ""})"), expected + "\"\"");
    CHECK_ERROR(patched(R"({"name": 7})"), expected + "7");
  }
  SECTION("missing model and missing dataset") {
    CHECK_ERROR(patched(R"({"model": null})"), "bad.json: /: missing key 'model' (e.g. {\"plugin\": \"sgm\"})");
    CHECK_ERROR(patched(R"({"dataset": null})"),
                "bad.json: /: missing key 'dataset' (e.g. {\"plugin\": \"toy2d\"})");
  }
  SECTION("unknown key, with a suggestion") {
    CHECK_ERROR(patched(R"({"sedes": [1]})"),
                "bad.json: /sedes: unknown key (expected one of: name, description, seeds, dtype, dataset, "
                "model, hamiltonian, regularizers, train, eval, sweep) (did you mean 'seeds'?)");
  }
  SECTION("bad dtype and description") {
    CHECK_ERROR(patched(R"({"dtype": "float16"})"),
                "bad.json: /dtype: expected one of float32, float64, got \"float16\" (did you mean 'float32'?)");
    CHECK_ERROR(patched(R"({"description": ["x"]})"), "bad.json: /description: expected a string, got [\"x\"]");
  }
}

TEST_CASE("plugin references", "[experiment]") {
  SECTION("unknown plugin, with a suggestion") {
    CHECK_ERROR(patched(R"({"model": {"plugin": "sgn"}})"),
                "bad.json: /model/plugin: no model plugin named 'sgn' (did you mean 'sgm'?); available: " + available(MFGLAB_KIND_MODEL));
  }
  SECTION("plugin of the wrong kind") {
    CHECK_ERROR(patched(R"({"model": {"plugin": "mmd"}})"),
                "bad.json: /model/plugin: 'mmd' is a metric plugin, expected a model plugin (" + available(MFGLAB_KIND_MODEL) + ")");
  }
  SECTION("section is not an object, or names no plugin") {
    CHECK_ERROR(patched(R"({"model": "sgm"})"), "bad.json: /model: expected an object, got \"sgm\"");
    CHECK_ERROR(patched(R"({"dataset": {"plugin": null}})"),
                "bad.json: /dataset: missing key 'plugin' (the name of a dataset plugin: " + available(MFGLAB_KIND_DATASET) + ")");
    CHECK_ERROR(patched(R"({"dataset": {"plugin": 3}})"),
                "bad.json: /dataset/plugin: expected a plugin name (string), got 3");
    CHECK_ERROR(patched(R"({"model": {"seed": 3}})"),
                "bad.json: /model/seed: unknown key (expected one of: plugin, params)");
  }
}

TEST_CASE("plugin parameters", "[experiment]") {
  SECTION("unknown key") {
    CHECK_ERROR(patched(R"({"model": {"params": {"widht": 64}}})"),
                "bad.json: /model/params/widht: unknown parameter of plugin 'sgm' (it accepts: width, depth, "
                "activation, beta_min, beta_max, eps, sample_steps, process, T, sigma_min, sigma_max, "
                "parameterization, loss, weighting, exact_div_max_dim, sampler, snr, ode_solver, rtol, atol)");
  }
  SECTION("wrong type") {
    CHECK_ERROR(patched(R"({"model": {"params": {"width": "wide"}}})"),
                "bad.json: /model/params/width: expected an integer >= 1, got \"wide\"");
    CHECK_ERROR(patched(R"({"model": {"params": {"beta_max": true}}})"),
                "bad.json: /model/params/beta_max: expected a number > 0, got true");
    CHECK_ERROR(patched(R"({"model": {"params": 5}})"),
                "bad.json: /model/params: expected an object of parameters, got 5");
  }
  SECTION("out of range") {
    CHECK_ERROR(patched(R"({"model": {"params": {"width": 0}}})"),
                "bad.json: /model/params/width: expected an integer >= 1, got 0");
    CHECK_ERROR(patched(R"({"model": {"params": {"eps": 0}}})"),
                "bad.json: /model/params/eps: expected a number > 0, got 0");
    CHECK_ERROR(patched(R"({"dataset": {"params": {"test_size": -5}}})"),
                "bad.json: /dataset/params/test_size: expected an integer >= 1, got -5");
  }
  SECTION("bad choice") {
    CHECK_ERROR(patched(R"({"model": {"params": {"activation": "sigmoid"}}})"),
                "bad.json: /model/params/activation: expected one of silu, gelu, tanh, relu, softplus, got "
                "\"sigmoid\"");
    CHECK_ERROR(patched(R"({"dataset": {"params": {"name": "moon"}}})"),
                "bad.json: /dataset/params/name: expected one of 8gaussians, checkerboard, swissroll, circles, "
                "moons, pinwheel, 2spirals, rings, got \"moon\"");
  }
  SECTION("metric parameters") {
    CHECK_ERROR(patched(R"({"eval": {"metrics": [{"plugin": "mmd", "params": {"bandwidth": [1, -1]}}]}})"),
                "bad.json: /eval/metrics/0/params/bandwidth: expected a number or a non-empty list of "
                "numbers > 0, got [1,-1]");
    CHECK_ERROR(patched(R"({"eval": {"metrics": [{"plugin": "sliced_wasserstein", "params": {"p": 0.5}}]}})"),
                "bad.json: /eval/metrics/0/params/p: expected a number >= 1, got 0.5");
  }
  SECTION("Hamiltonian parameters") {
    CHECK_ERROR(patched(R"({"hamiltonian": {"plugin": "quadratic", "params": {"lambda": 0}}})"),
                "bad.json: /hamiltonian/params/lambda: expected a number > 0, got 0");
  }
}

TEST_CASE("seeds", "[experiment]") {
  CHECK_ERROR(patched(R"({"seeds": []})"), "bad.json: /seeds: expected a non-empty list of non-negative integers, got []");
  CHECK_ERROR(patched(R"({"seeds": 3})"), "bad.json: /seeds: expected a non-empty list of non-negative integers, got 3");
  CHECK_ERROR(patched(R"({"seeds": [0, -1]})"), "bad.json: /seeds/1: expected a non-negative integer, got -1");
  CHECK_ERROR(patched(R"({"seeds": [0, 1.5]})"), "bad.json: /seeds/1: expected a non-negative integer, got 1.5");
  CHECK_ERROR(patched(R"({"seeds": [1, 2, 1]})"), "bad.json: /seeds/2: seed 1 appears twice");
}

TEST_CASE("training settings", "[experiment]") {
  SECTION("counts") {
    CHECK_ERROR(patched(R"({"train": {"iterations": -1}})"),
                "bad.json: /train/iterations: expected an integer >= 0 and <= 1000000000, got -1");
    CHECK_ERROR(patched(R"({"train": {"iterations": 10.5}})"),
                "bad.json: /train/iterations: expected an integer >= 0 and <= 1000000000, got 10.5");
    CHECK_ERROR(patched(R"({"train": {"batch_size": 0}})"),
                "bad.json: /train/batch_size: expected an integer >= 1 and <= 100000000, got 0");
    CHECK_ERROR(patched(R"({"train": {"epochs": 3}})"),
                "bad.json: /train/epochs: unknown key (expected one of: iterations, batch_size, optimizer, "
                "schedule, grad_clip, log_every, checkpoint_every)");
  }
  SECTION("optimizer") {
    CHECK_ERROR(patched(R"({"train": {"optimizer": {"type": "adamw"}}})"),
                "bad.json: /train/optimizer/type: expected one of adam, sgd, got \"adamw\" (did you mean 'adam'?)");
    CHECK_ERROR(patched(R"({"train": {"optimizer": {"lr": 0}}})"),
                "bad.json: /train/optimizer/lr: expected a number > 0, got 0");
    CHECK_ERROR(patched(R"({"train": {"optimizer": {"lr": -0.1}}})"),
                "bad.json: /train/optimizer/lr: expected a number > 0, got -0.1");
    CHECK_ERROR(patched(R"({"train": {"optimizer": {"betas": [0.9]}}})"),
                "bad.json: /train/optimizer/betas: expected two numbers in [0, 1), got [0.9]");
    CHECK_ERROR(patched(R"({"train": {"optimizer": {"betas": [0.9, 1.0]}}})"),
                "bad.json: /train/optimizer/betas: expected two numbers in [0, 1), got [0.9,1.0]");
    CHECK_ERROR(patched(R"({"train": {"optimizer": "adam"}})"),
                "bad.json: /train/optimizer: expected an object, got \"adam\"");
  }
  SECTION("schedule") {
    CHECK_ERROR(patched(R"({"train": {"schedule": {"type": "linear"}}})"),
                "bad.json: /train/schedule/type: expected one of constant, step, exponential, cosine, got \"linear\"");
    CHECK_ERROR(patched(R"({"train": {"schedule": {"type": "step", "gamma": 1.5}}})"),
                "bad.json: /train/schedule/gamma: expected a number > 0 and <= 1, got 1.5");
    CHECK_ERROR(patched(R"({"train": {"schedule": {"type": "step", "step_size": 0}}})"),
                "bad.json: /train/schedule/step_size: expected an integer >= 1 and <= 1000000000, got 0");
  }
}

TEST_CASE("evaluation settings", "[experiment]") {
  CHECK_ERROR(patched(R"({"eval": {"samples": 0}})"),
              "bad.json: /eval/samples: expected an integer >= 1 and <= 100000000, got 0");
  CHECK_ERROR(patched(R"({"eval": {"metrics": {"plugin": "mmd"}}})"),
              "bad.json: /eval/metrics: expected a list of {\"plugin\", \"params\"}, got {\"plugin\":\"mmd\"}");
  CHECK_ERROR(patched(R"({"eval": {"metrics": [{"plugin": "mmd"}, {"plugin": "mmd", "params": {"bandwidth": 2}}]}})"),
              "bad.json: /eval/metrics/1: metric 'mmd' appears twice: give one a distinct \"label\"");
  CHECK_ERROR(patched(R"({"eval": {"metrics": [{"plugin": "mmd", "label": ""}]}})"),
              "bad.json: /eval/metrics/0/label: expected a non-empty string, got \"\"");
  CHECK_ERROR(patched(R"({"eval": {"metrics": [{"plugin": "sgm"}]}})"),
              "bad.json: /eval/metrics/0/plugin: 'sgm' is a model plugin, expected a metric plugin (" + available(MFGLAB_KIND_METRIC) + ")");

  // The same metric twice is fine once the two are told apart by a label.
  auto ok = parse_experiment(
      patched(R"({"eval": {"metrics": [{"plugin": "mmd"}, {"plugin": "mmd", "label": "mmd_wide", "params": {"bandwidth": 2}}]}})"),
      "good.json", host());
  REQUIRE(ok.runs.size() == 1);
  REQUIRE(ok.runs[0].eval.metrics.size() == 2);
  CHECK(ok.runs[0].eval.metrics[1].label == "mmd_wide");
}

TEST_CASE("regularizers and what they need", "[experiment]") {
  SECTION("a model field the model lacks") {
    CHECK_ERROR(patched(R"({"model": {"plugin": "cnf", "params": null},
                            "regularizers": [{"plugin": "needs_value", "weight": 0.1}]})"),
                "bad.json: /regularizers/0/plugin: regularizer 'needs_value' needs the model's 'value' field, "
                "which model 'cnf' does not provide (it provides: velocity, log_prob)");
  }
  SECTION("a Hamiltonian the experiment lacks") {
    CHECK_ERROR(patched(R"({"regularizers": [{"plugin": "needs_hamiltonian"}]})"),
                "bad.json: /regularizers/0/plugin: regularizer 'needs_hamiltonian' needs a Hamiltonian: add "
                "\"hamiltonian\": {\"plugin\": ...} (" + available(MFGLAB_KIND_HAMILTONIAN) + ")");
    auto ok = parse_experiment(
        patched(R"({"hamiltonian": {"plugin": "quadratic"}, "regularizers": [{"plugin": "needs_hamiltonian"}]})"),
        "good.json", host());
    REQUIRE(ok.runs.size() == 1);
    CHECK(ok.runs[0].hamiltonian.has_value());
    CHECK(ok.runs[0].regularizers.size() == 1);
  }
  SECTION("bad weight, bad list") {
    CHECK_ERROR(patched(R"({"hamiltonian": {"plugin": "quadratic"}, "regularizers": [{"plugin": "needs_hamiltonian", "weight": -1}]})"),
                "bad.json: /regularizers/0/weight: expected a number >= 0, got -1");
    CHECK_ERROR(patched(R"({"regularizers": {"plugin": "needs_value"}})"),
                "bad.json: /regularizers: expected a list of {\"plugin\", \"weight\", \"params\"}, got "
                "{\"plugin\":\"needs_value\"}");
  }
}

TEST_CASE("sweeps", "[experiment]") {
  SECTION("not an object") {
    CHECK_ERROR(patched(R"({"sweep": [1, 2]})"),
                "bad.json: /sweep: expected an object mapping \"section.key\" paths to lists of values, got [1,2]");
  }
  SECTION("a section that cannot be swept") {
    const std::string why =
        "': a sweep path starts with one of dataset, model, hamiltonian, regularizers, train, eval, dtype";
    CHECK_ERROR(patched(R"({"sweep": {"seeds": [[1], [2]]}})"), "bad.json: /sweep/seeds: cannot sweep 'seeds" + why);
    CHECK_ERROR(patched(R"({"sweep": {"optimizer.lr": [0.1]}})"),
                "bad.json: /sweep/optimizer.lr: cannot sweep 'optimizer.lr" + why);
  }
  SECTION("values are not a non-empty list") {
    CHECK_ERROR(patched(R"({"sweep": {"model.params.width": 32}})"),
                "bad.json: /sweep/model.params.width: expected a non-empty list of values, got 32");
    CHECK_ERROR(patched(R"({"sweep": {"model.params.width": []}})"),
                "bad.json: /sweep/model.params.width: expected a non-empty list of values, got []");
  }
  SECTION("a bad value inside a sweep points at the sweep entry") {
    // Reported once, although two runs (depth 2 and 3) contain the bad width.
    CHECK_ERROR(patched(R"({"sweep": {"model.params.width": [32, -1], "model.params.depth": [2, 3]}})"),
                "bad.json: /sweep/model.params.width/1: expected an integer >= 1, got -1");
    CHECK_ERROR(patched(R"({"sweep": {"model.plugin": ["sgm", "mmd"]}})"),
                "bad.json: /sweep/model.plugin/1: 'mmd' is a metric plugin, expected a model plugin (" + available(MFGLAB_KIND_MODEL) + ")");
  }
  SECTION("a path that does not lead into the experiment") {
    CHECK_ERROR(patched(R"({"sweep": {"model.plugin.width": [1]}})"),
                "bad.json: /sweep/model.plugin.width: path 'model.plugin.width' does not lead into the experiment");
  }
}

TEST_CASE("several errors are all reported, one line each", "[experiment]") {
  auto lines = errors_of(patched(R"({"model": {"params": {"width": 0, "depth": "x"}}, "train": {"batch_size": 0}})"));
  const std::vector<std::string> expected = {
      "bad.json: /model/params/width: expected an integer >= 1, got 0",
      "bad.json: /model/params/depth: expected an integer >= 1, got \"x\"",
      "bad.json: /train/batch_size: expected an integer >= 1 and <= 100000000, got 0"};
  CHECK(lines == expected);
}

TEST_CASE("a 2x2 sweep with 3 seeds expands into 12 runs", "[experiment]") {
  auto ex = parse_experiment(
      patched(R"({"seeds": [0, 1, 2], "sweep": {"model.params.width": [32, 64], "model.params.depth": [2, 3]}})"),
      "good.json", host());
  // Sweep keys in file order, the last varying fastest, then the seeds.
  std::vector<std::string> ids;
  for (const auto& r : ex.runs) ids.push_back(r.run_id);
  const std::vector<std::string> expected = {
      "width=32,depth=2,seed=0", "width=32,depth=2,seed=1", "width=32,depth=2,seed=2",
      "width=32,depth=3,seed=0", "width=32,depth=3,seed=1", "width=32,depth=3,seed=2",
      "width=64,depth=2,seed=0", "width=64,depth=2,seed=1", "width=64,depth=2,seed=2",
      "width=64,depth=3,seed=0", "width=64,depth=3,seed=1", "width=64,depth=3,seed=2"};
  CHECK(ids == expected);
  REQUIRE(ex.runs.size() == 12);
  const auto& last = ex.runs.back();
  CHECK(last.label == "width=64,depth=3");
  CHECK(last.seed == 2);
  const json params = {{"width", 64}, {"depth", 3}};
  CHECK(last.model.params == params);
  CHECK(last.config.at("seed") == 2);
  CHECK(last.config.at("run_id") == "width=64,depth=3,seed=2");
  CHECK_FALSE(last.config.contains("sweep"));
  CHECK_FALSE(last.config.contains("seeds"));
}

// ---- the command line --------------------------------------------------------------

TEST_CASE("the CLI refuses a bad file with exit code 2, the error on stderr, and writes nothing",
          "[experiment][cli]") {
  using mfglab::test::mfglab_cli;
  mfglab::test::TempDir tmp("test_experiment");
  const std::string bad = tmp.file("bad.json", patched(R"({"model": {"params": {"width": 0}}})"));
  const std::string expected = "error: " + bad + ": /model/params/width: expected an integer >= 1, got 0\n";

  SECTION("validate") {
    auto r = mfglab_cli("validate '" + bad + "'");
    CHECK(r.exit_code == 2);
    CHECK(r.err == expected);
    CHECK(r.out.empty());
  }
  SECTION("run") {
    const fs::path results = tmp.path / "results";
    fs::create_directories(results);
    auto r = mfglab_cli("run --quiet --out '" + results.string() + "' '" + bad + "'");
    CHECK(r.exit_code == 2);
    CHECK(r.err == expected);
    CHECK(fs::is_empty(results));
  }
  SECTION("validate accepts the good file") {
    const std::string good = tmp.file("good.json", patched(R"({"seeds": [0, 1]})"));
    auto r = mfglab_cli("validate '" + good + "'");
    CHECK(r.exit_code == 0);
    CHECK(r.out == good + ": valid experiment 'unit' with 2 run(s)\n");
    CHECK(r.err.empty());
  }
}
