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

Dataset& Assembler::add_dataset(const PluginUse& use) {
  const std::string what = "dataset '" + use.plugin + "'";
  if (o_.dataset || o_.hamiltonian || o_.model) throw Error(what + ": the dataset comes first, and once");
  stage(what, [&] { o_.dataset = host_.create_as<Dataset>(use.plugin, MFGLAB_KIND_DATASET, use.params, ctx_); });
  stage(what, [&] {
    o_.train = o_.dataset->train().to(ctx_.dtype).contiguous();
    o_.test = o_.dataset->test().to(ctx_.dtype).contiguous();
    if (o_.train.dim() != 2 || o_.train.size(0) == 0)
      throw Error(fmt::format("train set must be a non-empty [N, d] tensor, got {}", c10::str(o_.train.sizes())));
    if (o_.test.dim() != 2 || o_.test.size(1) != o_.train.size(1)) throw Error("test set must be [M, d] with the train set's d");
  });
  ctx_.data_dim = o_.train.size(1);
  ctx_.dataset = o_.dataset.get();  // the model may use the dataset's capabilities (sgm's esm loss)
  return *o_.dataset;
}

Hamiltonian& Assembler::add_hamiltonian(const PluginUse& use) {
  const std::string what = "hamiltonian '" + use.plugin + "'";
  if (o_.hamiltonian || o_.model) throw Error(what + ": the Hamiltonian comes before the model, and once");
  stage(what, [&] { o_.hamiltonian = host_.create_as<Hamiltonian>(use.plugin, MFGLAB_KIND_HAMILTONIAN, use.params, ctx_); });
  ctx_.hamiltonian = o_.hamiltonian.get();
  return *o_.hamiltonian;
}

Model& Assembler::add_model(const PluginUse& use) {
  const std::string what = "model '" + use.plugin + "'";
  if (o_.model) throw Error(what + ": a run has one model");
  if (ctx_.data_dim <= 0) throw Error(what + ": the data dimension is not known (add the dataset first)");
  stage(what, [&] {
    // Everybody (the trainer, regularizers, metrics) sees the model through its contract checks.
    o_.model = std::make_unique<CheckedModel>(host_.create_as<Model>(use.plugin, MFGLAB_KIND_MODEL, use.params, ctx_), use.plugin,
                                              ctx_.data_dim, ctx_.dtype);
  });
  return *o_.model;
}

Regularizer& Assembler::add_regularizer(const PluginUse& use) {
  const std::string what = "regularizer '" + use.plugin + "'";
  if (!o_.model) throw Error(what + ": regularizers come after the model");
  stage(what, [&] { o_.regularizers.push_back(host_.create_as<Regularizer>(use.plugin, MFGLAB_KIND_REGULARIZER, use.params, ctx_)); });
  return *o_.regularizers.back();
}

Metric& Assembler::add_metric(const PluginUse& use) {
  const std::string what = "metric '" + use.plugin + "'";
  if (!o_.model) throw Error(what + ": metrics come after the model");
  stage(what, [&] { o_.metrics.push_back(host_.create_as<Metric>(use.plugin, MFGLAB_KIND_METRIC, use.params, ctx_)); });
  return *o_.metrics.back();
}

RunObjects assemble(const RunSpec& spec, const PluginHost& host, RunContext& ctx) {
  Assembler a(host, ctx);
  a.add_dataset(spec.dataset);
  if (spec.hamiltonian) a.add_hamiltonian(*spec.hamiltonian);
  a.add_model(spec.model);
  for (const auto& r : spec.regularizers) a.add_regularizer(r);
  for (const auto& m : spec.eval.metrics) a.add_metric(m);
  calibrate_metrics(spec, host, ctx, a.objects());
  return a.take();
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
