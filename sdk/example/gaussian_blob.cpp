// Example dataset plugin: an isotropic Gaussian N(mean * 1, std^2 I) in `dim` dimensions.
// Copy this folder to start a plugin of your own: one class implementing an interface
// from <mfglab/sdk.h>, constructed from (Params, RunContext), and one MFGLAB_PLUGIN line.
#include <mfglab/plugin.h>

namespace {

// Each parameter is declared once: MFGLAB_PLUGIN lists the declarations, and the constructor
// reads the values back by the same handles, typed (params[kDim] is an int64_t).
const auto kDim = mfglab::int_param("dim", 2, "dimension").at_least(1);
const auto kMean = mfglab::number_param("mean", 0.0, "every coordinate's mean");
const auto kStd = mfglab::number_param("std", 1.0, "standard deviation").above(0);
const auto kTrainSize = mfglab::int_param("train_size", 10000, "training points").at_least(1);
const auto kTestSize = mfglab::int_param("test_size", 2000, "held-out points").at_least(1);

class GaussianBlob final : public mfglab::Dataset {
 public:
  GaussianBlob(const mfglab::Params& params, const mfglab::RunContext& ctx) {
    const int64_t dim = params[kDim];
    const double mean = params[kMean], std = params[kStd];
    // All randomness comes from the run's generator: runs stay reproducible in parallel.
    torch::Generator gen = ctx.generator;
    train_ = mean + std * torch::randn({params[kTrainSize], dim}, gen, ctx.options());
    test_ = mean + std * torch::randn({params[kTestSize], dim}, gen, ctx.options());
  }
  torch::Tensor train() override { return train_; }
  torch::Tensor test() override { return test_; }

 private:
  torch::Tensor train_, test_;
};

}  // namespace

MFGLAB_PLUGIN(GaussianBlob, MFGLAB_KIND_DATASET, "gaussian_blob", "1.0.0",
              "Example: isotropic Gaussian N(mean, std^2 I) samples", "", kDim, kMean, kStd, kTrainSize, kTestSize)
