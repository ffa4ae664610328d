// A model plugin of SDK 1.1, compiled against the frozen headers in include/ (not the
// current SDK): its manifest is shorter than the engine's and has no param_size. The
// engine must load it, resolve its parameters from the SDK 1.0 parameter array, create it
// and call it. A learnable mean: loss is the mean squared distance of the batch to it.
#include <mfglab/plugin.h>

namespace {

class FrozenModel final : public mfglab::Model {
 public:
  FrozenModel(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : term_(params.string("term")), generator_(ctx.generator), options_(ctx.options()) {
    mean_ = torch::full({params.integer("dim")}, params.number("shift"), options_).requires_grad_();
  }

  std::vector<torch::Tensor> parameters() override { return {mean_}; }
  mfglab::LossTerms loss(const torch::Tensor& batch) override {
    return {{term_, (batch - mean_).square().sum(1).mean()}};
  }
  torch::Tensor sample(int64_t n) override {
    torch::NoGradGuard no_grad;
    return mean_.detach() + torch::randn({n, mean_.size(0)}, generator_, options_);
  }
  // Towards the reference N(0, I) shifted by -mean: a constant field.
  torch::Tensor velocity(const torch::Tensor& x, const torch::Tensor&) override {
    return (-mean_).expand_as(x);
  }

 private:
  std::string term_;
  torch::Generator generator_;
  torch::TensorOptions options_;
  torch::Tensor mean_;
};

}  // namespace

MFGLAB_PLUGIN(FrozenModel, MFGLAB_KIND_MODEL, "frozen_sdk_model", "1.0.0",
              "A learnable mean, built against the frozen SDK 1.1 headers", "velocity",
              mfglab::int_param("dim", 2, "dimension").at_least(1),
              mfglab::number_param("shift", 0.5, "initial value of every coordinate of the mean").range(-10, 10),
              mfglab::choice_param("term", "mse", "mse|distance", "name of the loss term"))
