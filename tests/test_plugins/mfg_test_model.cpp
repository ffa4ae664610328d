// A test model with closed-form MFG fields, for the HJB regularizers (test_mfg_regularizers).
// In dimension d = the run's data dimension, with lambda > 0:
//
//   solution inviscid: b = 0, sigma = 0, U(x, t) = -lambda |x|^2 / (2 (c + t)),
//   solution viscous:  b = -k x, sigma constant, U(x, t) = -k lambda |x|^2 + sigma^2 k lambda d t,
//
// both exact solutions of -U_t + |grad U|^2 / (2 lambda) - b.grad U - sigma^2/2 Lap U = 0.
// `perturb` (the model's only parameter, trainable) adds perturb * sin(sum_i x_i + t) to U,
// which violates the equation and has a non-diagonal Hessian (so Hutchinson probes matter).
//
// velocity optimal: v = -grad U / lambda (with the perturbation); particle paths of the
//   unperturbed field: x(t) = x0 (c + t) / c (inviscid); dX = k X dt + sigma dW (viscous);
// velocity constant: v = w, paths x0 + w t;   velocity linear: v = A x, paths expm(A t) x0.
// The flow pushes the data to N(0, I) at T by convention, so log_prob(x0) = log N(x(T)) +
// log det(dx(T)/dx0). Collocation: t ~ U(0, T) from the run's generator, x on the path.
// The mfglab.flow_map/1 capability (deterministic cases) is offered unless flow_map = false;
// mfglab.objective_weights/1 with (alpha_L, alpha_C) when objective_weights = true (the model
// then stands for one trained on alpha_L int L + alpha_C G, whose value field is U / alpha_L).
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <mfglab/capabilities_mfg.h>
#include <mfglab/plugin.h>

