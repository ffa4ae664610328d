// The score_pde and terminal_ism regularizers against exact scores: a 2D Gaussian mixture
// noised by the VP process (test plugin exact_gmm_score_model) satisfies the score PDE
// exactly, a perturbed score does not, and the implicit score matching objective of a
// Gaussian is known in closed form. All in float64.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <ATen/Parallel.h>

#include <mfglab/sdk.h>

#include "plugin_fixture.h"
#include "plugin_host.h"

namespace {

using nlohmann::json;
using torch::Tensor;

const mfglab::engine::PluginHost& host() { return mfglab::test::plugin_host({MFGLAB_BUILD_DIR "/tests/score_models"}); }

// A model at d = 2 (float64, built by the engine's Assembler, plugin_fixture.h) and the
// regularizers under test, sharing one run context.
struct Setup {
  mfglab::test::PluginSetup run;
  mfglab::RunContext& ctx = run.ctx;
  std::unique_ptr<mfglab::Model>& model = run.objects().model;

  Setup(const std::string& model_name, const json& params, uint64_t seed = 0)
      : run(mfglab::test::run_context(seed), host()) {
    run.dimension(2).model(model_name, params);
  }
  std::unique_ptr<mfglab::Regularizer> regularizer(const std::string& name, const json& params) {
    return mfglab::test::create<mfglab::Regularizer>(host(), name, params, ctx);
  }
  // The penalty on points drawn after reseeding, so that two calls see the same points.
  double penalty(mfglab::Regularizer& r, const Tensor& batch, uint64_t seed) {
    ctx.generator.set_current_seed(seed);
    return r.penalty(*model, batch).item<double>();
  }
  Tensor data(int64_t n, uint64_t seed) {
    ctx.generator.set_current_seed(seed);
    return model->sample(n);
  }
};

// Batch mean of |d_t s|_1 at the model's collocation points for `seed`: the scale against
// which a residual counts as zero.
double time_derivative_scale(Setup& s, const Tensor& batch, uint64_t seed) {
  s.ctx.generator.set_current_seed(seed);
  auto c = s.model->collocation(batch);
  auto t = c.t.detach().requires_grad_();
  auto score = s.model->score(c.x, t);
  double total = 0;
  for (int64_t j = 0; j < score.size(1); ++j)
    total += torch::autograd::grad({score.select(1, j).sum()}, {t}, {}, true)[0].abs().sum().item<double>();
  return total / static_cast<double>(batch.size(0));
}

}  // namespace

TEST_CASE("score_pde: the exact score of a noised Gaussian mixture satisfies the PDE", "[score_pde]") {
  Setup s("exact_gmm_score_model", json::object());
  auto batch = s.data(512, 1);
  const double scale = time_derivative_scale(s, batch, 2);
  INFO("mean |s_t|_1 at the collocation points: " << scale);
  REQUIRE(scale > 1.0);  // the PDE's terms are far from zero, so a ~0 residual means something

  for (std::string form : {"lap", "grad"})
    for (std::string points : {"data", "box"}) {
      auto r = s.regularizer("score_pde", json{{"form", form}, {"points", points}});
      const double residual = s.penalty(*r, batch, 2);
      INFO("form " << form << ", points " << points << ": mean |r|_1 = " << residual);
      // Only float64 rounding is left: residuals come out ~1e-14 against a scale of ~4.
      CHECK(residual < 1e-9 * scale);
      CHECK(residual >= 0);
    }
}

TEST_CASE("score_pde: a perturbed score violates the PDE", "[score_pde]") {
  Setup exact("exact_gmm_score_model", json::object());
  Setup perturbed("exact_gmm_score_model", json{{"perturb", 0.1}});
  auto batch = exact.data(512, 1);
  for (std::string form : {"lap", "grad"}) {
    auto r0 = exact.regularizer("score_pde", json{{"form", form}});
    auto r1 = perturbed.regularizer("score_pde", json{{"form", form}});
    const double zero = exact.penalty(*r0, batch, 3), nonzero = perturbed.penalty(*r1, batch, 3);
    INFO("form " << form << ": exact " << zero << ", perturbed by 0.1 sin(x) " << nonzero);
    // 0.1 sin(x) changes the right-hand side by about beta/2 * 0.1 * O(1), beta up to 20.
    CHECK(nonzero > 0.05);
    CHECK(nonzero > 1e6 * zero);
  }
}

