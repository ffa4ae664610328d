// The wasserstein, energy_distance, nll, score_error and memorization metric plugins
// against closed forms, brute-force reference computations and their invariances. The
// model-based metrics use the test model standard_normal_model (N(0, I) with exact
// log_prob and a scalable score) and the gmm dataset (exact score under noising).
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "plugin_fixture.h"
#include "plugin_host.h"
#include <mfglab/sdk.h>

#include "catch_checks.h"  // Catch's CHECK, not glog's

namespace {

using nlohmann::json;
using torch::Tensor;
using Values = std::map<std::string, double>;
const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);
constexpr double kPi = 3.14159265358979323846;

const mfglab::engine::PluginHost& host() { return mfglab::test::plugin_host({MFGLAB_TEST_METRIC_MODEL_DIR}); }

mfglab::RunContext context(uint64_t seed, int64_t dim = 0) {
  mfglab::RunContext ctx;
  ctx.generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  ctx.seed = seed;
  ctx.dtype = torch::kFloat64;
  ctx.data_dim = dim;
  return ctx;
}

// A metric object with its own run context (seeded: two instances with one seed draw alike).
class MetricUnderTest {
 public:
  MetricUnderTest(const std::string& name, const json& params, uint64_t seed = 1)
      : ctx_(context(seed)) {
    metric_ = mfglab::test::create<mfglab::Metric>(host(), name, params, ctx_);
  }
  Values operator()(const mfglab::MetricInput& in) {
    Values out;
    for (const auto& [name, value] : metric_->evaluate(in)) {
      REQUIRE(out.count(name) == 0);
      out[name] = value;
    }
    return out;
  }
  // The one value `name` of a metric on samples and reference alone.
  double operator()(const Tensor& samples, const Tensor& reference, const std::string& name) {
    mfglab::MetricInput in;
    in.samples = samples;
    in.reference = reference;
    auto values = (*this)(in);
    REQUIRE(values.count(name) == 1);
    return values.at(name);
  }

 private:
  mfglab::RunContext ctx_;
  std::unique_ptr<mfglab::Metric> metric_;
};

Tensor normal(uint64_t seed, int64_t n, int64_t d) {
  auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randn({n, d}, g, kF64);
}

double wasserstein(const Tensor& x, const Tensor& y, const json& params = json::object()) {
  return MetricUnderTest("wasserstein", params)(x, y, "wasserstein");
}
double energy(const Tensor& x, const Tensor& y) {
  return MetricUnderTest("energy_distance", json::object())(x, y, "energy_distance");
}

// Standard normal distribution function.
double Phi(double z) { return 0.5 * std::erfc(-z / std::sqrt(2.0)); }
// E|D| for D ~ N(mu, s²): s sqrt(2/π) exp(-mu²/(2s²)) + mu (1 - 2 Φ(-mu/s)).
double mean_abs_normal(double mu, double s) {
  return s * std::sqrt(2 / kPi) * std::exp(-mu * mu / (2 * s * s)) + mu * (1 - 2 * Phi(-mu / s));
}

}  // namespace

// ---- wasserstein ----------------------------------------------------------------------

TEST_CASE("wasserstein in 1-D is the W2 of the sorted samples", "[metrics][wasserstein]") {
  auto g = at::make_generator<at::CPUGeneratorImpl>(20);
  // 1500 points: the solver starts from the solutions of 750- and 375-point problems.
  auto x = torch::randn({1500, 1}, g, kF64), y = torch::rand({1500, 1}, g, kF64) * 3 - 1;
  // In 1-D the monotone (sorted) matching is optimal for a convex cost.
  auto xs = std::get<0>(x.flatten().sort()), ys = std::get<0>(y.flatten().sort());
  const double sorted = std::sqrt((xs - ys).square().mean().item<double>());
  CHECK(wasserstein(x, y) == Approx(sorted).epsilon(1e-12));
}

TEST_CASE("wasserstein solves a 3x3 case where nearest neighbours mislead",
          "[metrics][wasserstein]") {
  // x = (3,3), (0,3), (1,3); y = (3,1), (2,2), (0,3). Squared distances:
  //        y1  y2  y3
  //   x1    4   2   9
  //   x2   13   5   0
  //   x3    8   2   1
  // The six matchings cost 10, 6, 16, 10, 24, 22: the best, x1-y1, x2-y3, x3-y2, costs 6,
  // so W2 = sqrt(6/3). Matching x1 to its nearest point y2 first would cost at least 10.
  auto x = torch::tensor({{3.0, 3.0}, {0.0, 3.0}, {1.0, 3.0}}, kF64);
  auto y = torch::tensor({{3.0, 1.0}, {2.0, 2.0}, {0.0, 3.0}}, kF64);
  CHECK(wasserstein(x, y) == Approx(std::sqrt(2.0)).epsilon(1e-14));
  CHECK(wasserstein(y, x) == Approx(std::sqrt(2.0)).epsilon(1e-14));
  // One point each: the distance itself.
  CHECK(wasserstein(x.narrow(0, 0, 1), y.narrow(0, 2, 1)) == Approx(std::sqrt(9.0)).epsilon(1e-14));
}

