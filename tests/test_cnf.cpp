// The cnf model, its ODE solvers, mfglab/flow.h and the transport / inverse_error metrics,
// against closed forms, finite differences and quadrature: solvers on linear ODEs with known
// solutions, log_prob against a finite-difference log-determinant of the flow map, Hutchinson's
// estimator against the exact divergence, total mass on a grid, invertibility, metrics on
// rotations and translations, bad input, a short training run on 8gaussians, and the
// hand-written training kernel against its autograd twin.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <ATen/Parallel.h>
#include <torch/optim.h>

#include <mfglab/flow.h>
#include <mfglab/sdk.h>

#include "catch_checks.h"
#include "plugin_fixture.h"
#include "plugin_host.h"
#include <mfglab/ode.h>

namespace {

using nlohmann::json;
using torch::Tensor;

struct Messages : mfglab::Logger {
  std::vector<std::string> lines;
  void info(const std::string& m) override { lines.push_back(m); }
  void warn(const std::string& m) override { lines.push_back(m); }
};

// A model (cnf by default) at d = 2, built by the engine's Assembler (plugin_fixture.h).
struct Setup {
  const mfglab::engine::PluginHost& host = mfglab::test::plugin_host();
  Messages log;
  mfglab::test::PluginSetup run;
  mfglab::RunContext& ctx = run.ctx;
  std::unique_ptr<mfglab::Model>& model = run.objects().model;

  explicit Setup(const json& params, uint64_t seed = 0, torch::Dtype dtype = torch::kFloat64,
                 const std::string& plugin = "cnf", int threads = 1)
      : run(mfglab::test::run_context(seed, dtype, threads)) {
    ctx.logger = &log;
    run.dimension(2).model(plugin, params);
  }
  std::unique_ptr<mfglab::Metric> metric(const std::string& name, const json& params = json::object()) {
    return mfglab::test::create<mfglab::Metric>(host, name, params, ctx);
  }
  mfglab::FlowMap& map() {
    auto* m = mfglab::capability<mfglab::FlowMap>(model.get(), mfglab::kFlowMap);
    REQUIRE(m != nullptr);
    return *m;
  }
};

// An untrained MLP moves points little; scaling its output layer makes the flow bend space
// visibly (displacements of order one) so that the divergence matters.
void stronger(mfglab::Model& m, double scale) {
  torch::NoGradGuard no_grad;
  auto p = m.parameters();
  p[p.size() - 2].mul_(scale);
  p[p.size() - 1].mul_(scale);
}

Tensor randn(std::vector<int64_t> shape, uint64_t seed, double scale = 1.0) {
  torch::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randn(shape, g, torch::kFloat64) * scale;
}

double max_abs(const Tensor& a) { return a.abs().max().item<double>(); }

// Test models with closed-form flows: v = omega J x (rotation by omega t, J = [[0, -1], [1, 0]])
// plus a constant c. Optionally offers a deliberately wrong flow map (x -> 2x forward, identity
// backward) so that a metric's use of the capability shows in its result.
class KnownFlow final : public mfglab::Model, public mfglab::FlowMap {
 public:
  KnownFlow(double omega, std::vector<double> c, bool offer_map)
      : omega_(omega), c_(torch::tensor(c, torch::kFloat64)), offer_map_(offer_map) {}
  void* capability(const char* id) override {
    return offer_map_ && std::string(id) == mfglab::kFlowMap ? static_cast<mfglab::FlowMap*>(this) : nullptr;
  }
  std::vector<Tensor> parameters() override { return {}; }
  mfglab::LossTerms loss(const Tensor& b) override { return {{"zero", torch::zeros({}, b.options())}}; }
  Tensor sample(int64_t n) override { return torch::zeros({n, 2}, torch::kFloat64); }
  Tensor velocity(const Tensor& x, const Tensor&) override {
    return omega_ * torch::stack({-x.select(1, 1), x.select(1, 0)}, 1) + c_;
  }
  Tensor transport(const Tensor& x, double t0, double t1) override { return t1 > t0 ? 2 * x : x; }

 private:
  double omega_;
  Tensor c_;
  bool offer_map_;
};

Tensor rotate(const Tensor& x, double angle) {
  const double c = std::cos(angle), s = std::sin(angle);
  return torch::stack({c * x.select(1, 0) - s * x.select(1, 1), s * x.select(1, 0) + c * x.select(1, 1)}, 1);
}

}  // namespace

