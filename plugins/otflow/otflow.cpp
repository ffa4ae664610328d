// OT-Flow (Onken, Wu Fung, Li, Ruthotto, AAAI 2021) as a mean-field game: a potential flow
// with running cost L(v), no interaction, terminal cost KL(rho_1, N(0, I)).
//
// Potential   Phi(s, theta): the ResNet potential of <mfglab/potential.h>.
// Flow        dx/dt = v = -dH/dp(x, grad_x Phi)   (quadratic H: v = -grad_x Phi / lambda),
//             data at t = 0, N(0, I) at t = 1.
// Augmented state integrated by RK4 on [0, 1]:
//             d/dt [x, l, L, R] = [v, div v, L(x, v), | -d_t Phi + H(x, grad_x Phi) |]
// Loss terms  L = alpha_L mean L(1),  C = alpha_C mean(1/2 |x(1)|^2 + d/2 log 2 pi - l(1)),
//             R = alpha_R mean R(1).
// grad_s Phi and tr(Hess_xx Phi) come in closed form (see the header). The Hamiltonian's form
// comes from its mfglab.hamiltonian_structure/1 capability (or, without one, from probing it):
//   quadratic, isotropic or diagonal (H = sum_k p_k^2 / (2 lambda_k)): v, div v = -sum_k
//     Hess_kk / lambda_k and the costs in closed form; the training loss and its gradient come
//     from a hand-written kernel (block_loss.h, block_kernel.h);
//   any other H: grad_x Phi and the whole Hess_xx Phi in closed form (a hand-written sweep,
//     block_loss.h gradient_hessian), and only H's own derivatives by autograd: div v = sum_i dv_i/dx_i|_p + sum_ij dv_i/dp_j Hess_ji, with
//     v = -dH/dp(x, p) (fused: false: autograd through the network instead, d backward passes).
// Value field: Phi, the value function of the weighted cost alpha_L L + alpha_C KL divided by
// alpha_L; the weights are offered as mfglab.objective_weights/1, so that Phi's terminal
// condition (alpha_C / alpha_L)(1 + log rho_1 - log N) can be checked (hjb_terminal).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <mfglab/capabilities_mfg.h>
#include <mfglab/plugin.h>
#include <mfglab/potential.h>

#include "block_loss.h"
#include "otflow_internals.h"

