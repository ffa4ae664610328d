// One right-hand side of OT-Flow's augmented dynamics for a quadratic Hamiltonian
// H(p) = |p|^2 / (2 lambda), as a single autograd node whose backward is written by hand:
//
//   f(z, t) = [v, div v, kin, res],  v = -g_x / lambda,  div v = -tr / lambda,
//   kin = |g_x|^2 / (2 lambda),  res = |kin - g_t|,
//
// with g = grad_s Phi and tr = tr(Hess_xx Phi) of the potential of <mfglab/potential.h> at
// s = (x, t), x = z[:, :d]. The forward pass is the closed-form sweep of Potential::derivatives
// (same operations, same values); autograd would record ~60 nodes for it and replay them with
// generic backward formulas, this node instead runs ~45 large tensor operations in reverse.
//
// Notation (rows are samples; weights are stored [in, out] as in Potential):
//   a_0 = s K_0 + b_0,  u_0 = lc(a_0),  a_i = u_{i-1} K_i + b_i,  u_i = u_{i-1} + h lc(a_i),
//   th_i = tanh(a_i) = lc'(a_i),  sech_i = 1 - th_i^2 = lc''(a_i),      i = 1..M
//   z_M = w,  z_{i-1} = z_i + h (th_i * z_i) K_i^T           (z_i = dPhi/du_i)
//   g = s S + b + (th_0 * z_0) K_0^T,  S = A^T A
//   tr = (sech_0 * z_0) . q + tr_x(S),  q_j = sum_{k<d} K_0[k, j]^2
//        + sum_i h sum_k (sech_i * z_i) . (KJ_i^k)^2,
//   J_0^k = th_0 * K_0[k, :],  KJ_i^k = J_{i-1}^k K_i,  J_i^k = J_{i-1}^k + h th_i * KJ_i^k
// (J_i^k = du_i/dx_k as a row, k < d). The backward pass below is the reverse sweep of exactly
// these equations; each adjoint is written next to the equation it comes from.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/csrc/autograd/custom_function.h>

#include <mfglab/potential.h>

namespace mfglab::otflow {

struct QuadraticRhs : public torch::autograd::Function<QuadraticRhs> {
  using Tensor = torch::Tensor;
  using variable_list = torch::autograd::variable_list;
  using Ctx = torch::autograd::AutogradContext;

