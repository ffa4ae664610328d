// The MFG regularizers hjb, hjb_terminal, kinetic and jacobian_frobenius, the SDK's residual
// functions (<mfglab/hjb.h>), the objective-weights capability (<mfglab/capabilities_mfg.h>)
// and otflow's and cnf's collocation points, against closed-form value functions (test
// plugin mfg_test_model), the exact log density of a noised Gaussian mixture
// (exact_gmm_score_model) and finite differences (of fields and of parameter gradients).
// All in float64.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/Parallel.h>

#include <mfglab/capabilities_mfg.h>
#include <mfglab/hjb.h>
#include <mfglab/sdk.h>

#include "../plugins/otflow/otflow_internals.h"
#include "catch_checks.h"  // Catch's CHECK, not glog's
#include "cli.h"
#include "plugin_fixture.h"
#include "plugin_host.h"

namespace {

using nlohmann::json;
using torch::Tensor;

const mfglab::engine::PluginHost& host() {
  return mfglab::test::plugin_host({MFGLAB_BUILD_DIR "/tests/mfg_models", MFGLAB_BUILD_DIR "/tests/score_models"});
}

// A run's objects at dimension d (float64): optional dataset and Hamiltonian, one model (built
// by the engine's Assembler, plugin_fixture.h), and its regularizers.
struct Setup {
  mfglab::test::PluginSetup run;
  mfglab::RunContext& ctx = run.ctx;
  std::unique_ptr<mfglab::Dataset>& dataset = run.objects().dataset;
  std::unique_ptr<mfglab::Model>& model = run.objects().model;

  explicit Setup(int64_t d, uint64_t seed = 0) : run(mfglab::test::run_context(seed), host()) { run.dimension(d); }
  Setup& with_dataset(const std::string& name, const json& params) {
    run.dataset(name, params);
    return *this;
  }
  Setup& with_hamiltonian(const std::string& name, const json& params) {
    run.hamiltonian(name, params);
    return *this;
  }
  Setup& with_model(const std::string& name, const json& params) {
    run.model(name, params);
    return *this;
  }
  std::unique_ptr<mfglab::Regularizer> regularizer(const std::string& name, const json& params) {
    return mfglab::test::create<mfglab::Regularizer>(host(), name, params, ctx);
  }
  // The penalty with the generator reseeded, so that two calls see the same points.
  Tensor penalty_tensor(mfglab::Regularizer& r, const Tensor& batch, uint64_t seed) {
    ctx.generator.set_current_seed(seed);
    return r.penalty(*model, batch);
  }
  double penalty(mfglab::Regularizer& r, const Tensor& batch, uint64_t seed) {
    return penalty_tensor(r, batch, seed).item<double>();
  }
  Tensor normal(int64_t n, uint64_t seed) const {
    return torch::randn({n, ctx.data_dim}, at::make_generator<at::CPUGeneratorImpl>(seed), torch::kFloat64);
  }
  Tensor uniform_times(int64_t n, double lo, double hi, uint64_t seed) const {
    return torch::empty({n, 1}, torch::kFloat64).uniform_(lo, hi, at::make_generator<at::CPUGeneratorImpl>(seed));
  }
};

// U_t, grad U and Lap U of the model's value by central differences (float64).
struct FiniteDifferences {
  Tensor dt, grad, lap;
};

FiniteDifferences finite_differences(mfglab::Model& m, const Tensor& x, const Tensor& t) {
  torch::NoGradGuard no_grad;
  const double h1 = 1e-5, h2 = 1e-4;  // first derivatives / second derivatives
  const int64_t d = x.size(1);
  auto U = m.value(x, t);
  FiniteDifferences out;
  out.dt = (m.value(x, t + h1) - m.value(x, t - h1)) / (2 * h1);
  std::vector<Tensor> g;
  out.lap = torch::zeros_like(U);
  for (int64_t i = 0; i < d; ++i) {
    auto e = torch::zeros_like(x);
    e.select(1, i).fill_(1);
    g.push_back((m.value(x + h1 * e, t) - m.value(x - h1 * e, t)) / (2 * h1));
    out.lap = out.lap + (m.value(x + h2 * e, t) - 2 * U + m.value(x - h2 * e, t)) / (h2 * h2);
  }
  out.grad = torch::stack(g, 1);
  return out;
}

double max_abs(const Tensor& t) { return t.abs().max().item<double>(); }

// Mean |U_t| at the points: the scale against which a residual counts as zero.
double mean_abs_dt(mfglab::Model& m, const Tensor& x, const Tensor& t_in) {
  auto t = t_in.clone().requires_grad_();
  auto U = m.value(x, t);
  return torch::autograd::grad({U.sum()}, {t})[0].abs().mean().item<double>();
}

struct HjbCase {
  std::string name;
  json model;
  std::string hamiltonian;
  json hamiltonian_params;
  int64_t d;
  json regularizer;
};

const std::vector<HjbCase>& hjb_cases() {
  static const std::vector<HjbCase> cases = {
      {"inviscid, no Hamiltonian (lambda 1)", json::object(), "", json::object(), 2, json::object()},
      {"inviscid lambda 2, quadratic lambda 2", {{"lambda", 2.0}}, "quadratic", {{"lambda", 2.0}}, 3, json::object()},
      {"inviscid lambda 2, no Hamiltonian, fallback lambda 2", {{"lambda", 2.0}}, "", json::object(), 2,
       {{"lambda", 2.0}}},
      {"inviscid, lp with p = 2", json::object(), "lp", {{"p", 2.0}}, 2, json::object()},
      {"viscous, exact Laplacian", {{"solution", "viscous"}}, "", json::object(), 3, json::object()},
      // Hess U = -2 k lambda I: Rademacher probes give its trace exactly.
      {"viscous, Hutchinson Laplacian", {{"solution", "viscous"}}, "", json::object(), 6, {{"exact_up_to", 0}}},
  };
  return cases;
}

}  // namespace

