// The score PDE (DESIGN.md section 2) of a model's forward noising process, shared by the
// score_pde regularizer and the models that offer "mfglab.hjb_residual/1" (sgm), so that
// the residual is written once.
//
// Time t runs in the direction of the forward process dY = f(Y, t) dt + g(t) dW, data at
// t = 0; f = model.drift(x, t), g = model.diffusion(t), s = model.score(x, t) = grad log
// rho_t and J_ij = d_i s_j. The Fokker-Planck equation of rho, written for log rho and
// differentiated in x, gives
//
//   s_t = -grad(div f) - grad(f.s) + g^2/2 (Lap s + 2 J s),   grad(f.s) = (Df)^T s + J f,
//
// and the residual is r = s_t - rhs, [N, d]. The "grad" form replaces Lap s by grad(div s),
// equal for a true score (J symmetric) and one reverse pass instead of d^2.
#pragma once

#include <vector>

#include "mfglab/capabilities_score.h"
#include "mfglab/sdk.h"

namespace mfglab::score_pde {

// Gradients of sum(outputs * weights) in inputs, keeping the graph for higher derivatives
// and the parameter gradient. Inputs the outputs do not depend on (x in div f for a linear
// f) come back as zeros instead of an error.
inline std::vector<torch::Tensor> grads(const torch::Tensor& outputs, const std::vector<torch::Tensor>& inputs,
                                        const torch::Tensor& weights) {
  if (!outputs.requires_grad()) {  // e.g. a constant drift: every derivative is zero
    std::vector<torch::Tensor> zeros;
    for (const auto& in : inputs) zeros.push_back(torch::zeros_like(in));
    return zeros;
  }
  auto g = torch::autograd::grad({outputs}, inputs, {weights}, /*retain_graph=*/true,
                                 /*create_graph=*/true, /*allow_unused=*/true);
  for (size_t k = 0; k < g.size(); ++k)
    if (!g[k].defined()) g[k] = torch::zeros_like(inputs[k]);
  return g;
}

// e_j repeated over the batch: the weights that pick component j of an [N, d] output.
inline torch::Tensor unit(const torch::Tensor& like, int64_t j) {
  auto e = torch::zeros_like(like);
  e.select(1, j).fill_(1);
  return e;
}

using SecondOrder = ScoreSecondOrder;

// The score and its derivatives at (x, t) by reverse-mode autograd, for any model: d passes
// for J and d_t s, then d^2 for Lap s (SecondOrder::laplacian) or one for grad(div s)
// (SecondOrder::grad_div, returned in the `laplacian` field). Graphs are kept, so the
// result is differentiable in the parameters.
inline ScoreDerivativeValues autograd_derivatives(Model& model, const torch::Tensor& x_in, const torch::Tensor& t_in,
                                                  SecondOrder second = SecondOrder::laplacian) {
  torch::AutoGradMode grad_on(true);
  auto x = x_in.detach().requires_grad_();
  auto t = t_in.detach().requires_grad_();
  auto s = model.score(x, t);
  const int64_t d = s.size(1);
  // Pass j gives d_i s_j for all i (column j of J) and d_t s_j.
  std::vector<torch::Tensor> columns, dt;
  for (int64_t j = 0; j < d; ++j) {
    auto g = grads(s, {x, t}, unit(s, j));
    columns.push_back(g[0]);
    dt.push_back(g[1]);
  }
  ScoreDerivativeValues v;
  v.score = s;
  v.jacobian = torch::stack(columns, 2);  // [N, i, j]
  v.time = torch::cat(dt, 1);
  if (second == SecondOrder::grad_div) {
    auto div = v.jacobian.diagonal(0, 1, 2).sum(1);
    v.laplacian = grads(div, {x}, torch::ones_like(div))[0];
  } else {
    std::vector<torch::Tensor> lap;
    for (int64_t j = 0; j < d; ++j) {
      torch::Tensor lap_j;
      for (int64_t i = 0; i < d; ++i) {
        auto Jij = v.jacobian.select(1, i).select(1, j);
        auto term = grads(Jij, {x}, torch::ones_like(Jij))[0].select(1, i);
        lap_j = i == 0 ? term : lap_j + term;
      }
      lap.push_back(lap_j);
    }
    v.laplacian = torch::stack(lap, 1);
  }
  return v;
}

// The score's derivatives at (x, t) with the requested second-order term, by the fastest
// route the model offers: "mfglab.score_derivatives/2", then "/1" (Laplacian only), then
// autograd. The routes agree up to rounding (tests/test_jets.cpp).
inline ScoreDerivativeValues derivatives(Model& model, const torch::Tensor& x, const torch::Tensor& t,
                                         SecondOrder second) {
  if (auto* fast = capability<ScoreDerivatives2>(&model, kScoreDerivatives2))
    if (fast->offers(second)) return fast->score_derivatives(x, t, second);
  if (second == SecondOrder::laplacian)
    if (auto* fast = capability<ScoreDerivatives>(&model, kScoreDerivatives)) return fast->score_derivatives(x, t);
  return autograd_derivatives(model, x, t, second);
}

// r = s_t - rhs at (x [N, d], t [N, 1]), [N, d], from the score's derivatives there (the
// `laplacian` field may hold grad(div s) for the grad form). The drift's derivatives are
// taken by autograd on its own small graph, so any model drift works (for f = a(t) x:
// grad(div f) = 0 and grad(f.s) = a (s + J x)).
inline torch::Tensor residual(Model& model, const torch::Tensor& x_in, const torch::Tensor& t_in,
                              const ScoreDerivativeValues& v) {
  torch::AutoGradMode grad_on(true);
  auto x = x_in.detach().requires_grad_();
  auto t = t_in.detach();  // f and g need no derivative in t
  const auto& s = v.score;
  const auto& J = v.jacobian;
  const int64_t d = s.size(1);
  auto f = model.drift(x, t);
  auto g = model.diffusion(t).reshape({-1, 1});
  // (J w)_i = sum_j J_ij w_j, as a broadcast product: d is small, batched matmuls of
  // d x d blocks cost more.
  auto Js = (J * s.unsqueeze(1)).sum(2);
  auto Jf = (J * f.unsqueeze(1)).sum(2);   // the score-side half of grad(f.s)
  auto Dfs = grads(f, {x}, s)[0];           // (Df)^T s: the drift-side half
  torch::Tensor div_f;
  for (int64_t i = 0; i < d; ++i) {
    auto term = grads(f, {x}, unit(f, i))[0].select(1, i);
    div_f = i == 0 ? term : div_f + term;
  }
  auto grad_div_f = grads(div_f, {x}, torch::ones_like(div_f))[0];
  auto rhs = -grad_div_f - Dfs - Jf + 0.5 * g.square() * (v.laplacian + 2 * Js);
  return v.time - rhs;
}

}  // namespace mfglab::score_pde