TEST_CASE("cnf solvers: rk4 and dopri5 on linear ODEs with closed-form solutions", "[cnf][ode]") {
  // dy/dt = A y with A = [[a, -b], [b, a]]: y(t) = exp(a t) R(b t) y0; and dy/dt = -2 t y:
  // y(t) = exp(t0^2 - t^2) y(t0). Both directions of time.
  const double a = -0.7, b = 2.3;
  auto spiral = [&](const Tensor& y, double) {
    return torch::stack({a * y.select(1, 0) - b * y.select(1, 1), b * y.select(1, 0) + a * y.select(1, 1)}, 1);
  };
  auto gauss = [](const Tensor& y, double t) { return -2 * t * y; };
  auto y0 = randn({50, 2}, 1);
  auto exact_spiral = [&](double t0, double t1) { return std::exp(a * (t1 - t0)) * rotate(y0, b * (t1 - t0)); };
  auto exact_gauss = [&](double t0, double t1) { return std::exp(t0 * t0 - t1 * t1) * y0; };

  for (auto [t0, t1] : {std::pair{0.0, 1.0}, std::pair{1.0, 0.0}, std::pair{0.3, 2.0}}) {
    INFO("t0 = " << t0 << ", t1 = " << t1);
    mfglab::ode::SolveStats rs;
    auto r = mfglab::ode::rk4(spiral, y0, t0, t1, 400, &rs);
    CHECK(max_abs(r - exact_spiral(t0, t1)) < 1e-8);  // measured 3e-10
    CHECK(rs.nfe == 1600);
    // Fourth order: 10 -> 20 steps divides the error by about 16.
    const double e10 = max_abs(mfglab::ode::rk4(spiral, y0, t0, t1, 10) - exact_spiral(t0, t1));
    const double e20 = max_abs(mfglab::ode::rk4(spiral, y0, t0, t1, 20) - exact_spiral(t0, t1));
    CHECK(e10 / e20 > 12);
    CHECK(e10 / e20 < 20);

    for (double tol : {1e-5, 1e-10}) {
      mfglab::ode::Dopri5Options o;
      o.rtol = o.atol = tol;
      mfglab::ode::SolveStats s1, s2;
      const double err1 = max_abs(mfglab::ode::dopri5(spiral, y0, t0, t1, o, &s1) - exact_spiral(t0, t1));
      const double err2 = max_abs(mfglab::ode::dopri5(gauss, y0, t0, t1, o, &s2) - exact_gauss(t0, t1));
      INFO("tol " << tol << ": errors " << err1 << " (" << s1.nfe << " NFE), " << err2 << " (" << s2.nfe << " NFE)");
      // Local error control: the global error is a small multiple of the tolerance.
      CHECK(err1 < 50 * tol);
      CHECK(err2 < 50 * tol);
      CHECK(s1.nfe == 2 + 6 * (s1.accepted + s1.rejected));
      if (tol == 1e-10) CHECK(s1.nfe > 100);  // tighter tolerance, more steps
      else CHECK(s1.nfe < 100);
    }
  }
  mfglab::ode::Dopri5Options o;
  o.rtol = o.atol = 1e-12;
  o.max_steps = 5;
  CHECK_THROWS_WITH(mfglab::ode::dopri5(spiral, y0, 0.0, 1.0, o), Catch::Contains("max_steps = 5"));
  o.rtol = 0;
  CHECK_THROWS_WITH(mfglab::ode::dopri5(spiral, y0, 0.0, 1.0, o), Catch::Contains("rtol > 0"));
  // NaN from t > 0.5 on: the first stage past it is the second of step 3 (t = 0.625).
  auto blowup = [](const Tensor& y, double t) { return t > 0.5 ? y * std::nan("") : y; };
  CHECK_THROWS_WITH(mfglab::ode::rk4(blowup, y0, 0.0, 1.0, 4), Catch::Contains("non-finite state in rk4 at step 3 (t = 0.75"));
}

