// Transport statistics of a model's flow on held-out data. The first m = min(max_points, M)
// reference points y_j are carried from t = 0 to T = horizon() along dx/dt = v + b by RK4
// with `steps` steps (mfglab::flow_path); along each path, with v the model's velocity
// (the control) and b its drift:
//   transport_cost = (1/m) sum_j int_0^T 1/2 |v(x_j(t), t)|^2 dt     (the kinetic energy)
//   path_length    = (1/m) sum_j int_0^T |v + b| dt
//   straightness   = (1/m) sum_j |x_j(T) - x_j(0)| / int_0^T |v + b| dt   (1 = straight lines)
// The time integrals use the path's nodes: composite Simpson for an even number of steps,
// the trapezoid rule otherwise. Paths shorter than 1e-12 count as straight.
#include <sstream>
#include <string>

#include <mfglab/flow.h>
#include <mfglab/plugin.h>

namespace {

using torch::Tensor;

const auto kSteps = mfglab::int_param("steps", 32, "RK4 steps of the paths (also the quadrature nodes)").at_least(1);
const auto kMaxPoints =
    mfglab::int_param("max_points", 2000, "use at most this many held-out points (the first ones)").at_least(1);

class Transport final : public mfglab::Metric {
 public:
  static constexpr const char* kBetter = "transport_cost=lower,path_length=lower,straightness=higher";  // for comparisons (manifest.h)

  Transport(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : steps_(params[kSteps]), max_points_(params[kMaxPoints]), options_(ctx.options()) {
    if (steps_ < 1) throw mfglab::Error("steps must be at least 1");
    if (max_points_ < 1) throw mfglab::Error("max_points must be at least 1");
  }

  mfglab::MetricValues evaluate(const mfglab::MetricInput& in) override {
    auto x0 = mfglab::flow_metric_start(in, max_points_, "transport").to(options_);
    torch::NoGradGuard no_grad;
    auto& model = *in.model;
    const double T = model.horizon();
    const int64_t n = x0.size(0);
    auto path = mfglab::flow_path(model, x0, 0.0, T, steps_);  // [K + 1, n, d]

    // Quadrature weights over the K + 1 nodes, times h.
    const double h = T / static_cast<double>(steps_);
    auto w = torch::ones({steps_ + 1}, torch::kFloat64);
    if (steps_ % 2 == 0) {
      for (int64_t k = 1; k < steps_; ++k) w[k] = (k % 2 == 1) ? 4.0 : 2.0;
      w = w * (h / 3);
    } else {
      w[0] = 0.5;
      w[steps_] = 0.5;
      w = w * h;
    }

    auto energy = torch::zeros({n}, torch::kFloat64);
    auto length = torch::zeros({n}, torch::kFloat64);
    for (int64_t k = 0; k <= steps_; ++k) {
      auto x = path[k];
      auto t = torch::full({n, 1}, static_cast<double>(k) * h, x.options());
      auto v = model.velocity(x, t).detach();
      auto speed = (v + model.drift(x, t).detach()).to(torch::kFloat64).norm(2, 1);
      const double wk = w[k].item<double>();
      energy += wk * 0.5 * v.to(torch::kFloat64).square().sum(1);
      length += wk * speed;
    }
    auto chord = (path[steps_] - path[0]).to(torch::kFloat64).norm(2, 1);
    auto straight = torch::where(length > 1e-12, chord / length.clamp_min(1e-12), torch::ones_like(length));
    if (!torch::isfinite(energy).all().item<bool>())
      throw mfglab::Error("transport: the velocity is not finite along the paths");
    return {{"transport_cost", energy.mean().item<double>()},
            {"path_length", length.mean().item<double>()},
            {"straightness", straight.mean().item<double>()}};
  }

 private:
  int64_t steps_, max_points_;
  torch::TensorOptions options_;
};

}  // namespace

MFGLAB_PLUGIN(Transport, MFGLAB_KIND_METRIC, "transport", "1.0.0",
              "Transport along the model's flow from held-out data (t = 0 to the horizon, RK4): "
              "transport_cost = mean int 1/2 |v|^2 dt, path_length = mean int |v + b| dt, "
              "straightness = mean |x(T) - x(0)| / path length (1 = straight lines)",
              "velocity", kSteps, kMaxPoints)