namespace {

using mfglab::Error;
using torch::Tensor;

constexpr double kLog2Pi = 1.8378770664093454836;

class MfgTestModel final : public mfglab::Model, public mfglab::FlowMap, public mfglab::ObjectiveWeights {
 public:
  MfgTestModel(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : d_(ctx.data_dim),
        viscous_(params.string("solution") == "viscous"),
        velocity_(params.string("velocity")),
        lambda_(params.number("lambda")),
        c_(params.number("c")),
        k_(params.number("k")),
        sigma_(params.number("sigma")),
        T_(params.number("T")),
        offers_flow_map_(params.flag("flow_map")),
        offers_weights_(params.flag("objective_weights")),
        alpha_L_(params.number("alpha_L")),
        alpha_C_(params.number("alpha_C")),
        generator_(ctx.generator),
        options_(ctx.options()) {
    if (d_ < 1) throw Error("mfg_test_model needs the data dimension");
    perturb_ = torch::full({}, params.number("perturb"), options_).requires_grad_();
    auto w = params.numbers("w");
    if (w.size() == 1) w.assign(d_, w[0]);
    if (static_cast<int64_t>(w.size()) != d_) throw Error("w must have 1 or d entries");
    w_ = torch::tensor(w, torch::kFloat64).to(options_);
    auto A = params.numbers("A");
    if (velocity_ == "linear" && static_cast<int64_t>(A.size()) != d_ * d_)
      throw Error("velocity linear needs A with d * d entries (row-major)");
    if (velocity_ == "linear") A_ = torch::tensor(A, torch::kFloat64).reshape({d_, d_}).to(options_);
  }

  void* capability(const char* id) override {
    if (offers_flow_map_ && std::strcmp(id, mfglab::kFlowMap) == 0) return static_cast<mfglab::FlowMap*>(this);
    if (offers_weights_ && std::strcmp(id, mfglab::kObjectiveWeights) == 0)
      return static_cast<mfglab::ObjectiveWeights*>(this);
    return nullptr;
  }
  double running_cost_weight() const override { return alpha_L_; }
  double terminal_cost_weight() const override { return alpha_C_; }

  std::vector<Tensor> parameters() override { return {perturb_}; }
  mfglab::LossTerms loss(const Tensor&) override { return {{"zero", perturb_ * 0}}; }
  Tensor sample(int64_t n) override { return torch::randn({n, d_}, generator_, options_); }

  Tensor value(const Tensor& x, const Tensor& t_in) override {
    auto t = t_in.reshape({-1, 1});
    auto sq = x.square().sum(1, true);
    auto U = viscous_ ? -k_ * lambda_ * sq + sigma_ * sigma_ * k_ * lambda_ * static_cast<double>(d_) * t
                      : -lambda_ * sq / (2 * (c_ + t));
    return (U + perturb_ * torch::sin(x.sum(1, true) + t)).squeeze(1);
  }

  Tensor velocity(const Tensor& x, const Tensor& t_in) override {
    auto t = t_in.reshape({-1, 1});
    if (velocity_ == "constant") return w_.expand_as(x);
    if (velocity_ == "linear") return torch::matmul(x, A_.t());
    auto v = viscous_ ? 2 * k_ * x : x / (c_ + t);
    return v - (perturb_ / lambda_) * torch::cos(x.sum(1, true) + t);
  }

  double horizon() const override { return T_; }
  Tensor drift(const Tensor& x, const Tensor&) override { return viscous_ ? -k_ * x : torch::zeros_like(x); }
  Tensor diffusion(const Tensor& t) override { return torch::full({t.numel(), 1}, viscous_ ? sigma_ : 0.0, options_); }

  mfglab::Collocation collocation(const Tensor& batch) override {
    torch::NoGradGuard no_grad;
    auto t = torch::empty({batch.size(0), 1}, options_).uniform_(0.0, T_, generator_);
    if (viscous_ && velocity_ == "optimal") {
      auto z = torch::randn(batch.sizes(), generator_, options_);
      auto spread = torch::sqrt(torch::expm1(2 * k_ * t) / (2 * k_));
      return {torch::exp(k_ * t) * batch + sigma_ * spread * z, t};
    }
    return {map(batch, torch::zeros_like(t), t), t};
  }

  Tensor log_prob(const Tensor& x0) override {
    if (viscous_ && velocity_ == "optimal") throw Error("the viscous model has no log_prob");
    auto n = x0.size(0);
    auto zero = torch::zeros({n, 1}, options_), T = torch::full({n, 1}, T_, options_);
    auto y = map(x0, zero, T);
    double log_det = 0;
    if (velocity_ == "optimal") log_det = static_cast<double>(d_) * std::log((c_ + T_) / c_);
    if (velocity_ == "linear") log_det = A_.trace().item<double>() * T_;
    return -0.5 * y.square().sum(1) - 0.5 * static_cast<double>(d_) * kLog2Pi + log_det;
  }

  Tensor transport(const Tensor& x, double t0, double t1) override {
    auto n = x.size(0);
    return map(x, torch::full({n, 1}, t0, options_), torch::full({n, 1}, t1, options_)).detach();
  }

 private:
  // The deterministic flow from times t0 to t1 ([N, 1] each) of the unperturbed field.
  Tensor map(const Tensor& x, const Tensor& t0, const Tensor& t1) {
    if (velocity_ == "constant") return x + (t1 - t0) * w_;
    if (velocity_ == "linear") {
      auto M = torch::matrix_exp(A_.unsqueeze(0) * (t1 - t0).reshape({-1, 1, 1}));  // [N, d, d]
      return torch::bmm(M, x.unsqueeze(2)).squeeze(2);
    }
    if (viscous_) throw Error("the viscous model is not a deterministic flow");
    return x * (c_ + t1) / (c_ + t0);
  }

  int64_t d_;
  bool viscous_;
  std::string velocity_;
  double lambda_, c_, k_, sigma_, T_;
  bool offers_flow_map_, offers_weights_;
  double alpha_L_, alpha_C_;
  torch::Generator generator_;
  torch::TensorOptions options_;
  Tensor perturb_, w_, A_;
};

}  // namespace

MFGLAB_PLUGIN(MfgTestModel, MFGLAB_KIND_MODEL, "mfg_test_model", "1.0.0",
              "Closed-form HJB solutions (inviscid, viscous) with velocity, paths, flow map and log_prob (test plugin)",
              "value,velocity,log_prob,collocation",
              mfglab::choice_param("solution", "inviscid", "inviscid|viscous", "which closed-form value function"),
              mfglab::choice_param("velocity", "optimal", "optimal|constant|linear",
                                   "v = -grad U / lambda, v = w, or v = A x"),
              mfglab::number_param("lambda", 1.0, "U solves the HJB of H = |p|^2/(2 lambda)").above(0),
              mfglab::number_param("c", 1.0, "inviscid: U = -lambda |x|^2 / (2 (c + t))").above(0),
              mfglab::number_param("k", 0.5, "viscous: drift -k x").above(0),
              mfglab::number_param("sigma", 0.8, "viscous: diffusion").at_least(0),
              mfglab::number_param("T", 1.0, "horizon").above(0),
              mfglab::number_param("perturb", 0.0, "adds perturb * sin(sum x + t) to U"),
              mfglab::numbers_param("w", {1.0}, "constant velocity (1 or d entries)"),
              mfglab::numbers_param("A", {0.0}, "linear velocity matrix, d * d entries row-major"),
              mfglab::bool_param("flow_map", true, "offer the mfglab.flow_map/1 capability"),
              mfglab::bool_param("objective_weights", false, "offer mfglab.objective_weights/1 with alpha_L, alpha_C"),
              mfglab::number_param("alpha_L", 1.0, "running cost weight reported by objective_weights").at_least(0),
              mfglab::number_param("alpha_C", 1.0, "terminal cost weight reported by objective_weights").at_least(0))