TEST_CASE("hjb: closed-form solutions of the HJB equation have zero residual", "[hjb]") {
  for (const auto& c : hjb_cases()) {
    Setup s(c.d);
    s.with_hamiltonian(c.hamiltonian, c.hamiltonian_params).with_model("mfg_test_model", c.model);
    auto batch = s.normal(256, 1);
    const double scale = mean_abs_dt(*s.model, batch, s.uniform_times(256, 0, 1, 2));
    INFO(c.name << ": mean |U_t| " << scale);
    REQUIRE(scale > 0.1);  // the terms are far from zero, so a ~0 residual means something
    for (std::string points : {"paths", "box"})
      for (int q : {1, 2}) {
        auto params = c.regularizer;
        params["points"] = points;
        params["q"] = q;
        auto r = s.regularizer("hjb", params);
        const double value = s.penalty(*r, batch, 3);
        INFO("points " << points << ", q " << q << ": penalty " << value);
        CHECK(value >= 0);
        CHECK(value < 1e-10 * scale);
      }
    // The SDK function itself, signed, at the model's collocation points (its null
    // Hamiltonian is quadratic with lambda 1, so the case with the fallback's lambda 2 is left out).
    if (c.regularizer.contains("lambda")) continue;
    auto col = s.model->collocation(batch);
    mfglab::hjb::TraceOptions trace;
    trace.exact_up_to = c.regularizer.value("exact_up_to", 4);
    trace.generator = s.ctx.generator;
    auto res = mfglab::hjb::residual(*s.model, s.ctx.hamiltonian, col.x, col.t, false, trace);
    REQUIRE(res.sizes() == torch::IntArrayRef{256});
    CHECK_FALSE(res.requires_grad());
    CHECK(max_abs(res) < 1e-10 * scale);
  }
}

TEST_CASE("hjb: a perturbed value function violates the equation and the penalty trains it", "[hjb]") {
  for (const auto& c : hjb_cases()) {
    auto params = c.model;
    params["perturb"] = 0.1;
    Setup s(c.d);
    s.with_hamiltonian(c.hamiltonian, c.hamiltonian_params).with_model("mfg_test_model", params);
    auto batch = s.normal(256, 1);
    for (int q : {1, 2}) {
      auto rp = c.regularizer;
      rp["q"] = q;
      auto r = s.regularizer("hjb", rp);
      auto penalty = s.penalty_tensor(*r, batch, 3);
      INFO(c.name << ", q " << q << ": penalty " << penalty.item<double>());
      // 0.1 sin(sum x + t) changes the residual by about 0.1 cos(.) and more.
      CHECK(penalty.item<double>() > (q == 1 ? 1e-2 : 1e-4));
      REQUIRE(penalty.requires_grad());
      auto g = torch::autograd::grad({penalty}, s.model->parameters())[0];
      CHECK(std::isfinite(g.item<double>()));
      CHECK(g.item<double>() > 0);  // moving away from the solution increases the residual
    }
  }
}

TEST_CASE("hjb: the autograd residual agrees with finite differences", "[hjb]") {
  struct Case {
    std::string name;
    json model;
    std::string hamiltonian;
    json hamiltonian_params;
  };
  const std::vector<Case> cases = {
      {"inviscid, quadratic", {{"perturb", 0.3}}, "", json::object()},
      {"viscous, lp p = 3 (non-quadratic H)", {{"solution", "viscous"}, {"perturb", 0.3}}, "lp", {{"p", 3.0}}},
  };
  for (const auto& c : cases) {
    Setup s(2);
    s.with_hamiltonian(c.hamiltonian, c.hamiltonian_params).with_model("mfg_test_model", c.model);
    auto x = s.normal(32, 4);
    auto t = s.uniform_times(32, 0.1, 0.9, 5);
    Tensor autograd_r;
    {
      torch::NoGradGuard no_grad;  // a diagnostic caller: derivatives must still be taken
      autograd_r = mfglab::hjb::residual(*s.model, s.ctx.hamiltonian, x, t, false);
    }
    auto fd = finite_differences(*s.model, x, t);
    auto H = s.ctx.hamiltonian ? s.ctx.hamiltonian->hamiltonian(x, fd.grad) : 0.5 * fd.grad.square().sum(1);
    auto b = s.model->drift(x, t);
    auto s2 = s.model->diffusion(t).reshape({-1}).square();
    auto fd_r = -fd.dt + H - (b * fd.grad).sum(1) - 0.5 * s2 * fd.lap;
    INFO(c.name << ": max |r| " << max_abs(autograd_r) << ", max |autograd - fd| " << max_abs(autograd_r - fd_r));
    CHECK(max_abs(autograd_r) > 1e-2);
    CHECK(max_abs(autograd_r - fd_r) < 1e-6);
  }
}

