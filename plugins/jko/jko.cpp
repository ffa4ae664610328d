// JKO flows: a Wasserstein gradient flow of an energy E, discretised by the JKO scheme
//   rho_{k+1} = argmin_rho E(rho) + W2^2(rho_k, rho) / (2 tau_k),
// where each step is the mean-field game on [0, tau_k] with running cost 1/2 |v|^2, no
// interaction and terminal cost E: a potential flow v = -grad_x Phi_k (Benamou-Brenier),
// whose value is int_0^tau E 1/2 |v|^2 dt + E(rho_tau) and equals W2^2 / (2 tau) + E at the
// optimum. Block k is the OT-Flow potential of <mfglab/potential.h> in local time
// t in [0, tau_k] (global time T_k + t, T_k = tau_0 + ... + tau_{k-1}).
//
// Blocks are trained one after the other inside the engine's loop: iterations_per_block
// loss() calls train block k (earlier blocks are frozen: they run without autograd and their
// gradients are cleared so that Adam's momentum cannot move them), then block k + 1 starts,
// warm-started from block k. The block index lives in a non-trainable tensor among the
// parameters, so checkpoints and resumes keep it.
//
// Augmented state of a block, integrated by RK4 over [0, tau_k]:
//   d/dt [x, l, W, R] = [-grad_x Phi, -tr Hess_xx Phi, 1/2 |grad_x Phi|^2, | -d_t Phi + 1/2 |grad_x Phi|^2 |]
// so l = log|det Dx(tau)/Dx(0)| and log rho_{k+1}(x(tau)) = log rho_k(x(0)) - l.
// Loss terms: kinetic = mean W (= W2^2 / (2 tau) for the optimal flow), energy = E(rho_{k+1}),
// and alpha_R mean R (the HJB residual of the block) when alpha_R > 0.
//
// mode "generative" (the normalizing direction of JKO-iFlow): data -> target. The data's own
// log-density is unknown, so an entropy part of E is measured relative to it (for kl the
// energy term is the data's negative log-likelihood under the model). log_prob and sample go
// through the composed blocks with the energy's stationary law as the reference density.
// mode "particles": a cloud drawn from N(initial_mean, diag(initial_std^2)) (whitened so its
// empirical mean and covariance are exactly those) follows successive JKO steps toward the
// target, with its log-density tracked exactly (each block trains on its own fresh cloud,
// carried through the earlier blocks); for a Gaussian target each step is compared
// with the exact gradient flow and the exact JKO scheme (both Gaussian, closed forms below)
// and written to jko_steps.csv. The engine's batches are ignored in that mode.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <mfglab/energy.h>
#include <mfglab/plugin.h>
#include <mfglab/potential.h>

#include "jko_internals.h"

