// Energies E(rho) on densities and their first variations, for models that treat E as a
// terminal cost (a JKO step, the terminal KL of a normalizing flow) or as a gradient-flow
// energy. Header-only; include it next to <mfglab/sdk.h>.
//
// An energy is estimated from samples x ~ rho ([N, d]) and their log-density log rho(x)
// ([N]); both may carry autograd graphs, and the value is differentiable in both.
//
//   kl            E(rho) = E_rho[log rho - log pi]          dE/drho = log rho - log pi + 1
//   cross_entropy E(rho) = -E_rho[log pi]                    dE/drho = -log pi
//   free_energy   E(rho) = E_rho[V] + D E_rho[log rho]      dE/drho = V + D (log rho + 1)
//
// pi is a target with a known log-density (a standard normal, a Gaussian, or a dataset's
// "mfglab.exact_density/1"); V is a potential (-log pi by default, or any function). The
// Wasserstein gradient flow of each is d rho/dt = div(rho grad dE/drho): kl and free_energy
// with V = -log pi, D = 1 give the Fokker-Planck equation whose stationary law is pi;
// free_energy with temperature D has stationary law proportional to exp(-V / D).
#pragma once

#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "mfglab/sdk.h"

namespace mfglab::energy {

// x [N, d] -> a per-point scalar [N]; differentiable in x.
using PointFunction = std::function<torch::Tensor(const torch::Tensor&)>;

// log N(x; 0, I), [N].
inline torch::Tensor standard_normal_log_density(const torch::Tensor& x) {
  return -0.5 * x.square().sum(1) - 0.5 * static_cast<double>(x.size(1)) * std::log(2 * M_PI);
}

// log N(x; mean, diag(std^2)) with mean and std [d] (or broadcastable to it).
inline PointFunction diagonal_gaussian_log_density(torch::Tensor mean, torch::Tensor std) {
  return [mean = std::move(mean), std = std::move(std)](const torch::Tensor& x) {
    auto m = mean.to(x.options()), s = std.to(x.options());
    const double d = static_cast<double>(x.size(1));
    auto log_det = (s.numel() == 1 ? s.log() * d : s.log().sum());
    return -0.5 * ((x - m) / s).square().sum(1) - log_det - 0.5 * d * std::log(2 * M_PI);
  };
}

// The data law of a dataset with "mfglab.exact_density/1" (alpha = 1, sigma = 0). The
// dataset must outlive the returned function.
inline PointFunction exact_density_log_density(ExactDensity& density) {
  return [&density](const torch::Tensor& x) {
    auto one = torch::ones({}, x.options()), zero = torch::zeros({}, x.options());
    return density.log_density(x, one, zero).to(x.scalar_type());
  };
}

class Energy {
 public:
  virtual ~Energy() = default;
  // E(rho) from samples x ~ rho and log rho(x): a scalar.
  virtual torch::Tensor value(const torch::Tensor& x, const torch::Tensor& log_rho) const = 0;
  // The first variation dE/drho(rho) at the points x, [N].
  virtual torch::Tensor first_variation(const torch::Tensor& x, const torch::Tensor& log_rho) const = 0;
  // Whether the energy needs log rho (an entropy part); when false, log_rho may be undefined.
  virtual bool needs_log_density() const = 0;
  virtual std::string name() const = 0;
};

class KL final : public Energy {
 public:
  explicit KL(PointFunction log_target) : log_target_(std::move(log_target)) {}
  torch::Tensor value(const torch::Tensor& x, const torch::Tensor& log_rho) const override {
    return (log_rho - log_target_(x)).mean();
  }
  torch::Tensor first_variation(const torch::Tensor& x, const torch::Tensor& log_rho) const override {
    return log_rho - log_target_(x) + 1.0;
  }
  bool needs_log_density() const override { return true; }
  std::string name() const override { return "kl"; }

 private:
  PointFunction log_target_;
};

class CrossEntropy final : public Energy {
 public:
  explicit CrossEntropy(PointFunction log_target) : log_target_(std::move(log_target)) {}
  torch::Tensor value(const torch::Tensor& x, const torch::Tensor&) const override {
    return -log_target_(x).mean();
  }
  torch::Tensor first_variation(const torch::Tensor& x, const torch::Tensor&) const override {
    return -log_target_(x);
  }
  bool needs_log_density() const override { return false; }
  std::string name() const override { return "cross_entropy"; }

 private:
  PointFunction log_target_;
};

// Potential energy plus D times the (negative) entropy: the Fokker-Planck free energy.
class FreeEnergy final : public Energy {
 public:
  FreeEnergy(PointFunction potential, double temperature)
      : potential_(std::move(potential)), D_(temperature) {
    if (!(temperature >= 0) || !std::isfinite(temperature))
      throw Error("free energy: the temperature must be a finite number >= 0, got " + std::to_string(temperature));
  }
  torch::Tensor value(const torch::Tensor& x, const torch::Tensor& log_rho) const override {
    auto v = potential_(x).mean();
    return D_ > 0 ? v + D_ * log_rho.mean() : v;
  }
  torch::Tensor first_variation(const torch::Tensor& x, const torch::Tensor& log_rho) const override {
    auto v = potential_(x);
    return D_ > 0 ? v + D_ * (log_rho + 1.0) : v;
  }
  bool needs_log_density() const override { return D_ > 0; }
  std::string name() const override { return "free_energy"; }

 private:
  PointFunction potential_;
  double D_;
};

// The potential V = -log pi of a target density.
inline PointFunction potential_of(PointFunction log_target) {
  return [log_target = std::move(log_target)](const torch::Tensor& x) { return -log_target(x); };
}

// Picks an energy by name ("kl", "cross_entropy", "free_energy"); free_energy uses
// V = -log pi and the given temperature.
inline std::unique_ptr<Energy> make(const std::string& name, PointFunction log_target, double temperature = 1.0) {
  if (name == "kl") return std::make_unique<KL>(std::move(log_target));
  if (name == "cross_entropy") return std::make_unique<CrossEntropy>(std::move(log_target));
  if (name == "free_energy") return std::make_unique<FreeEnergy>(potential_of(std::move(log_target)), temperature);
  throw Error("unknown energy '" + name + "' (expected kl|cross_entropy|free_energy)");
}

}  // namespace mfglab::energy
