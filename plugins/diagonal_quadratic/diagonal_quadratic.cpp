// Anisotropic quadratic Hamiltonian: running cost L(v) = sum_i lambda_i v_i^2 / 2, its
// Legendre dual H(p) = sum_i p_i^2 / (2 lambda_i), optimal control v*_i = -p_i / lambda_i.
// Moving along dimension i costs lambda_i. It declares that form
// (mfglab.hamiltonian_structure/1), so that models can use closed forms.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <mfglab/capabilities_mfg.h>
#include <mfglab/plugin.h>

namespace {

using mfglab::Error;

const auto kLambda =
    mfglab::numbers_param("lambda", {1.0}, "weights lambda_i of the kinetic cost (1 or d numbers)").above(0);

class DiagonalQuadratic final : public mfglab::Hamiltonian, public mfglab::HamiltonianStructure {
 public:
  DiagonalQuadratic(const mfglab::Params& params, const mfglab::RunContext& ctx) : lambdas_(params[kLambda]) {
    // One number means the same lambda in every dimension.
    if (lambdas_.size() == 1 && ctx.data_dim > 1) lambdas_.assign(ctx.data_dim, lambdas_[0]);
    if (ctx.data_dim > 0 && static_cast<int64_t>(lambdas_.size()) != ctx.data_dim)
      throw Error("lambda has " + std::to_string(lambdas_.size()) + " numbers; the data has dimension " +
                  std::to_string(ctx.data_dim) + " (give 1 or " + std::to_string(ctx.data_dim) + ")");
    for (double l : lambdas_)
      if (!(l > 0) || !std::isfinite(l)) throw Error("every lambda must be a finite number > 0");
  }

  torch::Tensor hamiltonian(const torch::Tensor&, const torch::Tensor& p) override {
    return (p.square() * inverse(p)).sum(1) * 0.5;
  }
  torch::Tensor optimal_control(const torch::Tensor&, const torch::Tensor& p) override {
    return -p * inverse(p);
  }
  torch::Tensor running_cost(const torch::Tensor&, const torch::Tensor& v) override {
    return (v.square() * weights(v)).sum(1) * 0.5;
  }

  void* capability(const char* id) override {
    if (std::strcmp(id, mfglab::kHamiltonianStructure) == 0) return static_cast<mfglab::HamiltonianStructure*>(this);
    return nullptr;
  }
  mfglab::HamiltonianKind kind() const override { return mfglab::HamiltonianKind::diagonal_quadratic; }
  double lambda(int64_t i) const override { return lambdas_.at(lambdas_.size() == 1 ? 0 : i); }

 private:
  // lambda_i as a row [1, d] of y's dtype, and 1 / lambda_i.
  torch::Tensor weights(const torch::Tensor& y) const {
    if (lambdas_.size() != 1 && y.size(1) != static_cast<int64_t>(lambdas_.size()))
      throw Error("diagonal_quadratic: lambda has " + std::to_string(lambdas_.size()) + " numbers, the input " +
                  std::to_string(y.size(1)) + " columns");
    return torch::tensor(lambdas_, y.options().dtype(torch::kFloat64)).to(y.scalar_type()).unsqueeze(0);
  }
  torch::Tensor inverse(const torch::Tensor& y) const { return weights(y).reciprocal(); }

  std::vector<double> lambdas_;
};

}  // namespace

MFGLAB_PLUGIN(DiagonalQuadratic, MFGLAB_KIND_HAMILTONIAN, "diagonal_quadratic", "1.0.0",
              "Anisotropic quadratic Hamiltonian H(p) = sum_i p_i^2/(2 lambda_i); running cost sum_i lambda_i/2 v_i^2",
              "", kLambda)
