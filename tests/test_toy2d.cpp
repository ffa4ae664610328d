// The toy2d dataset plugin: each of its eight recipes is checked against moments derived
// from the recipe (closed forms, or accurate quadrature of the recipe's integrals), and
// the plugin against the run's generator, its sizes and its parameter checks.
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <string>

#include "plugin_fixture.h"
#include "plugin_host.h"
#include <mfglab/sdk.h>

#include "catch_checks.h"  // Catch's CHECK, not glog's

namespace {

constexpr double kPi = 3.14159265358979323846;
const char* const kNames[] = {"8gaussians", "checkerboard", "swissroll", "circles",
                              "moons",      "pinwheel",     "2spirals",  "rings"};

const mfglab::engine::PluginHost& host() { return mfglab::test::plugin_host(); }

struct Sets {
  torch::Tensor train, test;
};

Sets draw(const std::string& name, uint64_t seed, int64_t train_size = 20000,
          int64_t test_size = 100, torch::Dtype dtype = torch::kFloat64) {
  mfglab::RunContext ctx;
  ctx.generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  ctx.seed = seed;
  ctx.dtype = dtype;
  auto ds = mfglab::test::create<mfglab::Dataset>(host(), "toy2d", nlohmann::json{{"name", name}, {"train_size", train_size}, {"test_size", test_size}}, ctx);
  return {ds->train(), ds->test()};
}

// Composite Simpson rule on [a, b]; the integrands here are smooth, so 20000 intervals
// leave an error far below the Monte Carlo tolerances.
double simpson(const std::function<double(double)>& f, double a, double b, int intervals = 20000) {
  const double h = (b - a) / intervals;
  double s = f(a) + f(b);
  for (int i = 1; i < intervals; ++i) s += f(a + i * h) * (i % 2 ? 4 : 2);
  return s * h / 3;
}

struct Moments {
  double mean[2];
  double cov[2][2];
};

// Sample mean and covariance of x [N, 2] against the expected ones. Each entry may miss
// by 5 standard errors of its estimator (estimated from the sample itself) plus `slack`,
// which covers known deterministic differences between the recipe and the closed form.
void check_moments(const torch::Tensor& x, const Moments& e, double slack = 0) {
  auto z = x.to(torch::kFloat64);
  const double n = static_cast<double>(z.size(0));
  auto centered = z - z.mean(0);
  for (int i = 0; i < 2; ++i) {
    const double mean = z.select(1, i).mean().item<double>();
    const double se = z.select(1, i).std().item<double>() / std::sqrt(n);
    INFO("mean[" << i << "] = " << mean << ", expected " << e.mean[i] << ", se " << se);
    CHECK(std::abs(mean - e.mean[i]) <= 5 * se + slack);
    for (int j = 0; j < 2; ++j) {
      auto prod = centered.select(1, i) * centered.select(1, j);
      const double cov = prod.mean().item<double>();
      const double cse = prod.std().item<double>() / std::sqrt(n);
      INFO("cov[" << i << "][" << j << "] = " << cov << ", expected " << e.cov[i][j] << ", se " << cse);
      CHECK(std::abs(cov - e.cov[i][j]) <= 5 * cse + slack);
    }
  }
}

Moments isotropic(double mx, double my, double var) { return {{mx, my}, {{var, 0}, {0, var}}}; }

}  // namespace

TEST_CASE("toy2d 8gaussians: mean 0, covariance (16/2 + 1/4)/1.414^2 I", "[toy2d]") {
  // Centers 4(cos, sin) of 8 equally spaced angles: per axis E[c^2] = 16/2, cross term 0;
  // component variance 0.5^2; the whole set divided by 1.414.
  const double var = (16.0 / 2 + 0.25) / (1.414 * 1.414);
  check_moments(draw("8gaussians", 1).train, isotropic(0, 0, var));
}

