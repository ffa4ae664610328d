// HJB regularizer: the batch mean of |r|^q for the residual r of the model's value function
// in one of the two equations of <mfglab/hjb.h> (DESIGN.md section 2):
//
//   equation mfg:          r = -U_t + H(x, grad U) - b.grad U - sigma^2/2 Lap U
//                          (the HJB equation with F = 0; U = model.value, b = model.drift,
//                          sigma = model.diffusion, H = the experiment's Hamiltonian, or the
//                          quadratic one with `lambda` when the experiment has none);
//   equation log_density:  r = u_t + div f + f.grad u - g^2/2 (Lap u + |grad u|^2)
//                          (u = model.value read as log rho_t of the forward noising process
//                          dY = f dt + g dW, data at t = 0: the potential form of the score
//                          PDE that score_pde enforces on s = grad u). u must be log rho_t
//                          itself, not only up to a function of t: u_t enters, so a
//                          potential network also learns the normalisation's t-dependence.
//
// equation mfg is refused for a score model of a forward noising process (a model offering
// mfglab.forward_process/1, such as sgm): its drift() is the noising drift, not the game's,
// and nothing satisfies that equation; the error names log_density.
//
// Points: the model's collocation points (on its particle paths, or its forward-noised
// training points for a score model), or uniform in a box. Derivatives are autograd with
// create_graph; the Laplacian is exact up to `exact_up_to` dimensions, Hutchinson beyond.
#include <string>

#include <mfglab/hjb.h>
#include <mfglab/plugin.h>

namespace {

using mfglab::Error;
using torch::Tensor;

// The parameters, declared once: the manifest lists them, the constructor reads them back.
enum class Equation { mfg, log_density };
enum class Points { paths, box };
const auto kEquation = mfglab::choice_param(
    "equation", Equation::mfg, mfglab::Choices<Equation>{{"mfg", Equation::mfg}, {"log_density", Equation::log_density}},
    "mfg: the HJB equation of the experiment's Hamiltonian (refused for score models of a forward process, e.g. "
    "sgm); log_density: the Fokker-Planck equation of log rho_t of the model's forward noising process");
const auto kQ = mfglab::int_param("q", 1, "exponent of the penalty mean |r|^q (1 or 2)").range(1, 2);
const auto kPoints = mfglab::choice_param("points", Points::paths,
                                          mfglab::Choices<Points>{{"paths", Points::paths}, {"box", Points::box}},
                                          "paths: the model's collocation points; box: uniform in [-box, box]^d x "
                                          "U(t_min, horizon), t_min from the forward process or 0");
const auto kBox = mfglab::number_param("box", 4.0, "half-width of the box for points = box").above(0);
const auto kLambda = mfglab::number_param("lambda", 1.0,
                                          "lambda of the quadratic H = |p|^2/(2 lambda) used when the experiment has "
                                          "no Hamiltonian")
                         .above(0);
const auto kExactUpTo =
    mfglab::int_param("exact_up_to", 4, "largest dimension with the exact Laplacian; Hutchinson beyond").at_least(0);
const auto kProbes = mfglab::int_param("probes", 1, "Rademacher probes per point for the Hutchinson estimate").at_least(1);

// The quadratic Hamiltonian |p|^2 / (2 lambda), used when the experiment has none.
class QuadraticFallback final : public mfglab::Hamiltonian {
 public:
  explicit QuadraticFallback(double lambda) : lambda_(lambda) {}
  Tensor hamiltonian(const Tensor&, const Tensor& p) override { return p.square().sum(1) / (2 * lambda_); }
  Tensor optimal_control(const Tensor&, const Tensor& p) override { return -p / lambda_; }
  Tensor running_cost(const Tensor&, const Tensor& v) override { return 0.5 * lambda_ * v.square().sum(1); }

