// Kinetic (transport) cost of the flow: the path integral of the running cost,
//
//   E[ int_0^T L(X_t, v(X_t, t)) dt ]  ~  T * mean_i L(x_i, v(x_i, t_i)),
//
// at the model's collocation points (x_i, t_i): points on its particle paths with times
// uniform on [0, T] (that is what makes T * mean an unbiased estimate; otflow's collocation
// draws them so). L is the running cost of the experiment's Hamiltonian, or lambda/2 |v|^2
// when the experiment has none. The points are not detached: the parameter gradient flows
// through the paths as well as through v, as it does for the integral itself (RNODE's
// kinetic penalty, integrated along the flow's own solve). Models whose collocation points
// keep their graph to the parameters (otflow, cnf) get that full gradient; a model that
// detaches its points gets the gradient through v alone.
#include <string>

#include <mfglab/plugin.h>

namespace {

using mfglab::Error;
using torch::Tensor;

const auto kLambda = mfglab::number_param("lambda", 1.0,
                                          "lambda of the running cost lambda/2 |v|^2 used when the experiment has no "
                                          "Hamiltonian")
                         .above(0);

class Kinetic final : public mfglab::Regularizer {
 public:
  Kinetic(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : lambda_(params[kLambda]), H_(ctx.hamiltonian) {
    if (!(lambda_ > 0)) throw Error("lambda must be > 0, got " + std::to_string(lambda_));
  }

  Tensor penalty(mfglab::Model& model, const Tensor& batch) override {
    if (batch.dim() != 2) throw Error("expected a data batch of shape [N, d]");
    auto c = model.collocation(batch);
    auto v = model.velocity(c.x, c.t);
    if (v.sizes() != c.x.sizes()) throw Error("the model's velocity does not have the shape of its points");
    auto L = H_ ? H_->running_cost(c.x, v) : 0.5 * lambda_ * v.square().sum(1);
    return model.horizon() * L.mean();
  }

 private:
  double lambda_;
  mfglab::Hamiltonian* H_;  // the experiment's, not owned; null: quadratic with lambda_
};

}  // namespace

MFGLAB_PLUGIN(Kinetic, MFGLAB_KIND_REGULARIZER, "kinetic", "1.0.0",
              "Transport cost int_0^T E L(x, v(x, t)) dt = horizon * mean L at the model's collocation points "
              "(L: the experiment's running cost, else lambda/2 |v|^2)",
              "velocity,collocation", kLambda)