namespace {

using mfglab::Error;
using torch::Tensor;
using mfglab::nn::Potential;

const auto kWidth = mfglab::int_param("width", 32, "ResNet width m of the potential").at_least(1);
const auto kLayers =
    mfglab::int_param("layers", 2, "ResNet layers (>= 2): an opening layer and layers - 1 residual ones").at_least(2);
const auto kSteps = mfglab::int_param("steps", 8, "RK4 steps on [0, 1] for training").at_least(1);
const auto kEvalSteps = mfglab::int_param("eval_steps", 0, "RK4 steps for log_prob and sample; 0 = steps").at_least(0);
const auto kAlphaL = mfglab::number_param("alpha_L", 1.0, "weight of the running cost term L").at_least(0);
const auto kAlphaC =
    mfglab::number_param("alpha_C", 100.0, "weight of the terminal term C (negative log-likelihood)").at_least(0);
const auto kAlphaR = mfglab::number_param("alpha_R", 5.0, "weight of the HJB residual term R").at_least(0);
const auto kFused = mfglab::bool_param("fused", true,
                                       "quadratic H: the training loss and its gradient by a hand-written kernel on "
                                       "blocks of samples (false: autograd through the closed-form sweep, one "
                                       "thread); other H: Hess_xx Phi in closed form and autograd through H only "
                                       "(false: autograd through the network). Same values either way");

std::string shape(const Tensor& x) {
  std::ostringstream out;
  out << x.sizes();
  return out.str();
}

// Checks on fixed probe points whether H is the quadratic |p|^2 / (2 lambda), in which case
// returns lambda (else 0): then v = -p / lambda and div v = -tr(Hess) / lambda in closed form.
// The probes span four orders of magnitude and vary x, so that an L^p Hamiltonian with
// p != 2 or an x-dependent one does not pass.
double quadratic_lambda(mfglab::Hamiltonian& H, int64_t d) {
  torch::NoGradGuard no_grad;
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  auto scales = torch::tensor({1e-2, 0.3, 1.0, 7.0, 100.0}, opts).reshape({-1, 1});
  auto base = torch::linspace(-1.0, 1.3, 5 * d, opts).reshape({5, d}).add_(0.1);
  auto p = base * scales;
  auto x = torch::linspace(3.0, -2.0, 5 * d, opts).reshape({5, d});
  try {
    auto hv = H.hamiltonian(x, p).to(torch::kFloat64);
    auto lambdas = p.square().sum(1) / (2 * hv);
    const double lambda = lambdas[0].item<double>();
    if (!std::isfinite(lambda) || lambda <= 0) return 0.0;
    if (!torch::allclose(lambdas, torch::full_like(lambdas, lambda), 1e-6, 0)) return 0.0;
    auto v = H.optimal_control(x, p).to(torch::kFloat64);
    if (!torch::allclose(v, -p / lambda, 1e-6, 1e-12)) return 0.0;
    auto cost = H.running_cost(x, v).to(torch::kFloat64);
    if (!torch::allclose(cost, 0.5 * lambda * v.square().sum(1), 1e-6, 1e-12)) return 0.0;
    return lambda;
  } catch (const std::exception&) {
    return 0.0;  // whatever it is, the generic (autograd) path handles it
  }
}

class OtFlow final : public mfglab::Model, public mfglab::otflow::Internals, public mfglab::HjbResidual,
                     public mfglab::FlowMap, public mfglab::ObjectiveWeights {
 public:
  OtFlow(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : d_(ctx.data_dim),
        steps_(params[kSteps]),
        eval_steps_(params[kEvalSteps] > 0 ? params[kEvalSteps] : params[kSteps]),
        alpha_L_(params[kAlphaL]),
        alpha_C_(params[kAlphaC]),
        alpha_R_(params[kAlphaR]),
        threads_(std::max(1, ctx.threads)),
        fused_(params[kFused]),
        generator_(ctx.generator),
        options_(ctx.options()),
        H_(ctx.hamiltonian) {
    if (d_ < 1)
      throw Error("the data dimension is " + std::to_string(d_) +
                  "; the engine must set it before creating the model");
    const int64_t layers = params[kLayers];
    // The declared bounds say the same; repeated because layers = 1 divides by zero in h.
    if (layers < 2) throw Error("layers (" + std::to_string(layers) + ") must be at least 2");
    if (steps_ < 1) throw Error("steps (" + std::to_string(steps_) + ") must be at least 1");
    const int64_t width = params[kWidth];
    if (width < 1) throw Error("width (" + std::to_string(width) + ") must be at least 1");
    potential_ = Potential(d_, width, layers, generator_, options_);
    choose_path(ctx);
  }

  void* capability(const char* id) override {
    if (std::strcmp(id, mfglab::otflow::kInternals) == 0) return static_cast<mfglab::otflow::Internals*>(this);
    if (std::strcmp(id, mfglab::kHjbResidual) == 0) return static_cast<mfglab::HjbResidual*>(this);
    if (std::strcmp(id, mfglab::kFlowMap) == 0) return static_cast<mfglab::FlowMap*>(this);
    if (std::strcmp(id, mfglab::kObjectiveWeights) == 0) return static_cast<mfglab::ObjectiveWeights*>(this);
    return nullptr;
  }

  // ObjectiveWeights capability: the weights of L and C (R vanishes at the optimum).
  double running_cost_weight() const override { return alpha_L_; }
  double terminal_cost_weight() const override { return alpha_C_; }

  std::vector<Tensor> parameters() override { return potential_.parameters(); }

  mfglab::LossTerms loss(const Tensor& batch) override {
    if (batch.dim() != 2 || batch.size(1) != d_)
      throw Error("expected a batch of shape [N, " + std::to_string(d_) + "], got " + shape(batch));
    auto x = batch.to(options_);
    if (path_ != Path::general && fused_ && !x.requires_grad()) {
      // Quadratic H: the whole objective and its gradient by the block kernel.
      auto t = mfglab::otflow::block_loss(x, parameters(),
                                          {steps_, lambda_, weights_, {alpha_L_, alpha_C_, alpha_R_}, threads_});
      return {{"L", t[0]}, {"C", t[1]}, {"R", t[2]}};
    }
    auto t = terms(x);
    return {{"L", t[0]}, {"C", t[1]}, {"R", t[2]}};
  }

  Tensor log_prob(const Tensor& x_in) override {
    if (x_in.dim() != 2 || x_in.size(1) != d_)
      throw Error("expected points of shape [N, " + std::to_string(d_) + "], got " + shape(x_in));
    torch::NoGradGuard no_grad;
    auto z = rk4(torch::constant_pad_nd(x_in.to(options_), {0, 3}, 0), 0.0, kT, eval_steps_, true);
    return -neg_log_likelihood(z);
  }

  Tensor sample(int64_t n) override {
    if (n < 0) throw Error("cannot draw " + std::to_string(n) + " samples");
    torch::NoGradGuard no_grad;
    auto z = torch::randn({n, d_}, generator_, options_);
    return rk4(z, kT, 0.0, eval_steps_, false).contiguous();
  }

  Tensor value(const Tensor& x, const Tensor& t) override { return potential_.value(points(x, t)); }

  Tensor velocity(const Tensor& x, const Tensor& t) override {
    auto gx = gradient(x, t).narrow(1, 0, d_);
    return path_ != Path::general ? control(gx) : H_->optimal_control(x.to(options_), gx);
  }

  double horizon() const override { return kT; }

  // Points on the particle paths for the regularizers: for each batch point x0 a time
  // t ~ U(0, 1) from the run's generator and x(t) by RK4 with the training steps (each point
  // with its own step t / steps). Differentiable in the parameters (the paths depend on them).
  mfglab::Collocation collocation(const Tensor& batch) override {
    if (batch.dim() != 2 || batch.size(1) != d_)
      throw Error("expected a batch of shape [N, " + std::to_string(d_) + "], got " + shape(batch));
    auto x = batch.to(options_);
    auto t = torch::empty({x.size(0), 1}, options_).uniform_(0.0, kT, generator_);
    auto h = t / static_cast<double>(steps_);
    for (int64_t k = 0; k < steps_; ++k) {
      auto tk = h * static_cast<double>(k);
      auto k1 = velocity(x, tk);
      auto k2 = velocity(x + 0.5 * h * k1, tk + 0.5 * h);
      auto k3 = velocity(x + 0.5 * h * k2, tk + 0.5 * h);
      auto k4 = velocity(x + h * k3, tk + h);
      x = x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4);
    }
    return {x, t};
  }

  // HJB residual capability: | -d_t Phi + H(x, grad_x Phi) |, the integrand of R.
  Tensor hjb_residual(const Tensor& x, const Tensor& t) override {
    auto grad = gradient(x, t);
    auto gx = grad.narrow(1, 0, d_);
    auto H = path_ != Path::general ? kinetic(gx).squeeze(1) : H_->hamiltonian(x.to(options_), gx);
    return (H - grad.select(1, d_)).abs();
  }
  std::string hjb_equation() const override { return "-d_t Phi + H(x, grad Phi)"; }

  // FlowMap capability: x(t0) -> x(t1) by the evaluation RK4 (eval_steps), detached.
  Tensor transport(const Tensor& x, double t0, double t1) override {
    if (x.dim() != 2 || x.size(1) != d_)
      throw Error("expected points of shape [N, " + std::to_string(d_) + "], got " + shape(x));
    torch::NoGradGuard no_grad;
    return rk4(x.to(options_), t0, t1, eval_steps_, false).detach();
  }

  // Internals capability.
  Tensor gradient(const Tensor& x, const Tensor& t) override {
    return potential_.derivatives(points(x, t), false).grad;
  }
  Tensor hessian_trace(const Tensor& x, const Tensor& t) override {
    return potential_.derivatives(points(x, t), true).trace;
  }
  Tensor flow(const Tensor& x, double t0, double t1, int64_t steps) override {
    if (steps < 1) throw Error("flow needs at least one step");
    return rk4(torch::constant_pad_nd(x.to(options_), {0, 3}, 0), t0, t1, steps, true);
  }

 private:
  static constexpr double kT = 1.0;

  // The three weighted terms (L, C, R) on x: [N, d].
  std::vector<Tensor> terms(const Tensor& x) {
    auto z = rk4(torch::constant_pad_nd(x, {0, 3}, 0), 0.0, kT, steps_, true);
    return {alpha_L_ * z.select(1, d_ + 1).mean(), alpha_C_ * neg_log_likelihood(z).mean(),
            alpha_R_ * z.select(1, d_ + 2).mean()};
  }

  Tensor neg_log_likelihood(const Tensor& z) const {
    return 0.5 * z.narrow(1, 0, d_).square().sum(1) + 0.5 * d_ * std::log(2 * M_PI) - z.select(1, d_);
  }

  // Right-hand side at time t. augmented: z = [x, l, L, R] -> [v, div v, L(x,v), |HJB|];
  // otherwise z = x -> v.
  Tensor rhs(const Tensor& z, double t, bool augmented) {
    auto x = augmented ? z.narrow(1, 0, d_) : z;
    auto s = torch::constant_pad_nd(x, {0, 1}, t);
    if (!augmented) {
      auto gx = potential_.derivatives(s, false).grad.narrow(1, 0, d_);
      return path_ != Path::general ? control(gx) : H_->optimal_control(x, gx);
    }
    if (path_ == Path::isotropic) {  // everything in closed form
      auto der = potential_.derivatives(s, true);
      auto gx = der.grad.narrow(1, 0, d_);
      auto kin = kinetic(gx);  // L(v) = H(grad Phi)
      auto residual = (kin - der.grad.narrow(1, d_, 1)).abs();
      return torch::cat({control(gx), der.trace.unsqueeze(1) * (-1.0 / lambda_), kin, residual}, 1);
    }
    if (path_ == Path::diagonal) {  // the same with the weighted trace sum_k Hess_kk / lambda_k
      auto [grad, hess] = gradient_hessian(s);
      auto gx = grad.narrow(1, 0, d_);
      auto kin = kinetic(gx);
      auto residual = (kin - grad.narrow(1, d_, 1)).abs();
      auto div = -(hess.diagonal(0, 1, 2) * inv_lambda_).sum(1, true);
      return torch::cat({control(gx), div, kin, residual}, 1);
    }
    return fused_ ? hessian_rhs(x, t) : generic_rhs(x, t);
  }

  // Which closed forms H allows: its declared structure, else what probing finds.
  void choose_path(const mfglab::RunContext& ctx) {
    if (!H_) {  // without a Hamiltonian in the experiment: OT-Flow's own, quadratic with lambda = 1
      path_ = Path::isotropic, lambda_ = 1.0;
      return;
    }
    auto st = mfglab::hamiltonian_structure(H_, d_);
    for (double l : st.lambdas)
      if (!(l > 0) || !std::isfinite(l))
        throw Error("the Hamiltonian declares a quadratic form with lambda = " + std::to_string(l) +
                    "; every lambda must be a finite number > 0");
    const bool equal = std::all_of(st.lambdas.begin(), st.lambdas.end(), [&](double l) { return l == st.lambdas[0]; });
    if (st.kind != mfglab::HamiltonianKind::general && equal) {
      path_ = Path::isotropic, lambda_ = st.lambdas[0];
    } else if (st.kind == mfglab::HamiltonianKind::diagonal_quadratic) {
      // The kernel's form sum_k c_k p_k^2 / (2 lambda) with lambda = 1, c_k = 1 / lambda_k.
      path_ = Path::diagonal, lambda_ = 1.0;
      for (double l : st.lambdas) weights_.push_back(1.0 / l);
      inv_lambda_ = torch::tensor(weights_, torch::kFloat64).to(options_);
    } else if ((lambda_ = quadratic_lambda(*H_, d_)) > 0) {
      path_ = Path::isotropic;  // undeclared, but probing shows |p|^2 / (2 lambda)
    } else {
      path_ = Path::general;
      ctx.info(fused_ ? "otflow: general Hamiltonian; Hess_xx Phi in closed form, autograd through H only"
                      : "otflow: general Hamiltonian; div v by autograd through the network (d backward passes)");
    }
  }

  // Quadratic paths: v = -grad H and H itself, from grad_x Phi [N, d] ([N, d] and [N, 1]).
  Tensor control(const Tensor& gx) const {
    return path_ == Path::diagonal ? -(gx * inv_lambda_) : gx * (-1.0 / lambda_);
  }
  Tensor kinetic(const Tensor& gx) const {
    return path_ == Path::diagonal ? (gx.square() * inv_lambda_).sum(1, true) * 0.5
                                   : gx.square().sum(1, true) * (0.5 / lambda_);
  }

  // grad_s Phi [N, d+1] and the whole Hess_xx Phi [N, d, d] in closed form, as plain tensor ops
  // (differentiable in the parameters): the sweep of <mfglab/potential.h>, with
  //   Hess_xx = sum_{i=0..M} h_i KJ_i^T diag(sech_i * z_i) KJ_i + S_xx,
  // KJ_0 = K_0's x rows (h_0 = 1), KJ_i = J_{i-1} K_i, J_i = J_{i-1} + h th_i * KJ_i (i >= 1).
  std::pair<Tensor, Tensor> gradient_hessian(const Tensor& s) const {
    const auto P = potential_.parameters();  // K_0, b_0, .., K_M, b_M, w, A, b, c
    const int64_t M = static_cast<int64_t>(P.size()) / 2 - 3;
    const double h = 1.0 / static_cast<double>(M);
    std::vector<Tensor> th(M + 1), z(M + 1);
    auto a = torch::addmm(P[1], s, P[0]);
    th[0] = torch::tanh(a);
    Tensor u = mfglab::nn::log_cosh(a);
    for (int64_t i = 1; i <= M; ++i) {
      a = torch::addmm(P[2 * i + 1], u, P[2 * i]);
      th[i] = torch::tanh(a);
      if (i < M) u = torch::add(u, mfglab::nn::log_cosh(a), h);
    }
    z[M] = P[2 * M + 2];
    for (int64_t i = M; i >= 1; --i) z[i - 1] = torch::addmm(z[i], th[i] * z[i], P[2 * i].t(), 1.0, h);
    const auto& A = P[2 * M + 3];
    auto AtA = torch::mm(A.t(), A);
    auto grad = torch::addmm(torch::addmm(P[2 * M + 4], s, AtA), th[0] * z[0], P[0].t());
    auto Kx = P[0].narrow(0, 0, d_);                                      // [d, m]
    auto c0 = ((1 - th[0].square()) * z[0]).unsqueeze(1);                // [N, 1, m]
    auto hess = torch::matmul(c0 * Kx, Kx.t());                          // [N, d, d]
    auto J = th[0].unsqueeze(1) * Kx;                                     // [N, d, m]: du_0/dx_k
    for (int64_t i = 1; i <= M; ++i) {
      auto KJ = torch::matmul(J, P[2 * i]);                               // [N, d, m]
      auto ci = ((1 - th[i].square()) * z[i]).unsqueeze(1);
      hess = torch::baddbmm(hess, ci * KJ, KJ.transpose(1, 2), 1.0, h);
      if (i < M) J = J + h * th[i].unsqueeze(1) * KJ;
    }
    return {grad, hess + AtA.narrow(0, 0, d_).narrow(1, 0, d_)};
  }

  // Any Hamiltonian, grad_s Phi and Hess_xx Phi by the hand-written sweep (block_loss.h; its
  // autograd twin is gradient_hessian above): with v = -dH/dp(x, p) at p = grad_x Phi,
  //   div v = sum_i dv_i/dx_i|_p + sum_ij dv_i/dp_j (Hess_xx Phi)_ji,
  // where dv/dx|_p and dv/dp come from autograd through H's own small graph (d backward passes
  // over [N, d] tensors, never through the network). When training, those derivatives keep
  // their graphs, so the parameter gradient reaches the network through p and the paths x.
  Tensor hessian_rhs(const Tensor& x_in, double t) {
    const bool training = torch::GradMode::is_enabled();
    auto gh = mfglab::otflow::gradient_hessian(torch::constant_pad_nd(x_in, {0, 1}, t), parameters());
    const auto& grad = gh[0];
    const auto& hess = gh[1];
    torch::AutoGradMode grad_on(true);
    // Fresh nodes for x and p: the derivatives w.r.t. them are H's partial ones (a clone of
    // x is not where grad_x Phi came from, so no path through the network reaches it).
    auto x = training && x_in.requires_grad() ? x_in.clone() : x_in.detach().requires_grad_();
    auto gx = grad.narrow(1, 0, d_);
    auto p = training && gx.requires_grad() ? gx : gx.detach().requires_grad_();
    auto v = H_->optimal_control(x, p);
    Tensor div;
    for (int64_t i = 0; i < d_; ++i) {
      auto g = torch::autograd::grad({v.select(1, i).sum()}, {x, p}, {}, true, training, /*allow_unused=*/true);
      auto term = g[1].defined() ? (g[1] * hess.select(2, i)).sum(1) : torch::zeros({x.size(0)}, x.options());
      if (g[0].defined()) term = term + g[0].select(1, i);
      div = div.defined() ? div + term : term;
    }
    auto cost = H_->running_cost(x, v);
    auto residual = (H_->hamiltonian(x, p) - grad.select(1, d_)).abs();
    auto out = torch::cat({v, div.unsqueeze(1), cost.unsqueeze(1), residual.unsqueeze(1)}, 1);
    return training ? out : out.detach();
  }

  // Any Hamiltonian: v = -dH/dp(x, grad Phi) and its exact divergence by d backward passes
  // (keeping their graphs when training, so that the parameter gradient sees them).
  Tensor generic_rhs(const Tensor& x_in, double t) {
    const bool training = torch::GradMode::is_enabled();
    torch::AutoGradMode grad_on(true);
    auto x = x_in.requires_grad() ? x_in : x_in.detach().requires_grad_();
    auto grad = potential_.derivatives(torch::constant_pad_nd(x, {0, 1}, t), false).grad;
    auto gx = grad.narrow(1, 0, d_);
    auto v = H_->optimal_control(x, gx);
    Tensor div = torch::zeros({x.size(0)}, x.options());
    for (int64_t k = 0; k < d_; ++k) {
      auto gk = torch::autograd::grad({v.select(1, k).sum()}, {x}, {}, true, training)[0];
      div = div + gk.select(1, k);
    }
    auto cost = H_->running_cost(x, v);
    auto residual = (H_->hamiltonian(x, gx) - grad.select(1, d_)).abs();
    auto out = torch::cat({v, div.unsqueeze(1), cost.unsqueeze(1), residual.unsqueeze(1)}, 1);
    return training ? out : out.detach();
  }

  // Classical RK4 with `steps` steps from t0 to t1 (t1 < t0 integrates backwards).
  Tensor rk4(Tensor z, double t0, double t1, int64_t steps, bool augmented) {
    const double h = (t1 - t0) / static_cast<double>(steps);
    for (int64_t k = 0; k < steps; ++k) {
      const double t = t0 + static_cast<double>(k) * h;
      auto k1 = rhs(z, t, augmented);
      auto k2 = rhs(torch::add(z, k1, h / 2), t + h / 2, augmented);
      auto k3 = rhs(torch::add(z, k2, h / 2), t + h / 2, augmented);
      auto k4 = rhs(torch::add(z, k3, h), t + h, augmented);
      // k1 + 2 k2 + 2 k3 + k4, accumulated in place in a fresh tensor (autograd-safe: add
      // does not save its inputs or output).
      z = torch::add(z, torch::add(k1, k2, 2).add_(k3, 2).add_(k4), h / 6);
      if (!torch::isfinite(z).all().item<bool>())
        throw Error("non-finite state at RK4 step " + std::to_string(k + 1) + " of " +
                    std::to_string(steps) + " (t = " + std::to_string(t + h) + ")");
    }
    return z;
  }

  // s = (x, t) from x [N, d] and times [N, 1].
  Tensor points(const Tensor& x, const Tensor& t) const {
    if (x.dim() != 2 || x.size(1) != d_)
      throw Error("expected points of shape [N, " + std::to_string(d_) + "], got " + shape(x));
    return torch::cat({x.to(options_), column(t, x.size(0)).to(options_)}, 1);
  }

  // Times arrive as [N, 1]; [N] and a single time are accepted too.
  static Tensor column(const Tensor& t, int64_t n) {
    if (t.numel() == n) return t.reshape({n, 1});
    if (t.numel() == 1) return t.reshape({1, 1}).expand({n, 1});
    throw Error("expected times of shape [" + std::to_string(n) + ", 1], got " + shape(t));
  }

  int64_t d_;
  int64_t steps_, eval_steps_;
  double alpha_L_, alpha_C_, alpha_R_;
  int threads_;
  bool fused_;                  // quadratic H: the block kernel; other H: the closed-form Hessian
  torch::Generator generator_;  // shares the run generator's state
  torch::TensorOptions options_;
  mfglab::Hamiltonian* H_;      // the experiment's; not owned; null: quadratic, lambda = 1
  enum class Path { isotropic, diagonal, general };
  Path path_ = Path::general;
  double lambda_ = 0;             // quadratic paths: the kernel's lambda (diagonal: 1)
  std::vector<double> weights_;   // diagonal: c_k = 1 / lambda_k; else empty
  Tensor inv_lambda_;             // diagonal: 1 / lambda_k, [d]
  Potential potential_;
};

}  // namespace

MFGLAB_PLUGIN(OtFlow, MFGLAB_KIND_MODEL, "otflow", "1.1.0",
              "OT-Flow: potential flow with closed-form Hessian trace, RK4, L + C + HJB objective",
              "value,velocity,log_prob,collocation", kWidth, kLayers, kSteps, kEvalSteps, kAlphaL, kAlphaC, kAlphaR,
              kFused)
