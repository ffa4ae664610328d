// The plugin host: which libraries it refuses and why (one line naming the file), that
// a bad library never stops the good ones, name clashes, factory failures, parameter
// validation, and the symbol hygiene of the built-in plugins. Also SDK versioning (older
// minors load by manifest prefix, newer ones are refused), the lifetime of plugin objects
// beyond their host, immediate binding, hostile manifests, a clean stdout while loading,
// the hint of a missing plugin's message, and the SDK's example model.
#include <dlfcn.h>
#include <unistd.h>

#include <cstddef>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <torch/csrc/api/include/torch/version.h>
#include <torch/optim/adam.h>

#include "cli.h"
#include "mfglab/flow.h"
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
  SECTION("manifest struct smaller than the SDK 1.0 one") {
    CHECK(has_problem(host, fmt::format("refused {}: manifest struct is {} bytes, smaller than any SDK {}.x "
                                        "manifest ({} bytes)",
                                        broken_file("broken_struct_size"), offsetof(mfglab_manifest, create),
                                        MFGLAB_SDK_MAJOR, MFGLAB_MANIFEST_SIZE_1_0)));
  }
  SECTION("another LibTorch") {
    CHECK(has_problem(host, fmt::format("refused {}: built against LibTorch 0.0.1, this engine uses LibTorch {} "
                                        "(major.minor must match)",
                                        broken_file("broken_torch_version"), TORCH_VERSION)));
  }
  SECTION("another C++ ABI") {
    CHECK(has_problem(host, fmt::format("refused {}: C++ ABI tag 'gxx-abi-0-cxx11abi-0' differs from the "
                                        "engine's '{}'",
                                        broken_file("broken_abi_tag"), MFGLAB_ABI_TAG)));
  }
  SECTION("nothing else is reported, and every report is one line") {
    // Five refusals above, the newer SDK minor, the unresolved symbol, fifteen hostile
    // manifests and one name clash; the failing factory only fails on create().
    CHECK(host.problems().size() == 23);
    for (const auto& line : host.problems()) CHECK(line.find('\n') == std::string::npos);
  }
  SECTION("refused libraries are not listed") {
    for (const char* name : {"sdk_major", "sdk_minor", "struct_size", "torch_version", "abi_tag", "unresolved",
                             "hostile"})
      CHECK(host.find(name) == nullptr);
  }
}

