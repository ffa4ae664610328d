// Builds the plugin objects of one run from its RunSpec, in the order the SDK promises:
// dataset, Hamiltonian, model, regularizers, metrics. The trainer and the tests use it.
#pragma once

#include <memory>
#include <vector>

#include <mfglab/sdk.h>

#include "experiment.h"

namespace mfglab::engine {

class PluginHost;

// Everything a run creates, in creation order (destroyed in reverse: metrics before the
// model, the model before the Hamiltonian it may hold).
struct RunObjects {
  std::unique_ptr<Dataset> dataset;
  std::unique_ptr<Hamiltonian> hamiltonian;
  std::unique_ptr<Model> model;
  std::vector<std::unique_ptr<Regularizer>> regularizers;
  std::vector<std::unique_ptr<Metric>> metrics;
  torch::Tensor train, test;  // the dataset's splits in the run's dtype, [N, d] and [M, d]
};

// Builds a run's objects one at a time, in the order the SDK promises: the dataset (which sets
// ctx.data_dim and ctx.dataset), the Hamiltonian (ctx.hamiltonian), the model (wrapped in its
// contract checks, checked_model.h), then regularizers and metrics, which see the model.
// assemble() is these steps for a whole RunSpec; tests that need part of a run (a model at a
// given dimension without data, say) use them directly. A step out of order, or a plugin that
// fails, throws mfglab::Error naming the plugin.
class Assembler {
 public:
  Assembler(const PluginHost& host, RunContext& ctx) : host_(host), ctx_(ctx) {}
  Dataset& add_dataset(const PluginUse& use);
  Hamiltonian& add_hamiltonian(const PluginUse& use);
  // Needs ctx.data_dim: from the dataset, or set by the caller when there is none.
  Model& add_model(const PluginUse& use);
  Regularizer& add_regularizer(const PluginUse& use);
  Metric& add_metric(const PluginUse& use);

  RunObjects& objects() { return o_; }
  RunObjects take() { return std::move(o_); }

 private:
  const PluginHost& host_;
  RunContext& ctx_;
  RunObjects o_;
};

// Creates the run's plugins; `ctx` must hold the generator, dtype, threads, output folder and
// logger. Sets ctx.data_dim, ctx.dataset and ctx.hamiltonian as the objects appear. Throws
// mfglab::Error naming the plugin that failed.
RunObjects assemble(const RunSpec& spec, const PluginHost& host, RunContext& ctx);

// Calls calibrate() on every metric that offers "mfglab.metric_calibration/1", with the
// held-out data of spec.eval.calibration_seed (a second dataset object when that is not the
// run's own seed); assemble() does this once the metrics exist.
void calibrate_metrics(const RunSpec& spec, const PluginHost& host, RunContext& ctx, RunObjects& o);
torch::Tensor calibration_set(const RunSpec& spec, const PluginHost& host, const RunContext& ctx, const RunObjects& o);

// The run's configuration with every plugin's parameter defaults filled in (config.json).
nlohmann::json resolved_config(const RunSpec& spec, const PluginHost& host);

}  // namespace mfglab::engine
