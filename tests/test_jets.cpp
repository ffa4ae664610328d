// MLP::jets (forward-mode first and second derivatives, mfglab/nn.h),
// second_order_jets (mfglab/hessian_jets.h) and divergence_gradient_jets
// (mfglab/divergence_gradient_sweep.h) against reverse-mode autograd in float64, for every
// activation; and the score_pde penalty computed from the sgm model's
// "mfglab.score_derivatives/1" and "/2" capabilities against the autograd path, in both
// forms of the residual.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <ATen/Parallel.h>

#include <mfglab/divergence_gradient_sweep.h>
#include <mfglab/hessian_jets.h>
#include <mfglab/nn.h>
#include <mfglab/score_pde.h>
#include <mfglab/sdk.h>

#include "plugin_fixture.h"
#include "plugin_host.h"

namespace {

using nlohmann::json;
using torch::Tensor;

// max |a - b| / max(max |b|, 1e-300): one relative error for a whole tensor.
double rel_error(const Tensor& a, const Tensor& b) {
  const double scale = b.abs().max().item<double>();
  return (a - b).abs().max().item<double>() / std::max(scale, 1e-300);
}

// Derivatives of net(input) in its first d columns and in column d, by autograd.
mfglab::nn::Jets reverse_mode(const mfglab::nn::MLP& net, const Tensor& input_in, int64_t d) {
  auto input = input_in.detach().requires_grad_();
  auto out = net.forward(input);
  const int64_t m = out.size(1);
  std::vector<Tensor> jac, lap, time;
  for (int64_t j = 0; j < m; ++j) {
    auto g = torch::autograd::grad({out.select(1, j).sum()}, {input}, {}, true, true)[0];  // [N, d+1]
    jac.push_back(g.narrow(1, 0, d));
    time.push_back(g.select(1, d));
    Tensor l;
    for (int64_t k = 0; k < d; ++k) {
      auto gk = torch::autograd::grad({g.select(1, k).sum()}, {input}, {}, true, true)[0].select(1, k);
      l = k == 0 ? gk : l + gk;
    }
    lap.push_back(l);
  }
  return {out, torch::stack(jac, 2), torch::stack(lap, 1), torch::stack(time, 1)};
}

// Every second derivative of net(input) in its first d columns by autograd, [N, d, d, m]
// (hessian[n][i][j][c] = d_i d_j out_c), kept differentiable.
Tensor reverse_hessian(const mfglab::nn::MLP& net, const Tensor& input, int64_t d) {
  auto out = net.forward(input);
  std::vector<Tensor> per_output;
  for (int64_t c = 0; c < out.size(1); ++c) {
    auto g = torch::autograd::grad({out.select(1, c).sum()}, {input}, {}, true, true)[0];
    std::vector<Tensor> rows;
    for (int64_t i = 0; i < d; ++i)
      rows.push_back(torch::autograd::grad({g.select(1, i).sum()}, {input}, {}, true, true)[0].narrow(1, 0, d));
    per_output.push_back(torch::stack(rows, 1));  // [N, d, d]
  }
  return torch::stack(per_output, 3);
}

const mfglab::engine::PluginHost& host() { return mfglab::test::plugin_host(); }

}  // namespace