TEST_CASE("wasserstein equals the best of all permutations on small sets",
          "[metrics][wasserstein]") {
  auto g = at::make_generator<at::CPUGeneratorImpl>(21);
  for (int trial = 0; trial < 10; ++trial) {
    const int64_t n = 3 + trial % 5;  // 3..7 points: at most 5040 permutations
    auto x = torch::randn({n, 2}, g, kF64), y = torch::randn({n, 2}, g, kF64) * 1.3 + 0.2;
    auto cost = torch::cdist(x, y, 2, /*donot_use_mm*/ 2).square();
    auto c = cost.accessor<double, 2>();
    std::vector<int64_t> p(n);
    std::iota(p.begin(), p.end(), int64_t{0});
    double best = INFINITY;
    do {
      double total = 0;
      for (int64_t i = 0; i < n; ++i) total += c[i][p[i]];
      best = std::min(best, total);
    } while (std::next_permutation(p.begin(), p.end()));
    INFO("trial " << trial << ", n = " << n);
    CHECK(wasserstein(x, y) == Approx(std::sqrt(best / n)).epsilon(1e-12));
  }
}

TEST_CASE("wasserstein is 0 on identical and permuted inputs, and symmetric",
          "[metrics][wasserstein]") {
  auto g = at::make_generator<at::CPUGeneratorImpl>(22);
  auto x = torch::randn({400, 3}, g, kF64), y = torch::randn({400, 3}, g, kF64) * 0.7 + 0.1;
  CHECK(wasserstein(x, x) == 0);
  CHECK(wasserstein(x, x.index_select(0, torch::randperm(400, g, torch::kLong))) == 0);
  const double xy = wasserstein(x, y);
  CHECK(xy > 0);
  CHECK(wasserstein(y, x) == Approx(xy).epsilon(1e-12));
  // Reordering either set leaves the empirical measures, hence the value, unchanged.
  auto shuffled = y.index_select(0, torch::randperm(400, g, torch::kLong));
  CHECK(wasserstein(x, shuffled) == Approx(xy).epsilon(1e-12));
}

TEST_CASE("wasserstein is exact for a cloud and its image under a monotone affine map",
          "[metrics][wasserstein]") {
  // T(x) = A x + b with A symmetric positive definite is the gradient of a convex function,
  // so pairing each point with its image is an optimal coupling (Brenier): whatever the
  // order of the image points, W2² = mean |x_i - T(x_i)|². A stretches one axis and shrinks
  // the other, the kind of mismatch that needs long augmenting paths.
  const int64_t n = 2000;
  auto x = normal(27, n, 2);
  auto A = torch::tensor({{2.0, 0.6}, {0.6, 0.5}}, kF64), b = torch::tensor({0.3, -1.0}, kF64);
  auto image = x.mm(A) + b;  // A is symmetric: row-wise A x_i
  const double expected = std::sqrt((x - image).square().sum(1).mean().item<double>());
  auto g = at::make_generator<at::CPUGeneratorImpl>(28);
  auto shuffled = image.index_select(0, torch::randperm(n, g, torch::kLong));
  CHECK(wasserstein(x, shuffled) == Approx(expected).epsilon(1e-10));
  CHECK(wasserstein(shuffled, x) == Approx(expected).epsilon(1e-10));
}

TEST_CASE("wasserstein between samples of two unit Gaussians is close to the distance of their means",
          "[metrics][wasserstein]") {
  // W2(N(0, I), N(m, I)) = |m|. Between two samples of 2000 points in 2-D the empirical
  // values add a small positive bias (W2² grows by O(log n / n), about 0.01 here).
  const int64_t n = 2000;
  auto m = torch::tensor({1.5, -1.0}, kF64);
  auto x = normal(23, n, 2), y = normal(24, n, 2) + m;
  const auto start = std::chrono::steady_clock::now();
  const double w = wasserstein(x, y);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double norm = m.norm().item<double>();
  INFO("W2 = " << w << ", |m| = " << norm << ", " << seconds << " s");
  CHECK(w >= norm - 0.02);
  CHECK(w <= norm + 0.05);
  // Same law: only the sampling bias remains.
  CHECK(wasserstein(x, normal(25, n, 2)) < 0.25);
  CHECK(seconds < 60);  // a few seconds normally; generous for a loaded machine
}

TEST_CASE("wasserstein uses the first min(n, m, max_points) points of each set",
          "[metrics][wasserstein]") {
  auto g = at::make_generator<at::CPUGeneratorImpl>(26);
  auto x = torch::randn({500, 2}, g, kF64), y = torch::randn({300, 2}, g, kF64) + 0.5;
  CHECK(wasserstein(x, y) == Approx(wasserstein(x.narrow(0, 0, 300), y)).epsilon(1e-14));
  CHECK(wasserstein(x, y, {{"max_points", 100}}) ==
        Approx(wasserstein(x.narrow(0, 0, 100), y.narrow(0, 0, 100))).epsilon(1e-14));

  auto ctx = context(1);
  CHECK_THROWS(mfglab::test::create<mfglab::Metric>(host(), "wasserstein", json{{"max_points", 0}}, ctx));
  CHECK_THROWS(wasserstein(torch::zeros({5, 2}, kF64), torch::zeros({5, 3}, kF64)));
  auto bad = x.clone();
  bad[3][1] = NAN;
  CHECK_THROWS_WITH(wasserstein(bad, x), Catch::Contains("NaN"));
}

