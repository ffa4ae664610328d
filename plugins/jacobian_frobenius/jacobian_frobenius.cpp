// RNODE's Jacobian regularizer (Finlay et al. 2020): the path integral of the squared
// Frobenius norm of the velocity's Jacobian,
//
//   E[ int_0^T |dv/dx (X_t, t)|_F^2 dt ]  ~  T * mean_i mean_k |eps_k^T dv/dx (x_i, t_i)|^2,
//
// at the model's collocation points (times uniform on [0, T]) with Gaussian probes eps_k ~
// N(0, I) from the run's generator: E|eps^T J|^2 = tr(J J^T) = |J|_F^2, one backward pass per
// probe. When the points carry a graph (paths that depend on the parameters: otflow's and
// cnf's collocation points) it is kept, so the gradient flows through the paths as in
// RNODE's augmented ODE (the penalty integrated along the flow's own solve).
#include <string>

#include <mfglab/plugin.h>

namespace {

using mfglab::Error;
using torch::Tensor;

const auto kProbes =
    mfglab::int_param("probes", 1, "Gaussian probes per point for the Hutchinson estimate").at_least(1);

class JacobianFrobenius final : public mfglab::Regularizer {
 public:
  JacobianFrobenius(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : probes_(params[kProbes]), generator_(ctx.generator) {
    if (probes_ < 1) throw Error("probes must be at least 1, got " + std::to_string(probes_));
  }

  Tensor penalty(mfglab::Model& model, const Tensor& batch) override {
    if (batch.dim() != 2) throw Error("expected a data batch of shape [N, d]");
    auto c = model.collocation(batch);
    // Derivatives w.r.t. x need x in the graph: a point that does not require grad becomes
    // a fresh leaf; one that does (a path) is differentiated through as it is.
    auto x = c.x.requires_grad() ? c.x : c.x.detach().requires_grad_();
    auto v = model.velocity(x, c.t);
    if (v.sizes() != x.sizes()) throw Error("the model's velocity does not have the shape of its points");
    Tensor total = torch::zeros({x.size(0)}, x.options());
    if (v.requires_grad()) {  // otherwise v is constant in x and its Jacobian is zero
      for (int64_t k = 0; k < probes_; ++k) {
        auto eps = torch::randn(x.sizes(), generator_, x.options());
        auto eJ = torch::autograd::grad({v}, {x}, {eps}, /*retain_graph=*/true, /*create_graph=*/true,
                                        /*allow_unused=*/true)[0];
        if (eJ.defined()) total = total + eJ.square().sum(1);
      }
    }
    return model.horizon() * total.mean() / static_cast<double>(probes_);
  }

 private:
  int64_t probes_;
  torch::Generator generator_;  // shares the run generator's state
};

}  // namespace

MFGLAB_PLUGIN(JacobianFrobenius, MFGLAB_KIND_REGULARIZER, "jacobian_frobenius", "1.0.0",
              "RNODE's int_0^T |dv/dx|_F^2 dt = horizon * mean |eps^T dv/dx|^2 at the model's collocation points, "
              "Gaussian probes eps",
              "velocity,collocation", kProbes)