  // z: [N, d + extra] (only the first d columns, x, enter); params: Potential::parameters(),
  // i.e. K_0, b_0, ..., K_M, b_M, w, A, b, c. Returns [N, d + 3].
  static variable_list forward(Ctx* ctx, const Tensor& z, at::TensorList params, int64_t d, double t,
                               double lambda) {
    const int64_t M = static_cast<int64_t>(params.size()) / 2 - 3;
    const double h = 1.0 / static_cast<double>(M);
    const Tensor &K0 = params[0], &w = params[2 * M + 2], &A = params[2 * M + 3], &b = params[2 * M + 4];
    const int64_t n = z.size(0), m = K0.size(1);

    auto s = torch::constant_pad_nd(z.narrow(1, 0, d), {0, 1}, t);
    std::vector<Tensor> th(M + 1), us(M), zz(M + 1), KJ(M + 1), Js(M);
    auto a = torch::addmm(params[1], s, K0);
    th[0] = torch::tanh(a);
    Tensor u = mfglab::nn::log_cosh(a);
    for (int64_t i = 1; i <= M; ++i) {
      us[i - 1] = u;
      a = torch::addmm(params[2 * i + 1], u, params[2 * i]);
      th[i] = torch::tanh(a);
      if (i < M) u = torch::add(u, mfglab::nn::log_cosh(a), h);
    }
    zz[M] = w.expand({n, m});
    for (int64_t i = M; i >= 1; --i)
      zz[i - 1] = torch::addmm(zz[i], th[i] * zz[i], params[2 * i].t(), 1.0, h);
    auto S = torch::mm(A.t(), A);
    auto grad = torch::addmm(torch::addmm(b, s, S), th[0] * zz[0], K0.t());

    auto Kx = K0.narrow(0, 0, d);
    auto tr = torch::mv((1 - th[0].square()) * zz[0], Kx.square().sum(0)) + S.diagonal().narrow(0, 0, d).sum();
    auto J = th[0].unsqueeze(0) * Kx.unsqueeze(1);  // [d, N, m]
    for (int64_t i = 1; i <= M; ++i) {
      Js[i - 1] = J;
      KJ[i] = torch::mm(J.reshape({d * n, m}), params[2 * i]).view({d, n, m});
      tr = tr + h * ((1 - th[i].square()) * zz[i] * KJ[i].square().sum(0)).sum(1);
      if (i < M) J = J + h * th[i].unsqueeze(0) * KJ[i];
    }

    auto gx = grad.narrow(1, 0, d);
    auto kin = gx.square().sum(1, true) * (0.5 / lambda);
    auto diff = kin - grad.narrow(1, d, 1);
    auto out = torch::cat({gx * (-1.0 / lambda), tr.unsqueeze(1) * (-1.0 / lambda), kin, diff.abs()}, 1);

    ctx->save_for_backward(params.vec());
    ctx->saved_data["d"] = d;
    ctx->saved_data["lambda"] = lambda;
    ctx->saved_data["zcols"] = z.size(1);
    ctx->saved_data["s"] = s;
    ctx->saved_data["S"] = S;
    ctx->saved_data["gx"] = gx;
    ctx->saved_data["sgn"] = diff.sign();
    ctx->saved_data["th"] = th;
    ctx->saved_data["us"] = us;
    ctx->saved_data["zz"] = zz;
    ctx->saved_data["Js"] = Js;
    KJ[0] = torch::zeros({0}, z.options());  // unused slot, defined so that the list can be stored
    ctx->saved_data["KJ"] = KJ;
    return {out};
  }

