// The mmd and sliced_wasserstein metric plugins against closed forms, brute-force
// reference computations and their invariances.
#include <catch2/catch.hpp>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "plugin_fixture.h"
#include "plugin_host.h"
#include <mfglab/evaluation.h>
#include <mfglab/sdk.h>

#include "catch_checks.h"  // Catch's CHECK, not glog's

namespace {

using torch::Tensor;
const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

const mfglab::engine::PluginHost& host() { return mfglab::test::plugin_host(); }

// A metric object with its own run context (seeded, so that two instances with the same
// seed draw the same random directions).
class MetricUnderTest {
 public:
  MetricUnderTest(const std::string& name, const nlohmann::json& params, uint64_t seed = 1)
      : name_(name) {
    ctx_.generator = at::make_generator<at::CPUGeneratorImpl>(seed);
    ctx_.seed = seed;
    ctx_.dtype = torch::kFloat64;
    metric_ = mfglab::test::create<mfglab::Metric>(host(), name, params, ctx_);
  }
  double operator()(const Tensor& samples, const Tensor& reference) {
    mfglab::MetricInput in;
    in.samples = samples;
    in.reference = reference;
    auto values = metric_->evaluate(in);
    REQUIRE(values.size() == 1);
    REQUIRE(values[0].first == name_);
    return values[0].second;
  }
  mfglab::Metric& metric() { return *metric_; }

 private:
  std::string name_;
  mfglab::RunContext ctx_;
  std::unique_ptr<mfglab::Metric> metric_;
};

Tensor gaussian(uint64_t seed, int64_t n, const Tensor& mean, const Tensor& cov) {
  auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto z = torch::randn({n, mean.size(0)}, g, kF64);
  return mean + z.mm(torch::linalg_cholesky(cov).t());
}

// E k(X, Y) for X ~ N(m1, S1), Y ~ N(m2, S2) independent, k(x,y) = exp(-|x-y|^2/(2h^2)):
// det(I + S/h^2)^(-1/2) exp(-1/2 Δᵀ (h^2 I + S)^(-1) Δ) with S = S1 + S2, Δ = m1 - m2.
double expected_kernel(const Tensor& delta, const Tensor& S, double h) {
  auto eye = torch::eye(S.size(0), kF64);
  const double det = torch::det(eye + S / (h * h)).item<double>();
  const double quad = delta.dot(torch::linalg_solve(h * h * eye + S, delta)).item<double>();
  return std::exp(-0.5 * quad) / std::sqrt(det);
}

// Unbiased MMD² by full kernel matrices, for small sets.
double brute_mmd(const Tensor& x, const Tensor& y, const std::vector<double>& hs) {
  auto k = [&](const Tensor& a, const Tensor& b) {
    auto d2 = (a.unsqueeze(1) - b.unsqueeze(0)).pow(2).sum(2);
    auto out = torch::zeros_like(d2);
    for (double h : hs) out += torch::exp(-d2 / (2 * h * h));
    return out;
  };
  const double n = x.size(0), m = y.size(0);
  auto kxx = k(x, x), kyy = k(y, y);
  return (kxx.sum() - kxx.diagonal().sum()).item<double>() / (n * (n - 1)) +
         (kyy.sum() - kyy.diagonal().sum()).item<double>() / (m * (m - 1)) -
         2 * k(x, y).sum().item<double>() / (n * m);
}

// Median of all pairwise distances, the mean of the two middle ones for an even count.
double brute_median_distance(const Tensor& z) {
  auto d = std::get<0>(torch::pdist(z).sort());
  const int64_t count = d.size(0);
  return 0.5 * (d[(count - 1) / 2].item<double>() + d[count / 2].item<double>());
}

// Exact W_p^p between two 1-D empirical measures by evaluating the quantile functions at
// the midpoints of the nm equal cells of [0, 1], on each of which both are constant.
double brute_wpp(const Tensor& x, const Tensor& y, double p) {
  auto xs = std::get<0>(x.flatten().sort()), ys = std::get<0>(y.flatten().sort());
  const int64_t n = xs.size(0), m = ys.size(0);
  double total = 0;
  for (int64_t k = 0; k < n * m; ++k) {
    const double u = (k + 0.5) / double(n * m);
    const double a = xs[int64_t(u * n)].item<double>(), b = ys[int64_t(u * m)].item<double>();
    total += std::pow(std::abs(a - b), p);
  }
  return total / double(n * m);
}

}  // namespace

// ---- mmd ------------------------------------------------------------------------------

