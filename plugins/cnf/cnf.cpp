// A continuous normalizing flow in the style of FFJORD (Grathwohl et al., ICLR 2019): the
// mean-field game with b = 0, sigma = 0, no running cost (L = 0) and terminal cost
// KL(rho_1, N(0, I)), which DESIGN.md calls ill-posed (infinitely many optimal flows).
//
// Velocity    v(x, t) = MLP([x, t]), an unconstrained network (not a gradient field).
// Flow        dx/dt = v, data at t = 0, N(0, I) at t = 1.
// Density     d/dt [x, l] = [v, div v]  from (x, 0) at t = 0, then
//             log p(x) = log N(x(1); 0, I) + l(1)   (change of variables).
// div v       exact, by a forward sweep of the Jacobian rows through the MLP (or by d reverse
//             passes: exact_autograd), or Hutchinson's eps^T (dv/dx) eps with probes eps
//             drawn once per solve from the run's generator (FFJORD's choice), averaged
//             over `probes` draws.
// Loss        NLL = mean over the batch of -log p(x), in nats, back-propagated through the
//             solver (discretise-then-optimise).
// Solvers     rk4 (fixed steps) or dopri5 (adaptive, rtol/atol); see <mfglab/ode.h>.
// Fast path   with rk4 and the exact (forward sweep) or Hutchinson divergence, the training
//             loss and its gradient, and log_prob, come from a hand-written kernel
//             (cnf_kernel.h) instead of autograd's graph: the same quantities up to rounding
//             (checked against this file's tensor code in float64 by tests/test_cnf.cpp).
#include <cmath>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include <mfglab/nn.h>
#include <mfglab/ode.h>
#include <mfglab/plugin.h>

#include "cnf_loss.h"

