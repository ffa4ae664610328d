// The gmm dataset plugin: its samples against the mixture's moments, and its exact
// density capability (mfglab.exact_density/1) against quadrature, a direct Gaussian
// formula, autograd, noised samples and itself (per-sample vs scalar alpha, sigma).
#include <catch2/catch.hpp>

#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "plugin_fixture.h"
#include "plugin_host.h"
#include <mfglab/sdk.h>

#include "catch_checks.h"  // Catch's CHECK, not glog's

namespace {

using nlohmann::json;
using torch::Tensor;

constexpr double kPi = 3.14159265358979323846;
const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);
using Noise = std::vector<std::pair<double, double>>;  // (alpha, sigma) pairs

const mfglab::engine::PluginHost& host() { return mfglab::test::plugin_host(); }

torch::Generator generator(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

struct Gmm {
  std::unique_ptr<mfglab::Dataset> dataset;
  mfglab::ExactDensity* density = nullptr;
};

Gmm make(json params, uint64_t seed = 1, torch::Dtype dtype = torch::kFloat64) {
  mfglab::RunContext ctx;
  ctx.generator = generator(seed);
  ctx.seed = seed;
  ctx.dtype = dtype;
  Gmm g;
  g.dataset = mfglab::test::create<mfglab::Dataset>(host(), "gmm", params, ctx);
  g.density = mfglab::capability<mfglab::ExactDensity>(g.dataset.get(), mfglab::kExactDensity);
  REQUIRE(g.density != nullptr);
  return g;
}

Tensor scalar(double v) { return torch::tensor(v, kF64); }

// The mixture given to the plugin, also kept here as tensors for the expected values.
struct Reference {
  json components;
  Tensor w, mu, cov;  // [K], [K, d], [K, d, d]
};

// Three 2-D components, one of each covariance form: full, isotropic, diagonal.
Reference mixture2d() {
  Reference r;
  r.components = json::array({
      {{"weight", 1.0}, {"mean", {-2.0, 0.0}}, {"cov", {{1.0, 0.5}, {0.5, 0.8}}}},
      {{"weight", 2.0}, {"mean", {1.5, 1.0}}, {"std", 0.6}},
      {{"weight", 1.0}, {"mean", {0.0, -2.5}}, {"std", {0.3, 1.2}}}});
  r.w = torch::tensor({0.25, 0.5, 0.25}, kF64);
  r.mu = torch::tensor({-2.0, 0.0, 1.5, 1.0, 0.0, -2.5}, kF64).view({3, 2});
  r.cov = torch::stack({torch::tensor({1.0, 0.5, 0.5, 0.8}, kF64).view({2, 2}),
                        0.36 * torch::eye(2, kF64),
                        torch::diag(torch::tensor({0.09, 1.44}, kF64))});
  return r;
}

// Three 3-D components with full covariances (A A^T + 0.2 I, so positive definite).
Reference mixture3d() {
  Reference r;
  const double a[3][3][3] = {{{1.0, 0.3, 0.0}, {0.3, 0.5, -0.2}, {0.0, -0.2, 0.7}},
                             {{0.4, 0.0, 0.1}, {0.0, 0.9, 0.0}, {0.1, 0.0, 0.3}},
                             {{0.8, -0.5, 0.2}, {-0.5, 0.6, 0.0}, {0.2, 0.0, 1.1}}};
  const double means[3][3] = {{1.0, -1.0, 0.5}, {-1.5, 0.5, 2.0}, {0.0, 2.0, -1.0}};
  const double weights[3] = {0.2, 0.5, 0.3};
  std::vector<Tensor> covs;
  r.components = json::array();
  for (int k = 0; k < 3; ++k) {
    auto A = torch::from_blob(const_cast<double*>(&a[k][0][0]), {3, 3}, kF64).clone();
    auto c = A.matmul(A.t()) + 0.2 * torch::eye(3, kF64);
    covs.push_back(c);
    json rows = json::array();
    for (int i = 0; i < 3; ++i)
      rows.push_back({c[i][0].item<double>(), c[i][1].item<double>(), c[i][2].item<double>()});
    r.components.push_back({{"weight", weights[k]},
                            {"mean", {means[k][0], means[k][1], means[k][2]}},
                            {"cov", rows}});
  }
  r.w = torch::tensor({0.2, 0.5, 0.3}, kF64);
  r.mu = torch::from_blob(const_cast<double*>(&means[0][0]), {3, 3}, kF64).clone();
  r.cov = torch::stack(covs);
  return r;
}

// Mean and covariance of alpha X + sigma Z: alpha E X, and alpha^2 Cov X + sigma^2 I with
// Cov X = sum_k w_k (Sigma_k + mu_k mu_k^T) - m m^T.
std::pair<Tensor, Tensor> moments(const Reference& r, double alpha = 1, double sigma = 0) {
  auto m = (r.w.unsqueeze(1) * r.mu).sum(0);
  auto second = (r.w.view({-1, 1, 1}) * (r.cov + r.mu.unsqueeze(2) * r.mu.unsqueeze(1))).sum(0);
  auto cov = second - m.unsqueeze(1) * m.unsqueeze(0);
  const int64_t d = m.size(0);
  return {alpha * m, alpha * alpha * cov + sigma * sigma * torch::eye(d, kF64)};
}

// Sample mean and covariance of x [N, d] against expected ones, each entry within 5
// standard errors of its estimator (estimated from the sample itself).
void check_moments(const Tensor& x, const Tensor& mean, const Tensor& cov) {
  auto z = x.to(torch::kFloat64);
  const double n = static_cast<double>(z.size(0));
  auto centered = z - z.mean(0);
  for (int64_t i = 0; i < z.size(1); ++i) {
    const double m = z.select(1, i).mean().item<double>();
    const double se = z.select(1, i).std().item<double>() / std::sqrt(n);
    INFO("mean[" << i << "] = " << m << ", expected " << mean[i].item<double>() << ", se " << se);
    CHECK(std::abs(m - mean[i].item<double>()) <= 5 * se);
    for (int64_t j = 0; j < z.size(1); ++j) {
      auto prod = centered.select(1, i) * centered.select(1, j);
      const double c = prod.mean().item<double>(), e = cov[i][j].item<double>();
      const double cse = prod.std().item<double>() / std::sqrt(n);
      INFO("cov[" << i << "][" << j << "] = " << c << ", expected " << e << ", se " << cse);
      CHECK(std::abs(c - e) <= 5 * cse);
    }
  }
}

// A square grid [-half, half]^2 with n points per axis, as [n^2, 2], and its cell area.
struct Grid {
  Tensor points;
  double cell;
};
Grid grid(double half, int64_t n) {
  auto t = torch::linspace(-half, half, n, kF64);
  auto mesh = torch::meshgrid({t, t}, "ij");
  const double h = 2 * half / static_cast<double>(n - 1);
  return {torch::stack({mesh[0].reshape(-1), mesh[1].reshape(-1)}, 1), h * h};
}

double max_abs_diff(const Tensor& a, const Tensor& b) { return (a - b).abs().max().item<double>(); }

}  // namespace