TEST_CASE("hjb: the Hutchinson Laplacian is unbiased", "[hjb]") {
  // The perturbation's Hessian -p sin(.) 1 1^T is not diagonal, so the probes matter.
  Setup s(5);
  s.with_model("mfg_test_model", {{"solution", "viscous"}, {"perturb", 0.5}});
  auto x = s.normal(64, 6);
  auto t = s.uniform_times(64, 0, 1, 7);
  const double exact = mfglab::hjb::residual(*s.model, nullptr, x, t, false).mean().item<double>();
  mfglab::hjb::TraceOptions trace;
  trace.exact_up_to = 0;
  trace.generator = s.ctx.generator;
  const int rounds = 200;
  std::vector<double> v;
  for (int k = 0; k < rounds; ++k)
    v.push_back(mfglab::hjb::residual(*s.model, nullptr, x, t, false, trace).mean().item<double>());
  double mean = 0, var = 0;
  for (double e : v) mean += e / rounds;
  for (double e : v) var += (e - mean) * (e - mean) / (rounds - 1);
  INFO("exact mean r " << exact << ", Hutchinson " << mean << " (std of one estimate " << std::sqrt(var) << ")");
  REQUIRE(var > 1e-8);
  CHECK(std::abs(mean - exact) < 5 * std::sqrt(var / rounds));
}

TEST_CASE("hjb log_density: the exact log density of a noised Gaussian mixture solves its equation", "[hjb]") {
  Setup s(2);
  s.with_model("exact_gmm_score_model", json::object());
  s.ctx.generator.set_current_seed(1);
  auto batch = s.model->sample(512);
  auto col = s.model->collocation(batch);
  // The test model's value is the potential of its score.
  {
    auto x = col.x.detach().requires_grad_();
    auto u = s.model->value(x, col.t);
    auto g = torch::autograd::grad({u.sum()}, {x})[0];
    CHECK(max_abs(g - s.model->score(x, col.t)) < 1e-10);
  }
  const double scale = mean_abs_dt(*s.model, col.x, col.t);
  INFO("mean |u_t| at the collocation points " << scale);
  REQUIRE(scale > 0.5);
  for (std::string points : {"paths", "box"})
    for (int q : {1, 2}) {
      auto r = s.regularizer("hjb", {{"equation", "log_density"}, {"points", points}, {"q", q}});
      const double value = s.penalty(*r, batch, 2);
      INFO("points " << points << ", q " << q << ": " << value);
      CHECK(value < 1e-9 * scale);
    }

  // The score's perturbation 0.1 sin(x) (potential -0.1 sum cos x) breaks it.
  Setup p(2);
  p.with_model("exact_gmm_score_model", {{"perturb", 0.1}});
  auto r = p.regularizer("hjb", {{"equation", "log_density"}});
  const double perturbed = p.penalty(*r, batch, 2);
  INFO("perturbed: " << perturbed);
  CHECK(perturbed > 0.05);

  // Against finite differences: r = u_t + div f + f.grad u - g^2/2 (Lap u + |grad u|^2),
  // f = -beta/2 x (div f = -beta d/2), g^2 = beta.
  auto x = col.x.narrow(0, 0, 32).detach(), t = col.t.narrow(0, 0, 32).detach().clamp_min(0.05);
  auto autograd_r = mfglab::hjb::log_density_residual(*p.model, x, t, false);
  auto fd = finite_differences(*p.model, x, t);
  auto f = p.model->drift(x, t);
  auto g2 = p.model->diffusion(t).reshape({-1}).square();
  auto fd_r = fd.dt - g2 + (f * fd.grad).sum(1) - 0.5 * g2 * (fd.lap + fd.grad.square().sum(1));
  INFO("max |r| " << max_abs(autograd_r) << ", max |autograd - fd| " << max_abs(autograd_r - fd_r));
  CHECK(max_abs(autograd_r) > 1e-2);
  CHECK(max_abs(autograd_r - fd_r) < 1e-5 * std::max(1.0, max_abs(autograd_r)));
}

TEST_CASE("kinetic: the transport cost of closed-form flows", "[kinetic]") {
  auto batch = Setup(2).normal(128, 8);
  SECTION("constant velocity: |w|^2/2 T, or the experiment's running cost") {
    const double w2 = 1.0 + 0.25, T = 2.0;
    struct Case {
      std::string hamiltonian;
      json params;
      double expected;
    };
    for (const auto& c : std::vector<Case>{{"", json::object(), 0.5 * w2 * T},
                                           {"quadratic", {{"lambda", 3.0}}, 1.5 * w2 * T},
                                           {"lp", {{"p", 3.0}}, std::pow(w2, 1.5) / 3 * T}}) {
      Setup s(2);
      s.with_hamiltonian(c.hamiltonian, c.params)
          .with_model("mfg_test_model", {{"velocity", "constant"}, {"w", {1.0, -0.5}}, {"T", T}});
      auto r = s.regularizer("kinetic", json::object());
      INFO("Hamiltonian '" << c.hamiltonian << "'");
      CHECK(s.penalty(*r, batch, 9) == Approx(c.expected).epsilon(1e-12));
    }
    // Without a Hamiltonian, the fallback's lambda.
    Setup s(2);
    s.with_model("mfg_test_model", {{"velocity", "constant"}, {"w", {1.0, -0.5}}, {"T", T}});
    CHECK(s.penalty(*s.regularizer("kinetic", {{"lambda", 4.0}}), batch, 9) == Approx(2 * w2 * T).epsilon(1e-12));
  }
  SECTION("the optimal inviscid flow: |v|^2/2 = |x0|^2/(2 c^2) along each path") {
    // x(t) = x0 (c + t)/c and v = x/(c + t) = x0/c: the running cost is constant on each
    // path, so the estimate is exact for the batch whatever the collocation times.
    const double c = 1.5, T = 0.7;
    Setup s(2);
    s.with_model("mfg_test_model", {{"c", c}, {"T", T}});
    const double expected = T * (batch.square().sum(1) / (2 * c * c)).mean().item<double>();
    CHECK(s.penalty(*s.regularizer("kinetic", json::object()), batch, 10) == Approx(expected).epsilon(1e-12));
  }
}

