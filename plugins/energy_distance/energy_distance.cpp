// Energy distance between generated samples X (n points) and reference data Y (m points):
//   E(X, Y) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|
// (Székely & Rizzo), with |.| the Euclidean norm, estimated by
//   2/(nm) Σ_{i,j} |x_i - y_j| - 1/(n(n-1)) Σ_{i≠j} |x_i - x_j| - 1/(m(m-1)) Σ_{i≠j} |y_i - y_j|,
// U-statistics for the within-sample terms. The population value is >= 0 and is 0 only
// when the laws agree; the estimate is unbiased, so it can be slightly negative then.
// Computed in float64, by row blocks so that memory stays bounded for large sets.
#include <mfglab/plugin.h>

#include <algorithm>

namespace {

using torch::Tensor;

constexpr int64_t kBlockEntries = 1 << 22;  // distances held at once (32 MB of doubles)

// Σ_{i,j} |a_i - b_j|, leaving out i = j when a and b are the same set. Each row block's
// distances come from |a|² + |b|² - 2 a.b (one matmul) into one reused buffer: fresh
// large allocations would cost more than the arithmetic.
double distance_sum(const Tensor& a, const Tensor& b, bool same_set) {
  const int64_t rows_per_block = std::max<int64_t>(1, kBlockEntries / std::max<int64_t>(1, b.size(0)));
  const auto b_squared = b.square().sum(1).unsqueeze(0);
  auto buffer = torch::empty({std::min(rows_per_block, a.size(0)), b.size(0)}, a.options());
  double total = 0;
  for (int64_t i = 0; i < a.size(0); i += rows_per_block) {
    auto rows = a.slice(0, i, i + rows_per_block);
    auto d = buffer.narrow(0, 0, rows.size(0));
    torch::add_out(d, rows.square().sum(1, true), b_squared);
    d.addmm_(rows, b.t(), 1, -2).clamp_min_(0).sqrt_();
    // A point's distance to itself is 0 but for rounding; it is not a pair either way.
    if (same_set) d.diagonal(i).zero_();
    total += d.sum().item<double>();
  }
  return total;
}

class EnergyDistance final : public mfglab::Metric {
 public:
  static constexpr const char* kBetter = "lower";  // for comparisons (manifest.h)

  EnergyDistance(const mfglab::Params&, const mfglab::RunContext&) {}

  mfglab::MetricValues evaluate(const mfglab::MetricInput& in) override {
    if (!in.samples.defined() || !in.reference.defined())
      throw mfglab::Error("energy_distance needs both samples and reference data");
    torch::NoGradGuard no_grad;
    auto x = in.samples.detach().to(torch::kFloat64);
    auto y = in.reference.detach().to(x.device(), torch::kFloat64);
    if (x.dim() != 2 || y.dim() != 2 || x.size(1) != y.size(1))
      throw mfglab::Error(
          "energy_distance: samples and reference must be [n, d] and [m, d] with the same d");
    const double n = static_cast<double>(x.size(0)), m = static_cast<double>(y.size(0));
    if (n < 2 || m < 2)
      throw mfglab::Error("energy_distance: the U-statistics need at least 2 points in each set");

    const double xy = distance_sum(x, y, false) / (n * m);
    const double xx = distance_sum(x, x, true) / (n * (n - 1));
    const double yy = distance_sum(y, y, true) / (m * (m - 1));
    return {{"energy_distance", 2 * xy - xx - yy}};
  }
};

}  // namespace

MFGLAB_PLUGIN(EnergyDistance, MFGLAB_KIND_METRIC, "energy_distance", "1.0.0",
              "Energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| between samples X and reference Y "
              "(Euclidean norm; U-statistics for the within-set terms, so it can be slightly "
              "negative when the laws agree)",
              "")