TEST_CASE("gmm: sample moments match the mixture's moments", "[gmm]") {
  for (const auto& r : {mixture2d(), mixture3d()}) {
    const int64_t d = r.mu.size(1);
    INFO("dimension " << d);
    auto g = make({{"components", r.components}, {"train_size", 100000}, {"test_size", 50000}}, 3);
    auto train = g.dataset->train(), test = g.dataset->test();
    CHECK(train.sizes() == torch::IntArrayRef({100000, d}));
    CHECK(test.sizes() == torch::IntArrayRef({50000, d}));
    auto [mean, cov] = moments(r);
    check_moments(train, mean, cov);
    check_moments(test, mean, cov);
  }
}

TEST_CASE("gmm: weights are normalised by their sum", "[gmm]") {
  auto r = mixture2d();
  auto scaled = r.components;
  for (auto& c : scaled) c["weight"] = c["weight"].get<double>() * 7.5;
  auto a = make({{"components", r.components}, {"train_size", 10}, {"test_size", 10}});
  auto b = make({{"components", scaled}, {"train_size", 10}, {"test_size", 10}});
  auto x = torch::randn({100, 2}, generator(4), kF64) * 3;
  CHECK(max_abs_diff(a.density->log_density(x, scalar(1), scalar(0)),
                     b.density->log_density(x, scalar(1), scalar(0))) <= 1e-13);
}

