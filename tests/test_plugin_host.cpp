// The plugin host: which libraries it refuses and why (one line naming the file), that
// a bad library never stops the good ones, name clashes, factory failures, parameter
// validation, and the symbol hygiene of the built-in plugins.
#include <cstddef>
#include <cstdio>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <torch/csrc/api/include/torch/version.h>

#include "mfglab/plugin.h"  // MFGLAB_ABI_TAG, the tag the engine expects
#include "mfglab/sdk.h"
#include "plugin_host.h"

namespace fs = std::filesystem;
using namespace mfglab;
using namespace mfglab::engine;

namespace {

const std::string kBrokenDir = MFGLAB_TEST_BROKEN_PLUGIN_DIR;

// The path the host reports for a library of the broken folder, by its CMake target.
std::string broken_file(const std::string& target) {
  return kBrokenDir + "/mfglab_plugin_" + target + ".so";
}

// Loading libraries is cheap but not free: one host over the broken folder serves all.
const PluginHost& broken_host() {
  static const PluginHost host({kBrokenDir});
  return host;
}

RunContext cpu_context() {
  RunContext ctx;
  ctx.generator = at::make_generator<at::CPUGeneratorImpl>(0);
  return ctx;
}

bool has_problem(const PluginHost& host, const std::string& line) {
  const auto& p = host.problems();
  return std::find(p.begin(), p.end(), line) != p.end();
}

const mfglab_manifest& good_manifest() {
  const LoadedPlugin* p = broken_host().find("good_metric");
  REQUIRE(p != nullptr);
  return *p->manifest;
}

// resolve_params on good_metric's declarations; returns the errors as "path: message".
std::vector<std::string> param_errors(const nlohmann::json& params) {
  std::vector<ParamError> errors;
  resolve_params(good_manifest(), params, errors);
  std::vector<std::string> out;
  for (const auto& e : errors) out.push_back(e.path + ": " + e.message);
  return out;
}

}  // namespace

TEST_CASE("each broken library is refused with one line naming the file and the reason",
          "[plugin_host]") {
  const auto& host = broken_host();

  SECTION("no entry symbol") {
    CHECK(has_problem(host, "refused " + broken_file("broken_no_entry") +
                                ": no entry symbol 'mfglab_plugin_entry' (not an mfglab plugin)"));
  }
  SECTION("another SDK major") {
    CHECK(has_problem(host, fmt::format("refused {}: built for SDK major {}, this engine supports major {}",
                                        broken_file("broken_sdk_major"), MFGLAB_SDK_MAJOR + 1, MFGLAB_SDK_MAJOR)));
  }
  SECTION("manifest struct too small") {
    CHECK(has_problem(host, fmt::format("refused {}: manifest struct is {} bytes, SDK {}.{} needs at least {}",
                                        broken_file("broken_struct_size"), offsetof(mfglab_manifest, create),
                                        MFGLAB_SDK_MAJOR, MFGLAB_SDK_MINOR, sizeof(mfglab_manifest))));
  }
  SECTION("another LibTorch") {
    CHECK(has_problem(host, fmt::format("refused {}: built against LibTorch 0.0.1, this engine uses LibTorch {}",
                                        broken_file("broken_torch_version"), TORCH_VERSION)));
  }
  SECTION("another C++ ABI") {
    CHECK(has_problem(host, fmt::format("refused {}: C++ ABI tag 'gxx-abi-0-cxx11abi-0' differs from the "
                                        "engine's '{}'",
                                        broken_file("broken_abi_tag"), MFGLAB_ABI_TAG)));
  }
  SECTION("nothing else is reported, and every report is one line") {
    // Five refusals and one name clash; the failing factory only fails on create().
    CHECK(host.problems().size() == 6);
    for (const auto& line : host.problems()) CHECK(line.find('\n') == std::string::npos);
  }
  SECTION("refused libraries are not listed") {
    for (const char* name : {"sdk_major", "struct_size", "torch_version", "abi_tag"})
      CHECK(host.find(name) == nullptr);
  }
}

