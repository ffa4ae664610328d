// Optional capabilities of the MFG view of a model (Plugin::capability), beside those
// declared in <mfglab/sdk.h>. Header-only; include it next to <mfglab/sdk.h>.
#pragma once

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

}  // namespace mfglab