TEST_CASE("MLP::jets matches autograd for every activation", "[jets]") {
  at::set_num_threads(1);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  for (std::string name : {"silu", "gelu", "tanh", "softplus", "relu", "logcosh"})
    for (int64_t depth : {1, 3}) {
      auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
      const int64_t d = 3;
      std::vector<int64_t> sizes{d + 1};
      for (int64_t i = 0; i < depth; ++i) sizes.push_back(24);
      sizes.push_back(d);
      mfglab::nn::MLP net(sizes, mfglab::nn::parse_activation(name), gen, f64);
      auto input = torch::randn({64, d + 1}, gen, f64) * 1.5;
      auto fast = net.jets(input, d);
      auto slow = reverse_mode(net, input, d);
      INFO("activation " << name << ", depth " << depth);
      CHECK(rel_error(fast.value, slow.value) < 1e-12);
      CHECK(rel_error(fast.jacobian, slow.jacobian) < 1e-10);
      CHECK(rel_error(fast.time, slow.time) < 1e-10);
      CHECK(rel_error(fast.laplacian, slow.laplacian) < 1e-8);
      if (name != "relu") CHECK(slow.laplacian.abs().max().item<double>() > 1e-3);  // not trivially zero

      // The parameter gradient of a functional of all four outputs.
      auto functional = [](const mfglab::nn::Jets& j) {
        return j.value.square().sum() + j.jacobian.sin().sum() + (j.laplacian * j.time).sum() +
               j.laplacian.square().sum();
      };
      auto params = net.parameters();
      auto g_fast = torch::autograd::grad({functional(fast)}, params);
      auto g_slow = torch::autograd::grad({functional(slow)}, params);
      for (size_t p = 0; p < params.size(); ++p) {
        INFO("parameter " << p);
        CHECK(rel_error(g_fast[p], g_slow[p]) < 1e-8);
      }

      // fused_jets: the same values, and its hand-written reverse pass gives the same
      // gradients in the parameters and in the input.
      auto leaf = input.detach().requires_grad_();
      auto fused = net.fused_jets(leaf, d);
      CHECK(rel_error(fused.value, slow.value) < 1e-12);
      CHECK(rel_error(fused.jacobian, slow.jacobian) < 1e-10);
      CHECK(rel_error(fused.time, slow.time) < 1e-10);
      CHECK(rel_error(fused.laplacian, slow.laplacian) < 1e-8);
      auto with_input = params;
      with_input.push_back(leaf);
      auto g_fused = torch::autograd::grad({functional(fused)}, with_input);
      auto leaf2 = input.detach().requires_grad_();
      auto g_plain = torch::autograd::grad({functional(net.jets(leaf2, d))}, [&] {
        auto v = params;
        v.push_back(leaf2);
        return v;
      }());
      for (size_t p = 0; p < with_input.size(); ++p) {
        INFO("fused, parameter " << p << (p + 1 == with_input.size() ? " (the input)" : ""));
        CHECK(rel_error(g_fused[p], g_plain[p]) < 1e-8);
      }
    }
}

TEST_CASE("second_order_jets: the Hessian sweep matches autograd, values and gradients", "[jets][hessian]") {
  at::set_num_threads(1);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  using mfglab::nn::SecondOrderKind;
  for (std::string name : {"silu", "tanh", "gelu", "softplus", "logcosh"})
    for (int64_t d : {1, 2, 3})
      for (bool time_column : {true, false}) {
        auto gen = at::make_generator<at::CPUGeneratorImpl>(2);
        const int64_t cols = d + (time_column ? 1 : 0);
        mfglab::nn::MLP net({cols, 16, 16, d}, mfglab::nn::parse_activation(name), gen, f64);
        // 300 rows: more than one block of the sweep, the last one partial.
        auto input = torch::randn({300, cols}, gen, f64) * 1.5;
        INFO("activation " << name << ", d = " << d << (time_column ? ", with time" : ", no time"));
        auto leaf = input.detach().requires_grad_();
        auto fast = mfglab::nn::second_order_jets(net, leaf, d, SecondOrderKind::hessian);
        auto leaf2 = input.detach().requires_grad_();
        auto slow = reverse_hessian(net, leaf2, d);  // [N, d, d, m]
        REQUIRE(fast.second.size(0) == d * (d + 1) / 2);
        CHECK(rel_error(fast.value, net.forward(input)) < 1e-12);
        std::vector<Tensor> slabs(fast.second.size(0));
        for (int64_t i = 0; i < d; ++i)
          for (int64_t j = i; j < d; ++j) slabs[mfglab::nn::hessian_slab(i, j, d)] = slow.select(1, i).select(1, j);
        auto expected = torch::stack(slabs, 0);  // [S, N, m]
        CHECK(rel_error(fast.second, expected) < 1e-10);
        CHECK(expected.abs().max().item<double>() > 1e-3);  // not trivially zero
        // The parameter and input gradients of a functional of the slabs.
        auto functional = [](const Tensor& second) { return (second.square() + second.sin()).sum(); };
        auto with_input = net.parameters();
        with_input.push_back(leaf);
        // (The last bias does not reach second derivatives: its gradient is zero or absent.)
        auto g_fast = torch::autograd::grad({functional(fast.second)}, with_input, {}, false, false, true);
        auto with_input2 = net.parameters();
        with_input2.push_back(leaf2);
        auto g_slow = torch::autograd::grad({functional(expected)}, with_input2, {}, false, false, true);
        auto or_zero = [](const Tensor& g, const Tensor& like) { return g.defined() ? g : torch::zeros_like(like); };
        for (size_t p = 0; p < with_input.size(); ++p) {
          INFO("parameter " << p << (p + 1 == with_input.size() ? " (the input)" : ""));
          const auto a = or_zero(g_fast[p], with_input[p]), b = or_zero(g_slow[p], with_input[p]);
          if (b.abs().max().item<double>() == 0) CHECK(a.abs().max().item<double>() == 0);
          else CHECK(rel_error(a, b) < 1e-10);
        }
      }
}

