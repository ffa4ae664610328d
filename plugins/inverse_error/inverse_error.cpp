// Invertibility of a model's flow on held-out data: with f the map from t = 0 to
// T = horizon() and f^-1 the map back, on the first m = min(max_points, M) reference
// points y_j,
//   inverse_error_mean = (1/m) sum_j |y_j - f^-1(f(y_j))|,   inverse_error_max = max_j of the same.
// f is the model's own solver when it offers the "mfglab.flow_map/1" capability, otherwise
// RK4 with `steps` steps on dx/dt = v + b (mfglab::flow_path). For an exact flow both are
// zero; what remains measures the solver's error (and a map's lack of invertibility).
#include <string>

#include <mfglab/flow.h>
#include <mfglab/plugin.h>

namespace {

using torch::Tensor;

const auto kSteps = mfglab::int_param("steps", 32, "RK4 steps each way when the model offers no flow map").at_least(1);
const auto kMaxPoints =
    mfglab::int_param("max_points", 2000, "use at most this many held-out points (the first ones)").at_least(1);

class InverseError final : public mfglab::Metric {
 public:
  static constexpr const char* kBetter = "lower";  // for comparisons (manifest.h)

  InverseError(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : steps_(params[kSteps]), max_points_(params[kMaxPoints]), options_(ctx.options()) {
    if (steps_ < 1) throw mfglab::Error("steps must be at least 1");
    if (max_points_ < 1) throw mfglab::Error("max_points must be at least 1");
  }

  mfglab::MetricValues evaluate(const mfglab::MetricInput& in) override {
    auto x = mfglab::flow_metric_start(in, max_points_, "inverse_error").to(options_);
    torch::NoGradGuard no_grad;
    auto& model = *in.model;
    const double T = model.horizon();
    Tensor back;
    if (auto* map = mfglab::capability<mfglab::FlowMap>(&model, mfglab::kFlowMap)) {
      back = map->transport(map->transport(x, 0.0, T), T, 0.0);
    } else {
      auto z = mfglab::flow_path(model, x, 0.0, T, steps_)[steps_];
      back = mfglab::flow_path(model, z, T, 0.0, steps_)[steps_];
    }
    auto err = (back.to(torch::kFloat64) - x.to(torch::kFloat64)).norm(2, 1);
    if (!torch::isfinite(err).all().item<bool>())
      throw mfglab::Error("inverse_error: the flow returned non-finite points");
    return {{"inverse_error_mean", err.mean().item<double>()},
            {"inverse_error_max", err.max().item<double>()}};
  }

 private:
  int64_t steps_, max_points_;
  torch::TensorOptions options_;
};

}  // namespace

MFGLAB_PLUGIN(InverseError, MFGLAB_KIND_METRIC, "inverse_error", "1.0.0",
              "Invertibility of the flow f from t = 0 to the horizon on held-out points: mean and max "
              "|x - f^-1(f(x))| (f = the model's flow_map capability, else RK4 with `steps` steps)",
              "velocity", kSteps, kMaxPoints)
