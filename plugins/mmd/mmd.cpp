// Squared maximum mean discrepancy between generated samples X (n points) and reference
// data Y (m points), unbiased U-statistic estimate:
//   MMD² = 1/(n(n-1)) Σ_{i≠j} k(x_i,x_j) + 1/(m(m-1)) Σ_{i≠j} k(y_i,y_j) - 2/(nm) Σ_{i,j} k(x_i,y_j)
// with the Gaussian kernel k(x,y) = Σ_h exp(-|x-y|² / (2h²)) (one term per bandwidth).
// Unbiased means it can be slightly negative when the two distributions agree.
// Computed in float64, by row blocks so that memory stays bounded for large sets.
#include <mfglab/evaluation.h>
#include <mfglab/plugin.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <sstream>
#include <vector>

namespace {

using torch::Tensor;

constexpr int64_t kBlock = 512;  // rows per block: a block holds kBlock x (other set) doubles

const auto kBandwidth =
    mfglab::numbers_param("bandwidth", {1.0}, "kernel bandwidth h, or a list whose kernels are summed").above(0);
const auto kMedianHeuristic = mfglab::bool_param(
    "median_heuristic", false,
    "use h = median pairwise distance of held-out points: in a run, those of the experiment's calibration seed "
    "(eval.calibration_seed), the same for every run; on sample files, the reference's (bandwidth is then ignored)");

// Squared distances between the rows of a [B, d] and b [M, d], written into out [B, M];
// b_sq holds |b_j|², [1, M]. One matmul; in float64 the cancellation in
// |a|² + |b|² - 2 a.b is negligible for data of moderate scale.
void squared_distances(Tensor out, const Tensor& a, const Tensor& b, const Tensor& b_sq) {
  torch::add_out(out, a.pow(2).sum(1, true), b_sq);
  out.addmm_(a, b.t(), 1, -2).clamp_min_(0);
}

// Σ_{i,j} k(a_i, b_j), where k sums exp(-c |a-b|²) over c in coefficients. When a and b are
// the same set, the diagonal (i = j) is left out. Two block buffers are reused throughout:
// large allocations are costly (each is fresh pages from the system).
double kernel_sum(const Tensor& a, const Tensor& b, const std::vector<double>& coefficients,
                  bool same_set) {
  const auto b_sq = b.pow(2).sum(1).unsqueeze(0);
  auto d2_buffer = torch::empty({std::min(kBlock, a.size(0)), b.size(0)}, a.options());
  auto k_buffer = torch::empty_like(d2_buffer);
  double total = 0;
  for (int64_t i = 0; i < a.size(0); i += kBlock) {
    auto rows = a.slice(0, i, i + kBlock);
    auto d2 = d2_buffer.narrow(0, 0, rows.size(0)), k = k_buffer.narrow(0, 0, rows.size(0));
    squared_distances(d2, rows, b, b_sq);
    for (double c : coefficients) {
      k.copy_(d2).mul_(-c).exp_();
      if (same_set) k.diagonal(i).zero_();  // entries (r, i + r): a point with itself
      total += k.sum().item<double>();
    }
  }
  return total;
}

// Calls visit(d) with the distances |z_i - z_j|, i < j, one row block at a time (1-D).
void for_each_pair_block(const Tensor& z, const std::function<void(const Tensor&)>& visit) {
  const int64_t N = z.size(0);
  for (int64_t i = 0; i < N; i += kBlock) {
    auto rows = z.slice(0, i, i + kBlock), columns = z.slice(0, i);
    auto d = torch::empty({rows.size(0), columns.size(0)}, z.options());
    squared_distances(d, rows, columns, columns.pow(2).sum(1).unsqueeze(0));
    d.sqrt_();
    // Keep the strict upper triangle: column c of this block is point i + c.
    auto upper = torch::ones_like(d, torch::kBool).triu(1);
    visit(d.masked_select(upper));
  }
}

// Median of the N(N-1)/2 pairwise distances (the mean of the two middle values when their
// number is even), exact without holding them all: a histogram pass finds the bins of the
// middle ranks, a second pass collects only the distances in those bins.
double median_pairwise_distance(const Tensor& z) {
  const int64_t N = z.size(0);
  const int64_t pairs = N * (N - 1) / 2;
  const int64_t lo_rank = (pairs - 1) / 2, hi_rank = pairs / 2;  // 0-based middle ranks
  // Every distance is at most 2 max_i |z_i - z_0| (triangle inequality through z_0).
  const double top = 2 * (z - z[0]).norm(2, 1).max().item<double>();
  if (top == 0) return 0;
  constexpr int64_t bins = 1 << 16;
  // Both passes must bin identically, so binning lives in one place.
  auto bin_of = [&](const Tensor& d) {
    return (d * (bins / top)).floor().clamp(0, bins - 1).to(torch::kLong);
  };
  auto counts = torch::zeros({bins}, torch::kLong);
  for_each_pair_block(z, [&](const Tensor& d) {
    counts += torch::bincount(bin_of(d), {}, bins).to(counts.device());
  });
  counts = counts.cpu();
  auto count = counts.accessor<int64_t, 1>();
  int64_t below = 0, b_lo = 0;  // below: number of distances in bins before b_lo
  while (below + count[b_lo] <= lo_rank) below += count[b_lo++];
  int64_t b_hi = b_lo, upto = below + count[b_lo];
  while (upto <= hi_rank) upto += count[++b_hi];

  std::vector<double> middle;
  for_each_pair_block(z, [&](const Tensor& d) {
    auto b = bin_of(d);
    auto kept = d.masked_select((b >= b_lo) & (b <= b_hi)).cpu().contiguous();
    middle.insert(middle.end(), kept.data_ptr<double>(), kept.data_ptr<double>() + kept.numel());
  });
  std::sort(middle.begin(), middle.end());
  return 0.5 * (middle.at(lo_rank - below) + middle.at(hi_rank - below));
}

class Mmd final : public mfglab::Metric, public mfglab::MetricCalibration {
 public:
  static constexpr const char* kBetter = "lower";  // for comparisons (manifest.h)