TEST_CASE("divergence_gradient_jets: value, derivatives and grad(div out) match autograd, with their gradients",
          "[jets][divergence_gradient]") {
  at::set_num_threads(1);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  for (std::string name : {"silu", "tanh", "gelu", "softplus", "logcosh"})
    for (int64_t d : {1, 2, 3})
      for (bool time_column : {true, false})
        for (int hidden : {1, 3}) {
          auto gen = at::make_generator<at::CPUGeneratorImpl>(4);
          const int64_t cols = d + (time_column ? 1 : 0);
          // Hidden layers of different widths, so no weight is mistaken for another's transpose.
          std::vector<int64_t> sizes{cols, 16};
          if (hidden == 3) sizes.insert(sizes.end(), {12, 20});
          sizes.push_back(d);
          mfglab::nn::MLP net(sizes, mfglab::nn::parse_activation(name), gen, f64);
          // 600 rows: more than one block of the sweep (kDivergenceRows), the last one partial.
          auto input = torch::randn({600, cols}, gen, f64) * 1.5;
          INFO("activation " << name << ", d = " << d << (time_column ? ", with time" : ", no time") << ", "
                             << hidden << " hidden layers");
          auto leaf = input.detach().requires_grad_();
          auto fast = mfglab::nn::divergence_gradient_jets(net, leaf, d);
          auto leaf2 = input.detach().requires_grad_();
          auto out = net.forward(leaf2);
          std::vector<Tensor> first;  // d out_c / d input, [N, cols] each
          for (int64_t c = 0; c < d; ++c)
            first.push_back(torch::autograd::grad({out.select(1, c).sum()}, {leaf2}, {}, true, true)[0]);
          Tensor div;
          for (int64_t c = 0; c < d; ++c) div = c == 0 ? first[c].select(1, c) : div + first[c].select(1, c);
          auto grad_div = torch::autograd::grad({div.sum()}, {leaf2}, {}, true, true)[0].narrow(1, 0, d);
          auto jacobian = torch::stack(first, 2).narrow(1, 0, d);  // [N, d, d]: [n][k][c] = d_k out_c
          CHECK(rel_error(fast.value, out) < 1e-12);
          CHECK(rel_error(fast.jacobian, jacobian) < 1e-10);
          CHECK(rel_error(fast.divergence_gradient, grad_div) < 1e-10);
          CHECK(grad_div.abs().max().item<double>() > 1e-3);  // not trivially zero
          Tensor time;
          if (time_column) {
            time = torch::stack(first, 2).select(1, d);  // [N, d]
            REQUIRE(fast.time.defined());
            CHECK(rel_error(fast.time, time) < 1e-10);
          } else {
            CHECK_FALSE(fast.time.defined());
          }
          // The parameter and input gradients of a functional of every output.
          auto functional = [&](const Tensor& value, const Tensor& jac, const Tensor& t, const Tensor& gd) {
            auto f = (gd.square() + gd.sin()).sum() + (jac * jac.cos()).sum() + value.pow(3).sum();
            return t.defined() ? f + (t.exp() * 0.1).sum() : f;
          };
          auto with_input = net.parameters();
          with_input.push_back(leaf);
          auto g_fast = torch::autograd::grad({functional(fast.value, fast.jacobian, fast.time, fast.divergence_gradient)},
                                              with_input, {}, false, false, true);
          auto with_input2 = net.parameters();
          with_input2.push_back(leaf2);
          auto g_slow = torch::autograd::grad({functional(out, jacobian, time, grad_div)}, with_input2, {}, false, false, true);
          for (size_t p = 0; p < with_input.size(); ++p) {
            INFO("parameter " << p << (p + 1 == with_input.size() ? " (the input)" : ""));
            REQUIRE(g_fast[p].defined());
            REQUIRE(g_slow[p].defined());
            CHECK(g_slow[p].abs().max().item<double>() > 0);
            CHECK(rel_error(g_fast[p], g_slow[p]) < 1e-10);
          }
        }
  // Wrong shapes get an error that says what the sweep needs.
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  mfglab::nn::MLP wide({3, 8, 3}, mfglab::nn::Activation::silu, gen, f64);
  CHECK_THROWS_WITH(mfglab::nn::divergence_gradient_jets(wide, torch::randn({4, 3}, gen, f64), 2),
                    Catch::Contains("d outputs"));
}