TEST_CASE("cnf: log_prob is the change of variables with the exact divergence", "[cnf]") {
  // log p(x) = log N(f(x)) + log|det Df(x)| with f the flow map; Df by central finite
  // differences of the model's own map (64 RK4 steps, so that the RK4 log-determinant and
  // that of the discrete map differ by O(h^4) ~ 1e-8).
  Setup s(json{{"steps", 64}, {"width", 32}, {"depth", 2}, {"divergence", "exact"}}, 3);
  stronger(*s.model, 4.0);
  auto x = randn({40, 2}, 2, 1.5);
  auto lp = s.model->log_prob(x);
  auto f = s.map().transport(x, 0.0, 1.0);
  const double eps = 1e-5;
  std::vector<Tensor> cols;
  for (int k = 0; k < 2; ++k) {
    auto e = torch::zeros({1, 2}, torch::kFloat64);
    e[0][k] = eps;
    cols.push_back((s.map().transport(x + e, 0.0, 1.0) - s.map().transport(x - e, 0.0, 1.0)) / (2 * eps));
  }
  // det [[d f0/d x0, d f0/d x1], [d f1/d x0, d f1/d x1]]
  auto det = cols[0].select(1, 0) * cols[1].select(1, 1) - cols[1].select(1, 0) * cols[0].select(1, 1);
  auto logdet = det.abs().log();
  auto expected = -0.5 * f.square().sum(1) - std::log(2 * M_PI) + logdet;
  INFO("max |log det Df| = " << max_abs(logdet) << ", max |log_prob - expected| = " << max_abs(lp - expected));
  CHECK(max_abs(logdet) > 0.3);           // the flow changes volume noticeably
  CHECK(max_abs(f - x) > 0.3);            // and moves points
  CHECK(max_abs(lp - expected) < 1e-6);

  // The divergence inside: at t = 0 the time derivative of l is div v, which for an MLP
  // velocity we check against a finite-difference trace of dv/dx.
  auto t = torch::full({40, 1}, 0.4, torch::kFloat64);
  double fd_trace_err = 0;
  {
    auto xr = x.clone().requires_grad_();
    auto v = s.model->velocity(xr, t);
    Tensor div = torch::zeros({40}, torch::kFloat64);
    for (int k = 0; k < 2; ++k)
      div += torch::autograd::grad({v.select(1, k).sum()}, {xr}, {}, true)[0].select(1, k);
    Tensor fd = torch::zeros({40}, torch::kFloat64);
    for (int k = 0; k < 2; ++k) {
      auto e = torch::zeros({1, 2}, torch::kFloat64);
      e[0][k] = eps;
      fd += (s.model->velocity(x + e, t) - s.model->velocity(x - e, t)).select(1, k).detach() / (2 * eps);
    }
    fd_trace_err = max_abs(div.detach() - fd);
  }
  CHECK(fd_trace_err < 1e-7);

  // The forward Jacobian sweep and d reverse passes give the same log-density.
  Setup r(json{{"steps", 64}, {"width", 32}, {"depth", 2}, {"divergence", "exact_autograd"}}, 3);
  stronger(*r.model, 4.0);
  CHECK(max_abs(r.model->log_prob(x) - lp) < 1e-12);
}

TEST_CASE("cnf: Hutchinson's divergence is unbiased for the NLL", "[cnf]") {
  // Same seed, same weights (probes are drawn after them). The x-path does not depend on the
  // probes and l is linear in the divergence estimate, so E[NLL_hutchinson] = NLL_exact.
  for (const char* probe : {"rademacher", "gaussian"}) {
    Setup exact(json{{"steps", 4}, {"width", 16}, {"depth", 2}, {"divergence", "exact"}}, 5);
    Setup hutch(json{{"steps", 4}, {"width", 16}, {"depth", 2}, {"divergence", "hutchinson"}, {"probe", probe}}, 5);
    stronger(*exact.model, 4.0);
    stronger(*hutch.model, 4.0);
    auto x = randn({32, 2}, 6, 1.5);
    torch::NoGradGuard no_grad;
    const double target = exact.model->loss(x)[0].value.item<double>();
    const int K = 400;
    std::vector<double> draws;
    for (int k = 0; k < K; ++k) draws.push_back(hutch.model->loss(x)[0].value.item<double>());
    auto d = torch::tensor(draws, torch::kFloat64);
    const double mean = d.mean().item<double>(), sd = d.std().item<double>();
    INFO(probe << ": exact NLL " << target << ", Hutchinson mean " << mean << " +- " << sd / std::sqrt(K) << " (sd " << sd << ")");
    CHECK(sd > 1e-4);  // really stochastic
    CHECK(std::abs(mean - target) < 4 * sd / std::sqrt(static_cast<double>(K)));
  }
}

