// Statistics of compare --baseline (engine/src/stats.h) against values computed another
// way: closed forms of the t distribution, published quantiles and signed-rank tables,
// brute-force enumeration of sign patterns, binomial sums and a hand-worked Holm example.
#include <cmath>
#include <cstdint>
#include <vector>

#include <catch2/catch.hpp>

#include "stats.h"

using namespace mfglab::engine::stats;

namespace {

// Two-sided signed-rank p-value by listing all 2^n sign patterns of the given ranks: the
// share of patterns whose positive rank sum is at least as far from its mean as `w`.
double enumerated_p(const std::vector<double>& ranks, double w) {
  const size_t n = ranks.size();
  double total = 0;
  for (double r : ranks) total += r;
  const double observed = std::fabs(w - total / 2);
  uint64_t extreme = 0;
  for (uint64_t mask = 0; mask < (uint64_t{1} << n); ++mask) {
    double sum = 0;
    for (size_t i = 0; i < n; ++i)
      if (mask >> i & 1) sum += ranks[i];
    if (std::fabs(sum - total / 2) >= observed - 1e-9) ++extreme;
  }
  return static_cast<double>(extreme) / static_cast<double>(uint64_t{1} << n);
}

// Differences 1..n in magnitude, positive exactly for the ranks in `positive`.
std::vector<double> differences_with_positive_ranks(size_t n, const std::vector<size_t>& positive) {
  std::vector<double> d;
  for (size_t i = 1; i <= n; ++i) {
    bool pos = false;
    for (size_t p : positive) pos = pos || p == i;
    d.push_back(pos ? static_cast<double>(i) : -static_cast<double>(i));
  }
  return d;
}

// C(m, k) by Pascal's triangle.
double choose(size_t m, size_t k) {
  std::vector<double> row = {1};
  for (size_t i = 1; i <= m; ++i) {
    std::vector<double> next(i + 1, 1);
    for (size_t j = 1; j < i; ++j) next[j] = row[j - 1] + row[j];
    row = next;
  }
  return row[k];
}

}  // namespace

TEST_CASE("the regularised incomplete beta function against closed forms", "[stats]") {
  for (double x : {0.01, 0.2, 0.5, 0.77, 0.999}) {
    INFO("x = " << x);
    CHECK(incomplete_beta(1, 1, x) == Approx(x).epsilon(1e-13));
    CHECK(incomplete_beta(3, 1, x) == Approx(std::pow(x, 3)).epsilon(1e-12));
    CHECK(incomplete_beta(1, 4, x) == Approx(1 - std::pow(1 - x, 4)).epsilon(1e-12));
    // I_x(1/2, 1/2) = (2 / pi) asin(sqrt(x)).
    CHECK(incomplete_beta(0.5, 0.5, x) == Approx(2 / M_PI * std::asin(std::sqrt(x))).epsilon(1e-12));
  }
  CHECK(incomplete_beta(7.5, 7.5, 0.5) == Approx(0.5).epsilon(1e-14));
  CHECK(incomplete_beta(2, 3, 0) == 0);
  CHECK(incomplete_beta(2, 3, 1) == 1);
}

TEST_CASE("Student's t distribution and its quantiles", "[stats]") {
  // Published quantiles (t_{df, 0.975}).
  CHECK(student_t_quantile(0.975, 4) == Approx(2.776445).margin(5e-7));
  CHECK(student_t_quantile(0.975, 9) == Approx(2.262157).margin(5e-7));
  CHECK(student_t_quantile(0.975, 30) == Approx(2.042272).margin(5e-7));
  // Closed forms: df = 1 is Cauchy, t = tan(pi (p - 1/2)); df = 2: t = (2p - 1) / sqrt(2 p (1 - p)).
  for (double p : {0.6, 0.9, 0.975, 0.995}) {
    INFO("p = " << p);
    CHECK(student_t_quantile(p, 1) == Approx(std::tan(M_PI * (p - 0.5))).epsilon(1e-11));
    CHECK(student_t_quantile(p, 2) == Approx((2 * p - 1) / std::sqrt(2 * p * (1 - p))).epsilon(1e-11));
    CHECK(student_t_quantile(1 - p, 5) == Approx(-student_t_quantile(p, 5)).epsilon(1e-12));
    // Cauchy cdf: 1/2 + atan(t) / pi.
    CHECK(student_t_cdf(p * 3, 1) == Approx(0.5 + std::atan(p * 3) / M_PI).epsilon(1e-12));
  }
  // Many degrees of freedom: close to the normal quantile 1.959964.
  CHECK(student_t_quantile(0.975, 1000) == Approx(1.962339).margin(1e-6));
  CHECK(normal_cdf(1.959963984540054) == Approx(0.975).epsilon(1e-14));
  CHECK(student_t_quantile(0.5, 3) == 0);
  CHECK(std::isnan(student_t_quantile(1, 3)));
}