TEST_CASE("MLP::forward on data: one node with a hand-written backward, same values and gradients", "[mlp]") {
  at::set_num_threads(1);
  for (auto dtype : {torch::kFloat64, torch::kFloat32})
    for (std::string name : {"silu", "tanh", "gelu", "relu", "softplus", "logcosh"}) {
      const bool f64 = dtype == torch::kFloat64;
      INFO("activation " << name << (f64 ? ", float64" : ", float32"));
      auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
      const auto opts = torch::TensorOptions().dtype(dtype);
      mfglab::nn::MLP net({3, 32, 32, 32, 2}, mfglab::nn::parse_activation(name), gen, opts);
      // Pre-activations spread over [-30, 30], so that both tails of exp are exercised.
      auto input = torch::randn({257, 3}, gen, opts) * 6.0;
      auto target = torch::randn({257, 2}, gen, opts);
      auto params = net.parameters();
      auto loss = [&](const Tensor& out) { return (out - target).square().sum() + out.sin().sum(); };
      auto fast = net.forward(input);  // grad mode on, data input: the fused node
      auto plain = net.forward_ops(input);
      CHECK(fast.grad_fn()->name() != plain.grad_fn()->name());  // really two different paths
      const double tol = f64 ? 1e-12 : 2e-5;
      CHECK(rel_error(fast, plain) < tol);
      auto g_fast = torch::autograd::grad({loss(fast)}, params);
      auto g_plain = torch::autograd::grad({loss(plain)}, params);
      for (size_t p = 0; p < params.size(); ++p) {
        INFO("parameter " << p);
        CHECK(rel_error(g_fast[p], g_plain[p]) < (f64 ? 1e-11 : 1e-4));
      }
    }
  // A second derivative through the node would miss the slopes' dependence on the
  // parameters: it is refused, and an input that requires grad takes the plain path.
  auto gen = at::make_generator<at::CPUGeneratorImpl>(4);
  mfglab::nn::MLP net({2, 8, 1}, mfglab::nn::Activation::silu, gen, torch::TensorOptions().dtype(torch::kFloat64));
  auto out = net.forward(torch::randn({5, 2}, gen, torch::kFloat64));
  CHECK_THROWS_WITH(torch::autograd::grad({out.sum()}, net.parameters(), {}, true, /*create_graph=*/true),
                    Catch::Contains("differentiable once"));
  auto x = torch::randn({5, 2}, gen, torch::kFloat64).requires_grad_();
  auto gx = torch::autograd::grad({net.forward(x).sum()}, {x}, {}, true, true)[0];
  CHECK(torch::autograd::grad({gx.square().sum()}, {net.parameters()[0]})[0].abs().max().item<double>() > 0);
}

TEST_CASE("MLP::jets without a time column", "[jets]") {
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(2);
  mfglab::nn::MLP net({2, 16, 16, 1}, mfglab::nn::Activation::tanh, gen, f64);
  auto input = torch::randn({32, 2}, gen, f64);
  auto fast = net.jets(input, 2);
  CHECK_FALSE(fast.time.defined());
  CHECK(fast.jacobian.sizes() == torch::IntArrayRef({32, 2, 1}));
  CHECK_THROWS(net.jets(input, 0));
  CHECK_THROWS(net.jets(torch::randn({4, 3}, gen, f64), 2));
}

