// Memorization and coverage of generated samples, by nearest-neighbour distances
// (Euclidean, float64):
//
//   memorized_fraction: share of samples x whose nearest training point t(x) is closer
//     than `fraction` times t(x)'s own nearest-neighbour distance within the training set,
//       |x - t(x)| < fraction * min_{t' != t(x)} |t(x) - t'|.
//     A copy of a training point counts (unless that point has an exact duplicate in the
//     training set, which makes its spacing 0). Fresh samples from the data law count too,
//     at a baseline: for a smooth density in d dimensions their expected share is about
//     fraction^d (1/9 in 2-D at the default fraction, negligible in high dimension).
//   precision, recall (Kynkäänniemi et al. 2019, "Improved precision and recall"): with
//     r_k(p) the distance from p to its k-th nearest neighbour within its own set,
//       precision = share of samples x with |x - y| <= r_k(y) for some reference point y,
//       recall    = share of reference points y with |y - x| <= r_k(x) for some sample x.
//
// Each set (samples, training, reference) larger than max_points is replaced by a random
// subset of max_points rows drawn from the run's generator (so the values are
// deterministic for a seed); distances are computed by row blocks to bound memory.
#include <mfglab/plugin.h>

#include <algorithm>
#include <limits>
#include <string>

namespace {

using mfglab::Error;
using torch::Tensor;

constexpr int64_t kBlockEntries = 1 << 22;  // distances held at once (32 MB of doubles)

// Squared distances from row blocks of any set to the rows of a fixed set b, into one
// reused buffer (fresh large allocations cost more than the arithmetic here). Squared
// distances order points as distances do, so every comparison below is made on them.
class SquaredDistancesTo {
 public:
  explicit SquaredDistancesTo(const Tensor& b)
      : b_(b),
        b_squared_(b.square().sum(1).unsqueeze(0)),
        rows_per_block_(std::max<int64_t>(1, kBlockEntries / std::max<int64_t>(1, b.size(0)))),
        buffer_(torch::empty({0, b.size(0)}, b.options())) {}

  int64_t rows_per_block() const { return rows_per_block_; }

  // |a_i - b_j|², [rows of a, rows of b], by |a|² + |b|² - 2 a.b: one matmul, with a
  // cancellation error that float64 keeps far below any neighbour distance of interest.
  // Valid until the next call.
  Tensor operator()(const Tensor& a) {
    if (buffer_.size(0) < a.size(0)) buffer_ = torch::empty({a.size(0), b_.size(0)}, b_.options());
    auto d = buffer_.narrow(0, 0, a.size(0));
    torch::add_out(d, a.square().sum(1, true), b_squared_);
    return d.addmm_(a, b_.t(), 1, -2).clamp_min_(0);
  }

