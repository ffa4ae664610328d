// Experiment validation: every malformed file gets its exact one-line error (file, JSON
// path, reason); a good file expands into seeds x sweep runs; the CLI exits with code 2
// on bad input and writes nothing.
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "cli.h"
#include "experiment.h"
#include "plugin_host.h"
#include "plugin_fixture.h"
#include "running/assemble.h"
#include "running/checked_model.h"

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

// The folders searched and how to add one, as an unknown plugin's message ends.
std::string searched() { return " (" + host().search_hint() + ")"; }

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
                "model, hamiltonian, regularizers, train, eval, sweep, variants) (did you mean 'seeds'?)");
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
                "bad.json: /model/plugin: no model plugin named 'sgn' (did you mean 'sgm'?); available: " + available(MFGLAB_KIND_MODEL) +
                    searched());
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
                "schedule, grad_clip, log_every, checkpoint_every, time_limit, memory_limit, data_parallel)");
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
                "which model 'cnf' does not provide (it provides: velocity, log_prob, collocation)");
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

// ---- run ids -----------------------------------------------------------------------

namespace {

// FNV-1a (64 bits) as hexadecimal, written out here to pin the hashes run ids carry.
std::string fnv_hex(const std::string& bytes, size_t digits) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return std::string(buf).substr(0, digits);
}

std::vector<std::string> run_ids(const Experiment& ex) {
  std::vector<std::string> ids;
  for (const auto& r : ex.runs) ids.push_back(r.run_id);
  return ids;
}

// The base experiment with a sweep (keys in the order given).
std::string with_sweep(const std::vector<std::pair<std::string, nlohmann::ordered_json>>& sweep,
                       const std::string& patch = "{}") {
  auto j = base();
  j.merge_patch(nlohmann::ordered_json::parse(patch));
  j["sweep"] = nlohmann::ordered_json::object();
  for (const auto& [key, values] : sweep) j["sweep"][key] = values;
  return j.dump();
}

}  // namespace

TEST_CASE("the hash in run ids is FNV-1a", "[experiment][run_id]") {
  CHECK(fnv1a64("") == 0xcbf29ce484222325ull);
  CHECK(fnv1a64("a") == 0xaf63dc4c8601ec8cull);
  CHECK(fnv_hex("a", 16) == "af63dc4c8601ec8c");
}

TEST_CASE("a value repeated within one sweep list is refused", "[experiment][run_id]") {
  CHECK_ERROR(patched(R"({"sweep": {"train.optimizer.lr": [0.001, 0.001]}})"),
              "bad.json: /sweep/train.optimizer.lr/1: value 0.001 appears twice (first at index 0)");
  // JSON equality: 2 and 2.0 are the same number.
  CHECK_ERROR(patched(R"({"sweep": {"model.params.width": [2, 3, 2.0]}})"),
              "bad.json: /sweep/model.params.width/2: value 2.0 appears twice (first at index 0)");
  CHECK_ERROR(patched(R"({"sweep": {"eval.metrics": [[{"plugin": "mmd"}], [{"plugin": "sliced_wasserstein"}],
                                                     [{"plugin": "mmd"}]]}})"),
              "bad.json: /sweep/eval.metrics/2: value [{\"plugin\":\"mmd\"}] appears twice (first at index 0)");
  // Every repetition is reported.
  auto lines = errors_of(patched(R"({"sweep": {"model.params.width": [4, 4, 5, 4], "model.params.depth": [1, 1]}})"));
  const std::vector<std::string> expected = {
      "bad.json: /sweep/model.params.width/1: value 4 appears twice (first at index 0)",
      "bad.json: /sweep/model.params.width/3: value 4 appears twice (first at index 0)",
      "bad.json: /sweep/model.params.depth/1: value 1 appears twice (first at index 0)"};
  CHECK(lines == expected);
}

TEST_CASE("values that print alike get a hash of their JSON in the label", "[experiment][run_id]") {
  // "a/b" prints as a_b in a folder name, like "a_b" itself.
  auto ex = parse_experiment(with_sweep({{"eval.metrics.0.label", {"a/b", "a_b", "c"}}}), "good.json", host());
  const std::vector<std::string> expected = {"label=a_b~" + fnv_hex("\"a/b\"", 8) + ",seed=0",
                                             "label=a_b~" + fnv_hex("\"a_b\"", 8) + ",seed=0", "label=c,seed=0"};
  CHECK(run_ids(ex) == expected);
  CHECK(expected[0] == "label=a_b~91effcb6,seed=0");  // stable across builds
  REQUIRE(ex.runs.size() == 3);
  CHECK(ex.runs[0].label == "label=a_b~91effcb6");
  CHECK(ex.runs[0].eval.metrics[0].label == "a/b");
  CHECK(ex.runs[1].eval.metrics[0].label == "a_b");

  SECTION("a value holding ',' or '=' that makes two configurations read alike") {
    auto ex2 = parse_experiment(with_sweep({{"eval.metrics.0.label", {"1,description=2", "1"}},
                                            {"description", {"3", "2,description=3"}}}),
                                "good.json", host());
    const std::vector<std::string> ids = {
        "label=1,description=2~" + fnv_hex("\"1,description=2\"", 8) + ",description=3,seed=0",
        "label=1,description=2,description=2,description=3,seed=0",
        "label=1,description=3,seed=0",
        "label=1,description=2,description=3~" + fnv_hex("\"2,description=3\"", 8) + ",seed=0"};
    CHECK(run_ids(ex2) == ids);
  }
  SECTION("control characters and separators of a value do not reach the folder name") {
    auto ex2 = parse_experiment(with_sweep({{"eval.metrics.0.label", {"a\tb", "c d"}}}), "good.json", host());
    CHECK(run_ids(ex2) == std::vector<std::string>{"label=a_b,seed=0", "label=c_d,seed=0"});
  }
}

TEST_CASE("two configurations that would still share a run id are refused", "[experiment][run_id]") {
  // Built so that the hashed label of the first configuration reads exactly like a
  // third value of the second key.
  const std::string h = fnv_hex("\"1,description=2\"", 8);
  CHECK_ERROR(with_sweep({{"eval.metrics.0.label", {"1,description=2", "1"}},
                          {"description", {"3", "2,description=3", "2~" + h + ",description=3"}}}),
              "bad.json: /sweep: two configurations would share the run id 'label=1,description=2~" + h +
                  ",description=3,seed=0': (/sweep/eval.metrics.0.label/0, /sweep/description/0) and "
                  "(/sweep/eval.metrics.0.label/1, /sweep/description/2)");
}

