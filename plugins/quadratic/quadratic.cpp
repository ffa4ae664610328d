// Quadratic Hamiltonian: running cost L(v) = lambda/2 |v|^2, its Legendre dual
// H(p) = sup_v { -p.v - L(v) } = |p|^2 / (2 lambda), optimal control v* = -p / lambda.
// It declares that form (mfglab.hamiltonian_structure/1), so that models can use closed forms.
#include <cstring>

#include <mfglab/capabilities_mfg.h>
#include <mfglab/plugin.h>

namespace {

const auto kLambda = mfglab::number_param("lambda", 1.0, "weight of the kinetic running cost").above(0);

class Quadratic final : public mfglab::Hamiltonian, public mfglab::HamiltonianStructure {
 public:
  Quadratic(const mfglab::Params& params, const mfglab::RunContext&)
      : lambda_(params[kLambda]) {}

  torch::Tensor hamiltonian(const torch::Tensor&, const torch::Tensor& p) override {
    return p.pow(2).sum(1) / (2 * lambda_);
  }
  torch::Tensor optimal_control(const torch::Tensor&, const torch::Tensor& p) override {
    return -p / lambda_;
  }
  torch::Tensor running_cost(const torch::Tensor&, const torch::Tensor& v) override {
    return 0.5 * lambda_ * v.pow(2).sum(1);
  }

  void* capability(const char* id) override {
    if (std::strcmp(id, mfglab::kHamiltonianStructure) == 0) return static_cast<mfglab::HamiltonianStructure*>(this);
    return nullptr;
  }
  mfglab::HamiltonianKind kind() const override { return mfglab::HamiltonianKind::isotropic_quadratic; }
  double lambda(int64_t) const override { return lambda_; }

 private:
  double lambda_;
};

}  // namespace

MFGLAB_PLUGIN(Quadratic, MFGLAB_KIND_HAMILTONIAN, "quadratic", "1.0.0",
              "Quadratic Hamiltonian H(p) = |p|^2/(2 lambda); running cost lambda/2 |v|^2", "", kLambda)
