// Example dataset plugin: an isotropic Gaussian N(mean * 1, std^2 I) in `dim` dimensions.
// Copy this folder to start a plugin of your own: one class implementing an interface
// from <mfglab/sdk.h>, constructed from (Params, RunContext), and one MFGLAB_PLUGIN line.
#include <mfglab/plugin.h>

namespace {

class GaussianBlob final : public mfglab::Dataset {
 public:
  GaussianBlob(const mfglab::Params& params, const mfglab::RunContext& ctx) {
    const int64_t dim = params.integer("dim");
    const double mean = params.number("mean"), std = params.number("std");
    // All randomness comes from the run's generator: runs stay reproducible in parallel.
    torch::Generator gen = ctx.generator;
    train_ = mean + std * torch::randn({params.integer("train_size"), dim}, gen, ctx.options());
    test_ = mean + std * torch::randn({params.integer("test_size"), dim}, gen, ctx.options());
  }
  torch::Tensor train() override { return train_; }
  torch::Tensor test() override { return test_; }

 private:
  torch::Tensor train_, test_;
};

}  // namespace

MFGLAB_PLUGIN(GaussianBlob, MFGLAB_KIND_DATASET, "gaussian_blob", "1.0.0",
              "Example: isotropic Gaussian N(mean, std^2 I) samples", "",
              mfglab::int_param("dim", 2, "dimension").at_least(1),
              mfglab::number_param("mean", 0.0, "every coordinate's mean"),
              mfglab::number_param("std", 1.0, "standard deviation").above(0),
              mfglab::int_param("train_size", 10000, "training points").at_least(1),
              mfglab::int_param("test_size", 2000, "held-out points").at_least(1))