namespace {

using mfglab::Error;
using mfglab::jko::StepRecord;
using mfglab::nn::Potential;
using torch::Tensor;

// The parameters, declared once: the manifest lists them, the constructor reads them back (the
// choices of mode and target tied to enums).
enum class Mode { generative, particles };
enum class Target { standard_normal, gaussian, dataset };
const auto kMode = mfglab::choice_param("mode", Mode::generative,
                                        mfglab::Choices<Mode>{{"generative", Mode::generative}, {"particles", Mode::particles}},
                                        "generative: data -> target, log_prob and sample through the blocks; "
                                        "particles: a Gaussian cloud follows the JKO steps (batches ignored)");
const auto kBlocks = mfglab::int_param("blocks", 4, "K: JKO steps, one potential-flow block each").at_least(1);
const auto kHorizon = mfglab::number_param("horizon", 0.0,
                                           "if > 0: blocks = the number of steps tau_k that reach this time "
                                           "(overrides blocks)")
                          .at_least(0);
const auto kTau = mfglab::number_param("tau", 0.25, "step tau_0 of the first block").above(0);
const auto kTauGrowth =
    mfglab::number_param("tau_growth", 1.0, "tau_k = tau * tau_growth^k (1: constant steps)").at_least(1);
const auto kIterationsPerBlock = mfglab::int_param("iterations_per_block", 250,
                                                   "loss() calls that train each block before the next starts; "
                                                   "set train.iterations = blocks x this")
                                     .at_least(1);
const auto kEnergy = mfglab::choice_param("energy", "kl", "kl|cross_entropy|free_energy",
                                          "kl: KL(rho, pi); cross_entropy: -E log pi; free_energy: E[V] + D E[log rho] "
                                          "with V = -log pi");
const auto kTemperature = mfglab::number_param("temperature", 1.0, "D of free_energy (kl is D = 1)").at_least(0);
const auto kTarget = mfglab::choice_param(
    "target", Target::standard_normal,
    mfglab::Choices<Target>{{"standard_normal", Target::standard_normal}, {"gaussian", Target::gaussian}, {"dataset", Target::dataset}},
    "pi: N(0, I); N(target_mean, diag target_std^2); or the dataset's exact density (particle mode only)");
const auto kTargetMean = mfglab::numbers_param("target_mean", {0.0}, "mean of a gaussian target (1 or d numbers)");
const auto kTargetStd =
    mfglab::numbers_param("target_std", {1.0}, "std of a gaussian target (1 or d numbers)").above(0);
const auto kWidth = mfglab::int_param("width", 32, "ResNet width of each block's potential").at_least(1);
const auto kLayers = mfglab::int_param("layers", 2, "ResNet layers of each block's potential (>= 2)").at_least(2);
const auto kSteps = mfglab::int_param("steps", 4, "RK4 steps per block for training").at_least(1);
const auto kEvalSteps =
    mfglab::int_param("eval_steps", 0, "RK4 steps per block for log_prob and sample; 0 = steps").at_least(0);
const auto kAlphaR = mfglab::number_param("alpha_R", 0.0, "weight of each block's HJB residual term R").at_least(0);
const auto kWarmStart = mfglab::bool_param("warm_start", true, "start block k + 1 from block k's parameters");
const auto kParticles = mfglab::int_param("particles", 2000, "particle mode: cloud size").at_least(2);
const auto kInitialMean = mfglab::numbers_param("initial_mean", {1.5}, "particle mode: initial mean (1 or d numbers)");
const auto kInitialStd =
    mfglab::numbers_param("initial_std", {2.0}, "particle mode: initial std (1 or d numbers)").above(0);

std::string shape(const Tensor& x) {
  std::ostringstream out;
  out << x.sizes();
  return out.str();
}

std::string num(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

// A list parameter of length 1 (broadcast) or d, as a float64 tensor [d].
Tensor per_coordinate(const mfglab::Params& p, const mfglab::Param<std::vector<double>>& param, int64_t d,
                      bool positive) {
  const auto v = p[param];
  const std::string& key = param.name;
  if (v.size() != 1 && static_cast<int64_t>(v.size()) != d)
    throw Error("params." + key + ": expected 1 or " + std::to_string(d) + " numbers (the data dimension), got " +
                std::to_string(v.size()));
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i]) || (positive && !(v[i] > 0)))
      throw Error("params." + key + "[" + std::to_string(i) + "]: expected a " + (positive ? "positive " : "") +
                  "finite number, got " + num(v[i]));
  auto t = torch::tensor(v, torch::kFloat64);
  return v.size() == 1 ? t.expand({d}).contiguous() : t;
}