TEST_CASE("sgm score derivatives and the score_pde penalty agree with autograd", "[jets][score_pde]") {
  at::set_num_threads(1);
  for (std::string process : {"vp", "subvp", "ve", "ou"})
    for (std::string activation : {"silu", "tanh"}) {
      INFO("process " << process << ", activation " << activation);
      mfglab::RunContext ctx;
      ctx.generator = at::make_generator<at::CPUGeneratorImpl>(3);
      ctx.dtype = torch::kFloat64;
      ctx.data_dim = 2;
      auto model = mfglab::test::create<mfglab::Model>(host(), "sgm", json{{"width", 32}, {"depth", 2}, {"process", process}, {"activation", activation}}, ctx);
      auto* sd = mfglab::capability<mfglab::ScoreDerivatives>(model.get(), mfglab::kScoreDerivatives);
      REQUIRE(sd != nullptr);
      auto batch = torch::randn({128, 2}, at::make_generator<at::CPUGeneratorImpl>(4), torch::kFloat64);
      auto c = model->collocation(batch);

      auto fast = sd->score_derivatives(c.x, c.t);
      auto slow = mfglab::score_pde::autograd_derivatives(*model, c.x, c.t);
      CHECK(rel_error(fast.score, slow.score) < 1e-12);
      CHECK(rel_error(fast.jacobian, slow.jacobian) < 1e-10);
      CHECK(rel_error(fast.laplacian, slow.laplacian) < 1e-8);
      CHECK(rel_error(fast.time, slow.time) < 1e-8);

      auto r_fast = mfglab::score_pde::residual(*model, c.x, c.t, fast);
      auto r_slow = mfglab::score_pde::residual(*model, c.x, c.t, slow);
      CHECK(rel_error(r_fast, r_slow) < 1e-8);

      // The regularizer (which takes the capability) against the autograd residual at the
      // same collocation points, and the parameter gradients of both.
      auto reg = mfglab::test::create<mfglab::Regularizer>(host(), "score_pde", json{{"norm", "l2"}}, ctx);
      ctx.generator.set_current_seed(5);
      auto penalty = reg->penalty(*model, batch);
      ctx.generator.set_current_seed(5);
      auto c2 = model->collocation(batch);
      auto expected = mfglab::score_pde::residual(*model, c2.x, c2.t,
                                                  mfglab::score_pde::autograd_derivatives(*model, c2.x, c2.t))
                          .square().sum(1).mean();
      CHECK(penalty.item<double>() == Approx(expected.item<double>()).epsilon(1e-9));
      auto params = model->parameters();
      auto g_fast = torch::autograd::grad({penalty}, params);
      auto g_slow = torch::autograd::grad({expected}, params);
      for (size_t p = 0; p < params.size(); ++p) {
        INFO("parameter " << p);
        CHECK(rel_error(g_fast[p], g_slow[p]) < 1e-8);
      }

      // hjb_residual is |r|_2 of the same residual.
      auto* hr = mfglab::capability<mfglab::HjbResidual>(model.get(), mfglab::kHjbResidual);
      REQUIRE(hr != nullptr);
      CHECK(rel_error(hr->hjb_residual(c.x, c.t), r_slow.norm(2, 1)) < 1e-8);
    }
}