TEST_CASE("gmm: the density integrates to 1 and has the mixture's moments (2-D quadrature)", "[gmm]") {
  // Riemann sum on [-12, 12]^2 with spacing h = 0.06: every component (std >= 0.3, means
  // within 2.5 of the origin, std <= 1.2) leaves less than 1e-14 of mass outside the box,
  // and for a smooth Gaussian integrand the sum's error decays like exp(-2 pi^2 s^2 / h^2)
  // (s the smallest std; s / h = 5 here, so ~1e-200): far below the 1e-9 tolerance.
  auto r = mixture2d();
  auto g = make({{"components", r.components}, {"train_size", 10}, {"test_size", 10}});
  auto q = grid(12, 401);
  for (auto [alpha, sigma] : Noise{{1.0, 0.0}, {0.8, 0.5}, {0.3, 1.0}}) {
    INFO("alpha " << alpha << " sigma " << sigma);
    auto p = g.density->log_density(q.points, scalar(alpha), scalar(sigma)).exp();
    const double mass = p.sum().item<double>() * q.cell;
    CHECK(std::abs(mass - 1) <= 1e-9);
    // Quadrature moments of the density against the closed-form noised moments.
    auto w = (p * q.cell).unsqueeze(1);
    auto mean = (w * q.points).sum(0);
    auto c = q.points - mean;
    auto cov = (w.unsqueeze(2) * c.unsqueeze(2) * c.unsqueeze(1)).sum(0);
    auto [em, ec] = moments(r, alpha, sigma);
    CHECK(max_abs_diff(mean, em) <= 1e-9);
    CHECK(max_abs_diff(cov, ec) <= 1e-8);
  }
}

TEST_CASE("gmm: one component matches the Gaussian density formula", "[gmm]") {
  auto r = mixture3d();
  json one = json::array({r.components[1]});
  auto g = make({{"components", one}, {"train_size", 10}, {"test_size", 10}});
  auto mu = r.mu[1], sigma0 = r.cov[1];
  auto x = torch::randn({200, 3}, generator(5), kF64) * 2;
  for (auto [alpha, sigma] : Noise{{1.0, 0.0}, {0.6, 0.8}, {0.0, 1.0}, {2.0, 0.1}}) {
    INFO("alpha " << alpha << " sigma " << sigma);
    // log N(x; a mu, C) = -1/2 (x - a mu)^T C^{-1} (x - a mu) - 1/2 log det(2 pi C), with
    // C = a^2 Sigma + s^2 I through a Cholesky factor; the score is -C^{-1} (x - a mu).
    auto C = alpha * alpha * sigma0 + sigma * sigma * torch::eye(3, kF64);
    auto L = torch::linalg_cholesky(C);
    auto diff = x - alpha * mu;
    auto solved = torch::cholesky_solve(diff.t(), L).t();  // [N, 3]
    auto expected = -0.5 * (diff * solved).sum(1) - L.diagonal().log().sum() - 1.5 * std::log(2 * kPi);
    auto lp = g.density->log_density(x, scalar(alpha), scalar(sigma));
    CHECK(lp.sizes() == torch::IntArrayRef({200}));
    CHECK(max_abs_diff(lp, expected) <= 1e-10 * (1 + expected.abs().max().item<double>()));
    CHECK(max_abs_diff(g.density->score(x, scalar(alpha), scalar(sigma)), -solved) <=
          1e-10 * (1 + solved.abs().max().item<double>()));
  }
}