class Jko final : public mfglab::Model, public mfglab::HjbResidual, public mfglab::jko::Internals {
 public:
  Jko(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : d_(ctx.data_dim),
        K_(params[kBlocks]),
        per_block_(params[kIterationsPerBlock]),
        steps_(params[kSteps]),
        eval_steps_(params[kEvalSteps] > 0 ? params[kEvalSteps] : params[kSteps]),
        alpha_R_(params[kAlphaR]),
        warm_start_(params[kWarmStart]),
        particles_mode_(params[kMode] == Mode::particles),
        energy_name_(params[kEnergy]),
        generator_(ctx.generator),
        options_(ctx.options()),
        ctx_(ctx) {
    if (d_ < 1)
      throw Error("the data dimension is " + std::to_string(d_) + "; the engine must set it before creating the model");
    // The declared bounds say the same for experiment files; repeated for direct creation.
    if (K_ < 1) throw Error("params.blocks: expected an integer >= 1, got " + std::to_string(K_));
    const double tau = params[kTau], growth = params[kTauGrowth];
    if (!(tau > 0) || !std::isfinite(tau)) throw Error("params.tau: expected a number > 0, got " + num(tau));
    if (!(growth >= 1) || !std::isfinite(growth))
      throw Error("params.tau_growth: expected a number >= 1, got " + num(growth));
    if (per_block_ < 1)
      throw Error("params.iterations_per_block: expected an integer >= 1, got " + std::to_string(per_block_));
    if (steps_ < 1) throw Error("params.steps: expected an integer >= 1, got " + std::to_string(steps_));
    const int64_t layers = params[kLayers], width = params[kWidth];
    if (layers < 2) throw Error("params.layers: expected an integer >= 2, got " + std::to_string(layers));
    if (width < 1) throw Error("params.width: expected an integer >= 1, got " + std::to_string(width));
    // horizon > 0: as many steps as reach that time (so a sweep over tau keeps the horizon).
    const double target_time = params[kHorizon];
    if (target_time > 0) {
      K_ = 0;
      for (double reached = 0; reached < target_time * (1 - 1e-9); ++K_) {
        reached += tau * std::pow(growth, static_cast<double>(K_));
        if (K_ >= 10000)
          throw Error("params.horizon: " + num(target_time) + " needs more than 10000 steps of tau = " + num(tau));
      }
    }
    double start = 0;
    for (int64_t k = 0; k < K_; ++k) {
      taus_.push_back(tau * std::pow(growth, static_cast<double>(k)));
      starts_.push_back(start);
      start += taus_.back();
    }

    // The target pi and the energy.
    const Target target = params[kTarget];
    temperature_ = energy_name_ == "kl" ? 1.0 : energy_name_ == "cross_entropy" ? 0.0 : params[kTemperature];
    if (target == Target::dataset) {
      auto* exact = mfglab::capability<mfglab::ExactDensity>(ctx.dataset, mfglab::kExactDensity);
      if (!exact)
        throw Error("params.target: 'dataset' needs a dataset with an exact density (the "
                    "mfglab.exact_density/1 capability, e.g. gmm); this experiment's dataset does not offer one");
      if (!particles_mode_)
        throw Error("params.target: the generative mode samples from the target, so it needs a Gaussian "
                    "target (standard_normal or gaussian), not 'dataset'");
      log_target_ = mfglab::energy::exact_density_log_density(*exact);
    } else {
      gaussian_target_ = true;
      mu_ = target == Target::gaussian ? per_coordinate(params, kTargetMean, d_, false) : torch::zeros({d_}, torch::kFloat64);
      sd_ = target == Target::gaussian ? per_coordinate(params, kTargetStd, d_, true) : torch::ones({d_}, torch::kFloat64);
      log_target_ = mfglab::energy::diagonal_gaussian_log_density(mu_, sd_);
    }
    energy_ = mfglab::energy::make(energy_name_, log_target_, temperature_);
    if (!particles_mode_ && !(temperature_ > 0))
      throw Error("params.energy: '" + energy_name_ + "' with temperature 0 has no stationary density (the flow "
                  "collapses onto the target's mode); the generative mode needs kl, or free_energy with temperature > 0");

    for (int64_t k = 0; k < K_; ++k) blocks_.emplace_back(d_, width, layers, generator_, options_);
    state_ = torch::zeros({2}, options_);  // (block being trained, loss calls in it)

    if (particles_mode_) {
      const int64_t n = params[kParticles];
      if (n <= d_)
        throw Error("params.particles: expected more particles than dimensions (" + std::to_string(d_) + "), got " +
                    std::to_string(n));
      a_ = per_coordinate(params, kInitialMean, d_, false);
      s0_ = per_coordinate(params, kInitialStd, d_, true);
      n_particles_ = n;
      std::tie(x0_, logrho0_) = draw_cloud(generator_);
      // Each block trains on its own fresh cloud (so that the recorded cloud measures the
      // learned maps, not their fit to one sample); block k's comes from a generator seeded
      // with base_seed_ + k, base_seed_ drawn from the run's generator: reproducible, and a
      // resumed run draws the same clouds.
      base_seed_ = torch::randint(1LL << 40, {1}, generator_, torch::kLong).item<int64_t>();
      cloud_x_ = x0_;
      cloud_logrho_ = logrho0_;
      cloud_k_ = 0;
    }
    ctx.info("jko: " + std::to_string(K_) + " blocks, tau_0 = " + num(taus_[0]) + ", horizon " + num(horizon()) +
             ", energy " + energy_name_ + ", " + (particles_mode_ ? "particle" : "generative") + " mode");
  }

  void* capability(const char* id) override {
    if (std::strcmp(id, mfglab::kHjbResidual) == 0) return static_cast<mfglab::HjbResidual*>(this);
    if (std::strcmp(id, mfglab::jko::kInternals) == 0) return static_cast<mfglab::jko::Internals*>(this);
    return nullptr;
  }

  std::vector<Tensor> parameters() override {
    std::vector<Tensor> out;
    for (const auto& b : blocks_) {
      auto p = b.parameters();
      out.insert(out.end(), p.begin(), p.end());
    }
    out.push_back(state_);  // never has a gradient: Adam skips it, checkpoints keep it
    return out;
  }

  mfglab::LossTerms loss(const Tensor& batch) override {
    if (current() < K_ - 1 && calls() >= per_block_) switch_to(current() + 1);
    const int64_t b = current();
    Tensor x, log_rho;
    if (particles_mode_) {
      training_cloud(b);
      x = train_x_, log_rho = train_logrho_;
    } else {
      if (batch.dim() != 2 || batch.size(1) != d_)
        throw Error("expected a batch of shape [N, " + std::to_string(d_) + "], got " + shape(batch));
      // Frozen blocks: log rho relative to the data's unknown log-density.
      torch::NoGradGuard no_grad;
      x = batch.to(options_);
      log_rho = torch::zeros({x.size(0)}, options_);
      for (int64_t j = 0; j < b; ++j) {
        auto z = rk4(j, augment(x), 0.0, taus_[j], steps_, true);
        x = z.narrow(1, 0, d_).contiguous();
        log_rho = log_rho - z.select(1, d_);
      }
    }
    auto z = rk4(b, augment(x), 0.0, taus_[b], steps_, true);
    auto x1 = z.narrow(1, 0, d_);
    auto kinetic = z.select(1, d_ + 1).mean();
    auto energy = energy_->value(x1, log_rho - z.select(1, d_));
    const double e = energy.item<double>();
    if (!std::isfinite(e))
      throw Error("jko block " + std::to_string(b + 1) + " of " + std::to_string(K_) + ": the energy (" + energy_name_ +
                  ") became non-finite (" + num(e) + ") at its iteration " + std::to_string(calls() + 1));
    {
      torch::NoGradGuard no_grad;
      state_[1].add_(1.0);
    }
    mfglab::LossTerms terms = {{"kinetic", kinetic}, {"energy", energy}};
    if (alpha_R_ > 0) terms.push_back({"R", alpha_R_ * z.select(1, d_ + 2).mean()});
    return terms;
  }

  Tensor sample(int64_t n) override {
    if (n < 0) throw Error("cannot draw " + std::to_string(n) + " samples");
    torch::NoGradGuard no_grad;
    const int64_t active = trained();
    if (active < K_ && !warned_) {
      ctx_.warn("jko: only " + std::to_string(active) + " of " + std::to_string(K_) +
                " blocks were trained (train.iterations < blocks x iterations_per_block); using those");
      warned_ = true;
    }
    if (particles_mode_) {
      write_steps();
      auto x = (a_ + torch::randn({n, d_}, generator_, torch::kFloat64) * s0_).to(options_);
      for (int64_t j = 0; j < active; ++j) x = rk4(j, x, 0.0, taus_[j], eval_steps_, false);
      return x.contiguous();
    }
    auto x = reference_sample(n);
    for (int64_t j = active - 1; j >= 0; --j) x = rk4(j, x, taus_[j], 0.0, eval_steps_, false);
    return x.contiguous();
  }

  Tensor log_prob(const Tensor& x_in) override {
    if (particles_mode_) throw Error("jko: log_prob is available in the generative mode only");
    if (x_in.dim() != 2 || x_in.size(1) != d_)
      throw Error("expected points of shape [N, " + std::to_string(d_) + "], got " + shape(x_in));
    torch::NoGradGuard no_grad;
    auto x = x_in.to(options_);
    auto log_det = torch::zeros({x.size(0)}, options_);
    for (int64_t j = 0; j < trained(); ++j) {
      auto z = rk4(j, augment(x), 0.0, taus_[j], eval_steps_, true);
      x = z.narrow(1, 0, d_).contiguous();
      log_det = log_det + z.select(1, d_);
    }
    return reference_log_density(x) + log_det;
  }

  double horizon() const override { return starts_.back() + taus_.back(); }

  Tensor value(const Tensor& x, const Tensor& t) override {
    return by_block(x, t, 1, [&](int64_t b, const Tensor& s) { return blocks_[b].value(s); });
  }
  Tensor velocity(const Tensor& x, const Tensor& t) override {
    return by_block(x, t, d_, [&](int64_t b, const Tensor& s) {
      return -blocks_[b].derivatives(s, false).grad.narrow(1, 0, d_);
    });
  }
  // -d_t Phi + 1/2 |grad Phi|^2 of the block that owns global time t.
  Tensor hjb_residual(const Tensor& x, const Tensor& t) override {
    return by_block(x, t, 1, [&](int64_t b, const Tensor& s) {
      auto g = blocks_[b].derivatives(s, false).grad;
      return (0.5 * g.narrow(1, 0, d_).square().sum(1) - g.select(1, d_)).abs();
    });
  }
  std::string hjb_equation() const override { return "-d_t Phi_k + 1/2 |grad Phi_k|^2"; }

  // ---- internals capability --------------------------------------------------------
  int64_t block() const override { return current(); }
  int64_t blocks() const override { return K_; }
  void advance() override {
    if (current() >= K_ - 1) throw Error("jko: block " + std::to_string(K_) + " is the last one");
    switch_to(current() + 1);
  }
  std::vector<StepRecord> steps() override {
    if (!particles_mode_) throw Error("jko: step records exist in the particle mode only");
    torch::NoGradGuard no_grad;
    std::vector<StepRecord> out;
    for (int64_t k = 0; k <= trained(); ++k) out.push_back(record(k));
    return out;
  }
  Tensor particles(int64_t k) override {
    if (!particles_mode_) throw Error("jko: there is no particle cloud in the generative mode");
    if (k < 0 || k > K_) throw Error("jko: no cloud after " + std::to_string(k) + " blocks");
    torch::NoGradGuard no_grad;
    cloud(k);
    return cloud_x_.detach();
  }

 private:
  int64_t current() const { return static_cast<int64_t>(state_[0].item<double>()); }
  int64_t calls() const { return static_cast<int64_t>(state_[1].item<double>()); }
  int64_t trained() const { return std::min(K_, current() + 1); }

  void switch_to(int64_t next) {
    const int64_t prev = next - 1;
    torch::NoGradGuard no_grad;
    auto old_params = blocks_[prev].parameters(), new_params = blocks_[next].parameters();
    // The engine's zero_grad keeps gradients defined (as zeros), and Adam would keep moving
    // a frozen block with its momentum; undefined gradients make it skip the block.
    for (auto& p : old_params) p.mutable_grad().reset();
    if (warm_start_)
      for (size_t i = 0; i < old_params.size(); ++i) new_params[i].copy_(old_params[i]);
    ctx_.info("jko: block " + std::to_string(prev + 1) + "/" + std::to_string(K_) + " done after " +
              std::to_string(calls()) + " iterations; training block " + std::to_string(next + 1) + " on t in [" +
              num(starts_[next]) + ", " + num(starts_[next] + taus_[next]) + "]");
    state_[0].fill_(static_cast<double>(next));
    state_[1].fill_(0.0);
    if (particles_mode_) write_steps();
  }

  Tensor augment(const Tensor& x) const { return torch::constant_pad_nd(x, {0, 3}, 0); }

  // z = [x, l, W, R] -> its time derivative (augmented), or x -> v.
  Tensor rhs(int64_t b, const Tensor& z, double t, bool augmented) const {
    auto x = augmented ? z.narrow(1, 0, d_) : z;
    auto der = blocks_[b].derivatives(torch::constant_pad_nd(x, {0, 1}, t), augmented);
    auto gx = der.grad.narrow(1, 0, d_);
    if (!augmented) return -gx;
    auto kinetic = 0.5 * gx.square().sum(1, true);
    auto residual = (kinetic - der.grad.narrow(1, d_, 1)).abs();
    return torch::cat({-gx, -der.trace.unsqueeze(1), kinetic, residual}, 1);
  }

  // Classical RK4 of block b in local time from t0 to t1 (t1 < t0: backwards).
  Tensor rk4(int64_t b, Tensor z, double t0, double t1, int64_t steps, bool augmented) const {
    const double h = (t1 - t0) / static_cast<double>(steps);
    for (int64_t k = 0; k < steps; ++k) {
      const double t = t0 + static_cast<double>(k) * h;
      auto k1 = rhs(b, z, t, augmented);
      auto k2 = rhs(b, torch::add(z, k1, h / 2), t + h / 2, augmented);
      auto k3 = rhs(b, torch::add(z, k2, h / 2), t + h / 2, augmented);
      auto k4 = rhs(b, torch::add(z, k3, h), t + h, augmented);
      z = torch::add(z, torch::add(k1, k2, 2).add_(k3, 2).add_(k4), h / 6);
      if (!torch::isfinite(z).all().item<bool>())
        throw Error("jko block " + std::to_string(b + 1) + " of " + std::to_string(K_) + ": non-finite state at RK4 step " +
                    std::to_string(k + 1) + " of " + std::to_string(steps) + " (global t = " +
                    num(starts_[b] + t + h) + ")");
    }
    return z;
  }

  // The particle cloud and its log-density after k blocks (cached; recomputed from the
  // initial cloud after a resume).
  void cloud(int64_t k) {
    if (k == cloud_k_) return;
    torch::NoGradGuard no_grad;
    if (k < cloud_k_) cloud_x_ = x0_, cloud_logrho_ = logrho0_, cloud_k_ = 0;
    for (; cloud_k_ < k; ++cloud_k_) {
      auto z = rk4(cloud_k_, augment(cloud_x_), 0.0, taus_[cloud_k_], steps_, true);
      cloud_x_ = z.narrow(1, 0, d_).contiguous();
      cloud_logrho_ = cloud_logrho_ - z.select(1, d_);
    }
  }

  // n_particles_ draws of N(a, diag s0^2), whitened so that their empirical mean and
  // covariance are exactly those (for near-affine maps the empirical JKO objective is then
  // the population one), and their log-density.
  std::pair<Tensor, Tensor> draw_cloud(torch::Generator& g) const {
    auto z = torch::randn({n_particles_, d_}, g, torch::kFloat64);
    z = z - z.mean(0);
    auto chol = torch::linalg_cholesky(z.t().mm(z) / static_cast<double>(n_particles_));
    z = z.mm(torch::inverse(chol).t());
    auto x = (a_ + z * s0_).to(options_);
    return {x, mfglab::energy::diagonal_gaussian_log_density(a_, s0_)(x)};
  }

  // Block k's training cloud: a fresh draw carried through the frozen blocks 0 .. k-1.
  void training_cloud(int64_t k) {
    if (k == train_k_) return;
    torch::NoGradGuard no_grad;
    torch::Generator g = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(base_seed_ + k));
    std::tie(train_x_, train_logrho_) = draw_cloud(g);
    for (int64_t j = 0; j < k; ++j) {
      auto z = rk4(j, augment(train_x_), 0.0, taus_[j], steps_, true);
      train_x_ = z.narrow(1, 0, d_).contiguous();
      train_logrho_ = train_logrho_ - z.select(1, d_);
    }
    train_k_ = k;
  }