TEST_CASE("the t interval of a mean", "[stats]") {
  // 1..5: mean 3, sd sqrt(2.5), half width t_{4,0.975} sqrt(2.5) / sqrt(5) = 2.776445 / sqrt(2).
  auto iv = t_interval({1, 2, 3, 4, 5});
  CHECK(iv.n == 5);
  CHECK(iv.mean == Approx(3));
  CHECK(iv.sd == Approx(std::sqrt(2.5)));
  CHECK(iv.lo == Approx(3 - 2.776445 / std::sqrt(2.0)).margin(1e-6));
  CHECK(iv.hi == Approx(3 + 2.776445 / std::sqrt(2.0)).margin(1e-6));
  // Ten values: t_{9,0.975} = 2.262157.
  std::vector<double> ten = {0.1, -0.3, 0.25, 0.4, 0.0, 0.2, -0.1, 0.35, 0.15, 0.05};
  double mean = 0, ss = 0;
  for (double v : ten) mean += v / 10;
  for (double v : ten) ss += (v - mean) * (v - mean);
  const double half = 2.262157 * std::sqrt(ss / 9) / std::sqrt(10.0);
  auto iv10 = t_interval(ten);
  CHECK(iv10.lo == Approx(mean - half).margin(1e-6));
  CHECK(iv10.hi == Approx(mean + half).margin(1e-6));
  // One value: a mean and no interval.
  auto one = t_interval({2.5});
  CHECK(one.mean == 2.5);
  CHECK(std::isnan(one.lo));
  CHECK(std::isnan(t_interval({}).mean));
}

TEST_CASE("average ranks of tied values", "[stats]") {
  CHECK(average_ranks({3, 1, 4, 1, 5}) == std::vector<double>{3, 1.5, 4, 1.5, 5});
  CHECK(average_ranks({2, 2, 2}) == std::vector<double>{2, 2, 2});
  // Differences that are equal in decimal but round differently are tied.
  CHECK(average_ranks({0.3 - 0.1, 0.2, 0.5}) == std::vector<double>{1.5, 1.5, 3});
}

TEST_CASE("the exact signed-rank distribution equals an enumeration of sign patterns", "[stats][wilcoxon]") {
  for (size_t n : {1, 2, 5, 6, 8, 10, 12}) {
    std::vector<double> ranks;
    for (size_t i = 1; i <= n; ++i) ranks.push_back(static_cast<double>(i));
    const auto counts = signed_rank_distribution(ranks);
    // Count by enumeration, W+ in doubled units.
    std::vector<double> expected(n * (n + 1) + 1, 0);
    for (uint64_t mask = 0; mask < (uint64_t{1} << n); ++mask) {
      size_t sum = 0;
      for (size_t i = 0; i < n; ++i)
        if (mask >> i & 1) sum += 2 * (i + 1);
      expected[sum] += 1;
    }
    INFO("n = " << n);
    CHECK(counts == expected);
  }
  // Tied ranks: the distribution of the tied ranks themselves.
  const std::vector<double> tied = {1.5, 1.5, 3, 5, 5, 5, 7.5, 7.5};
  const auto counts = signed_rank_distribution(tied);
  double all = 0;
  for (double c : counts) all += c;
  CHECK(all == 256);
  CHECK(counts[3] == 2);   // W+ = 1.5: either of the two ranks 1.5
  CHECK(counts[6] == 2);   // W+ = 3: both 1.5s, or the 3 alone
  CHECK(counts[1] == 0);   // 0.5 is no sum of these ranks
}