TEST_CASE("score_pde: the lap and grad forms agree on gradient fields", "[score_pde]") {
  // Both the exact score and 0.1 sin(x) = grad(-0.1 sum cos x_i) are gradient fields, where
  // Lap s = grad(div s); the perturbed case compares two clearly nonzero residuals.
  for (double perturb : {0.0, 0.1}) {
    Setup s("exact_gmm_score_model", json{{"perturb", perturb}});
    auto batch = s.data(256, 4);
    for (std::string norm : {"l1", "l2"}) {
      auto lap = s.regularizer("score_pde", json{{"form", "lap"}, {"norm", norm}});
      auto grad = s.regularizer("score_pde", json{{"form", "grad"}, {"norm", norm}});
      const double a = s.penalty(*lap, batch, 5), b = s.penalty(*grad, batch, 5);
      INFO("perturb " << perturb << ", norm " << norm << ": lap " << a << ", grad " << b);
      // Both ~1e-12 for the exact score; relative 1e-10 when the residual is ~1.
      CHECK(std::abs(a - b) < 1e-10 * std::max(1.0, std::abs(a)));
    }
  }
}

TEST_CASE("score_pde: on a network score the forms differ and the penalty trains it", "[score_pde]") {
  // A random MLP output is not a gradient field: Lap s != grad(div s) there, so the two forms
  // are different penalties. Both must give every network parameter a finite gradient.
  Setup s("sgm", json{{"width", 16}, {"depth", 2}});
  auto batch = torch::randn({128, 2}, at::make_generator<at::CPUGeneratorImpl>(6), torch::kFloat64);
  std::vector<double> values;
  for (std::string form : {"lap", "grad"}) {
    auto r = s.regularizer("score_pde", json{{"form", form}});
    s.ctx.generator.set_current_seed(7);
    auto p = r->penalty(*s.model, batch);
    REQUIRE(p.dim() == 0);
    REQUIRE(p.requires_grad());
    values.push_back(p.item<double>());
    auto params = s.model->parameters();
    auto g = torch::autograd::grad({p}, params);
    double total = 0;
    for (size_t k = 0; k < g.size(); ++k) {
      INFO("form " << form << ", parameter " << k);
      REQUIRE(g[k].defined());
      CHECK(torch::isfinite(g[k]).all().item<bool>());
      total += g[k].abs().sum().item<double>();
    }
    CHECK(total > 0);
  }
  INFO("lap " << values[0] << ", grad " << values[1]);
  CHECK(std::abs(values[0] - values[1]) > 1e-6 * values[0]);
}

TEST_CASE("score_pde: the penalty's gradient matches finite differences", "[score_pde]") {
  // d penalty / d perturb by backward against a central difference (step 1e-5, float64:
  // truncation ~1e-10 relative, rounding ~1e-9).
  const double p0 = 0.1, h = 1e-5;
  for (std::string form : {"lap", "grad"}) {
    Setup s("exact_gmm_score_model", json{{"perturb", p0}});
    auto batch = s.data(256, 8);
    auto r = s.regularizer("score_pde", json{{"form", form}, {"norm", "l2"}});
    s.ctx.generator.set_current_seed(9);
    auto penalty = r->penalty(*s.model, batch);
    penalty.backward();
    auto perturb = s.model->parameters().at(0);
    REQUIRE(perturb.grad().defined());
    const double analytic = perturb.grad().item<double>();
    auto at = [&](double p) {
      Setup other("exact_gmm_score_model", json{{"perturb", p}});
      auto r2 = other.regularizer("score_pde", json{{"form", form}, {"norm", "l2"}});
      return other.penalty(*r2, batch, 9);
    };
    const double numeric = (at(p0 + h) - at(p0 - h)) / (2 * h);
    INFO("form " << form << ": backward " << analytic << ", central difference " << numeric);
    CHECK(analytic > 0);  // moving away from the exact score increases the residual
    CHECK(analytic == Approx(numeric).epsilon(1e-6));
  }
}

