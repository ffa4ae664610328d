// Statistics for paired comparisons of runs (compare --baseline): Student's t interval,
// the exact Wilcoxon signed-rank test (ties and zeros handled), the exact sign test, and
// Holm's step-down correction. Everything is computed here from first principles (no
// tables): the t quantile by bisection on the regularised incomplete beta function, the
// signed-rank null distribution by counting sign patterns.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mfglab::engine::stats {

// I_x(a, b), the regularised incomplete beta function, for a, b > 0 and 0 <= x <= 1
// (continued fraction; relative accuracy about 1e-14).
double incomplete_beta(double a, double b, double x);
// P(T <= t) for Student's t with `df` > 0 degrees of freedom.
double student_t_cdf(double t, double df);
// The p-quantile of Student's t (0 < p < 1), by bisection on student_t_cdf.
double student_t_quantile(double p, double df);
// P(Z <= z) for a standard normal Z.
double normal_cdf(double z);

// mean ± t_{n-1,(1+level)/2} sd / sqrt(n); lo and hi are NaN for fewer than 2 values.
struct Interval {
  size_t n = 0;
  double mean = 0, sd = 0, lo = 0, hi = 0;
};
Interval t_interval(const std::vector<double>& x, double level = 0.95);

// Ranks 1..n of the values (ascending), ties getting the average of their ranks. Values
// within a relative 1e-9 of the smallest of their run count as tied (a difference of two
// metrics rounds differently from an equal difference of two others).
std::vector<double> average_ranks(const std::vector<double>& values);

// Number of sign patterns of the given ranks (each included in the positive sum or not)
// whose positive rank sum times two equals s, for s = 0 .. 2 * sum(ranks). Ranks must be
// multiples of 1/2 (average ranks are); the counts are exact up to 2^53 patterns.
std::vector<double> signed_rank_distribution(const std::vector<double>& ranks);

// Paired two-sided test of "no difference" on differences d (arm - baseline).
struct PairedTest {
  enum class Method { none, wilcoxon_exact, wilcoxon_normal, sign_exact };
  Method method = Method::none;
  size_t n = 0;       // differences given
  size_t zeros = 0;   // differences exactly 0
  size_t used = 0;    // non-zero differences the test used
  double statistic = 0;  // Wilcoxon: W+ (sum of the ranks of positive differences); sign: positives
  double p = 1;          // two-sided
  double min_p = 1;      // the smallest two-sided p this test could give with these n and ties
  int direction = 0;     // +1: arm tends higher, -1: lower, 0: neither
};
std::string method_name(PairedTest::Method m);

// Largest n for which the signed-rank test uses its exact null distribution.
inline constexpr size_t kExactWilcoxonMax = 25;

// Wilcoxon signed-rank: zero differences dropped, ties given average ranks; exact null
// distribution (of the tied ranks, when there are ties) for up to kExactWilcoxonMax
// non-zero differences, beyond it the normal approximation with tie-corrected variance
// and a continuity correction of 1/2.
PairedTest wilcoxon_signed_rank(const std::vector<double>& d);
// Sign test: the number of positive among the non-zero differences against Binomial(m, 1/2),
// exact two-sided p = min(1, 2 P(X <= min(k, m - k))).
PairedTest sign_test(const std::vector<double>& d);
// The signed-rank test, or the sign test when more than half the differences are zero.
PairedTest paired_test(const std::vector<double>& d);

// Exact two-sided binomial p-value of k successes in m trials with probability 1/2.
double binomial_two_sided(size_t k, size_t m);

// Holm's step-down adjusted p-values, in the order given; NaN entries stay NaN and do not
// count towards the number of hypotheses.
std::vector<double> holm(const std::vector<double>& p);

}  // namespace mfglab::engine::stats