TEST_CASE("jacobian_frobenius: Hutchinson estimate of |A|_F^2 T for v = A x", "[jacobian_frobenius]") {
  const std::vector<double> A = {1.0, 2.0, 0.0, -0.5, 0.3, 0.7, 0.2, -1.0, 0.4};
  double frob = 0;
  for (double a : A) frob += a * a;
  const double T = 1.5, expected = frob * T;
  Setup s(3);
  s.with_model("mfg_test_model", {{"velocity", "linear"}, {"A", A}, {"T", T}});
  auto batch = s.normal(256, 11);
  for (int probes : {1, 4}) {
    auto r = s.regularizer("jacobian_frobenius", {{"probes", probes}});
    const int rounds = 60;
    double mean = 0, var = 0;
    std::vector<double> v;
    for (int k = 0; k < rounds; ++k) v.push_back(s.penalty(*r, batch, 100 + k));
    for (double e : v) mean += e / rounds;
    for (double e : v) var += (e - mean) * (e - mean) / (rounds - 1);
    const double se = std::sqrt(var / rounds);
    INFO("probes " << probes << ": exact " << expected << ", estimate " << mean << " +- " << se);
    REQUIRE(var > 0);
    CHECK(std::abs(mean - expected) < 5 * se);
    CHECK(se < 0.02 * expected);
  }
  // A constant velocity has a zero Jacobian.
  Setup c(3);
  c.with_model("mfg_test_model", {{"velocity", "constant"}});
  CHECK(c.penalty(*c.regularizer("jacobian_frobenius", json::object()), batch, 12) == 0.0);
}

TEST_CASE("hjb_terminal: U(x(T), T) against 1 + log rho_T - log N, up to a constant", "[hjb_terminal]") {
  // Inviscid flow x(T) = 2 x0 (c = T = 1) of data N(0, s0^2 I): rho_T = N(0, 4 s0^2 I), so
  // 1 + log rho_T(y) - log N(y) = const - |y|^2 (1/(8 s0^2) - 1/2), and U(y, 1) = -|y|^2/4
  // matches it exactly when s0^2 = 1/6.
  auto gmm = [](double std) {
    return json{{"components", {{{"mean", {0.0, 0.0}}, {"std", std}}}}, {"train_size", 10}, {"test_size", 10}};
  };
  auto batch = Setup(2).normal(256, 13);
  SECTION("zero for the matching data, nonzero otherwise, trains U") {
    Setup s(2);
    s.with_dataset("gmm", gmm(std::sqrt(1.0 / 6.0))).with_model("mfg_test_model", json::object());
    for (int q : {1, 2}) {
      auto r = s.regularizer("hjb_terminal", {{"q", q}});
      CHECK(s.penalty(*r, batch, 14) < 1e-12);
      CHECK(s.penalty(*s.regularizer("hjb_terminal", {{"q", q}, {"data_density", "exact"}}), batch, 14) < 1e-12);
    }
    Setup wide(2);
    wide.with_dataset("gmm", gmm(1.0)).with_model("mfg_test_model", json::object());
    // s0 = 1: target const + 3|y|^2/8, mismatch -5|y|^2/8 = -5|x0|^2/2, far from constant.
    CHECK(wide.penalty(*wide.regularizer("hjb_terminal", {{"q", 1}}), batch, 14) > 0.2);

    Setup p(2);
    p.with_dataset("gmm", gmm(std::sqrt(1.0 / 6.0))).with_model("mfg_test_model", {{"perturb", 0.2}});
    auto penalty = p.penalty_tensor(*p.regularizer("hjb_terminal", json::object()), batch, 14);
    CHECK(penalty.item<double>() > 1e-3);
    REQUIRE(penalty.requires_grad());
    auto g = torch::autograd::grad({penalty}, p.model->parameters())[0];
    CHECK(g.item<double>() > 0);
  }
  SECTION("model mode: the spread of U(x(T), T)") {
    Setup s(2);
    s.with_model("mfg_test_model", json::object());  // no dataset: auto falls back to model
    auto y = 2 * batch;
    auto U = s.model->value(y, torch::ones({256, 1}, torch::kFloat64));
    const double expected = (U - U.mean()).square().mean().item<double>();
    REQUIRE(expected > 0.1);
    CHECK(s.penalty(*s.regularizer("hjb_terminal", json::object()), batch, 15) == Approx(expected).epsilon(1e-12));
    CHECK(s.penalty(*s.regularizer("hjb_terminal", {{"data_density", "model"}}), batch, 15) ==
          Approx(expected).epsilon(1e-12));
  }
  SECTION("clear errors") {
    Setup s(2);
    s.with_model("mfg_test_model", json::object());
    CHECK_THROWS_WITH(s.regularizer("hjb_terminal", {{"data_density", "exact"}}), Catch::Contains("exact density"));
    Setup n(2);
    n.with_model("mfg_test_model", {{"flow_map", false}});
    auto r = n.regularizer("hjb_terminal", json::object());
    CHECK_THROWS_WITH(r->penalty(*n.model, batch), Catch::Contains("mfglab.flow_map/1"));
  }
}

