// Terminal condition of the HJB equation for a flow whose terminal cost is
// G(rho_T) = KL(rho_T, N(0, I)) (CNF, OT-Flow, RNODE; DESIGN.md section 2):
//
//   U(y, T) = dG/drho(rho_T)(y) = 1 + log rho_T(y) - log N(y),   rho_T the flow's pushforward of the data.
//
// Weighted objectives. A model that trains on alpha_L int L + alpha_C G and normalises its
// value by the running cost (v = -dH/dp(grad Phi); otflow) says so with the
// mfglab.objective_weights/1 capability (<mfglab/capabilities_mfg.h>): its value field is
// Phi = U / alpha_L, whose terminal condition is
//
//   Phi(y, T) = (alpha_C / alpha_L) (1 + log rho_T(y) - log N(y)),
//
// (100 times the unweighted one at OT-Flow's default weights alpha_L = 1, alpha_C = 100).
// The target below is scaled by alpha_C / alpha_L; a model without the capability has
// weights (1, 1). alpha_L = 0 leaves no value field to compare and is refused.
//
// How log rho_T is obtained. For a data point x0 pushed to y = Phi(x0) (the model's
// mfglab.flow_map/1 capability), the change of variables gives
//   log rho_T(y) = log rho_0(x0) - int_0^T div v dt,
// and a flow model's log_prob is log p(x0) = log N(y) + int_0^T div v dt (true for otflow,
// whose log_prob integrates the same ODE), so the target is
//   1 + log rho_0(x0) - log_prob(x0),
// which needs no flow internals. The data density rho_0:
//   exact  the run's dataset's exact density (mfglab.exact_density/1, e.g. gmm); required;
//   model  log_prob itself stands for rho_0, i.e. the model is taken to push the data onto
//          N(0, I): the target is the constant 1 and the penalty asks for a flat U(., T) (the
//          condition at the optimum), for data without a known density;
//   auto   exact when the dataset offers it, else model.
// The target is detached: this term trains U towards the terminal condition of the current
// flow, not the flow towards U.
//
// A value function is defined up to an additive constant (only grad U and U_t enter the
// dynamics and the HJB), so the mismatch m = U(y, T) - target is compared after removing
// its batch mean: the penalty is mean |m - mean(m)|^q.
#include <cmath>
#include <cstring>
#include <string>

#include <mfglab/capabilities_mfg.h>
#include <mfglab/plugin.h>

namespace {

using mfglab::Error;
using torch::Tensor;

const auto kQ = mfglab::int_param("q", 2, "exponent of the penalty mean |m - mean m|^q (1 or 2)").range(1, 2);
const auto kDataDensity = mfglab::choice_param("data_density", "auto", "auto|exact|model",
                                               "log rho_0 of the data: exact = the dataset's exact density (required), "
                                               "model = the model's log_prob (target 1: a flat terminal value), auto = "
                                               "exact when the dataset has one");

class HjbTerminal final : public mfglab::Regularizer {
 public:
  HjbTerminal(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : q_(params[kQ]), mode_(params[kDataDensity]) {
    if (q_ != 1 && q_ != 2) throw Error("q must be 1 or 2, got " + std::to_string(q_));
    if (mode_ != "auto" && mode_ != "exact" && mode_ != "model")
      throw Error("data_density must be auto, exact or model, got '" + mode_ + "'");
    density_ = mfglab::capability<mfglab::ExactDensity>(ctx.dataset, mfglab::kExactDensity);
    if (mode_ == "exact" && density_ == nullptr)
      throw Error("data_density = exact needs a dataset with an exact density (mfglab.exact_density/1, e.g. "
                  "gmm); use auto or model for other data");
    if (mode_ == "model") density_ = nullptr;
  }

  Tensor penalty(mfglab::Model& model, const Tensor& batch) override {
    if (batch.dim() != 2) throw Error("expected a data batch of shape [N, d]");
    auto* flow = mfglab::capability<mfglab::FlowMap>(&model, mfglab::kFlowMap);
    if (flow == nullptr)
      throw Error("hjb_terminal needs a deterministic flow with the mfglab.flow_map/1 capability "
                  "(its terminal points x(T)); this model does not offer it");
    const auto weights = mfglab::objective_weights(&model);
    if (!(weights.running > 0) || !std::isfinite(weights.running) || !(weights.terminal >= 0) ||
        !std::isfinite(weights.terminal))
      throw Error("hjb_terminal needs objective weights alpha_L > 0 and alpha_C >= 0 (the value field is U / "
                  "alpha_L), got alpha_L = " + std::to_string(weights.running) +
                  ", alpha_C = " + std::to_string(weights.terminal) + " from the model's " +
                  mfglab::kObjectiveWeights + " capability");
    const double scale = weights.terminal / weights.running;  // alpha_C / alpha_L
    const double T = model.horizon();
    const int64_t n = batch.size(0);
    auto x0 = batch.detach();
    Tensor target;
    {
      torch::NoGradGuard no_grad;
      if (density_ != nullptr) {
        auto one = torch::ones({1}, x0.options()), zero = torch::zeros({1}, x0.options());
        target = 1.0 + density_->log_density(x0, one, zero).to(x0.options()).reshape({n}) -
                 model.log_prob(x0).reshape({n});
      } else {
        target = torch::ones({n}, x0.options());
      }
      target = scale * target;
    }
    auto y = flow->transport(x0, 0.0, T).detach();
    auto U = model.value(y, torch::full({n, 1}, T, y.options())).reshape({n});
    auto m = U - target;
    m = m - m.mean();  // the value function's additive constant
    return q_ == 1 ? m.abs().mean() : m.square().mean();
  }

 private:
  int64_t q_;
  std::string mode_;
  mfglab::ExactDensity* density_ = nullptr;  // the dataset's, not owned; null: model mode
};

}  // namespace

MFGLAB_PLUGIN(HjbTerminal, MFGLAB_KIND_REGULARIZER, "hjb_terminal", "1.0.0",
              "Terminal HJB condition for G = KL(rho_T, N(0,I)): mean |m - mean m|^q, m = U(x(T), T) - (alpha_C / alpha_L) "
              "(1 + log rho_0(x0) - log_prob(x0)) = U - (alpha_C / alpha_L)(1 + log rho_T - log N) by change of "
              "variables; alpha_L, alpha_C the model's objective weights (mfglab.objective_weights/1, else 1); x(T) "
              "from the model's flow map; rho_0 the dataset's exact density, or taken as the model's (then target "
              "constant)",
              "value,log_prob", kQ, kDataDensity)