TEST_CASE("toy2d checkerboard: uniform on the black squares of [-4,4]^2", "[toy2d]") {
  auto x = draw("checkerboard", 2).train;
  // Both coordinates are U(-4, 4); x2 picks up floor(x1) mod 2 (pre-scale), which gives
  // E[x1 x2] = 4 * (1/4)(∫_{-1}^0 t dt + ∫_1^2 t dt) = 1 after the factor 2 on each axis.
  check_moments(x, {{0, 0}, {{16.0 / 3, 1.0}, {1.0, 16.0 / 3}}});
  CHECK(x.min().item<double>() >= -4);
  CHECK(x.max().item<double>() <= 4);
  // Every point is on a square of the same colour: floor(x1/2) + floor(x2/2) is even.
  auto parity = torch::remainder(torch::floor(x / 2).sum(1), 2);
  CHECK(parity.abs().max().item<double>() == 0);
}

TEST_CASE("toy2d swissroll: moments of (t cos t, t sin t)/5 + N(0, 0.2^2 I)", "[toy2d]") {
  // t ~ U(1.5π, 4.5π); expectations over t by quadrature.
  const double a = 1.5 * kPi, b = 4.5 * kPi;
  auto E = [&](const std::function<double(double)>& f) { return simpson(f, a, b) / (b - a); };
  const double mx = E([](double t) { return t * std::cos(t); });
  const double my = E([](double t) { return t * std::sin(t); });
  const double xx = E([](double t) { return t * t * std::cos(t) * std::cos(t); });
  const double yy = E([](double t) { return t * t * std::sin(t) * std::sin(t); });
  const double xy = E([](double t) { return t * t * std::sin(t) * std::cos(t); });
  Moments e{{mx / 5, my / 5},
            {{(xx - mx * mx + 1) / 25, (xy - mx * my) / 25},
             {(xy - mx * my) / 25, (yy - my * my + 1) / 25}}};
  auto x = draw("swissroll", 3).train;
  check_moments(x, e);
  // |(t cos t, t sin t)| = t <= 4.5π; the noise (std 0.2 per axis) stays within 6 sigma.
  CHECK(x.norm(2, 1).max().item<double>() <= (4.5 * kPi + 6) / 5);
}

TEST_CASE("toy2d circles: radii 3 and 1.5, per-axis variance from the two circles", "[toy2d]") {
  const int64_t n = 20000, n_out = n / 2, n_in = n - n_out;
  // Equally spaced angles: the deterministic mean is exactly 0 and E[cos^2] = 1/2 on each
  // circle; noise 0.08 is added before the factor 3.
  const double var = 9 * ((n_out * 1.0 + n_in * 0.25) / (2.0 * n) + 0.08 * 0.08);
  auto x = draw("circles", 4, n).train;
  check_moments(x, isotropic(0, 0, var));
  auto r = x.norm(2, 1);
  auto outer = r > 0.75 * 3;  // halfway between the radii 3 and 1.5, > 3 noise std away
  const int64_t count = outer.sum().item<int64_t>();
  CHECK(std::abs(count - n_out) <= n / 100);
  // E|r e + s ξ| ≈ r + s^2/(2r) for 2-D noise of std s (here s = 0.08 before the factor 3).
  const double s2 = 0.08 * 0.08;
  CHECK(r.masked_select(outer).mean().item<double>() == Approx(3 * (1 + s2 / 2)).margin(0.015));
  CHECK(r.masked_select(~outer).mean().item<double>() == Approx(3 * (0.5 + s2)).margin(0.015));
}

TEST_CASE("toy2d moons: closed-form moments of the two half circles", "[toy2d]") {
  // Before the map 2x + (-1, -0.2): half the points (cos θ, sin θ), half
  // (1 - cos θ, 0.5 - sin θ), θ ~ U(0, π) in the continuum limit, plus N(0, 0.1^2 I).
  //   E[x] = 1/2, E[y] = 1/4, Var x = 3/4, Var y = 9/16 - 1/π, Cov = 1/8 - 1/π.
  // The recipe's linspace includes both ends; that shifts the moments by O(1/n) (~3e-4
  // here), covered by the slack.
  const double vx = 0.75 + 0.01, vy = 0.5625 - 1 / kPi + 0.01, cxy = 0.125 - 1 / kPi;
  Moments e{{0.0, 0.3}, {{4 * vx, 4 * cxy}, {4 * cxy, 4 * vy}}};
  check_moments(draw("moons", 5).train, e, 2e-3);
}

