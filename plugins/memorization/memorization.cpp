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
// Fresh-sample baselines: what n i.i.d. draws from the data law would score, n the number
// of samples (after the cut below), from the held-out data itself:
//   memorized_fraction_fresh: reference points, n of them, against the training set (the
//     test split is the data law's, independent of the training split): about fraction^d
//     for a smooth density, as above;
//   precision_fresh, recall_fresh: training points, n of them, in place of the samples,
//     against the same reference set (both splits are the data law's and independent).
// A model that matches the data law scores about these values; memorized_fraction well
// above its baseline is copying, precision or recall well below theirs is missing mass.
// When the reference (for the first) or training set (for the others) has fewer than n
// points, all of it is used; with no more than k training points the last two are left out.
//
// Each set (samples, training, reference) larger than max_points is replaced by a random
// subset of max_points rows drawn from the run's generator (so the values are
// deterministic for a seed); distances are computed by row blocks to bound memory. The
// baselines' draws come after the others', so they leave the first three values unchanged.
#include <mfglab/plugin.h>

#include <algorithm>
#include <limits>
#include <string>

namespace {

using mfglab::Error;
using torch::Tensor;

constexpr int64_t kBlockEntries = 1 << 22;  // distances held at once (32 MB of doubles)

const auto kFraction = mfglab::number_param("fraction", 1.0 / 3,
                                            "a sample is memorized when closer than fraction x its training "
                                            "point's nearest-neighbour distance")
                           .above(0)
                           .at_most(1);
const auto kK = mfglab::int_param("k", 3, "neighbour rank of the ball radii for precision and recall").at_least(1);
const auto kMaxPoints =
    mfglab::int_param("max_points", 5000, "each set larger than this is replaced by a random subset of this size")
        .at_least(2);

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
      : fraction_(params[kFraction]),
        k_(params[kK]),
        max_points_(params[kMaxPoints]),
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
    auto memorized_share = [&](const Tensor& z) {
      int64_t memorized = 0;
      for (int64_t i = 0; i < z.size(0); i += to_train.rows_per_block()) {
        auto [nearest, index] = to_train(z.slice(0, i, i + to_train.rows_per_block())).min(1);
        memorized += (nearest < fraction_ * fraction_ * spacing_squared.index_select(0, index))
                         .sum()
                         .item<int64_t>();
      }
      return static_cast<double>(memorized) / static_cast<double>(z.size(0));
    };

    // (b) k-NN precision and recall against the reference set.
    const auto reference_radii = kth_neighbour_squared(y, k_);
    auto precision_of = [&](const Tensor& z) { return share_covered(z, y, reference_radii); };
    auto recall_of = [&](const Tensor& z) { return share_covered(y, z, kth_neighbour_squared(z, k_)); };

    mfglab::MetricValues out = {{"memorized_fraction", memorized_share(x)},
                                {"precision", precision_of(x)},
                                {"recall", recall_of(x)}};

    // (c) the same for n fresh draws of the data law: held-out points against the
    // training set, training points against the reference set.
    const int64_t n = x.size(0);
    const auto fresh_reference = rows(y, n);
    out.emplace_back("memorized_fraction_fresh", memorized_share(fresh_reference));
    const auto fresh_train = rows(train, n);
    if (fresh_train.size(0) > k_) {  // else too few training points for k-NN balls
      out.emplace_back("precision_fresh", precision_of(fresh_train));
      out.emplace_back("recall_fresh", recall_of(fresh_train));
    }
    return out;
  }

 private:
  // n rows of z drawn without replacement from the run's generator, or all of z when it
  // has no more than n.
  Tensor rows(const Tensor& z, int64_t n) {
    if (z.size(0) <= n) return z;
    auto keep = torch::randperm(z.size(0), generator_, torch::TensorOptions().dtype(torch::kLong)).narrow(0, 0, n);
    return z.index_select(0, keep.to(z.device()));
  }

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
              "their fresh-sample baselines memorized_fraction_fresh, precision_fresh, recall_fresh "
              "(what as many i.i.d. data points score: held-out points against the training set, "
              "training points against the reference set); each set cut to a random max_points subset",
              "", kFraction, kK, kMaxPoints)