  // Stationary law of the energy for a Gaussian target N(mu, diag sd^2): N(mu, D diag sd^2).
  Tensor reference_sample(int64_t n) {
    auto z = torch::randn({n, d_}, generator_, torch::kFloat64);
    return (mu_ + z * sd_ * std::sqrt(temperature_)).to(options_);
  }
  Tensor reference_log_density(const Tensor& x) const {
    return mfglab::energy::diagonal_gaussian_log_density(mu_, sd_ * std::sqrt(temperature_))(x);
  }

  // out[i] = fn(block of t_i, (x_i, t_i - T_block)) with width columns (1: a [N] result).
  template <class Fn>
  Tensor by_block(const Tensor& x_in, const Tensor& t_in, int64_t width, Fn fn) {
    if (x_in.dim() != 2 || x_in.size(1) != d_)
      throw Error("expected points of shape [N, " + std::to_string(d_) + "], got " + shape(x_in));
    const int64_t n = x_in.size(0);
    Tensor t;
    if (t_in.numel() == n) t = t_in.reshape({n});
    else if (t_in.numel() == 1) t = t_in.reshape({1}).expand({n});
    else throw Error("expected times of shape [" + std::to_string(n) + ", 1], got " + shape(t_in));
    auto x = x_in.to(options_);
    t = t.to(options_);
    Tensor out = width == 1 ? torch::zeros({n}, options_) : torch::zeros({n, width}, options_);
    auto tc = t.detach();
    for (int64_t b = 0; b < K_; ++b) {
      auto mask = torch::ones({n}, torch::kBool);
      if (b > 0) mask = mask & (tc >= starts_[b]).to(torch::kCPU);
      if (b < K_ - 1) mask = mask & (tc < starts_[b + 1]).to(torch::kCPU);
      auto rows = mask.nonzero().squeeze(1).to(x.device());
      if (rows.numel() == 0) continue;
      auto s = torch::cat({x.index_select(0, rows), (t.index_select(0, rows) - starts_[b]).unsqueeze(1)}, 1);
      out = out.index_put({rows}, fn(b, s));
    }
    return out;
  }