  static variable_list backward(Ctx* ctx, variable_list grads) {
    torch::NoGradGuard no_grad;
    const auto params = ctx->get_saved_variables();
    const int64_t d = ctx->saved_data["d"].toInt();
    const double lambda = ctx->saved_data["lambda"].toDouble();
    const int64_t zcols = ctx->saved_data["zcols"].toInt();
    const auto s = ctx->saved_data["s"].toTensor(), S = ctx->saved_data["S"].toTensor();
    const auto gx = ctx->saved_data["gx"].toTensor(), sgn = ctx->saved_data["sgn"].toTensor();
    const auto th = ctx->saved_data["th"].toTensorVector(), us = ctx->saved_data["us"].toTensorVector();
    const auto zz = ctx->saved_data["zz"].toTensorVector(), Js = ctx->saved_data["Js"].toTensorVector();
    const auto KJ = ctx->saved_data["KJ"].toTensorVector();
    const int64_t M = static_cast<int64_t>(params.size()) / 2 - 3;
    const double h = 1.0 / static_cast<double>(M);
    const Tensor &K0 = params[0], &A = params[2 * M + 3];
    const int64_t n = s.size(0), m = K0.size(1);
    auto K = [&](int64_t i) -> const Tensor& { return params[2 * i]; };

    variable_list out(1 + params.size() + 3);  // z, params, then d, t, lambda (no gradient)
    Tensor G = grads[0];
    if (!G.defined()) G = torch::zeros({n, d + 3}, s.options());

    // Output adjoints -> gbar = dl/dg [N, d+1] and trbar = dl/dtr [N]:
    //   v = -g_x / lambda, kin = |g_x|^2 / (2 lambda)  =>  d/dg_x: (-G_v + (G_kin + sgn G_res) g_x) / lambda
    //   res = |kin - g_t|                              =>  d/dg_t: -sgn G_res
    //   div = -tr / lambda                             =>  trbar = -G_div / lambda
    auto rs = G.narrow(1, d + 2, 1) * sgn;  // [N, 1]
    auto gbar = torch::cat({(gx * (G.narrow(1, d + 1, 1) + rs) - G.narrow(1, 0, d)) * (1.0 / lambda), -rs}, 1);
    auto trbar = G.narrow(1, d, 1) * (-1.0 / lambda);  // [N, 1]

    std::vector<Tensor> thbar(M + 1), zbar(M + 1), Kbar(M + 1), bbar(M + 1);
    // Trace, layers M..1. tr += h sum_k c_i . (KJ_i^k)^2 with c_i = sech_i * z_i:
    //   KJbar_i^k = 2 h trbar c_i * KJ_i^k,  cbar_i = h trbar sum_k (KJ_i^k)^2,
    //   c_i = sech_i z_i  =>  zbar_i += cbar_i sech_i,  thbar_i += -2 th_i z_i cbar_i.
    // J_i = J_{i-1} + h th_i * KJ_i (i < M) adds  KJbar_i += h th_i * Jbar_i,
    //   thbar_i += h sum_k Jbar_i^k * KJ_i^k,  Jbar_{i-1} += Jbar_i;
    // KJ_i^k = J_{i-1}^k K_i gives  Jbar_{i-1}^k += KJbar_i^k K_i^T,  Kbar_i += sum_k J_{i-1}^k^T KJbar_i^k.
    Tensor Jbar;
    for (int64_t i = M; i >= 1; --i) {
      auto sech = 1 - th[i].square();
      auto KJb = (2 * h) * (trbar * sech * zz[i]).unsqueeze(0) * KJ[i];
      auto cbar = h * trbar * KJ[i].square().sum(0);
      zbar[i] = cbar * sech;
      thbar[i] = -2 * cbar * zz[i] * th[i];
      if (i < M) {
        KJb.add_(h * th[i].unsqueeze(0) * Jbar);
        thbar[i].add_((Jbar * KJ[i]).sum(0), h);
      }
      auto KJb2 = KJb.view({d * n, m});
      Kbar[i] = torch::mm(Js[i - 1].reshape({d * n, m}).t(), KJb2);
      auto back = torch::mm(KJb2, K(i).t()).view({d, n, m});
      Jbar = i < M ? Jbar + back : back;
    }
    // Layer 0: J_0^k = th_0 * Kx[k]  =>  thbar_0 += sum_k Jbar_0^k * Kx[k],  Kxbar[k] += sum_n Jbar_0^k * th_0.
    // (sech_0 * z_0) . q with q = colsum(Kx^2):  zbar_0 += trbar q sech_0,  thbar_0 += -2 th_0 z_0 trbar q,
    //   Kxbar += 2 Kx * (sum_n trbar sech_0 z_0).  tr_x(S): Sbar_kk += sum_n trbar for k < d.
    auto Kx = K0.narrow(0, 0, d);
    auto sech0 = 1 - th[0].square();
    auto Kxbar = (Jbar * th[0].unsqueeze(0)).sum(1);
    thbar[0] = (Jbar * Kx.unsqueeze(1)).sum(0);
    auto ebar = trbar * Kx.square().sum(0).unsqueeze(0);  // [N, m]
    Kxbar.add_(2 * Kx * torch::mv((sech0 * zz[0]).t(), trbar.squeeze(1)).unsqueeze(0));
    zbar[0] = ebar * sech0;
    thbar[0].add_(-2 * ebar * zz[0] * th[0]);
    auto Sbar = torch::zeros_like(S);
    Sbar.diagonal().narrow(0, 0, d).add_(trbar.sum());

    // Gradient g = s S + b + p_0 K_0^T, p_0 = th_0 * z_0:
    //   pbar_0 = gbar K_0,  K0bar = gbar^T p_0,  bbar = sum_n gbar,  Sbar += s^T gbar,  sbar = gbar S (S = S^T),
    //   thbar_0 += pbar_0 z_0,  zbar_0 += pbar_0 th_0.
    auto pbar = torch::mm(gbar, K0);
    auto K0bar = torch::mm(gbar.t(), th[0] * zz[0]);
    auto bvec_bar = gbar.sum(0);
    Sbar.addmm_(s.t(), gbar);
    auto sbar = torch::mm(gbar, S);
    thbar[0].addcmul_(pbar, zz[0]);
    zbar[0].addcmul_(pbar, th[0]);

    // z_{i-1} = z_i + h y_i K_i^T, y_i = th_i * z_i, for i = 1..M (zbar_{i-1} is complete here):
    //   ybar = h zbar_{i-1} K_i,  Kbar_i += h zbar_{i-1}^T y_i,  zbar_i += zbar_{i-1} + ybar th_i,  thbar_i += ybar z_i.
    for (int64_t i = 1; i <= M; ++i) {
      auto ybar = torch::mm(zbar[i - 1], K(i)).mul_(h);
      Kbar[i].addmm_(zbar[i - 1].t(), th[i] * zz[i], 1.0, h);
      zbar[i].add_(zbar[i - 1]).addcmul_(ybar, th[i]);
      thbar[i].addcmul_(ybar, zz[i]);
    }
    auto wbar = zbar[M].sum(0);

    // Forward recursion, i = M..1: th_i = tanh(a_i), u_i = u_{i-1} + h lc(a_i) with lc' = tanh:
    //   abar_i = thbar_i sech_i + h th_i ubar_i (ubar_M = 0),  Kbar_i += u_{i-1}^T abar_i,
    //   bbar_i = sum_n abar_i,  ubar_{i-1} = ubar_i + abar_i K_i^T.
    // Then a_0 = s K_0 + b_0, u_0 = lc(a_0): abar_0 = thbar_0 sech_0 + th_0 ubar_0, K0bar += s^T abar_0,
    //   sbar += abar_0 K_0^T.
    Tensor ubar;
    for (int64_t i = M; i >= 1; --i) {
      auto abar = thbar[i] * (1 - th[i].square());
      if (i < M) abar.addcmul_(th[i], ubar, h);
      Kbar[i].addmm_(us[i - 1].t(), abar);
      bbar[i] = abar.sum(0);
      auto back = torch::mm(abar, K(i).t());
      ubar = i < M ? ubar.add_(back) : back;
    }
    auto abar0 = thbar[0] * sech0 + th[0] * ubar;
    K0bar.addmm_(s.t(), abar0);
    K0bar.narrow(0, 0, d).add_(Kxbar);
    bbar[0] = abar0.sum(0);
    sbar.addmm_(abar0, K0.t());

    // S = A^T A: Abar = A (Sbar + Sbar^T).
    auto Abar = torch::mm(A, Sbar + Sbar.t());

    out[0] = torch::constant_pad_nd(sbar.narrow(1, 0, d), {0, zcols - d}, 0);
    out[1] = K0bar;
    out[2] = bbar[0];
    for (int64_t i = 1; i <= M; ++i) out[1 + 2 * i] = Kbar[i], out[2 + 2 * i] = bbar[i];
    out[1 + 2 * M + 2] = wbar;
    out[1 + 2 * M + 3] = Abar;
    out[1 + 2 * M + 4] = bvec_bar;
    // c (constant of Phi) does not enter the derivatives; d, t, lambda are not tensors.
    return out;
  }
};

// The fused right-hand side: [N, d + 3] from the state z ([N, >= d]) at time t.
inline torch::Tensor quadratic_rhs(const torch::Tensor& z, const std::vector<torch::Tensor>& params, int64_t d,
                                   double t, double lambda) {
  return QuadraticRhs::apply(z, at::TensorList(params), d, t, lambda)[0];
}

}  // namespace mfglab::otflow
