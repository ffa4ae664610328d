// Example model plugin: a learnable Gaussian N(mu, diag(sigma^2)) seen as a mean-field game.
// It follows the conventions of <mfglab/sdk.h>: the data law at t = 0, the reference N(0, I)
// at t = T = 1, and particles moving from the first to the second along the optimal-transport
// (displacement) interpolation
//
//   X_t = m_t + s_t (X_0 - mu) / sigma,   m_t = (1 - t) mu,   s_t = (1 - t) sigma + t,
//
// so that rho_t = N(m_t, diag(s_t^2)). Everything is in closed form: the velocity
// v = -mu + (1 - sigma)(x - m_t) / s_t (from the data towards the reference), the score
// -(x - m_t) / s_t^2, and a value function U with v = -grad U that solves the HJB equation
// -U_t + |grad U|^2 / 2 = 0 exactly:
//
//   U(x, t) = sum_i [ mu_i x_i - (1 - sigma_i) (x_i - m_i)^2 / (2 s_i) ] + t |mu|^2 / 2.
//
// Training minimises the negative log-likelihood of the data batch. Copy this file to start
// a model of your own: parameters() returns the tensors to train, loss() named scalar terms,
// sample() draws from the learned data law; the optional fields are listed in MFGLAB_PLUGIN.
#include <cmath>
#include <string>

#include <mfglab/plugin.h>

namespace {

using torch::Tensor;

const auto kInitStd = mfglab::number_param("init_std", 1.0, "initial sigma of every coordinate").above(0);

class GaussianModel final : public mfglab::Model {
 public:
  GaussianModel(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : generator_(ctx.generator), options_(ctx.options()) {
    if (ctx.data_dim < 1) throw mfglab::Error("gaussian_model needs the data's dimension");
    const auto d = ctx.data_dim;
    mu_ = torch::zeros({d}, options_).requires_grad_();
    log_sigma_ = torch::full({d}, std::log(params[kInitStd]), options_).requires_grad_();
  }

  std::vector<Tensor> parameters() override { return {mu_, log_sigma_}; }

  mfglab::LossTerms loss(const Tensor& batch) override {
    check(batch, "batch");
    return {{"nll", -log_prob(batch).mean()}};
  }

  // X_0 = mu + sigma Z, Z ~ N(0, I): the reference pulled back to t = 0.
  Tensor sample(int64_t n) override {
    torch::NoGradGuard no_grad;
    auto z = torch::randn({n, mu_.size(0)}, generator_, options_);
    return (mu_ + log_sigma_.exp() * z).detach();
  }

  Tensor log_prob(const Tensor& x) override {
    check(x, "x");
    auto sigma = log_sigma_.exp();
    auto z = (x - mu_) / sigma;
    const double log_2pi = std::log(2 * std::acos(-1.0));
    return (-0.5 * z.square() - log_sigma_ - 0.5 * log_2pi).sum(1);
  }

  Tensor velocity(const Tensor& x, const Tensor& t) override {
    auto [m, s] = marginal(t);
    return -mu_ + (1 - log_sigma_.exp()) * (x - m) / s;
  }

  Tensor score(const Tensor& x, const Tensor& t) override {
    auto [m, s] = marginal(t);
    return -(x - m) / s.square();
  }

  Tensor value(const Tensor& x, const Tensor& t) override {
    auto [m, s] = marginal(t);
    auto k = 1 - log_sigma_.exp();
    return (mu_ * x - k * (x - m).square() / (2 * s)).sum(1) + t.reshape({-1}) * (0.5 * mu_.square().sum());
  }

  // Each batch point carried to its own time t ~ U(0, 1) along its straight path.
  mfglab::Collocation collocation(const Tensor& batch) override {
    check(batch, "batch");
    auto t = torch::empty({batch.size(0), 1}, options_).uniform_(0.0, 1.0, generator_);
    auto [m, s] = marginal(t);
    return {m + s * (batch - mu_) / log_sigma_.exp(), t};
  }

 private:
  // Mean and standard deviation of rho_t, each [N, d], for t [N, 1].
  std::pair<Tensor, Tensor> marginal(const Tensor& t) const {
    auto tt = t.reshape({-1, 1});
    return {(1 - tt) * mu_, (1 - tt) * log_sigma_.exp() + tt};
  }

  void check(const Tensor& x, const char* what) const {
    if (x.dim() != 2 || x.size(1) != mu_.size(0))
      throw mfglab::Error(std::string("gaussian_model: expected ") + what + " of shape [N, " +
                          std::to_string(mu_.size(0)) + "]");
  }

  torch::Generator generator_;  // shares the run generator's state
  torch::TensorOptions options_;
  Tensor mu_, log_sigma_;
};

}  // namespace

MFGLAB_PLUGIN(GaussianModel, MFGLAB_KIND_MODEL, "gaussian_model", "1.0.0",
              "Example: a learnable Gaussian N(mu, diag(sigma^2)) transported to N(0, I) in closed form",
              "value,velocity,score,log_prob,collocation",
              kInitStd)