TEST_CASE("run ids longer than 200 bytes are shortened and stay unique", "[experiment][run_id]") {
  const std::string a = std::string(300, 'x') + "1", b = std::string(300, 'x') + "2";
  auto ex = parse_experiment(with_sweep({{"eval.metrics.0.label", {a, b, "short"}}}, R"({"seeds": [0, 17]})"),
                             "good.json", host());
  REQUIRE(ex.runs.size() == 6);
  const std::string label_a = "label=" + a;
  const std::string id_a0 = "label=" + std::string(170, 'x') + "~" + fnv_hex(label_a, 16) + ",seed=0";
  CHECK(ex.runs[0].run_id == id_a0);
  CHECK(ex.runs[0].run_id.size() == 200);
  CHECK(ex.runs[0].label == label_a);  // the label keeps the whole value
  CHECK(ex.runs[1].run_id == "label=" + std::string(169, 'x') + "~" + fnv_hex(label_a, 16) + ",seed=17");
  CHECK(ex.runs[2].run_id.size() == 200);
  CHECK(ex.runs[2].run_id != ex.runs[0].run_id);
  CHECK(ex.runs[4].run_id == "label=short,seed=0");
  CHECK(ex.runs[0].config.at("run_id") == ex.runs[0].run_id);

  SECTION("many sweep keys") {
    // 40 regularizer weights, each swept over one value.
    auto j = base();
    j["hamiltonian"] = {{"plugin", "quadratic"}};
    j["regularizers"] = nlohmann::ordered_json::array();
    for (int i = 0; i < 40; ++i) {
      j["regularizers"].push_back({{"plugin", "needs_hamiltonian"}});
      j["sweep"][fmt::format("regularizers.{}.weight", i)] = nlohmann::ordered_json::array({0.5});
    }
    auto ex2 = parse_experiment(j.dump(), "good.json", host());
    REQUIRE(ex2.runs.size() == 1);
    const std::string& id = ex2.runs[0].run_id;
    CHECK(id.size() <= 200);
    CHECK(id.rfind("regularizers.0.weight=0.5,regularizers.1.weight=0.5,", 0) == 0);
    CHECK(id.substr(id.size() - 7) == ",seed=0");
    CHECK(id.find("~" + fnv_hex(ex2.runs[0].label, 16) + ",seed=0") != std::string::npos);
  }
}

TEST_CASE("a sweep path into a list names an existing element", "[experiment][run_id]") {
  CHECK_ERROR(patched(R"({"sweep": {"eval.metrics.3.label": ["x"]}})"),
              "bad.json: /sweep/eval.metrics.3.label: path 'eval.metrics.3.label' does not lead into the experiment");
  CHECK_ERROR(patched(R"({"sweep": {"eval.metrics.-.label": ["x"]}})"),
              "bad.json: /sweep/eval.metrics.-.label: path 'eval.metrics.-.label' does not lead into the experiment");
  std::string deep = "model.params";
  for (int i = 0; i < 100; ++i) deep += ".a";
  CHECK_ERROR(patched(R"({"sweep": {")" + deep + R"(": [1]}})"),
              "bad.json: /sweep/" + deep + ": expected a path of at most 64 parts, got 102");
}

// ---- names -------------------------------------------------------------------------

TEST_CASE("the experiment name must be usable as a folder name", "[experiment][names]") {
  const std::string chars = "bad.json: /name: expected a name of letters, digits, '_', '-', '.' (not "
                            "starting with '.'), got ";
  CHECK_ERROR(patched(R"({"name": "."})"), chars + "\".\"");
  CHECK_ERROR(patched(R"({"name": ".."})"), chars + "\"..\"");
  CHECK_ERROR(patched(R"({"name": "a\u0000b"})"), chars + "\"a\\u0000b\"");
  CHECK_ERROR(patched(R"({"name": "a\u0001b"})"), chars + "\"a\\u0001b\"");
  CHECK_ERROR(patched(R"({"name": "a\\b"})"), chars + "\"a\\\\b\"");
  CHECK_ERROR(patched(R"({"name": "x/.."})"), chars + "\"x/..\"");
  CHECK_ERROR(patched(R"({"name": ")" + std::string(201, 'n') + R"("})"),
              "bad.json: /name: expected a name of at most 200 bytes, got 201 bytes");
  CHECK_ERROR(patched(R"({"name": ")" + std::string(50000, 'n') + R"("})"),
              "bad.json: /name: expected a name of at most 200 bytes, got 50000 bytes");
  auto ok = parse_experiment(patched(R"({"name": ")" + std::string(200, 'n') + R"("})"), "good.json", host());
  CHECK(ok.name == std::string(200, 'n'));
  CHECK(parse_experiment(patched(R"({"name": "a.b-c_9"})"), "good.json", host()).name == "a.b-c_9");
}

TEST_CASE("very long words give errors, without suggestions", "[experiment][names]") {
  const std::string longname(50000, 's');
  CHECK_ERROR(patched(R"({"model": {"plugin": ")" + longname + R"("}})"),
              "bad.json: /model/plugin: no model plugin named '" + std::string(61, 's') + "...'; available: " +
                  available(MFGLAB_KIND_MODEL) + searched());
  CHECK_ERROR(patched(R"({"dataset": {"plugin": ")" + longname + R"("}})"),
              "bad.json: /dataset/plugin: no dataset plugin named '" + std::string(61, 's') + "...'; available: " +
                  available(MFGLAB_KIND_DATASET) + searched());
  CHECK_ERROR(patched(R"({"dtype": ")" + longname + R"("})"),
              "bad.json: /dtype: expected one of float32, float64, got \"" + std::string(36, 's') + "...");
  CHECK_ERROR(patched(R"({")" + longname + R"(": 1})"),
              "bad.json: /" + longname + ": unknown key (expected one of: name, description, seeds, dtype, dataset, "
              "model, hamiltonian, regularizers, train, eval, sweep, variants)");
  CHECK(did_you_mean(std::string(65, 'a'), {std::string(65, 'a')}).empty());
  CHECK(did_you_mean("sgn", {"sgm", std::string(100000, 'x')}) == " (did you mean 'sgm'?)");
}

// ---- training limits ---------------------------------------------------------------