TEST_CASE("good plugins load beside broken ones and work", "[plugin_host]") {
  const auto& host = broken_host();
  const std::vector<std::string> loaded = {"failing", "good_metric", "twin"};
  CHECK(host.names() == loaded);
  CHECK(host.names(MFGLAB_KIND_MODEL).empty());

  const LoadedPlugin* good = host.find("good_metric");
  REQUIRE(good != nullptr);
  CHECK(good->file == broken_file("good_metric"));
  CHECK(good->kind() == MFGLAB_KIND_METRIC);

  auto ctx = cpu_context();
  auto metric = host.create_as<Metric>("good_metric", MFGLAB_KIND_METRIC, nlohmann::json::object(), ctx);
  const MetricValues by_default = {{"good", 1.5}}, given = {{"good", 2.0}};
  CHECK(metric->evaluate({}) == by_default);  // the declared default
  metric = host.create_as<Metric>("good_metric", MFGLAB_KIND_METRIC, {{"value", 2.0}}, ctx);
  CHECK(metric->evaluate({}) == given);
}

TEST_CASE("two libraries with the same name: an error naming both, and using the name fails",
          "[plugin_host]") {
  const auto& host = broken_host();
  const std::string clash = fmt::format("two plugins are named 'twin': {} and {}", broken_file("broken_twin_a"),
                                        broken_file("broken_twin_b"));
  CHECK(has_problem(host, clash));
  CHECK_THROWS_MATCHES(host.find("twin"), Error, Catch::Message(clash));
  auto ctx = cpu_context();
  CHECK_THROWS_MATCHES(host.create("twin", MFGLAB_KIND_METRIC, {}, ctx), Error, Catch::Message(clash));
}

TEST_CASE("create() reports factory failures and misuse with the plugin's name", "[plugin_host]") {
  const auto& host = broken_host();
  auto ctx = cpu_context();

  SECTION("the constructor throws") {
    CHECK(host.find("failing") != nullptr);  // the manifest itself is fine
    CHECK_THROWS_MATCHES(
        host.create("failing", MFGLAB_KIND_METRIC, nlohmann::json::object(), ctx), Error,
        Catch::Message(fmt::format("plugin 'failing' ({}) failed to create: deliberate failure",
                                   broken_file("broken_failing"))));
  }
  SECTION("unknown name") {
    CHECK_THROWS_MATCHES(host.create("nope", MFGLAB_KIND_MODEL, {}, ctx), Error,
                         Catch::Message("no model plugin named 'nope'"));
  }
  SECTION("wrong kind") {
    CHECK_THROWS_MATCHES(host.create("good_metric", MFGLAB_KIND_MODEL, {}, ctx), Error,
                         Catch::Message("plugin 'good_metric' is a metric, expected a model"));
  }
  SECTION("bad parameters never reach the factory") {
    CHECK_THROWS_MATCHES(host.create("good_metric", MFGLAB_KIND_METRIC, {{"count", 11}}, ctx), Error,
                         Catch::Message("plugin 'good_metric': params/count: expected an integer >= 1 "
                                        "and <= 10, got 11"));
  }
}