TEST_CASE("gmm: the score is the autograd gradient of log_density", "[gmm]") {
  auto r = mixture3d();
  auto g = make({{"components", r.components}, {"train_size", 300}, {"test_size", 10}}, 6);
  // Data points, points between the components, and far-away points (where a naive
  // sum of exponentials would underflow to log 0).
  auto x = torch::cat({g.dataset->train(), torch::randn({100, 3}, generator(7), kF64) * 2,
                       torch::randn({20, 3}, generator(8), kF64) * 60});
  const int64_t n = x.size(0);
  auto per_alpha = torch::rand({n, 1}, generator(9), kF64) * 0.9 + 0.1;
  auto per_sigma = torch::rand({n, 1}, generator(10), kF64);
  struct Case {
    const char* name;
    Tensor alpha, sigma;
  };
  for (const auto& c : {Case{"data", scalar(1), scalar(0)}, Case{"noised", scalar(0.7), scalar(0.4)},
                        Case{"per-sample", per_alpha, per_sigma}}) {
    INFO(c.name);
    auto xg = x.clone().requires_grad_(true);
    auto lp = g.density->log_density(xg, c.alpha, c.sigma);
    REQUIRE(torch::isfinite(lp).all().item<bool>());
    auto grad = torch::autograd::grad({lp.sum()}, {xg})[0];
    auto s = g.density->score(x, c.alpha, c.sigma);
    REQUIRE(torch::isfinite(s).all().item<bool>());
    // Relative 1e-8 on the score's scale (it reaches ~1e2 at the far points).
    CHECK(torch::allclose(s, grad, /*rtol=*/1e-8, /*atol=*/1e-8));
  }
  // Inputs in float32 give float32 results.
  auto lp32 = g.density->log_density(x.to(torch::kFloat32), scalar(1), scalar(0));
  CHECK(lp32.dtype() == torch::kFloat32);
  CHECK(g.density->score(x.to(torch::kFloat32), scalar(1), scalar(0)).dtype() == torch::kFloat32);
}

TEST_CASE("gmm: noised samples alpha X + sigma Z have the exact noised moments", "[gmm]") {
  for (const auto& r : {mixture2d(), mixture3d()}) {
    const int64_t d = r.mu.size(1);
    INFO("dimension " << d);
    auto g = make({{"components", r.components}, {"train_size", 100000}, {"test_size", 10}}, 11);
    auto x = g.dataset->train();
    auto z = torch::randn(x.sizes(), generator(12), kF64);
    for (auto [alpha, sigma] : Noise{{0.8, 0.6}, {0.2, 1.5}}) {
      INFO("alpha " << alpha << " sigma " << sigma);
      auto [mean, cov] = moments(r, alpha, sigma);
      check_moments(alpha * x + sigma * z, mean, cov);
    }
  }
}

TEST_CASE("gmm: the mean log-density of held-out samples is the density's entropy", "[gmm]") {
  // Ties the generated mixture's sampling to its density: E[log p(X)] for X drawn by the
  // plugin against the quadrature of p log p, within 5 standard errors. Box [-14, 14]^2,
  // spacing 0.07 (7 cells per component std 0.5); the means, mean_scale * N(0, I) with
  // mean_scale 2, lie within the box with a margin of many stds (checked below).
  auto g = make({{"k", 4}, {"dim", 2}, {"mean_scale", 2.0}, {"std", 0.5}, {"train_size", 10},
                 {"test_size", 40000}}, 13);
  auto test = g.dataset->test();
  REQUIRE(test.abs().max().item<double>() < 10);
  auto lp = g.density->log_density(test, scalar(1), scalar(0));
  auto q = grid(14, 401);
  auto lq = g.density->log_density(q.points, scalar(1), scalar(0));
  const double expected = (lq.exp() * lq).sum().item<double>() * q.cell;
  const double se = lp.std().item<double>() / std::sqrt(static_cast<double>(lp.size(0)));
  INFO("mean log p = " << lp.mean().item<double>() << ", expected " << expected << ", se " << se);
  CHECK(std::abs(lp.mean().item<double>() - expected) <= 5 * se);
  CHECK(std::abs(lq.exp().sum().item<double>() * q.cell - 1) <= 1e-9);
}