TEST_CASE("sgm with a potential network: score derivatives and both penalty forms agree with autograd",
          "[jets][score_pde]") {
  at::set_num_threads(1);
  namespace pde = mfglab::score_pde;
  for (std::string process : {"vp", "ve"})
    for (std::string activation : {"silu", "tanh", "gelu"}) {
      INFO("process " << process << ", activation " << activation);
      mfglab::RunContext ctx;
      ctx.generator = at::make_generator<at::CPUGeneratorImpl>(6);
      ctx.dtype = torch::kFloat64;
      ctx.data_dim = 2;
      auto model = mfglab::test::create<mfglab::Model>(host(), "sgm", json{{"width", 16}, {"depth", 3}, {"parameterization", "potential"}, {"process", process}, {"activation", activation}},
          ctx);
      auto* sd = mfglab::capability<mfglab::ScoreDerivatives2>(model.get(), mfglab::kScoreDerivatives2);
      REQUIRE(sd != nullptr);
      REQUIRE(mfglab::capability<mfglab::ScoreDerivatives>(model.get(), mfglab::kScoreDerivatives) != nullptr);
      auto batch = torch::randn({48, 2}, at::make_generator<at::CPUGeneratorImpl>(7), torch::kFloat64);
      auto c = model->collocation(batch);
      for (auto second : {mfglab::ScoreSecondOrder::laplacian, mfglab::ScoreSecondOrder::grad_div}) {
        INFO((second == mfglab::ScoreSecondOrder::laplacian ? "Laplacian" : "grad(div s)"));
        REQUIRE(sd->offers(second));
        auto fast = sd->score_derivatives(c.x, c.t, second);
        auto slow = pde::autograd_derivatives(*model, c.x, c.t, second);
        CHECK(rel_error(fast.score, slow.score) < 1e-12);
        CHECK(rel_error(fast.jacobian, slow.jacobian) < 1e-10);
        CHECK(rel_error(fast.laplacian, slow.laplacian) < 1e-10);
        CHECK(rel_error(fast.time, slow.time) < 1e-10);
      }

      for (std::string form : {"lap", "grad"})
        for (std::string norm : {"l2", "l1"}) {
          INFO("form " << form << ", norm " << norm);
          auto second = form == "grad" ? pde::SecondOrder::grad_div : pde::SecondOrder::laplacian;
          auto reg = mfglab::test::create<mfglab::Regularizer>(host(), "score_pde", json{{"norm", norm}, {"form", form}}, ctx);
          ctx.generator.set_current_seed(5);
          auto penalty = reg->penalty(*model, batch);
          ctx.generator.set_current_seed(5);
          auto c2 = model->collocation(batch);
          auto r = pde::residual(*model, c2.x, c2.t, pde::autograd_derivatives(*model, c2.x, c2.t, second));
          auto expected = norm == "l2" ? r.square().sum(1).mean() : r.abs().sum(1).mean();
          CHECK(std::abs(penalty.item<double>() - expected.item<double>()) <= 1e-10 * std::abs(expected.item<double>()));
          // The output bias shifts the potential only: no gradient reaches it on either path.
          auto params = model->parameters();
          auto g_fast = torch::autograd::grad({penalty}, params, {}, false, false, /*allow_unused=*/true);
          auto g_slow = torch::autograd::grad({expected}, params, {}, false, false, /*allow_unused=*/true);
          for (size_t p = 0; p < params.size(); ++p) {
            INFO("parameter " << p);
            if (g_slow[p].defined())
              CHECK(rel_error(g_fast[p], g_slow[p]) < 1e-10);
            else if (g_fast[p].defined())  // the sweep returns zeros for it
              CHECK(g_fast[p].abs().max().item<double>() == 0);
          }
          CHECK_FALSE(g_slow.back().defined());
        }

      auto* hr = mfglab::capability<mfglab::HjbResidual>(model.get(), mfglab::kHjbResidual);
      REQUIRE(hr != nullptr);
      auto expected = pde::residual(*model, c.x, c.t, pde::autograd_derivatives(*model, c.x, c.t)).norm(2, 1);
      CHECK(rel_error(hr->hjb_residual(c.x, c.t), expected) < 1e-10);
    }
}

namespace {

// Whether the autograd graph behind `t` holds a node whose name contains `part` (the fast
// paths are custom nodes: this tells which path a penalty took).
bool graph_has(const Tensor& t, const std::string& part) {
  std::vector<torch::autograd::Node*> todo{t.grad_fn().get()};
  std::vector<torch::autograd::Node*> seen;
  while (!todo.empty()) {
    auto* node = todo.back();
    todo.pop_back();
    if (node == nullptr || std::find(seen.begin(), seen.end(), node) != seen.end()) continue;
    seen.push_back(node);
    if (node->name().find(part) != std::string::npos) return true;
    for (const auto& edge : node->next_edges()) todo.push_back(edge.function.get());
  }
  return false;
}

}  // namespace

