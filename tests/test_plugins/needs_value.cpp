// A regularizer that needs the model's value function: the experiment validator must
// refuse it with a model that does not provide "value".
#include <mfglab/plugin.h>

namespace {

class NeedsValue final : public mfglab::Regularizer {
 public:
  NeedsValue(const mfglab::Params&, const mfglab::RunContext&) {}
  torch::Tensor penalty(mfglab::Model& model, const torch::Tensor& batch) override {
    auto t = torch::zeros({batch.size(0), 1}, batch.options());
    return model.value(batch, t).mean();
  }
};

}  // namespace

MFGLAB_PLUGIN(NeedsValue, MFGLAB_KIND_REGULARIZER, "needs_value", "1.0.0",
              "Mean of the model's value function at t = 0 (test plugin)", "value")