TEST_CASE("mmd matches the closed form for two Gaussians", "[metrics][mmd]") {
  auto m1 = torch::tensor({0.0, 0.0}, kF64), m2 = torch::tensor({1.0, -0.5}, kF64);
  auto s1 = torch::tensor({{1.0, 0.3}, {0.3, 0.5}}, kF64);
  auto s2 = torch::tensor({{0.8, 0.0}, {0.0, 1.2}}, kF64);
  auto zero = torch::zeros({2}, kF64);
  // The estimate is unbiased, so averaging independent replications tightens it more
  // cheaply than one large sample (the cost grows as n^2).
  const int replications = 16;
  const int64_t n = 1000;
  for (double h : {0.5, 1.0, 2.0}) {
    const double expected = expected_kernel(zero, 2 * s1, h) + expected_kernel(zero, 2 * s2, h) -
                            2 * expected_kernel(m1 - m2, s1 + s2, h);
    MetricUnderTest mmd("mmd", {{"bandwidth", h}});
    std::vector<double> values;
    for (int r = 0; r < replications; ++r)
      values.push_back(mmd(gaussian(100 + 2 * r, n, m1, s1), gaussian(101 + 2 * r, n, m2, s2)));
    auto v = torch::tensor(values, kF64);
    const double mean = v.mean().item<double>();
    const double se = v.std().item<double>() / std::sqrt(double(replications));
    INFO("h = " << h << ": mean mmd " << mean << " (se " << se << "), closed form " << expected);
    CHECK(std::abs(mean - expected) <= 5 * se);
    CHECK(5 * se < 0.1 * expected);  // so the check above pins the value to within 10%
  }
}

TEST_CASE("mmd is near 0 for two samples of one law, and symmetric", "[metrics][mmd]") {
  auto mean = torch::tensor({1.0, -2.0, 0.5}, kF64);
  auto cov = torch::tensor({{1.0, 0.2, 0.0}, {0.2, 2.0, 0.3}, {0.0, 0.3, 0.7}}, kF64);
  auto x = gaussian(3, 2000, mean, cov), y = gaussian(4, 1500, mean, cov);
  MetricUnderTest mmd("mmd", nlohmann::json::object());
  const double same = mmd(x, y);
  INFO("mmd on one law: " << same);
  // Under equality the unbiased estimate has mean 0 and a standard deviation O(1/n),
  // about 1.5e-4 here.
  CHECK(std::abs(same) < 1e-3);
  CHECK(mmd(y, x) == Approx(same).margin(1e-12));
  auto shifted = y + torch::tensor({0.5, 0.0, 0.0}, kF64);
  CHECK(mmd(x, shifted) > 20 * std::abs(same));
}

TEST_CASE("mmd equals the brute-force U-statistic across row blocks", "[metrics][mmd]") {
  auto g = at::make_generator<at::CPUGeneratorImpl>(5);
  auto x = torch::randn({600, 2}, g, kF64), y = torch::randn({530, 2}, g, kF64) * 1.5;
  MetricUnderTest mmd("mmd", {{"bandwidth", 0.7}});
  CHECK(mmd(x, y) == Approx(brute_mmd(x, y, {0.7})).epsilon(1e-9));
}

TEST_CASE("mmd with a list of bandwidths is the sum of the single ones", "[metrics][mmd]") {
  auto g = at::make_generator<at::CPUGeneratorImpl>(6);
  auto x = torch::randn({700, 2}, g, kF64), y = torch::randn({400, 2}, g, kF64) + 0.3;
  const double a = MetricUnderTest("mmd", {{"bandwidth", 0.5}})(x, y);
  const double b = MetricUnderTest("mmd", {{"bandwidth", 2.0}})(x, y);
  const double both = MetricUnderTest("mmd", {{"bandwidth", {0.5, 2.0}}})(x, y);
  CHECK(both == Approx(a + b).epsilon(1e-10));
  CHECK(both == Approx(brute_mmd(x, y, {0.5, 2.0})).epsilon(1e-9));
}

TEST_CASE("mmd median heuristic takes the median pairwise distance of the reference points",
          "[metrics][mmd]") {
  auto g = at::make_generator<at::CPUGeneratorImpl>(7);
  // 901 reference points: several row blocks, and an even number of pairs (two middle ranks).
  auto x = torch::randn({700, 3}, g, kF64), y = torch::rand({901, 3}, g, kF64) * 2;
  const double h = brute_median_distance(y);
  const double with_median =
      MetricUnderTest("mmd", {{"median_heuristic", true}, {"bandwidth", 123.0}})(x, y);
  CHECK(with_median == Approx(brute_mmd(x, y, {h})).epsilon(1e-9));
  // Another model's samples against the same held-out data: the same kernel, so the arms of
  // a study are measured alike.
  auto x2 = torch::randn({500, 3}, g, kF64) * 3;
  CHECK(MetricUnderTest("mmd", {{"median_heuristic", true}})(x2, y) == Approx(brute_mmd(x2, y, {h})).epsilon(1e-9));
  // An odd number of pairs: 6 reference points give 15, one middle rank.
  auto a = torch::randn({4, 2}, g, kF64), b = torch::randn({6, 2}, g, kF64);
  const double h_odd = brute_median_distance(b);
  CHECK(MetricUnderTest("mmd", {{"median_heuristic", true}})(a, b) ==
        Approx(brute_mmd(a, b, {h_odd})).epsilon(1e-9));
}

