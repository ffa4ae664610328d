// The sgm model plugin against closed forms: the VP noising schedule, the reverse
// sampler's recursion, and a model trained on Gaussian data, whose noised marginals, score
// and optimal denoising loss are all known exactly.
#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>

#include <catch2/catch.hpp>
#include <ATen/Parallel.h>
#include <torch/optim.h>

#include <mfglab/sdk.h>

#include "plugin_host.h"

namespace {

using nlohmann::json;

// Integral of f over [a, b] by composite Simpson.
double simpson(const std::function<double(double)>& f, double a, double b, int n = 2000) {
  const double h = (b - a) / n;
  double s = f(a) + f(b);
  for (int i = 1; i < n; ++i) s += (i % 2 ? 4 : 2) * f(a + i * h);
  return s * h / 3;
}

// The schedule as the tests know it: beta linear in t, B = int_0^t beta by quadrature
// (Simpson is exact for a linear integrand, leaving rounding only).
struct Schedule {
  double beta_min = 0.1, beta_max = 20.0;
  double beta(double t) const { return beta_min + t * (beta_max - beta_min); }
  double integral(double t) const { return simpson([this](double u) { return beta(u); }, 0, t, 64); }
  double alpha(double t) const { return std::exp(-0.5 * integral(t)); }
  double sigma2(double t) const { return 1 - alpha(t) * alpha(t); }
};

// A model created through the engine's plugin host, with the context it refers to.
struct Setup {
  mfglab::engine::PluginHost host{{MFGLAB_TEST_PLUGIN_DIR}};
  mfglab::RunContext ctx;
  std::unique_ptr<mfglab::Model> model;

  explicit Setup(const json& params, uint64_t seed = 0, torch::Dtype dtype = torch::kFloat32,
                 int64_t dim = 2) {
    at::set_num_threads(1);  // tiny tensors: more threads only add overhead
    ctx.generator = at::make_generator<at::CPUGeneratorImpl>(seed);
    ctx.dtype = dtype;
    ctx.data_dim = dim;
    model = host.create_as<mfglab::Model>("sgm", MFGLAB_KIND_MODEL, params, ctx);
  }
};

// Makes the network output the constant vector c whatever its input: zero weights, and
// the last bias c. Then score(x, t) = -c / sigma(t) exactly.
void make_constant(mfglab::Model& m, const torch::Tensor& c) {
  torch::NoGradGuard no_grad;
  auto params = m.parameters();  // W0, b0, W1, b1, ..., W_last, b_last
  for (auto& p : params) p.zero_();
  params.back().copy_(c);
}

// Gaussian data N(mu, s^2 I) in 2D: the noised marginal at t is N(alpha mu, v I) with
// v = alpha^2 s^2 + sigma^2, whose score is -(x - alpha mu) / v.
struct Gaussian {
  torch::Tensor mu = torch::tensor({1.0f, -0.5f});
  double s = 0.5;
  torch::Tensor draw(int64_t n, torch::Generator& g) const {
    return mu + s * torch::randn({n, 2}, g, torch::kFloat32);
  }
};

// One model trained on the Gaussian, shared by the tests that need it (training is the
// slow part of this file).
struct Trained {
  Setup setup{json{{"width", 32}, {"sample_steps", 500}}, 1};
  Gaussian data;
  std::vector<double> losses;
  Trained() {
    torch::Generator g = at::make_generator<at::CPUGeneratorImpl>(99);
    auto& m = *setup.model;
    torch::optim::Adam adam(m.parameters(), torch::optim::AdamOptions(1e-2));
    // Adam at 1e-2, then 1e-3 for the second half to settle near the optimum.
    const int steps = 4000;
    for (int i = 0; i < steps; ++i) {
      if (i == steps / 2) static_cast<torch::optim::AdamOptions&>(adam.param_groups()[0].options()).lr(1e-3);
      adam.zero_grad();
      auto terms = m.loss(data.draw(512, g));
      terms.at(0).value.backward();
      adam.step();
      losses.push_back(terms.at(0).value.item<double>());
    }
  }
};

Trained& trained() {
  static Trained t;
  return t;
}

}  // namespace