TEST_CASE("time_limit, memory_limit and data_parallel", "[experiment][train]") {
  auto train_of = [](const std::string& train) {
    auto ex = parse_experiment(patched(R"({"train": )" + train + "}"), "good.json", host());
    REQUIRE(ex.runs.size() == 1);
    return ex.runs[0].train;
  };
  SECTION("defaults") {
    auto t = train_of("{}");
    CHECK(t.time_limit == 0);
    CHECK(t.memory_limit == 0);
    CHECK_FALSE(t.data_parallel);
  }
  SECTION("time_limit") {
    CHECK(train_of(R"({"time_limit": 3600})").time_limit == 3600.0);
    CHECK(train_of(R"({"time_limit": 0.5})").time_limit == 0.5);
    const std::string e = "bad.json: /train/time_limit: expected a number of seconds > 0, got ";
    CHECK_ERROR(patched(R"({"train": {"time_limit": 0}})"), e + "0");
    CHECK_ERROR(patched(R"({"train": {"time_limit": -5}})"), e + "-5");
    CHECK_ERROR(patched(R"({"train": {"time_limit": "1h"}})"), e + "\"1h\"");
    CHECK_ERROR(patched(R"({"train": {"time_limit": [1]}})"), e + "[1]");
    CHECK_ERROR(patched(R"({"train": {"time_limit": true}})"), e + "true");
  }
  SECTION("memory_limit") {
    CHECK(train_of(R"({"memory_limit": 1})").memory_limit == 1);
    CHECK(train_of(R"({"memory_limit": 1073741824})").memory_limit == 1073741824);
    CHECK(train_of(R"({"memory_limit": "512M"})").memory_limit == 512ll << 20);
    CHECK(train_of(R"({"memory_limit": "4G"})").memory_limit == 4ll << 30);
    CHECK(train_of(R"({"memory_limit": "1.5G"})").memory_limit == 1610612736);
    CHECK(train_of(R"({"memory_limit": "800K"})").memory_limit == 800 * 1024);
    CHECK(train_of(R"({"memory_limit": "2T"})").memory_limit == 2ll << 40);
    CHECK(train_of(R"({"memory_limit": "64m"})").memory_limit == 64ll << 20);
    const std::string e = "bad.json: /train/memory_limit: expected a number of bytes >= 1 or a size like \"512M\", "
                          "\"4G\", \"1.5G\" (K, M, G, T: powers of 1024), got ";
    for (const char* bad : {"0", "-1", "1.5", "1e3", "\"\"", "\"G\"", "\"12\"", "\"12X\"", "\"1.G\"", "\".5G\"",
                            "\"1GB\"", "\" 1G\"", "\"0K\"", "\"0.0001K\"", "\"9000000T\"", "true",
                            "18446744073709551615"}) {
      INFO(bad);
      CHECK_ERROR(patched(std::string(R"({"train": {"memory_limit": )") + bad + "}}"),
                  e + nlohmann::json::parse(bad).dump());
    }
  }
  SECTION("data_parallel") {
    CHECK(train_of(R"({"data_parallel": true})").data_parallel);
    CHECK_FALSE(train_of(R"({"data_parallel": false})").data_parallel);
    CHECK_ERROR(patched(R"({"train": {"data_parallel": 1}})"), "bad.json: /train/data_parallel: expected true or false, got 1");
    CHECK_ERROR(patched(R"({"train": {"data_parallel": "yes"}})"),
                "bad.json: /train/data_parallel: expected true or false, got \"yes\"");
  }
  SECTION("swept") {
    auto ex = parse_experiment(patched(R"({"sweep": {"train.memory_limit": ["1G", 1024]}})"), "good.json", host());
    REQUIRE(ex.runs.size() == 2);
    CHECK(ex.runs[0].train.memory_limit == 1ll << 30);
    CHECK(ex.runs[1].train.memory_limit == 1024);
    CHECK_ERROR(patched(R"({"sweep": {"train.time_limit": [10, 0]}})"),
                "bad.json: /sweep/train.time_limit/1: expected a number of seconds > 0, got 0");
  }
}

// ---- pathological input ------------------------------------------------------------

TEST_CASE("deep nesting is refused before parsing, with its position", "[experiment][pathological]") {
  const size_t n = 100000;
  CHECK_ERROR("{\"description\": " + std::string(n, '[') + std::string(n, ']') + "}",
              "bad.json:1:272: JSON nested more than 256 levels deep");
  CHECK_ERROR("{\n  \"x\": " + std::string(n, '{') + std::string(n, '}') + "}",
              "bad.json:2:263: JSON nested more than 256 levels deep");
  // An unterminated file nests as deep.
  CHECK_ERROR(std::string(n, '['), "bad.json:1:257: JSON nested more than 256 levels deep");
  // 256 levels are read (and the value is then refused for what it is).
  auto j = base();
  j["description"] = nlohmann::ordered_json::parse(std::string(255, '[') + std::string(255, ']'));
  CHECK_ERROR(j.dump(), "bad.json: /description: expected a string, got " + std::string(37, '[') + "...");
  // Brackets inside strings do not count.
  j["description"] = std::string(1000, '[') + "\\\"{{{";
  CHECK(parse_experiment(j.dump(), "good.json", host()).runs.size() == 1);
}

TEST_CASE("a number out of range names its position", "[experiment][pathological]") {
  CHECK_ERROR("{\n  \"name\": \"unit\",\n  \"train\": {\"iterations\": 1e309}\n}", "bad.json:3:27: number out of range");
  CHECK_ERROR("{\"train\": {\"grad_clip\": -2.5e400, \"x\": 1}}", "bad.json:1:25: number out of range");
  CHECK_ERROR("1e999", "bad.json:1:1: number out of range");
}

TEST_CASE("a key repeated in one object is refused", "[experiment][pathological]") {
  const std::string text = base().dump();
  auto replaced = [&](const std::string& from, const std::string& to) {
    std::string t = text;
    auto at = t.find(from);
    REQUIRE(at != std::string::npos);
    return t.replace(at, from.size(), to);
  };
  CHECK_ERROR(replaced("\"name\":\"unit\"", "\"name\":\"unit\",\"name\":\"other\""), "bad.json: /: key 'name' appears twice");
  CHECK_ERROR(replaced("\"iterations\":10", "\"iterations\":10,\"iterations\":20"),
              "bad.json: /train: key 'iterations' appears twice");
  CHECK_ERROR(replaced("{\"plugin\":\"mmd\"}", "{\"plugin\":\"mmd\",\"plugin\":\"sliced_wasserstein\"}"),
              "bad.json: /eval/metrics/0: key 'plugin' appears twice");
  CHECK_ERROR(replaced("\"width\":32", "\"a/b~c\":{\"k\":1,\"k\":2},\"width\":32"),
              "bad.json: /model/params/a~1b~0c: key 'k' appears twice");
  CHECK_ERROR(replaced("\"name\":\"unit\"", "\"name\":\"unit\",\"regularizers\":[[1,{}],2,{\"a\":1,\"a\":2}]"),
              "bad.json: /regularizers/2: key 'a' appears twice");
  auto lines = errors_of(replaced("\"name\":\"unit\"", "\"name\":\"unit\",\"seeds\":[1],\"sweep\":{\"model.params.width\":[1],"
                                                       "\"model.params.width\":[2]},\"seeds\":[2]"));
  const std::vector<std::string> expected = {"bad.json: /sweep: key 'model.params.width' appears twice",
                                             "bad.json: /: key 'seeds' appears twice"};
  CHECK(lines == expected);
}

