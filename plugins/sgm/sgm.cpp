// Score-based generative model on the variance-preserving SDE (Song et al. 2021).
//
// Forward noising on [eps, 1]:  dY = -1/2 beta(t) Y dt + sqrt(beta(t)) dW,
//   beta(t) = beta_min + t (beta_max - beta_min),  B(t) = int_0^t beta,
//   Y_t | Y_0 ~ N(alpha Y_0, sigma^2 I),  alpha = exp(-B/2),  sigma^2 = 1 - alpha^2.
// The network predicts the noise: score(x, t) = -net([x, t]) / sigma(t). With the
// weighting lambda(t) = sigma^2, denoising score matching becomes plain noise
// regression |net(alpha x0 + sigma z, t) - z|^2, well conditioned down to t = eps.
// Sampling integrates the reverse-time SDE from N(0, I) at t = 1 to eps by Euler-Maruyama.
#include <cmath>
#include <cstring>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <mfglab/nn.h>
#include <mfglab/plugin.h>

namespace {

using mfglab::Error;

std::string show(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

// Also offers its noising marginals as the "mfglab.forward_process/1" capability, so
// metrics and regularizers can compare the learned score with a dataset's exact one.
class Sgm final : public mfglab::Model, public mfglab::ForwardProcess {
 public:
  Sgm(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : d_(ctx.data_dim),
        beta_min_(params.number("beta_min")),
        beta_max_(params.number("beta_max")),
        eps_(params.number("eps")),
        steps_(params.integer("sample_steps")),
        generator_(ctx.generator),
        options_(ctx.options()) {
    if (d_ < 1)
      throw Error("the data dimension is " + std::to_string(d_) +
                  "; the engine must set it before creating the model");
    if (!(beta_max_ > beta_min_))
      throw Error("beta_max (" + show(beta_max_) + ") must be greater than beta_min (" +
                  show(beta_min_) + ")");
    // The declared bounds already say this; repeated because an out-of-range eps would
    // silently give sigma = 0 (division by zero in the score) or an empty time range.
    if (!(eps_ > 0 && eps_ < 1)) throw Error("eps (" + show(eps_) + ") must lie in (0, 1)");
    if (steps_ < 1) throw Error("sample_steps (" + std::to_string(steps_) + ") must be at least 1");

    std::vector<int64_t> sizes{d_ + 1};  // time enters as one extra input column
    for (int64_t i = 0; i < params.integer("depth"); ++i) sizes.push_back(params.integer("width"));
    sizes.push_back(d_);
    net_ = mfglab::nn::MLP(sizes, mfglab::nn::parse_activation(params.string("activation")),
                           generator_, options_);
  }

  void* capability(const char* id) override {
    if (std::strcmp(id, mfglab::kForwardProcess) == 0) return static_cast<mfglab::ForwardProcess*>(this);
    return nullptr;
  }

  std::vector<torch::Tensor> parameters() override { return net_.parameters(); }

  mfglab::LossTerms loss(const torch::Tensor& batch) override {
    auto noised = noised_batch(batch);
    auto predicted = net_.forward(noised.input);
    // sigma * score + z = z - net: the sigma^2-weighted DSM, summed over dimensions and
    // averaged over the batch.
    auto dsm = (predicted - noised.z).square().sum() / static_cast<double>(predicted.size(0));
    return {{"dsm", dsm}};
  }

  torch::Tensor sample(int64_t n) override {
    if (n < 0) throw Error("cannot draw " + std::to_string(n) + " samples");
    torch::NoGradGuard no_grad;
    // The particles live in the network's input buffer next to the time column, so each
    // step updates them in place and the network reads them without a concatenation.
    auto input = torch::empty({n, d_ + 1}, options_);
    auto x = input.narrow(1, 0, d_);
    auto time = input.narrow(1, d_, 1);
    x.normal_(0.0, 1.0, generator_);
    auto noise = torch::empty({n, d_}, options_);
    const double dt = (1.0 - eps_) / static_cast<double>(steps_);
    for (int64_t k = 0; k < steps_; ++k) {
      const double t = 1.0 - static_cast<double>(k) * dt;
      const double b = beta(t);
      time.fill_(t);
      auto predicted = net_.forward(input);
      // Reverse drift, stepping t -> t - dt:  x += (beta/2 x + beta score) dt,
      // score = -net / sigma.
      x.mul_(1.0 + 0.5 * b * dt).sub_(predicted, b * dt / sigma(t));
      // The last step returns the mean: added noise there would only blur the samples.
      if (k + 1 < steps_) x.add_(noise.normal_(0.0, 1.0, generator_), std::sqrt(b * dt));
    }
    return x.contiguous();
  }

  torch::Tensor score(const torch::Tensor& x, const torch::Tensor& t) override {
    auto tc = column(t, x.size(0)).to(x.scalar_type());
    // Differentiable in both x and t: regularizers take derivatives of the score.
    return -net_.forward(torch::cat({x, tc}, 1)) / sigma(tc);
  }

  double horizon() const override { return 1.0; }

  torch::Tensor drift(const torch::Tensor& x, const torch::Tensor& t) override {
    return -0.5 * beta(column(t, x.size(0))) * x;
  }

  torch::Tensor diffusion(const torch::Tensor& t) override {
    return torch::sqrt(beta(t.reshape({-1, 1})));
  }

  mfglab::Collocation collocation(const torch::Tensor& batch) override {
    torch::NoGradGuard no_grad;
    auto noised = noised_batch(batch);
    return {noised.input.narrow(1, 0, d_).contiguous(), noised.input.narrow(1, d_, 1).contiguous()};
  }

  // ForwardProcess: X_t = alpha(t) X_0 + sigma(t) Z, differentiable in t.
  torch::Tensor alpha(const torch::Tensor& t) override { return torch::exp(-0.5 * integral(t)); }
  // 1 - exp(-B) through expm1: exact to rounding even when B is tiny near t = eps.
  torch::Tensor sigma(const torch::Tensor& t) override { return torch::sqrt(-torch::expm1(-integral(t))); }
  double t_min() const override { return eps_; }
  double t_max() const override { return 1.0; }

 private:
  struct Noised {
    torch::Tensor input;  // [N, d+1]: alpha(t) x0 + sigma(t) z, then t
    torch::Tensor z;      // [N, d]
  };

  // Draws t ~ U(eps, 1) and z ~ N(0, I) and writes the forward-noised batch straight into
  // the network's input layout.
  Noised noised_batch(const torch::Tensor& batch) {
    if (batch.dim() != 2 || batch.size(1) != d_)
      throw Error("expected a batch of shape [N, " + std::to_string(d_) + "], got " +
                  shape(batch));
    auto x0 = batch.to(options_);  // no copy when dtype and device already match
    const int64_t n = x0.size(0);
    auto input = torch::empty({n, d_ + 1}, options_);
    auto t = input.narrow(1, d_, 1);
    t.uniform_(eps_, 1.0, generator_);
    auto z = torch::randn({n, d_}, generator_, options_);
    auto xt = input.narrow(1, 0, d_);
    torch::mul_out(xt, x0, alpha(t));
    xt.addcmul_(sigma(t), z);
    return {input, z};
  }

  static std::string shape(const torch::Tensor& x) {
    std::ostringstream out;
    out << x.sizes();
    return out.str();
  }

  // Times arrive as [N, 1]; [N] and a single time are accepted too.
  static torch::Tensor column(const torch::Tensor& t, int64_t n) {
    if (t.numel() == n) return t.reshape({n, 1});
    if (t.numel() == 1) return t.reshape({1, 1}).expand({n, 1});
    throw Error("expected times of shape [" + std::to_string(n) + ", 1], got " + shape(t));
  }

  double beta(double t) const { return beta_min_ + t * (beta_max_ - beta_min_); }
  double integral(double t) const { return t * (beta_min_ + 0.5 * t * (beta_max_ - beta_min_)); }
  double sigma(double t) const { return std::sqrt(-std::expm1(-integral(t))); }

  torch::Tensor beta(const torch::Tensor& t) const { return beta_min_ + (beta_max_ - beta_min_) * t; }
  torch::Tensor integral(const torch::Tensor& t) const {
    return t * (beta_min_ + 0.5 * (beta_max_ - beta_min_) * t);
  }

  int64_t d_;
  double beta_min_, beta_max_, eps_;
  int64_t steps_;
  torch::Generator generator_;  // shares the run generator's state
  torch::TensorOptions options_;
  mfglab::nn::MLP net_;
};

}  // namespace

MFGLAB_PLUGIN(Sgm, MFGLAB_KIND_MODEL, "sgm", "1.0.0",
              "Score-based generative model: VP SDE, denoising score matching, Euler-Maruyama sampler",
              "score",
              mfglab::int_param("width", 128, "hidden units per layer of the score network").at_least(1),
              mfglab::int_param("depth", 3, "hidden layers of the score network").at_least(1),
              mfglab::choice_param("activation", "silu", "silu|gelu|tanh|relu|softplus",
                                   "activation between the score network's layers"),
              mfglab::number_param("beta_min", 0.1, "noise rate beta at t = 0").at_least(0),
              mfglab::number_param("beta_max", 20.0, "noise rate beta at t = 1; must exceed beta_min").above(0),
              mfglab::number_param("eps", 1e-3, "smallest diffusion time, where sampling stops").above(0).below(1),
              mfglab::int_param("sample_steps", 500, "Euler-Maruyama steps of the reverse sampler").at_least(1))