TEST_CASE("cnf: dopri5 and many RK4 steps agree; dopri5 inverts its flow", "[cnf]") {
  json base{{"width", 32}, {"depth", 2}};
  json fine = base, adaptive = base;
  fine["steps"] = 256;
  adaptive["solver"] = "dopri5";
  adaptive["rtol"] = 1e-10;
  adaptive["atol"] = 1e-10;
  Setup r(fine, 9), d(adaptive, 9);
  stronger(*r.model, 4.0);
  stronger(*d.model, 4.0);
  auto x = randn({200, 2}, 10, 1.5);
  auto lr = r.model->log_prob(x), ld = d.model->log_prob(x);
  CHECK(max_abs(lr - ld) < 1e-8);
  CHECK(max_abs(r.map().transport(x, 0, 1) - d.map().transport(x, 0, 1)) < 1e-8);
  // sample() is the same flow backwards from N(0, I) draws of the run generator.
  d.ctx.generator.set_current_seed(21);
  auto smp = d.model->sample(100);
  d.ctx.generator.set_current_seed(21);
  auto z = torch::randn({100, 2}, d.ctx.generator, torch::kFloat64);
  CHECK(max_abs(smp - r.map().transport(z, 1, 0)) < 1e-8);
  bool logged = false;
  for (const auto& m : d.log.lines) logged = logged || m.find("function evaluations") != std::string::npos;
  CHECK(logged);

  // The inverse_error metric with the model's own flow map: tiny for a tight dopri5, larger
  // for 2 RK4 steps.
  auto metric = d.metric("inverse_error");
  mfglab::MetricInput in;
  in.reference = x;
  in.model = d.model.get();
  auto tight = metric->evaluate(in);
  Setup coarse(json{{"width", 32}, {"depth", 2}, {"steps", 2}}, 9);
  stronger(*coarse.model, 4.0);
  in.model = coarse.model.get();
  auto rough = metric->evaluate(in);
  INFO("inverse error: dopri5 1e-10 mean " << tight[0].second << " max " << tight[1].second
       << "; rk4 2 steps mean " << rough[0].second);
  REQUIRE(tight[0].first == "inverse_error_mean");
  REQUIRE(tight[1].first == "inverse_error_max");
  CHECK(tight[1].second < 1e-7);
  CHECK(tight[0].second <= tight[1].second);
  CHECK(rough[0].second > 100 * tight[1].second);
}

TEST_CASE("cnf: the density of an untrained flow integrates to one", "[cnf]") {
  Setup s(json{{"width", 32}, {"depth", 2}, {"steps", 8}}, 13);
  stronger(*s.model, 4.0);
  const double lim = 7.0;
  const int64_t k = 100;
  const double h = 2 * lim / static_cast<double>(k);
  auto c = torch::linspace(-lim + h / 2, lim - h / 2, k, torch::kFloat64);
  auto mesh = torch::meshgrid({c, c}, "ij");
  auto pts = torch::stack({mesh[0].reshape(-1), mesh[1].reshape(-1)}, 1);
  auto lp = s.model->log_prob(pts);
  const double mass = (lp.exp().sum() * h * h).item<double>();
  auto gauss = -0.5 * pts.square().sum(1) - std::log(2 * M_PI);
  INFO("mass on [-7, 7]^2 = " << mass << "; max |log p - log N| = " << max_abs(lp - gauss));
  CHECK(max_abs(lp - gauss) > 0.5);  // not the base density in disguise
  CHECK(mass == Approx(1.0).margin(5e-3));
}

TEST_CASE("cnf: collocation points lie on the particles' paths", "[cnf]") {
  Setup s(json{{"width", 16}, {"depth", 2}, {"steps", 6}}, 17);
  stronger(*s.model, 3.0);
  auto x0 = randn({30, 2}, 18);
  auto col = s.model->collocation(x0);
  REQUIRE(col.x.sizes() == x0.sizes());
  REQUIRE(col.t.sizes() == torch::IntArrayRef({30, 1}));
  CHECK(col.t.min().item<double>() >= 0);
  CHECK(col.t.max().item<double>() <= 1);
  // The points keep their graph to the parameters (RNODE's penalties differentiate through
  // the paths), and carry none under a NoGradGuard.
  CHECK(col.x.requires_grad());
  CHECK_FALSE(col.t.requires_grad());
  {
    torch::NoGradGuard no_grad;
    CHECK_FALSE(s.model->collocation(x0).x.requires_grad());
  }
  auto gx = torch::autograd::grad({col.x.sum()}, s.model->parameters(), {}, false, false, true);
  double moved = 0;
  for (const auto& g : gx)
    if (g.defined()) moved += g.abs().sum().item<double>();
  CHECK(moved > 0);
  for (int i = 0; i < 30; i += 7) {
    const double ti = col.t[i][0].item<double>();
    // The map from 0 to t_i with the same number of RK4 steps.
    auto xi = s.map().transport(x0.slice(0, i, i + 1), 0.0, ti);
    CHECK(max_abs(xi - col.x.slice(0, i, i + 1)) < 1e-12);
  }
}