TEST_CASE("toy2d pinwheel: isotropic covariance 2.2 I and the arms' turning", "[toy2d]") {
  auto x = draw("pinwheel", 6).train;
  // Five arms at multiples of 72° make the law's mean 0 and its covariance c I; rotations
  // keep norms, so 2c = 4 E|f|^2 = 4 (1 + 0.3^2 + 0.1^2) = 4.4. Truncating to n points
  // drops at most 4 of them, covered by the slack.
  check_moments(x, isotropic(0, 0, 2.2), 1e-3);

  // The angle φ of a point of arm k is atan2(f1, f0) - 2πk/5 - 0.25 exp(f0), so e^{5iφ}
  // has the same law on every arm: E[cos 5φ], E[sin 5φ] by quadrature over f ~ N((1,0),
  // diag(0.3^2, 0.1^2)). This checks the direction and rate of the turning.
  const int steps = 800;
  double ec = 0, es = 0, mass = 0;
  for (int i = 0; i <= steps; ++i) {
    const double u = -8 + 16.0 * i / steps, f0 = 1 + 0.3 * u;
    for (int j = 0; j <= steps; ++j) {
      const double v = -8 + 16.0 * j / steps, f1 = 0.1 * v;
      const double w = std::exp(-0.5 * (u * u + v * v));
      const double phi = std::atan2(f1, f0) - 0.25 * std::exp(f0);
      ec += w * std::cos(5 * phi);
      es += w * std::sin(5 * phi);
      mass += w;
    }
  }
  ec /= mass;
  es /= mass;
  auto phi = torch::atan2(x.select(1, 1), x.select(1, 0));
  auto c5 = torch::cos(5 * phi), s5 = torch::sin(5 * phi);
  const double se = 1 / std::sqrt(static_cast<double>(x.size(0)));  // |cos|, |sin| <= 1
  INFO("E cos 5φ = " << c5.mean().item<double>() << " expected " << ec);
  CHECK(std::abs(c5.mean().item<double>() - ec) <= 5 * se);
  INFO("E sin 5φ = " << s5.mean().item<double>() << " expected " << es);
  CHECK(std::abs(s5.mean().item<double>() - es) <= 5 * se);
  CHECK(std::abs(es) > 10 * se);  // the check above can tell the turning direction
}

TEST_CASE("toy2d 2spirals: moments by quadrature over the spiral parameter", "[toy2d]") {
  // r = 3π sqrt(U) has density 2r/(3π)^2 on [0, 3π]; d = (-r cos r + u1/2, r sin r + u2/2)
  // with u1, u2 ~ U(0,1); the points are ±d/3 + N(0, 0.1^2 I), so the mean is 0 and
  // Cov = E[d d^T]/9 + 0.01 I.
  const double top = 3 * kPi;
  auto E = [&](const std::function<double(double)>& f) {
    return simpson([&](double r) { return f(r) * 2 * r / (top * top); }, 0, top);
  };
  const double rc = E([](double r) { return r * std::cos(r); });
  const double rs = E([](double r) { return r * std::sin(r); });
  const double cc = E([](double r) { return r * r * std::cos(r) * std::cos(r); });
  const double ss = E([](double r) { return r * r * std::sin(r) * std::sin(r); });
  const double sc = E([](double r) { return r * r * std::sin(r) * std::cos(r); });
  const double dxx = cc - 0.5 * rc + 1.0 / 12;
  const double dyy = ss + 0.5 * rs + 1.0 / 12;
  const double dxy = -sc - 0.25 * rc + 0.25 * rs + 1.0 / 16;
  Moments e{{0, 0}, {{dxx / 9 + 0.01, dxy / 9}, {dxy / 9, dyy / 9 + 0.01}}};
  auto x = draw("2spirals", 7).train;
  check_moments(x, e);
  // |d| <= 3π + 0.5 sqrt 2 before the division by 3; noise within 6 sigma.
  CHECK(x.norm(2, 1).max().item<double>() <= (top + 0.5 * std::sqrt(2.0)) / 3 + 0.6);
}