TEST_CASE("hjb_terminal: weighted objectives scale the terminal condition by alpha_C / alpha_L", "[hjb_terminal]") {
  // A model trained on alpha_L int L + alpha_C KL(rho_T, N) whose velocity is -grad Phi / lambda
  // has Phi = U / alpha_L, so Phi(y, T) = r (1 + log rho_T(y) - log N(y)) with r = alpha_C / alpha_L.
  // Inviscid flow x(T) = 2 x0 (c = T = 1), data N(0, s0^2 I): the target is
  // r (const - |y|^2 (1/(8 s0^2) - 1/2)) and Phi(y, 1) = -|y|^2/4, equal up to a constant iff
  // 1/(8 s0^2) = 1/2 + 1/(4 r), i.e. s0^2 = 1 / (4 + 2 / r); r = 1 gives the unweighted 1/6.
  auto gmm = [](double var) {
    return json{{"components", {{{"mean", {0.0, 0.0}}, {"std", std::sqrt(var)}}}}, {"train_size", 10}, {"test_size", 10}};
  };
  const double alpha_L = 2.0, alpha_C = 5.0, r = alpha_C / alpha_L;
  const json weighted = {{"objective_weights", true}, {"alpha_L", alpha_L}, {"alpha_C", alpha_C}};
  const double scaled_var = 1.0 / (4.0 + 2.0 / r), unscaled_var = 1.0 / 6.0;
  auto batch = Setup(2).normal(256, 13);
  // Mean |m - mean m|^2 for a mismatch m = a |y|^2 + const, y = 2 x0.
  auto spread = [&](double a) {
    auto m = a * (2 * batch).square().sum(1);
    return (m - m.mean()).square().mean().item<double>();
  };

  SECTION("zero where Phi satisfies the scaled condition, not where it satisfies the unscaled one") {
    Setup s(2);
    s.with_dataset("gmm", gmm(scaled_var)).with_model("mfg_test_model", weighted);
    auto* w = mfglab::capability<mfglab::ObjectiveWeights>(s.model.get(), mfglab::kObjectiveWeights);
    REQUIRE(w != nullptr);
    CHECK(w->running_cost_weight() == alpha_L);
    CHECK(w->terminal_cost_weight() == alpha_C);
    for (int q : {1, 2}) {
      const double at_scaled = s.penalty(*s.regularizer("hjb_terminal", {{"q", q}}), batch, 14);
      INFO("q " << q << ": penalty at the scaled condition " << at_scaled);
      CHECK(at_scaled < 1e-12);
    }
    // Data for which Phi meets the unscaled condition: mismatch -|y|^2/4 + r |y|^2 (3/4 - 1/2) = (r - 1)/4 |y|^2.
    Setup u(2);
    u.with_dataset("gmm", gmm(unscaled_var)).with_model("mfg_test_model", weighted);
    const double at_unscaled = u.penalty(*u.regularizer("hjb_terminal", {{"q", 2}}), batch, 14);
    INFO("penalty at the unscaled condition " << at_unscaled);
    CHECK(at_unscaled > 1.0);
    CHECK(at_unscaled == Approx(spread((r - 1) / 4)).epsilon(1e-10));
  }
  SECTION("a model without the capability has weights (1, 1); only the ratio counts") {
    Setup plain(2);
    plain.with_dataset("gmm", gmm(unscaled_var)).with_model("mfg_test_model", json::object());
    CHECK(plain.penalty(*plain.regularizer("hjb_terminal", json::object()), batch, 14) < 1e-12);
    Setup off(2);  // the weights are there but not offered
    off.with_dataset("gmm", gmm(scaled_var)).with_model("mfg_test_model", {{"alpha_L", alpha_L}, {"alpha_C", alpha_C}});
    // Unscaled target for s0^2 = 1/(4 + 2/r): mismatch -|y|^2/4 + |y|^2 ((4 + 2/r)/8 - 1/2) = (1 - r)/(4 r) |y|^2.
    const double unweighted = off.penalty(*off.regularizer("hjb_terminal", json::object()), batch, 14);
    CHECK(unweighted == Approx(spread((1 - r) / (4 * r))).epsilon(1e-10));
    Setup same(2);
    same.with_dataset("gmm", gmm(scaled_var))
        .with_model("mfg_test_model", {{"objective_weights", true}, {"alpha_L", 4 * alpha_L}, {"alpha_C", 4 * alpha_C}});
    CHECK(same.penalty(*same.regularizer("hjb_terminal", json::object()), batch, 14) < 1e-12);
  }
  SECTION("alpha_L = 0 leaves no value field to compare") {
    Setup z(2);
    z.with_dataset("gmm", gmm(scaled_var))
        .with_model("mfg_test_model", {{"objective_weights", true}, {"alpha_L", 0.0}, {"alpha_C", alpha_C}});
    auto reg = z.regularizer("hjb_terminal", json::object());
    CHECK_THROWS_WITH(reg->penalty(*z.model, batch), Catch::Contains("alpha_L > 0"));
  }
}

TEST_CASE("hjb_terminal on otflow: its objective weights scale the target", "[hjb_terminal][otflow]") {
  // otflow offers (alpha_L, alpha_C); the penalty is the mean squared spread of
  // Phi(x(1), 1) - (alpha_C / alpha_L)(1 + log rho_0(x0) - log_prob(x0)).
  const json data = {{"components", {{{"mean", {0.5, -0.3}}, {"std", 0.8}}, {{"mean", {-1.0, 0.7}}, {"std", 0.5}}}},
                     {"train_size", 10},
                     {"test_size", 10}};
  struct Case {
    json params;
    double ratio;
  };
  for (const auto& c : std::vector<Case>{{{{"alpha_L", 2.0}, {"alpha_C", 30.0}}, 15.0},
                                         {json::object(), 100.0}}) {  // OT-Flow's defaults (1, 100)
    json params = c.params;
    params["width"] = 8;
    params["steps"] = 4;
    Setup s(2);
    s.with_dataset("gmm", data).with_model("otflow", params);
    auto* w = mfglab::capability<mfglab::ObjectiveWeights>(s.model.get(), mfglab::kObjectiveWeights);
    REQUIRE(w != nullptr);
    CHECK(w->terminal_cost_weight() / w->running_cost_weight() == c.ratio);
    auto batch = s.normal(128, 21);
    const double got = s.penalty(*s.regularizer("hjb_terminal", json::object()), batch, 22);
    auto spread = [&](double ratio) {
      torch::NoGradGuard no_grad;
      auto* flow = mfglab::capability<mfglab::FlowMap>(s.model.get(), mfglab::kFlowMap);
      auto* density = mfglab::capability<mfglab::ExactDensity>(s.dataset.get(), mfglab::kExactDensity);
      auto y = flow->transport(batch, 0.0, 1.0);
      auto one = torch::ones({1}, torch::kFloat64), zero = torch::zeros({1}, torch::kFloat64);
      auto target = 1.0 + density->log_density(batch, one, zero) - s.model->log_prob(batch);
      auto m = s.model->value(y, torch::ones({128, 1}, torch::kFloat64)) - ratio * target;
      return (m - m.mean()).square().mean().item<double>();
    };
    const double want = spread(c.ratio), unscaled = spread(1.0);
    INFO("alpha_C / alpha_L = " << c.ratio << ": penalty " << got << ", scaled target " << want
                                << ", unscaled target " << unscaled);
    CHECK(got == Approx(want).epsilon(1e-10));
    CHECK(std::abs(got - unscaled) > 0.1 * want);
  }
}