TEST_CASE("resolve_params fills defaults and checks keys, types, bounds and choices",
          "[plugin_host][params]") {
  SECTION("defaults are filled in, for an empty object and for null") {
    const nlohmann::json defaults = {
        {"value", 1.5}, {"count", 3}, {"mode", "fast"}, {"flag", false}, {"scales", {1.0}}};
    for (const auto& params : {nlohmann::json::object(), nlohmann::json()}) {
      std::vector<ParamError> errors;
      CHECK(resolve_params(good_manifest(), params, errors) == defaults);
      CHECK(errors.empty());
    }
  }
  SECTION("given values replace defaults; the others stay") {
    std::vector<ParamError> errors;
    auto resolved = resolve_params(good_manifest(), {{"count", 7}, {"mode", "slow"}, {"scales", 0.5}}, errors);
    CHECK(errors.empty());
    const nlohmann::json expected = {
        {"value", 1.5}, {"count", 7}, {"mode", "slow"}, {"flag", false}, {"scales", 0.5}};
    CHECK(resolved == expected);
  }
  SECTION("valid edge values") {
    // An integral float counts as an integer; bounds are inclusive unless declared otherwise.
    CHECK(param_errors({{"count", 4.0}}).empty());
    CHECK(param_errors({{"count", 1}, {"value", 0}}).empty());
    CHECK(param_errors({{"count", 10}, {"scales", {0.1, 2}}}).empty());
  }
  SECTION("unknown key") {
    CHECK(param_errors({{"valeu", 1}}) ==
          std::vector<std::string>{"/valeu: unknown parameter of plugin 'good_metric' (it accepts: value, "
                                   "count, mode, flag, scales)"});
  }
  SECTION("wrong types") {
    CHECK(param_errors({{"count", "3"}}) ==
          std::vector<std::string>{"/count: expected an integer >= 1 and <= 10, got \"3\""});
    CHECK(param_errors({{"count", 2.5}}) ==
          std::vector<std::string>{"/count: expected an integer >= 1 and <= 10, got 2.5"});
    CHECK(param_errors({{"value", "x"}}) == std::vector<std::string>{"/value: expected a number >= 0, got \"x\""});
    CHECK(param_errors({{"flag", 1}}) == std::vector<std::string>{"/flag: expected true or false, got 1"});
    CHECK(param_errors({{"mode", 3}}) == std::vector<std::string>{"/mode: expected a string, got 3"});
    CHECK(param_errors({{"scales", "1"}}) ==
          std::vector<std::string>{"/scales: expected a number or a non-empty list of numbers > 0, got \"1\""});
  }
  SECTION("out of range") {
    CHECK(param_errors({{"count", 0}}) == std::vector<std::string>{"/count: expected an integer >= 1 and <= 10, got 0"});
    CHECK(param_errors({{"value", -1}}) == std::vector<std::string>{"/value: expected a number >= 0, got -1"});
    CHECK(param_errors({{"scales", {1, 0}}}) ==
          std::vector<std::string>{"/scales: expected a number or a non-empty list of numbers > 0, got [1,0]"});
    CHECK(param_errors({{"scales", nlohmann::json::array()}}) ==
          std::vector<std::string>{"/scales: expected a number or a non-empty list of numbers > 0, got []"});
  }
  SECTION("bad choice") {
    CHECK(param_errors({{"mode", "medium"}}) ==
          std::vector<std::string>{"/mode: expected one of fast, slow, got \"medium\""});
  }
  SECTION("not an object") {
    CHECK(param_errors(nlohmann::json::array({1})) ==
          std::vector<std::string>{": expected an object of parameters, got [1]"});
  }
  SECTION("every error is reported, not only the first") {
    CHECK(param_errors({{"count", 0}, {"mode", "x"}, {"extra", true}}).size() == 3);
  }
}

TEST_CASE("the built-in plugins load with no problems", "[plugin_host][builtin]") {
  PluginHost host({MFGLAB_TEST_PLUGIN_DIR});
  CHECK(host.problems().empty());
  for (const char* name : {"toy2d", "sgm", "quadratic", "mmd", "sliced_wasserstein"}) {
    INFO(name);
    CHECK(host.find(name) != nullptr);
  }
  for (const auto* p : host.plugins()) {
    INFO(p->file);
    // The manifest is complete and each default satisfies its own declaration.
    CHECK(p->manifest->version != nullptr);
    CHECK(p->manifest->description != nullptr);
    std::vector<ParamError> errors;
    resolve_params(*p->manifest, nlohmann::json::object(), errors);
    CHECK(errors.empty());
  }
}

TEST_CASE("built-in plugin libraries export only mfglab_plugin_entry", "[plugin_host][builtin]") {
  int checked = 0;
  for (const auto& entry : fs::directory_iterator(MFGLAB_TEST_PLUGIN_DIR)) {
    if (entry.path().extension() != ".so") continue;
    const std::string file = entry.path().string();
    INFO(file);
    FILE* pipe = popen(("nm -D --defined-only '" + file + "' 2>&1").c_str(), "r");
    REQUIRE(pipe != nullptr);
    // Lines look like "000000000000d7c0 T mfglab_plugin_entry": keep the symbol name.
    std::set<std::string> symbols;
    char buffer[4096];
    while (std::fgets(buffer, sizeof(buffer), pipe)) {
      std::string line(buffer);
      while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
      symbols.insert(line.substr(line.rfind(' ') + 1));
    }
    CHECK(pclose(pipe) == 0);
    CHECK(symbols == std::set<std::string>{"mfglab_plugin_entry"});
    ++checked;
  }
  CHECK(checked >= 5);
}