TEST_CASE("signed-rank p-values against published tables and examples", "[stats][wilcoxon]") {
  SECTION("textbook critical values: two-sided 0.05 rejects at W <= 0 (n = 6), 2 (n = 7), 3 (n = 8), 5 (n = 9), 8 (n = 10)") {
    const std::vector<std::pair<size_t, size_t>> critical = {{6, 0}, {7, 2}, {8, 3}, {9, 5}, {10, 8}};
    for (auto [n, w] : critical) {
      INFO("n = " << n << ", W = " << w);
      // Positive ranks summing to w (and w + 1): {w} or {1, w - 1} patterns.
      auto with_sum = [&](size_t s) {
        std::vector<size_t> pos;
        if (s == 0) return pos;
        if (s <= n) return std::vector<size_t>{s};
        return std::vector<size_t>{s - n, n};
      };
      CHECK(wilcoxon_signed_rank(differences_with_positive_ranks(n, with_sum(w))).p <= 0.05);
      CHECK(wilcoxon_signed_rank(differences_with_positive_ranks(n, with_sum(w + 1))).p > 0.05);
    }
  }
  SECTION("n = 8, W = 3: p = 2 x 5 / 256 = 0.039") {
    auto t = wilcoxon_signed_rank(differences_with_positive_ranks(8, {3}));
    CHECK(t.method == PairedTest::Method::wilcoxon_exact);
    CHECK(t.statistic == 3);
    CHECK(t.p == Approx(10.0 / 256).epsilon(1e-14));
    CHECK(t.direction == -1);
  }
  SECTION("n = 5: the smallest two-sided p is 2 / 32 = 0.0625, so 5 pairs never reach 0.05") {
    auto t = wilcoxon_signed_rank({1, 2, 3, 4, 5});
    CHECK(t.statistic == 15);
    CHECK(t.p == Approx(0.0625).epsilon(1e-14));
    CHECK(t.min_p == Approx(0.0625).epsilon(1e-14));
    CHECK(t.direction == 1);
    // W+ = 1 (rank 1 positive): P(W <= 1) = 2/32, two-sided 0.125.
    CHECK(wilcoxon_signed_rank({1, -2, -3, -4, -5}).p == Approx(0.125).epsilon(1e-14));
  }
  SECTION("n = 6: W = 2 gives 2 x 3/64") {
    CHECK(wilcoxon_signed_rank(differences_with_positive_ranks(6, {2})).p == Approx(6.0 / 64).epsilon(1e-14));
  }
  SECTION("Hollander & Wolfe's depression data (R's wilcox.test example): V = 40, two-sided p = 0.0390625") {
    const std::vector<double> x = {1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30};
    const std::vector<double> y = {0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29};
    std::vector<double> d;
    for (size_t i = 0; i < x.size(); ++i) d.push_back(x[i] - y[i]);
    auto t = wilcoxon_signed_rank(d);
    CHECK(t.statistic == 40);
    CHECK(t.p == Approx(0.0390625).epsilon(1e-12));
  }
  SECTION("zeros are dropped") {
    auto t = wilcoxon_signed_rank({0, 1, 2, 3, 4, 5, 0});
    CHECK(t.n == 7);
    CHECK(t.zeros == 2);
    CHECK(t.used == 5);
    CHECK(t.p == Approx(0.0625));
  }
  SECTION("ties: the exact distribution of the tied ranks, checked by enumeration") {
    // |d| = 1, 1, 2, 3, 3, 3, 4, 4: ranks 1.5, 1.5, 3, 5, 5, 5, 7.5, 7.5.
    const std::vector<double> d = {1, -1, 2, 3, 3, -3, 4, 4};
    auto t = wilcoxon_signed_rank(d);
    CHECK(t.statistic == 1.5 + 3 + 5 + 5 + 7.5 + 7.5);
    CHECK(t.p == Approx(enumerated_p({1.5, 1.5, 3, 5, 5, 5, 7.5, 7.5}, t.statistic)).epsilon(1e-14));
    const std::vector<double> d2 = {0.5, 0.5, 0.5, -0.5, 2, 2, -7, 9, 9, 9, 9, -1};
    auto t2 = wilcoxon_signed_rank(d2);
    CHECK(t2.p == Approx(enumerated_p(average_ranks({0.5, 0.5, 0.5, 0.5, 2, 2, 7, 9, 9, 9, 9, 1}), t2.statistic))
                      .epsilon(1e-14));
  }
  SECTION("every p-value of n = 10 without ties equals the enumeration") {
    std::vector<double> ranks;
    for (int i = 1; i <= 10; ++i) ranks.push_back(i);
    for (uint64_t mask = 0; mask < 1024; mask += 37) {
      std::vector<double> d;
      double w = 0;
      for (int i = 0; i < 10; ++i) {
        const bool pos = mask >> i & 1;
        d.push_back(pos ? i + 1 : -(i + 1));
        if (pos) w += i + 1;
      }
      INFO("mask " << mask);
      CHECK(wilcoxon_signed_rank(d).p == Approx(enumerated_p(ranks, w)).epsilon(1e-14));
    }
  }
  SECTION("n = 25 exact, n = 26 by the normal approximation") {
    std::vector<double> d25, d26;
    for (int i = 1; i <= 25; ++i) d25.push_back(i % 3 == 0 ? -i : i);
    for (int i = 1; i <= 26; ++i) d26.push_back(i % 3 == 0 ? -i : i);
    CHECK(wilcoxon_signed_rank(d25).method == PairedTest::Method::wilcoxon_exact);
    auto t = wilcoxon_signed_rank(d26);
    CHECK(t.method == PairedTest::Method::wilcoxon_normal);
    // W+ = 351 - (3 + 6 + ... + 24) = 351 - 108 = 243; mean 175.5, variance 26 27 53 / 24.
    CHECK(t.statistic == 243);
    const double z = (243 - 175.5 - 0.5) / std::sqrt(26.0 * 27 * 53 / 24);
    CHECK(t.p == Approx(std::erfc(z / std::sqrt(2.0))).epsilon(1e-12));
    // The exact p of n = 25 is close to its normal approximation.
    auto e = wilcoxon_signed_rank(d25);
    const double w25 = 325 - (3 + 6 + 9 + 12 + 15 + 18 + 21 + 24);
    CHECK(e.statistic == w25);
    const double z25 = (w25 - 162.5 - 0.5) / std::sqrt(25.0 * 26 * 51 / 24);
    CHECK(e.p == Approx(std::erfc(z25 / std::sqrt(2.0))).margin(0.005));
  }
}