TEST_CASE("hjb: equation mfg is refused for score models of a forward process", "[hjb]") {
  // Their drift() and diffusion() are the forward noising process's: no value function
  // satisfies the MFG form with them. The log-density form is the one that applies.
  struct Case {
    std::string model;
    json params;
  };
  for (const auto& c : std::vector<Case>{{"sgm", {{"parameterization", "potential"}, {"width", 8}, {"depth", 1}}},
                                         {"exact_gmm_score_model", json::object()}}) {
    INFO(c.model);
    Setup s(2);
    s.with_model(c.model, c.params);
    auto batch = s.normal(32, 23);
    for (const json& params : {json::object(), json{{"equation", "mfg"}, {"points", "box"}}}) {
      auto r = s.regularizer("hjb", params);
      CHECK_THROWS_WITH(r->penalty(*s.model, batch),
                        Catch::Contains("forward noising process") && Catch::Contains("mfglab.forward_process/1") &&
                            Catch::Contains("use \"equation\": \"log_density\""));
    }
    auto ok = s.regularizer("hjb", {{"equation", "log_density"}});
    const double value = s.penalty(*ok, batch, 24);
    CHECK(std::isfinite(value));
  }
}

namespace {

// Central differences of a scalar function of the model's parameters, at a few entries of
// each parameter tensor, against the autograd gradient `g` of the same function. Returns
// the largest |autograd - fd| and the largest |fd|.
std::pair<double, double> gradient_check(mfglab::Model& m, const std::vector<Tensor>& g,
                                         const std::function<double()>& f, double h) {
  auto params = m.parameters();
  double worst = 0, scale = 0;
  for (size_t k = 0; k < params.size(); ++k) {
    auto flat = params[k].detach().view({-1});  // shares the parameter's storage
    auto gk = g[k].defined() ? g[k].reshape({-1}) : Tensor();  // undefined: the function does not use it
    for (int64_t i : {int64_t{0}, flat.numel() / 2, flat.numel() - 1}) {
      const double saved = flat[i].item<double>();
      flat[i].fill_(saved + h);
      const double up = f();
      flat[i].fill_(saved - h);
      const double down = f();
      flat[i].fill_(saved);
      const double fd = (up - down) / (2 * h);
      const double ad = gk.defined() ? gk[i].item<double>() : 0.0;
      INFO("parameter " << k << " entry " << i << ": autograd " << ad << ", central difference " << fd);
      worst = std::max(worst, std::abs(ad - fd));
      scale = std::max(scale, std::abs(fd));
    }
  }
  return {worst, scale};
}

}  // namespace

TEST_CASE("kinetic and jacobian_frobenius on cnf: the parameter gradient follows the paths (RNODE)",
          "[kinetic][jacobian_frobenius][cnf]") {
  // RNODE integrates both penalties along the flow's own solve, so their parameter
  // gradient includes d x(t) / d theta. The penalty at fixed draws (collocation times,
  // probes: the generator is reseeded) is a smooth function of the parameters; its
  // autograd gradient must match central differences in float64.
  Setup s(2);
  s.with_model("cnf", {{"width", 6}, {"depth", 1}, {"steps", 4}, {"activation", "tanh"}});
  {
    // An untrained flow barely moves points; a stronger output layer bends the paths.
    torch::NoGradGuard no_grad;
    auto p = s.model->parameters();
    p[p.size() - 2].mul_(3.0);
    p[p.size() - 1].mul_(3.0);
  }
  auto batch = s.normal(24, 25);
  {
    s.ctx.generator.set_current_seed(26);
    auto c = s.model->collocation(batch);
    CHECK(c.x.requires_grad());  // the points keep their graph to the parameters
    torch::NoGradGuard no_grad;
    s.ctx.generator.set_current_seed(26);
    CHECK_FALSE(s.model->collocation(batch).x.requires_grad());
  }
  for (std::string name : {"kinetic", "jacobian_frobenius"}) {
    INFO(name);
    auto r = s.regularizer(name, json::object());
    auto params = s.model->parameters();
    auto p = s.penalty_tensor(*r, batch, 27);
    REQUIRE(p.requires_grad());
    auto g = torch::autograd::grad({p}, params, {}, false, false, /*allow_unused=*/true);
    auto f = [&] { return s.penalty(*r, batch, 27); };
    const auto [error, scale] = gradient_check(*s.model, g, f, 1e-5);
    INFO("max |autograd - central difference| " << error << ", max |gradient| " << scale);
    CHECK(scale > 1e-2);
    CHECK(error < 1e-7 * std::max(1.0, scale));

    // The semi-gradient through the fields only (points detached) misses the paths' part.
    if (name == "kinetic") {
      s.ctx.generator.set_current_seed(27);
      mfglab::Collocation c;
      {
        torch::NoGradGuard no_grad;
        c = s.model->collocation(batch);
      }
      auto semi = 0.5 * s.model->velocity(c.x, c.t).square().sum(1).mean();
      auto gs = torch::autograd::grad({semi}, params, {}, false, false, true);
      double gap = 0;
      for (size_t k = 0; k < g.size(); ++k) gap = std::max(gap, max_abs(g[k] - gs[k]));
      INFO("max |full - semi-gradient| " << gap);
      CHECK(gap > 1e3 * error);
    }
  }
}

