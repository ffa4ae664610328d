// Fixed-step RK4 and adaptive Dormand-Prince 5(4) for dy/dt = f(t, y) on one tensor y,
// integrating from t0 to t1 in either direction. One step size serves the whole batch
// (the error norm is taken over every element), as in torchdiffeq.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <string>

#include <mfglab/plugin.h>

namespace sgm {

using OdeFunction = std::function<torch::Tensor(double t, const torch::Tensor& y)>;

inline torch::Tensor rk4(const OdeFunction& f, torch::Tensor y, double t0, double t1, int64_t steps) {
  const double h = (t1 - t0) / static_cast<double>(steps);
  for (int64_t k = 0; k < steps; ++k) {
    const double t = t0 + static_cast<double>(k) * h;
    auto k1 = f(t, y);
    auto k2 = f(t + 0.5 * h, y + (0.5 * h) * k1);
    auto k3 = f(t + 0.5 * h, y + (0.5 * h) * k2);
    auto k4 = f(t + h, y + h * k3);
    y = y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4);
  }
  return y;
}

struct Dopri5Options {
  double rtol = 1e-5, atol = 1e-5;
  int64_t max_steps = 100000;  // accepted plus rejected; guards against a stiff field
};

// Returns y(t1). `steps_taken`, when given, receives the number of accepted steps.
inline torch::Tensor dopri5(const OdeFunction& f, torch::Tensor y, double t0, double t1,
                            const Dopri5Options& opt, int64_t* steps_taken = nullptr) {
  // Dormand-Prince tableau; b is the 5th-order solution (also the 7th stage: FSAL),
  // e = b - b*, the difference to the embedded 4th-order one.
  static const double c[7] = {0, 1.0 / 5, 3.0 / 10, 4.0 / 5, 8.0 / 9, 1, 1};
  static const double a[7][6] = {
      {},
      {1.0 / 5},
      {3.0 / 40, 9.0 / 40},
      {44.0 / 45, -56.0 / 15, 32.0 / 9},
      {19372.0 / 6561, -25360.0 / 2187, 64448.0 / 6561, -212.0 / 729},
      {9017.0 / 3168, -355.0 / 33, 46732.0 / 5247, 49.0 / 176, -5103.0 / 18656},
      {35.0 / 384, 0, 500.0 / 1113, 125.0 / 192, -2187.0 / 6784, 11.0 / 84}};
  static const double e[7] = {71.0 / 57600,  0,          -71.0 / 16695, 71.0 / 1920,
                              -17253.0 / 339200, 22.0 / 525, -1.0 / 40};

  const double span = t1 - t0;
  if (steps_taken) *steps_taken = 0;
  if (span == 0) return y;
  const double dir = span > 0 ? 1.0 : -1.0;
  auto rms = [](const torch::Tensor& v) { return std::sqrt(v.square().mean().item<double>()); };

  // Initial step after Hairer, Norsett & Wanner (II.4): a step that moves y by about 1%
  // of its own scale.
  auto k1 = f(t0, y);
  auto scale0 = opt.atol + opt.rtol * y.abs();
  const double d0 = rms(y / scale0), d1 = rms(k1 / scale0);
  double h = (d0 < 1e-5 || d1 < 1e-5) ? 1e-6 : 0.01 * d0 / d1;
  h = std::min(h, std::abs(span));

  double t = t0;
  int64_t attempts = 0, accepted = 0;
  while (dir * (t1 - t) > 0) {
    if (++attempts > opt.max_steps)
      throw mfglab::Error("dopri5 needed more than " + std::to_string(opt.max_steps) +
                          " steps (at t = " + std::to_string(t) +
                          "); loosen rtol/atol or use ode_solver rk4");
    h = std::min(h, dir * (t1 - t));  // land on t1 exactly
    const double hs = dir * h;
    std::array<torch::Tensor, 7> k;
    k[0] = k1;
    for (int s = 1; s < 6; ++s) {
      auto ys = y.clone();
      for (int j = 0; j < s; ++j)
        if (a[s][j] != 0) ys.add_(k[j], hs * a[s][j]);
      k[s] = f(t + c[s] * hs, ys);
    }
    // The 5th-order solution is the last stage's argument (FSAL: its slope starts the
    // next step).
    auto y_new = y.clone();
    for (int j = 0; j < 6; ++j)
      if (a[6][j] != 0) y_new.add_(k[j], hs * a[6][j]);
    k[6] = f(t + hs, y_new);
    auto err = torch::zeros_like(y);
    for (int j = 0; j < 7; ++j)
      if (e[j] != 0) err.add_(k[j], hs * e[j]);
    auto scale = opt.atol + opt.rtol * torch::max(y.abs(), y_new.abs());
    const double norm = rms(err / scale);
    if (!std::isfinite(norm))
      throw mfglab::Error("dopri5: the vector field is not finite at t = " + std::to_string(t));
    if (norm <= 1.0) {
      t += hs;
      y = y_new;
      k1 = k[6];
      ++accepted;
    }
    // Standard controller with safety 0.9, growth limited to [0.2, 10].
    const double factor = norm == 0 ? 10.0 : std::clamp(0.9 * std::pow(norm, -0.2), 0.2, 10.0);
    h *= factor;
  }
  if (steps_taken) *steps_taken = accepted;
  return y;
}

}  // namespace sgm