TEST_CASE("a calibrated mmd keeps the calibration set's median-heuristic bandwidth", "[metrics][mmd][calibration]") {
  auto g = at::make_generator<at::CPUGeneratorImpl>(8);
  auto calibration = torch::rand({300, 2}, g, kF64) * 3, reference = torch::randn({250, 2}, g, kF64);
  auto x = torch::randn({200, 2}, g, kF64) + 0.2;
  const double h = brute_median_distance(calibration);
  REQUIRE(std::abs(h - brute_median_distance(reference)) > 0.1);  // the two kernels differ
  MetricUnderTest mmd("mmd", {{"median_heuristic", true}});
  auto* c = mfglab::capability<mfglab::MetricCalibration>(&mmd.metric(), mfglab::kMetricCalibration);
  REQUIRE(c != nullptr);
  CHECK_THAT(c->calibrate(calibration), Catch::StartsWith("median-heuristic bandwidth h = "));
  CHECK(mmd(x, reference) == Approx(brute_mmd(x, reference, {h})).epsilon(1e-9));
  // With fixed bandwidths there is nothing to calibrate: no capability, so no calibration set.
  MetricUnderTest fixed("mmd", {{"bandwidth", 0.7}});
  CHECK(mfglab::capability<mfglab::MetricCalibration>(&fixed.metric(), mfglab::kMetricCalibration) == nullptr);
  CHECK(fixed(x, reference) == Approx(brute_mmd(x, reference, {0.7})).epsilon(1e-9));
}

TEST_CASE("mmd refuses bad bandwidths and inputs", "[metrics][mmd]") {
  mfglab::RunContext ctx;
  ctx.generator = at::make_generator<at::CPUGeneratorImpl>(1);
  CHECK_THROWS(mfglab::test::create<mfglab::Metric>(host(), "mmd", nlohmann::json{{"bandwidth", 0.0}}, ctx));
  CHECK_THROWS(mfglab::test::create<mfglab::Metric>(host(), "mmd", nlohmann::json{{"bandwidth", {1.0, -1.0}}}, ctx));
  MetricUnderTest mmd("mmd", nlohmann::json::object());
  CHECK_THROWS(mmd(torch::zeros({5, 2}, kF64), torch::zeros({5, 3}, kF64)));
  CHECK_THROWS(mmd(torch::zeros({1, 2}, kF64), torch::zeros({5, 2}, kF64)));
}

// ---- sliced_wasserstein ---------------------------------------------------------------

TEST_CASE("sliced_wasserstein in 1-D is the exact W_p by sorting", "[metrics][sliced_wasserstein]") {
  auto g = at::make_generator<at::CPUGeneratorImpl>(8);
  auto x = torch::randn({500, 1}, g, kF64), y = torch::rand({500, 1}, g, kF64) * 3;
  auto xs = std::get<0>(x.flatten().sort()), ys = std::get<0>(y.flatten().sort());
  for (double p : {1.0, 2.0, 3.5}) {
    INFO("p = " << p);
    const double exact = std::pow((xs - ys).abs().pow(p).mean().item<double>(), 1 / p);
    MetricUnderTest sw("sliced_wasserstein", {{"p", p}, {"projections", 5}});
    CHECK(sw(x, y) == Approx(exact).epsilon(1e-12));
  }
}

