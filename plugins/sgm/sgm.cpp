// Score-based generative model (Song et al. 2021) on a choice of linear forward SDEs.
//
// Forward noising on [eps, T]: dY = k(t) Y dt + g(t) dW with marginals
//   Y_t | Y_0 ~ N(alpha(t) Y_0, sigma(t)^2 I)  (vp, subvp, ve, ou: see forward_process.h).
// The network predicts the noise, eps_hat(x, t) = -sigma(t) * score(x, t):
//   parameterization "score":     eps_hat = net([x, t])            (net: R^{d+1} -> R^d)
//   parameterization "potential": eps_hat = grad_x net([x, t]),     (net: R^{d+1} -> R)
//     i.e. score = grad_x U with the potential U = -net / sigma(t), so the learned score is
//     a gradient field by construction.
// Scaling by sigma keeps the training target of order one down to t = eps.
//
// Losses, per sample, with the weighting lambda(t) = sigma^2 ("sigma2") or g^2 ("likelihood"):
//   dsm  lambda |score + z / sigma|^2 = (lambda / sigma^2) |eps_hat - z|^2    at x = alpha x0 + sigma z
//   ism  lambda (|score|^2 / 2 + div score) = (lambda / sigma^2)(|eps_hat|^2 / 2 - sigma div eps_hat)
//   esm  lambda |score - s*|^2 = (lambda / sigma^2) |eps_hat + sigma s*|^2  at x = alpha x0 + sigma z,
//        s* the exact score of the noised data law, from the dataset's "mfglab.exact_density/1"
//        (explicit score matching: zero at the true score, unlike dsm and ism)
// With lambda = sigma^2, ism = (dsm - d) / 2 in expectation (Hyvarinen's identity).
//
// Samplers, from the prior at T down to eps:
//   em   Euler-Maruyama on the reverse SDE dx = (f - g^2 score) dt + g dW
//   pc   one Langevin corrector step (signal-to-noise ratio snr) before each em step
//   ode  the probability-flow ODE dx/dt = f - g^2 score / 2, by rk4 (sample_steps steps)
//        or adaptive dopri5 (rtol, atol)
// log_prob(x) integrates the same ODE forward from eps to T together with the change of
// log-density, d log p / dt = -div(f - g^2 score / 2), and adds the prior's log-density:
// the model's NLL in nats of the data noised to t = eps.
#include <array>
#include <cmath>
#include <cstring>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <mfglab/capabilities_score.h>
#include <mfglab/evaluation.h>
#include <mfglab/divergence_gradient_sweep.h>
#include <mfglab/hessian_jets.h>
#include <mfglab/nn.h>
#include <mfglab/plugin.h>
#include <mfglab/score_pde.h>

#include "forward_process.h"
#include "ode.h"