TEST_CASE("cnf: bad input fails with clear errors", "[cnf]") {
  CHECK_THROWS_WITH(Setup(json{{"probes", 0}}), Catch::Contains("probes"));
  CHECK_THROWS_WITH(Setup(json{{"rtol", 0.0}}), Catch::Contains("rtol"));
  CHECK_THROWS_WITH(Setup(json{{"atol", -1.0}}), Catch::Contains("atol"));
  CHECK_THROWS_WITH(Setup(json{{"solver", "euler"}}), Catch::Contains("rk4, dopri5"));
  Setup s(json{{"width", 8}, {"depth", 1}, {"steps", 3}}, 1);
  CHECK_THROWS_WITH(s.model->loss(torch::zeros({4, 3}, torch::kFloat64)), Catch::Contains("[N, 2]"));
  {
    torch::NoGradGuard no_grad;
    s.model->parameters().back().fill_(std::nan(""));
  }
  CHECK_THROWS_WITH(s.model->loss(randn({4, 2}, 1)), Catch::Contains("non-finite state in rk4 at step 1"));
  Setup d(json{{"width", 8}, {"depth", 1}, {"solver", "dopri5"}}, 1);
  {
    torch::NoGradGuard no_grad;
    d.model->parameters().back().fill_(std::nan(""));
  }
  CHECK_THROWS_WITH(d.model->sample(4), Catch::Contains("non-finite state in dopri5 at step 1"));
}

TEST_CASE("flow_path and the transport metric on flows with closed forms", "[cnf][metric]") {
  Setup s(json{{"width", 8}, {"depth", 1}}, 1);
  auto x0 = randn({500, 2}, 30, 2.0);
  mfglab::MetricInput in;
  in.reference = x0;

  // Rotation by omega t: arcs of radius r, length omega r, chord 2 r sin(omega / 2).
  const double omega = 1.5;
  KnownFlow rot(omega, {0.0, 0.0}, false);
  auto path = mfglab::flow_path(rot, x0, 0.0, 1.0, 32);
  REQUIRE(path.sizes() == torch::IntArrayRef({33, 500, 2}));
  CHECK(max_abs(path[0] - x0) == 0);
  // RK4's global error ~ steps (omega h)^5 / 120 |x|: 4e-7 at |x| = 6, h = 1/32 (measured).
  CHECK(max_abs(path[16] - rotate(x0, omega * 0.5)) < 1e-6);
  CHECK(max_abs(path[32] - rotate(x0, omega)) < 1e-6);
  auto back = mfglab::flow_path(rot, path[32], 1.0, 0.0, 32);
  CHECK(max_abs(back[32] - x0) < 1e-7);

  auto r = x0.norm(2, 1);
  in.model = &rot;
  auto m = s.metric("transport", json{{"steps", 32}, {"max_points", 400}})->evaluate(in);
  REQUIRE(m.size() == 3);
  REQUIRE(m[0].first == "transport_cost");
  REQUIRE(m[1].first == "path_length");
  REQUIRE(m[2].first == "straightness");
  auto r400 = r.slice(0, 0, 400);
  CHECK(m[0].second == Approx(0.5 * omega * omega * r400.square().mean().item<double>()).epsilon(1e-7));
  CHECK(m[1].second == Approx(omega * r400.mean().item<double>()).epsilon(1e-7));
  CHECK(m[2].second == Approx(2 * std::sin(omega / 2) / omega).epsilon(1e-7));

  // A constant velocity c: straight lines, cost |c|^2 / 2, length |c|.
  KnownFlow shift(0.0, {0.6, -0.8}, false);
  in.model = &shift;
  m = s.metric("transport", json{{"steps", 7}})->evaluate(in);  // odd: trapezoid rule
  CHECK(m[0].second == Approx(0.5).epsilon(1e-12));
  CHECK(m[1].second == Approx(1.0).epsilon(1e-12));
  CHECK(m[2].second == Approx(1.0).epsilon(1e-12));

  // inverse_error: RK4 paths when the model has no flow map (tiny for a rotation), the
  // model's map when it offers one (here x -> 2x then identity: error |x|).
  auto inv = s.metric("inverse_error", json{{"steps", 32}});
  in.model = &rot;
  auto e = inv->evaluate(in);
  CHECK(e[1].second < 1e-7);
  KnownFlow wrong(omega, {0.0, 0.0}, true);
  in.model = &wrong;
  e = inv->evaluate(in);
  CHECK(e[0].second == Approx(r.mean().item<double>()).epsilon(1e-12));
  CHECK(e[1].second == Approx(r.max().item<double>()).epsilon(1e-12));

  // Without a model the metrics say why they cannot run.
  in.model = nullptr;
  CHECK_THROWS_WITH(inv->evaluate(in), Catch::Contains("no model"));
}