TEST_CASE("sliced_wasserstein handles sets of different sizes exactly",
          "[metrics][sliced_wasserstein]") {
  // By hand: x = {0,1,2}, y = {0,3}; breakpoints 1/3, 1/2, 2/3, 1 give
  // W_2^2 = 1/6·1 + 1/6·4 + 1/3·1 = 7/6 and W_1 = 1/6 + 2/6 + 1/3 = 5/6.
  auto x = torch::tensor({0.0, 1.0, 2.0}, kF64).view({3, 1});
  auto y = torch::tensor({3.0, 0.0}, kF64).view({2, 1});
  CHECK(MetricUnderTest("sliced_wasserstein", {{"p", 2}})(x, y) ==
        Approx(std::sqrt(7.0 / 6)).epsilon(1e-12));
  CHECK(MetricUnderTest("sliced_wasserstein", {{"p", 1}})(x, y) == Approx(5.0 / 6).epsilon(1e-12));

  // Against quantile functions evaluated cell by cell, for a few awkward sizes.
  auto g = at::make_generator<at::CPUGeneratorImpl>(9);
  for (auto [n, m] : {std::pair<int64_t, int64_t>{7, 5}, {12, 8}, {1, 9}, {30, 31}}) {
    auto a = torch::randn({n, 1}, g, kF64), b = torch::randn({m, 1}, g, kF64) + 0.4;
    for (double p : {1.0, 2.0, 3.0}) {
      INFO("n = " << n << ", m = " << m << ", p = " << p);
      MetricUnderTest sw("sliced_wasserstein", {{"p", p}, {"projections", 3}});
      CHECK(sw(a, b) == Approx(std::pow(brute_wpp(a, b, p), 1 / p)).epsilon(1e-10));
    }
  }

  // Repeating a set leaves its empirical measure, hence the distance, unchanged
  // (same seed, so the same directions).
  auto x3 = torch::randn({300, 3}, g, kF64), y3 = torch::randn({300, 3}, g, kF64) * 0.5;
  const double equal = MetricUnderTest("sliced_wasserstein", nlohmann::json::object(), 4)(x3, y3);
  const double repeated = MetricUnderTest("sliced_wasserstein", nlohmann::json::object(), 4)(
      x3.repeat({3, 1}), y3.repeat({2, 1}));
  CHECK(repeated == Approx(equal).epsilon(1e-10));
}

TEST_CASE("sliced_wasserstein: SW_2^2 -> |Δ|^2/d for a mean shift of isotropic Gaussians",
          "[metrics][sliced_wasserstein]") {
  // Along a unit direction θ both projections are N(., 1), 1-D W_2^2 = (θ·Δ)^2, and
  // E (θ·Δ)^2 = |Δ|^2/d for θ uniform on the sphere.
  const int64_t d = 3, n = 1000, projections = 4000;
  auto delta = torch::tensor({2.0, 0.0, 0.0}, kF64);
  auto eye = torch::eye(d, kF64);
  auto x = gaussian(10, n, torch::zeros({d}, kF64), eye), y = gaussian(11, n, delta, eye);
  const double sw = MetricUnderTest("sliced_wasserstein", {{"projections", projections}})(x, y);
  // Monte Carlo over directions: Var (θ·Δ)^2 = |Δ|^4 (1/5 - 1/9) in 3-D, so the standard
  // error is 4·sqrt(4/45)/sqrt(4000) ≈ 0.019; the finite samples add O(1/n) ≈ 0.01.
  INFO("SW_2^2 = " << sw * sw);
  CHECK(sw * sw == Approx(4.0 / 3).margin(0.1));
}

TEST_CASE("sliced_wasserstein is 0 on identical inputs and symmetric",
          "[metrics][sliced_wasserstein]") {
  auto g = at::make_generator<at::CPUGeneratorImpl>(12);
  auto x = torch::randn({400, 4}, g, kF64), y = torch::randn({250, 4}, g, kF64) + 0.2;
  MetricUnderTest sw("sliced_wasserstein", nlohmann::json::object());
  CHECK(sw(x, x) == 0);
  CHECK(sw(x, x.index_select(0, torch::randperm(400, g, torch::kLong))) == 0);
  for (double p : {1.0, 2.0}) {
    const double xy = MetricUnderTest("sliced_wasserstein", {{"p", p}}, 5)(x, y);
    const double yx = MetricUnderTest("sliced_wasserstein", {{"p", p}}, 5)(y, x);
    CHECK(xy > 0);
    CHECK(yx == Approx(xy).epsilon(1e-12));
  }
}

TEST_CASE("sliced_wasserstein draws its directions from the run's generator",
          "[metrics][sliced_wasserstein]") {
  auto g = at::make_generator<at::CPUGeneratorImpl>(13);
  auto x = torch::randn({200, 5}, g, kF64), y = torch::randn({200, 5}, g, kF64) * 2;
  const double a = MetricUnderTest("sliced_wasserstein", {{"projections", 10}}, 21)(x, y);
  const double b = MetricUnderTest("sliced_wasserstein", {{"projections", 10}}, 21)(x, y);
  const double c = MetricUnderTest("sliced_wasserstein", {{"projections", 10}}, 22)(x, y);
  CHECK(a == b);
  CHECK(a != c);
  mfglab::RunContext ctx;
  ctx.generator = at::make_generator<at::CPUGeneratorImpl>(1);
  CHECK_THROWS(mfglab::test::create<mfglab::Metric>(host(), "sliced_wasserstein", nlohmann::json{{"projections", 0}}, ctx));
  CHECK_THROWS(mfglab::test::create<mfglab::Metric>(host(), "sliced_wasserstein", nlohmann::json{{"p", 0.5}}, ctx));
}