TEST_CASE("gmm: per-sample alpha and sigma equal scalar ones row by row", "[gmm]") {
  auto r = mixture3d();
  auto g = make({{"components", r.components}, {"train_size", 10}, {"test_size", 10}});
  const int64_t n = 40;
  auto x = torch::randn({n, 3}, generator(14), kF64) * 2;
  auto alpha = torch::rand({n, 1}, generator(15), kF64) * 1.5;
  auto sigma = torch::rand({n, 1}, generator(16), kF64) + 0.05;
  auto lp = g.density->log_density(x, alpha, sigma);
  auto s = g.density->score(x, alpha, sigma);
  // [N] is accepted as [N, 1].
  CHECK(torch::equal(lp, g.density->log_density(x, alpha.view({n}), sigma.view({n}))));
  for (int64_t i = 0; i < n; ++i) {
    INFO("row " << i);
    auto xi = x.slice(0, i, i + 1);
    auto a = alpha[i][0].clone(), si = sigma[i][0].clone();  // 0-dim
    auto lpi = g.density->log_density(xi, a, si);
    auto sci = g.density->score(xi, a, si);
    CHECK(std::abs(lp[i].item<double>() - lpi[0].item<double>()) <= 1e-12 * (1 + std::abs(lpi[0].item<double>())));
    CHECK(max_abs_diff(s[i], sci[0]) <= 1e-12 * (1 + sci.abs().max().item<double>()));
  }
  // Wrong shapes are refused with the expected shape.
  std::string message;
  try {
    g.density->log_density(x, torch::ones({n, 2}, kF64), scalar(0));
  } catch (const std::exception& e) {
    message = e.what();
  }
  CHECK_THAT(message, Catch::Contains("alpha") && Catch::Contains("[N, 1]"));
  CHECK_THROWS_WITH(g.density->score(torch::ones({n, 2}, kF64), scalar(1), scalar(0)),
                    Catch::Contains("x must be [N, 3]"));
}

TEST_CASE("gmm: the run's generator alone decides the mixture and the sets", "[gmm]") {
  json p{{"k", 5}, {"dim", 4}, {"train_size", 500}, {"test_size", 300}};
  auto a = make(p, 21), b = make(p, 21), c = make(p, 22);
  CHECK(torch::equal(a.dataset->train(), b.dataset->train()));
  CHECK(torch::equal(a.dataset->test(), b.dataset->test()));
  CHECK_FALSE(torch::equal(a.dataset->train(), c.dataset->train()));
  CHECK_FALSE(torch::equal(a.dataset->train().slice(0, 0, 300), a.dataset->test()));
  auto x = torch::randn({50, 4}, generator(23), kF64);
  CHECK(torch::equal(a.density->log_density(x, scalar(1), scalar(0)),
                     b.density->log_density(x, scalar(1), scalar(0))));
  // Another seed draws other means, so another density.
  CHECK(max_abs_diff(a.density->log_density(x, scalar(1), scalar(0)),
                     c.density->log_density(x, scalar(1), scalar(0))) > 1e-3);

  // The run's dtype is honoured; sizes and dimension follow the parameters.
  auto f = make({{"k", 2}, {"dim", 7}, {"train_size", 33}, {"test_size", 5}}, 24, torch::kFloat32);
  CHECK(f.dataset->train().sizes() == torch::IntArrayRef({33, 7}));
  CHECK(f.dataset->test().sizes() == torch::IntArrayRef({5, 7}));
  CHECK(f.dataset->train().dtype() == torch::kFloat32);
  // The same dataset object answers other capability ids with null.
  CHECK(f.dataset->capability("mfglab.forward_process/1") == nullptr);
}

TEST_CASE("gmm: a generated component has the requested isotropic std", "[gmm]") {
  // One component, so the set is N(mu, 0.25^2 I) around its sample mean; the sample
  // variance of 40000 Gaussian points has relative standard error sqrt(2/n) = 0.7%.
  auto g = make({{"k", 1}, {"dim", 3}, {"std", 0.25}, {"train_size", 40000}, {"test_size", 10}}, 25);
  auto x = g.dataset->train();
  auto var = x.var(0);
  for (int64_t i = 0; i < 3; ++i) CHECK(std::abs(var[i].item<double>() / 0.0625 - 1) <= 5 * std::sqrt(2.0 / 40000));
  // The density's mode is the component's mean: the score vanishes at the sample mean
  // up to its sampling error (|score| = |x - mu| / 0.0625, |x - mu| ~ 0.25 / sqrt(n)).
  auto s = g.density->score(x.mean(0, true), scalar(1), scalar(0));
  CHECK(s.abs().max().item<double>() <= 5 * 0.25 / std::sqrt(40000.0) / 0.0625);
}