TEST_CASE("terminal_ism: equals the closed-form ISM objective of a Gaussian", "[terminal_ism]") {
  // Data N(m, S), S diagonal; the model's score at t = eps is that of N(a m, C),
  // C = a^2 S + sigma^2 I: s(x) = -(x - a m) / C componentwise, div s = -sum 1/C_i.
  Setup s("exact_gmm_score_model", json{{"mixture", "one"}});
  auto* fp = mfglab::capability<mfglab::ForwardProcess>(s.model.get(), mfglab::kForwardProcess);
  REQUIRE(fp != nullptr);
  const double eps = fp->t_min();
  auto te = torch::full({1, 1}, eps, torch::kFloat64);
  const double a = fp->alpha(te).item<double>(), sg2 = std::pow(fp->sigma(te).item<double>(), 2);
  const double m[2] = {1.0, -0.5}, S[2] = {0.25, 0.5};
  double C[2], expected = 0;
  for (int i = 0; i < 2; ++i) {
    C[i] = a * a * S[i] + sg2;
    // E over the data of 1/2 s_i^2 + d_i s_i.
    expected += 0.5 * (S[i] + std::pow((1 - a) * m[i], 2)) / (C[i] * C[i]) - 1 / C[i];
  }

  const int64_t n = 200000;
  auto x = s.data(n, 10);
  // The same objective on this batch, point by point from the closed form.
  auto per_point = -(1 / C[0] + 1 / C[1]) * torch::ones({n}, torch::kFloat64);
  for (int i = 0; i < 2; ++i) per_point += 0.5 * (x.select(1, i) - a * m[i]).square() / (C[i] * C[i]);
  const double batch_exact = per_point.mean().item<double>();
  const double standard_error = per_point.std().item<double>() / std::sqrt(double(n));

  auto ism = s.regularizer("terminal_ism", json::object());
  const double value = s.penalty(*ism, x, 11);
  INFO("penalty " << value << ", batch closed form " << batch_exact << ", expectation " << expected
                  << " +- " << standard_error);
  CHECK(value == Approx(batch_exact).epsilon(1e-12));
  CHECK(std::abs(value - expected) < 5 * standard_error);

  // Forced Hutchinson: the Jacobian is diagonal, so Rademacher probes give it exactly.
  auto hutch = s.regularizer("terminal_ism", json{{"exact_up_to", 0}});
  CHECK(s.penalty(*hutch, x, 12) == Approx(batch_exact).epsilon(1e-12));
}

TEST_CASE("terminal_ism: Hutchinson is unbiased for a correlated mixture", "[terminal_ism]") {
  Setup s("exact_gmm_score_model", json::object());
  auto x = s.data(1000, 13);
  const double exact = s.penalty(*s.regularizer("terminal_ism", json::object()), x, 14);
  auto hutch = s.regularizer("terminal_ism", json{{"exact_up_to", 0}});
  const int rounds = 200;
  std::vector<double> v;
  for (int k = 0; k < rounds; ++k) v.push_back(s.penalty(*hutch, x, 100 + k));
  double mean = 0, var = 0;
  for (double e : v) mean += e / rounds;
  for (double e : v) var += (e - mean) * (e - mean) / (rounds - 1);
  INFO("exact " << exact << ", Hutchinson " << mean << " (std of one estimate " << std::sqrt(var) << ")");
  REQUIRE(var > 0);  // the off-diagonal Jacobian makes the probes matter
  CHECK(std::abs(mean - exact) < 5 * std::sqrt(var / rounds));
}

TEST_CASE("score_pde: bad parameters are refused", "[score_pde]") {
  Setup s("exact_gmm_score_model", json::object());
  CHECK_THROWS_WITH(s.regularizer("score_pde", json{{"norm", "l3"}}), Catch::Contains("norm"));
  CHECK_THROWS_WITH(s.regularizer("score_pde", json{{"form", "div"}}), Catch::Contains("form"));
  CHECK_THROWS_WITH(s.regularizer("score_pde", json{{"box", 0}}), Catch::Contains("box"));
  CHECK_THROWS_WITH(s.regularizer("terminal_ism", json{{"probes", 0}}), Catch::Contains("probes"));
}