 private:
  Tensor b_, b_squared_;
  int64_t rows_per_block_;
  Tensor buffer_;
};

// For each point of z, the squared distance to its k-th nearest other point of z
// (duplicates of the point count as other points, at distance 0).
Tensor kth_neighbour_squared(const Tensor& z, int64_t k) {
  SquaredDistancesTo to(z);
  auto out = torch::empty({z.size(0)}, z.options());
  for (int64_t i = 0; i < z.size(0); i += to.rows_per_block()) {
    auto d = to(z.slice(0, i, i + to.rows_per_block()));
    d.diagonal(i).fill_(std::numeric_limits<double>::infinity());  // a point is not its own neighbour
    // topk of a few smallest is much faster than kthvalue's selection on long rows.
    out.slice(0, i, i + d.size(0)).copy_(std::get<0>(d.topk(k, 1, false, true)).select(1, k - 1));
  }
  return out;
}

// Share of the points a lying in at least one closed ball B(b_j, r_j), given r_j².
double share_covered(const Tensor& a, const Tensor& b, const Tensor& radius_squared) {
  SquaredDistancesTo to(b);
  int64_t inside = 0;
  for (int64_t i = 0; i < a.size(0); i += to.rows_per_block()) {
    auto d = to(a.slice(0, i, i + to.rows_per_block()));
    inside += (d <= radius_squared.unsqueeze(0)).any(1).sum().item<int64_t>();
  }
  return static_cast<double>(inside) / static_cast<double>(a.size(0));
}

class Memorization final : public mfglab::Metric {
 public:
  Memorization(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : fraction_(params.number("fraction")),
        k_(params.integer("k")),
        max_points_(params.integer("max_points")),
        generator_(ctx.generator) {  // shares the run generator's state
    if (!(fraction_ > 0 && fraction_ <= 1)) throw Error("fraction must lie in (0, 1]");
    if (k_ < 1) throw Error("k must be at least 1");
    if (max_points_ <= k_)
      throw Error("max_points (" + std::to_string(max_points_) + ") must exceed k (" +
                  std::to_string(k_) + ")");
  }

  mfglab::MetricValues evaluate(const mfglab::MetricInput& in) override {
    if (!in.samples.defined() || !in.reference.defined())
      throw Error("memorization needs both samples and reference data");
    if (!in.train.defined())
      throw Error("memorization needs the training set, which is not available here (it cannot "
                  "be computed from sample files: use it in an experiment's eval metrics)");
    torch::NoGradGuard no_grad;
    auto x = subset(in.samples, "samples");
    auto train = subset(in.train, "training");
    auto y = subset(in.reference, "reference");
    if (x.size(1) != train.size(1) || x.size(1) != y.size(1))
      throw Error("memorization: samples, training and reference data differ in dimension");
    if (x.size(0) <= k_ || y.size(0) <= k_)
      throw Error("memorization: samples and reference need more than k = " + std::to_string(k_) +
                  " points each");
    if (train.size(0) < 2) throw Error("memorization: the training set needs at least 2 points");

    // (a) memorization: each sample against its nearest training point's own spacing,
    // |x - t|² < fraction² spacing².
    const auto spacing_squared = kth_neighbour_squared(train, 1);
    SquaredDistancesTo to_train(train);
    int64_t memorized = 0;
    for (int64_t i = 0; i < x.size(0); i += to_train.rows_per_block()) {
      auto [nearest, index] = to_train(x.slice(0, i, i + to_train.rows_per_block())).min(1);
      memorized += (nearest < fraction_ * fraction_ * spacing_squared.index_select(0, index))
                       .sum()
                       .item<int64_t>();
    }

    // (b) k-NN precision and recall.
    const double precision = share_covered(x, y, kth_neighbour_squared(y, k_));
    const double recall = share_covered(y, x, kth_neighbour_squared(x, k_));
    return {{"memorized_fraction", static_cast<double>(memorized) / static_cast<double>(x.size(0))},
            {"precision", precision},
            {"recall", recall}};
  }

 private:
  // The set in float64, cut to a random subset of max_points rows when larger.
  Tensor subset(const Tensor& z, const std::string& what) {
    if (z.dim() != 2 || z.size(0) == 0)
      throw Error("memorization: the " + what + " set must be a non-empty [n, d] tensor");
    auto out = z.detach().to(torch::kFloat64);
    if (out.size(0) <= max_points_) return out;
    // The permutation is drawn on the CPU, where the run's generator lives.
    auto keep = torch::randperm(out.size(0), generator_, torch::TensorOptions().dtype(torch::kLong))
                    .narrow(0, 0, max_points_);
    return out.index_select(0, keep.to(out.device()));
  }

  double fraction_;
  int64_t k_, max_points_;
  torch::Generator generator_;
};

}  // namespace

MFGLAB_PLUGIN(Memorization, MFGLAB_KIND_METRIC, "memorization", "1.0.0",
              "memorized_fraction: share of samples closer to their nearest training point than "
              "fraction x that point's nearest-neighbour distance in the training set; precision "
              "and recall: shares of samples in the union of reference k-NN balls and of "
              "reference points in the union of sample k-NN balls (Kynkaanniemi et al. 2019); "
              "each set cut to a random max_points subset",
              "",
              mfglab::number_param("fraction", 1.0 / 3, "a sample is memorized when closer than "
                                   "fraction x its training point's nearest-neighbour distance")
                  .above(0)
                  .at_most(1),
              mfglab::int_param("k", 3, "neighbour rank of the ball radii for precision and recall")
                  .at_least(1),
              mfglab::int_param("max_points", 5000,
                                "each set larger than this is replaced by a random subset of "
                                "this size")
                  .at_least(2))
