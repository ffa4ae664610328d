// How hard the model's flow is to integrate: the number of function evaluations (NFE) an
// adaptive solver needs to carry held-out points from t = 0 to the horizon along
// dx/dt = v(x, t) + b(x, t). The first m = min(max_points, M) reference points are solved
// together by Dormand-Prince 5(4) (<mfglab/ode.h>: one step size for the batch, error
// control on the RMS of err / (atol + rtol max(|y0|, |y1|)), as torchdiffeq does), so
//   nfe           = evaluations of the field, the first-step estimate included
//   nfe_rejected  = rejected steps.
// Straighter, smoother flows need fewer; the figure depends on rtol/atol and on the batch
// (its hardest points set the step size), so compare it only at equal settings.
#include <mfglab/flow.h>
#include <mfglab/ode.h>
#include <mfglab/plugin.h>

namespace {

const auto kMaxPoints = mfglab::int_param("max_points", 1000, "held-out points solved together").at_least(1);
const auto kRtol = mfglab::number_param("rtol", 1e-5, "relative tolerance").above(0);
const auto kAtol = mfglab::number_param("atol", 1e-5, "absolute tolerance").above(0);
const auto kMaxSteps =
    mfglab::int_param("max_steps", 10000, "accepted plus rejected steps before the solve is given up").at_least(1);

class Nfe final : public mfglab::Metric {
 public:
  static constexpr const char* kBetter = "nfe=lower,nfe_rejected=lower";  // for comparisons (manifest.h)

  Nfe(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : max_points_(params[kMaxPoints]), options_(ctx.options()) {
    dopri_.rtol = params[kRtol];
    dopri_.atol = params[kAtol];
    dopri_.max_steps = params[kMaxSteps];
  }

  mfglab::MetricValues evaluate(const mfglab::MetricInput& in) override {
    auto x0 = mfglab::flow_metric_start(in, max_points_, "nfe").to(options_);
    torch::NoGradGuard no_grad;
    auto& model = *in.model;
    auto field = [&](const torch::Tensor& x, double t) { return mfglab::flow_field(model, x, t); };
    mfglab::ode::SolveStats stats;
    mfglab::ode::dopri5(field, x0, 0.0, model.horizon(), dopri_, &stats);
    return {{"nfe", static_cast<double>(stats.nfe)}, {"nfe_rejected", static_cast<double>(stats.rejected)}};
  }

 private:
  int64_t max_points_;
  torch::TensorOptions options_;
  mfglab::ode::Dopri5Options dopri_;
};

}  // namespace

MFGLAB_PLUGIN(Nfe, MFGLAB_KIND_METRIC, "nfe", "1.0.0",
              "Function evaluations of an adaptive solver (dopri5) carrying held-out points along the model's "
              "flow from t = 0 to its horizon (nfe), and its rejected steps (nfe_rejected)",
              "velocity", kMaxPoints, kRtol, kAtol, kMaxSteps)
