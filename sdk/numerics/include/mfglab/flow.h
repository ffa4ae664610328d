// Particle paths of a model's deterministic dynamics dx/dt = v(x, t) + b(x, t), for figures
// and metrics. Header-only; uses only the Model interface.
#pragma once

#include <string>

#include "mfglab/sdk.h"

namespace mfglab {

// One classical RK4 step of dy/dt = f(y, t) from (y, t) with step h (h < 0 goes backwards).
template <typename F>
torch::Tensor rk4_step(F&& f, const torch::Tensor& y, double t, double h) {
  auto k1 = f(y, t);
  auto k2 = f(y + (h / 2) * k1, t + h / 2);
  auto k3 = f(y + (h / 2) * k2, t + h / 2);
  auto k4 = f(y + h * k3, t + h);
  return y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4);
}

// The classical RK4 path of dx/dt = model.velocity(x, t) + model.drift(x, t) from x0 [N, d]
// at t0 to t1 (t1 < t0 integrates backwards) with `steps` equal steps: [steps + 1, N, d],
// entry k at time t0 + k (t1 - t0) / steps, entry 0 being x0. The diffusion is ignored.
// Runs without autograd (the fields are called under a NoGradGuard; a model that needs
// autograd inside velocity() must enable it there itself) and returns a detached tensor.
// Throws mfglab::Error on bad shapes or a non-finite state, naming the step and its time.
// The deterministic field dx/dt = v(x, t) + b(x, t) of a batch x [N, d] at time t, detached.
inline torch::Tensor flow_field(Model& model, const torch::Tensor& x, double t) {
  auto tt = torch::full({x.size(0), 1}, t, x.options());
  return (model.velocity(x, tt) + model.drift(x, tt)).detach();
}

inline torch::Tensor flow_path(Model& model, const torch::Tensor& x0, double t0, double t1,
                               int64_t steps) {
  if (steps < 1) throw Error("flow_path: expected steps >= 1, got " + std::to_string(steps));
  if (!x0.defined() || x0.dim() != 2)
    throw Error("flow_path: expected starting points of shape [N, d]");
  torch::NoGradGuard no_grad;
  const int64_t n = x0.size(0);
  const double h = (t1 - t0) / static_cast<double>(steps);
  auto field = [&](const torch::Tensor& x, double t) { return flow_field(model, x, t); };
  auto path = torch::empty({steps + 1, n, x0.size(1)}, x0.options());
  torch::Tensor x = x0.detach();
  path[0].copy_(x);
  for (int64_t k = 0; k < steps; ++k) {
    const double t = t0 + static_cast<double>(k) * h;
    x = rk4_step(field, x, t, h);
    if (!torch::isfinite(x).all().item<bool>())
      throw Error("flow_path: non-finite state at RK4 step " + std::to_string(k + 1) + " of " +
                  std::to_string(steps) + " (t = " + std::to_string(t + h) + ")");
    path[k + 1].copy_(x);
  }
  return path;
}

// For metrics that follow the model's flow from held-out points: the first `max_points`
// of them, detached; clear errors (naming `metric`) without a model or held-out data.
inline torch::Tensor flow_metric_start(const MetricInput& in, int64_t max_points, const std::string& metric) {
  if (in.model == nullptr)
    throw Error(metric + " follows the model's flow, but there is no model here (it cannot be computed "
                "from sample files: use it in an experiment's eval metrics)");
  if (!in.reference.defined() || in.reference.dim() != 2 || in.reference.size(0) == 0)
    throw Error(metric + " needs held-out reference data of shape [m, d], m >= 1");
  return in.reference.detach().slice(0, 0, max_points);
}

}  // namespace mfglab