TEST_CASE("the number of runs is bounded, without wrapping around", "[experiment][pathological]") {
  const std::string why = "expected at most 100000 runs (the sizes of the sweep lists multiplied together, times the "
                          "number of seeds), got ";
  std::vector<std::pair<std::string, nlohmann::ordered_json>> sweep;
  for (int i = 0; i < 64; ++i) sweep.push_back({fmt::format("model.params.k{}", i), {1, 2}});
  CHECK_ERROR(with_sweep(sweep), "bad.json: /sweep: " + why + "more than 18446744073709551615");
  sweep.resize(17);  // 2^17 = 131072
  CHECK_ERROR(with_sweep(sweep), "bad.json: /sweep: " + why + "131072");

  nlohmann::ordered_json many = nlohmann::ordered_json::array();
  for (int i = 0; i < 317; ++i) many.push_back(i + 1);
  CHECK_ERROR(with_sweep({{"model.params.width", many}, {"model.params.depth", many}}), "bad.json: /sweep: " + why + "100489");
  nlohmann::ordered_json seeds = nlohmann::ordered_json::array();
  for (int i = 0; i < 100001; ++i) seeds.push_back(i);
  auto j = base();
  j["seeds"] = seeds;
  CHECK_ERROR(j.dump(), "bad.json: /seeds: " + why + "100001");
}

TEST_CASE("100000 runs validate in a few seconds", "[experiment][pathological][perf]") {
  using clock = std::chrono::steady_clock;
  auto seconds_for = [](const std::string& text, size_t expected_runs) {
    const auto start = clock::now();
    auto ex = parse_experiment(text, "big.json", host());
    const double s = std::chrono::duration<double>(clock::now() - start).count();
    CHECK(ex.runs.size() == expected_runs);
    return s;
  };
  SECTION("100000 seeds") {
    auto j = base();
    j["seeds"] = nlohmann::ordered_json::array();
    for (int i = 0; i < 100000; ++i) j["seeds"].push_back(i);
    const double s = seconds_for(j.dump(), 100000);
    INFO(s << " s");
    CHECK(s < 30);
  }
  SECTION("10 seeds x 10000 values") {
    auto j = base();
    j["seeds"] = nlohmann::ordered_json::array();
    for (int i = 0; i < 10; ++i) j["seeds"].push_back(i);
    for (int i = 0; i < 10000; ++i) j["sweep"]["model.params.width"].push_back(i + 1);
    const double s = seconds_for(j.dump(), 100000);
    INFO(s << " s");
    CHECK(s < 30);
  }
  SECTION("10 seeds x 10000 variants") {
    auto j = base();
    j["seeds"] = nlohmann::ordered_json::array();
    for (int i = 0; i < 10; ++i) j["seeds"].push_back(i);
    for (int i = 0; i < 10000; ++i)
      j["variants"][fmt::format("v{}", i)] = {{"model", {{"plugin", "sgm"}, {"params", {{"width", i + 1}}}}}};
    const double s = seconds_for(j.dump(), 100000);
    INFO(s << " s");
    CHECK(s < 30);
  }
  SECTION("10000 variants with the same error in the experiment's sections: one line") {
    auto j = base();
    j["train"]["batch_size"] = 0;
    for (int i = 0; i < 10000; ++i) j["variants"][fmt::format("v{}", i)] = {{"train", {{"iterations", i + 1}}}};
    const auto start = clock::now();
    CHECK(errors_of(j.dump()) ==
          std::vector<std::string>{"bad.json: /train/batch_size: expected an integer >= 1 and <= 100000000, got 0"});
    CHECK(std::chrono::duration<double>(clock::now() - start).count() < 30);
  }
}

// ---- the resolved configuration ----------------------------------------------------

TEST_CASE("config holds every resolved engine setting", "[experiment][config]") {
  auto ex = parse_experiment(base().dump(), "good.json", host());
  REQUIRE(ex.runs.size() == 1);
  const json& c = ex.runs[0].config;
  CHECK(c.at("dtype") == "float32");
  const json train = json::parse(R"({
    "iterations": 10, "batch_size": 16,
    "optimizer": {"type": "adam", "lr": 0.001, "betas": [0.9, 0.999], "momentum": 0.0, "weight_decay": 0.0},
    "schedule": {"type": "constant"},
    "grad_clip": 0.0, "log_every": 100, "checkpoint_every": 1000, "data_parallel": false})");
  CHECK(c.at("train") == train);
  CHECK(c.at("eval") == json::parse(R"({"samples": 100, "every": 0, "metrics": [{"plugin": "mmd"}], "calibration_seed": 0})"));
  CHECK(c.at("seed") == 0);
  CHECK(c.at("label") == "default");

  SECTION("schedules carry their own parameters; limits appear when given") {
    auto ex2 = parse_experiment(patched(R"({"dtype": "float64",
        "train": {"schedule": {"type": "step", "gamma": 0.25}, "time_limit": 90, "memory_limit": "1.5G",
                  "data_parallel": true, "optimizer": {"type": "sgd", "momentum": 0.9}},
        "eval": {"every": 5},
        "hamiltonian": {"plugin": "quadratic"}, "regularizers": [{"plugin": "needs_hamiltonian"}]})"),
                               "good.json", host());
    const json& c2 = ex2.runs.at(0).config;
    CHECK(c2.at("dtype") == "float64");
    CHECK(c2.at("train").at("schedule") == json::parse(R"({"type": "step", "step_size": 100, "gamma": 0.25})"));
    CHECK(c2.at("train").at("time_limit") == 90.0);
    CHECK(c2.at("train").at("memory_limit") == 1610612736);
    CHECK(c2.at("train").at("data_parallel") == true);
    CHECK(c2.at("train").at("optimizer") ==
          json::parse(R"({"type": "sgd", "lr": 0.001, "betas": [0.9, 0.999], "momentum": 0.9, "weight_decay": 0.0})"));
    CHECK(c2.at("eval") ==
          json::parse(R"({"samples": 100, "every": 5, "metrics": [{"plugin": "mmd"}], "calibration_seed": 0})"));
    CHECK(c2.at("regularizers").at(0).at("weight") == 1.0);
    auto ex3 = parse_experiment(patched(R"({"train": {"schedule": {"type": "exponential"}}})"), "good.json", host());
    CHECK(ex3.runs.at(0).config.at("train").at("schedule") == json::parse(R"({"type": "exponential", "gamma": 0.5})"));
    auto ex4 = parse_experiment(patched(R"({"train": {"schedule": {"type": "cosine", "min_lr": 1e-5}}})"), "good.json", host());
    CHECK(ex4.runs.at(0).config.at("train").at("schedule") == json::parse(R"({"type": "cosine", "min_lr": 1e-5})"));

    SECTION("a config is itself a valid experiment, resolving to the same config") {
      json again = c2;
      for (const char* k : {"seed", "run_id", "label"}) again.erase(k);
      auto ex5 = parse_experiment(again.dump(), "again.json", host());
      REQUIRE(ex5.runs.size() == 1);
      CHECK(ex5.runs[0].config == c2);
      CHECK(ex5.runs[0].train.memory_limit == 1610612736);
      CHECK(ex5.runs[0].train.momentum == 0.9);
    }
  }
  SECTION("swept settings appear with their values") {
    auto ex2 = parse_experiment(patched(R"({"sweep": {"train.optimizer.lr": [0.1, 0.2], "eval.samples": [7]}})"),
                                "good.json", host());
    REQUIRE(ex2.runs.size() == 2);
    CHECK(ex2.runs[1].config.at("train").at("optimizer").at("lr") == 0.2);
    CHECK(ex2.runs[1].config.at("train").at("batch_size") == 16);
    CHECK(ex2.runs[1].config.at("eval").at("samples") == 7);
  }
}