TEST_CASE("sgm grad(div s) from jets and the grad-form score_pde penalty agree with autograd", "[jets][score_pde]") {
  at::set_num_threads(1);
  namespace pde = mfglab::score_pde;
  // Every process and activation at d = 2; one of each at d = 9.
  for (int64_t d : {2, 9})
    for (std::string process : {"vp", "subvp", "ve", "ou"})
      for (std::string activation : {"silu", "tanh", "gelu"}) {
        if (d > 2 && (process != "vp" || activation != "silu")) continue;
        INFO("d " << d << ", process " << process << ", activation " << activation);
        mfglab::RunContext ctx;
        ctx.generator = at::make_generator<at::CPUGeneratorImpl>(8);
        ctx.dtype = torch::kFloat64;
        ctx.data_dim = d;
        auto model = mfglab::test::create<mfglab::Model>(host(), "sgm", json{{"width", 32}, {"depth", 3}, {"process", process}, {"activation", activation}}, ctx);
        auto* sd = mfglab::capability<mfglab::ScoreDerivatives2>(model.get(), mfglab::kScoreDerivatives2);
        REQUIRE(sd != nullptr);
        REQUIRE(sd->offers(mfglab::ScoreSecondOrder::grad_div));
        REQUIRE(sd->offers(mfglab::ScoreSecondOrder::laplacian));
        auto batch = torch::randn({96, d}, at::make_generator<at::CPUGeneratorImpl>(9), torch::kFloat64);
        auto c = model->collocation(batch);

        auto fast = sd->score_derivatives(c.x, c.t, mfglab::ScoreSecondOrder::grad_div);
        auto slow = pde::autograd_derivatives(*model, c.x, c.t, pde::SecondOrder::grad_div);
        CHECK(rel_error(fast.score, slow.score) < 1e-12);
        CHECK(rel_error(fast.jacobian, slow.jacobian) < 1e-10);
        CHECK(rel_error(fast.laplacian, slow.laplacian) < 1e-10);  // grad(div s)
        CHECK(rel_error(fast.time, slow.time) < 1e-10);
        // On a network score grad(div s) is not Lap s: the check above is not the Laplacian's.
        auto lap = sd->score_derivatives(c.x, c.t, mfglab::ScoreSecondOrder::laplacian);
        CHECK(rel_error(lap.laplacian, fast.laplacian) > 1e-3);

        for (std::string norm : {"l2", "l1"}) {
          INFO("norm " << norm);
          auto reg = mfglab::test::create<mfglab::Regularizer>(host(), "score_pde", json{{"norm", norm}, {"form", "grad"}}, ctx);
          ctx.generator.set_current_seed(5);
          auto penalty = reg->penalty(*model, batch);
          CHECK(graph_has(penalty, "DivergenceGradientSweep"));  // the fast path was taken
          ctx.generator.set_current_seed(5);
          auto c2 = model->collocation(batch);
          auto r = pde::residual(*model, c2.x, c2.t, pde::autograd_derivatives(*model, c2.x, c2.t, pde::SecondOrder::grad_div));
          auto expected = norm == "l2" ? r.square().sum(1).mean() : r.abs().sum(1).mean();
          CHECK_FALSE(graph_has(expected, "DivergenceGradientSweep"));
          CHECK(std::abs(penalty.item<double>() - expected.item<double>()) <= 1e-10 * std::abs(expected.item<double>()));
          auto params = model->parameters();
          auto g_fast = torch::autograd::grad({penalty}, params);
          auto g_slow = torch::autograd::grad({expected}, params);
          for (size_t p = 0; p < params.size(); ++p) {
            INFO("parameter " << p);
            CHECK(rel_error(g_fast[p], g_slow[p]) < 1e-10);
          }
        }
      }
}

TEST_CASE("sgm's loss trains on the regularizers' points and reuses the sweep's network output", "[jets][score_pde]") {
  at::set_num_threads(1);
  for (std::string form : {"grad", "lap"}) {
    INFO("form " << form);
    const int64_t d = 2, n = 96;
    mfglab::RunContext ctx;
    ctx.generator = at::make_generator<at::CPUGeneratorImpl>(8);
    ctx.dtype = torch::kFloat64;
    ctx.data_dim = d;
    auto model = mfglab::test::create<mfglab::Model>(host(), "sgm", json{{"width", 32}, {"depth", 3}}, ctx);
    auto reg = mfglab::test::create<mfglab::Regularizer>(host(), "score_pde", json{{"form", form}}, ctx);
    auto* fp = mfglab::capability<mfglab::ForwardProcess>(model.get(), mfglab::kForwardProcess);
    REQUIRE(fp != nullptr);
    auto batch = torch::randn({n, d}, at::make_generator<at::CPUGeneratorImpl>(9), torch::kFloat64);

    // As the engine does: the penalty first, then the loss on the same batch tensor.
    ctx.generator.set_current_seed(5);
    auto penalty = reg->penalty(*model, batch);
    auto dsm = model->loss(batch).at(0).value;
    CHECK(graph_has(dsm, form == "grad" ? "DivergenceGradientSweep" : "SecondOrderSweep"));
    CHECK_FALSE(graph_has(dsm, "MlpSweep"));  // the network was not run a second time

    // Expected: DSM at the points collocation() draws from the same generator state, with
    // the noise recovered from x = alpha x0 + sigma z and the network run afresh.
    ctx.generator.set_current_seed(5);
    auto c = model->collocation(batch);
    auto sigma = fp->sigma(c.t);
    auto z = (c.x - fp->alpha(c.t) * batch) / sigma;
    auto net = -sigma * model->score(c.x, c.t);  // score = -net / sigma
    auto expected = (net - z).square().sum() / static_cast<double>(n);
    CHECK(std::abs(dsm.item<double>() - expected.item<double>()) <= 1e-12 * expected.item<double>());
    auto params = model->parameters();
    // The gradient of the whole objective, which goes through the sweep's reverse pass once.
    auto g_shared = torch::autograd::grad({dsm + penalty}, params, {}, /*retain_graph=*/true);
    auto g_expected = torch::autograd::grad({expected + penalty}, params);
    for (size_t p = 0; p < params.size(); ++p) {
      INFO("parameter " << p);
      CHECK(rel_error(g_shared[p], g_expected[p]) < 1e-10);
    }

    // A loss on another batch than the one the points were drawn for draws its own and runs
    // the network itself.
    reg->penalty(*model, batch);
    auto other = model->loss(batch.clone()).at(0).value;
    CHECK(graph_has(other, "MlpSweep"));
    CHECK_FALSE(graph_has(other, form == "grad" ? "DivergenceGradientSweep" : "SecondOrderSweep"));
    // And a loss with no penalty before it, too.
    auto alone = model->loss(batch).at(0).value;
    CHECK(graph_has(alone, "MlpSweep"));
    // Points changed in place after collocation() are no longer the loss's: the network output
    // there is not kept.
    auto moved = model->collocation(batch);
    moved.x.add_(0.5);
    auto* sd = mfglab::capability<mfglab::ScoreDerivatives2>(model.get(), mfglab::kScoreDerivatives2);
    REQUIRE(sd != nullptr);
    sd->score_derivatives(moved.x, moved.t,
                          form == "grad" ? mfglab::ScoreSecondOrder::grad_div : mfglab::ScoreSecondOrder::laplacian);
    auto after_move = model->loss(batch).at(0).value;
    CHECK(graph_has(after_move, "MlpSweep"));
  }
}