namespace {

using mfglab::Error;
using torch::Tensor;

// The parameters, declared once: the manifest lists them, the constructor reads them back (the
// choices tied to enums).
enum class Solver { rk4, dopri5 };
enum class Divergence { automatic, exact, exact_autograd, hutchinson };
enum class Probe { gaussian, rademacher };
const auto kWidth = mfglab::int_param("width", 64, "hidden units per layer of the velocity MLP").at_least(1);
const auto kDepth = mfglab::int_param("depth", 3, "hidden layers of the velocity MLP").at_least(1);
const auto kActivation = mfglab::choice_param("activation", mfglab::nn::Activation::tanh, mfglab::nn::activation_choices(),
                                              "activation between the MLP's layers");
const auto kSolver = mfglab::choice_param("solver", Solver::rk4,
                                          mfglab::Choices<Solver>{{"rk4", Solver::rk4}, {"dopri5", Solver::dopri5}},
                                          "ODE solver: fixed-step RK4 or adaptive Dormand-Prince 5(4)");
const auto kSteps = mfglab::int_param("steps", 8, "RK4 steps on [0, 1] for training (and collocation)").at_least(1);
const auto kEvalSteps =
    mfglab::int_param("eval_steps", 0, "RK4 steps for log_prob, sample and transport; 0 = steps").at_least(0);
const auto kRtol = mfglab::number_param("rtol", 1e-5, "dopri5 relative tolerance").above(0);
const auto kAtol = mfglab::number_param("atol", 1e-5, "dopri5 absolute tolerance").above(0);
const auto kMaxSteps =
    mfglab::int_param("max_steps", 1000, "dopri5: most steps (accepted + rejected) per solve").at_least(1);
const auto kDivergence = mfglab::choice_param(
    "divergence", Divergence::automatic,
    mfglab::Choices<Divergence>{{"auto", Divergence::automatic}, {"exact", Divergence::exact},
                                {"exact_autograd", Divergence::exact_autograd}, {"hutchinson", Divergence::hutchinson}},
    "training divergence: exact (forward sweep of the Jacobian through the MLP), exact_autograd (d reverse passes), "
    "Hutchinson, or auto = exact when d <= exact_max_dim; log_prob is exact (as chosen) when d <= exact_max_dim");
const auto kExactMaxDim =
    mfglab::int_param("exact_max_dim", 10, "largest dimension with an exact divergence under auto").at_least(0);
const auto kProbe = mfglab::choice_param(
    "probe", Probe::rademacher, mfglab::Choices<Probe>{{"gaussian", Probe::gaussian}, {"rademacher", Probe::rademacher}},
    "Hutchinson probe law");
const auto kProbes =
    mfglab::int_param("probes", 1, "Hutchinson probes per solve (averaged), drawn once per solve").at_least(1);
const auto kFused = mfglab::bool_param("fused", true,
                                       "rk4 with exact or Hutchinson divergence: the training loss, its gradient and "
                                       "log_prob by a hand-written kernel instead of autograd's graph (same values up "
                                       "to rounding)");
const auto kLogEvery =
    mfglab::int_param("log_every", 100, "log the mean NFE per training solve every this many iterations; 0 = never")
        .at_least(0);

// Concatenates anything streamable: the messages below mix text and numbers.
template <class... A>
std::string cat(const A&... a) {
  std::ostringstream out;
  (out << ... << a);
  return out.str();
}

std::string shape(const Tensor& x) {
  std::ostringstream out;
  out << x.sizes();
  return out.str();
}

class Cnf final : public mfglab::Model, public mfglab::FlowMap {
 public:
  Cnf(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : d_(ctx.data_dim),
        steps_(params[kSteps]),
        eval_steps_(params[kEvalSteps] > 0 ? params[kEvalSteps] : params[kSteps]),
        probes_(params[kProbes]),
        log_every_(params[kLogEvery]),
        threads_(std::max(1, ctx.threads)),
        fused_(params[kFused]),
        generator_(ctx.generator),
        options_(ctx.options()),
        logger_(ctx.logger) {
    if (d_ < 1)
      throw Error("the data dimension is " + std::to_string(d_) +
                  "; the engine must set it before creating the model");
    // Declared bounds say the same; repeated so that direct construction fails clearly too.
    if (steps_ < 1) throw Error("steps must be at least 1, got " + std::to_string(steps_));
    if (probes_ < 1) throw Error("probes must be at least 1, got " + std::to_string(probes_));
    dopri_.rtol = params[kRtol];
    dopri_.atol = params[kAtol];
    dopri_.max_steps = params[kMaxSteps];
    if (!(dopri_.rtol > 0) || !(dopri_.atol > 0))
      throw Error(cat("rtol and atol must be > 0, got rtol = ", dopri_.rtol, ", atol = ", dopri_.atol));
    if (dopri_.max_steps < 1) throw Error("max_steps must be at least 1");

    adaptive_ = params[kSolver] == Solver::dopri5;

    const Divergence div = params[kDivergence];
    const int64_t exact_max = params[kExactMaxDim];
    hutchinson_ = div == Divergence::hutchinson || (div == Divergence::automatic && d_ > exact_max);
    autograd_trace_ = div == Divergence::exact_autograd;
    eval_hutchinson_ = d_ > exact_max;
    rademacher_ = params[kProbe] == Probe::rademacher;
    activation_ = params[kActivation];
    const int64_t width = params[kWidth], depth = params[kDepth];
    if (width < 1 || depth < 1) throw Error("width and depth must be at least 1");
    std::vector<int64_t> sizes{d_ + 1};
    for (int64_t i = 0; i < depth; ++i) sizes.push_back(width);
    sizes.push_back(d_);
    net_ = mfglab::nn::MLP(sizes, activation_, generator_, options_);
  }

  void* capability(const char* id) override {
    if (std::strcmp(id, mfglab::kFlowMap) == 0) return static_cast<mfglab::FlowMap*>(this);
    return nullptr;
  }

  std::vector<Tensor> parameters() override { return net_.parameters(); }

  mfglab::LossTerms loss(const Tensor& batch) override {
    check_points(batch, "batch");
    mfglab::ode::SolveStats stats;
    Tensor nll;
    if (use_kernel(hutchinson_, steps_) && !batch.requires_grad()) {
      auto x = batch.to(options_);
      Tensor eps = hutchinson_ ? draw_probes(x.size(0)) : Tensor();
      nll = mfglab::cnf::fast_nll(x, eps, net_.parameters(), kernel_settings(steps_));
      stats.nfe = 4 * steps_;
    } else {
      nll = -log_density(batch.to(options_), hutchinson_, adaptive_, steps_, &stats).mean();
    }
    train_nfe_ += stats.nfe;
    ++train_calls_;
    if (log_every_ > 0 && train_calls_ % log_every_ == 0) {
      info(cat("cnf: ", static_cast<double>(train_nfe_) / static_cast<double>(log_every_),
               " function evaluations per training solve (mean over the last ", log_every_,
               " iterations, ", adaptive_ ? "dopri5" : "rk4", ", ",
               hutchinson_ ? "Hutchinson" : "exact", " divergence)"));
      train_nfe_ = 0;
    }
    return {{"nll", nll}};
  }

  Tensor log_prob(const Tensor& x) override {
    check_points(x, "points");
    // No parameter graph: autograd is switched on inside the right-hand side only.
    torch::NoGradGuard no_grad;
    mfglab::ode::SolveStats stats;
    Tensor lp;
    if (use_kernel(eval_hutchinson_, eval_steps_)) {
      auto xs = x.to(options_);
      Tensor eps = eval_hutchinson_ ? draw_probes(xs.size(0)) : Tensor();
      lp = mfglab::cnf::fast_log_prob(xs, eps, net_.parameters(), kernel_settings(eval_steps_));
      stats.nfe = 4 * eval_steps_;
    } else {
      lp = log_density(x.to(options_), eval_hutchinson_, adaptive_, eval_steps_, &stats).detach();
    }
    ++eval_calls_;
    // Rate-limited: calls 1, 2, 4, 8, ... (a metric may call once per batch).
    if ((eval_calls_ & (eval_calls_ - 1)) == 0)
      info(cat("cnf: log_prob of ", x.size(0), " points took ", stats.nfe,
               " function evaluations (call ", eval_calls_, ")"));
    return lp;
  }

  Tensor sample(int64_t n) override {
    if (n < 0) throw Error("cannot draw " + std::to_string(n) + " samples");
    auto z = torch::randn({n, d_}, generator_, options_);
    mfglab::ode::SolveStats stats;
    auto x = flow(z, kT, 0.0, &stats);
    info(cat("cnf: sampling ", n, " points took ", stats.nfe, " function evaluations"));
    return x.contiguous();
  }

  Tensor velocity(const Tensor& x, const Tensor& t) override {
    check_points(x, "points");
    return field(x.to(options_), column(t, x.size(0)).to(options_));
  }

  double horizon() const override { return kT; }

  // A time t_i ~ U(0, 1) per particle and its position x_i(t_i) on its own path from the
  // batch point: RK4 with `steps` steps on the rescaled equation dy/ds = t_i v(y, s t_i),
  // s in [0, 1]. With grad mode on the points keep their graph to the parameters (the
  // paths depend on them), so that a path integral estimated there (kinetic,
  // jacobian_frobenius: RNODE's penalties) gets its full parameter gradient, through
  // x(t_i) as well as through the field; under a NoGradGuard they carry no graph.
  mfglab::Collocation collocation(const Tensor& batch) override {
    check_points(batch, "batch");
    auto x0 = batch.to(options_);
    Tensor ti;
    {
      torch::NoGradGuard no_grad;
      ti = torch::rand({x0.size(0), 1}, generator_, options_) * kT;
    }
    auto f = [&](const Tensor& y, double s) { return ti * field(y, ti * s); };
    auto x = mfglab::ode::rk4(f, x0, 0.0, 1.0, steps_);
    return {x, ti};
  }

  // FlowMap: the evaluation solver on dx/dt = v, detached.
  Tensor transport(const Tensor& x, double t0, double t1) override {
    check_points(x, "points");
    return flow(x.to(options_), t0, t1, nullptr);
  }

 private:
  static constexpr double kT = 1.0;

  // The kernel covers fixed-step RK4 with the forward-sweep exact or the Hutchinson divergence
  // (exact_autograd is the autograd reference and keeps its graph).
  bool use_kernel(bool hutchinson, int64_t steps) const {
    return fused_ && !adaptive_ && !autograd_trace_ &&
           mfglab::cnf::fast_supported(net_.parameters(), options_.dtype().toScalarType(),
                                       hutchinson ? probes_ : d_, kernel_settings(steps));
  }

  mfglab::cnf::FastSettings kernel_settings(int64_t steps) const {
    return {steps, static_cast<int>(activation_), threads_};
  }

  void info(const std::string& m) const {
    if (logger_) logger_->info(m);
  }

  void check_points(const Tensor& x, const char* what) const {
    if (!x.defined() || x.dim() != 2 || x.size(1) != d_)
      throw Error(cat("expected ", what, " of shape [N, ", d_, "], got ",
                      x.defined() ? shape(x) : std::string("an undefined tensor")));
  }

  // Times arrive as [N, 1]; [N] and a single time are accepted too.
  static Tensor column(const Tensor& t, int64_t n) {
    if (t.numel() == n) return t.reshape({n, 1});
    if (t.numel() == 1) return t.reshape({1, 1}).expand({n, 1});
    throw Error("expected times of shape [" + std::to_string(n) + ", 1], got " + shape(t));
  }

  Tensor field(const Tensor& x, const Tensor& t) const { return net_.forward(torch::cat({x, t}, 1)); }
  Tensor field(const Tensor& x, double t) const {
    return field(x, torch::full({x.size(0), 1}, t, x.options()));
  }

  // act'(a) in closed form, for the forward-mode Jacobian below.
  Tensor activation_slope(const Tensor& a) const {
    using mfglab::nn::Activation;
    switch (activation_) {
      case Activation::silu: {
        auto s = torch::sigmoid(a);
        return s * (1 + a * (1 - s));
      }
      case Activation::gelu:
        return 0.5 * (1 + torch::erf(a * M_SQRT1_2)) + a * torch::exp(-0.5 * a.square()) * (0.5 * M_2_SQRTPI * M_SQRT1_2);
      case Activation::tanh: return 1 - torch::tanh(a).square();
      case Activation::relu: return (a > 0).to(a.scalar_type());
      case Activation::softplus: return torch::sigmoid(a);
      case Activation::logcosh: return torch::tanh(a);
    }
    throw Error("unreachable activation");
  }

  // v(x, t) and its exact divergence in one forward sweep that carries the Jacobian rows
  // dh/dx_k (k = 1..d) through the layers: dh = act'(a) da, da_next = dh W. Plain tensor
  // ops, so the parameter gradient of the result comes from ordinary back-propagation;
  // (d + 1) times a forward pass instead of d reverse passes with their graphs kept.
  std::pair<Tensor, Tensor> field_and_divergence(const Tensor& x, double t) const {
    const auto p = net_.parameters();  // W0, b0, W1, b1, ...; W stored [in, out]
    const size_t layers = p.size() / 2;
    const int64_t n = x.size(0);
    auto a = torch::addmm(p[1], torch::cat({x, torch::full({n, 1}, t, x.options())}, 1), p[0]);
    auto J = p[0].narrow(0, 0, d_).unsqueeze(1).expand({d_, n, p[0].size(1)});  // [d, N, w]
    for (size_t i = 1; i < layers; ++i) {
      J = J * activation_slope(a).unsqueeze(0);
      auto h = mfglab::nn::activate(activation_, a);
      a = torch::addmm(p[2 * i + 1], h, p[2 * i]);
      J = torch::matmul(J, p[2 * i]);
    }
    // J[k, n, j] = d v_j / d x_k: the trace is the sum of the diagonal over (k, j).
    auto div = J.diagonal(0, 0, 2).sum(1);
    return {a, div};
  }

  // Probes for one solve: [probes, N, d], Rademacher (+-1) or standard normal.
  Tensor draw_probes(int64_t n) {
    if (rademacher_)
      return torch::randint(0, 2, {probes_, n, d_}, generator_, options_).mul_(2).sub_(1);
    return torch::randn({probes_, n, d_}, generator_, options_);
  }

  // Right-hand side of the augmented system [x, l] -> [v, div v]. While training the
  // divergence keeps its graph (create_graph) so that the parameter gradient sees it;
  // otherwise autograd is switched on only to take the d (or probes) input gradients.
  Tensor augmented_rhs(const Tensor& z, double t, const Tensor& eps) {
    const bool training = torch::GradMode::is_enabled();
    torch::AutoGradMode grad_on(true);
    auto x = z.narrow(1, 0, d_);
    if (!training || !x.requires_grad()) x = x.detach().requires_grad_();
    auto v = field(x, t);
    Tensor div;
    if (eps.defined()) {
      div = torch::zeros({x.size(0)}, x.options());
      for (int64_t j = 0; j < probes_; ++j)
        div = div + mfglab::nn::divergence_hutchinson(v, x, eps[j], training);
      if (probes_ > 1) div = div / static_cast<double>(probes_);
    } else {
      div = mfglab::nn::divergence(v, x, training);
    }
    auto out = torch::cat({v, div.unsqueeze(1)}, 1);
    return training ? out : out.detach();
  }

  // The same with the exact divergence by the forward sweep: no autograd needed inside.
  Tensor forward_rhs(const Tensor& z, double t) const {
    auto [v, div] = field_and_divergence(z.narrow(1, 0, d_), t);
    return torch::cat({v, div.unsqueeze(1)}, 1);
  }

  mfglab::ode::Rhs plain_rhs() {
    return [this](const Tensor& y, double t) { return field(y, t); };
  }

  Tensor solve(const mfglab::ode::Rhs& f, const Tensor& y, double t0, double t1, bool adaptive,
               int64_t steps, mfglab::ode::SolveStats* stats) {
    if (adaptive) return mfglab::ode::dopri5(f, y, t0, t1, dopri_, stats);
    return mfglab::ode::rk4(f, y, t0, t1, steps, stats);
  }

  // log p(x) by the change of variables, [N]; differentiable when grad mode is on.
  Tensor log_density(const Tensor& x, bool hutchinson, bool adaptive, int64_t steps,
                     mfglab::ode::SolveStats* stats) {
    Tensor eps = hutchinson ? draw_probes(x.size(0)) : Tensor();
    mfglab::ode::Rhs f;
    if (hutchinson) f = [this, eps](const Tensor& z, double t) { return augmented_rhs(z, t, eps); };
    else if (autograd_trace_) f = [this](const Tensor& z, double t) { return augmented_rhs(z, t, Tensor()); };
    else f = [this](const Tensor& z, double t) { return forward_rhs(z, t); };
    auto z = solve(f, torch::constant_pad_nd(x, {0, 1}, 0), 0.0, kT, adaptive, steps, stats);
    auto xT = z.narrow(1, 0, d_);
    return -0.5 * xT.square().sum(1) - 0.5 * static_cast<double>(d_) * std::log(2 * M_PI) +
           z.select(1, d_);
  }

  // The evaluation solver on dx/dt = v, detached.
  Tensor flow(const Tensor& x, double t0, double t1, mfglab::ode::SolveStats* stats) {
    torch::NoGradGuard no_grad;
    return solve(plain_rhs(), x, t0, t1, adaptive_, eval_steps_, stats).detach();
  }

  int64_t d_;
  int64_t steps_, eval_steps_, probes_, log_every_;
  int threads_;
  bool fused_;  // the hand-written kernel where it applies (use_kernel)
  bool adaptive_ = false, hutchinson_ = false, eval_hutchinson_ = false, rademacher_ = true;
  mfglab::ode::Dopri5Options dopri_;
  torch::Generator generator_;  // shares the run generator's state
  torch::TensorOptions options_;
  mfglab::Logger* logger_;      // the run's; not owned; may be null outside a run
  mfglab::nn::Activation activation_ = mfglab::nn::Activation::tanh;
  bool autograd_trace_ = false;  // exact divergence by d reverse passes instead of the sweep
  mfglab::nn::MLP net_;
  int64_t train_calls_ = 0, train_nfe_ = 0, eval_calls_ = 0;
};

}  // namespace

MFGLAB_PLUGIN(Cnf, MFGLAB_KIND_MODEL, "cnf", "1.1.0",
              "FFJORD-style continuous normalizing flow: MLP velocity v(x, t), exact or Hutchinson "
              "divergence, rk4 or dopri5, loss = mean NLL by the change of variables (no transport cost)",
              "velocity,log_prob,collocation", kWidth, kDepth, kActivation, kSolver, kSteps, kEvalSteps, kRtol, kAtol,
              kMaxSteps, kDivergence, kExactMaxDim, kProbe, kProbes, kFused, kLogEvery)