TEST_CASE("sgm: alpha and sigma follow the integral of beta", "[sgm]") {
  // float64 so that the comparison is limited by the quadrature, not by float32.
  Setup a(json{{"width", 8}}, 3, torch::kFloat64);
  Schedule sch;
  auto& m = *a.model;
  make_constant(m, torch::ones({2}, torch::kFloat64));

  auto t = torch::tensor({1e-3, 0.01, 0.1, 0.3, 0.5, 0.8, 1.0}, torch::kFloat64).reshape({-1, 1});
  auto x = torch::zeros({t.size(0), 2}, torch::kFloat64);
  auto sigma = -1.0 / m.score(x, t);  // net = 1, so score = -1 / sigma
  auto drift = m.drift(torch::ones({t.size(0), 2}, torch::kFloat64), t);
  auto diffusion = m.diffusion(t);
  REQUIRE(diffusion.sizes() == torch::IntArrayRef({t.size(0), 1}));
  for (int64_t i = 0; i < t.size(0); ++i) {
    const double ti = t[i][0].item<double>();
    // Relative 1e-9: Simpson is exact for quadratics, leaving rounding only.
    CHECK(sigma[i][0].item<double>() == Approx(std::sqrt(sch.sigma2(ti))).epsilon(1e-9));
    CHECK(sigma[i][1].item<double>() == Approx(std::sqrt(sch.sigma2(ti))).epsilon(1e-9));
    CHECK(drift[i][0].item<double>() == Approx(-0.5 * sch.beta(ti)).epsilon(1e-12));
    CHECK(diffusion[i][0].item<double>() == Approx(std::sqrt(sch.beta(ti))).epsilon(1e-12));
  }

  // The forward-process capability gives alpha and sigma directly.
  auto* fp = mfglab::capability<mfglab::ForwardProcess>(&m, mfglab::kForwardProcess);
  REQUIRE(fp != nullptr);
  CHECK(fp->t_min() == 1e-3);
  CHECK(fp->t_max() == 1.0);
  auto fa = fp->alpha(t), fs = fp->sigma(t);
  for (int64_t i = 0; i < t.size(0); ++i) {
    const double ti = t[i][0].item<double>();
    CHECK(fa[i][0].item<double>() == Approx(sch.alpha(ti)).epsilon(1e-9));
    CHECK(fs[i][0].item<double>() == Approx(std::sqrt(sch.sigma2(ti))).epsilon(1e-9));
  }

  // alpha from collocation: replaying the generator gives the same t and z, so noising
  // x0 = 1 and x0 = 0 differs by exactly alpha(t).
  const int64_t n = 200;
  a.ctx.generator.set_current_seed(11);
  auto c0 = m.collocation(torch::zeros({n, 2}, torch::kFloat64));
  a.ctx.generator.set_current_seed(11);
  auto c1 = m.collocation(torch::ones({n, 2}, torch::kFloat64));
  REQUIRE(c0.x.sizes() == torch::IntArrayRef({n, 2}));
  REQUIRE(c0.t.sizes() == torch::IntArrayRef({n, 1}));
  REQUIRE(torch::equal(c0.t, c1.t));
  CHECK(c0.t.min().item<double>() >= 1e-3);  // t ~ U(eps, 1)
  CHECK(c0.t.max().item<double>() <= 1.0);
  auto alpha = c1.x - c0.x;
  double worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double ti = c0.t[i][0].item<double>();
    for (int64_t j = 0; j < 2; ++j)
      worst = std::max(worst, std::abs(alpha[i][j].item<double>() / sch.alpha(ti) - 1));
  }
  CHECK(worst < 1e-9);  // relative
  // t spreads over the interval: its sample mean is (1 + eps) / 2 within 5 standard errors.
  CHECK(c0.t.mean().item<double>() == Approx(0.5005).margin(5 * 0.2887 / std::sqrt(double(n))));
}

