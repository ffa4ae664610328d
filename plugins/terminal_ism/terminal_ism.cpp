// Implicit score matching (Hyvarinen 2005) of the model's score at the data end of the
// noising process: the batch mean of 1/2 |s(x, t0)|^2 + div s(x, t0) over the data batch.
// Up to a constant independent of the model it equals 1/2 E|s - grad log p_data|^2, and it
// is the terminal cost of the score-based MFG (DESIGN.md section 2): the authors' HJB-SGM
// trains with it at t0 = 0 beside the score-PDE residual.
//
// The divergence is exact (d backward passes) up to `exact_up_to` dimensions, beyond that a
// Hutchinson estimate with Rademacher probes drawn from the run's generator (unbiased; exact
// whenever the Jacobian is diagonal, because eps_i^2 = 1).
#include <string>
#include <vector>

#include <mfglab/plugin.h>

namespace {

using mfglab::Error;
using torch::Tensor;

const auto kT = mfglab::number_param("t", 0.0,
                                     "time of the score; 0 = the model's t_min (forward_process capability), or 0 "
                                     "when the model has none")
                    .at_least(0);
const auto kExactUpTo =
    mfglab::int_param("exact_up_to", 4, "largest dimension with the exact divergence; Hutchinson beyond").at_least(0);
const auto kProbes =
    mfglab::int_param("probes", 1, "Rademacher probes per point for the Hutchinson estimate").at_least(1);

class TerminalIsm final : public mfglab::Regularizer {
 public:
  TerminalIsm(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : time_(params[kT]),
        exact_up_to_(params[kExactUpTo]),
        probes_(params[kProbes]),
        generator_(ctx.generator) {}

  torch::Tensor penalty(mfglab::Model& model, const torch::Tensor& batch) override {
    if (batch.dim() != 2) throw Error("expected a data batch of shape [N, d]");
    const int64_t n = batch.size(0), d = batch.size(1);
    auto x = batch.detach().clone().requires_grad_();
    auto t = torch::full({n, 1}, start_time(model), batch.options());
    auto s = model.score(x, t);
    if (s.sizes() != x.sizes()) throw Error("the model's score does not have the batch's shape");

    Tensor div;
    if (d <= exact_up_to_) {
      div = mfglab::nn::divergence(s, x);
    } else {
      for (int64_t k = 0; k < probes_; ++k) {
        // Rademacher: +-1 with probability 1/2 each.
        auto eps = torch::empty_like(x).bernoulli_(0.5, generator_).mul_(2).sub_(1);
        auto est = mfglab::nn::divergence_hutchinson(s, x, eps);
        div = k == 0 ? est : div + est;
      }
      div = div / static_cast<double>(probes_);
    }
    return (0.5 * s.square().sum(1) + div).mean();
  }

 private:
  // t = 0 in the parameters means "the model's smallest time": the score of a VP model is
  // singular at exactly 0, so its forward process's t_min stands for the data end.
  double start_time(mfglab::Model& model) const {
    if (time_ > 0) return time_;
    auto* fp = mfglab::capability<mfglab::ForwardProcess>(&model, mfglab::kForwardProcess);
    return fp ? fp->t_min() : 0.0;
  }

  double time_;
  int64_t exact_up_to_, probes_;
  torch::Generator generator_;  // shares the run generator's state
};

}  // namespace

MFGLAB_PLUGIN(TerminalIsm, MFGLAB_KIND_REGULARIZER, "terminal_ism", "1.0.0",
              "Implicit score matching mean(1/2 |s|^2 + div s) of the model's score on the data batch at t = t_min",
              "score", kT, kExactUpTo, kProbes)
