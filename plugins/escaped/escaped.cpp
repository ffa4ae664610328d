// Fraction of generated samples that escaped the data: those outside the bounding box of
// the reference (held-out) data, widened on every side by `margin` times the box's extent
// in that coordinate. Score models trained for long can send a few samples to huge radii
// while MMD and precision barely move; this counts them. A non-finite sample counts as
// escaped.
#include <mfglab/plugin.h>

namespace {

const auto kMargin = mfglab::number_param("margin", 0.0625,
                                          "widening of the box on each side, as a fraction of its extent in that "
                                          "coordinate (0.0625 turns the checkerboard's [-4, 4] into [-4.5, 4.5])")
                         .at_least(0);

class Escaped final : public mfglab::Metric {
 public:
  static constexpr const char* kBetter = "lower";  // for comparisons (manifest.h)

  Escaped(const mfglab::Params& params, const mfglab::RunContext&) : margin_(params[kMargin]) {}

  mfglab::MetricValues evaluate(const mfglab::MetricInput& in) override {
    if (!in.samples.defined() || !in.reference.defined())
      throw mfglab::Error("escaped needs both samples and reference data");
    torch::NoGradGuard no_grad;
    auto x = in.samples.detach().to(torch::kFloat64);
    auto y = in.reference.detach().to(x.device(), torch::kFloat64);
    if (x.dim() != 2 || y.dim() != 2 || x.size(1) != y.size(1) || x.size(0) < 1 || y.size(0) < 1)
      throw mfglab::Error("escaped: samples and reference must be non-empty [n, d] and [m, d] with the same d");
    if (!torch::isfinite(y).all().item<bool>()) throw mfglab::Error("escaped: the reference data are not finite");
    auto lo = std::get<0>(y.min(0)), hi = std::get<0>(y.max(0));
    auto pad = (hi - lo) * margin_;
    lo = lo - pad;
    hi = hi + pad;
    // NaN compares false, so a NaN coordinate is not "inside".
    auto inside = (x >= lo).logical_and(x <= hi).all(1);
    const double n = static_cast<double>(x.size(0));
    return {{"escaped_fraction", 1.0 - inside.sum().item<double>() / n}};
  }

 private:
  double margin_;
};

}  // namespace

MFGLAB_PLUGIN(Escaped, MFGLAB_KIND_METRIC, "escaped", "1.0.0",
              "Fraction of samples outside the reference data's bounding box widened by margin x its "
              "extent on each side (non-finite samples count as escaped)",
              "", kMargin)
