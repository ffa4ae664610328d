// ODE solvers on tensors, differentiable (every stage is plain tensor arithmetic, so
// autograd can back-propagate through a solve: discretise-then-optimise). One step size
// serves the whole batch (the error norm is taken over every entry). Used by the cnf model
// and the nfe metric; header-only.
//
//   rk4     classical fourth-order Runge-Kutta with a fixed number of equal steps;
//   dopri5  Dormand-Prince 5(4) with FSAL, local extrapolation (the fifth-order solution is
//           kept), error control on the RMS norm of err / (atol + rtol max(|y0|, |y1|)),
//           Hairer's starting step size and step factor 0.9 err^(-1/5) clamped to [0.2, 10].
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>

#include "mfglab/flow.h"
#include "mfglab/sdk.h"

namespace mfglab::ode {

// f(y, t) -> dy/dt, same shape as y.
using Rhs = std::function<torch::Tensor(const torch::Tensor&, double)>;

struct SolveStats {
  int64_t nfe = 0;       // function evaluations
  int64_t accepted = 0;  // steps taken
  int64_t rejected = 0;  // dopri5 only
};

inline void check_finite(const torch::Tensor& y, const char* solver, int64_t step, double t) {
  if (!torch::isfinite(y).all().item<bool>())
    throw Error(std::string("non-finite state in ") + solver + " at step " + std::to_string(step) +
                " (t = " + std::to_string(t) + ")");
}

inline torch::Tensor rk4(const Rhs& f, torch::Tensor y, double t0, double t1, int64_t steps,
                         SolveStats* stats = nullptr) {
  if (steps < 1) throw Error("rk4: expected steps >= 1, got " + std::to_string(steps));
  const double h = (t1 - t0) / static_cast<double>(steps);
  for (int64_t k = 0; k < steps; ++k) {
    const double t = t0 + static_cast<double>(k) * h;
    y = rk4_step(f, y, t, h);
    check_finite(y, "rk4", k + 1, t + h);
  }
  if (stats) {
    stats->nfe += 4 * steps;
    stats->accepted += steps;
  }
  return y;
}

struct Dopri5Options {
  double rtol = 1e-5;
  double atol = 1e-5;
  int64_t max_steps = 1000;  // accepted + rejected
};

namespace detail {
// RMS over every entry of e / (atol + rtol * max(|a|, |b|)), as a double (no graph).
inline double scaled_rms(const torch::Tensor& e, const torch::Tensor& a, const torch::Tensor& b,
                         const Dopri5Options& o) {
  torch::NoGradGuard no_grad;
  auto scale = o.atol + o.rtol * torch::max(a.detach().abs(), b.detach().abs());
  return (e.detach() / scale).square().mean().sqrt().item<double>();
}
}  // namespace detail

inline torch::Tensor dopri5(const Rhs& f, torch::Tensor y, double t0, double t1,
                            const Dopri5Options& o, SolveStats* stats = nullptr) {
  if (!(o.rtol > 0) || !(o.atol > 0))
    throw Error("dopri5: expected rtol > 0 and atol > 0, got rtol = " + std::to_string(o.rtol) +
                ", atol = " + std::to_string(o.atol));
  if (o.max_steps < 1) throw Error("dopri5: expected max_steps >= 1");
  SolveStats local;
  SolveStats& s = stats ? *stats : local;
  if (t1 == t0) return y;
  const double dir = t1 > t0 ? 1.0 : -1.0;
  const double span = std::abs(t1 - t0);

  // Butcher tableau of Dormand and Prince (1980).
  constexpr double c2 = 1.0 / 5, c3 = 3.0 / 10, c4 = 4.0 / 5, c5 = 8.0 / 9;
  constexpr double a21 = 1.0 / 5;
  constexpr double a31 = 3.0 / 40, a32 = 9.0 / 40;
  constexpr double a41 = 44.0 / 45, a42 = -56.0 / 15, a43 = 32.0 / 9;
  constexpr double a51 = 19372.0 / 6561, a52 = -25360.0 / 2187, a53 = 64448.0 / 6561,
                   a54 = -212.0 / 729;
  constexpr double a61 = 9017.0 / 3168, a62 = -355.0 / 33, a63 = 46732.0 / 5247, a64 = 49.0 / 176,
                   a65 = -5103.0 / 18656;
  // Fifth-order weights (also row 7 of the tableau, hence FSAL).
  constexpr double b1 = 35.0 / 384, b3 = 500.0 / 1113, b4 = 125.0 / 192, b5 = -2187.0 / 6784,
                   b6 = 11.0 / 84;
  // Fifth minus fourth order weights: the local error estimate.
  constexpr double e1 = b1 - 5179.0 / 57600, e3 = b3 - 7571.0 / 16695, e4 = b4 - 393.0 / 640,
                   e5 = b5 - -92097.0 / 339200, e6 = b6 - 187.0 / 2100, e7 = -1.0 / 40;

  auto k1 = f(y, t0);
  s.nfe += 1;
  // Hairer, Norsett, Wanner, Solving ODEs I, II.4: a first step from the sizes of y and f.
  double h;
  {
    torch::NoGradGuard no_grad;
    const double d0 = detail::scaled_rms(y, y, y, o), d1 = detail::scaled_rms(k1, y, y, o);
    double h0 = (d0 < 1e-5 || d1 < 1e-5) ? 1e-6 : 0.01 * d0 / d1;
    h0 = std::min(h0, span);
    auto y1 = y.detach() + dir * h0 * k1.detach();
    auto f1 = f(y1, t0 + dir * h0).detach();
    s.nfe += 1;
    const double d2 = detail::scaled_rms(f1 - k1.detach(), y, y, o) / h0;
    const double dm = std::max(d1, d2);
    const double h1 = dm <= 1e-15 ? std::max(1e-6, h0 * 1e-3) : std::pow(0.01 / dm, 1.0 / 5);
    h = std::min({100 * h0, h1, span});
  }

  double t = t0;
  while (dir * (t1 - t) > 0) {
    if (s.accepted + s.rejected >= o.max_steps)
      throw Error("dopri5: no solution within max_steps = " + std::to_string(o.max_steps) +
                  " steps (reached t = " + std::to_string(t) + " of [" + std::to_string(t0) + ", " +
                  std::to_string(t1) + "], step size " + std::to_string(h) +
                  "); loosen rtol/atol or raise max_steps");
    // The last step lands exactly on t1.
    const bool last = h >= std::abs(t1 - t) * (1 - 1e-12);
    const double hs = last ? std::abs(t1 - t) : h;
    const double dt = dir * hs;
    auto k2 = f(y + dt * (a21 * k1), t + c2 * dt);
    auto k3 = f(y + dt * (a31 * k1 + a32 * k2), t + c3 * dt);
    auto k4 = f(y + dt * (a41 * k1 + a42 * k2 + a43 * k3), t + c4 * dt);
    auto k5 = f(y + dt * (a51 * k1 + a52 * k2 + a53 * k3 + a54 * k4), t + c5 * dt);
    auto k6 = f(y + dt * (a61 * k1 + a62 * k2 + a63 * k3 + a64 * k4 + a65 * k5), t + dt);
    auto y_new = y + dt * (b1 * k1 + b3 * k3 + b4 * k4 + b5 * k5 + b6 * k6);
    auto k7 = f(y_new, t + dt);
    s.nfe += 6;
    double err;
    {
      torch::NoGradGuard no_grad;
      auto e = dt * (e1 * k1.detach() + e3 * k3.detach() + e4 * k4.detach() + e5 * k5.detach() +
                     e6 * k6.detach() + e7 * k7.detach());
      err = detail::scaled_rms(e, y, y_new, o);
    }
    if (!std::isfinite(err))
      throw Error("non-finite state in dopri5 at step " + std::to_string(s.accepted + 1) +
                  " (t = " + std::to_string(t + dt) + ")");
    if (err <= 1.0) {
      t = last ? t1 : t + dt;
      y = y_new;
      k1 = k7;
      s.accepted += 1;
    } else {
      s.rejected += 1;
    }
    const double factor = err == 0 ? 10.0 : std::clamp(0.9 * std::pow(err, -0.2), 0.2, 10.0);
    h = hs * factor;
    if (h < 1e-12 * std::max(1.0, span))
      throw Error("dopri5: step size underflow at t = " + std::to_string(t));
  }
  return y;
}

}  // namespace mfglab::ode
