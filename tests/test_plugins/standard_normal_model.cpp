// A test model with known fields, for the metrics that query a model: its law is N(0, I)
// in the run's data dimension d, so
//   log_prob(x) = -|x|²/2 - (d/2) log(2π)  exactly, and
//   score(x, t) = -(scale + slope t) x,
// which for scale = 1, slope = 0 is the exact score of N(0, I) data under any
// variance-preserving noising (alpha² + sigma² = 1 keeps N(0, I) fixed). It offers the
// forward process alpha(t) = exp(-t/2), sigma(t) = sqrt(1 - exp(-t)) on [1e-3, 1] (the
// OU process dX = -X/2 dt + dW) unless forward_process is false.
#include <cmath>
#include <cstring>

#include <mfglab/plugin.h>

namespace {

using torch::Tensor;

constexpr double kLog2Pi = 1.8378770664093454836;  // log(2π)

class StandardNormalModel final : public mfglab::Model, public mfglab::ForwardProcess {
 public:
  StandardNormalModel(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : d_(ctx.data_dim),
        scale_(params.number("scale")),
        slope_(params.number("slope")),
        offers_process_(params.flag("forward_process")),
        generator_(ctx.generator),
        options_(ctx.options()) {
    if (d_ < 1) throw mfglab::Error("standard_normal_model needs the data dimension");
  }

  void* capability(const char* id) override {
    if (offers_process_ && std::strcmp(id, mfglab::kForwardProcess) == 0)
      return static_cast<mfglab::ForwardProcess*>(this);
    return nullptr;
  }

  std::vector<Tensor> parameters() override { return {}; }
  mfglab::LossTerms loss(const Tensor& batch) override {
    return {{"zero", torch::zeros({}, batch.options())}};
  }
  Tensor sample(int64_t n) override { return torch::randn({n, d_}, generator_, options_); }

  Tensor log_prob(const Tensor& x) override {
    return -0.5 * x.square().sum(1) - 0.5 * static_cast<double>(d_) * kLog2Pi;
  }
  Tensor score(const Tensor& x, const Tensor& t) override {
    return -(scale_ + slope_ * t.reshape({-1, 1})) * x;
  }

  Tensor alpha(const Tensor& t) override { return torch::exp(-0.5 * t); }
  Tensor sigma(const Tensor& t) override { return torch::sqrt(-torch::expm1(-t)); }
  double t_min() const override { return 1e-3; }
  double t_max() const override { return 1.0; }

 private:
  int64_t d_;
  double scale_, slope_;
  bool offers_process_;
  torch::Generator generator_;
  torch::TensorOptions options_;
};

}  // namespace

MFGLAB_PLUGIN(StandardNormalModel, MFGLAB_KIND_MODEL, "standard_normal_model", "1.0.0",
              "N(0, I) with exact log_prob and score -(scale + slope t) x (test plugin)",
              "score,log_prob",
              mfglab::number_param("scale", 1.0, "score(x, t) = -(scale + slope t) x"),
              mfglab::number_param("slope", 0.0, "score(x, t) = -(scale + slope t) x"),
              mfglab::bool_param("forward_process", true,
                                 "offer the forward process capability (OU, on [1e-3, 1])"))
