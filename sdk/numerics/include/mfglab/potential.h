// The OT-Flow potential network with closed-form derivatives, for potential-flow models
// (otflow, jko, and any plugin that wants v = -grad Phi with an exact divergence):
//
//   Phi(s) = w^T N(s) + 1/2 s^T A^T A s + b^T s + c,   s = (x, t),  A: r x (d+1), r = min(10, d+1);
//   N: u_0 = act(K_0 s + b_0),  u_i = u_{i-1} + h act(K_i u_{i-1} + b_i),  i = 1..M,
//      M = layers - 1, h = 1/M, act = log cosh (act' = tanh, act'' = 1 - tanh^2).
//
// grad_s Phi and tr(Hess_xx Phi) come from one forward and one backward sweep over the
// ResNet plus a forward recursion of the Jacobians du_i/dx; all of it is plain tensor ops,
// so autograd differentiates it for the parameter gradient.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "mfglab/sdk.h"

namespace mfglab::nn {

// log cosh a = a + softplus(-2a) - log 2: exact and overflow-free for any a.
inline torch::Tensor log_cosh(const torch::Tensor& a) {
  return torch::add(a, torch::softplus(a * -2.0)).sub_(std::log(2.0));
}

// Closed-form derivatives of Phi at s = (x, t).
struct Derivatives {
  torch::Tensor grad;   // grad_s Phi, [N, d+1]: grad_x Phi, then d_t Phi
  torch::Tensor trace;  // tr(Hess_xx Phi), [N]; undefined when not asked for
};

class Potential {
 public:
  Potential() = default;
  Potential(int64_t d, int64_t width, int64_t layers, torch::Generator g,
            const torch::TensorOptions& options)
      : d_(d), h_(1.0 / static_cast<double>(layers - 1)) {
    // nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases,
    // drawn from the run's generator. Weights are stored [in, out]: a layer is one addmm.
    auto linear = [&](int64_t in, int64_t out) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));
      weights_.push_back(torch::empty({in, out}, options).uniform_(-bound, bound, g).requires_grad_());
      biases_.push_back(torch::empty({out}, options).uniform_(-bound, bound, g).requires_grad_());
    };
    linear(d + 1, width);
    for (int64_t i = 1; i < layers; ++i) linear(width, width);
    // As OT-Flow: w = 1, A Xavier-uniform, b = 0, c = 0.
    w_ = torch::ones({width}, options).requires_grad_();
    const int64_t r = std::min<int64_t>(10, d + 1);
    const double xavier = std::sqrt(6.0 / static_cast<double>(r + d + 1));
    A_ = torch::empty({r, d + 1}, options).uniform_(-xavier, xavier, g).requires_grad_();
    b_ = torch::zeros({d + 1}, options).requires_grad_();
    c_ = torch::zeros({}, options).requires_grad_();
  }

  std::vector<torch::Tensor> parameters() const {
    std::vector<torch::Tensor> out;
    for (size_t i = 0; i < weights_.size(); ++i) out.insert(out.end(), {weights_[i], biases_[i]});
    out.insert(out.end(), {w_, A_, b_, c_});
    return out;
  }

  // Phi(s), [N]; differentiable.
  torch::Tensor value(const torch::Tensor& s) const {
    auto u = log_cosh(torch::addmm(biases_[0], s, weights_[0]));
    for (size_t i = 1; i < weights_.size(); ++i)
      u = torch::add(u, log_cosh(torch::addmm(biases_[i], u, weights_[i])), h_);
    auto As = torch::mm(s, A_.t());
    return torch::mv(u, w_) + 0.5 * As.square().sum(1) + torch::mv(s, b_) + c_;
  }

  Derivatives derivatives(const torch::Tensor& s, bool want_trace) const {
    const size_t M = weights_.size() - 1;
    // Forward sweep: the pre-activations' tanh is all the backward sweep needs; the last
    // state u_M only enters Phi itself, never its derivatives.
    std::vector<torch::Tensor> th(M + 1);
    auto a = torch::addmm(biases_[0], s, weights_[0]);
    th[0] = torch::tanh(a);
    torch::Tensor u = log_cosh(a);
    for (size_t i = 1; i <= M; ++i) {
      a = torch::addmm(biases_[i], u, weights_[i]);
      th[i] = torch::tanh(a);
      if (i < M) u = torch::add(u, log_cosh(a), h_);
    }
    // Backward sweep: z_i = dPhi/du_i, z_M = w, z_{i-1} = z_i + h K_i^T (tanh(a_i) * z_i).
    std::vector<torch::Tensor> z(M + 1);
    z[M] = w_;  // broadcasts over the batch
    for (size_t i = M; i >= 1; --i)
      z[i - 1] = torch::addmm(z[i], th[i] * z[i], weights_[i].t(), 1.0, h_);
    auto AtA = torch::mm(A_.t(), A_);
    auto grad = torch::addmm(torch::addmm(b_, s, AtA), th[0] * z[0], weights_[0].t());
    if (!want_trace) return {grad, torch::Tensor()};

    // tr(Hess_xx Phi) = sum_i sum_k e_k^T J_i^T diag(act''(a_i) z_i) J_i e_k + tr(A^T A)_xx
    // with J_0 = K_0 restricted to x, J_i = K_i applied to du_{i-1}/dx.
    auto Kx = weights_[0].narrow(0, 0, d_);  // [d, m]: only x rows enter the x-Hessian
    auto trace = torch::mv((1 - th[0].square()) * z[0], Kx.square().sum(0)) +
                 AtA.diagonal().narrow(0, 0, d_).sum();
    auto J = th[0].unsqueeze(0) * Kx.unsqueeze(1);  // [d, N, m]: du_0/dx_k = tanh(a_0) K_0 e_k
    for (size_t i = 1; i <= M; ++i) {
      auto KJ = torch::matmul(J, weights_[i]);  // [d, N, m]
      trace = trace + h_ * ((1 - th[i].square()) * z[i] * KJ.square().sum(0)).sum(1);
      if (i < M) J = J + h_ * th[i].unsqueeze(0) * KJ;
    }
    return {grad, trace};
  }

 private:
  int64_t d_ = 0;
  double h_ = 1.0;
  std::vector<torch::Tensor> weights_, biases_;  // K_0 [d+1, m], K_i [m, m]; b_i [m]
  torch::Tensor w_, A_, b_, c_;
};

}  // namespace mfglab::nn