 private:
  double lambda_;
};

class Hjb final : public mfglab::Regularizer {
 public:
  Hjb(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : equation_(params[kEquation]),
        points_(params[kPoints]),
        q_(params[kQ]),
        box_(params[kBox]),
        fallback_(params[kLambda]),
        H_(ctx.hamiltonian ? ctx.hamiltonian : &fallback_),
        generator_(ctx.generator) {
    // The host enforces the declared bounds; repeated because these would fail silently.
    if (q_ != 1 && q_ != 2) throw Error("q must be 1 or 2, got " + std::to_string(q_));
    if (!(params[kLambda] > 0)) throw Error("lambda must be > 0");
    trace_.exact_up_to = params[kExactUpTo];
    trace_.probes = params[kProbes];
    trace_.generator = generator_;
  }

  Tensor penalty(mfglab::Model& model, const Tensor& batch) override {
    if (batch.dim() != 2) throw Error("expected a data batch of shape [N, d]");
    if (equation_ == Equation::mfg) refuse_forward_process(model);
    auto [x, t] = points(model, batch);
    auto r = equation_ == Equation::mfg ? mfglab::hjb::residual(model, H_, x, t, true, trace_)
                                        : mfglab::hjb::log_density_residual(model, x, t, true, trace_);
    return q_ == 1 ? r.abs().mean() : r.square().mean();
  }

 private:
  // A score model of a forward noising process (mfglab.forward_process/1: sgm, score
  // models) reports the forward drift f and diffusion g as drift() and diffusion(): the
  // equation -U_t + H(grad U) - f.grad U - g^2/2 Lap U = 0 with the noising drift is the
  // HJB of no game (the generative game's drift is the reversed one) and its log-density
  // value u = log rho_t does not satisfy it. Refused, naming the equation that applies.
  // (The regularizer meets its model only here: the run context does not hold it.)
  static void refuse_forward_process(mfglab::Model& model) {
    if (mfglab::capability<mfglab::ForwardProcess>(&model, mfglab::kForwardProcess) == nullptr) return;
    throw Error("hjb: equation \"mfg\" does not apply to this model: it is a score model of a forward noising "
                "process (it offers " + std::string(mfglab::kForwardProcess) + "), so its drift and diffusion are "
                "the forward process's f and g, not the generative game's, and no value function satisfies "
                "-U_t + H(grad U) - f.grad U - g^2/2 Lap U = 0; use \"equation\": \"log_density\" (u = log rho_t "
                "of the forward process: u_t + div f + f.grad u - g^2/2 (Lap u + |grad u|^2) = 0), or the "
                "score_pde regularizer for a score network");
  }

  std::pair<Tensor, Tensor> points(mfglab::Model& model, const Tensor& batch) {
    if (points_ == Points::paths) {
      // The residual detaches its points, so the paths need no graph.
      torch::NoGradGuard no_grad;
      auto c = model.collocation(batch);
      return {c.x, c.t};
    }
    // Times from the model's forward process when it has one: a log-density (score) is
    // singular at t = 0 for VP models.
    auto* fp = mfglab::capability<mfglab::ForwardProcess>(&model, mfglab::kForwardProcess);
    const double t_min = fp ? fp->t_min() : 0.0;
    const int64_t n = batch.size(0), d = batch.size(1);
    auto x = torch::empty({n, d}, batch.options()).uniform_(-box_, box_, generator_);
    auto t = torch::empty({n, 1}, batch.options()).uniform_(t_min, model.horizon(), generator_);
    return {x, t};
  }

  Equation equation_;
  Points points_;
  int64_t q_;
  double box_;
  QuadraticFallback fallback_;
  mfglab::Hamiltonian* H_;  // the experiment's (not owned), or fallback_
  torch::Generator generator_;  // shares the run generator's state
  mfglab::hjb::TraceOptions trace_;
};

}  // namespace

MFGLAB_PLUGIN(Hjb, MFGLAB_KIND_REGULARIZER, "hjb", "1.0.0",
              "HJB residual mean |r|^q of the model's value U: mfg r = -U_t + H(x, grad U) - b.grad U - "
              "sigma^2/2 Lap U (H: the experiment's, else quadratic with lambda); log_density r = u_t + div f + "
              "f.grad u - g^2/2 (Lap u + |grad u|^2) for u = log rho_t of the forward process",
              "value,collocation(points=paths)",
              kEquation, kQ, kPoints, kBox, kLambda, kExactUpTo, kProbes)
