#include "stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace mfglab::engine::stats {

namespace {

// Continued fraction of the incomplete beta function (modified Lentz's method), valid
// and quickly converging for x < (a + 1) / (a + b + 2).
double beta_continued_fraction(double a, double b, double x) {
  constexpr int kMaxIterations = 10000;
  constexpr double kEps = 1e-16, kTiny = 1e-300;
  const double qab = a + b, qap = a + 1, qam = a - 1;
  double c = 1, d = 1 - qab * x / qap;
  if (std::fabs(d) < kTiny) d = kTiny;
  d = 1 / d;
  double h = d;
  for (int m = 1; m <= kMaxIterations; ++m) {
    const double m2 = 2.0 * m;
    double aa = m * (b - m) * x / ((qam + m2) * (a + m2));
    d = 1 + aa * d;
    if (std::fabs(d) < kTiny) d = kTiny;
    c = 1 + aa / c;
    if (std::fabs(c) < kTiny) c = kTiny;
    d = 1 / d;
    h *= d * c;
    aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
    d = 1 + aa * d;
    if (std::fabs(d) < kTiny) d = kTiny;
    c = 1 + aa / c;
    if (std::fabs(c) < kTiny) c = kTiny;
    d = 1 / d;
    const double step = d * c;
    h *= step;
    if (std::fabs(step - 1) < kEps) break;
  }
  return h;
}

// P(T > t) for t >= 0: I_{df/(df+t^2)}(df/2, 1/2) / 2, without the cancellation of 1 - cdf.
double student_t_upper_tail(double t, double df) {
  return 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t));
}

}  // namespace

double incomplete_beta(double a, double b, double x) {
  if (!(a > 0) || !(b > 0) || std::isnan(x)) return NAN;
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  // x^a (1-x)^b / (a B(a, b)) times the continued fraction, on the side where it converges.
  const double log_front = std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) + b * std::log1p(-x);
  const double front = std::exp(log_front);
  if (x < (a + 1) / (a + b + 2)) return front * beta_continued_fraction(a, b, x) / a;
  return 1 - front * beta_continued_fraction(b, a, 1 - x) / b;
}

double student_t_cdf(double t, double df) {
  if (std::isnan(t) || !(df > 0)) return NAN;
  if (std::isinf(t)) return t > 0 ? 1 : 0;
  const double tail = student_t_upper_tail(std::fabs(t), df);
  return t >= 0 ? 1 - tail : tail;
}

double student_t_quantile(double p, double df) {
  if (!(p > 0) || !(p < 1) || !(df > 0)) return NAN;
  if (p == 0.5) return 0;
  // By symmetry, the upper quantile of the tail probability q = min(p, 1 - p).
  const double q = p < 0.5 ? p : 1 - p;
  double lo = 0, hi = 1;
  while (student_t_upper_tail(hi, df) > q) {
    lo = hi;
    hi *= 2;
    if (hi > 1e300) break;
  }
  for (int i = 0; i < 2000 && hi - lo > 1e-15 * hi; ++i) {
    const double mid = 0.5 * (lo + hi);
    if (student_t_upper_tail(mid, df) > q) lo = mid;
    else hi = mid;
  }
  const double t = 0.5 * (lo + hi);
  return p < 0.5 ? -t : t;
}

double normal_cdf(double z) { return 0.5 * std::erfc(-z / std::sqrt(2.0)); }

Interval t_interval(const std::vector<double>& x, double level) {
  Interval out;
  out.n = x.size();
  if (x.empty()) {
    out.mean = out.sd = out.lo = out.hi = NAN;
    return out;
  }
  out.mean = std::accumulate(x.begin(), x.end(), 0.0) / x.size();
  if (x.size() < 2) {
    out.sd = out.lo = out.hi = NAN;
    return out;
  }
  double ss = 0;
  for (double v : x) ss += (v - out.mean) * (v - out.mean);
  out.sd = std::sqrt(ss / (x.size() - 1));
  const double t = student_t_quantile(0.5 + level / 2, static_cast<double>(x.size() - 1));
  const double half = t * out.sd / std::sqrt(static_cast<double>(x.size()));
  out.lo = out.mean - half;
  out.hi = out.mean + half;
  return out;
}

std::vector<double> average_ranks(const std::vector<double>& values) {
  const size_t n = values.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return values[a] < values[b]; });
  std::vector<double> ranks(n);
  for (size_t start = 0; start < n;) {
    const double first = values[order[start]];
    size_t end = start + 1;
    while (end < n) {
      const double v = values[order[end]];
      if (!(v == first || v - first <= 1e-9 * std::max(std::fabs(first), std::fabs(v)))) break;
      ++end;
    }
    // Ranks start+1 .. end share their average.
    const double rank = 0.5 * static_cast<double>(start + 1 + end);
    for (size_t i = start; i < end; ++i) ranks[order[i]] = rank;
    start = end;
  }
  return ranks;
}

std::vector<double> signed_rank_distribution(const std::vector<double>& ranks) {
  std::vector<long long> doubled;
  long long total = 0;
  for (double r : ranks) {
    doubled.push_back(std::llround(2 * r));
    total += doubled.back();
  }
  // counts[s]: sign patterns of the ranks seen so far whose doubled positive sum is s.
  std::vector<double> counts(static_cast<size_t>(total) + 1, 0.0);
  counts[0] = 1;
  long long reach = 0;
  for (long long r : doubled) {
    reach += r;
    for (long long s = reach; s >= r; --s) counts[s] += counts[s - r];
  }
  return counts;
}

