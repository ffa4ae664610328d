// L^p Hamiltonian: running cost L(v) = |v|^p / p, its Legendre dual
//   H(q) = sup_v { -q.v - L(v) } = |q|^p* / p*,   1/p + 1/p* = 1,
// and optimal control v* = -dH/dq = -|q|^(p*-2) q. p = 2 is the quadratic Hamiltonian
// with lambda = 1.
#include <cmath>
#include <string>

#include <mfglab/plugin.h>

namespace {

using mfglab::Error;

const auto kP = mfglab::number_param("p", 2.0, "exponent p of the running cost |v|^p/p; p = 2 is quadratic").above(1);

// |y|^e / scale, row-wise, written so that y = 0 is safe for the value and the gradient:
// powers of |y|^2 with a zero base would give 0 * inf = NaN in the backward pass, so zero
// rows are routed to a constant branch (the true gradient there is 0 for every e > 1).
torch::Tensor norm_power(const torch::Tensor& y, double e, double scale) {
  auto n2 = y.square().sum(1);
  auto positive = n2 > 0;
  auto safe = torch::where(positive, n2, torch::ones_like(n2));
  return torch::where(positive, safe.pow(0.5 * e) / scale, torch::zeros_like(n2));
}

class Lp final : public mfglab::Hamiltonian {
 public:
  Lp(const mfglab::Params& params, const mfglab::RunContext&)
      : p_(params[kP]), q_(p_ / (p_ - 1)) {
    // The declared bound (p > 1) is enforced by the host; repeated because p = 1 would
    // divide by zero in p* and make H infinite away from the origin.
    if (!(p_ > 1) || !std::isfinite(p_))
      throw Error("p (" + std::to_string(p_) + ") must be a finite number greater than 1");
  }

  torch::Tensor hamiltonian(const torch::Tensor&, const torch::Tensor& q) override {
    return norm_power(q, q_, q_);
  }

  torch::Tensor optimal_control(const torch::Tensor&, const torch::Tensor& q) override {
    // -|q|^(p*-2) q: for p* < 2 the factor blows up at q = 0 while the product tends to 0,
    // so zero rows get factor 0 instead of inf * 0.
    auto n2 = q.square().sum(1, /*keepdim=*/true);
    auto positive = n2 > 0;
    auto safe = torch::where(positive, n2, torch::ones_like(n2));
    auto factor = torch::where(positive, safe.pow(0.5 * (q_ - 2)), torch::zeros_like(n2));
    return -factor * q;
  }

  torch::Tensor running_cost(const torch::Tensor&, const torch::Tensor& v) override {
    return norm_power(v, p_, p_);
  }

 private:
  double p_;  // exponent of the running cost
  double q_;  // conjugate exponent p* = p / (p - 1)
};

}  // namespace

MFGLAB_PLUGIN(Lp, MFGLAB_KIND_HAMILTONIAN, "lp", "1.0.0",
              "L^p Hamiltonian H(q) = |q|^p*/p* (1/p + 1/p* = 1); running cost |v|^p/p", "", kP)