TEST_CASE("toy2d rings: four rings of radii 3, 2.25, 1.5, 0.75", "[toy2d]") {
  const int64_t n = 20002, q = n / 4;
  const int64_t counts[4] = {q, q, q, n - 3 * q};
  const double radii[4] = {3.0, 2.25, 1.5, 0.75};
  double second = 0;  // E|x|^2 of the deterministic part
  for (int k = 0; k < 4; ++k) second += counts[k] * radii[k] * radii[k] / n;
  auto x = draw("rings", 8, n).train;
  check_moments(x, isotropic(0, 0, second / 2 + 0.08 * 0.08));
  // Rings are 0.75 apart and the noise std is 0.08 (4.7 std to the midway radius), so
  // nearly every point is nearest its own ring, and the radial residual has std ~0.08.
  auto r = x.norm(2, 1);
  auto ring = torch::round((3 - r) / 0.75).clamp(0, 3).to(torch::kLong);
  auto found = torch::bincount(ring, {}, 4);
  for (int k = 0; k < 4; ++k) {
    INFO("ring " << k);
    CHECK(std::abs(found[k].item<int64_t>() - counts[k]) <= 5);
  }
  auto residual = r - (3 - 0.75 * ring.to(torch::kFloat64));
  CHECK(residual.pow(2).mean().sqrt().item<double>() == Approx(0.08).margin(0.004));
}

TEST_CASE("toy2d: the run's generator alone decides the sets", "[toy2d]") {
  for (const char* name : kNames) {
    INFO(name);
    auto a = draw(name, 11, 500, 300), b = draw(name, 11, 500, 300), c = draw(name, 12, 500, 300);
    CHECK(torch::equal(a.train, b.train));
    CHECK(torch::equal(a.test, b.test));
    CHECK_FALSE(torch::equal(a.train, c.train));
    CHECK_FALSE(torch::equal(a.test.slice(0, 0, 300), a.train.slice(0, 0, 300)));
  }
}

TEST_CASE("toy2d: sizes and dtype are honoured, odd sizes included", "[toy2d]") {
  for (const char* name : kNames) {
    for (int64_t n : {1, 2, 3, 7, 1001}) {
      INFO(name << " n = " << n);
      auto s = draw(name, 5, n, n + 4, torch::kFloat32);
      CHECK(s.train.sizes() == torch::IntArrayRef({n, 2}));
      CHECK(s.test.sizes() == torch::IntArrayRef({n + 4, 2}));
      CHECK(s.train.dtype() == torch::kFloat32);
      CHECK(torch::isfinite(s.train).all().item<bool>());
    }
  }
}

TEST_CASE("toy2d: an unknown set name is refused with the list of choices", "[toy2d]") {
  mfglab::RunContext ctx;
  ctx.generator = at::make_generator<at::CPUGeneratorImpl>(1);
  std::string message;
  try {
    mfglab::test::create<mfglab::Dataset>(host(), "toy2d", nlohmann::json{{"name", "spiral"}}, ctx);
  } catch (const std::exception& e) {
    message = e.what();
  }
  INFO(message);
  REQUIRE_FALSE(message.empty());
  CHECK_THAT(message, Catch::Contains("spiral"));
  for (const char* name : kNames) CHECK_THAT(message, Catch::Contains(name));
  // Sizes below 1 are refused too.
  CHECK_THROWS(mfglab::test::create<mfglab::Dataset>(host(), "toy2d", nlohmann::json{{"train_size", 0}}, ctx));
}
