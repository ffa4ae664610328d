// Negative log-likelihood of held-out data under the model, in nats:
//   NLL = -(1/m) Σ_j log p_model(y_j),  y_1..y_m the reference (test) set,
// with log p_model from the model's log_prob field, called on batches of `batch` points.
// Lower is better; for data of dimension d it estimates the cross-entropy H(p_data, p_model).
#include <mfglab/plugin.h>

#include <sstream>
#include <string>

namespace {

using torch::Tensor;

const auto kBatch = mfglab::int_param("batch", 1000, "points per log_prob call").at_least(1);

std::string shape(const Tensor& t) {
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

class Nll final : public mfglab::Metric {
 public:
  static constexpr const char* kBetter = "lower";  // for comparisons (manifest.h)

  Nll(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : batch_(params[kBatch]), options_(ctx.options()) {
    if (batch_ < 1) throw mfglab::Error("batch must be at least 1");
  }

  mfglab::MetricValues evaluate(const mfglab::MetricInput& in) override {
    if (in.model == nullptr)
      throw mfglab::Error(
          "nll needs the model's log_prob, but there is no model here (it cannot be computed "
          "from sample files: use it in an experiment's eval metrics)");
    if (!in.reference.defined() || in.reference.dim() != 2 || in.reference.size(0) == 0)
      throw mfglab::Error("nll needs held-out reference data of shape [m, d], m >= 1");

    // Gradients stay enabled: a model may compute its log-density with autograd (a
    // divergence along a flow, say). Each batch's graph is dropped with the batch.
    const auto data = in.reference.detach().to(options_);
    const int64_t m = data.size(0);
    double total = 0;
    for (int64_t i = 0; i < m; i += batch_) {
      auto x = data.slice(0, i, i + batch_);
      auto log_p = in.model->log_prob(x).detach();
      if (log_p.numel() != x.size(0))
        throw mfglab::Error("nll: the model's log_prob returned shape " + shape(log_p) +
                            " for a batch of " + std::to_string(x.size(0)) + " points");
      total -= log_p.to(torch::kFloat64).sum().item<double>();
    }
    return {{"nll", total / static_cast<double>(m)}};
  }

 private:
  int64_t batch_;
  torch::TensorOptions options_;
};

}  // namespace

MFGLAB_PLUGIN(Nll, MFGLAB_KIND_METRIC, "nll", "1.0.0",
              "Mean negative log-likelihood of the held-out data under the model, "
              "-(1/m) sum_j log p(y_j), in nats",
              "log_prob", kBatch)
