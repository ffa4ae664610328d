// Error of a model's score against the exact score of the noised data law.
//
// The model's forward process ("mfglab.forward_process/1") gives X_t = alpha(t) X_0 +
// sigma(t) Z, and the dataset's exact density ("mfglab.exact_density/1") the score of that
// law in closed form. The probe times are `times` read in `time_unit`: fractions of the
// model's horizon t_max (the forward process's, e.g. 3 for an OU process run to T = 3; the
// default, so that the default times span the whole process whatever its horizon), or
// absolute times; either way each must land in the model's [t_min, t_max]. For each time t,
// with x_t = alpha(t) x_0 + sigma(t) z, x_0 drawn uniformly with replacement from the
// reference (held-out) set and z ~ N(0, I), `points` draws each (names carry the absolute t):
//   score_error@t=<t> = mean |s_model(x_t, t) - s_exact(x_t, t)|²
//   score_error       = (1/(t_K - t_1)) Σ_k (t_{k+1} - t_k)(e_k + e_{k+1})/2
//                       over the times sorted, the trapezoid rule for the time average of
//                       the error on [t_1, t_K] (just e_1 for a single time)
//   score_rel_error   = (1/K) Σ_k mean |s_model - s_exact|² / mean |s_exact|²
#include <mfglab/plugin.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

using mfglab::Error;
using torch::Tensor;

constexpr int64_t kBatch = 1000;  // points per score call: bounds the memory of a model's graph

const auto kTimes = mfglab::numbers_param("times", {0.01, 0.1, 0.3, 0.5, 0.9},
                                          "diffusion times, in time_unit; each must land within the model's "
                                          "[t_min, t_max]")
                        .above(0);
const auto kTimeUnit = mfglab::choice_param("time_unit", "horizon", "horizon|absolute",
                                            "horizon: times are fractions of the model's horizon t_max (0.9 of an "
                                            "OU process run to T = 3 is t = 2.7); absolute: times as given");
const auto kPoints = mfglab::int_param("points", 2000, "noised points drawn at each time").at_least(1);

