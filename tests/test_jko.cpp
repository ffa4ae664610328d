// The energies of <mfglab/energy.h> and the jko model: bad input, the block schedule (frozen
// blocks stay frozen under the engine's single Adam), the density through composed blocks,
// and the particle mode against the exact Gaussian solutions of the Wasserstein gradient
// flow of KL(rho, N(0, I)) as tau shrinks.
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <torch/optim.h>

#include <mfglab/energy.h>
#include <mfglab/sdk.h>

#include "plugin_fixture.h"
#include "plugin_host.h"
#include "../plugins/jko/jko_internals.h"

namespace {

using nlohmann::json;

// A jko model on a dataset, built by the engine's Assembler (plugin_fixture.h).
struct Setup {
  mfglab::test::PluginSetup run;
  mfglab::RunContext& ctx = run.ctx;
  std::unique_ptr<mfglab::Dataset>& dataset = run.objects().dataset;
  std::unique_ptr<mfglab::Model>& model = run.objects().model;

  Setup(const json& params, const std::string& dataset_name = "toy2d",
        const json& dataset_params = json{{"name", "8gaussians"}, {"train_size", 4000}, {"test_size", 1000}},
        torch::Dtype dtype = torch::kFloat32, uint64_t seed = 0)
      : run(mfglab::test::run_context(seed, dtype)) {
    run.dataset(dataset_name, dataset_params).model("jko", params);
  }
  mfglab::jko::Internals& internals() {
    auto* p = mfglab::capability<mfglab::jko::Internals>(model.get(), mfglab::jko::kInternals);
    REQUIRE(p != nullptr);
    return *p;
  }
  // The parameters of block k (the model lists the blocks in order, then its state tensor).
  std::vector<torch::Tensor> block_params(int64_t k) {
    auto all = model->parameters();
    const int64_t per = (static_cast<int64_t>(all.size()) - 1) / internals().blocks();
    return {all.begin() + k * per, all.begin() + (k + 1) * per};
  }
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("energy: values and first variations of kl, cross-entropy and free energy", "[jko][energy]") {
  namespace E = mfglab::energy;
  // rho = N(m, diag v) in 2D against pi = N(0, I), from 200k samples with exact log rho.
  torch::Generator g = at::make_generator<at::CPUGeneratorImpl>(3);
  auto m = torch::tensor({1.0, -0.5}, torch::kFloat64), s = torch::tensor({2.0, 0.5}, torch::kFloat64);
  auto x = m + torch::randn({200000, 2}, g, torch::kFloat64) * s;
  auto log_rho = E::diagonal_gaussian_log_density(m, s)(x);
  const auto v = s.square();
  const double ce = (0.5 * (m.square() + v)).sum().item<double>() + std::log(2 * M_PI);  // -E log N(0, I)
  const double neg_entropy = (-0.5 * (2 * M_PI * std::exp(1.0) * v).log()).sum().item<double>();
  auto kl = E::make("kl", E::standard_normal_log_density);
  auto cross = E::make("cross_entropy", E::standard_normal_log_density);
  auto free = E::make("free_energy", E::standard_normal_log_density, 0.5);
  // Monte Carlo with 200k samples: standard errors are about 0.005 here; 0.03 is 6 of them.
  CHECK(kl->value(x, log_rho).item<double>() == Approx(ce + neg_entropy).margin(0.03));
  CHECK(cross->value(x, log_rho).item<double>() == Approx(ce).margin(0.03));
  CHECK(free->value(x, log_rho).item<double>() == Approx(ce + 0.5 * neg_entropy).margin(0.03));
  CHECK(kl->needs_log_density());
  CHECK_FALSE(cross->needs_log_density());
  // First variations are pointwise formulas: exact.
  auto log_pi = E::standard_normal_log_density(x);
  CHECK(torch::allclose(kl->first_variation(x, log_rho), log_rho - log_pi + 1.0));
  CHECK(torch::allclose(cross->first_variation(x, log_rho), -log_pi));
  CHECK(torch::allclose(free->first_variation(x, log_rho), -log_pi + 0.5 * (log_rho + 1.0)));
  // The first variation is the derivative of E along mixtures: for rho_e = (1 - e) rho + e sigma,
  // dE/de at 0 = int dE/drho (sigma - rho). Checked for kl with sigma = N(0, I), by quadrature
  // on a 1D grid (exact up to the grid).
  auto grid = torch::linspace(-12, 12, 24001, torch::kFloat64).unsqueeze(1);
  const double h = 24.0 / 24000;
  auto rho = E::diagonal_gaussian_log_density(torch::tensor({1.0}, torch::kFloat64), torch::tensor({2.0}, torch::kFloat64))(grid).exp();
  auto sigma = E::standard_normal_log_density(grid).exp();
  auto klq = [&](const torch::Tensor& p) {  // int p log(p / pi) on the grid
    return (p * (p.log() - E::standard_normal_log_density(grid))).sum().item<double>() * h;
  };
  const double e = 1e-5;
  const double fd = (klq((1 - e) * rho + e * sigma) - klq((1 - e) * rho - e * sigma + 2 * e * rho)) / (2 * e);
  const double pairing = ((kl->first_variation(grid, rho.log()) * (sigma - rho)).sum() * h).item<double>();
  CHECK(fd == Approx(pairing).margin(1e-6));
  CHECK_THROWS_WITH(E::make("entropy", E::standard_normal_log_density), Catch::Contains("kl|cross_entropy|free_energy"));
}

TEST_CASE("jko: bad input is refused with the parameter's path", "[jko]") {
  CHECK_THAT(error_of([] { Setup s(json{{"tau", 0.0}}); }), Catch::Contains("params/tau"));
  CHECK_THAT(error_of([] { Setup s(json{{"tau", -1.0}}); }), Catch::Contains("params/tau"));
  CHECK_THAT(error_of([] { Setup s(json{{"blocks", 0}}); }), Catch::Contains("params/blocks"));
  // toy2d has no exact density: a target taken from the dataset is impossible.
  auto e = error_of([] { Setup s(json{{"mode", "particles"}, {"target", "dataset"}}); });
  CHECK_THAT(e, Catch::Contains("params.target") && Catch::Contains("exact density"));
  // gmm has one, but the generative mode must sample its target.
  e = error_of([] { Setup s(json{{"target", "dataset"}}, "gmm", json{{"k", 2}, {"train_size", 100}, {"test_size", 10}}); });
  CHECK_THAT(e, Catch::Contains("params.target") && Catch::Contains("generative"));
  e = error_of([] { Setup s(json{{"energy", "cross_entropy"}}); });
  CHECK_THAT(e, Catch::Contains("params.energy") && Catch::Contains("stationary"));
  e = error_of([] { Setup s(json{{"target", "gaussian"}, {"target_mean", {0, 1, 2}}}); });
  CHECK_THAT(e, Catch::Contains("params.target_mean"));
  // A Gaussian target with std 1e-30 makes -log pi overflow: the energy is infinite while the
  // flow is finite. The error names the block being trained.
  Setup s(json{{"blocks", 3}, {"width", 4}, {"target", "gaussian"}, {"target_std", 1e-30}});
  auto batch = s.dataset->train().slice(0, 0, 64);
  CHECK_THAT(error_of([&] { s.model->loss(batch); }), Catch::Contains("jko block 1 of 3") && Catch::Contains("non-finite"));
  s.internals().advance();
  CHECK_THAT(error_of([&] { s.model->loss(batch); }), Catch::Contains("jko block 2 of 3"));
  s.internals().advance();
  CHECK_THROWS_WITH(s.internals().advance(), Catch::Contains("last"));
}

TEST_CASE("jko: blocks train in turn under one Adam, frozen blocks stay put, the density is normalised",
          "[jko][train]") {
  // The engine's loop in miniature: one Adam over all parameters, zero_grad, backward, step.
  Setup s(json{{"blocks", 2}, {"tau", 0.5}, {"iterations_per_block", 40}, {"width", 16}, {"steps", 2}}, "toy2d",
          json{{"name", "8gaussians"}, {"train_size", 4000}, {"test_size", 1000}}, torch::kFloat64);
  auto params = s.model->parameters();
  torch::optim::Adam adam(params, torch::optim::AdamOptions(0.02));
  torch::Generator g = at::make_generator<at::CPUGeneratorImpl>(5);
  auto train = s.dataset->train();
  std::vector<double> totals;
  std::vector<torch::Tensor> frozen;
  for (int it = 0; it < 80; ++it) {
    auto batch = train.index_select(0, torch::randint(train.size(0), {256}, g, torch::kLong));
    auto terms = s.model->loss(batch);
    REQUIRE(terms.size() == 2);
    torch::Tensor sum = terms[0].value + terms[1].value;
    totals.push_back(sum.item<double>());
    adam.zero_grad();
    sum.backward();
    adam.step();
    if (it == 40) {  // the 41st call switched to block 2; block 1 must not move any more
      CHECK(s.internals().block() == 1);
      for (auto& p : s.block_params(0)) frozen.push_back(p.detach().clone());
    }
  }
  auto now = s.block_params(0);
  for (size_t i = 0; i < frozen.size(); ++i) CHECK(torch::equal(now[i].detach(), frozen[i]));
  // The JKO objective of each block falls while it trains (first vs last 5 iterations).
  auto avg = [&](int from) { double a = 0; for (int i = from; i < from + 5; ++i) a += totals[i]; return a / 5; };
  INFO("block 1: " << avg(0) << " -> " << avg(35) << "; block 2: " << avg(40) << " -> " << avg(75));
  CHECK(avg(35) < avg(0));
  CHECK(avg(75) < avg(40) + 1e-3);
  // The density of the composed blocks integrates to one (midpoint rule on [-8, 8]^2).
  const int64_t k = 160;
  const double lim = 8, h = 2 * lim / k;
  auto c = torch::linspace(-lim + h / 2, lim - h / 2, k, torch::kFloat64);
  auto mesh = torch::meshgrid({c, c}, "ij");
  auto pts = torch::stack({mesh[0].reshape(-1), mesh[1].reshape(-1)}, 1);
  const double mass = (s.model->log_prob(pts).exp().sum() * h * h).item<double>();
  INFO("mass " << mass);
  CHECK(mass == Approx(1.0).margin(0.02));
  // Sampling inverts the flow: log_prob of samples is finite and samples are finite.
  auto x = s.model->sample(500);
  CHECK(torch::isfinite(x).all().item<bool>());
  CHECK(torch::isfinite(s.model->log_prob(x)).all().item<bool>());
  // The HJB residual at global times in both blocks.
  auto* hjb = mfglab::capability<mfglab::HjbResidual>(s.model.get(), mfglab::kHjbResidual);
  REQUIRE(hjb != nullptr);
  auto r = hjb->hjb_residual(pts.slice(0, 0, 100), torch::linspace(0, 1, 100, torch::kFloat64).unsqueeze(1));
  CHECK(r.sizes() == torch::IntArrayRef({100}));
  CHECK(torch::isfinite(r).all().item<bool>());
  CHECK(s.model->horizon() == Approx(1.0));
}

namespace {

// Particle mode: N(m0, diag s0^2) -> N(0, I) by JKO steps of KL up to time 1, each block
// trained by Adam (a fresh one per block, on that block's parameters) on the whole cloud.
std::vector<mfglab::jko::StepRecord> particle_run(double tau, int iterations) {
  const int blocks = static_cast<int>(std::lround(1.0 / tau));
  Setup s(json{{"mode", "particles"}, {"blocks", blocks}, {"tau", tau}, {"iterations_per_block", 1000000},
               {"width", 8}, {"steps", 2}, {"particles", 500}, {"initial_mean", {1.5, -1.0}},
               {"initial_std", {2.0, 1.5}}},
          "toy2d", json{{"name", "8gaussians"}, {"train_size", 10}, {"test_size", 10}}, torch::kFloat64, 1);
  auto& in = s.internals();
  auto dummy = torch::zeros({1, 2}, torch::kFloat64);
  for (int b = 0; b < blocks; ++b) {
    auto params = s.block_params(b);
    torch::optim::Adam adam(params, torch::optim::AdamOptions(0.01));
    for (int it = 0; it < iterations; ++it) {
      for (auto& group : adam.param_groups())  // cosine decay inside the block
        group.options().set_lr(0.0005 + 0.5 * (0.01 - 0.0005) * (1 + std::cos(M_PI * it / iterations)));
      auto terms = s.model->loss(dummy);
      torch::Tensor sum = terms[0].value + terms[1].value;
      adam.zero_grad();
      sum.backward();
      adam.step();
    }
    if (b + 1 < blocks) in.advance();
  }
  return in.steps();
}

}  // namespace

// What is asserted, for N((1.5, -1), diag(4, 2.25)) -> N(0, I) up to t = 1 with tau = 1/2,
// 1/4, 1/8 (the cloud: 500 whitened particles, so its first two moments are exact):
// - the energy of the recorded cloud decreases at every JKO step;
// - the errors of the cloud's mean and covariance at t = 1 against the exact gradient flow
//   (m(t) = m0 e^{-t}, S(t) = I + (S0 - I) e^{-2t}, applied to the same particles) shrink at
//   least linearly: halving tau divides them by 1.55 or more (first order gives ~2);
// - the optimisation error is small next to that time-discretisation error: against the
//   exact JKO scheme (m_{k+1} = m_k / (1 + tau), sigma_{k+1} the positive root of
//   (1 + tau) s^2 - sigma_k s - tau = 0 per eigenvalue) the errors are below half of those
//   against the flow, and the energy is closer to the JKO scheme's than to the flow's.
TEST_CASE("jko: particle JKO steps converge to the exact Gaussian gradient flow as tau shrinks", "[jko][particles]") {
  std::vector<double> taus = {0.5, 0.25, 0.125};
  std::vector<mfglab::jko::StepRecord> finals;
  for (double tau : taus) {
    // The same budget for every tau: 960 Adam iterations over the run.
    auto steps = particle_run(tau, static_cast<int>(std::lround(960 * tau)));
    REQUIRE(static_cast<int>(steps.size()) == static_cast<int>(std::lround(1.0 / tau)) + 1);
    for (const auto& r : steps)
      std::printf("tau %.3f step %lld t %.3f | E %.5f E_wgf %.5f E_jko %.5f | mean_wgf %.5f cov_wgf %.5f rms_wgf %.5f | "
                  "mean_jko %.5f cov_jko %.5f rms_jko %.5f\n",
                  tau, static_cast<long long>(r.step), r.t, r.energy, r.energy_wgf, r.energy_jko, r.mean_wgf, r.cov_wgf,
                  r.rms_wgf, r.mean_jko, r.cov_jko, r.rms_jko);
    for (size_t k = 1; k < steps.size(); ++k) {
      INFO("tau " << tau << ", step " << k << ": energy " << steps[k - 1].energy << " -> " << steps[k].energy);
      CHECK(steps[k].energy < steps[k - 1].energy);
    }
    const auto& f = steps.back();
    CHECK(f.t == Approx(1.0));
    INFO("tau " << tau << " at t = 1: mean error vs flow " << f.mean_wgf << ", vs JKO " << f.mean_jko
                << "; covariance error vs flow " << f.cov_wgf << ", vs JKO " << f.cov_jko << "; energy " << f.energy
                << " (JKO " << f.energy_jko << ", flow " << f.energy_wgf << ")");
    CHECK(f.mean_jko < 0.5 * f.mean_wgf);
    CHECK(f.cov_jko < 0.5 * f.cov_wgf);
    CHECK(std::abs(f.energy - f.energy_jko) < std::abs(f.energy - f.energy_wgf));
    finals.push_back(f);
  }
  for (size_t i = 1; i < finals.size(); ++i) {
    INFO("tau " << taus[i - 1] << " -> " << taus[i] << ": mean error " << finals[i - 1].mean_wgf << " -> "
                << finals[i].mean_wgf << ", covariance error " << finals[i - 1].cov_wgf << " -> " << finals[i].cov_wgf);
    CHECK(finals[i].mean_wgf < finals[i - 1].mean_wgf / 1.55);
    CHECK(finals[i].cov_wgf < finals[i - 1].cov_wgf / 1.55);
  }
}