std::string method_name(PairedTest::Method m) {
  switch (m) {
    case PairedTest::Method::wilcoxon_exact: return "wilcoxon_exact";
    case PairedTest::Method::wilcoxon_normal: return "wilcoxon_normal";
    case PairedTest::Method::sign_exact: return "sign_exact";
    case PairedTest::Method::none: break;
  }
  return "none";
}

PairedTest wilcoxon_signed_rank(const std::vector<double>& d) {
  PairedTest out;
  out.method = PairedTest::Method::wilcoxon_exact;
  std::vector<double> magnitude;
  std::vector<bool> positive;
  for (double v : d) {
    if (std::isnan(v)) continue;
    ++out.n;
    if (v == 0) { ++out.zeros; continue; }
    magnitude.push_back(std::fabs(v));
    positive.push_back(v > 0);
  }
  const size_t m = magnitude.size();
  out.used = m;
  if (m == 0) return out;  // nothing to test: p = 1
  const auto ranks = average_ranks(magnitude);
  double w_plus = 0, total = 0;
  for (size_t i = 0; i < m; ++i) {
    total += ranks[i];
    if (positive[i]) w_plus += ranks[i];
  }
  out.statistic = w_plus;
  const double w_minus = total - w_plus;
  out.direction = w_plus > w_minus ? 1 : (w_plus < w_minus ? -1 : 0);
  if (m <= kExactWilcoxonMax) {
    // P(|W - total/2| >= |w - total/2|) under the 2^m equally likely sign patterns, in
    // doubled rank units (average ranks are multiples of 1/2).
    const auto counts = signed_rank_distribution(ranks);
    const long long t2 = static_cast<long long>(counts.size()) - 1;
    const long long s = std::llround(2 * w_plus);
    const long long dev = std::llabs(2 * s - t2);
    double tail = 0;
    for (long long k = 0; k <= t2; ++k)
      if (std::llabs(2 * k - t2) >= dev) tail += counts[k];
    const double patterns = std::ldexp(1.0, static_cast<int>(m));
    out.p = std::min(1.0, tail / patterns);
    out.min_p = std::min(1.0, (counts.front() + counts.back()) / patterns);
    return out;
  }
  out.method = PairedTest::Method::wilcoxon_normal;
  const double mm = static_cast<double>(m);
  const double mean = mm * (mm + 1) / 4;
  // Tie correction: the variance of a group of t tied ranks shrinks by (t^3 - t) / 48.
  std::vector<double> sorted = ranks;
  std::sort(sorted.begin(), sorted.end());
  double ties = 0;
  for (size_t i = 0; i < m;) {
    size_t j = i;
    while (j < m && sorted[j] == sorted[i]) ++j;
    const double t = static_cast<double>(j - i);
    ties += t * t * t - t;
    i = j;
  }
  const double sd = std::sqrt(mm * (mm + 1) * (2 * mm + 1) / 24 - ties / 48);
  double z = w_plus - mean;
  z = (z - (z > 0 ? 0.5 : (z < 0 ? -0.5 : 0.0))) / sd;
  out.p = std::min(1.0, 2 * normal_cdf(-std::fabs(z)));
  out.min_p = std::min(1.0, 2 * normal_cdf(-(mean - 0.5) / sd));
  return out;
}

double binomial_two_sided(size_t k, size_t m) {
  if (m == 0) return 1;
  const size_t j = std::min(k, m - k);
  const double mm = static_cast<double>(m);
  double tail = 0;
  for (size_t i = 0; i <= j; ++i) {
    const double ii = static_cast<double>(i);
    tail += std::exp(std::lgamma(mm + 1) - std::lgamma(ii + 1) - std::lgamma(mm - ii + 1) - mm * std::log(2.0));
  }
  return std::min(1.0, 2 * tail);
}

PairedTest sign_test(const std::vector<double>& d) {
  PairedTest out;
  out.method = PairedTest::Method::sign_exact;
  size_t pos = 0, neg = 0;
  for (double v : d) {
    if (std::isnan(v)) continue;
    ++out.n;
    if (v == 0) ++out.zeros;
    else if (v > 0) ++pos;
    else ++neg;
  }
  out.used = pos + neg;
  out.statistic = static_cast<double>(pos);
  out.direction = pos > neg ? 1 : (pos < neg ? -1 : 0);
  out.p = binomial_two_sided(pos, out.used);
  out.min_p = out.used == 0 ? 1.0 : std::min(1.0, std::ldexp(1.0, 1 - static_cast<int>(out.used)));
  return out;
}

PairedTest paired_test(const std::vector<double>& d) {
  size_t n = 0, zeros = 0;
  for (double v : d) {
    if (std::isnan(v)) continue;
    ++n;
    if (v == 0) ++zeros;
  }
  if (n == 0) {  // no pairs: nothing to test
    PairedTest none;
    none.p = none.min_p = NAN;
    return none;
  }
  return 2 * zeros > n ? sign_test(d) : wilcoxon_signed_rank(d);
}

std::vector<double> holm(const std::vector<double>& p) {
  std::vector<double> out(p.size(), NAN);
  std::vector<size_t> order;
  for (size_t i = 0; i < p.size(); ++i)
    if (!std::isnan(p[i])) order.push_back(i);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] < p[b]; });
  const size_t m = order.size();
  double running = 0;
  for (size_t i = 0; i < m; ++i) {
    running = std::max(running, std::min(1.0, static_cast<double>(m - i) * p[order[i]]));
    out[order[i]] = running;
  }
  return out;
}

}  // namespace mfglab::engine::stats