  // ---- particle records -------------------------------------------------------------

  // Closed-form energy of N(m, diag v) (per-coordinate [d] tensors) for a Gaussian target.
  double gaussian_energy(const Tensor& m, const Tensor& v) const {
    auto q = sd_.square();
    const double potential = (((m - mu_).square() + v) / (2 * q) + 0.5 * (2 * M_PI * q).log()).sum().item<double>();
    const double neg_entropy = (-0.5 * (2 * M_PI * std::exp(1.0) * v).log()).sum().item<double>();
    return potential + temperature_ * neg_entropy;
  }

  StepRecord record(int64_t k) {
    cloud(k);
    StepRecord r;
    r.step = k;
    r.t = k == 0 ? 0.0 : starts_[k - 1] + taus_[k - 1];
    r.tau = k == 0 ? 0.0 : taus_[k - 1];
    r.energy = energy_->value(cloud_x_, cloud_logrho_).item<double>();
    const double nan = std::nan("");
    r.energy_wgf = r.energy_jko = r.rms_wgf = r.mean_wgf = r.cov_wgf = r.rms_jko = r.mean_jko = r.cov_jko = nan;
    if (!gaussian_target_) return r;
    // Exact gradient flow of a Gaussian under V = |x - mu|^2 / (2 q) (per coordinate) and
    // temperature D: dX = -(X - mu)/q dt + sqrt(2D) dW, so
    //   m(t) = mu + (m0 - mu) e^{-t/q},   v(t) = D q + (v0 - D q) e^{-2t/q}.
    const auto q = sd_.square(), v0 = s0_.square();
    auto m_wgf = mu_ + (a_ - mu_) * torch::exp(-r.t / q);
    auto v_wgf = temperature_ * q + (v0 - temperature_ * q) * torch::exp(-2 * r.t / q);
    // Exact JKO steps (Gaussian to Gaussian): m' = (q m + tau mu)/(q + tau) and sigma' the
    // positive root of (tau + q) s^2 - q sigma s - D tau q = 0.
    auto m_jko = a_.clone(), s_jko = s0_.clone();
    for (int64_t j = 0; j < k; ++j) {
      const double tau = taus_[j];
      m_jko = (q * m_jko + tau * mu_) / (q + tau);
      s_jko = (q * s_jko + (q.square() * s_jko.square() + 4 * (tau + q) * temperature_ * tau * q).sqrt()) /
              (2 * (tau + q));
    }
    r.energy_wgf = gaussian_energy(m_wgf, v_wgf);
    r.energy_jko = gaussian_energy(m_jko, s_jko.square());
    // The exact maps are affine and diagonal: T(x) = m + (sigma / sigma0) (x - a).
    auto x0 = x0_.to(torch::kFloat64), x = cloud_x_.to(torch::kFloat64);
    auto compare = [&](const Tensor& m, const Tensor& s, double& rms, double& mean_err, double& cov_err) {
      auto exact = m + (s / s0_) * (x0 - a_);
      rms = (x - exact).square().sum(1).mean().sqrt().item<double>();
      mean_err = (x.mean(0) - exact.mean(0)).norm().item<double>();
      auto cov = [](const Tensor& y) {
        auto c = y - y.mean(0);
        return c.t().mm(c) / static_cast<double>(y.size(0));
      };
      cov_err = (cov(x) - cov(exact)).norm().item<double>();
    };
    compare(m_wgf, v_wgf.sqrt(), r.rms_wgf, r.mean_wgf, r.cov_wgf);
    compare(m_jko, s_jko, r.rms_jko, r.mean_jko, r.cov_jko);
    return r;
  }