TEST_CASE("nfe counts the adaptive solver's evaluations along the model's flow", "[cnf][metric]") {
  Setup s(json{{"width", 8}, {"depth", 1}}, 1);
  auto x0 = randn({300, 2}, 31, 2.0);
  mfglab::MetricInput in;
  in.reference = x0;
  auto nfe_of = [&](mfglab::Model& model, const json& params) {
    in.model = &model;
    auto m = s.metric("nfe", params)->evaluate(in);
    REQUIRE(m.size() == 2);
    REQUIRE(m[0].first == "nfe");
    REQUIRE(m[1].first == "nfe_rejected");
    return std::make_pair(m[0].second, m[1].second);
  };
  // The same solve as dopri5 itself on the first max_points points of the same field.
  KnownFlow rot(1.5, {0.0, 0.0}, false);
  mfglab::ode::Dopri5Options o;
  o.rtol = o.atol = 1e-6;
  mfglab::ode::SolveStats direct;
  auto field = [&](const torch::Tensor& x, double t) { return rot.velocity(x, torch::full({x.size(0), 1}, t, x.options())); };
  auto end = mfglab::ode::dopri5(field, x0.slice(0, 0, 200), 0.0, 1.0, o, &direct);
  CHECK(max_abs(end - rotate(x0.slice(0, 0, 200), 1.5)) < 1e-5);
  const auto [slow, rejected] = nfe_of(rot, json{{"rtol", 1e-6}, {"atol", 1e-6}, {"max_points", 200}});
  CHECK(slow == static_cast<double>(direct.nfe));
  CHECK(rejected == static_cast<double>(direct.rejected));
  // Two evaluations choose the first step, each step attempt costs six (FSAL).
  CHECK(static_cast<int64_t>(slow) == 2 + 6 * (direct.accepted + direct.rejected));
  // Four times the angle in the same time: more steps; a tighter tolerance: more too.
  KnownFlow fast(6.0, {0.0, 0.0}, false);
  CHECK(nfe_of(fast, json{{"rtol", 1e-6}, {"atol", 1e-6}, {"max_points", 200}}).first > slow);
  CHECK(nfe_of(rot, json{{"rtol", 1e-9}, {"atol", 1e-9}, {"max_points", 200}}).first > slow);
  // A solve that cannot finish within max_steps says so.
  in.model = &fast;
  CHECK_THROWS_WITH(s.metric("nfe", json{{"rtol", 1e-10}, {"atol", 1e-10}, {"max_steps", 3}})->evaluate(in),
                    Catch::Contains("max_steps = 3"));
}

TEST_CASE("otflow offers its RK4 as a flow map", "[cnf][otflow]") {
  Setup o(json{{"width", 8}, {"steps", 4}, {"eval_steps", 8}}, 2, torch::kFloat64, "otflow");
  {
    torch::NoGradGuard no_grad;
    torch::Generator g = at::make_generator<at::CPUGeneratorImpl>(3);
    for (auto& p : o.model->parameters()) p.add_(torch::randn(p.sizes(), g, p.options()) * 0.1);
  }
  auto x = randn({100, 2}, 4, 1.5);
  auto f = o.map().transport(x, 0.0, 1.0);
  auto ref = mfglab::flow_path(*o.model, x, 0.0, 1.0, 8)[8];
  CHECK(max_abs(f - x) > 0.05);
  CHECK(max_abs(f - ref) < 1e-10);
  CHECK(max_abs(o.map().transport(f, 1.0, 0.0) - mfglab::flow_path(*o.model, f, 1.0, 0.0, 8)[8]) < 1e-10);
}