TEST_CASE("otflow: collocation points lie on its RK4 paths; the regularizers train it", "[otflow][hjb]") {
  Setup s(2);
  s.with_model("otflow", {{"width", 8}, {"steps", 4}});
  auto batch = s.normal(64, 16);
  s.ctx.generator.set_current_seed(17);
  auto col = s.model->collocation(batch);
  REQUIRE(col.x.sizes() == batch.sizes());
  REQUIRE(col.t.sizes() == torch::IntArrayRef{64, 1});
  CHECK(col.t.min().item<double>() >= 0);
  CHECK(col.t.max().item<double>() <= 1);
  CHECK(col.t.std().item<double>() > 0.1);
  CHECK(col.x.requires_grad());  // differentiable in the parameters

  auto* internals = mfglab::capability<mfglab::otflow::Internals>(s.model.get(), mfglab::otflow::kInternals);
  REQUIRE(internals != nullptr);
  for (int64_t i : {0, 1, 2, 3}) {
    const double ti = col.t[i][0].item<double>();
    auto xi = internals->flow(batch.narrow(0, i, 1), 0.0, ti, 4).narrow(1, 0, 2);
    INFO("point " << i << " at t = " << ti);
    CHECK(max_abs(xi - col.x.narrow(0, i, 1)) < 1e-12);
  }

  // The SDK residual by autograd equals otflow's closed-form |-d_t Phi + H(grad Phi)|.
  auto* own = mfglab::capability<mfglab::HjbResidual>(s.model.get(), mfglab::kHjbResidual);
  REQUIRE(own != nullptr);
  auto r = mfglab::hjb::residual(*s.model, nullptr, col.x, col.t, false);
  auto closed = own->hjb_residual(col.x.detach(), col.t).detach();
  CHECK(max_abs(closed) > 1e-3);
  CHECK(max_abs(r.abs() - closed) < 1e-10);

  // kinetic estimates the same integral as otflow's own L term (integrated by RK4 along
  // the paths), by one uniform time per path.
  {
    auto big = 2 * s.normal(16000, 19);  // standard error of the estimate ~1%
    const double L = internals->flow(big, 0.0, 1.0, 4).select(1, 3).mean().item<double>();  // [x, l, L, R]
    const double k = s.penalty(*s.regularizer("kinetic", json::object()), big, 20);
    INFO("otflow L term " << L << ", kinetic " << k);
    CHECK(k == Approx(L).epsilon(0.05));
  }

  // hjb_terminal through otflow's flow map (no dataset here: the target is the constant 1).
  for (std::string name : {"hjb", "kinetic", "jacobian_frobenius", "hjb_terminal"}) {
    auto reg = s.regularizer(name, json::object());
    auto p = s.penalty_tensor(*reg, batch, 18);
    INFO(name << " = " << p.item<double>());
    CHECK(std::isfinite(p.item<double>()));
    CHECK(p.item<double>() > 0);
    REQUIRE(p.requires_grad());
    auto params = s.model->parameters();
    auto g = torch::autograd::grad({p}, params, {}, false, false, /*allow_unused=*/true);
    double total = 0;
    for (const auto& gi : g)
      if (gi.defined()) {
        CHECK(torch::isfinite(gi).all().item<bool>());
        total += gi.abs().sum().item<double>();
      }
    CHECK(total > 0);
  }
}

