// Residuals of the value-function PDEs of DESIGN.md section 2, by autograd, for any model
// with a value field: the hjb regularizer trains on them, the engine's residual heat map and
// models without closed-form derivatives can reuse them. Header-only.
//
// MFG form (the HJB equation with F = 0; b = model.drift, sigma = model.diffusion, U =
// model.value, H = the experiment's Hamiltonian, quadratic with lambda = 1 when null):
//
//   r = -U_t + H(x, grad U) - b.grad U - sigma^2/2 Lap U
//
// Log-density form (the Fokker-Planck equation of a forward noising process dY = f dt + g dW,
// data at t = 0, written for u = log rho_t; f = model.drift, g = model.diffusion, u =
// model.value, e.g. sgm's potential parameterization whose gradient is the score):
//
//   r = u_t + div f + f.grad u - g^2/2 (Lap u + |grad u|^2)
//
// Both are signed, per point, [N]; r = 0 where the field solves its equation. The points
// (x [N, d], t [N, 1] or [N]) are treated as fixed: they are detached, so the parameter
// gradient of a penalty built on r flows through the fields, not through the points.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "mfglab/sdk.h"

namespace mfglab::hjb {

// How traces of Jacobians (Lap U = div grad U, div f) are taken: exactly (d backward passes)
// up to `exact_up_to` dimensions, beyond that by a Hutchinson estimate eps^T (dF/dx) eps
// averaged over `probes` Rademacher probes drawn from `generator` (unbiased; the run's
// generator, never the global one).
struct TraceOptions {
  int64_t exact_up_to = std::numeric_limits<int64_t>::max();
  int64_t probes = 1;
  std::optional<torch::Generator> generator;
};

namespace detail {

// Gradients of sum(y * w) w.r.t. inputs. Inputs y does not depend on come back as zeros
// (e.g. d_t of a stationary value function), and so does everything when y carries no graph
// (a constant drift).
inline std::vector<torch::Tensor> grads(const torch::Tensor& y, const std::vector<torch::Tensor>& inputs,
                                        const torch::Tensor& w, bool create_graph) {
  std::vector<torch::Tensor> out;
  if (!y.requires_grad()) {
    for (const auto& in : inputs) out.push_back(torch::zeros_like(in));
    return out;
  }
  out = torch::autograd::grad({y}, inputs, {w}, /*retain_graph=*/true, create_graph, /*allow_unused=*/true);
  for (size_t k = 0; k < out.size(); ++k)
    if (!out[k].defined()) out[k] = torch::zeros_like(inputs[k]);
  return out;
}

// tr(dF/dx) for F: [N, d] -> [N, d] (F depends on x), [N].
inline torch::Tensor trace(const torch::Tensor& F, const torch::Tensor& x, bool create_graph,
                           const TraceOptions& o) {
  const int64_t d = x.size(1);
  auto total = torch::zeros({x.size(0)}, x.options());
  if (d <= o.exact_up_to) {
    for (int64_t i = 0; i < d; ++i) {
      auto e = torch::zeros_like(F);
      e.select(1, i).fill_(1);
      total = total + grads(F, {x}, e, create_graph)[0].select(1, i);
    }
    return total;
  }
  if (!o.generator) throw Error("a Hutchinson trace estimate needs the run's generator");
  if (o.probes < 1) throw Error("a Hutchinson trace estimate needs at least one probe, got " + std::to_string(o.probes));
  torch::Generator g = *o.generator;
  for (int64_t k = 0; k < o.probes; ++k) {
    auto eps = torch::empty_like(x).bernoulli_(0.5, g).mul_(2).sub_(1);  // +-1
    total = total + (grads(F, {x}, eps, create_graph)[0] * eps).sum(1);
  }
  return total / static_cast<double>(o.probes);
}

struct Points {
  torch::Tensor x, t;  // detached leaves requiring grad; t is [N, 1]
};

inline Points points(const torch::Tensor& x, const torch::Tensor& t) {
  if (x.dim() != 2) throw Error("expected points x of shape [N, d], got " + std::to_string(x.dim()) + " dimensions");
  const int64_t n = x.size(0);
  if (t.numel() != n)
    throw Error("expected times of shape [" + std::to_string(n) + ", 1], got " + std::to_string(t.numel()) + " values");
  return {x.detach().requires_grad_(), t.detach().reshape({n, 1}).to(x.options()).requires_grad_()};
}

// U (or u) and its first derivatives: grad_x [N, d] and d_t [N].
struct FirstOrder {
  torch::Tensor value, grad, dt;
};

inline FirstOrder first_order(Model& model, const Points& p, bool keep_graph) {
  auto U = model.value(p.x, p.t);
  if (U.dim() == 2 && U.size(1) == 1) U = U.squeeze(1);
  if (U.dim() != 1 || U.size(0) != p.x.size(0))
    throw Error("the model's value must have shape [N] = [" + std::to_string(p.x.size(0)) + "]");
  auto g = grads(U, {p.x, p.t}, torch::ones_like(U), keep_graph);
  return {U, g[0], g[1].squeeze(1)};
}

// sigma(t)^2 as [N].
inline torch::Tensor diffusion_squared(Model& model, const Points& p) {
  return model.diffusion(p.t.detach()).reshape({-1}).square().expand({p.x.size(0)});
}

}  // namespace detail

// The MFG form above. create_graph: keep the graph of every derivative, so that a penalty
// built on r has a parameter gradient (training); false returns a detached r (diagnostics).
// The Laplacian is skipped where sigma vanishes everywhere on the batch (flows).
inline torch::Tensor residual(Model& model, Hamiltonian* H, const torch::Tensor& x, const torch::Tensor& t,
                              bool create_graph, const TraceOptions& trace = {}) {
  torch::AutoGradMode grad_on(true);  // callers evaluating under NoGradGuard still get derivatives
  auto p = detail::points(x, t);
  auto s2 = detail::diffusion_squared(model, p);
  const bool viscous = (s2 != 0).any().item<bool>();
  // The first derivatives keep their graph whenever a second derivative is taken from them.
  auto d1 = detail::first_order(model, p, create_graph || viscous);
  auto Hp = H ? H->hamiltonian(p.x, d1.grad) : 0.5 * d1.grad.square().sum(1);
  auto b = model.drift(p.x, p.t.detach());
  auto r = -d1.dt + Hp - (b * d1.grad).sum(1);
  if (viscous) r = r - 0.5 * s2 * detail::trace(d1.grad, p.x, create_graph, trace);
  return create_graph ? r : r.detach();
}

// The log-density form above (forward time, data at t = 0).
inline torch::Tensor log_density_residual(Model& model, const torch::Tensor& x, const torch::Tensor& t,
                                          bool create_graph, const TraceOptions& trace = {}) {
  torch::AutoGradMode grad_on(true);
  auto p = detail::points(x, t);
  auto g2 = detail::diffusion_squared(model, p);
  auto d1 = detail::first_order(model, p, true);
  auto f = model.drift(p.x, p.t.detach());
  auto div_f = detail::trace(f, p.x, create_graph, trace);
  auto lap = detail::trace(d1.grad, p.x, create_graph, trace);
  auto r = d1.dt + div_f + (f * d1.grad).sum(1) - 0.5 * g2 * (lap + d1.grad.square().sum(1));
  return create_graph ? r : r.detach();
}

}  // namespace mfglab::hjb