  Mmd(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : ctx_(ctx), bandwidths_(params[kBandwidth]), median_heuristic_(params[kMedianHeuristic]) {
    if (bandwidths_.empty()) throw mfglab::Error("bandwidth: give at least one value");
    for (double h : bandwidths_)
      if (!(h > 0)) throw mfglab::Error("bandwidth: every value must be > 0");
  }

  mfglab::MetricValues evaluate(const mfglab::MetricInput& in) override {
    if (!in.samples.defined() || !in.reference.defined())
      throw mfglab::Error("mmd needs both samples and reference data");
    auto x = in.samples.detach().to(torch::kFloat64);
    auto y = in.reference.detach().to(x.device(), torch::kFloat64);
    if (x.dim() != 2 || y.dim() != 2 || x.size(1) != y.size(1))
      throw mfglab::Error("mmd: samples and reference must be [n, d] and [m, d] with the same d");
    const int64_t n = x.size(0), m = y.size(0);
    if (n < 2 || m < 2) throw mfglab::Error("mmd: the unbiased estimate needs at least 2 points in each set");

    std::vector<double> hs = bandwidths_;
    if (median_heuristic_ && calibrated_ > 0) {
      hs = {calibrated_};  // the experiment's kernel (calibrate)
    } else if (median_heuristic_) {
      // Not calibrated (sample files): from this reference set alone.
      const double h = median_bandwidth(y);
      hs = {h};
      ctx_.info("mmd: median-heuristic bandwidth " + describe(h, m));
    }
    std::vector<double> coefficients;  // 1 / (2h²)
    for (double h : hs) coefficients.push_back(1.0 / (2 * h * h));

    const double kxx = kernel_sum(x, x, coefficients, true) / (double(n) * (n - 1));
    const double kyy = kernel_sum(y, y, coefficients, true) / (double(m) * (m - 1));
    const double kxy = kernel_sum(x, y, coefficients, false) / (double(n) * m);
    return {{"mmd", kxx + kyy - 2 * kxy}};
  }

  // The engine calls this once per run with the experiment's calibration set, so that every
  // run of a study is measured with the same kernel.
  std::string calibrate(const Tensor& calibration_set) override {
    const auto y = calibration_set.detach().to(torch::kFloat64);
    if (y.dim() != 2 || y.size(0) < 2) throw mfglab::Error("mmd: the calibration set needs at least 2 points");
    calibrated_ = median_bandwidth(y);
    return "median-heuristic bandwidth " + describe(calibrated_, y.size(0));
  }

  // Only the median heuristic takes a setting from data; fixed bandwidths need no calibration
  // set (and the engine then builds none).
  void* capability(const char* id) override {
    if (median_heuristic_ && std::strcmp(id, mfglab::kMetricCalibration) == 0)
      return static_cast<mfglab::MetricCalibration*>(this);
    return nullptr;
  }

 private:
  static double median_bandwidth(const Tensor& y) {
    const double h = median_pairwise_distance(y);
    if (!(h > 0)) throw mfglab::Error("mmd: the median pairwise distance is 0; give a bandwidth");
    return h;
  }
  static std::string describe(double h, int64_t points) {
    std::ostringstream line;  // full precision: the kernel the values were measured with
    line.precision(17);
    line << "h = " << h << " (from " << points << " held-out points)";
    return line.str();
  }

  const mfglab::RunContext& ctx_;  // outlives the metric
  std::vector<double> bandwidths_;
  bool median_heuristic_;
  double calibrated_ = 0;  // > 0 once calibrate() has fixed the bandwidth
};

}  // namespace

MFGLAB_PLUGIN(Mmd, MFGLAB_KIND_METRIC, "mmd", "1.2.0",
              "Unbiased estimate of MMD^2 between samples and reference with the Gaussian kernel "
              "k(x,y) = sum_h exp(-|x-y|^2/(2h^2))",
              "", kBandwidth, kMedianHeuristic)
