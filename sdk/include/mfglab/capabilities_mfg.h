// Optional capabilities of the MFG view of a model or a Hamiltonian (Plugin::capability),
// beside those declared in <mfglab/sdk.h>. Header-only; include it next to <mfglab/sdk.h>.
#pragma once

#include <cstdint>
#include <vector>

#include "mfglab/sdk.h"

namespace mfglab {

// "mfglab.objective_weights/1", offered by models that train on a weighted form of the
// game's cost (DESIGN.md section 2),
//
//   J = alpha_L E int_0^T L(X_t, v_t) dt + alpha_C G(rho_T)   (+ terms that vanish at the
//                                                               optimum, e.g. an HJB penalty),
//
// while their value field is normalised by the running cost: v = -dH/dp(x, grad Phi), Phi
// = model.value (OT-Flow: v = -grad Phi / lambda). The value function of J is then
// U = alpha_L Phi, and Phi solves
//
//   -d_t Phi + H(x, grad Phi) - b.grad Phi - sigma^2/2 Lap Phi = 0   (the unweighted HJB:
//      H_alpha(p) = alpha_L H(p / alpha_L) is the Hamiltonian of alpha_L L),
//   Phi(., T) = (alpha_C / alpha_L) dG/drho(rho_T)                   (the terminal condition).
//
// So the HJB residual needs no weights, the terminal condition does. A model without this
// capability has weights (1, 1).
class ObjectiveWeights {
 public:
  virtual ~ObjectiveWeights() = default;
  virtual double running_cost_weight() const = 0;   // alpha_L >= 0
  virtual double terminal_cost_weight() const = 0;  // alpha_C >= 0
};
inline constexpr const char* kObjectiveWeights = "mfglab.objective_weights/1";

// (alpha_L, alpha_C) of a model: its capability's, or (1, 1) when it has none.
struct ObjectiveWeightValues {
  double running = 1.0;
  double terminal = 1.0;
};
inline ObjectiveWeightValues objective_weights(Plugin* model) {
  if (auto* w = capability<ObjectiveWeights>(model, kObjectiveWeights))
    return {w->running_cost_weight(), w->terminal_cost_weight()};
  return {};
}

// "mfglab.hamiltonian_structure/1", offered by Hamiltonians that know their own form, so that
// a model can take a closed-form path instead of differentiating H. The kinds:
//
//   isotropic_quadratic   H(x, p) = |p|^2 / (2 lambda),           v* = -p / lambda
//   diagonal_quadratic    H(x, p) = sum_i p_i^2 / (2 lambda_i),   v*_i = -p_i / lambda_i
//   general               anything else (the same as not offering the capability)
//
// with running cost L(v) = sum_i lambda_i v_i^2 / 2 and no dependence on x. lambda(i) is
// lambda_i for dimension i (the same for every i when isotropic); every lambda_i > 0. A
// Hamiltonian offers it from capability():
//
//   void* capability(const char* id) override {
//     return std::strcmp(id, mfglab::kHamiltonianStructure) == 0
//                ? static_cast<mfglab::HamiltonianStructure*>(this) : nullptr;
//   }
//
// The declaration is a promise about values: a model may use it or not, and its results must
// agree either way up to rounding.
enum class HamiltonianKind : int { general = 0, isotropic_quadratic = 1, diagonal_quadratic = 2 };
class HamiltonianStructure {
 public:
  virtual ~HamiltonianStructure() = default;
  virtual HamiltonianKind kind() const = 0;
  virtual double lambda(int64_t i) const = 0;  // lambda_i > 0; unused for general
};
inline constexpr const char* kHamiltonianStructure = "mfglab.hamiltonian_structure/1";

// The structure of H in dimension d: its capability's, or general when it has none (or H is
// null). lambdas has d entries unless the kind is general.
struct HamiltonianStructureValues {
  HamiltonianKind kind = HamiltonianKind::general;
  std::vector<double> lambdas;
};
inline HamiltonianStructureValues hamiltonian_structure(Plugin* H, int64_t d) {
  HamiltonianStructureValues out;
  auto* s = capability<HamiltonianStructure>(H, kHamiltonianStructure);
  if (!s || s->kind() == HamiltonianKind::general) return out;
  out.kind = s->kind();
  for (int64_t i = 0; i < d; ++i) out.lambdas.push_back(s->lambda(i));
  return out;
}

}  // namespace mfglab
