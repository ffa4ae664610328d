// How the tests build plugin objects: through the engine's own Assembler (running/assemble.h),
// in the order a run builds them, so that no test re-implements the wiring (which context
// fields are set when, the model's contract checks).
//
//   mfglab::test::PluginSetup s(mfglab::test::run_context(/*seed=*/0, torch::kFloat64));
//   s.dataset("toy2d", {{"name", "8gaussians"}}).hamiltonian("quadratic").model("otflow");
//   auto& reg = s.regularizer("hjb", {{"points", 64}});
//
// A model without data needs the dimension: PluginSetup(ctx).dimension(2).model("sgm").
// One plugin on its own (a metric under test, a dataset as a source of points) comes from
// create<T>(host, name, params, ctx), which needs no order.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <mfglab/sdk.h>

#include "experiment.h"
#include "plugin_host.h"
#include "running/assemble.h"

namespace mfglab::test {

// The built plugins plus test-only plugin folders: one host per distinct list of folders,
// alive for the whole test program (plugin libraries stay loaded).
inline const engine::PluginHost& plugin_host(const std::vector<std::string>& extra_dirs = {}) {
  static std::mutex mutex;
  static std::map<std::vector<std::string>, std::unique_ptr<engine::PluginHost>> hosts;
  std::lock_guard<std::mutex> lock(mutex);
  auto& host = hosts[extra_dirs];
  if (!host) {
    std::vector<std::string> dirs = {MFGLAB_TEST_PLUGIN_DIR};
    dirs.insert(dirs.end(), extra_dirs.begin(), extra_dirs.end());
    host = std::make_unique<engine::PluginHost>(dirs);
  }
  return *host;
}

// A context as the trainer makes one: a generator seeded from `seed`, the dtype, the thread
// budget (LibTorch's intra-op threads are set to it too).
inline RunContext run_context(uint64_t seed = 0, torch::Dtype dtype = torch::kFloat64, int threads = 1) {
  at::set_num_threads(threads);
  RunContext ctx;
  ctx.generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  ctx.seed = seed;
  ctx.dtype = dtype;
  ctx.threads = threads;
  return ctx;
}

template <class T> constexpr mfglab_kind kind_of();
template <> constexpr mfglab_kind kind_of<Dataset>() { return MFGLAB_KIND_DATASET; }
template <> constexpr mfglab_kind kind_of<Hamiltonian>() { return MFGLAB_KIND_HAMILTONIAN; }
template <> constexpr mfglab_kind kind_of<Model>() { return MFGLAB_KIND_MODEL; }
template <> constexpr mfglab_kind kind_of<Regularizer>() { return MFGLAB_KIND_REGULARIZER; }
template <> constexpr mfglab_kind kind_of<Metric>() { return MFGLAB_KIND_METRIC; }

// One plugin object on its own, with its parameters' defaults filled in by the host.
template <class T>
std::unique_ptr<T> create(const engine::PluginHost& host, const std::string& name, const nlohmann::json& params,
                          const RunContext& ctx) {
  return host.create_as<T>(name, kind_of<T>(), params, ctx);
}

// The plugin objects of one test, in run order (see the top of this file). Owns its context;
// not copyable, as the objects hold it.
class PluginSetup {
 public:
  explicit PluginSetup(RunContext context, const engine::PluginHost& host = plugin_host())
      : ctx(std::move(context)), assembler_(host, ctx) {}
  PluginSetup(const PluginSetup&) = delete;
  PluginSetup& operator=(const PluginSetup&) = delete;

  PluginSetup& dataset(const std::string& name, const nlohmann::json& params = nlohmann::json::object()) {
    assembler_.add_dataset(use(name, params));
    return *this;
  }
  // The data dimension of a setup without a dataset.
  PluginSetup& dimension(int64_t d) {
    ctx.data_dim = d;
    return *this;
  }
  PluginSetup& hamiltonian(const std::string& name, const nlohmann::json& params = nlohmann::json::object()) {
    if (!name.empty()) assembler_.add_hamiltonian(use(name, params));
    return *this;
  }
  PluginSetup& model(const std::string& name, const nlohmann::json& params = nlohmann::json::object()) {
    assembler_.add_model(use(name, params));
    return *this;
  }
  Regularizer& regularizer(const std::string& name, const nlohmann::json& params = nlohmann::json::object()) {
    return assembler_.add_regularizer(use(name, params));
  }
  Metric& metric(const std::string& name, const nlohmann::json& params = nlohmann::json::object()) {
    return assembler_.add_metric(use(name, params));
  }

  engine::RunObjects& objects() { return assembler_.objects(); }
  RunContext ctx;

 private:
  static engine::PluginUse use(const std::string& name, const nlohmann::json& params) {
    engine::PluginUse u;
    u.plugin = name;
    u.params = params;
    return u;
  }
  engine::Assembler assembler_;
};

}  // namespace mfglab::test