  void write_steps() {
    if (ctx_.output_dir.empty()) return;
    std::ostringstream out;
    out << "step,t,tau,energy,energy_wgf,energy_jko,rms_wgf,mean_wgf,cov_wgf,rms_jko,mean_jko,cov_jko\n";
    out.precision(10);
    for (const auto& r : steps())
      out << r.step << "," << r.t << "," << r.tau << "," << r.energy << "," << r.energy_wgf << "," << r.energy_jko
          << "," << r.rms_wgf << "," << r.mean_wgf << "," << r.cov_wgf << "," << r.rms_jko << "," << r.mean_jko
          << "," << r.cov_jko << "\n";
    const std::string path = ctx_.output_dir + "/jko_steps.csv";
    {
      std::ofstream f(path + ".tmp", std::ios::binary);
      f << out.str();
      if (!f) throw Error("jko: cannot write " + path + ".tmp");
    }
    std::filesystem::rename(path + ".tmp", path);
  }

  int64_t d_, K_, per_block_, steps_, eval_steps_;
  double alpha_R_;
  bool warm_start_, particles_mode_;
  std::string energy_name_;
  double temperature_ = 1.0;
  torch::Generator generator_;  // shares the run generator's state
  torch::TensorOptions options_;
  const mfglab::RunContext& ctx_;  // outlives the model (sdk.h)
  std::vector<double> taus_, starts_;
  mfglab::energy::PointFunction log_target_;
  std::unique_ptr<mfglab::energy::Energy> energy_;
  bool gaussian_target_ = false;
  Tensor mu_, sd_;  // Gaussian target, float64 [d]
  std::vector<Potential> blocks_;
  Tensor state_;
  bool warned_ = false;
  // particle mode
  Tensor a_, s0_;  // initial mean and std, float64 [d]
  int64_t n_particles_ = 0, base_seed_ = 0;
  Tensor x0_, logrho0_, cloud_x_, cloud_logrho_;  // the recorded cloud, after cloud_k_ blocks
  int64_t cloud_k_ = 0;
  Tensor train_x_, train_logrho_;  // the current block's training cloud
  int64_t train_k_ = -1;
};

}  // namespace

MFGLAB_PLUGIN(Jko, MFGLAB_KIND_MODEL, "jko", "1.0.0",
              "JKO flow: K potential-flow blocks, each one JKO step (kinetic + energy) of a Wasserstein "
              "gradient flow; generative (data -> target) or a particle cloud against exact solutions",
              "value,velocity,log_prob",
              kMode, kBlocks, kHorizon, kTau, kTauGrowth, kIterationsPerBlock, kEnergy, kTemperature, kTarget,
              kTargetMean, kTargetStd, kWidth, kLayers, kSteps, kEvalSteps, kAlphaR, kWarmStart, kParticles,
              kInitialMean, kInitialStd)