// ---- variants ------------------------------------------------------------------------

namespace {

// The base experiment with a merge patch applied and "variants" set (in the order written).
std::string with_variants(const std::string& variants, const std::string& patch = "{}") {
  auto j = base();
  j.merge_patch(nlohmann::ordered_json::parse(patch));
  j["variants"] = nlohmann::ordered_json::parse(variants);
  return j.dump(2);
}

const std::string kVariantSections = "dataset, model, hamiltonian, regularizers, train, eval, dtype";

}  // namespace

TEST_CASE("variants cross with seeds and the sweep", "[experiment][variants]") {
  const std::string two = R"({"small": {"model": {"plugin": "sgm", "params": {"width": 16}}},
                              "flow": {"model": {"plugin": "cnf"}, "train": {"optimizer": {"lr": 0.01}}}})";
  auto ex = parse_experiment(with_variants(two, R"({"seeds": [0, 1]})"), "good.json", host());
  REQUIRE(ex.runs.size() == 4);
  std::vector<std::string> ids;
  for (const auto& r : ex.runs) ids.push_back(r.run_id);
  CHECK(ids == std::vector<std::string>{"variant=small,seed=0", "variant=small,seed=1", "variant=flow,seed=0",
                                        "variant=flow,seed=1"});
  const auto& small = ex.runs[0];
  const auto& flow = ex.runs[2];
  CHECK(small.label == "variant=small");
  CHECK(small.variant == "small");
  CHECK(flow.variant == "flow");
  CHECK(small.config.at("variant") == "small");
  CHECK(flow.config.at("label") == "variant=flow");
  CHECK(flow.config.at("run_id") == "variant=flow,seed=0");
  CHECK_FALSE(flow.config.contains("variants"));
  // model is replaced whole: the base's sgm parameters do not reach cnf.
  CHECK(small.model.params == json::parse(R"({"width": 16})"));
  CHECK(flow.model.plugin == "cnf");
  CHECK(flow.model.params == json::object());
  // train is merged key by key: lr from the variant, the rest from the experiment.
  CHECK(flow.train.lr == 0.01);
  CHECK(flow.train.optimizer == "adam");
  CHECK(flow.train.iterations == 10);
  CHECK(flow.train.batch_size == 16);
  CHECK(small.train.lr == 0.001);
  CHECK(flow.config.at("train").at("optimizer").at("lr") == 0.01);
  CHECK(flow.eval.metrics.size() == 1);

  SECTION("with a sweep: variant first, then the swept values; the sweep applies on top of the variant") {
    auto swept = parse_experiment(with_variants(two, R"({"seeds": [0, 1], "sweep": {"train.optimizer.lr": [0.02, 0.03]}})"),
                                  "good.json", host());
    REQUIRE(swept.runs.size() == 8);
    CHECK(swept.runs[0].run_id == "variant=small,lr=0.02,seed=0");
    CHECK(swept.runs[0].label == "variant=small,lr=0.02");
    CHECK(swept.runs[7].run_id == "variant=flow,lr=0.03,seed=1");
    CHECK(swept.runs[7].train.lr == 0.03);
    CHECK(swept.runs[7].model.plugin == "cnf");
  }
  SECTION("without a variant, nothing changes: run ids, labels, config") {
    auto plain = parse_experiment(base().dump(), "good.json", host());
    CHECK(plain.runs[0].variant.empty());
    CHECK_FALSE(plain.runs[0].config.contains("variant"));
    CHECK_FALSE(plain.runs[0].config.at("eval").contains("skipped_metrics"));
  }
  SECTION("eval merges key by key, null removes a key, a null section removes it") {
    auto ex2 = parse_experiment(
        with_variants(R"({"a": {"eval": {"samples": 7}, "train": {"batch_size": null}},
                          "b": {"hamiltonian": null, "dtype": "float64"}})",
                      R"({"hamiltonian": {"plugin": "quadratic"}})"),
        "good.json", host());
    REQUIRE(ex2.runs.size() == 2);
    CHECK(ex2.runs[0].eval.samples == 7);
    CHECK(ex2.runs[0].eval.metrics.size() == 1);  // the experiment's metrics stay
    CHECK(ex2.runs[0].train.batch_size == 256);   // removed: the default
    CHECK(ex2.runs[0].hamiltonian.has_value());
    CHECK_FALSE(ex2.runs[1].hamiltonian.has_value());
    CHECK_FALSE(ex2.runs[1].config.contains("hamiltonian"));
    CHECK(ex2.runs[1].dtype == "float64");
    CHECK(ex2.runs[1].train.batch_size == 16);
  }
  SECTION("the experiment's own sections need not be complete: each variant completes them") {
    auto ex3 = parse_experiment(with_variants(R"({"a": {"model": {"plugin": "sgm"}}, "b": {"model": {"plugin": "cnf"}}})",
                                              R"({"model": null})"),
                                "good.json", host());
    CHECK(ex3.runs.size() == 2);
  }
}