TEST_CASE("sgm: the reverse sampler follows its Euler-Maruyama recursion", "[sgm]") {
  // With the network fixed to c, score = -c / sigma(t) and each step is the linear map
  //   x <- (1 + beta dt / 2) x - beta dt / sigma c + sqrt(beta dt) xi   (no xi at the end),
  // so the mean and variance of the samples follow a recursion the test can run exactly.
  const int steps = 50;
  Setup a(json{{"width", 8}, {"sample_steps", steps}}, 5, torch::kFloat64);
  Schedule sch;
  const double c[2] = {0.3, -0.2};
  make_constant(*a.model, torch::tensor({c[0], c[1]}, torch::kFloat64));
  const int64_t n = 20000;
  auto x = a.model->sample(n);
  REQUIRE(x.sizes() == torch::IntArrayRef({n, 2}));
  REQUIRE(x.scalar_type() == torch::kFloat64);
  REQUIRE_FALSE(x.requires_grad());

  const double eps = 1e-3, dt = (1 - eps) / steps;
  double mean[2] = {0, 0}, var = 1;
  for (int k = 0; k < steps; ++k) {
    const double t = 1 - k * dt, b = sch.beta(t), a_k = 1 + 0.5 * b * dt;
    for (int j = 0; j < 2; ++j) mean[j] = a_k * mean[j] - b * dt / std::sqrt(sch.sigma2(t)) * c[j];
    var = a_k * a_k * var + (k + 1 < steps ? b * dt : 0.0);
  }
  auto m = x.mean(0), v = x.var(0);
  for (int j = 0; j < 2; ++j) {
    // Five standard errors of a mean and of a Gaussian variance.
    CHECK(m[j].item<double>() == Approx(mean[j]).margin(5 * std::sqrt(var / n)));
    CHECK(v[j].item<double>() == Approx(var).margin(5 * var * std::sqrt(2.0 / n)));
  }
}

TEST_CASE("sgm: same seed, same model, same samples", "[sgm]") {
  Setup a(json{{"width", 16}, {"sample_steps", 20}}, 42);
  Setup b(json{{"width", 16}, {"sample_steps", 20}}, 42);
  Setup c(json{{"width", 16}, {"sample_steps", 20}}, 43);
  auto batch = torch::randn({64, 2}, at::make_generator<at::CPUGeneratorImpl>(1), torch::kFloat32);
  auto la = a.model->loss(batch).at(0).value, lb = b.model->loss(batch).at(0).value;
  CHECK(la.item<double>() == lb.item<double>());
  auto sa = a.model->sample(100), sb = b.model->sample(100), sc = c.model->sample(100);
  CHECK(torch::equal(sa, sb));
  CHECK_FALSE(torch::equal(sa, sc));
}

TEST_CASE("sgm: interface shapes and autograd", "[sgm]") {
  Setup a(json{{"width", 16}, {"depth", 2}, {"activation", "tanh"}}, 0, torch::kFloat32, 3);
  auto& m = *a.model;
  CHECK(m.parameters().size() == 6);  // 3 layers: weight and bias each
  auto terms = m.loss(torch::randn({10, 3}));
  REQUIRE(terms.size() == 1);
  CHECK(terms[0].name == "dsm");
  CHECK(terms[0].value.dim() == 0);
  CHECK(terms[0].value.requires_grad());
  CHECK(m.horizon() == 1.0);

  // The score is differentiable in x and t (regularizers need both).
  auto x = torch::randn({5, 3}).requires_grad_();
  auto t = torch::full({5, 1}, 0.4).requires_grad_();
  auto s = m.score(x, t);
  REQUIRE(s.sizes() == torch::IntArrayRef({5, 3}));
  auto g = torch::autograd::grad({s.sum()}, {x, t});
  CHECK(g[0].abs().sum().item<double>() > 0);
  CHECK(g[1].abs().sum().item<double>() > 0);

  CHECK_THROWS_WITH(m.loss(torch::randn({10, 2})), Catch::Contains("[N, 3]"));
}

TEST_CASE("sgm: bad parameters are refused with a reason", "[sgm]") {
  CHECK_THROWS_WITH(Setup(json{{"beta_min", 2.0}, {"beta_max", 1.0}}),
                    Catch::Contains("beta_max (1) must be greater than beta_min (2)"));
  CHECK_THROWS_WITH(Setup(json{{"beta_min", 5.0}, {"beta_max", 5.0}}),
                    Catch::Contains("beta_max (5) must be greater than beta_min (5)"));
  // Declared bounds and choices, enforced by the host.
  CHECK_THROWS_WITH(Setup(json{{"eps", 1.5}}), Catch::Contains("eps"));
  CHECK_THROWS_WITH(Setup(json{{"eps", 0.0}}), Catch::Contains("eps"));
  CHECK_THROWS_WITH(Setup(json{{"width", 0}}), Catch::Contains("width"));
  CHECK_THROWS_WITH(Setup(json{{"activation", "swish"}}), Catch::Contains("activation"));
  CHECK_THROWS_WITH(Setup(json{{"sample_steps", 0}}), Catch::Contains("sample_steps"));
  CHECK_THROWS_WITH(Setup(json::object(), 0, torch::kFloat32, 0), Catch::Contains("data dimension"));
}