TEST_CASE("mfglab validate refuses a regularizer whose model field is missing", "[cli]") {
  // One file per model with all four regularizers (each CLI call loads every plugin).
  using mfglab::test::mfglab_cli;
  mfglab::test::TempDir tmp("test_mfg_regularizers");
  const std::vector<std::pair<std::string, std::string>> needs = {
      {"hjb", "value"}, {"hjb_terminal", "value"}, {"kinetic", "velocity"}, {"jacobian_frobenius", "velocity"}};
  auto experiment = [&](const std::string& model) {
    json regs = json::array();
    for (const auto& [name, field] : needs) regs.push_back({{"plugin", name}, {"weight", 0.1}});
    json j = {{"name", "v"},
              {"dataset", {{"plugin", "toy2d"}, {"params", {{"name", "moons"}}}}},
              {"model", {{"plugin", model}}},
              {"regularizers", regs}};
    return tmp.file(model + ".json", j.dump(2));
  };
  // cnf lacks value (hjb, hjb_terminal); sgm lacks velocity (kinetic, jacobian_frobenius),
  // and value too with its default parameterization (score).
  const std::vector<std::pair<std::string, std::vector<std::string>>> lacking = {{"cnf", {"value"}},
                                                                               {"sgm", {"value", "velocity"}}};
  for (const auto& [model, missing] : lacking) {
    const std::string bad = experiment(model);
    auto r = mfglab_cli("validate '" + bad + "'");
    INFO(r.err);
    CHECK(r.exit_code == 2);
    CHECK(r.out.empty());
    for (size_t i = 0; i < needs.size(); ++i) {
      const std::string line = bad + ": /regularizers/" + std::to_string(i) + "/plugin: regularizer '" + needs[i].first +
                               "' needs the model's '" + needs[i].second + "' field, which model '" + model + "'";
      if (std::find(missing.begin(), missing.end(), needs[i].second) != missing.end())
        CHECK_THAT(r.err, Catch::Contains(line));
      else CHECK_THAT(r.err, !Catch::Contains("regularizer '" + needs[i].first + "'"));
    }
  }
  // sgm's potential parameterization has a value function: the log-density form of hjb.
  const std::string sgm_hjb = tmp.file("sgm_hjb.json", json({{"name", "v"},
      {"dataset", {{"plugin", "toy2d"}, {"params", {{"name", "moons"}}}}},
      {"model", {{"plugin", "sgm"}, {"params", {{"parameterization", "potential"}}}}},
      {"regularizers", {{{"plugin", "hjb"}, {"params", {{"equation", "log_density"}}}}}}}).dump(2));
  auto sgm_ok = mfglab_cli("validate '" + sgm_hjb + "'");
  INFO(sgm_ok.err);
  CHECK(sgm_ok.exit_code == 0);
  // otflow provides value, velocity and log_prob.
  const std::string good = experiment("otflow");
  auto ok = mfglab_cli("validate '" + good + "'");
  INFO(ok.err);
  CHECK(ok.exit_code == 0);
  CHECK(ok.out == good + ": valid experiment 'v' with 1 run(s)\n");
}

TEST_CASE("mfglab validate checks fields that depend on parameters, and collocation", "[cli]") {
  using mfglab::test::mfglab_cli;
  mfglab::test::TempDir tmp("test_mfg_regularizers_fields");
  auto experiment = [&](const std::string& file, const json& model, const json& regularizer) {
    return tmp.file(file, json({{"name", "v"},
                                {"dataset", {{"plugin", "toy2d"}, {"params", {{"name", "moons"}}}}},
                                {"model", model},
                                {"regularizers", {regularizer}}}).dump(2));
  };
  const json hjb_log_density = {{"plugin", "hjb"}, {"params", {{"equation", "log_density"}}}};
  SECTION("sgm has a value field only with the potential parameterization") {
    const std::string bad = experiment("score.json", {{"plugin", "sgm"}}, hjb_log_density);
    auto r = mfglab_cli("validate '" + bad + "'");
    INFO(r.err);
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.err, Catch::Contains(bad + ": /regularizers/0/plugin: regularizer 'hjb' needs the model's 'value' "
                                            "field, which model 'sgm' provides only when parameterization = potential "
                                            "(here parameterization = \"score\")"));
    const std::string good = experiment("potential.json", {{"plugin", "sgm"}, {"params", {{"parameterization", "potential"}}}},
                                        hjb_log_density);
    CHECK(mfglab_cli("validate '" + good + "'").exit_code == 0);
  }
  SECTION("a regularizer that needs collocation points refuses a model without them") {
    // jko provides value and velocity but no collocation points.
    const std::string kinetic = experiment("kinetic.json", {{"plugin", "jko"}}, {{"plugin", "kinetic"}});
    auto r = mfglab_cli("validate '" + kinetic + "'");
    INFO(r.err);
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.err, Catch::Contains(kinetic + ": /regularizers/0/plugin: regularizer 'kinetic' needs the model's "
                                                "'collocation' field, which model 'jko' does not provide"));
    CHECK_THAT(r.err, Catch::Contains("implementing Model::collocation"));
    // hjb needs them only for its default points "paths"; "box" draws its own.
    const std::string paths = experiment("paths.json", {{"plugin", "jko"}}, {{"plugin", "hjb"}});
    CHECK_THAT(mfglab_cli("validate '" + paths + "'").err, Catch::Contains("'collocation' field"));
    const std::string box = experiment("box.json", {{"plugin", "jko"}}, {{"plugin", "hjb"}, {"params", {{"points", "box"}}}});
    auto ok = mfglab_cli("validate '" + box + "'");
    INFO(ok.err);
    CHECK(ok.exit_code == 0);
  }
  SECTION("describe shows the condition") {
    auto d = mfglab_cli("describe sgm");
    CHECK_THAT(d.out, Catch::Contains("provides: score, log_prob, value (when parameterization = potential), collocation"));
    auto h = mfglab_cli("describe hjb");
    CHECK_THAT(h.out, Catch::Contains("needs: value, collocation (when points = paths)"));
  }
}

TEST_CASE("mfglab describe lists the engine's train and eval settings", "[cli]") {
  using mfglab::test::mfglab_cli;
  auto train = mfglab_cli("describe train");
  INFO(train.err);
  CHECK(train.exit_code == 0);
  CHECK_THAT(train.out, Catch::Contains("iterations"));
  CHECK_THAT(train.out, Catch::Contains("default 1000"));
  CHECK_THAT(train.out, Catch::Contains("optimizer.lr"));
  CHECK_THAT(train.out, Catch::Contains("schedule.type"));
  CHECK_THAT(train.out, Catch::Contains("one of constant|step|exponential|cosine"));
  auto eval = mfglab_cli("describe eval");
  CHECK(eval.exit_code == 0);
  CHECK_THAT(eval.out, Catch::Contains("samples"));
  CHECK_THAT(eval.out, Catch::Contains("metrics"));
  auto bad = mfglab_cli("describe trian");
  CHECK(bad.exit_code == 2);
  CHECK_THAT(bad.err, Catch::Contains("describe train, describe eval"));
}