TEST_CASE("cnf: 150 iterations on 8gaussians lower the test NLL", "[cnf][train]") {
  Setup s(json{{"width", 32}, {"depth", 2}, {"steps", 4}}, 0, torch::kFloat32);
  auto data = mfglab::test::create<mfglab::Dataset>(s.host, "toy2d", json{{"name", "8gaussians"}, {"train_size", 20000}, {"test_size", 2000}}, s.ctx);
  auto train = data->train(), test = data->test();
  auto nll = [&] { return -s.model->log_prob(test).mean().item<double>(); };
  const double before = nll();
  torch::optim::Adam adam(s.model->parameters(), torch::optim::AdamOptions(0.01));
  torch::Generator g = at::make_generator<at::CPUGeneratorImpl>(1);
  double first_loss = 0, last_loss = 0;
  for (int it = 0; it < 150; ++it) {
    auto batch = train.index_select(0, torch::randint(train.size(0), {256}, g, torch::kLong));
    adam.zero_grad();
    auto terms = s.model->loss(batch);
    REQUIRE(terms.size() == 1);
    REQUIRE(terms[0].name == "nll");
    terms[0].value.backward();
    adam.step();
    (it == 0 ? first_loss : last_loss) = terms[0].value.item<double>();
  }
  const double after = nll();
  INFO("test NLL before " << before << ", after 150 iterations " << after << " nats (batch loss "
       << first_loss << " -> " << last_loss << ")");
  CHECK(first_loss == Approx(before).margin(0.5));  // the loss is the batch NLL
  CHECK(after < before - 1.0);
}

namespace {

// Loss and parameter gradients of one training step.
struct Step {
  double loss = 0;
  std::vector<Tensor> grads;
};

Step train_step(mfglab::Model& m, const Tensor& x) {
  for (auto& p : m.parameters()) p.mutable_grad() = Tensor();
  auto terms = m.loss(x);
  terms[0].value.backward();
  Step s{terms[0].value.item<double>(), {}};
  for (auto& p : m.parameters()) s.grads.push_back(p.grad().clone());
  return s;
}

// max |a - b| / max |b| over every entry.
double rel(const Tensor& a, const Tensor& b) { return max_abs(a - b) / std::max(max_abs(b), 1e-300); }

}  // namespace

TEST_CASE("cnf: the training kernel matches its autograd twin in float64", "[cnf][kernel]") {
  // Same seed: same weights and, for Hutchinson, the same probes. 300 points: two whole
  // blocks of the kernel and a partial one.
  auto x = randn({300, 2}, 11, 1.5);
  struct Case {
    const char* activation;
    const char* divergence;
    int probes;
    const char* probe;
  };
  const Case cases[] = {{"tanh", "exact", 1, "rademacher"},     {"tanh", "hutchinson", 1, "rademacher"},
                        {"tanh", "hutchinson", 3, "gaussian"},   {"silu", "exact", 1, "rademacher"},
                        {"silu", "hutchinson", 1, "rademacher"}, {"softplus", "exact", 1, "rademacher"},
                        {"softplus", "hutchinson", 2, "gaussian"}, {"gelu", "exact", 1, "rademacher"},
                        {"gelu", "hutchinson", 1, "rademacher"}, {"logcosh", "exact", 1, "rademacher"},
                        {"logcosh", "hutchinson", 1, "rademacher"}, {"relu", "exact", 1, "rademacher"},
                        {"relu", "hutchinson", 1, "rademacher"}};
  for (const auto& c : cases) {
    for (int depth : {1, 3}) {
      json p{{"width", 24}, {"depth", depth}, {"steps", 3}, {"activation", c.activation},
             {"divergence", c.divergence}, {"probes", c.probes}, {"probe", c.probe}};
      json twin = p;
      twin["fused"] = false;
      Setup fast(p, 7), slow(twin, 7);
      stronger(*fast.model, 3.0);
      stronger(*slow.model, 3.0);
      auto a = train_step(*fast.model, x);
      auto b = train_step(*slow.model, x);
      INFO(c.activation << ", " << c.divergence << " (" << c.probes << " " << c.probe << " probes), depth " << depth
                        << ": loss " << a.loss << " vs " << b.loss);
      CHECK(std::abs(a.loss - b.loss) <= 1e-10 * std::abs(b.loss));
      REQUIRE(a.grads.size() == b.grads.size());
      for (size_t k = 0; k < a.grads.size(); ++k) {
        INFO("parameter " << k << ": relative gradient difference " << rel(a.grads[k], b.grads[k]));
        CHECK(max_abs(b.grads[k]) > 0);
        CHECK(rel(a.grads[k], b.grads[k]) <= 1e-10);
      }
      // log_prob too (exact divergence for d = 2 <= exact_max_dim on both).
      CHECK(rel(fast.model->log_prob(x), slow.model->log_prob(x)) <= 1e-10);
    }
  }
  // exact_autograd (d reverse passes) is a twin of the exact kernel as well.
  Setup fast(json{{"width", 16}, {"depth", 2}, {"steps", 2}, {"divergence", "exact"}}, 4);
  Setup rev(json{{"width", 16}, {"depth", 2}, {"steps", 2}, {"divergence", "exact_autograd"}}, 4);
  auto a = train_step(*fast.model, x), b = train_step(*rev.model, x);
  CHECK(std::abs(a.loss - b.loss) <= 1e-10 * std::abs(b.loss));
  for (size_t k = 0; k < a.grads.size(); ++k) CHECK(rel(a.grads[k], b.grads[k]) <= 1e-10);
}

