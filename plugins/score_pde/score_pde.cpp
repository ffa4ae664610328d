// Score-PDE ("HJB") regularizer for score-based models: the residual of the PDE that the
// score of a forward-noised density satisfies, evaluated on the model's own score network.
//
// Conventions (DESIGN.md section 2). Time t runs in the direction of the forward noising
// process dY = f(Y, t) dt + g(t) dW, data at t = 0; f = model.drift(x, t), g =
// model.diffusion(t). rho_t is the law of Y_t and s = grad log rho_t = model.score(x, t).
// J_ij = d_i s_j (row i: derivative direction, column j: score component), so
// (J v)_i = sum_j d_i s_j v_j. The Fokker-Planck equation for rho, written for
// u = log rho and differentiated in x, gives
//
//   s_t = -grad(div f) - grad(f.s) + g^2/2 (Lap s + 2 J s),   grad(f.s) = (Df)^T s + J f,
//
// with (Df)^T s the vector sum_j d_i f_j s_j. The penalty is the batch mean of |r|_1 (norm
// l1, as the authors and ../shared/ref/sgm_ref.py do) or of |r|_2^2 (norm l2), where
// r = s_t - rhs, summed over the d components of each point.
//
// Form "grad" replaces Lap s by grad(div s). For a true score J = Hess(log rho) is
// symmetric, so sum_i d_i d_i s_j = sum_i d_i d_j s_i = d_j (div s): both forms agree on
// every gradient field and differ only on the non-gradient part of a learned s. (2 J s =
// grad |s|^2 holds for any s.) The grad form needs one backward pass for grad(div s)
// instead of d^2 for the Laplacian.
//
// The score's derivatives come from the model's "mfglab.score_derivatives/2" capability
// when it offers the form's second-order term (sgm: one fused forward sweep of jets, for
// either form), else "/1" (form lap), else from reverse-mode autograd with create_graph; either way the penalty's parameter gradient flows through
// all the derivatives. The residual itself is mfglab/score_pde.h, shared with the models'
// "mfglab.hjb_residual/1". The drift's derivatives are taken by autograd (cheap: its graph
// is tiny), so any model drift works, not only the linear VP one.
#include <cstring>
#include <string>
#include <vector>

#include <mfglab/plugin.h>
#include <mfglab/score_pde.h>

namespace {

using mfglab::Error;
using torch::Tensor;
namespace pde = mfglab::score_pde;

// The parameters, declared once: the manifest lists them, the constructor reads them back.
enum class Norm { l1, l2 };
enum class Points { data, box };
const auto kNorm = mfglab::choice_param("norm", Norm::l1, mfglab::Choices<Norm>{{"l1", Norm::l1}, {"l2", Norm::l2}},
                                        "l1: batch mean of |r|_1; l2: batch mean of |r|_2^2");
const auto kPoints = mfglab::choice_param("points", Points::data,
                                          mfglab::Choices<Points>{{"data", Points::data}, {"box", Points::box}},
                                          "data: the model's forward-noised training points (collocation); "
                                          "box: uniform in [-box, box]^d x U(t_min, horizon)");
const auto kForm = mfglab::choice_param(
    "form", pde::SecondOrder::laplacian,
    mfglab::Choices<pde::SecondOrder>{{"lap", pde::SecondOrder::laplacian}, {"grad", pde::SecondOrder::grad_div}},
    "lap: Lap s + 2 J s as written; grad: grad(div s) + grad|s|^2, equal for a true score and one backward pass "
    "instead of d^2");
const auto kBox = mfglab::number_param("box", 4.0, "half-width of the box for points = box").above(0);

class ScorePde final : public mfglab::Regularizer {
 public:
  ScorePde(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : norm_(params[kNorm]), points_(params[kPoints]), form_(params[kForm]), box_(params[kBox]), generator_(ctx.generator) {}

  torch::Tensor penalty(mfglab::Model& model, const torch::Tensor& batch) override {
    auto [x, t] = points(model, batch);
    auto r = residual(model, x, t);
    return norm_ == Norm::l1 ? r.abs().sum(1).mean() : r.square().sum(1).mean();
  }

 private:
  // Collocation points: the model's forward-noised training points, or uniform in a box.
  std::pair<Tensor, Tensor> points(mfglab::Model& model, const Tensor& batch) {
    if (points_ == Points::data) {
      auto c = model.collocation(batch);
      return {c.x, c.t};
    }
    const int64_t n = batch.size(0), d = batch.size(1);
    // The smallest time comes from the model's forward process when it has one (the score
    // of a VP model is singular at t = 0).
    auto* fp = mfglab::capability<mfglab::ForwardProcess>(&model, mfglab::kForwardProcess);
    const double t_min = fp ? fp->t_min() : 0.0;
    auto opts = batch.options();
    auto x = torch::empty({n, d}, opts).uniform_(-box_, box_, generator_);
    auto t = torch::empty({n, 1}, opts).uniform_(t_min, model.horizon(), generator_);
    return {x, t};
  }

  // r = s_t - rhs at the points (x [N, d], t [N, 1]), [N, d].
  Tensor residual(mfglab::Model& model, const Tensor& x, const Tensor& t) {
    return pde::residual(model, x, t, pde::derivatives(model, x, t, form_));
  }

  Norm norm_;
  Points points_;
  pde::SecondOrder form_;
  double box_;
  torch::Generator generator_;  // shares the run generator's state
};

}  // namespace

MFGLAB_PLUGIN(ScorePde, MFGLAB_KIND_REGULARIZER, "score_pde", "1.1.0",
              "Score-PDE (HJB) residual s_t + grad(div f) + grad(f.s) - g^2/2 (Lap s + 2 J s) of the model's score",
              "score,collocation(points=data)",
              kNorm, kPoints, kForm, kBox)