TEST_CASE("variant errors point into the variant", "[experiment][variants]") {
  SECTION("a section the variant replaces") {
    CHECK_ERROR(with_variants(R"({"a": {"train": {"iterations": 5}}, "b": {"model": {"plugin": "sgm", "params": {"width": 0}}}})"),
                "bad.json: /variants/b/model/params/width: expected an integer >= 1, got 0");
    CHECK_ERROR(with_variants(R"({"a": {"model": {"plugin": "sgn"}}})"),
                "bad.json: /variants/a/model/plugin: no model plugin named 'sgn' (did you mean 'sgm'?); available: " +
                    available(MFGLAB_KIND_MODEL) + searched());
  }
  SECTION("a key the variant sets in train; the experiment's own keys keep their paths") {
    CHECK_ERROR(with_variants(R"({"a": {"train": {"optimizer": {"lr": -1}}}})"),
                "bad.json: /variants/a/train/optimizer/lr: expected a number > 0, got -1");
    // Wrong in the experiment, inherited by both variants: one line, at the experiment's path.
    CHECK_ERROR(with_variants(R"({"a": {"train": {"iterations": 5}}, "b": {"train": {"iterations": 6}}})",
                              R"({"train": {"batch_size": 0}})"),
                "bad.json: /train/batch_size: expected an integer >= 1 and <= 100000000, got 0");
  }
  SECTION("a section neither the experiment nor the variant gives") {
    CHECK_ERROR(with_variants(R"({"a": {"model": {"plugin": "sgm"}}, "b": {"train": {"iterations": 5}}})",
                              R"({"model": null})"),
                "bad.json: /variants/b: missing key 'model' (e.g. {\"plugin\": \"sgm\"})");
  }
  SECTION("an error of the experiment's sections that only some variants have names them") {
    CHECK_ERROR(with_variants(R"({"a": {"train": {"iterations": 5}}, "b": {"model": {"plugin": "cnf"}}})",
                              R"({"model": {"plugin": "sgm", "params": {"parameterization": "potential"}},
                                  "regularizers": [{"plugin": "needs_value", "weight": 0.1}]})"),
                "bad.json: /regularizers/0/plugin: regularizer 'needs_value' needs the model's 'value' field, "
                "which model 'cnf' does not provide (it provides: velocity, log_prob, collocation) (variant 'b')");
    auto lines = errors_of(with_variants(R"({"a": {"train": {"iterations": 5}}, "b": {"model": {"plugin": "cnf"}}})",
                                         R"({"sweep": {"model.params.beta_min": [0.2]}})"));
    REQUIRE(lines.size() == 1);
    CHECK(lines[0].rfind("bad.json: /sweep/model.params.beta_min/0: unknown parameter of plugin 'cnf'", 0) == 0);
    CHECK(lines[0].substr(lines[0].size() - 14) == " (variant 'b')");
  }
  SECTION("the variants object") {
    CHECK_ERROR(with_variants("{}"),
                "bad.json: /variants: expected at least one variant ({\"NAME\": {\"model\": {...}}, ...}), got {}");
    CHECK_ERROR(with_variants("[1]"),
                "bad.json: /variants: expected an object mapping variant names to the sections they replace "
                "({\"NAME\": {\"model\": {...}}, ...}), got [1]");
    CHECK_ERROR(with_variants(R"({"a": 3})"),
                "bad.json: /variants/a: expected an object of the sections this variant replaces (" + kVariantSections +
                    "), got 3");
  }
  SECTION("a variant that overrides nothing") {
    const std::string nothing = "the variant overrides nothing: give it at least one of " + kVariantSections;
    CHECK_ERROR(with_variants(R"({"a": {}})"), "bad.json: /variants/a: " + nothing);
    CHECK_ERROR(with_variants(R"({"a": {"description": "the same"}})"), "bad.json: /variants/a: " + nothing);
  }
  SECTION("two variants with the same configuration") {
    CHECK_ERROR(with_variants(R"({"a": {"train": {"iterations": 5}}, "b": {"train": {"iterations": 5}, "description": "x"}})"),
                "bad.json: /variants/b: the same configuration as variant 'a'");
  }
  SECTION("unknown keys, with a suggestion") {
    const std::string holds = "unknown key (a variant holds: description, " + kVariantSections + ")";
    CHECK_ERROR(with_variants(R"({"a": {"modle": {"plugin": "cnf"}}})"),
                "bad.json: /variants/a/modle: " + holds + " (did you mean 'model'?)");
    CHECK_ERROR(with_variants(R"({"a": {"seeds": [3], "model": {"plugin": "cnf"}}})"),
                "bad.json: /variants/a/seeds: " + holds);
    CHECK_ERROR(with_variants(R"({"a": {"description": 3, "model": {"plugin": "cnf"}}})"),
                "bad.json: /variants/a/description: expected a string, got 3");
  }
  SECTION("variant names must be usable in folder names") {
    const std::string expected = "variant name: expected a name of letters, digits, '_', '-', '.' (not starting "
                                 "with '.'), got ";
    CHECK_ERROR(with_variants(R"({"my arm": {"model": {"plugin": "cnf"}}})"),
                "bad.json: /variants/my arm: " + expected + "\"my arm\"");
    CHECK_ERROR(with_variants(R"({".hidden": {"model": {"plugin": "cnf"}}})"),
                "bad.json: /variants/.hidden: " + expected + "\".hidden\"");
    CHECK_ERROR(with_variants(R"({"a/b": {"model": {"plugin": "cnf"}}})"),
                "bad.json: /variants/a~1b: " + expected + "\"a/b\"");
    CHECK_ERROR(with_variants(R"({"": {"model": {"plugin": "cnf"}}})"), "bad.json: /variants/: " + expected + "\"\"");
    CHECK_ERROR(with_variants(R"({"a,b=c": {"model": {"plugin": "cnf"}}})"),
                "bad.json: /variants/a,b=c: " + expected + "\"a,b=c\"");
  }
  SECTION("variants cannot be swept") {
    CHECK_ERROR(with_variants(R"({"a": {"model": {"plugin": "cnf"}}})", R"({"sweep": {"variants.a.dtype": ["float64"]}})"),
                "bad.json: /sweep/variants.a.dtype: cannot sweep 'variants.a.dtype': a sweep path starts with one of "
                "dataset, model, hamiltonian, regularizers, train, eval, dtype");
  }
  SECTION("variants count towards the run limit") {
    std::string many = "{";
    for (int i = 0; i < 20; ++i) many += fmt::format("{}\"v{}\": {{\"train\": {{\"iterations\": {}}}}}", i ? "," : "", i, i + 1);
    many += "}";
    CHECK_ERROR(with_variants(many, R"({"sweep": {"train.batch_size": [)" + [] {
                  std::string v;
                  for (int i = 1; i <= 5001; ++i) v += (i > 1 ? "," : "") + std::to_string(i);
                  return v;
                }() + "]}}"),
                "bad.json: /sweep: expected at most 100000 runs (the sizes of the sweep lists multiplied together, "
                "times the number of seeds and of variants), got 100020");
  }
}

