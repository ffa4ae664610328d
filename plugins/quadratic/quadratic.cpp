// Quadratic Hamiltonian: running cost L(v) = lambda/2 |v|^2, its Legendre dual
// H(p) = sup_v { -p.v - L(v) } = |p|^2 / (2 lambda), optimal control v* = -p / lambda.
#include <mfglab/plugin.h>

namespace {

class Quadratic final : public mfglab::Hamiltonian {
 public:
  Quadratic(const mfglab::Params& params, const mfglab::RunContext&)
      : lambda_(params.number("lambda")) {}

  torch::Tensor hamiltonian(const torch::Tensor&, const torch::Tensor& p) override {
    return p.pow(2).sum(1) / (2 * lambda_);
  }
  torch::Tensor optimal_control(const torch::Tensor&, const torch::Tensor& p) override {
    return -p / lambda_;
  }
  torch::Tensor running_cost(const torch::Tensor&, const torch::Tensor& v) override {
    return 0.5 * lambda_ * v.pow(2).sum(1);
  }

 private:
  double lambda_;
};

}  // namespace

MFGLAB_PLUGIN(Quadratic, MFGLAB_KIND_HAMILTONIAN, "quadratic", "1.0.0",
              "Quadratic Hamiltonian H(p) = |p|^2/(2 lambda); running cost lambda/2 |v|^2", "",
              mfglab::number_param("lambda", 1.0, "weight of the kinetic running cost").above(0))