std::string show(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

class ScoreError final : public mfglab::Metric {
 public:
  ScoreError(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : given_(params[kTimes]),
        relative_(params[kTimeUnit] == "horizon"),
        points_(params[kPoints]),
        generator_(ctx.generator),  // shares the run generator's state
        options_(ctx.options()) {
    if (points_ < 1) throw Error("points must be at least 1");
    const std::string unit = params[kTimeUnit];
    if (unit != "horizon" && unit != "absolute")
      throw Error("time_unit must be horizon or absolute, got '" + unit + "'");
    std::set<std::string> names;
    for (double t : given_) {
      if (!(t > 0) || !std::isfinite(t)) throw Error("times: every time must be > 0, got " + show(t));
      if (relative_ && t > 1)
        throw Error("times: with time_unit = horizon every time is a fraction of the horizon in (0, 1], got " +
                    show(t) + " (use time_unit = absolute for absolute times)");
      if (!names.insert(show(t)).second)
        throw Error("times: " + show(t) + " is given twice (each time reports its own value)");
    }
  }

  mfglab::MetricValues evaluate(const mfglab::MetricInput& in) override {
    if (in.model == nullptr)
      throw Error("score_error needs the model's score, but there is no model here (it cannot "
                  "be computed from sample files: use it in an experiment's eval metrics)");
    auto* exact = mfglab::capability<mfglab::ExactDensity>(in.dataset, mfglab::kExactDensity);
    if (exact == nullptr)
      throw Error("score_error needs a dataset with an exact score (such as gmm); the dataset "
                  "has none (no \"" + std::string(mfglab::kExactDensity) + "\" capability)");
    auto* process = mfglab::capability<mfglab::ForwardProcess>(in.model, mfglab::kForwardProcess);
    if (process == nullptr)
      throw Error("score_error needs a model with a forward noising process (such as sgm); the "
                  "model has none (no \"" + std::string(mfglab::kForwardProcess) + "\" capability)");
    if (!in.reference.defined() || in.reference.dim() != 2 || in.reference.size(0) == 0)
      throw Error("score_error needs reference data of shape [m, d], m >= 1");
    // The absolute probe times; a fraction of the horizon is its fraction of t_max.
    times_.clear();
    std::set<std::string> names;
    for (double t : given_) {
      const double at = relative_ ? t * process->t_max() : t;
      if (at < process->t_min() || at > process->t_max())
        throw Error("score_error: time " + show(at) + (relative_ ? " (" + show(t) + " of the horizon)" : "") +
                    " lies outside the model's forward process range [" + show(process->t_min()) + ", " +
                    show(process->t_max()) + "]");
      if (!names.insert(name_at(at)).second)
        throw Error("score_error: two probe times are both reported as " + name_at(at));
      times_.push_back(at);
    }

    const auto data = in.reference.detach().to(options_);
    std::vector<double> errors, relative;
    mfglab::MetricValues values;
    for (double t : times_) {
      const auto [squared_error, squared_exact] = at_time(*exact, *process, *in.model, data, t);
      errors.push_back(squared_error);
      relative.push_back(squared_error / squared_exact);
      values.emplace_back(name_at(t), squared_error);
    }

    // Trapezoid rule over the times in increasing order, divided by their span.
    std::vector<size_t> order(times_.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return times_[a] < times_[b]; });
    double average = errors[order[0]];
    const double span = times_[order.back()] - times_[order[0]];
    if (span > 0) {
      double integral = 0;
      for (size_t k = 0; k + 1 < order.size(); ++k)
        integral += (times_[order[k + 1]] - times_[order[k]]) *
                    0.5 * (errors[order[k]] + errors[order[k + 1]]);
      average = integral / span;
    }
    values.emplace_back("score_error", average);
    values.emplace_back("score_rel_error",
                        std::accumulate(relative.begin(), relative.end(), 0.0) /
                            static_cast<double>(relative.size()));
    return values;
  }

 private:
  static std::string name_at(double t) { return "score_error@t=" + show(t); }

  // Returns mean |s_model - s_exact|² and mean |s_exact|² over `points` noised points at t.
  std::pair<double, double> at_time(mfglab::ExactDensity& exact, mfglab::ForwardProcess& process,
                                    mfglab::Model& model, const Tensor& data, double t) {
    double squared_error = 0, squared_exact = 0;
    for (int64_t done = 0; done < points_; done += kBatch) {
      const int64_t n = std::min(kBatch, points_ - done);
      Tensor xt, time, exact_score;
      {
        torch::NoGradGuard no_grad;
        // Indices on the CPU, where the run's generator lives.
        auto index = torch::randint(data.size(0), {n}, generator_, torch::TensorOptions().dtype(torch::kLong));
        auto x0 = data.index_select(0, index.to(data.device()));
        time = torch::full({n, 1}, t, options_);
        auto alpha = process.alpha(time), sigma = process.sigma(time);
        auto z = torch::randn(x0.sizes(), generator_, options_);
        xt = alpha * x0 + sigma * z;
        exact_score = exact.score(xt, alpha, sigma).detach().to(torch::kFloat64);
      }
      // With gradients enabled: a model may define its score through autograd.
      auto model_score = model.score(xt, time).detach().to(torch::kFloat64);
      if (model_score.sizes() != exact_score.sizes())
        throw Error("score_error: the model's score has shape " + shape(model_score) +
                    ", the exact score " + shape(exact_score));
      squared_error += (model_score - exact_score).square().sum().item<double>();
      squared_exact += exact_score.square().sum().item<double>();
    }
    return {squared_error / static_cast<double>(points_), squared_exact / static_cast<double>(points_)};
  }

  static std::string shape(const Tensor& t) {
    std::ostringstream out;
    out << t.sizes();
    return out.str();
  }

  std::vector<double> given_;  // `times` as given
  bool relative_;               // given_ are fractions of the model's t_max
  std::vector<double> times_;   // absolute probe times of the current evaluation
  int64_t points_;
  torch::Generator generator_;
  torch::TensorOptions options_;
};

}  // namespace

MFGLAB_PLUGIN(ScoreError, MFGLAB_KIND_METRIC, "score_error", "1.0.0",
              "Mean |s_model(x_t,t) - s_exact(x_t,t)|^2 over x_t = alpha(t) x_0 + sigma(t) z, x_0 "
              "from the reference set, at each given time (fractions of the model's horizon by default; "
              "score_error@t=<absolute t>); their trapezoid "
              "time average over [min t, max t] (score_error); and the mean over times of the "
              "error relative to mean |s_exact|^2 (score_rel_error). Needs an exact-density "
              "dataset and a model with a forward process",
              "score", kTimes, kTimeUnit, kPoints)