TEST_CASE("a metric that a variant's model cannot compute is skipped for that variant", "[experiment][variants]") {
  const std::string metrics = R"({"eval": {"metrics": [{"plugin": "mmd"}, {"plugin": "transport"}]}})";
  const std::string reason = "metric 'transport' needs the model's 'velocity' field, which model 'sgm' does not "
                             "provide (it provides: score, log_prob, collocation)";
  SECTION("skipped where the model lacks the field, kept where it has it") {
    auto ex = parse_experiment(with_variants(R"({"score": {"model": {"plugin": "sgm"}}, "flow": {"model": {"plugin": "cnf"}}})",
                                             metrics),
                               "good.json", host());
    REQUIRE(ex.runs.size() == 2);
    const auto& score = ex.runs[0];
    const auto& flow = ex.runs[1];
    REQUIRE(score.eval.metrics.size() == 1);
    CHECK(score.eval.metrics[0].plugin == "mmd");
    REQUIRE(score.eval.skipped_metrics.size() == 1);
    CHECK(score.eval.skipped_metrics[0].plugin == "transport");
    CHECK(score.eval.skipped_metrics[0].reason == reason);
    CHECK(score.config.at("eval").at("metrics") == json::parse(R"([{"plugin": "mmd"}])"));
    CHECK(score.config.at("eval").at("skipped_metrics") ==
          json::parse(R"([{"plugin": "transport", "reason": ")" + reason + "\"}]"));
    CHECK(flow.eval.metrics.size() == 2);
    CHECK(flow.eval.skipped_metrics.empty());
    CHECK_FALSE(flow.config.at("eval").contains("skipped_metrics"));
  }
  SECTION("without variants it is an error, as before") {
    CHECK_ERROR(patched(metrics), "bad.json: /eval/metrics/1/plugin: " + reason);
  }
  SECTION("a metric no variant can compute is an error") {
    CHECK_ERROR(with_variants(R"({"a": {"model": {"plugin": "sgm", "params": {"width": 8}}}, "b": {"model": {"plugin": "sgm"}}})",
                              metrics),
                "bad.json: /eval/metrics/1/plugin: " + reason + "; no variant can compute it");
  }
  SECTION("a metric a variant lists itself is not skipped") {
    CHECK_ERROR(with_variants(R"({"a": {"eval": {"metrics": [{"plugin": "transport"}]}}, "b": {"model": {"plugin": "cnf"}}})"),
                "bad.json: /variants/a/eval/metrics/0/plugin: " + reason);
  }
}

TEST_CASE("every experiment file in experiments/ is valid", "[experiment][files]") {
  int files = 0;
  for (const auto& e : fs::directory_iterator(fs::path(MFGLAB_SOURCE_DIR) / "experiments")) {
    if (e.path().extension() != ".json") continue;
    INFO(e.path().string());
    CHECK_NOTHROW(load_experiment(e.path().string(), host()));
    ++files;
  }
  CHECK(files >= 10);
}

TEST_CASE("the cnf_vs_otflow study resolves to the settings of its two former files", "[experiment][files]") {
  auto ex = load_experiment(std::string(MFGLAB_SOURCE_DIR) + "/experiments/cnf_vs_otflow.json", host());
  CHECK(ex.name == "cnf_vs_otflow");
  REQUIRE(ex.runs.size() == 10);
  CHECK(ex.runs[0].run_id == "variant=cnf,seed=0");
  CHECK(ex.runs[9].run_id == "variant=otflow,seed=4");
  // experiments/cnf_vs_otflow_cnf.json and cnf_vs_otflow_otflow.json as they were (without
  // their descriptions).
  const std::string common = R"(
    "seeds": [0, 1, 2, 3, 4],
    "dtype": "float32",
    "dataset": {"plugin": "toy2d", "params": {"name": "8gaussians", "train_size": 100000, "test_size": 5000}},
    "eval": {"samples": 5000, "metrics": [
      {"plugin": "nll", "params": {"batch": 5000}},
      {"plugin": "transport", "params": {"steps": 32, "max_points": 2000}},
      {"plugin": "inverse_error", "params": {"max_points": 2000}},
      {"plugin": "mmd", "params": {"bandwidth": [0.7071067811865476]}}]},)";
  const std::string cnf = R"({"name": "cnf_vs_otflow_cnf",)" + common + R"(
    "model": {"plugin": "cnf", "params": {"width": 64, "depth": 3, "activation": "tanh", "solver": "rk4",
                                         "steps": 8, "eval_steps": 8, "divergence": "exact"}},
    "train": {"iterations": 300, "batch_size": 512, "optimizer": {"type": "adam", "lr": 0.005},
              "schedule": {"type": "cosine", "min_lr": 0.0001}, "grad_clip": 5.0, "log_every": 50,
              "checkpoint_every": 300}})";
  const std::string otflow = R"({"name": "cnf_vs_otflow_otflow",)" + common + R"(
    "model": {"plugin": "otflow", "params": {"width": 32, "layers": 2, "steps": 8, "eval_steps": 8,
                                            "alpha_L": 1.0, "alpha_C": 100.0, "alpha_R": 5.0}},
    "hamiltonian": {"plugin": "quadratic", "params": {"lambda": 1.0}},
    "train": {"iterations": 300, "batch_size": 512, "optimizer": {"type": "adam", "lr": 0.1},
              "schedule": {"type": "step", "step_size": 100, "gamma": 0.5}, "log_every": 50,
              "checkpoint_every": 300}})";
  auto former_cnf = parse_experiment(cnf, "cnf.json", host());
  auto former_otflow = parse_experiment(otflow, "otflow.json", host());
  REQUIRE(former_cnf.runs.size() == 5);
  // The same configuration apart from names, labels, run ids and the description.
  auto strip = [](json c) {
    for (const char* k : {"name", "description", "label", "run_id", "variant"}) c.erase(k);
    return c;
  };
  for (size_t s = 0; s < 5; ++s) {
    INFO("seed " << s);
    CHECK(ex.runs[s].variant == "cnf");
    CHECK(strip(ex.runs[s].config) == strip(former_cnf.runs[s].config));
    CHECK(ex.runs[5 + s].variant == "otflow");
    CHECK(strip(ex.runs[5 + s].config) == strip(former_otflow.runs[s].config));
    CHECK(ex.runs[s].eval.skipped_metrics.empty());
    CHECK(ex.runs[5 + s].eval.skipped_metrics.empty());
  }
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
  SECTION("validate refuses pathological files with exit code 2") {
    const std::string deep = tmp.file("deep.json", "{\"name\": \"x\", \"description\": " + std::string(100000, '[') +
                                                       std::string(100000, ']') + "}");
    auto r = mfglab_cli("validate '" + deep + "'");
    CHECK(r.exit_code == 2);
    CHECK(r.err == "error: " + deep + ":1:285: JSON nested more than 256 levels deep\n");
    const std::string longname = tmp.file("longname.json", patched(R"({"name": ")" + std::string(50000, 'n') +
                                                                   R"(", "model": {"plugin": ")" +
                                                                   std::string(50000, 's') + R"("}})"));
    r = mfglab_cli("validate '" + longname + "'");
    CHECK(r.exit_code == 2);
    CHECK(r.err.rfind("error: " + longname + ": /name: expected a name of at most 200 bytes, got 50000 bytes\n", 0) == 0);
    const std::string big = tmp.file("big.json", "{\"name\": \"x\", \"train\": {\"grad_clip\": 1e309}}");
    r = mfglab_cli("validate '" + big + "'");
    CHECK(r.exit_code == 2);
    CHECK(r.err == "error: " + big + ":1:38: number out of range\n");
  }
  SECTION("validate accepts the good file") {
    const std::string good = tmp.file("good.json", patched(R"({"seeds": [0, 1]})"));
    auto r = mfglab_cli("validate '" + good + "'");
    CHECK(r.exit_code == 0);
    CHECK(r.out == good + ": valid experiment 'unit' with 2 run(s)\n");
    CHECK(r.err.empty());
  }
}