namespace {

using mfglab::Error;
using sgm::ForwardProcessSpec;
using sgm::ProcessKind;

std::string show(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

enum class Parameterization { score, potential };
enum class LossKind { dsm, ism, esm, none };
enum class Weighting { sigma2, likelihood };
enum class Sampler { em, pc, ode };
enum class OdeSolver { rk4, dopri5 };

// The parameters, declared once: the manifest below lists them, the constructor reads them back;
// each choice is tied to its enum by one table.
using mfglab::Choices;
const auto kWidth = mfglab::int_param("width", 128, "hidden units per layer of the score network").at_least(1);
const auto kDepth = mfglab::int_param("depth", 3, "hidden layers of the score network").at_least(1);
const auto kActivation = mfglab::choice_param("activation", mfglab::nn::Activation::silu,
                                              mfglab::nn::activation_choices().without({mfglab::nn::Activation::logcosh}),
                                              "activation between the score network's layers");
const auto kBetaMin = mfglab::number_param("beta_min", 0.1, "vp/subvp noise rate beta at t = 0").at_least(0);
const auto kBetaMax =
    mfglab::number_param("beta_max", 20.0, "vp/subvp noise rate beta at t = T; must exceed beta_min").above(0);
const auto kEps =
    mfglab::number_param("eps", 1e-3, "smallest diffusion time, where sampling stops; in (0, T)").above(0);
const auto kSampleSteps =
    mfglab::int_param("sample_steps", 500, "steps of the em/pc samplers and of the rk4 ODE solver").at_least(1);
const auto kProcess = mfglab::choice_param("process", sgm::ProcessKind::vp, sgm::process_choices(),
                                           "forward SDE: variance preserving, sub-VP, variance exploding, or "
                                           "OU dY = -Y/2 dt + dW");
const auto kT = mfglab::number_param("T", 1.0, "final diffusion time (try 3 for ou)").above(0);
const auto kSigmaMin = mfglab::number_param("sigma_min", 0.01, "ve noise scale at t = 0").above(0);
const auto kSigmaMax =
    mfglab::number_param("sigma_max", 10.0, "ve noise scale at t = T (prior std); must exceed sigma_min").above(0);
const auto kParameterization = mfglab::choice_param(
    "parameterization", Parameterization::score,
    Choices<Parameterization>{{"score", Parameterization::score}, {"potential", Parameterization::potential}},
    "network output: the scaled score, or a scalar potential whose gradient is the score");
const auto kLoss = mfglab::choice_param(
    "loss", LossKind::dsm,
    Choices<LossKind>{{"dsm", LossKind::dsm}, {"ism", LossKind::ism}, {"esm", LossKind::esm}, {"none", LossKind::none}},
    "denoising, implicit, or explicit score matching (esm regresses on the exact score; needs a dataset with one, "
    "such as gmm); none: no loss of the model's own, the regularizers are the objective");
const auto kWeighting = mfglab::choice_param(
    "weighting", Weighting::sigma2, Choices<Weighting>{{"sigma2", Weighting::sigma2}, {"likelihood", Weighting::likelihood}},
    "loss weight lambda(t): sigma(t)^2, or g(t)^2 (likelihood weighting)");
const auto kExactDivMaxDim = mfglab::int_param("exact_div_max_dim", 4,
                                               "largest dimension with exact divergences (ism, log_prob); Hutchinson "
                                               "above")
                                 .at_least(0);
const auto kSampler = mfglab::choice_param("sampler", Sampler::em,
                                           Choices<Sampler>{{"em", Sampler::em}, {"pc", Sampler::pc}, {"ode", Sampler::ode}},
                                           "Euler-Maruyama, predictor-corrector, or probability-flow ODE");
const auto kSnr =
    mfglab::number_param("snr", 0.16, "signal-to-noise ratio of the pc sampler's Langevin corrector").above(0);
const auto kOdeSolver = mfglab::choice_param("ode_solver", OdeSolver::rk4,
                                             Choices<OdeSolver>{{"rk4", OdeSolver::rk4}, {"dopri5", OdeSolver::dopri5}},
                                             "solver of the probability-flow ODE (ode sampler and log_prob)");
const auto kRtol = mfglab::number_param("rtol", 1e-5, "dopri5 relative tolerance").above(0);
const auto kAtol = mfglab::number_param("atol", 1e-5, "dopri5 absolute tolerance").above(0);

// Also offers its noising marginals as the "mfglab.forward_process/1" capability, so
// metrics and regularizers can compare the learned score with a dataset's exact one; its
// score PDE's residual as "mfglab.hjb_residual/1"; and, with a score network, the score's
// derivatives in closed form as "mfglab.score_derivatives/1" and "/2" (one forward sweep of
// jets; /2 also gives grad(div s) for the residual's gradient form; with a potential
// network, jets and d + 1 reverse passes through them).
class Sgm final : public mfglab::Model,
                  public mfglab::ForwardProcess,
                  public mfglab::ScoreDerivatives,
                  public mfglab::ScoreDerivatives2,
                  public mfglab::HjbResidual,
                  public mfglab::EvaluationParams {
 public:
  Sgm(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : d_(ctx.data_dim),
        eps_(params[kEps]),
        steps_(params[kSampleSteps]),
        snr_(params[kSnr]),
        exact_div_max_dim_(params[kExactDivMaxDim]),
        generator_(ctx.generator),
        options_(ctx.options()) {
    proc_.kind = params[kProcess];
    proc_.T = params[kT];
    proc_.beta_min = params[kBetaMin];
    proc_.beta_max = params[kBetaMax];
    proc_.sigma_min = params[kSigmaMin];
    proc_.sigma_max = params[kSigmaMax];
    param_ = params[kParameterization];
    loss_ = params[kLoss];
    if (loss_ == LossKind::esm) {
      // Checked now, not at the first step: without an exact score there is no esm target.
      exact_ = mfglab::capability<mfglab::ExactDensity>(ctx.dataset, mfglab::kExactDensity);
      if (exact_ == nullptr)
        throw Error(std::string("loss \"esm\" (explicit score matching) needs the exact score of the "
                                "noised data, but ") +
                    (ctx.dataset ? "the dataset has no \"" + std::string(mfglab::kExactDensity) +
                                       "\" capability (gmm has one)"
                                 : std::string("no dataset was given to the model")) +
                    "; use loss \"dsm\" or \"ism\" with this dataset");
    }
    weighting_ = params[kWeighting];
    sampler_ = params[kSampler];
    solver_ = params[kOdeSolver];
    dopri_.rtol = params[kRtol];
    dopri_.atol = params[kAtol];

    if (d_ < 1)
      throw Error("the data dimension is " + std::to_string(d_) +
                  "; the engine must set it before creating the model");
    // The declared bounds already say some of this; repeated because each bad value would
    // fail silently later (sigma = 0 divides the score, an empty time range samples nothing).
    if (!(proc_.beta_max > proc_.beta_min))
      throw Error("beta_max (" + show(proc_.beta_max) + ") must be greater than beta_min (" +
                  show(proc_.beta_min) + ")");
    if (!(proc_.sigma_min > 0 && proc_.sigma_max > proc_.sigma_min))
      throw Error("sigma_max (" + show(proc_.sigma_max) + ") must be greater than sigma_min (" +
                  show(proc_.sigma_min) + ") > 0");
    if (!(proc_.T > 0)) throw Error("T (" + show(proc_.T) + ") must be positive");
    if (!(eps_ > 0 && eps_ < proc_.T))
      throw Error("eps (" + show(eps_) + ") must lie in (0, T) = (0, " + show(proc_.T) + ")");
    if (steps_ < 1) throw Error("sample_steps (" + std::to_string(steps_) + ") must be at least 1");
    if (!(snr_ > 0)) throw Error("snr (" + show(snr_) + ") must be positive");
    if (!(dopri_.rtol > 0)) throw Error("rtol (" + show(dopri_.rtol) + ") must be positive");
    if (!(dopri_.atol > 0)) throw Error("atol (" + show(dopri_.atol) + ") must be positive");

    std::vector<int64_t> sizes{d_ + 1};  // time enters as one extra input column
    for (int64_t i = 0; i < params[kDepth]; ++i) sizes.push_back(params[kWidth]);
    sizes.push_back(param_ == Parameterization::score ? d_ : 1);
    net_ = mfglab::nn::MLP(sizes, params[kActivation],
                           generator_, options_);
  }

  void* capability(const char* id) override {
    if (std::strcmp(id, mfglab::kForwardProcess) == 0) return static_cast<mfglab::ForwardProcess*>(this);
    if (std::strcmp(id, mfglab::kEvaluationParams) == 0) return static_cast<mfglab::EvaluationParams*>(this);
    if (std::strcmp(id, mfglab::kHjbResidual) == 0) return static_cast<mfglab::HjbResidual*>(this);
    if (std::strcmp(id, mfglab::kScoreDerivatives) == 0) return static_cast<mfglab::ScoreDerivatives*>(this);
    if (std::strcmp(id, mfglab::kScoreDerivatives2) == 0) return static_cast<mfglab::ScoreDerivatives2*>(this);
    return nullptr;
  }

  std::vector<torch::Tensor> parameters() override { return net_.parameters(); }

  // Read by sample() and log_prob() only: `mfglab evaluate` may change them.
  std::vector<std::string> evaluation_params() const override {
    return {kSampleSteps.name, kSampler.name, kSnr.name, kOdeSolver.name, kRtol.name, kAtol.name};
  }

  mfglab::LossTerms loss(const torch::Tensor& batch) override {
    // The regularizers are the whole objective, e.g. score_pde + terminal_ism: the
    // HJB-regularized score model trained as the MFG paper trains it.
    auto shared = std::exchange(shared_, std::nullopt);
    if (loss_ == LossKind::none) return {};
    // The points collocation() drew on this batch for the regularizers, if any, else new ones.
    const bool reuse = shared && shared->batch.is_same(batch);
    const auto noised = reuse ? shared->noised : noised_batch(batch);
    const auto shared_value = reuse ? shared->value : torch::Tensor();
    const double n = static_cast<double>(noised.z.size(0));
    auto t = noised.input.narrow(1, d_, 1);
    if (loss_ == LossKind::esm) {
      // sigma * (score - s*) = -(eps_hat + sigma s*): the dsm residual with the noise z
      // replaced by its conditional mean given x_t, -sigma s*.
      auto xt = noised.input.narrow(1, 0, d_);
      torch::Tensor target;
      {
        torch::NoGradGuard no_grad;
        auto tt = t.detach();
        auto sigma = proc_.sigma(tt);
        target = -sigma * exact_->score(xt.detach(), proc_.alpha(tt), sigma).to(xt.scalar_type());
      }
      auto predicted = param_ == Parameterization::score ? net_.forward(noised.input)
                                                         : noise_prediction(xt, t, true);
      auto per_sample = (predicted - target).square().sum(1, /*keepdim=*/true);
      if (weighting_ == Weighting::likelihood) per_sample = per_sample * likelihood_factor(t);
      return {{"esm", per_sample.sum() / n}};
    }
    if (loss_ == LossKind::dsm) {
      // sigma * score + z = z - eps_hat. The direct network reads the noised batch as is.
      auto predicted = param_ == Parameterization::potential ? noise_prediction(noised.input.narrow(1, 0, d_), t, true)
                       : shared_value.defined()                  ? shared_value
                                                                 : net_.forward(noised.input);
      // Summed over dimensions, averaged over the batch.
      if (weighting_ == Weighting::sigma2) return {{"dsm", (predicted - noised.z).square().sum() / n}};
      auto per_sample = (predicted - noised.z).square().sum(1, /*keepdim=*/true);
      return {{"dsm", (per_sample * likelihood_factor(t)).sum() / n}};
    }

    // Implicit score matching needs derivatives in x at the noised points.
    auto x = noised.input.narrow(1, 0, d_).detach().requires_grad_();
    auto predicted = noise_prediction(x, t, true);
    auto div = divergence(predicted, x, true);  // [N]
    auto per_sample = 0.5 * predicted.square().sum(1) - proc_.sigma(t).squeeze(1) * div;
    if (weighting_ == Weighting::likelihood) per_sample = per_sample * likelihood_factor(t).squeeze(1);
    return {{"ism", per_sample.sum() / n}};
  }

  torch::Tensor sample(int64_t n) override {
    if (n < 0) throw Error("cannot draw " + std::to_string(n) + " samples");
    torch::NoGradGuard no_grad;
    // The particles live in the network's input buffer next to the time column, so each
    // step updates them in place and the network reads them without a concatenation.
    auto input = torch::empty({n, d_ + 1}, options_);
    auto x = input.narrow(1, 0, d_);
    auto time = input.narrow(1, d_, 1);
    x.normal_(0.0, proc_.prior_std(), generator_);
    if (sampler_ == Sampler::ode) return ode_sample(x.contiguous());

    auto noise = torch::empty({n, d_}, options_);
    const double T = proc_.T, dt = (T - eps_) / static_cast<double>(steps_);
    for (int64_t k = 0; k < steps_; ++k) {
      const double t = T - static_cast<double>(k) * dt;
      const double sigma = proc_.sigma(t), g2 = proc_.g2(t);
      time.fill_(t);
      if (sampler_ == Sampler::pc) {
        // Langevin corrector, step size from the target signal-to-noise ratio
        // (Song et al. 2021, algorithm 5).
        auto score = predict(input).div_(-sigma);
        noise.normal_(0.0, 1.0, generator_);
        const double grad_norm = score.norm(2, 1).mean().item<double>();
        const double noise_norm = noise.norm(2, 1).mean().item<double>();
        const double ratio = snr_ * noise_norm / std::max(grad_norm, 1e-12);
        const double step = 2 * ratio * ratio;
        x.add_(score, step).add_(noise, std::sqrt(2 * step));
      }
      auto predicted = predict(input);
      // Reverse drift, stepping t -> t - dt:  x -= (k x - g^2 score) dt,
      // score = -eps_hat / sigma.
      x.mul_(1.0 - proc_.drift_coef(t) * dt).sub_(predicted, g2 * dt / sigma);
      // The last step returns the mean: added noise there would only blur the samples.
      if (k + 1 < steps_) x.add_(noise.normal_(0.0, 1.0, generator_), std::sqrt(g2 * dt));
    }
    return x.contiguous();
  }

  torch::Tensor log_prob(const torch::Tensor& points) override {
    check_batch(points);
    auto x0 = points.to(options_).detach();
    const int64_t n = x0.size(0);
    // Hutchinson probes, fixed for the whole solve so the integrand is one smooth function.
    torch::Tensor probes;
    if (d_ > exact_div_max_dim_)
      probes = torch::randint(0, 2, {n, d_}, generator_, options_).mul_(2).sub_(1);
    auto field = [&](double t, const torch::Tensor& y) {
      torch::AutoGradMode grad_on(true);
      auto x = y.narrow(1, 0, d_).detach().requires_grad_();
      auto tc = torch::full({n, 1}, t, options_);
      auto predicted = noise_prediction(x, tc, true);
      auto div = probes.defined() ? mfglab::nn::divergence_hutchinson(predicted, x, probes, false)
                                  : mfglab::nn::divergence(predicted, x, false);
      // v = k x - g^2 score / 2 = k x + g^2 eps_hat / (2 sigma), and its divergence.
      const double k = proc_.drift_coef(t), c = 0.5 * proc_.g2(t) / proc_.sigma(t);
      auto v = k * x.detach() + c * predicted.detach();
      auto div_v = k * static_cast<double>(d_) + c * div.detach();
      return torch::cat({v, div_v.unsqueeze(1)}, 1);
    };
    auto y0 = torch::cat({x0, torch::zeros({n, 1}, options_)}, 1);
    auto y1 = solve(field, y0, eps_, proc_.T);
    // log p_eps(x) = log p_T(x_T) + int_eps^T div v dt.
    return proc_.prior_log_density(y1.narrow(1, 0, d_)) + y1.select(1, d_);
  }

  torch::Tensor score(const torch::Tensor& x, const torch::Tensor& t) override {
    auto tc = column(t, x.size(0)).to(x.scalar_type());
    // Differentiable in both x and t when the caller records a graph: regularizers take
    // derivatives of the score.
    return -noise_prediction(x, tc, torch::GradMode::is_enabled()) / proc_.sigma(tc);
  }

  // The potential U = -net / sigma, whose x-gradient is the score.
  torch::Tensor value(const torch::Tensor& x, const torch::Tensor& t) override {
    if (param_ != Parameterization::potential)
      throw Error("sgm has a value function U only with parameterization \"potential\" "
                  "(this model learns the score directly)");
    auto tc = column(t, x.size(0)).to(x.scalar_type());
    return (-net_.forward(torch::cat({x, tc}, 1)) / proc_.sigma(tc)).squeeze(1);
  }

  double horizon() const override { return proc_.T; }

  torch::Tensor drift(const torch::Tensor& x, const torch::Tensor& t) override {
    return proc_.drift_coef(column(t, x.size(0))) * x;
  }

  torch::Tensor diffusion(const torch::Tensor& t) override { return torch::sqrt(proc_.g2(t.reshape({-1, 1}))); }

  // Fresh forward-noised points, kept for loss() on the same batch (see SharedDraw).
  mfglab::Collocation collocation(const torch::Tensor& batch) override {
    torch::NoGradGuard no_grad;
    auto noised = noised_batch(batch);
    mfglab::Collocation points{noised.input.narrow(1, 0, d_).contiguous(), noised.input.narrow(1, d_, 1).contiguous()};
    shared_ = SharedDraw{batch, noised, points.x, points.t, points.x._version(), points.t._version(), {}};
    return points;
  }

  // ForwardProcess: X_t = alpha(t) X_0 + sigma(t) Z, differentiable in t.
  torch::Tensor alpha(const torch::Tensor& t) override { return proc_.alpha(t); }
  torch::Tensor sigma(const torch::Tensor& t) override { return proc_.sigma(t); }
  double t_min() const override { return eps_; }
  double t_max() const override { return proc_.T; }

  // ScoreDerivatives. A score network gives them from one sweep of second_order_jets with the
  // Laplacian slab: s = -net([x, t]) / sigma(t), so J and Lap s are the net's, divided by -sigma, and d_t s = -(d_t net - net sigma' / sigma) / sigma with
  // sigma' = k sigma + g^2 / (2 sigma) (from (sigma^2)' = 2 k sigma^2 + g^2, every process).
  mfglab::ScoreDerivativeValues score_derivatives(const torch::Tensor& x, const torch::Tensor& t) override {
    if (param_ == Parameterization::potential) return potential_derivatives(x, t);
    check_batch(x);
    auto tc = column(t, x.size(0)).to(x.scalar_type()).detach();
    auto jets = mfglab::nn::second_order_jets(net_, torch::cat({x.detach(), tc}, 1), d_,
                                              mfglab::nn::SecondOrderKind::laplacian);
    remember_value(x, t, jets.value);
    return scaled_derivatives(tc, jets.value, jets.jacobian, jets.time, jets.second[0]);
  }

  // ScoreDerivatives2. With a score network grad(div s) comes from one sweep of tangents up
  // and output adjoints down (mfglab/divergence_gradient_sweep.h), linear in d: 2.2-2.8x
  // faster than autograd's d + 1 reverse passes at every d from 2 to 16, and 1.5x faster
  // than a sweep of the whole Hessian at d = 2 (bench/score_grad_bench; width 128, batch
  // 1024). With a potential both terms are the same, grad(Lap U) (J is a Hessian, symmetric).
  bool offers(mfglab::ScoreSecondOrder) const override { return true; }
  mfglab::ScoreDerivativeValues score_derivatives(const torch::Tensor& x, const torch::Tensor& t,
                                                  mfglab::ScoreSecondOrder second) override {
    if (second == mfglab::ScoreSecondOrder::laplacian || param_ == Parameterization::potential)
      return score_derivatives(x, t);
    check_batch(x);
    auto tc = column(t, x.size(0)).to(x.scalar_type()).detach();
    auto jets = mfglab::nn::divergence_gradient_jets(net_, torch::cat({x.detach(), tc}, 1), d_);
    remember_value(x, t, jets.value);
    return scaled_derivatives(tc, jets.value, jets.jacobian, jets.time, jets.divergence_gradient);
  }

  // HjbResidual: |r|_2 of the score PDE's residual (mfglab/score_pde.h, Laplacian form).
  torch::Tensor hjb_residual(const torch::Tensor& x, const torch::Tensor& t) override {
    auto tc = column(t, x.size(0)).to(x.scalar_type());
    auto derivatives = mfglab::score_pde::derivatives(*this, x, tc, mfglab::score_pde::SecondOrder::laplacian);
    return mfglab::score_pde::residual(*this, x, tc, derivatives).norm(2, 1);
  }
  std::string hjb_equation() const override { return "d_t s + grad(div f) + grad(f.s) - g^2/2 (Lap s + 2 J s)"; }

 private:
  struct Noised {
    torch::Tensor input;  // [N, d+1]: alpha(t) x0 + sigma(t) z, then t
    torch::Tensor z;      // [N, d]
  };

  // The forward-noised batch that collocation() drew for the regularizers in this training
  // iteration, kept for loss() on the same batch tensor (the engine asks for the penalties
  // first). The loss and the regularizers then see the same points, as in
  // ../shared/ref/sgm_ref.py; and when a jets sweep for the score PDE's
  // derivatives has already computed the network's output there (score parameterization),
  // the loss uses that output, so that the network is not run twice on the same points.
  struct SharedDraw {
    torch::Tensor batch;  // held, so that its TensorImpl (the identity checked) is not reused
    Noised noised;
    torch::Tensor x, t;   // the points collocation() returned
    uint32_t x_version, t_version;  // their versions then: points changed in place are not these
    torch::Tensor value;  // net([x, t]) from a jets sweep, in the graph; or undefined
  };
  std::optional<SharedDraw> shared_;

  void remember_value(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& value) {
    if (shared_ && loss_ == LossKind::dsm && param_ == Parameterization::score && value.requires_grad() &&
        x.is_same(shared_->x) && t.is_same(shared_->t) && x._version() == shared_->x_version &&
        t._version() == shared_->t_version)
      shared_->value = value;
  }

  // Draws t ~ U(eps, T) and z ~ N(0, I) and writes the forward-noised batch straight into
  // the network's input layout.
  Noised noised_batch(const torch::Tensor& batch) {
    check_batch(batch);
    auto x0 = batch.to(options_);  // no copy when dtype and device already match
    const int64_t n = x0.size(0);
    auto input = torch::empty({n, d_ + 1}, options_);
    auto t = input.narrow(1, d_, 1);
    t.uniform_(eps_, proc_.T, generator_);
    auto z = torch::randn({n, d_}, generator_, options_);
    auto [alpha, sigma] = at_times<2>(t, [&](double u) { return std::array{proc_.alpha(u), proc_.sigma(u)}; });
    auto xt = input.narrow(1, 0, d_);
    torch::mul_out(xt, x0, alpha);
    xt.addcmul_(sigma, z);
    return {input, z};
  }

  // The potential's score derivatives: s = -grad_x net / sigma needs the net's derivatives up
  // to third order: grad_x net, its Hessian, d_t grad_x net and grad(Lap net) (the
  // Laplacian of the score up to its sign and scale). silu and tanh networks get them from
  // one sweep of third-order jets with a hand-written reverse pass. Other activations: one
  // sweep of MLP::jets (grad net, d_t net, Lap net, plain operations that can be
  // differentiated again), then d + 1 reverse passes through it (row j of the Hessian with
  // d_t d_j net from grad_x(d_j net), and grad(Lap net)). Autograd alone would need
  // 1 + d + d^2 nested passes, the last ones third order.
  mfglab::ScoreDerivativeValues potential_derivatives(const torch::Tensor& x, const torch::Tensor& t) {
    check_batch(x);
    torch::AutoGradMode grad_on(true);
    auto tc = column(t, x.size(0)).to(x.scalar_type()).detach();
    if (mfglab::nn::detail::looped(net_.activation(), x)) {
      // silu and tanh: all of it in one sweep of third-order jets (mfglab/hessian_jets.h).
      const int64_t n = x.size(0), k = d_ + 1;
      auto jets = mfglab::nn::second_order_jets(net_, torch::cat({x.detach(), tc}, 1), d_,
                                                mfglab::nn::SecondOrderKind::potential);
      std::vector<int64_t> hess, time;
      for (int64_t i = 0; i < d_; ++i) {
        for (int64_t j = 0; j < d_; ++j) hess.push_back(mfglab::nn::hessian_slab(i, j, k));
        time.push_back(mfglab::nn::hessian_slab(i, d_, k));
      }
      auto second = jets.second.squeeze(2).t();  // [N, S]
      return scaled_derivatives(tc, jets.jacobian.squeeze(2), second.index_select(1, torch::tensor(hess)).view({n, d_, d_}),
                                second.index_select(1, torch::tensor(time)), jets.third.squeeze(2).t());
    }
    auto input = torch::cat({x.detach(), tc}, 1).requires_grad_();
    auto jets = net_.jets(input, d_);  // output width 1
    // (zeros where a derivative does not reach the input, as with relu's second derivative)
    using mfglab::score_pde::grads;
    auto ones = torch::ones({x.size(0), 1}, input.options());
    std::vector<torch::Tensor> hess_rows, time_rows;
    for (int64_t j = 0; j < d_; ++j) {
      auto g = grads(jets.jacobian.select(1, j), {input}, ones)[0];
      hess_rows.push_back(g.narrow(1, 0, d_));
      time_rows.push_back(g.narrow(1, d_, 1));
    }
    auto grad_lap = grads(jets.laplacian, {input}, ones)[0].narrow(1, 0, d_);
    return scaled_derivatives(tc, jets.jacobian.squeeze(2), torch::stack(hess_rows, 2), torch::cat(time_rows, 1),
                              grad_lap);
  }

  // The score's derivatives from the network's (value [N, d], jacobian [N, d, d], time and
  // a second-order term [N, d]): s = -net / sigma, so J and the second-order terms are the
  // net's divided by -sigma, and d_t s = -(d_t net - net sigma' / sigma) / sigma with
  // sigma' = k sigma + g^2 / (2 sigma).
  mfglab::ScoreDerivativeValues scaled_derivatives(const torch::Tensor& tc, const torch::Tensor& value,
                                                   const torch::Tensor& jacobian, const torch::Tensor& time,
                                                   const torch::Tensor& second) {
    // -1 / sigma and (sigma' / sigma) / sigma, [N, 1].
    auto [neg_inv, time_coef] = at_times<2>(tc, [&](double u) {
      const double inv = 1.0 / proc_.sigma(u);
      return std::array{-inv, (proc_.drift_coef(u) + 0.5 * proc_.g2(u) * inv * inv) * inv};
    });
    mfglab::ScoreDerivativeValues v;
    v.score = value * neg_inv;
    v.jacobian = jacobian * neg_inv.unsqueeze(2);
    v.laplacian = second * neg_inv;
    v.time = torch::addcmul(value * time_coef, time, neg_inv);
    return v;
  }

  // eps_hat = -sigma(t) score at (x, t [N, 1]). For the potential it is grad_x net, kept
  // differentiable (in x, t and the weights) when create_graph.
  torch::Tensor noise_prediction(const torch::Tensor& x, const torch::Tensor& t, bool create_graph) {
    if (param_ == Parameterization::score) return net_.forward(torch::cat({x, t}, 1));
    torch::AutoGradMode grad_on(true);  // also under a caller's NoGradGuard
    auto xg = x.requires_grad() ? x : x.detach().requires_grad_();
    auto u = net_.forward(torch::cat({xg, t}, 1));
    return torch::autograd::grad({u.sum()}, {xg}, {}, /*retain_graph=*/create_graph, create_graph)[0];
  }

  // eps_hat at the sampler's input buffer [x, t], without a graph.
  torch::Tensor predict(const torch::Tensor& input) {
    if (param_ == Parameterization::score) return net_.forward(input);
    torch::AutoGradMode grad_on(true);
    auto in = input.detach().requires_grad_();
    auto u = net_.forward(in);
    return torch::autograd::grad({u.sum()}, {in})[0].narrow(1, 0, d_);
  }

  // div_x f [N]: exact (d backward passes) up to exact_div_max_dim, else Hutchinson with
  // one Rademacher probe per sample from the run's generator.
  torch::Tensor divergence(const torch::Tensor& f, const torch::Tensor& x, bool create_graph) {
    if (d_ <= exact_div_max_dim_) return mfglab::nn::divergence(f, x, create_graph);
    auto probes = torch::randint(0, 2, x.sizes(), generator_, options_).mul_(2).sub_(1);
    return mfglab::nn::divergence_hutchinson(f, x, probes, create_graph);
  }

  // g^2 / sigma^2 [N, 1]: turns the sigma^2-weighted residual into the likelihood weighting.
  torch::Tensor likelihood_factor(const torch::Tensor& t) const {
    return proc_.g2(t) / proc_.sigma(t).square();
  }

  // The probability-flow ODE from the prior sample x at T down to eps.
  torch::Tensor ode_sample(const torch::Tensor& xT) {
    const int64_t n = xT.size(0);
    auto field = [&](double t, const torch::Tensor& x) {
      auto input = torch::cat({x, torch::full({n, 1}, t, options_)}, 1);
      // f - g^2 score / 2 = k x + g^2 eps_hat / (2 sigma).
      return proc_.drift_coef(t) * x + (0.5 * proc_.g2(t) / proc_.sigma(t)) * predict(input);
    };
    return solve(field, xT, proc_.T, eps_).contiguous();
  }

  torch::Tensor solve(const sgm::OdeFunction& f, const torch::Tensor& y0, double t0, double t1) {
    if (solver_ == OdeSolver::rk4) return sgm::rk4(f, y0, t0, t1, steps_);
    return sgm::dopri5(f, y0, t0, t1, dopri_);
  }

  void check_batch(const torch::Tensor& batch) const {
    if (batch.dim() != 2 || batch.size(1) != d_)
      throw Error("expected a batch of shape [N, " + std::to_string(d_) + "], got " + shape(batch));
  }

  static std::string shape(const torch::Tensor& x) {
    std::ostringstream out;
    out << x.sizes();
    return out.str();
  }

  // K coefficients of the process at each time of t [N, 1], from f(time) -> std::array<double, K>,
  // by one scalar loop: a coefficient as tensor operations on [N, 1] is a chain of a dozen small
  // operations, whose overhead costs more than the arithmetic. No graph: the times here are
  // drawn or detached.
  template <size_t K, class F>
  static std::array<torch::Tensor, K> at_times(const torch::Tensor& t, F coefficients) {
    auto times = t.detach().contiguous();
    std::array<torch::Tensor, K> out;
    for (auto& o : out) o = torch::empty_like(times);
    AT_DISPATCH_FLOATING_TYPES(times.scalar_type(), "sgm_at_times", [&] {
      const auto* in = times.data_ptr<scalar_t>();
      std::array<scalar_t*, K> dst;
      for (size_t k = 0; k < K; ++k) dst[k] = out[k].template data_ptr<scalar_t>();
      for (int64_t i = 0; i < times.numel(); ++i) {
        const auto c = coefficients(static_cast<double>(in[i]));
        for (size_t k = 0; k < K; ++k) dst[k][i] = static_cast<scalar_t>(c[k]);
      }
    });
    return out;
  }

  // Times arrive as [N, 1]; [N] and a single time are accepted too.
  static torch::Tensor column(const torch::Tensor& t, int64_t n) {
    if (t.numel() == n) return t.reshape({n, 1});
    if (t.numel() == 1) return t.reshape({1, 1}).expand({n, 1});
    throw Error("expected times of shape [" + std::to_string(n) + ", 1], got " + shape(t));
  }

  int64_t d_;
  ForwardProcessSpec proc_;
  double eps_;
  int64_t steps_;
  double snr_;
  int64_t exact_div_max_dim_;
  Parameterization param_ = Parameterization::score;
  LossKind loss_ = LossKind::dsm;
  mfglab::ExactDensity* exact_ = nullptr;  // the dataset's exact score for esm; not owned
  Weighting weighting_ = Weighting::sigma2;
  Sampler sampler_ = Sampler::em;
  OdeSolver solver_ = OdeSolver::rk4;
  sgm::Dopri5Options dopri_;
  torch::Generator generator_;  // shares the run generator's state
  torch::TensorOptions options_;
  mfglab::nn::MLP net_;
};

}  // namespace

// Only the potential parameterization has a value function (U with s = grad U); the
// manifest says so, and validation refuses "value" needs of the score parameterization.
MFGLAB_PLUGIN(Sgm, MFGLAB_KIND_MODEL, "sgm", "1.5.0",
              "Score-based generative model: VP/sub-VP/VE/OU SDEs, score or potential network, "
              "DSM/ISM losses, EM/PC/probability-flow samplers, ODE log-likelihood",
              "score,log_prob,value(parameterization=potential),collocation",
              kWidth, kDepth, kActivation, kBetaMin, kBetaMax, kEps, kSampleSteps, kProcess, kT, kSigmaMin, kSigmaMax,
              kParameterization, kLoss, kWeighting, kExactDivMaxDim, kSampler, kSnr, kOdeSolver, kRtol, kAtol)