TEST_CASE("wasserstein refuses squared distances beyond float64, without looping or crashing",
          "[metrics][wasserstein]") {
  const auto start = std::chrono::steady_clock::now();
  // Finite points 1e200 apart: their squared distance, 1e400, is not a float64.
  auto far = torch::tensor({{1e200}, {0.0}}, kF64), near = torch::tensor({{0.0}, {1e200}}, kF64);
  CHECK_THROWS_WITH(wasserstein(far, near),
                    "wasserstein: samples too large for an exact assignment (max cost 1e400 overflows): every "
                    "squared distance |x_i - y_j|^2 must be below 1.8e308; rescale the data");
  // Clouds at scale 1e200 and 1e154 (where squared distances just overflow).
  for (double scale : {1e200, 1e154}) {
    INFO("scale " << scale);
    auto x = normal(30, 300, 2) * scale, y = normal(31, 300, 2) * scale;
    CHECK_THROWS_WITH(wasserstein(x, y), Catch::StartsWith("wasserstein: samples too large for an exact "
                                                           "assignment (max cost ") &&
                                             Catch::Contains(scale == 1e200 ? "e401 overflows" : "e309 overflows"));
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(seconds < 10);
}

TEST_CASE("wasserstein is exact for huge but finite squared distances", "[metrics][wasserstein]") {
  // Scaling both sets by a power of two scales W2 by it exactly, up to the largest costs
  // float64 holds (about 2^1022 here: 1-D points in [-2^510, 2^510]).
  auto g = at::make_generator<at::CPUGeneratorImpl>(32);
  auto x = torch::rand({600, 1}, g, kF64) - 0.5, y = torch::rand({600, 1}, g, kF64) * 0.8 - 0.3;
  const double unit = wasserstein(x, y);
  auto xs = std::get<0>(x.flatten().sort()), ys = std::get<0>(y.flatten().sort());
  CHECK(unit == Approx(std::sqrt((xs - ys).square().mean().item<double>())).epsilon(1e-12));
  for (int e : {-500, 200, 500, 511}) {
    INFO("scale 2^" << e);
    const double scale = std::ldexp(1.0, e);
    CHECK(wasserstein(x * scale, y * scale) == Approx(unit * scale).epsilon(1e-12));
  }
  // 2-D points about 1e153 apart: squared distances near 1e307.
  auto a = normal(33, 400, 2), b = normal(34, 400, 2) * 0.5 + 1;
  const double ab = wasserstein(a, b);
  CHECK(wasserstein(a * 1e152, b * 1e152) == Approx(ab * 1e152).epsilon(1e-9));
}

// ---- energy_distance ------------------------------------------------------------------

TEST_CASE("energy_distance equals the brute-force U-statistic across row blocks",
          "[metrics][energy_distance]") {
  // 3000 x 3000 distances exceed one block (2^22 entries), so several blocks are summed.
  auto g = at::make_generator<at::CPUGeneratorImpl>(30);
  auto x = torch::randn({3000, 2}, g, kF64), y = torch::randn({1500, 2}, g, kF64) * 1.4 + 0.3;
  // Within a set, pdist lists each pair i < j once.
  const double xx = 2 * torch::pdist(x).sum().item<double>() / (3000.0 * 2999);
  const double yy = 2 * torch::pdist(y).sum().item<double>() / (1500.0 * 1499);
  const double xy = torch::cdist(x, y, 2, /*donot_use_mm*/ 2).mean().item<double>();
  CHECK(energy(x, y) == Approx(2 * xy - xx - yy).epsilon(1e-9));
}

TEST_CASE("energy_distance is about 0 for one law and symmetric", "[metrics][energy_distance]") {
  auto x = normal(31, 2000, 3), y = normal(32, 1800, 3);
  // The same set twice: the cross term keeps the n zero distances i = j that the
  // U-statistics leave out, so the value is exactly -(2/n) times the mean pair distance.
  const double mean_pair = 2 * torch::pdist(x).sum().item<double>() / (2000.0 * 1999);
  CHECK(energy(x, x) == Approx(-2 * mean_pair / 2000).epsilon(1e-6));
  // Two samples of one law: unbiased, with a standard deviation of order E|X-X'|/n ≈ 1e-3.
  const double same = energy(x, y);
  INFO("energy distance within one law: " << same);
  CHECK(std::abs(same) < 0.01);
  CHECK(energy(y, x) == Approx(same).margin(1e-12));
  auto shifted = y + torch::tensor({0.5, 0.0, 0.0}, kF64);
  const double apart = energy(x, shifted);
  CHECK(apart > 0.05);
  CHECK(energy(shifted, x) == Approx(apart).epsilon(1e-12));
}

TEST_CASE("energy_distance matches the closed form for two 1-D Gaussians",
          "[metrics][energy_distance]") {
  // X ~ N(0, 1), Y ~ N(1, 1.5²): X - Y ~ N(-1, 1 + 2.25), X - X' ~ N(0, 2), Y - Y' ~ N(0, 4.5).
  const double mu = 1.0, s1 = 1.0, s2 = 1.5;
  const double expected = 2 * mean_abs_normal(-mu, std::sqrt(s1 * s1 + s2 * s2)) -
                          mean_abs_normal(0, std::sqrt(2.0) * s1) -
                          mean_abs_normal(0, std::sqrt(2.0) * s2);
  // The estimate is unbiased: averaging independent replications pins it down.
  const int replications = 16;
  std::vector<double> values;
  for (int r = 0; r < replications; ++r)
    values.push_back(energy(normal(100 + 2 * r, 1500, 1) * s1, normal(101 + 2 * r, 1500, 1) * s2 + mu));
  auto v = torch::tensor(values, kF64);
  const double mean = v.mean().item<double>();
  const double se = v.std().item<double>() / std::sqrt(double(replications));
  INFO("mean " << mean << " (se " << se << "), closed form " << expected);
  CHECK(expected == Approx(0.487444).epsilon(1e-5));  // the formula itself, evaluated separately
  CHECK(std::abs(mean - expected) <= 5 * se);
  CHECK(5 * se < 0.1 * expected);
}

TEST_CASE("energy_distance refuses inputs it cannot estimate from", "[metrics][energy_distance]") {
  CHECK_THROWS(energy(torch::zeros({1, 2}, kF64), torch::zeros({5, 2}, kF64)));
  CHECK_THROWS(energy(torch::zeros({5, 2}, kF64), torch::zeros({5, 3}, kF64)));
}

// ---- escaped ---------------------------------------------------------------------------

TEST_CASE("escaped counts samples outside the widened box of the reference data", "[metrics][escaped]") {
  // Reference box [0, 2] x [-1, 3]; margin 0.25 widens it to [-0.5, 2.5] x [-2, 4].
  auto reference = torch::tensor({{0.0, -1.0}, {2.0, 3.0}, {1.0, 0.0}}, kF64);
  const double inf = std::numeric_limits<double>::infinity(), nan = std::nan("");
  auto samples = torch::tensor({{-0.49, 3.9},   // inside
                                {2.5, -2.0},    // on the widened edge: inside
                                {2.51, 0.0},    // x too large
                                {1.0, -2.01},   // y too small
                                {1.0, 1.0},     // inside
                                {nan, 0.0},     // not finite: escaped
                                {0.0, inf},     // escaped
                                {1e30, 1e30}},  // escaped
                               kF64);
  MetricUnderTest metric("escaped", json{{"margin", 0.25}});
  CHECK(metric(samples, reference, "escaped_fraction") == Approx(5.0 / 8).margin(1e-15));
  // Without a margin the box is the reference's own: only the first two rows move out.
  MetricUnderTest tight("escaped", json{{"margin", 0.0}});
  CHECK(tight(samples, reference, "escaped_fraction") == Approx(7.0 / 8).margin(1e-15));
  CHECK(tight(reference, reference, "escaped_fraction") == 0.0);
  CHECK_THROWS(metric(samples, torch::zeros({3, 3}, kF64), "escaped_fraction"));
  CHECK_THROWS(mfglab::test::create<mfglab::Metric>(host(), "escaped", json{{"margin", -0.1}}, context(0)));
}

// ---- model-based metrics: nll and score_error ------------------------------------------

namespace {

// A dataset, a model and the context they refer to, created through the plugin host.
struct Run {
  mfglab::RunContext ctx;
  std::unique_ptr<mfglab::Dataset> dataset;
  std::unique_ptr<mfglab::Model> model;

  Run(const std::string& dataset_name, const json& dataset_params, const json& model_params,
      int64_t dim, uint64_t seed = 3)
      : ctx(context(seed, dim)) {
    dataset = mfglab::test::create<mfglab::Dataset>(host(), dataset_name, dataset_params, ctx);
    model = mfglab::test::create<mfglab::Model>(host(), "standard_normal_model", model_params, ctx);
  }
  mfglab::MetricInput input() const {
    mfglab::MetricInput in;
    in.reference = dataset->test();
    in.train = dataset->train();
    in.samples = model->sample(200);
    in.model = model.get();
    in.dataset = dataset.get();
    return in;
  }
};

// N(0, I) in d dimensions as a one-component gmm, whose exact score under noising is known.
json standard_normal_gmm(int64_t d, int64_t test_size) {
  return {{"components", json::array({{{"mean", std::vector<double>(d, 0.0)}, {"std", 1.0}}})},
          {"train_size", 100},
          {"test_size", test_size}};
}

}  // namespace

TEST_CASE("nll of N(0, I) data under the exact N(0, I) model is d/2 log(2πe)", "[metrics][nll]") {
  const int64_t d = 3, m = 20000;
  Run run("gmm", standard_normal_gmm(d, m), json::object(), d);
  auto in = run.input();
  const double nll = MetricUnderTest("nll", json::object())(in).at("nll");
  // Exactly, for these points: mean |y|²/2 + d/2 log(2π).
  const double direct = 0.5 * in.reference.square().sum(1).mean().item<double>() + 0.5 * d * std::log(2 * kPi);
  CHECK(nll == Approx(direct).epsilon(1e-12));
  // In expectation d/2 log(2πe); |y|²/2 has standard deviation sqrt(2d)/2, so the standard
  // error is about 0.009.
  CHECK(nll == Approx(0.5 * d * std::log(2 * kPi * std::exp(1.0))).margin(0.045));
  // Batching changes nothing but the rounding.
  CHECK(MetricUnderTest("nll", {{"batch", 7}})(in).at("nll") == Approx(nll).epsilon(1e-12));
  CHECK(MetricUnderTest("nll", {{"batch", 1000000}})(in).at("nll") == Approx(nll).epsilon(1e-12));
}

TEST_CASE("nll refuses to run without a model", "[metrics][nll]") {
  mfglab::MetricInput in;
  in.samples = normal(40, 10, 2);
  in.reference = normal(41, 10, 2);
  MetricUnderTest nll("nll", json::object());
  CHECK_THROWS_WITH(nll(in), Catch::Contains("no model"));
  auto ctx = context(1);
  CHECK_THROWS(mfglab::test::create<mfglab::Metric>(host(), "nll", json{{"batch", 0}}, ctx));
}

TEST_CASE("score_error is 0 for the exact score of N(0, I) data", "[metrics][score_error]") {
  Run run("gmm", standard_normal_gmm(2, 5000), json::object(), 2);
  const auto values = MetricUnderTest("score_error", json::object())(run.input());
  const std::vector<std::string> names = {"score_error@t=0.01", "score_error@t=0.1", "score_error@t=0.3",
                                          "score_error@t=0.5", "score_error@t=0.9", "score_error",
                                          "score_rel_error"};
  CHECK(values.size() == names.size());
  for (const auto& name : names) {
    INFO(name);
    REQUIRE(values.count(name) == 1);
    // alpha² + sigma² = 1 up to rounding: the exact score -x/(alpha² + sigma²) is -x.
    CHECK(values.at(name) < 1e-20);
  }
}

TEST_CASE("score_error of a deliberately wrong score", "[metrics][score_error]") {
  // The model's score -(1/2 + t) x differs from the exact -x by (1/2 - t)(-x), and x_t is
  // N(0, I) at every t, so the error at t is (1/2 - t)² E|x_t|² = 2 (1/2 - t)² in 2-D, and
  // relative to E|s_exact|² = E|x_t|² it is (1/2 - t)² exactly, for the points drawn.
  const std::vector<double> times = {0.05, 0.2, 0.5, 0.7, 1.0};
  Run run("gmm", standard_normal_gmm(2, 20000), {{"scale", 0.5}, {"slope", 1.0}}, 2);
  const json params = {{"times", times}, {"points", 20000}};
  const auto values = MetricUnderTest("score_error", params, 7)(run.input());
  std::vector<double> errors;
  double relative = 0;
  for (double t : times) {
    std::ostringstream name;
    name << "score_error@t=" << t;
    INFO(name.str());
    REQUIRE(values.count(name.str()) == 1);
    errors.push_back(values.at(name.str()));
    // E|x_t|² = 2 within sampling error (3% is over 4 standard errors of the data and noise).
    CHECK(errors.back() == Approx(2 * (0.5 - t) * (0.5 - t)).epsilon(0.03).margin(1e-12));
    relative += (0.5 - t) * (0.5 - t) / times.size();
  }
  CHECK(values.at("score_rel_error") == Approx(relative).epsilon(1e-10));
  // The time average: the trapezoid rule over the reported values, over the span 0.95.
  double integral = 0;
  for (size_t k = 0; k + 1 < times.size(); ++k)
    integral += (times[k + 1] - times[k]) * 0.5 * (errors[k] + errors[k + 1]);
  CHECK(values.at("score_error") == Approx(integral / 0.95).epsilon(1e-12));

  // Times given in any order give the same values; a single time is its own average.
  const auto shuffled = MetricUnderTest("score_error", {{"times", {0.7, 0.05, 1.0, 0.5, 0.2}},
                                                        {"points", 20000}}, 7)(run.input());
  CHECK(shuffled.at("score_error") == Approx(values.at("score_error")).epsilon(0.03));
  const auto one = MetricUnderTest("score_error", {{"times", 0.2}, {"points", 500}})(run.input());
  CHECK(one.size() == 3);
  CHECK(one.at("score_error") == one.at("score_error@t=0.2"));
  // Draws come from the run's generator: one seed, one value.
  CHECK(MetricUnderTest("score_error", params, 7)(run.input()).at("score_error") ==
        values.at("score_error"));
}

TEST_CASE("score_error says what is missing", "[metrics][score_error]") {
  MetricUnderTest metric("score_error", json::object());
  // toy2d has no exact density.
  Run toy("toy2d", json::object(), json::object(), 2);
  CHECK_THROWS_WITH(metric(toy.input()), Catch::Contains("needs a dataset with an exact score"));
  // A model without a forward process.
  Run no_process("gmm", standard_normal_gmm(2, 100), {{"forward_process", false}}, 2);
  CHECK_THROWS_WITH(metric(no_process.input()), Catch::Contains("needs a model with a forward noising process"));
  // No model at all (evaluating sample files).
  Run run("gmm", standard_normal_gmm(2, 100), json::object(), 2);
  auto in = run.input();
  in.model = nullptr;
  CHECK_THROWS_WITH(metric(in), Catch::Contains("no model"));
  // Times outside the model's [1e-3, 1], or outside (0, 1] at all, or repeated.
  CHECK_THROWS_WITH(MetricUnderTest("score_error", {{"times", {0.5, 0.0005}}})(run.input()),
                    Catch::Contains("outside the model's forward process range [0.001, 1]"));
  auto ctx = context(1);
  CHECK_THROWS(mfglab::test::create<mfglab::Metric>(host(), "score_error", json{{"times", {0.5, 1.5}}}, ctx));
  CHECK_THROWS(mfglab::test::create<mfglab::Metric>(host(), "score_error", json{{"times", 0.0}}, ctx));
  CHECK_THROWS_WITH(mfglab::test::create<mfglab::Metric>(host(), "score_error", json{{"times", {0.1, 0.5, 0.1}}}, ctx),
                    Catch::Contains("given twice"));
}

TEST_CASE("score_error probes up to the model's horizon: an OU process run to T = 3", "[metrics][score_error]") {
  // sgm's OU process dY = -Y/2 dt + dW on [1e-3, 3] keeps N(0, I) fixed: the noised data is
  // N(0, I) at every t and its exact score is -x. The default times are fractions of the
  // horizon: 0.01, 0.1, 0.3, 0.5, 0.9 of 3.
  auto ctx = context(3, 2);
  auto dataset = mfglab::test::create<mfglab::Dataset>(host(), "gmm", standard_normal_gmm(2, 4000), ctx);
  ctx.dataset = dataset.get();
  auto model = mfglab::test::create<mfglab::Model>(host(), "sgm", json{{"process", "ou"}, {"T", 3.0}, {"width", 16}, {"depth", 1}}, ctx);
  auto* process = mfglab::capability<mfglab::ForwardProcess>(model.get(), mfglab::kForwardProcess);
  REQUIRE(process != nullptr);
  REQUIRE(process->t_max() == 3.0);
  mfglab::MetricInput in;
  in.reference = dataset->test();
  in.model = model.get();
  in.dataset = dataset.get();
  // mean |s_model(x, t) + x|^2 over x ~ N(0, I), directly.
  auto direct = [&](double t) {
    auto x = normal(95, 50000, 2);
    auto s = model->score(x, torch::full({50000, 1}, t, kF64)).detach();
    return (s + x).square().sum(1).mean().item<double>();
  };

  const auto values = MetricUnderTest("score_error", {{"points", 20000}})(in);
  for (const char* name : {"score_error@t=0.03", "score_error@t=0.3", "score_error@t=0.9", "score_error@t=1.5",
                           "score_error@t=2.7", "score_error", "score_rel_error"}) {
    INFO(name);
    REQUIRE(values.count(name) == 1);
    CHECK(std::isfinite(values.at(name)));
  }
  CHECK(values.size() == 7);
  // The values above t = 1 are the errors at those times.
  for (double t : {1.5, 2.7}) {
    std::ostringstream name;
    name << "score_error@t=" << t;
    const double want = direct(t);
    INFO(name.str() << " = " << values.at(name.str()) << ", direct estimate " << want);
    CHECK(values.at(name.str()) == Approx(want).epsilon(0.05));
  }

  // Absolute times reach the horizon too; beyond it they are refused.
  const auto absolute = MetricUnderTest("score_error", {{"times", {0.5, 2.0, 3.0}}, {"time_unit", "absolute"},
                                                        {"points", 500}})(in);
  for (const char* name : {"score_error@t=0.5", "score_error@t=2", "score_error@t=3"}) {
    INFO(name);
    CHECK(absolute.count(name) == 1);
  }
  CHECK_THROWS_WITH(MetricUnderTest("score_error", {{"times", 3.5}, {"time_unit", "absolute"}})(in),
                    Catch::Contains("outside the model's forward process range [0.001, 3]"));
  auto metric_ctx = context(1);
  CHECK_THROWS_WITH(mfglab::test::create<mfglab::Metric>(host(), "score_error", json{{"times", {0.5, 1.5}}},
                                                     metric_ctx),
                    Catch::Contains("fraction of the horizon"));
}

// ---- memorization ---------------------------------------------------------------------

namespace {

Values memorization(const Tensor& samples, const Tensor& train, const Tensor& reference,
                    const json& params = json::object(), uint64_t seed = 1) {
  mfglab::MetricInput in;
  in.samples = samples;
  in.train = train;
  in.reference = reference;
  return MetricUnderTest("memorization", params, seed)(in);
}

// The three values by full distance matrices (direct differences), for moderate sizes;
// the matrices are computed once and serve every fraction and k.
struct BruteMemorization {
  Tensor x_train, train_train, x_y, y_y, y_x, x_x;

  BruteMemorization(const Tensor& x, const Tensor& train, const Tensor& y) {
    auto dist = [](const Tensor& a, const Tensor& b) { return torch::cdist(a, b, 2, /*donot_use_mm*/ 2); };
    x_train = dist(x, train);
    train_train = dist(train, train).fill_diagonal_(INFINITY);  // a point is not its own neighbour
    x_y = dist(x, y);
    y_x = x_y.t();
    y_y = dist(y, y).fill_diagonal_(INFINITY);
    x_x = dist(x, x).fill_diagonal_(INFINITY);
  }

  Values operator()(double fraction, int64_t k) const {
    auto share = [](const Tensor& mask) { return mask.to(torch::kFloat64).mean().item<double>(); };
    auto kth = [&](const Tensor& d) { return std::get<0>(d.topk(k, 1, false, true)).select(1, k - 1); };
    auto spacing = std::get<0>(train_train.min(1));
    auto [nearest, index] = x_train.min(1);
    Values out;
    out["memorized_fraction"] = share(nearest < fraction * spacing.index_select(0, index));
    out["precision"] = share((x_y <= kth(y_y).unsqueeze(0)).any(1));
    out["recall"] = share((y_x <= kth(x_x).unsqueeze(0)).any(1));
    return out;
  }
};

}  // namespace

TEST_CASE("memorization: copies of training points are memorized, fresh samples are not",
          "[metrics][memorization]") {
  auto g = at::make_generator<at::CPUGeneratorImpl>(50);
  auto train = normal(51, 2000, 2), reference = normal(52, 2000, 2);
  auto copies = train.index_select(0, torch::randperm(2000, g, torch::kLong).narrow(0, 0, 800));
  CHECK(memorization(copies, train, reference).at("memorized_fraction") == 1);

  // For a fresh sample, the ball of radius f r_j around training point j (r_j its spacing)
  // holds mass about f^d / (n - 1) in expectation, and the balls are disjoint and closer
  // to j than to any other point: the expected share is about f^d = 1/9 in 2-D.
  const double fresh2 = memorization(normal(53, 4000, 2), train, reference).at("memorized_fraction");
  INFO("2-D fresh memorized fraction " << fresh2);
  CHECK(fresh2 == Approx(1.0 / 9).margin(0.02));
  // ... and 3^-8 ≈ 1.5e-4 in 8-D: near 0.
  const double fresh8 = memorization(normal(54, 2000, 8), normal(55, 2000, 8), normal(56, 2000, 8))
                            .at("memorized_fraction");
  INFO("8-D fresh memorized fraction " << fresh8);
  CHECK(fresh8 < 0.005);
  // A larger fraction counts more, up to f = 1 (closer than the training neighbour).
  CHECK(memorization(normal(53, 4000, 2), train, reference, {{"fraction", 1.0}}).at("memorized_fraction") >
        fresh2 + 0.3);
}

TEST_CASE("memorization: precision and recall are 1 for identical sets, 0 far apart",
          "[metrics][memorization]") {
  auto train = normal(60, 1000, 3), reference = normal(61, 1500, 3);
  const auto same = memorization(reference, train, reference);
  CHECK(same.at("precision") == 1);
  CHECK(same.at("recall") == 1);
  const auto far = memorization(reference + 100, train, reference);
  CHECK(far.at("precision") == 0);
  CHECK(far.at("recall") == 0);
  CHECK(far.at("memorized_fraction") == 0);
  // Samples squeezed onto a fraction of the data: precise, but low recall.
  const auto narrow = memorization(normal(62, 1500, 3) * 0.3, train, reference);
  INFO("precision " << narrow.at("precision") << ", recall " << narrow.at("recall"));
  CHECK(narrow.at("precision") > 0.95);
  CHECK(narrow.at("recall") < 0.3);
}

TEST_CASE("memorization equals a full-matrix computation across row blocks",
          "[metrics][memorization]") {
  // Sets of a few thousand points take several row blocks (2^22 distances each). Samples
  // mix copies of training points, fresh points and a displaced cloud.
  auto train = normal(71, 2500, 2), reference = normal(72, 2800, 2);
  auto samples = torch::cat({train.narrow(0, 0, 600), normal(73, 1900, 2), normal(74, 500, 2) * 0.5 + 3});
  const BruteMemorization brute(samples, train, reference);
  for (auto [fraction, k] : {std::pair<double, int64_t>{1.0 / 3, 3}, {0.8, 1}, {0.5, 10}}) {
    INFO("fraction " << fraction << ", k " << k);
    const auto got = memorization(samples, train, reference, {{"fraction", fraction}, {"k", k}});
    const auto want = brute(fraction, k);
    for (const auto& name : {"memorized_fraction", "precision", "recall"}) {
      INFO(name);
      CHECK(got.at(name) == Approx(want.at(name)).margin(1e-12));
    }
  }
}

TEST_CASE("memorization subsamples large sets from the run's generator, and checks its input",
          "[metrics][memorization]") {
  auto train = normal(80, 3000, 2), reference = normal(81, 3000, 2), samples = normal(82, 3000, 2);
  mfglab::MetricInput in;
  in.samples = samples;
  in.train = train;
  in.reference = reference;
  const json params = {{"max_points", 500}};
  const auto a = MetricUnderTest("memorization", params, 5)(in);
  const auto b = MetricUnderTest("memorization", params, 5)(in);
  const auto c = MetricUnderTest("memorization", params, 6)(in);
  CHECK(a == b);
  CHECK(a != c);
  // Sets of one law: precision and recall high, memorization at its fresh-sample level.
  CHECK(a.at("precision") > 0.8);
  CHECK(a.at("recall") > 0.8);
  CHECK(a.at("memorized_fraction") < 0.25);

  in.train = Tensor();
  CHECK_THROWS_WITH(MetricUnderTest("memorization", json::object())(in), Catch::Contains("training set"));
  auto ctx = context(1);
  CHECK_THROWS(mfglab::test::create<mfglab::Metric>(host(), "memorization", json{{"fraction", 0.0}}, ctx));
  CHECK_THROWS(mfglab::test::create<mfglab::Metric>(host(), "memorization", json{{"k", 5}, {"max_points", 5}}, ctx));
}

TEST_CASE("memorization reports the fresh-sample baselines beside its values", "[metrics][memorization]") {
  // Baselines: held-out points (as many as the samples) against the training set for
  // memorized_fraction_fresh; training points (as many) against the reference set for
  // precision_fresh and recall_fresh.
  const std::vector<std::string> names = {"memorized_fraction", "precision", "recall",
                                          "memorized_fraction_fresh", "precision_fresh", "recall_fresh"};
  auto train = normal(90, 1500, 2), reference = normal(91, 1500, 2);
  const auto fresh = memorization(normal(92, 1500, 2), train, reference);
  CHECK(fresh.size() == names.size());
  for (const auto& name : names) {
    INFO(name << " = " << (fresh.count(name) ? fresh.at(name) : -1));
    REQUIRE(fresh.count(name) == 1);
  }
  // On a Gaussian: about fraction^d = 1/9 in 2-D; precision and recall of the law itself near 1.
  CHECK(fresh.at("memorized_fraction_fresh") == Approx(1.0 / 9).margin(0.025));
  CHECK(fresh.at("precision_fresh") > 0.85);
  CHECK(fresh.at("recall_fresh") > 0.85);
  // Fresh samples score about their baselines.
  for (const char* name : {"memorized_fraction", "precision", "recall"}) {
    INFO(name << " " << fresh.at(name) << ", baseline " << fresh.at(std::string(name) + "_fresh"));
    CHECK(std::abs(fresh.at(name) - fresh.at(std::string(name) + "_fresh")) < 0.05);
  }
  // With as many samples as each set, the baselines use the whole set: brute force.
  const BruteMemorization held_out(reference, train, reference), train_as_samples(train, train, reference);
  CHECK(fresh.at("memorized_fraction_fresh") == Approx(held_out(1.0 / 3, 3).at("memorized_fraction")).margin(1e-12));
  CHECK(fresh.at("precision_fresh") == Approx(train_as_samples(1.0 / 3, 3).at("precision")).margin(1e-12));
  CHECK(fresh.at("recall_fresh") == Approx(train_as_samples(1.0 / 3, 3).at("recall")).margin(1e-12));

  // Copies of training points stand out against the baseline; the baselines depend on the
  // data, not on the samples (at the same sample size).
  auto g = at::make_generator<at::CPUGeneratorImpl>(93);
  const auto copies = memorization(train.index_select(0, torch::randperm(1500, g, torch::kLong)), train, reference);
  CHECK(copies.at("memorized_fraction") == 1);
  for (const char* name : {"memorized_fraction_fresh", "precision_fresh", "recall_fresh"})
    CHECK(copies.at(name) == fresh.at(name));
  // Samples squeezed onto part of the data: recall far below its baseline.
  const auto narrow = memorization(normal(94, 1500, 2) * 0.3, train, reference);
  INFO("squeezed samples: recall " << narrow.at("recall") << ", baseline " << narrow.at("recall_fresh"));
  CHECK(narrow.at("recall") < narrow.at("recall_fresh") - 0.3);
  // Fewer samples than held-out and training points: baselines from random subsets of the
  // samples' size, which fresh samples of that size match (recall depends on the size); in
  // 8-D the fresh memorized share is near 0.
  const auto few = memorization(normal(95, 400, 8), normal(96, 2000, 8), normal(97, 2000, 8));
  INFO("8-D, 400 samples: precision " << few.at("precision") << " (fresh " << few.at("precision_fresh")
                                      << "), recall " << few.at("recall") << " (fresh " << few.at("recall_fresh") << ")");
  CHECK(few.at("memorized_fraction_fresh") < 0.005);
  CHECK(std::abs(few.at("precision") - few.at("precision_fresh")) < 0.1);
  CHECK(std::abs(few.at("recall") - few.at("recall_fresh")) < 0.1);
}