namespace {

// Keeps what the plugins log.
class CapturingLogger final : public mfglab::Logger {
 public:
  void info(const std::string& m) override { lines.push_back(m); }
  void warn(const std::string& m) override { lines.push_back(m); }
  std::vector<std::string> lines;
};

}  // namespace

TEST_CASE("eval.map_points: validated, recorded only when on, and only for a model with a velocity", "[experiment][maps]") {
  auto one_error = [](const std::string& text) {
    auto lines = errors_of(text);
    REQUIRE(lines.size() == 1);
    return lines[0];
  };
  CHECK(one_error(patched(R"({"eval": {"map_points": 100}})")) ==
        "bad.json: /eval/map_points: the learned map needs the model's 'velocity' field, which model 'sgm' does "
        "not provide (it provides: score, log_prob, collocation)");
  CHECK_THAT(one_error(patched(R"({"eval": {"map_points": -1}})")), Catch::StartsWith("bad.json: /eval/map_points: "));
  CHECK_THAT(one_error(patched(R"({"eval": {"map_steps": 0}})")), Catch::StartsWith("bad.json: /eval/map_steps: "));
  const auto cnf = R"({"model": {"plugin": "cnf", "params": {"width": 8}}, "eval": {"map_points": 40, "map_steps": 16}})";
  auto ex = parse_experiment(patched(cnf), "good.json", host());
  CHECK(ex.runs.at(0).eval.map_points == 40);
  CHECK(ex.runs.at(0).config.at("eval").at("map_points") == 40);
  CHECK(ex.runs.at(0).config.at("eval").at("map_steps") == 16);
  auto off = parse_experiment(patched(R"({})"), "good.json", host());
  CHECK(!off.runs.at(0).config.at("eval").contains("map_points"));
}

TEST_CASE("metrics are calibrated once per experiment, on the held-out data of one seed", "[experiment][calibration]") {
  SECTION("the calibration seed: the first seed, or eval.calibration_seed") {
    auto ex = parse_experiment(patched(R"({"seeds": [3, 1]})"), "good.json", host());
    REQUIRE(ex.runs.size() == 2);
    for (const auto& run : ex.runs) {
      CHECK(run.eval.calibration_seed == std::optional<uint64_t>(3));
      CHECK(run.config.at("eval").at("calibration_seed") == 3);
    }
    auto ex2 = parse_experiment(patched(R"({"seeds": [3, 1], "eval": {"calibration_seed": 7}})"), "good.json", host());
    CHECK(ex2.runs.at(1).config.at("eval").at("calibration_seed") == 7);
    CHECK_ERROR(patched(R"({"eval": {"calibration_seed": -1}})"),
                "bad.json: /eval/calibration_seed: expected a non-negative integer, got -1");
  }
  SECTION("every run of a study measures mmd with the same median-heuristic bandwidth") {
    auto ex = parse_experiment(
        patched(R"({"seeds": [0, 1, 2], "eval": {"metrics": [{"plugin": "mmd", "params": {"median_heuristic": true}}]}})"),
        "good.json", host());
    REQUIRE(ex.runs.size() == 3);
    std::vector<std::string> accounts;
    std::vector<torch::Tensor> tests;
    for (const auto& run : ex.runs) {
      CapturingLogger logger;
      mfglab::RunContext ctx;
      ctx.generator = at::make_generator<at::CPUGeneratorImpl>(run.seed);
      ctx.seed = run.seed;
      ctx.dtype = torch::kFloat32;
      ctx.logger = &logger;
      auto o = mfglab::engine::assemble(run, host(), ctx);
      tests.push_back(o.test);
      std::string account;
      for (const auto& line : logger.lines)
        if (line.rfind("mmd calibrated on the held-out data of seed 0: median-heuristic bandwidth h = ", 0) == 0)
          account = line;
      CHECK(!account.empty());
      accounts.push_back(account);
    }
    // The seeds' own held-out sets differ; the kernel does not.
    CHECK(!torch::equal(tests[0], tests[1]));
    CHECK(accounts[1] == accounts[0]);
    CHECK(accounts[2] == accounts[0]);
  }
}

TEST_CASE("the Assembler builds a run's objects in the SDK's order and refuses any other", "[assemble]") {
  using mfglab::test::PluginSetup;
  using mfglab::test::run_context;
  {
    PluginSetup s(run_context());
    CHECK_THROWS_WITH(s.model("sgm"), Catch::Contains("model 'sgm': the data dimension is not known"));
    CHECK_THROWS_WITH(s.regularizer("kinetic"), Catch::Contains("regularizers come after the model"));
    CHECK_THROWS_WITH(s.metric("mmd"), Catch::Contains("metrics come after the model"));
  }
  {
    PluginSetup s(run_context());
    s.dataset("toy2d", {{"name", "8gaussians"}, {"train_size", 64}, {"test_size", 16}}).hamiltonian("quadratic");
    CHECK(s.ctx.data_dim == 2);
    CHECK(s.ctx.dataset == s.objects().dataset.get());
    CHECK(s.ctx.hamiltonian == s.objects().hamiltonian.get());
    CHECK(s.objects().train.scalar_type() == torch::kFloat64);
    s.model("otflow", {{"width", 4}});
    CHECK_THROWS_WITH(s.hamiltonian("quadratic"), Catch::Contains("the Hamiltonian comes before the model"));
    CHECK_THROWS_WITH(s.dataset("toy2d"), Catch::Contains("the dataset comes first"));
    CHECK_THROWS_WITH(s.model("otflow"), Catch::Contains("a run has one model"));
    // The model is seen through its contract checks, as in a run.
    CHECK(dynamic_cast<mfglab::engine::CheckedModel*>(s.objects().model.get()) != nullptr);
    CHECK_NOTHROW(s.regularizer("kinetic"));
  }
}