TEST_CASE("cnf: the training kernel's result does not depend on the thread count", "[cnf][kernel]") {
  auto x = randn({700, 2}, 12, 1.5);
  for (const char* div : {"exact", "hutchinson"}) {
    json p{{"width", 16}, {"depth", 2}, {"steps", 2}, {"divergence", div}};
    Setup one(p, 9, torch::kFloat32, "cnf", 1);
    auto a = train_step(*one.model, x.to(torch::kFloat32));
    Setup two(p, 9, torch::kFloat32, "cnf", 2);
    auto b = train_step(*two.model, x.to(torch::kFloat32));
    at::set_num_threads(1);
    CHECK(a.loss == b.loss);
    for (size_t k = 0; k < a.grads.size(); ++k) CHECK(torch::equal(a.grads[k], b.grads[k]));
    // and float32 agrees with the autograd twin up to float rounding
    p["fused"] = false;
    Setup slow(p, 9, torch::kFloat32);
    auto c = train_step(*slow.model, x.to(torch::kFloat32));
    CHECK(std::abs(a.loss - c.loss) <= 1e-5 * std::abs(c.loss));
    for (size_t k = 0; k < a.grads.size(); ++k) CHECK(rel(a.grads[k], c.grads[k]) <= 1e-4);
  }
}

TEST_CASE("cnf: RNODE penalties train alongside the kernel's NLL, as with the autograd twin", "[cnf][kernel]") {
  // The engine back-propagates NLL + weight * penalty in one call: the kernel's node and the
  // penalty's graph through the collocation paths meet in the same parameters.
  auto x = randn({160, 2}, 13, 1.5);
  for (const char* name : {"kinetic", "jacobian_frobenius"}) {
    for (const char* div : {"exact", "hutchinson"}) {
      std::vector<double> losses;
      std::vector<std::vector<Tensor>> grads;
      for (bool fused : {true, false}) {
        Setup s(json{{"width", 12}, {"depth", 2}, {"steps", 3}, {"divergence", div}, {"fused", fused}}, 8);
        stronger(*s.model, 3.0);
        auto r = mfglab::test::create<mfglab::Regularizer>(s.host, name, json::object(), s.ctx);
        auto nll = s.model->loss(x)[0].value;
        auto total = nll + 0.3 * r->penalty(*s.model, x);
        total.backward();
        losses.push_back(total.item<double>());
        grads.emplace_back();
        for (auto& p : s.model->parameters()) grads.back().push_back(p.grad().clone());
      }
      INFO(name << ", " << div << ": " << losses[0] << " vs " << losses[1]);
      CHECK(std::abs(losses[0] - losses[1]) <= 1e-10 * std::abs(losses[1]));
      for (size_t k = 0; k < grads[0].size(); ++k) CHECK(rel(grads[0][k], grads[1][k]) <= 1e-10);
    }
  }
}