TEST_CASE("good plugins load beside broken ones and work", "[plugin_host]") {
  const auto& host = broken_host();
  const std::vector<std::string> loaded = {"abi_clang", "failing", "good_metric", "noisy", "torch_patch", "twin"};
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
  SECTION("unknown name, with where the host looked") {
    CHECK_THROWS_MATCHES(host.create("nope", MFGLAB_KIND_MODEL, {}, ctx), Error,
                         Catch::Message("no model plugin named 'nope'; searched " + kBrokenDir +
                                        "; add a plugin folder with --plugin-dir DIR or "
                                        "MFGLAB_PLUGIN_PATH=DIR[:DIR...]"));
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

// ---- SDK versions ---------------------------------------------------------------------

TEST_CASE("a plugin built for a newer SDK minor is refused, naming both versions", "[plugin_host][versions]") {
  // E.g. "built for SDK 1.3, this mfglab provides SDK 1.2".
  CHECK(has_problem(broken_host(), fmt::format("refused {}: built for SDK {}.{}, this mfglab provides SDK {}.{}",
                                               broken_file("broken_sdk_minor"), MFGLAB_SDK_MAJOR,
                                               MFGLAB_SDK_MINOR + 1, MFGLAB_SDK_MAJOR, MFGLAB_SDK_MINOR)));
  CHECK(broken_host().find("sdk_minor") == nullptr);
}

TEST_CASE("LibTorch patch releases and other compilers of the same C++ ABI are accepted", "[plugin_host][versions]") {
  const auto& host = broken_host();
  // torch_patch claims "<major>.<minor>.99+cpu"; abi_clang claims Clang's gxx-abi-1002 with
  // the engine's libstdc++ string ABI.
  for (const char* name : {"torch_patch", "abi_clang"}) {
    INFO(name);
    const LoadedPlugin* p = host.find(name);
    REQUIRE(p != nullptr);
    CHECK(p->kind() == MFGLAB_KIND_METRIC);
    for (const auto& line : host.problems()) CHECK(line.find(p->file) == std::string::npos);
  }
  CHECK(std::string(host.find("torch_patch")->manifest->torch_version) != TORCH_VERSION);
  CHECK(std::string(host.find("abi_clang")->manifest->abi_tag).rfind("gxx-abi-1002-cxx11abi-", 0) == 0);
}

TEST_CASE("a plugin built against the frozen SDK 1.1 headers loads, is created and runs", "[plugin_host][versions]") {
  PluginHost host({MFGLAB_TEST_SDK_1_0_DIR});
  REQUIRE(host.problems().empty());
  const LoadedPlugin* p = host.find("frozen_sdk_model");
  REQUIRE(p != nullptr);
  CHECK(p->kind() == MFGLAB_KIND_MODEL);
  // Its manifest is the SDK 1.0 one: the engine read that prefix and defaulted the rest.
  CHECK(p->manifest->sdk_minor == 1);
  CHECK(p->manifest->struct_size == MFGLAB_MANIFEST_SIZE_1_0);
  CHECK(MFGLAB_MANIFEST_SIZE_1_0 < sizeof(mfglab_manifest));
  CHECK(p->manifest->param_size == MFGLAB_PARAM_SIZE_1_0);
  REQUIRE(p->manifest->param_count == 3);
  CHECK(std::string(p->manifest->params[2].name) == "term");
  CHECK(std::string(p->manifest->params[2].choices) == "mse|distance");
  CHECK(p->has_field("velocity"));

  auto ctx = cpu_context();
  // Its declarations validate parameters as the plugin declared them.
  CHECK_THROWS_MATCHES(host.create("frozen_sdk_model", MFGLAB_KIND_MODEL, {{"shift", 11}}, ctx), Error,
                       Catch::Message("plugin 'frozen_sdk_model': params/shift: expected a number >= -10 and "
                                      "<= 10, got 11"));
  auto model = host.create_as<Model>("frozen_sdk_model", MFGLAB_KIND_MODEL,
                                     {{"dim", 3}, {"shift", 2.0}, {"term", "distance"}}, ctx);
  REQUIRE(model != nullptr);
  auto params = model->parameters();
  REQUIRE(params.size() == 1);
  CHECK(torch::equal(params[0].detach(), torch::full({3}, 2.0)));
  auto terms = model->loss(torch::zeros({4, 3}));
  REQUIRE(terms.size() == 1);
  CHECK(terms[0].name == "distance");
  CHECK(terms[0].value.item<double>() == Approx(12.0));
  CHECK(model->sample(5).sizes() == torch::IntArrayRef({5, 3}));
  CHECK(torch::allclose(model->velocity(torch::zeros({2, 3}), torch::zeros({2, 1})), torch::full({2, 3}, -2.0)));
  // Defaults come through too.
  auto by_default = host.create_as<Model>("frozen_sdk_model", MFGLAB_KIND_MODEL, nlohmann::json::object(), ctx);
  CHECK(torch::equal(by_default->parameters()[0].detach(), torch::full({2}, 0.5)));
  CHECK(by_default->loss(torch::zeros({1, 2}))[0].name == "mse");
}

// ---- lifetime, binding, hostile libraries ---------------------------------------------

TEST_CASE("plugin objects outlive the host that created them", "[plugin_host][lifetime]") {
  auto host = std::make_unique<PluginHost>(std::vector<std::string>{MFGLAB_TEST_EXAMPLE_MODEL_DIR});
  REQUIRE(host->problems().empty());
  auto ctx = cpu_context();
  ctx.data_dim = 2;
  auto model = host->create_as<Model>("gaussian_model", MFGLAB_KIND_MODEL, nlohmann::json::object(), ctx);
  const std::string file = host->find("gaussian_model")->file;
  host.reset();

  // The library is still mapped (RTLD_NOLOAD only finds a loaded library) ...
  void* handle = ::dlopen(file.c_str(), RTLD_NOW | RTLD_NOLOAD);
  CHECK(handle != nullptr);
  if (handle != nullptr) ::dlclose(handle);
  // ... so the object's methods and its destructor still run.
  auto samples = model->sample(3);
  CHECK(samples.sizes() == torch::IntArrayRef({3, 2}));
  auto terms = model->loss(samples);
  REQUIRE(terms.size() == 1);
  CHECK(std::isfinite(terms[0].value.item<double>()));
  model.reset();
}

TEST_CASE("a library with an unresolved symbol is refused at load with the loader's reason", "[plugin_host]") {
  CHECK(has_problem(broken_host(), "refused " + broken_file("broken_unresolved") +
                                       ": cannot load library: undefined symbol: mfglab_test_missing_symbol"));
  CHECK(broken_host().find("unresolved") == nullptr);
}

TEST_CASE("hostile manifests are refused with one line naming the library and the field", "[plugin_host][hostile]") {
  const auto& host = broken_host();
  auto refused = [](const std::string& target, const std::string& reason) {
    return "refused " + broken_file("hostile_" + target) + ": " + reason;
  };
  SECTION("NULL strings") {
    CHECK(has_problem(host, refused("null_name", "manifest field 'name' is NULL")));
    CHECK(has_problem(host, refused("null_version", "manifest field 'version' is NULL")));
    CHECK(has_problem(host, refused("null_description", "manifest field 'description' is NULL")));
    CHECK(has_problem(host, refused("null_param_name", "manifest field 'params[1].name' is NULL")));
    CHECK(has_problem(host, refused("null_param_type", "manifest field 'params[1].type' (parameter 'scale') is NULL")));
    CHECK(has_problem(host, refused("null_param_default",
                                    "manifest field 'params[1].default_json' (parameter 'scale') is NULL")));
  }
  SECTION("parameter declarations that contradict themselves") {
    CHECK(has_problem(host, refused("min_above_max", "parameter 'count': bounds >= 10 and <= 1 admit no value")));
    CHECK(has_problem(host, refused("default_out_of_bounds",
                                    "parameter 'count': default 11 does not satisfy its declaration: expected an "
                                    "integer >= 1 and <= 10, got 11")));
    CHECK(has_problem(host, refused("default_not_a_choice",
                                    "parameter 'mode': default \"medium\" does not satisfy its declaration: expected "
                                    "one of fast, slow, got \"medium\"")));
    CHECK(has_problem(host, refused("duplicate_param", "parameter 'scale' is declared twice (params[2] repeats a name)")));
    CHECK(has_problem(host, refused("unknown_type",
                                    "parameter 'scale': type 'float' is not one of int, number, bool, string, numbers, json")));
    // The JSON parser's own reason follows, on the same line.
    const std::string prefix = refused("default_not_json", "parameter 'scale': default_json '1.5x' is not valid JSON (");
    bool found = false;
    for (const auto& line : host.problems()) found |= line.rfind(prefix, 0) == 0 && line.back() == ')';
    CHECK(found);
  }
  SECTION("conditional fields on parameters or values that do not exist") {
    CHECK(has_problem(host, refused("field_unknown_param", "manifest field 'fields': entry \"value(mode=fast)\" depends "
                                                           "on parameter 'mode', which is not declared")));
    CHECK(has_problem(host, refused("field_not_a_choice", "manifest field 'fields': entry \"value(mode=medium)\": value "
                                                          "'medium' of parameter 'mode': expected one of fast, slow, got "
                                                          "\"medium\"")));
    CHECK(has_problem(host, refused("field_malformed", "manifest field 'fields': entry \"value(width\" has a malformed "
                                                       "condition, expected \"value(param=value|value)\"")));
  }
  SECTION("the good plugins are still listed") {
    CHECK(host.find("good_metric") != nullptr);
    CHECK(host.find("hostile") == nullptr);
  }
}

TEST_CASE("stdout stays clean while libraries load", "[plugin_host][stdout]") {
  SECTION("in process: nothing reaches fd 1, and stdout is restored") {
    // noisy prints from its entry point on every load (its static initialiser only runs
    // on the first one, which an earlier test may have done).
    std::fflush(stdout);
    const int saved = ::dup(STDOUT_FILENO);
    REQUIRE(saved >= 0);
    std::FILE* capture = std::tmpfile();
    REQUIRE(capture != nullptr);
    ::dup2(::fileno(capture), STDOUT_FILENO);
    bool noisy_loaded = false;
    {
      PluginHost host({kBrokenDir});
      noisy_loaded = host.find("noisy") != nullptr;
      std::printf("engine output\n");  // the host's own output still goes to stdout
    }
    std::fflush(stdout);
    ::dup2(saved, STDOUT_FILENO);
    ::close(saved);
    std::fseek(capture, 0, SEEK_SET);
    char buffer[4096] = {0};
    const size_t n = std::fread(buffer, 1, sizeof(buffer) - 1, capture);
    std::fclose(capture);
    CHECK(noisy_loaded);
    CHECK(std::string(buffer, n) == "engine output\n");
  }
  SECTION("mfglab plugins --json is valid JSON; the noise and the refusals go to stderr") {
    auto listed = test::mfglab_cli("--plugin-dir " + kBrokenDir + " plugins --json");
    INFO(listed.err);
    REQUIRE(listed.exit_code == 0);
    nlohmann::json plugins;
    REQUIRE_NOTHROW(plugins = nlohmann::json::parse(listed.out));
    std::set<std::string> names;
    for (const auto& p : plugins) names.insert(p["name"].get<std::string>());
    CHECK(names.count("noisy") == 1);
    CHECK(names.count("good_metric") == 1);
    CHECK(listed.err.find("noise from a static initialiser (stdio)") != std::string::npos);
    CHECK(listed.err.find("noise from the entry point (write)") != std::string::npos);
    CHECK(listed.err.find("refused " + broken_file("hostile_null_name") + ": manifest field 'name' is NULL") !=
          std::string::npos);
  }
  SECTION("plugins and describe work beside hostile libraries") {
    auto listed = test::mfglab_cli("--plugin-dir " + kBrokenDir + " plugins");
    CHECK(listed.exit_code == 0);
    CHECK(listed.out.find("good_metric") != std::string::npos);
    auto described = test::mfglab_cli("--plugin-dir " + kBrokenDir + " describe good_metric");
    CHECK(described.exit_code == 0);
    CHECK(described.out.find("metric plugin") != std::string::npos);
  }
}

TEST_CASE("a missing plugin's message says where the host looked and how to add a folder", "[plugin_host]") {
  const std::string missing = "/nonexistent/mfglab_plugins";
  PluginHost host({kBrokenDir, missing});
  CHECK(host.searched_directories() == std::vector<std::string>{kBrokenDir, missing});
  const std::string hint = "searched " + kBrokenDir + ", " + missing +
                           " (missing); add a plugin folder with --plugin-dir DIR or MFGLAB_PLUGIN_PATH=DIR[:DIR...]";
  CHECK(host.search_hint() == hint);
  auto ctx = cpu_context();
  CHECK_THROWS_MATCHES(host.create("x", MFGLAB_KIND_MODEL, {}, ctx), Error,
                       Catch::Message("no model plugin named 'x'; " + hint));
  CHECK(PluginHost({}).search_hint().rfind("searched no folder; add a plugin folder", 0) == 0);
}

// ---- the SDK's example model ------------------------------------------------------------

TEST_CASE("the SDK example model trains and follows the model conventions of sdk.h", "[plugin_host][example]") {
  PluginHost host({MFGLAB_TEST_EXAMPLE_MODEL_DIR});
  REQUIRE(host.problems().empty());
  const LoadedPlugin* p = host.find("gaussian_model");
  REQUIRE(p != nullptr);
  CHECK(p->fields == std::vector<std::string>{"value", "velocity", "score", "log_prob", "collocation"});
  auto ctx = cpu_context();
  ctx.data_dim = 2;
  ctx.dtype = torch::kFloat64;
  auto model = host.create_as<Model>("gaussian_model", MFGLAB_KIND_MODEL, nlohmann::json::object(), ctx);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);

  // Fit N((2, -1), diag(0.5^2, 1.5^2)) by its negative log-likelihood.
  torch::Generator g = at::make_generator<at::CPUGeneratorImpl>(1);
  auto data = torch::tensor({2.0, -1.0}, f64) + torch::tensor({0.5, 1.5}, f64) * torch::randn({4000, 2}, g, f64);
  torch::optim::Adam adam(model->parameters(), torch::optim::AdamOptions(0.05));
  for (int i = 0; i < 400; ++i) {
    auto terms = model->loss(data);
    REQUIRE(terms.size() == 1);
    adam.zero_grad();
    terms[0].value.backward();
    adam.step();
  }
  auto params = model->parameters();
  const auto mu = params[0].detach(), sigma = params[1].detach().exp();
  CHECK(torch::allclose(mu, data.mean(0), 0, 0.02));
  CHECK(torch::allclose(sigma, data.std(0), 0, 0.02));

  // Shapes and dtype of every output.
  const int64_t n = 64;
  auto x = torch::randn({n, 2}, g, f64) * 2;
  auto t = torch::rand({n, 1}, g, f64);
  auto s = model->sample(n);
  CHECK(s.sizes() == torch::IntArrayRef({n, 2}));
  CHECK(s.scalar_type() == torch::kFloat64);
  CHECK_FALSE(s.requires_grad());
  CHECK(model->log_prob(x).sizes() == torch::IntArrayRef({n}));
  CHECK(model->value(x, t).sizes() == torch::IntArrayRef({n}));
  CHECK(model->velocity(x, t).sizes() == torch::IntArrayRef({n, 2}));
  CHECK(model->score(x, t).sizes() == torch::IntArrayRef({n, 2}));

  // velocity = -grad_x U, and U solves -U_t + |grad U|^2 / 2 = 0.
  auto xg = x.clone().requires_grad_();
  auto tg = t.clone().requires_grad_();
  auto U = model->value(xg, tg);
  auto grads = torch::autograd::grad({U.sum()}, {xg, tg});
  CHECK(torch::allclose(model->velocity(x, t).detach(), -grads[0], 1e-9, 1e-9));
  auto residual = -grads[1].reshape({-1}) + 0.5 * grads[0].square().sum(1);
  CHECK(residual.abs().max().item<double>() < 1e-9);

  // score at t = 0 is grad_x log_prob (the data law's density).
  auto x0 = x.clone().requires_grad_();
  auto grad_logp = torch::autograd::grad({model->log_prob(x0).sum()}, {x0})[0];
  CHECK(torch::allclose(model->score(x, torch::zeros({n, 1}, f64)).detach(), grad_logp, 1e-9, 1e-9));

  // The velocity carries the data at t = 0 to the reference N(0, I) at the horizon.
  auto path = flow_path(*model, data, 0.0, model->horizon(), 20);
  auto end = path[path.size(0) - 1];
  CHECK(torch::allclose(end, (data - mu) / sigma, 1e-6, 1e-6));  // the exact transport map
  CHECK(end.mean(0).abs().max().item<double>() < 0.05);
  CHECK((end.std(0) - 1).abs().max().item<double>() < 0.05);

  // Collocation: each batch point at its own time t in [0, T], on its path.
  torch::Tensor cx, ct;
  {
    torch::NoGradGuard no_grad;
    auto c = model->collocation(data.slice(0, 0, n));
    cx = c.x;
    ct = c.t;
  }
  CHECK(cx.sizes() == torch::IntArrayRef({n, 2}));
  CHECK(ct.sizes() == torch::IntArrayRef({n, 1}));
  CHECK(ct.min().item<double>() >= 0);
  CHECK(ct.max().item<double>() <= model->horizon());
  // On the path X_t = m_t + s_t (X_0 - mu) / sigma of rho_t = N((1 - t) mu, s_t^2).
  auto st = (1 - ct) * sigma + ct;
  CHECK(torch::allclose((cx - (1 - ct) * mu) / st, (data.slice(0, 0, n) - mu) / sigma, 1e-9, 1e-9));
}

TEST_CASE("metrics declare which way is better, and a malformed declaration is refused", "[plugin_host]") {
  PluginHost host({MFGLAB_TEST_PLUGIN_DIR});
  const auto* mmd = host.find("mmd");
  REQUIRE(mmd != nullptr);
  CHECK(mmd->better_for("mmd") == "lower");
  CHECK(mmd->better_for("anything") == "lower");  // one word covers every value
  const auto* transport = host.find("transport");
  REQUIRE(transport != nullptr);
  CHECK(transport->better_for("straightness") == "higher");
  CHECK(transport->better_for("transport_cost") == "lower");
  CHECK(transport->better_for("unknown") == "");
  const auto* toy = host.find("toy2d");
  REQUIRE(toy != nullptr);
  CHECK(toy->better_for("x") == "");  // not a metric: nothing declared
  CHECK(mfglab::engine::check_better(nullptr).empty());
  CHECK(mfglab::engine::check_better("higher").empty());
  CHECK(mfglab::engine::check_better("a=lower,b=higher").empty());
  for (const char* bad : {"", "smaller", "a=lower,", "=lower", "a=up", "a=lower,,b=higher"})
    CHECK_THAT(mfglab::engine::check_better(bad), Catch::Contains("manifest field 'better'"));
}

TEST_CASE("typed parameter handles read back what they declare; choices are tied to an enum", "[params]") {
  enum class Mode { fast, exact };
  const mfglab::Choices<Mode> modes{{"fast", Mode::fast}, {"exact", Mode::exact}};
  const auto kMode = mfglab::choice_param("mode", Mode::exact, modes, "how");
  const auto kWidth = mfglab::int_param("width", 64, "units").at_least(1);
  const auto kScale = mfglab::number_param("scale", 0.5, "scale").above(0);
  const auto kOn = mfglab::bool_param("on", true, "switch");
  const auto kName = mfglab::string_param("name", "x", "name");
  const auto kList = mfglab::numbers_param("list", {1.0}, "numbers");
  // The declaration is an ordinary ParamSpec: the choices and the default come from the table.
  const mfglab::ParamSpec& spec = kMode;
  CHECK(spec.type == "string");
  CHECK(spec.choices == "fast|exact");
  CHECK(spec.default_json == "\"exact\"");
  CHECK(kWidth.min == 1);
  CHECK(modes.without({Mode::fast}).joined() == "exact");
  CHECK(modes.name(Mode::fast) == "fast");

  const mfglab::Params p(nlohmann::json{{"mode", "fast"}, {"width", 7}, {"scale", 2.5}, {"on", false}, {"name", "y"}, {"list", 3.0}});
  CHECK(p[kMode] == Mode::fast);
  CHECK(p[kWidth] == 7);
  static_assert(std::is_same_v<decltype(p[kWidth]), int64_t>);
  CHECK(p[kScale] == 2.5);
  CHECK(p[kOn] == false);
  CHECK(p[kName] == "y");
  CHECK(p[kList] == std::vector<double>{3.0});
  // A value outside the table (only a host that skipped validation could pass one) is named.
  const mfglab::Params bad(nlohmann::json{{"mode", "slow"}});
  CHECK_THROWS_WITH(bad[kMode], Catch::Contains("unknown value of 'mode' 'slow' (expected fast|exact)"));
  CHECK_THROWS_WITH(bad[kWidth], Catch::Contains("parameter 'width' is not declared"));
}