TEST_CASE("sgm: trained on a Gaussian, the loss reaches its closed-form minimum", "[sgm][train]") {
  auto& tr = trained();
  Schedule sch;
  const double s2 = tr.data.s * tr.data.s, eps = 1e-3;
  // The best noise predictor is E[z | x_t] = -sigma * score, leaving the loss
  //   d * E_t[ alpha^2 s^2 / (alpha^2 s^2 + sigma^2) ],   t ~ U(eps, 1).
  const double best = 2 * simpson([&](double t) {
                        const double a2 = sch.alpha(t) * sch.alpha(t);
                        return a2 * s2 / (a2 * s2 + sch.sigma2(t));
                      }, eps, 1) / (1 - eps);

  // Untrained, the network predicts almost nothing and the loss is near E|z|^2 = 2.
  const double first = tr.losses.front();
  // The trained loss on fresh data, averaged over many draws of t and z.
  torch::Generator g = at::make_generator<at::CPUGeneratorImpl>(1234);
  double final_loss = 0;
  const int rounds = 20;
  {
    torch::NoGradGuard no_grad;
    for (int i = 0; i < rounds; ++i)
      final_loss += tr.setup.model->loss(tr.data.draw(4096, g)).at(0).value.item<double>();
  }
  final_loss /= rounds;
  INFO("first step " << first << ", trained " << final_loss << ", optimum " << best);
  CHECK(final_loss < 0.5 * first);
  // Above the optimum by at most 5% (its Monte Carlo error over 80k draws is below 1%).
  CHECK(final_loss > best * 0.98);
  CHECK(final_loss < best * 1.05);
}

TEST_CASE("sgm: trained on a Gaussian, the score matches the exact one", "[sgm][train]") {
  auto& tr = trained();
  Schedule sch;
  auto& m = *tr.setup.model;
  torch::Generator g = at::make_generator<at::CPUGeneratorImpl>(7);
  for (double t : {0.1, 0.3, 0.6, 0.9}) {
    const double a = sch.alpha(t), v = a * a * tr.data.s * tr.data.s + sch.sigma2(t);
    // Points from the noised marginal N(alpha mu, v I), where the score is -(x - alpha mu) / v.
    const int64_t n = 2000;
    auto x = a * tr.data.mu + std::sqrt(v) * torch::randn({n, 2}, g, torch::kFloat32);
    auto exact = -(x - a * tr.data.mu) / v;
    torch::Tensor learned;
    {
      torch::NoGradGuard no_grad;
      learned = m.score(x, torch::full({n, 1}, t));
    }
    const double rel = std::sqrt(((learned - exact).square().sum() / exact.square().sum()).item<double>());
    INFO("t = " << t << ": relative L2 error of the score " << rel);
    CHECK(rel < 0.1);
  }
}

TEST_CASE("sgm: trained on a Gaussian, the sampler reproduces it", "[sgm][train]") {
  auto& tr = trained();
  const int64_t n = 4000;
  auto x = tr.setup.model->sample(n);
  REQUIRE(x.sizes() == torch::IntArrayRef({n, 2}));
  REQUIRE(torch::isfinite(x).all().item<bool>());
  auto mean = x.mean(0), var = x.var(0);
  const double s2 = tr.data.s * tr.data.s;
  for (int j = 0; j < 2; ++j) {
    INFO("dimension " << j << ": mean " << mean[j].item<double>() << ", variance " << var[j].item<double>());
    // Monte Carlo error alone: 0.008 on the mean, 2.2% on the variance.
    CHECK(mean[j].item<double>() == Approx(tr.data.mu[j].item<double>()).margin(0.05));
    // Learning error adds up to 8% on the variance across training seeds.
    CHECK(var[j].item<double>() == Approx(s2).epsilon(0.12));
  }
}
