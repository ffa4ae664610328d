// Sliced Wasserstein distance between generated samples X (n points) and reference data
// Y (m points):
//   SW_p = ( mean over L random unit directions θ of W_p^p(θ·X, θ·Y) )^(1/p),
// with the exact 1-D W_p between the empirical measures (n and m may differ). Directions
// are normalised Gaussians (uniform on the sphere) from the run's generator, drawn anew at
// each evaluation. Computed in float64.
#include <mfglab/plugin.h>

#include <cmath>

namespace {

using torch::Tensor;

const auto kProjections = mfglab::int_param("projections", 200, "number of random directions").at_least(1);
const auto kP = mfglab::number_param("p", 2.0, "order p of the Wasserstein distance").at_least(1);

// W_p^p between the empirical measures of the rows of xs [L, n] and ys [L, m], each
// sorted along dim 1: ∫_0^1 |F^-1(u) - G^-1(u)|^p du, one value per row.
Tensor wasserstein_pp(const Tensor& xs, const Tensor& ys, double p) {
  const int64_t n = xs.size(1), m = ys.size(1);
  if (n == m) return (xs - ys).abs().pow(p).mean(1);  // quantiles pair up one to one
  // Both quantile functions are steps, constant between the merged breakpoints
  // {i/n} ∪ {j/m}. In units of 1/(nm) these are the integers i·m and j·n, so interval
  // lengths and indices are exact (repeated breakpoints give empty intervals).
  const auto kLong = torch::TensorOptions().dtype(torch::kLong);
  auto ends = std::get<0>(
      torch::cat({torch::arange(1, n + 1, kLong) * m, torch::arange(1, m + 1, kLong) * n}).sort());
  auto starts = torch::cat({torch::zeros({1}, kLong), ends.slice(0, 0, -1)});
  auto weight = (ends - starts).to(torch::kFloat64) / (double(n) * double(m));
  // On (start, end]: F^-1 = x_(ceil(end/m)) and G^-1 = y_(ceil(end/n)), 1-based.
  auto ix = torch::div(ends + (m - 1), m, "trunc") - 1;
  auto iy = torch::div(ends + (n - 1), n, "trunc") - 1;
  auto gap = xs.index_select(1, ix.to(xs.device())) - ys.index_select(1, iy.to(ys.device()));
  return (gap.abs().pow(p) * weight.to(xs.device())).sum(1);
}

class SlicedWasserstein final : public mfglab::Metric {
 public:
  static constexpr const char* kBetter = "lower";  // for comparisons (manifest.h)

  SlicedWasserstein(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : generator_(ctx.generator),  // shares the run generator's state
        projections_(params[kProjections]),
        p_(params[kP]) {}

  mfglab::MetricValues evaluate(const mfglab::MetricInput& in) override {
    if (!in.samples.defined() || !in.reference.defined())
      throw mfglab::Error("sliced_wasserstein needs both samples and reference data");
    auto x = in.samples.detach().to(torch::kFloat64);
    auto y = in.reference.detach().to(x.device(), torch::kFloat64);
    if (x.dim() != 2 || y.dim() != 2 || x.size(1) != y.size(1))
      throw mfglab::Error(
          "sliced_wasserstein: samples and reference must be [n, d] and [m, d] with the same d");
    if (x.size(0) == 0 || y.size(0) == 0)
      throw mfglab::Error("sliced_wasserstein: samples and reference must not be empty");

    // Drawn on the CPU, where the run's generator lives, then moved to the data.
    auto theta = torch::randn({x.size(1), projections_}, generator_,
                              torch::TensorOptions().dtype(torch::kFloat64));
    theta = (theta / theta.norm(2, {0}, true)).to(x.device());
    // Projections laid out [L, n] so that each sort runs over contiguous memory.
    auto xs = std::get<0>(theta.t().mm(x.t()).sort(1));
    auto ys = std::get<0>(theta.t().mm(y.t()).sort(1));
    const double mean_pp = wasserstein_pp(xs, ys, p_).mean().item<double>();
    return {{"sliced_wasserstein", std::pow(mean_pp, 1.0 / p_)}};
  }

 private:
  torch::Generator generator_;
  int64_t projections_;
  double p_;
};

}  // namespace

MFGLAB_PLUGIN(SlicedWasserstein, MFGLAB_KIND_METRIC, "sliced_wasserstein", "1.0.0",
              "Sliced Wasserstein distance (mean over random unit directions of the exact 1-D "
              "W_p^p of the projections)^(1/p)",
              "", kProjections, kP)