TEST_CASE("divergence_gradient refuses jets without the whole Hessian", "[jets][hessian]") {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  mfglab::nn::MLP net({3, 8, 2}, mfglab::nn::Activation::silu, gen, torch::TensorOptions().dtype(torch::kFloat64));
  auto input = torch::randn({5, 3}, gen, torch::kFloat64);
  auto hessian = mfglab::nn::second_order_jets(net, input, 2, mfglab::nn::SecondOrderKind::hessian);
  CHECK(mfglab::nn::divergence_gradient(hessian, 2).sizes() == torch::IntArrayRef({5, 2}));
  auto laplacian = mfglab::nn::second_order_jets(net, input, 2, mfglab::nn::SecondOrderKind::laplacian);
  CHECK_THROWS_WITH(mfglab::nn::divergence_gradient(laplacian, 2), Catch::Contains("SecondOrderKind::hessian"));
}

TEST_CASE("the toolkit's fast exp and expm1 agree with libm", "[jets]") {
  // exp: relative error below 1e-6 away from the subnormal range, and the clamp at +-87.
  double worst_exp = 0, worst_expm1 = 0;
  for (int k = -86000; k <= 86900; ++k) {  // not at the ends: subnormal results, the clamp
    const float x = static_cast<float>(k) * 1e-3f;
    const double want = std::exp(static_cast<double>(x));
    worst_exp = std::max(worst_exp, std::fabs(mfglab::fast::exp(x) - want) / want);
  }
  CHECK(worst_exp < 1e-6);
  CHECK(mfglab::fast::exp(-200.0f) == mfglab::fast::exp(-87.0f));
  CHECK(std::isfinite(mfglab::fast::exp(200.0f)));
  // expm1 keeps its relative accuracy for small |x|, where exp(x) - 1 would cancel.
  for (float x : {-1e-7f, -3e-5f, 1e-6f, -1e-3f, 0.02f, -0.3f, -0.9f, -5.0f, -40.0f, 3.0f}) {
    const double want = std::expm1(static_cast<double>(x));
    worst_expm1 = std::max(worst_expm1, std::fabs(mfglab::fast::expm1(x) - want) / std::fabs(want));
  }
  CHECK(worst_expm1 < 1e-6);
  CHECK(mfglab::fast::expm1(0.0f) == 0.0f);
  // double is libm itself.
  CHECK(mfglab::fast::exp(0.7) == std::exp(0.7));
  CHECK(mfglab::fast::expm1(-1e-9) == std::expm1(-1e-9));
}