TEST_CASE("the sign test is an exact binomial test", "[stats][sign]") {
  CHECK(binomial_two_sided(0, 5) == Approx(2.0 / 32));
  CHECK(binomial_two_sided(5, 5) == Approx(2.0 / 32));
  CHECK(binomial_two_sided(1, 10) == Approx(2 * (1 + 10) / 1024.0).epsilon(1e-13));
  CHECK(binomial_two_sided(5, 10) == 1);
  CHECK(binomial_two_sided(0, 0) == 1);
  for (size_t m : {7, 12, 20}) {
    for (size_t k = 0; k <= m; ++k) {
      double tail = 0;
      for (size_t i = 0; i <= std::min(k, m - k); ++i) tail += choose(m, i);
      INFO("k = " << k << " of m = " << m);
      CHECK(binomial_two_sided(k, m) == Approx(std::min(1.0, 2 * tail / std::ldexp(1.0, static_cast<int>(m)))).epsilon(1e-12));
    }
  }
}

TEST_CASE("the paired test is the sign test when more than half the differences are zero", "[stats]") {
  auto t = paired_test({0, 0, 0, 0, 1, 2, 3});
  CHECK(t.method == PairedTest::Method::sign_exact);
  CHECK(t.used == 3);
  CHECK(t.statistic == 3);
  CHECK(t.p == Approx(0.25));
  CHECK(t.min_p == Approx(0.25));
  // Exactly half: the signed-rank test on the non-zero ones.
  auto w = paired_test({0, 0, 0, 1, 2, 3});
  CHECK(w.method == PairedTest::Method::wilcoxon_exact);
  CHECK(w.p == Approx(0.25));
  // All zero: no evidence of a difference.
  auto z = paired_test({0, 0, 0});
  CHECK(z.p == 1);
  CHECK(z.direction == 0);
  // No pairs: nothing tested.
  CHECK(paired_test({}).method == PairedTest::Method::none);
  CHECK(std::isnan(paired_test({}).p));
}

TEST_CASE("Holm's step-down adjustment on a hand-worked example", "[stats][holm]") {
  // Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> max(0.06, 0.04).
  auto adj = holm({0.01, 0.04, 0.03, 0.005});
  REQUIRE(adj.size() == 4);
  CHECK(adj[0] == Approx(0.03));
  CHECK(adj[1] == Approx(0.06));
  CHECK(adj[2] == Approx(0.06));
  CHECK(adj[3] == Approx(0.02));
  // NaN is no hypothesis: m = 2.
  auto with_nan = holm({0.01, NAN, 0.04});
  CHECK(with_nan[0] == Approx(0.02));
  CHECK(std::isnan(with_nan[1]));
  CHECK(with_nan[2] == Approx(0.04));
  // Capped at 1, monotone.
  auto big = holm({0.5, 0.6});
  CHECK(big[0] == 1);
  CHECK(big[1] == 1);
  CHECK(holm({0.03}) == std::vector<double>{0.03});
}
