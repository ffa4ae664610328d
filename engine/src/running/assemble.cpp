#include "running/assemble.h"
#include "running/checked_model.h"

#include <fmt/format.h>
#include <mfglab/evaluation.h>

#include "plugin_host.h"

namespace mfglab::engine {

namespace {

// Runs `fn`, prefixing any error with what was being done.
template <class Fn>
void stage(const std::string& what, Fn&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    throw Error(fmt::format("{}: {}", what, e.what()));
  }
}

}  // namespace

nlohmann::json resolved_config(const RunSpec& spec, const PluginHost& host) {
  nlohmann::json config = spec.config;
  auto resolve_into = [&](nlohmann::json& use) {
    std::vector<ParamError> errs;
    const LoadedPlugin* p = host.find(use.at("plugin").get<std::string>());
    if (!p) throw Error(fmt::format("no plugin named '{}'", use.at("plugin").get<std::string>()));
    use["params"] = resolve_params(*p->manifest, use.value("params", nlohmann::json::object()), errs);
  };
  for (const char* key : {"dataset", "model", "hamiltonian"})
    if (config.contains(key) && !config[key].is_null()) resolve_into(config[key]);
  if (config.contains("regularizers")) for (auto& r : config["regularizers"]) resolve_into(r);
  if (config.contains("eval") && config["eval"].contains("metrics")) for (auto& m : config["eval"]["metrics"]) resolve_into(m);
  return config;
}

RunObjects assemble(const RunSpec& spec, const PluginHost& host, RunContext& ctx) {
  RunObjects o;
  const std::string dataset = "dataset '" + spec.dataset.plugin + "'";
  stage(dataset, [&] { o.dataset = host.create_as<Dataset>(spec.dataset.plugin, MFGLAB_KIND_DATASET, spec.dataset.params, ctx); });
  stage(dataset, [&] {
    o.train = o.dataset->train().to(ctx.dtype).contiguous();
    o.test = o.dataset->test().to(ctx.dtype).contiguous();
    if (o.train.dim() != 2 || o.train.size(0) == 0)
      throw Error(fmt::format("train set must be a non-empty [N, d] tensor, got {}", c10::str(o.train.sizes())));
    if (o.test.dim() != 2 || o.test.size(1) != o.train.size(1)) throw Error("test set must be [M, d] with the train set's d");
  });
  ctx.data_dim = o.train.size(1);
  ctx.dataset = o.dataset.get();  // the model may use the dataset's capabilities (sgm's esm loss)
  if (spec.hamiltonian) {
    stage("hamiltonian '" + spec.hamiltonian->plugin + "'", [&] {
      o.hamiltonian = host.create_as<Hamiltonian>(spec.hamiltonian->plugin, MFGLAB_KIND_HAMILTONIAN, spec.hamiltonian->params, ctx);
    });
    ctx.hamiltonian = o.hamiltonian.get();
  }
  stage("model '" + spec.model.plugin + "'", [&] {
    // Everybody (the trainer, regularizers, metrics) sees the model through its contract checks.
    o.model = std::make_unique<CheckedModel>(host.create_as<Model>(spec.model.plugin, MFGLAB_KIND_MODEL, spec.model.params, ctx),
                                             spec.model.plugin, ctx.data_dim, ctx.dtype);
  });
  for (const auto& r : spec.regularizers)
    stage("regularizer '" + r.plugin + "'", [&] {
      o.regularizers.push_back(host.create_as<Regularizer>(r.plugin, MFGLAB_KIND_REGULARIZER, r.params, ctx));
    });
  for (const auto& m : spec.eval.metrics)
    stage("metric '" + m.plugin + "'",
          [&] { o.metrics.push_back(host.create_as<Metric>(m.plugin, MFGLAB_KIND_METRIC, m.params, ctx)); });
  calibrate_metrics(spec, host, ctx, o);
  return o;
}

torch::Tensor calibration_set(const RunSpec& spec, const PluginHost& host, const RunContext& ctx, const RunObjects& o) {
  const uint64_t seed = spec.eval.calibration_seed.value_or(spec.seed);
  if (seed == spec.seed) return o.test;
  // The dataset as a run with that seed builds it: a fresh generator, and the dataset first.
  RunContext other = ctx;
  other.generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  other.seed = seed;
  other.dataset = nullptr;
  other.hamiltonian = nullptr;
  torch::Tensor test;
  stage(fmt::format("dataset '{}' (the calibration set of seed {})", spec.dataset.plugin, seed), [&] {
    auto dataset = host.create_as<Dataset>(spec.dataset.plugin, MFGLAB_KIND_DATASET, spec.dataset.params, other);
    test = dataset->test().to(ctx.dtype).contiguous();
    if (test.dim() != 2 || test.size(1) != o.test.size(1)) throw Error("test set must be [M, d] with the run's d");
  });
  return test;
}

void calibrate_metrics(const RunSpec& spec, const PluginHost& host, RunContext& ctx, RunObjects& o) {
  torch::Tensor set;
  for (size_t i = 0; i < o.metrics.size(); ++i) {
    auto* c = capability<MetricCalibration>(o.metrics[i].get(), kMetricCalibration);
    if (c == nullptr) continue;
    if (!set.defined()) set = calibration_set(spec, host, ctx, o);
    stage("metric '" + spec.eval.metrics[i].plugin + "'", [&] {
      const std::string account = c->calibrate(set);
      if (!account.empty())
        ctx.info(fmt::format("{} calibrated on the held-out data of seed {}: {}", spec.eval.metrics[i].plugin,
                             spec.eval.calibration_seed.value_or(spec.seed), account));
    });
  }
}

}  // namespace mfglab::engine