TEST_CASE("gmm: bad components are refused naming the component and the field", "[gmm]") {
  const json ok = {{"mean", {0.0, 0.0}}, {"std", 1.0}};
  struct Bad {
    json components;
    std::vector<std::string> expected;
  };
  const std::vector<Bad> cases = {
      {json{{"mean", {0.0}}}, {"params.components", "non-empty list"}},
      {json::array(), {"params.components", "non-empty list"}},
      {json::array({1.0}), {"params.components[0]", "expected an object"}},
      {json::array({{{"weight", -1.0}, {"mean", {0.0, 0.0}}, {"std", 1.0}}}),
       {"params.components[0].weight", "positive"}},
      {json::array({ok, {{"weight", 0.0}, {"mean", {0.0, 0.0}}, {"std", 1.0}}}),
       {"params.components[1].weight", "positive"}},
      {json::array({{{"weight", "heavy"}, {"mean", {0.0, 0.0}}, {"std", 1.0}}}),
       {"params.components[0].weight", "positive number"}},
      {json::array({{{"std", 1.0}}}), {"params.components[0].mean", "missing"}},
      {json::array({ok, {{"mean", {0.0, 0.0, 0.0}}, {"std", 1.0}}}),
       {"params.components[1].mean", "3 entries", "expected 2"}},
      {json::array({{{"mean", {0.0, "x"}}, {"std", 1.0}}}),
       {"params.components[0].mean[1]", "expected a number"}},
      {json::array({{{"mean", {0.0, 0.0}}}}), {"params.components[0]", "exactly one of 'cov'"}},
      {json::array({{{"mean", {0.0, 0.0}}, {"std", 1.0}, {"cov", {{1.0, 0.0}, {0.0, 1.0}}}}}),
       {"params.components[0]", "exactly one of 'cov'"}},
      {json::array({{{"mean", {0.0, 0.0}}, {"std", -0.5}}}), {"params.components[0].std", "positive"}},
      {json::array({ok, {{"mean", {0.0, 0.0}}, {"std", {1.0, 2.0, 3.0}}}}),
       {"params.components[1].std", "list of 2"}},
      {json::array({{{"mean", {0.0, 0.0}}, {"std", {1.0, 0.0}}}}), {"params.components[0].std[1]", "positive"}},
      {json::array({{{"mean", {0.0, 0.0}}, {"cov", {{1.0, 0.0}}}}}), {"params.components[0].cov", "2 x 2"}},
      {json::array({{{"mean", {0.0, 0.0}}, {"cov", {{1.0, 0.0}, {0.0}}}}}),
       {"params.components[0].cov[1]", "2 x 2"}},
      {json::array({ok, {{"mean", {0.0, 0.0}}, {"cov", {{1.0, 0.5}, {0.4, 1.0}}}}}),
       {"params.components[1].cov", "not symmetric", "[0][1] = 0.5"}},
      {json::array({{{"mean", {0.0, 0.0}}, {"cov", {{1.0, 2.0}, {2.0, 1.0}}}}}),
       {"params.components[0].cov", "not positive definite", "Cholesky", "2 x 2 minor"}},
      {json::array({{{"mean", {0.0, 0.0}}, {"cov", {{0.0, 0.0}, {0.0, 1.0}}}}}),
       {"params.components[0].cov", "not positive definite", "1 x 1 minor"}},
      {json::array({{{"mean", {0.0, 0.0}}, {"std", 1.0}, {"covariance", 1.0}}}),
       {"params.components[0].covariance", "unknown key"}},
  };
  for (const auto& c : cases) {
    INFO("components: " << c.components.dump());
    std::string message;
    try {
      make({{"components", c.components}, {"train_size", 10}, {"test_size", 10}});
    } catch (const std::exception& e) {
      message = e.what();
    }
    INFO("message: " << message);
    REQUIRE_FALSE(message.empty());
    for (const auto& part : c.expected) CHECK_THAT(message, Catch::Contains(part));
  }
}
