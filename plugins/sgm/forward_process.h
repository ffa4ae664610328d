// Linear forward noising processes of the sgm plugin, all of the form
//   dY = k(t) Y dt + g(t) dW  on [0, T],   Y_t | Y_0 ~ N(alpha(t) Y_0, sigma(t)^2 I),
// with alpha = exp(int_0^t k) and sigma^2 solving (sigma^2)' = 2 k sigma^2 + g^2, sigma(0) = 0.
//
//   vp     k = -beta/2, g^2 = beta, beta(t) = beta_min + (beta_max - beta_min) t / T,
//          B(t) = int_0^t beta, alpha = exp(-B/2), sigma^2 = 1 - exp(-B); prior N(0, I).
//   subvp  same k and beta, g^2 = beta (1 - exp(-2B)), alpha = exp(-B/2),
//          sigma = 1 - exp(-B) (the standard deviation itself); prior N(0, I).
//   ve     k = 0, s(t) = sigma_min (sigma_max / sigma_min)^(t/T), g^2 = d s^2/dt.
//          Convention: the process starts from the clean data at t = 0, so
//          sigma(t)^2 = s(t)^2 - sigma_min^2 exactly (Song et al. use s(t) itself, treating
//          the data as already blurred by sigma_min; the two differ by sigma_min^2).
//          alpha = 1; prior N(0, sigma_max^2 I).
//   ou     k = -1/2, g = 1 (the MFG paper's setting): alpha = exp(-t/2),
//          sigma^2 = 1 - exp(-t); prior N(0, I), reached only approximately, so take T ~ 3.
// With T = 1 the vp schedule is the one of Song et al. 2021.
//
// Every coefficient is a template over double (the samplers' scalar times) and
// torch::Tensor (differentiable times [N, 1]), so the two can never disagree.
#pragma once

#include <cmath>
#include <string>
#include <type_traits>

#include <mfglab/plugin.h>

namespace sgm {

enum class ProcessKind { vp, subvp, ve, ou };

inline const mfglab::Choices<ProcessKind>& process_choices() {
  static const mfglab::Choices<ProcessKind> table{
      {"vp", ProcessKind::vp}, {"subvp", ProcessKind::subvp}, {"ve", ProcessKind::ve}, {"ou", ProcessKind::ou}};
  return table;
}

inline ProcessKind parse_process(const std::string& name) { return process_choices().value(name, "process"); }

namespace detail {
// exp, expm1, sqrt for both doubles and tensors, picked by overload resolution.
inline double exp_(double v) { return std::exp(v); }
inline double expm1_(double v) { return std::expm1(v); }
inline double sqrt_(double v) { return std::sqrt(v); }
inline torch::Tensor exp_(const torch::Tensor& v) { return torch::exp(v); }
inline torch::Tensor expm1_(const torch::Tensor& v) { return torch::expm1(v); }
inline torch::Tensor sqrt_(const torch::Tensor& v) { return torch::sqrt(v); }
// A constant with t's shape (a plain double for scalar t). For tensors it stays connected
// to t's graph (with a zero derivative), so callers may differentiate any coefficient in t.
template <class V>
V constant_like(const V& t, double c) {
  if constexpr (std::is_same_v<V, double>) return c;
  else return t * 0.0 + c;
}
}  // namespace detail

struct ForwardProcessSpec {
  ProcessKind kind = ProcessKind::vp;
  double T = 1.0;
  double beta_min = 0.1, beta_max = 20.0;     // vp, subvp
  double sigma_min = 0.01, sigma_max = 10.0;  // ve

  // Noise rate of vp/subvp and its integral B(t); OU is beta = 1.
  template <class V> V beta(const V& t) const {
    if (kind == ProcessKind::ou) return detail::constant_like(t, 1.0);
    return beta_min + (beta_max - beta_min) / T * t;
  }
  template <class V> V integral(const V& t) const {
    if (kind == ProcessKind::ou) return t;
    return t * (beta_min + 0.5 * (beta_max - beta_min) / T * t);
  }
  // log(sigma_max / sigma_min) / T: the VE rate of log s(t).
  double ve_rate() const { return std::log(sigma_max / sigma_min) / T; }

  // The drift is f(x, t) = k(t) x.
  template <class V> V drift_coef(const V& t) const {
    if (kind == ProcessKind::ve) return detail::constant_like(t, 0.0);
    return -0.5 * beta(t);
  }
  // g(t)^2.
  template <class V> V g2(const V& t) const {
    using namespace detail;
    switch (kind) {
      case ProcessKind::vp:
      case ProcessKind::ou: return beta(t);
      case ProcessKind::subvp: return -beta(t) * expm1_(-2.0 * integral(t));
      case ProcessKind::ve: {
        const double r = ve_rate();
        return (2.0 * r * sigma_min * sigma_min) * exp_((2.0 * r) * t);  // d/dt s(t)^2
      }
    }
    throw mfglab::Error("unreachable process");
  }
  template <class V> V alpha(const V& t) const {
    if (kind == ProcessKind::ve) return detail::constant_like(t, 1.0);
    return detail::exp_(-0.5 * integral(t));
  }
  // expm1 keeps sigma exact to rounding near t = 0, where it is tiny.
  template <class V> V sigma(const V& t) const {
    using namespace detail;
    switch (kind) {
      case ProcessKind::vp:
      case ProcessKind::ou: return sqrt_(-expm1_(-integral(t)));
      case ProcessKind::subvp: return -expm1_(-integral(t));
      case ProcessKind::ve: return sigma_min * sqrt_(expm1_((2.0 * ve_rate()) * t));
    }
    throw mfglab::Error("unreachable process");
  }
  // The prior at T is N(0, prior_std^2 I).
  double prior_std() const { return kind == ProcessKind::ve ? sigma_max : 1.0; }
  // log N(x; 0, prior_std^2 I) per row of x [N, d].
  torch::Tensor prior_log_density(const torch::Tensor& x) const {
    const double s = prior_std();
    const double d = static_cast<double>(x.size(1));
    return -0.5 * x.square().sum(1) / (s * s) - 0.5 * d * std::log(2 * M_PI * s * s);
  }
};

}  // namespace sgm
