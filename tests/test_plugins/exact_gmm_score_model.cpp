// A test model whose score is known exactly: data from a small 2D Gaussian mixture,
// noised by the VP process of the sgm plugin (beta 0.1 -> 20 on [1e-3, 1]). The marginal at
// time t is the mixture of N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I) with the same weights,
// so its score is a responsibility-weighted sum of Gaussian scores, in closed form and
// differentiable in x and t: the ground truth for the score-PDE regularizers.
//
// value(x, t) is the exact log density (the potential of the score, for the log-density
// form of the hjb regularizer). Parameter `perturb` (trainable, the model's only parameter)
// adds perturb * sin(x) to the score (and -perturb * sum cos(x_i) to the value), a field that
// violates the PDE; `mixture` picks three components or one Gaussian.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <mfglab/plugin.h>

namespace {

using mfglab::Error;
using torch::Tensor;

constexpr double kBetaMin = 0.1, kBetaMax = 20.0, kEps = 1e-3;

struct Component {
  double weight, mu[2], cov[3];  // cov: Sigma_11, Sigma_12, Sigma_22
};

// Correlated components (a non-diagonal Jacobian) of unequal weights and sizes.
const std::vector<Component> kThree = {{0.5, {1.0, 0.5}, {0.3, 0.1, 0.2}},
                                       {0.3, {-1.0, -0.5}, {0.2, -0.05, 0.4}},
                                       {0.2, {0.5, -1.5}, {0.1, 0.0, 0.1}}};
// One Gaussian with a diagonal covariance, for closed-form ISM values.
const std::vector<Component> kOne = {{1.0, {1.0, -0.5}, {0.25, 0.0, 0.5}}};

class ExactGmmScoreModel final : public mfglab::Model, public mfglab::ForwardProcess {
 public:
  ExactGmmScoreModel(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : components_(params.string("mixture") == "one" ? kOne : kThree),
        generator_(ctx.generator),
        options_(ctx.options()) {
    if (ctx.data_dim != 2) throw Error("exact_gmm_score_model is two-dimensional");
    perturb_ = torch::full({}, params.number("perturb"), options_).requires_grad_();
  }

  void* capability(const char* id) override {
    if (std::strcmp(id, mfglab::kForwardProcess) == 0) return static_cast<mfglab::ForwardProcess*>(this);
    return nullptr;
  }

  std::vector<Tensor> parameters() override { return {perturb_}; }
  mfglab::LossTerms loss(const Tensor&) override { return {{"zero", perturb_ * 0}}; }

  // Draws from the data mixture itself (t = 0).
  Tensor sample(int64_t n) override {
    torch::NoGradGuard no_grad;
    std::vector<double> w;
    for (const auto& c : components_) w.push_back(c.weight);
    auto k = torch::multinomial(torch::tensor(w, torch::kFloat64), n, true, generator_);
    // Per component: the mean and the Cholesky factor [[l11, 0], [l21, l22]] of Sigma.
    std::vector<double> table;
    for (const auto& c : components_) {
      const double l11 = std::sqrt(c.cov[0]), l21 = c.cov[1] / l11;
      table.insert(table.end(), {c.mu[0], c.mu[1], l11, l21, std::sqrt(c.cov[2] - l21 * l21)});
    }
    auto rows = torch::tensor(table, torch::kFloat64).reshape({-1, 5}).index_select(0, k).to(options_);
    auto z = torch::randn({n, 2}, generator_, options_);
    auto z1 = z.select(1, 0), z2 = z.select(1, 1);
    return torch::stack({rows.select(1, 0) + rows.select(1, 2) * z1,
                         rows.select(1, 1) + rows.select(1, 3) * z1 + rows.select(1, 4) * z2}, 1);
  }

  Tensor score(const Tensor& x, const Tensor& t_in) override {
    auto t = t_in.reshape({-1, 1});
    auto a = alpha(t), a2 = a.square(), s2 = sigma(t).square();
    auto x1 = x.select(1, 0).unsqueeze(1), x2 = x.select(1, 1).unsqueeze(1);
    std::vector<Tensor> logits, s1, s2s;
    for (const auto& c : components_) {
      // C = alpha^2 Sigma + sigma^2 I = [[p, q], [q, r]]; the score of N(alpha mu, C) is
      // -C^{-1} (x - alpha mu).
      auto p = a2 * c.cov[0] + s2, q = a2 * c.cov[1], r = a2 * c.cov[2] + s2;
      auto det = p * r - q.square();
      auto y1 = x1 - a * c.mu[0], y2 = x2 - a * c.mu[1];
      auto g1 = -(r * y1 - q * y2) / det, g2 = -(p * y2 - q * y1) / det;
      // log density up to the common -log(2 pi): -1/2 y^T C^{-1} y - 1/2 log det C.
      logits.push_back(std::log(c.weight) + 0.5 * (y1 * g1 + y2 * g2) - 0.5 * torch::log(det));
      s1.push_back(g1);
      s2s.push_back(g2);
    }
    auto resp = torch::softmax(torch::cat(logits, 1), 1);  // [N, K] responsibilities
    auto score1 = (resp * torch::cat(s1, 1)).sum(1, true), score2 = (resp * torch::cat(s2s, 1)).sum(1, true);
    return torch::cat({score1, score2}, 1) + perturb_ * torch::sin(x);
  }

  // The exact log density log rho_t(x), whose gradient is score(): the log-sum-exp of the
  // components' log densities, minus the perturbation's potential sum cos(x_i).
  Tensor value(const Tensor& x, const Tensor& t_in) override {
    auto t = t_in.reshape({-1, 1});
    auto a = alpha(t), a2 = a.square(), s2 = sigma(t).square();
    auto x1 = x.select(1, 0).unsqueeze(1), x2 = x.select(1, 1).unsqueeze(1);
    std::vector<Tensor> logs;
    for (const auto& c : components_) {
      auto p = a2 * c.cov[0] + s2, q = a2 * c.cov[1], r = a2 * c.cov[2] + s2;
      auto det = p * r - q.square();
      auto y1 = x1 - a * c.mu[0], y2 = x2 - a * c.mu[1];
      auto quad = (r * y1.square() - 2 * q * y1 * y2 + p * y2.square()) / det;  // y^T C^{-1} y
      logs.push_back(std::log(c.weight) - 0.5 * quad - 0.5 * torch::log(det) - std::log(2 * M_PI));
    }
    return torch::logsumexp(torch::cat(logs, 1), 1) - perturb_ * torch::cos(x).sum(1);
  }

  double horizon() const override { return 1.0; }
  Tensor drift(const Tensor& x, const Tensor& t) override { return -0.5 * beta(t.reshape({-1, 1})) * x; }
  Tensor diffusion(const Tensor& t) override { return torch::sqrt(beta(t.reshape({-1, 1}))); }

  mfglab::Collocation collocation(const Tensor& batch) override {
    torch::NoGradGuard no_grad;
    auto t = torch::empty({batch.size(0), 1}, options_).uniform_(kEps, 1.0, generator_);
    auto z = torch::randn(batch.sizes(), generator_, options_);
    return {alpha(t) * batch.to(options_) + sigma(t) * z, t};
  }

  Tensor alpha(const Tensor& t) override { return torch::exp(-0.5 * integral(t)); }
  Tensor sigma(const Tensor& t) override { return torch::sqrt(-torch::expm1(-integral(t))); }
  double t_min() const override { return kEps; }
  double t_max() const override { return 1.0; }

 private:
  static Tensor beta(const Tensor& t) { return kBetaMin + (kBetaMax - kBetaMin) * t; }
  static Tensor integral(const Tensor& t) { return t * (kBetaMin + 0.5 * (kBetaMax - kBetaMin) * t); }

  std::vector<Component> components_;
  torch::Generator generator_;
  torch::TensorOptions options_;
  Tensor perturb_;
};

}  // namespace

MFGLAB_PLUGIN(ExactGmmScoreModel, MFGLAB_KIND_MODEL, "exact_gmm_score_model", "1.0.0",
              "Exact score and log density (value) of a 2D Gaussian mixture under the VP process (test plugin)",
              "score,value,collocation",
              mfglab::number_param("perturb", 0.0, "adds perturb * sin(x) to the score"),
              mfglab::choice_param("mixture", "three", "three|one",
                                   "three correlated components, or one diagonal Gaussian"))
