// Small building blocks for model plugins: an MLP whose weights come from the run's
// generator (torch::nn modules initialise from the global generator, which breaks
// reproducibility under parallel runs), and derivative helpers.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <torch/csrc/autograd/custom_function.h>

#include "mfglab/fast_exp.h"
#include "mfglab/sdk.h"

namespace mfglab::nn {

enum class Activation { silu, gelu, tanh, relu, softplus, logcosh };

// Every activation by name; a plugin declares the ones it supports with
// mfglab::choice_param("activation", Activation::silu, activation_choices(), ...), or a subset
// with activation_choices().without({...}).
inline const Choices<Activation>& activation_choices() {
  static const Choices<Activation> table{{"silu", Activation::silu}, {"gelu", Activation::gelu},
                                         {"tanh", Activation::tanh}, {"relu", Activation::relu},
                                         {"softplus", Activation::softplus}, {"logcosh", Activation::logcosh}};
  return table;
}

inline Activation parse_activation(const std::string& name) { return activation_choices().value(name, "activation"); }

inline torch::Tensor activate(Activation a, const torch::Tensor& x) {
  switch (a) {
    case Activation::silu: return torch::silu(x);
    case Activation::gelu: return torch::gelu(x);
    case Activation::tanh: return torch::tanh(x);
    case Activation::relu: return torch::relu(x);
    case Activation::softplus: return torch::softplus(x);
    case Activation::logcosh:  // log cosh x = |x| + log1p(exp(-2|x|)) - log 2, stable
      return torch::abs(x) + torch::log1p(torch::exp(-2 * torch::abs(x))) - std::log(2.0);
  }
  throw Error("unreachable activation");
}

// An activation's value and its first and second derivatives at x, in closed form, for
// forward-mode derivative propagation (MLP::jets). The value is activate(a, x) itself, so
// jets and forward() agree bit for bit. relu'' is taken as 0 (true almost everywhere).
struct ActivationDerivatives {
  torch::Tensor value, first, second;
};

inline ActivationDerivatives activation_derivatives(Activation a, const torch::Tensor& x) {
  switch (a) {
    case Activation::silu: {  // x s(x): s (1 + x (1 - s)), s (1 - s) (2 + x (1 - 2 s))
      auto s = torch::sigmoid(x);
      auto one_minus = 1 - s;
      auto value = x * s;
      auto first = s + value * one_minus;
      auto second = s * one_minus * (2 + x * (1 - 2 * s));
      return {value, first, second};
    }
    case Activation::gelu: {  // x Phi(x): Phi + x phi, phi (2 - x^2)
      const double inv_sqrt2 = 1.0 / std::sqrt(2.0), inv_sqrt2pi = 1.0 / std::sqrt(2.0 * M_PI);
      auto cdf = 0.5 * (1 + torch::erf(x * inv_sqrt2));
      auto pdf = torch::exp(-0.5 * x.square()) * inv_sqrt2pi;
      return {x * cdf, cdf + x * pdf, pdf * (2 - x.square())};
    }
    case Activation::tanh: {  // 1 - tanh^2, -2 tanh (1 - tanh^2)
      auto th = torch::tanh(x);
      auto first = 1 - th.square();
      return {th, first, -2 * th * first};
    }
    case Activation::relu:
      return {torch::relu(x), (x > 0).to(x.scalar_type()), torch::zeros_like(x)};
    case Activation::softplus: {  // sigmoid, sigmoid (1 - sigmoid)
      auto s = torch::sigmoid(x);
      return {torch::softplus(x), s, s * (1 - s)};
    }
    case Activation::logcosh: {  // tanh, 1 - tanh^2
      auto th = torch::tanh(x);
      return {activate(a, x), th, 1 - th.square()};
    }
  }
  throw Error("unreachable activation");
}

// act', act'' and act''' at x, for the hand-written reverse pass of MLP::fused_jets (the
// parameter gradient of a Laplacian involves the third derivative).
struct ActivationDerivatives3 {
  torch::Tensor first, second, third;
};

inline ActivationDerivatives3 activation_derivatives3(Activation a, const torch::Tensor& x) {
  switch (a) {
    case Activation::silu: {  // u = s (1 - s): act''' = u ((1 - 2 s)(3 + x (1 - 2 s)) - 2 x u)
      auto s = torch::sigmoid(x);
      auto u = s * (1 - s);
      auto c = 1 - 2 * s;
      auto first = s * (1 + x * (1 - s));
      auto second = u * (2 + x * c);
      auto third = u * (c * (3 + x * c) - 2 * x * u);
      return {first, second, third};
    }
    case Activation::gelu: {  // act''' = phi (x^3 - 4 x)
      const double inv_sqrt2 = 1.0 / std::sqrt(2.0), inv_sqrt2pi = 1.0 / std::sqrt(2.0 * M_PI);
      auto cdf = 0.5 * (1 + torch::erf(x * inv_sqrt2));
      auto pdf = torch::exp(-0.5 * x.square()) * inv_sqrt2pi;
      auto x2 = x.square();
      return {cdf + x * pdf, pdf * (2 - x2), pdf * x * (x2 - 4)};
    }
    case Activation::tanh: {  // p = 1 - tanh^2: act''' = 2 p (2 tanh^2 - p)
      auto th = torch::tanh(x);
      auto p = 1 - th.square();
      return {p, -2 * th * p, 2 * p * (2 * th.square() - p)};
    }
    case Activation::relu: {
      auto zero = torch::zeros_like(x);
      return {(x > 0).to(x.scalar_type()), zero, zero};
    }
    case Activation::softplus: {  // u = s (1 - s): act''' = u (1 - 2 s)
      auto s = torch::sigmoid(x);
      auto u = s * (1 - s);
      return {s, u, u * (1 - 2 * s)};
    }
    case Activation::logcosh: {  // tanh, 1 - tanh^2, -2 tanh (1 - tanh^2)
      auto th = torch::tanh(x);
      auto p = 1 - th.square();
      return {th, p, -2 * th * p};
    }
  }
  throw Error("unreachable activation");
}

// An MLP's output at (x, t) with its derivatives, from one forward sweep (MLP::jets).
struct Jets {
  torch::Tensor value;      // [N, m]
  torch::Tensor jacobian;   // [N, d, m]: jacobian[n][k][j] = d out_j / d x_k
  torch::Tensor laplacian;  // [N, m]: sum_k d^2 out_j / d x_k^2
  torch::Tensor time;       // [N, m]: d out_j / d t; undefined without a time column
};

namespace detail {

// The jets of a layer's pre-activation, stacked [K, N, w] as (a, da/dx_1..da/dx_d, [da/dt],
// Lap a), through the activation into `out` (same layout).
inline void jet_activation(Activation act, const torch::Tensor& A, int64_t d, const torch::Tensor& out) {
  const int64_t K = A.size(0), k = K - 2;
  auto da = A.narrow(0, 1, k);
  auto ad = activation_derivatives(act, A[0]);
  out[0].copy_(ad.value);
  auto out_da = out.narrow(0, 1, k);
  torch::mul_out(out_da, da, ad.first.unsqueeze(0));
  auto lap = out[K - 1];
  torch::mul_out(lap, ad.second, da.narrow(0, 0, d).square().sum(0));
  lap.addcmul_(ad.first, A[K - 1]);
}

// Reverse of jet_activation: from the gradient G of its output slabs to that of its input
// slabs A. With S = sum over space directions of (da_m)^2, the output slabs are act(a),
// act'(a) da_m and act''(a) S + act'(a) Lap a, so
//   g_a     = act' G_h + act'' (sum_m da_m G_m + Lap a G_lap) + act''' S G_lap
//   g_da_m  = act' G_m + 2 act'' da_m G_lap  (the last term for space directions only)
//   g_lap   = act' G_lap
inline torch::Tensor jet_activation_backward(Activation act, const torch::Tensor& A, int64_t d, const torch::Tensor& G) {
  const int64_t K = A.size(0), k = K - 2;
  auto da = A.narrow(0, 1, k);
  auto Gd = G.narrow(0, 1, k);
  auto G_lap = G[K - 1];
  auto ad = activation_derivatives3(act, A[0]);
  auto out = torch::empty_like(A);
  auto g_da = out.narrow(0, 1, k);
  torch::mul_out(g_da, Gd, ad.first.unsqueeze(0));
  auto second_lap = ad.second * G_lap;
  g_da.narrow(0, 0, d).addcmul_(da.narrow(0, 0, d), second_lap.unsqueeze(0), 2.0);
  auto g_lap = out[K - 1];
  torch::mul_out(g_lap, ad.first, G_lap);
  auto g_a = out[0];
  torch::mul_out(g_a, ad.first, G[0]);
  g_a.addcmul_(ad.second, (da * Gd).sum(0)).addcmul_(second_lap, A[K - 1]);
  g_a.addcmul_(ad.third * G_lap, da.narrow(0, 0, d).square().sum(0));
  return out;
}

// MLP::jets as one autograd node with a hand-written reverse pass: the forward writes each
// layer's slabs into one buffer (no concatenations) and the backward runs two matmuls per
// layer plus a few fused elementwise passes, instead of autograd's dozens of small nodes.
// tensors = (input, W0, b0, W1, b1, ...); returns the output's jets stacked [K, N, m].
struct JetSweep : public torch::autograd::Function<JetSweep> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, at::TensorList tensors, int64_t d,
                               int64_t activation) {
    torch::NoGradGuard no_grad;
    const auto act = static_cast<Activation>(activation);
    const auto& input = tensors[0];
    const size_t L = (tensors.size() - 1) / 2;
    const int64_t n = input.size(0), k = input.size(1), K = k + 2;
    // Layer 0 is affine in the input: da/dx_m is row m of W0 for every sample, Lap a = 0.
    const auto& W0 = tensors[1];
    auto A = torch::empty({K, n, W0.size(1)}, input.options());
    auto A0 = A[0];
    torch::addmm_out(A0, tensors[2], input, W0);
    A.narrow(0, 1, k).copy_(W0.unsqueeze(1));
    A[K - 1].zero_();
    std::vector<torch::Tensor> pre, stacks;  // hidden pre-activation jets; each later layer's input slabs
    for (size_t i = 1; i < L; ++i) {
      auto Z = torch::empty_like(A);
      jet_activation(act, A, d, Z);
      pre.push_back(A);
      stacks.push_back(Z);
      A = torch::mm(Z.view({K * n, -1}), tensors[1 + 2 * i]).view({K, n, -1});
      A[0].add_(tensors[2 + 2 * i]);
    }
    ctx->save_for_backward(std::vector<torch::Tensor>(tensors.begin(), tensors.end()));
    ctx->saved_data["pre"] = pre;  // intermediates only: the output itself is never saved (no cycle)
    ctx->saved_data["stacks"] = stacks;
    ctx->saved_data["d"] = d;
    ctx->saved_data["activation"] = activation;
    return A;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (torch::GradMode::is_enabled())
      throw Error("MLP::fused_jets is differentiable once; use MLP::jets for higher derivatives");
    auto saved = ctx->get_saved_variables();
    auto pre = ctx->saved_data["pre"].toTensorVector();
    auto stacks = ctx->saved_data["stacks"].toTensorVector();
    const int64_t d = ctx->saved_data["d"].toInt();
    const auto act = static_cast<Activation>(ctx->saved_data["activation"].toInt());
    const auto& input = saved[0];
    const size_t L = (saved.size() - 1) / 2;
    const int64_t n = input.size(0), k = input.size(1), K = k + 2;
    torch::autograd::variable_list out(saved.size() + 2);  // + the two non-tensor arguments
    if (!grads[0].defined()) return out;
    auto G = grads[0].contiguous();  // gradient of the current layer's pre-activation jets
    for (size_t i = L - 1; i > 0; --i) {
      const auto& W = saved[1 + 2 * i];
      auto G2 = G.view({K * n, -1});
      out[1 + 2 * i] = stacks[i - 1].view({K * n, -1}).t().mm(G2);
      out[2 + 2 * i] = G[0].sum(0);
      G = jet_activation_backward(act, pre[i - 1], d, G2.mm(W.t()).view({K, n, -1}));
    }
    // Layer 0: a = input W0 + b0, da_m = W0[m].
    const auto& W0 = saved[1];
    auto gW0 = input.t().mm(G[0]);
    gW0.add_(G.narrow(0, 1, k).sum(1));
    out[1] = gW0;
    out[2] = G[0].sum(0);
    if (ctx->needs_input_grad(0)) out[0] = G[0].mm(W0.t());
    return out;
  }
};

// ---- Activation value and slope in one pass, for MlpSweep -------------------------------
// LibTorch's silu forward and backward are two separate passes that each evaluate exp
// (about 120 us each on a 1024 x 128 float batch here); the loops below compute act(a)
// and act'(a) together, once, with an exp the compiler can vectorise (fast_exp.h), and GCC
// clones them for AVX-512, AVX2 and plain x86-64, picked at load time.

// exp_approx: kept for plugins written against toolkit 1.0; new code calls mfglab::fast::exp
// (<mfglab/fast_exp.h>), which this forwards to.
inline float exp_approx(float x) { return fast::exp(x); }
inline double exp_approx(double x) { return fast::exp(x); }

// silu(a) = a s, s = 1 / (1 + e^-a); slope s (1 + a (1 - s)).
template <class T>
inline void silu_point(T a, T& value, T& slope) {
  const T s = T(1) / (T(1) + fast::exp(-a));
  value = a * s;
  slope = s + value * (T(1) - s);
}
// tanh(a) = sign(a) (1 - e) / (1 + e), e = e^{-2|a|}; slope 1 - tanh^2.
template <class T>
inline void tanh_point(T a, T& value, T& slope) {
  const T e = fast::exp(T(-2) * (a < T(0) ? -a : a));
  const T t = (T(1) - e) / (T(1) + e);
  value = a < T(0) ? -t : t;
  slope = T(1) - t * t;
}

// Clones for x86-64 feature levels where GCC can make them; elsewhere one plain function.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MFGLAB_X86_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MFGLAB_X86_CLONES
#endif

#define MFGLAB_ACTIVATION_LOOP(name, point)                                                          \
  template <class T>                                                                                 \
  inline void name##_generic(const T* a, T* value, T* slope, int64_t n) {                            \
    for (int64_t i = 0; i < n; ++i) point<T>(a[i], value[i], slope[i]);                              \
  }                                                                                                  \
  MFGLAB_X86_CLONES inline void name(                                                                \
      const float* a, float* value, float* slope, int64_t n) {                                       \
    for (int64_t i = 0; i < n; ++i) point<float>(a[i], value[i], slope[i]);                          \
  }                                                                                                  \
  inline void name(const double* a, double* value, double* slope, int64_t n) {                       \
    name##_generic<double>(a, value, slope, n);                                                      \
  }
MFGLAB_ACTIVATION_LOOP(silu_loop, silu_point)
MFGLAB_ACTIVATION_LOOP(tanh_loop, tanh_point)
#undef MFGLAB_ACTIVATION_LOOP
#undef MFGLAB_X86_CLONES

// act(a) and act'(a): one fused loop for silu and tanh on contiguous float or double, the
// closed forms of activation_derivatives otherwise.
inline std::pair<torch::Tensor, torch::Tensor> value_and_slope(Activation act, const torch::Tensor& a) {
  const bool loop = (act == Activation::silu || act == Activation::tanh) && a.is_contiguous() &&
                    a.device().is_cpu() && (a.scalar_type() == torch::kFloat || a.scalar_type() == torch::kDouble);
  if (!loop) {
    auto ad = activation_derivatives(act, a);
    return {ad.value, ad.first};
  }
  auto value = torch::empty_like(a), slope = torch::empty_like(a);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "value_and_slope", [&] {
    const auto* in = a.data_ptr<scalar_t>();
    auto* v = value.data_ptr<scalar_t>();
    auto* s = slope.data_ptr<scalar_t>();
    if (act == Activation::silu)
      silu_loop(in, v, s, a.numel());
    else
      tanh_loop(in, v, s, a.numel());
  });
  return {value, slope};
}

// MLP::forward as one autograd node with a hand-written reverse pass, for training on data
// (the input needs no gradient): the forward keeps each layer's input and activation slope,
// the backward is two matrix products, a column sum and one multiply per layer. Autograd's
// graph would instead evaluate the activation's derivative again from scratch.
// tensors = (input, W0, b0, W1, b1, ...). Differentiable once.
struct MlpSweep : public torch::autograd::Function<MlpSweep> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, at::TensorList tensors, int64_t activation) {
    torch::NoGradGuard no_grad;
    const auto act = static_cast<Activation>(activation);
    const size_t L = (tensors.size() - 1) / 2;
    std::vector<torch::Tensor> inputs{tensors[0]}, slopes;  // each layer's input; each hidden slope
    torch::Tensor h = tensors[0];
    for (size_t i = 0; i < L; ++i) {
      h = torch::addmm(tensors[2 + 2 * i], h, tensors[1 + 2 * i]);
      if (i + 1 == L) break;
      auto vs = value_and_slope(act, h);
      h = vs.first;
      inputs.push_back(h);
      slopes.push_back(vs.second);
    }
    ctx->save_for_backward(std::vector<torch::Tensor>(tensors.begin() + 1, tensors.end()));
    ctx->saved_data["inputs"] = inputs;  // intermediates only: the output itself is never saved
    ctx->saved_data["slopes"] = slopes;
    return h;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (torch::GradMode::is_enabled())
      throw Error("MLP::forward on data is differentiable once; give the input requires_grad "
                  "for higher derivatives");
    const auto params = ctx->get_saved_variables();
    const auto inputs = ctx->saved_data["inputs"].toTensorVector();
    const auto slopes = ctx->saved_data["slopes"].toTensorVector();
    const size_t L = params.size() / 2;
    torch::autograd::variable_list out(1 + params.size() + 1);  // input, params, activation
    if (!grads[0].defined()) return out;
    auto G = grads[0].contiguous();  // gradient of layer i's pre-activation
    for (size_t i = L; i-- > 0;) {
      out[1 + 2 * i] = inputs[i].t().mm(G);
      out[2 + 2 * i] = G.sum(0);
      if (i > 0) G = G.mm(params[2 * i].t()).mul_(slopes[i - 1]);
    }
    if (ctx->needs_input_grad(0)) out[0] = G.mm(params[0].t());
    return out;
  }
};

}  // namespace detail

// Fully connected network sizes[0] -> ... -> sizes.back(), activation between layers,
// linear output. Weights are stored [in, out] so a layer is one addmm.
class MLP {
 public:
  MLP() = default;
  MLP(const std::vector<int64_t>& sizes, Activation activation, torch::Generator generator,
      const torch::TensorOptions& options)
      : activation_(activation) {
    if (sizes.size() < 2) throw Error("an MLP needs at least an input and an output size");
    for (size_t i = 0; i + 1 < sizes.size(); ++i) {
      // PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for W and b.
      const double bound = 1.0 / std::sqrt(static_cast<double>(sizes[i]));
      auto w = torch::empty({sizes[i], sizes[i + 1]}, options).uniform_(-bound, bound, generator);
      auto b = torch::empty({sizes[i + 1]}, options).uniform_(-bound, bound, generator);
      weights_.push_back(w.requires_grad_());
      biases_.push_back(b.requires_grad_());
    }
  }

  // Training on data (grad mode on, the input needs no gradient) takes detail::MlpSweep,
  // differentiable once in the parameters; anything else takes the plain operations,
  // differentiable any number of times.
  torch::Tensor forward(const torch::Tensor& input) const {
    if (torch::GradMode::is_enabled() && !input.requires_grad() && !weights_.empty()) {
      std::vector<torch::Tensor> tensors{input};
      for (size_t i = 0; i < weights_.size(); ++i) tensors.insert(tensors.end(), {weights_[i], biases_[i]});
      return detail::MlpSweep::apply(at::TensorList(tensors), static_cast<int64_t>(activation_));
    }
    return forward_ops(input);
  }

  // The same network as plain LibTorch operations (autograd records every one).
  torch::Tensor forward_ops(const torch::Tensor& input) const {
    torch::Tensor h = input;
    for (size_t i = 0; i < weights_.size(); ++i) {
      h = torch::addmm(biases_[i], h, weights_[i]);
      if (i + 1 < weights_.size()) h = activate(activation_, h);
    }
    return h;
  }

  // The output and its derivatives in the first d input columns (x) and, when the input
  // has a column d (time), in that one: one forward sweep that carries, per layer, the
  // pre-activation a, its directional derivatives da/dx_k and da/dt, and Lap_x a, using
  //   h = act(a),  dh = act'(a) da,  Lap h = act''(a) sum_k (da/dx_k)^2 + act'(a) Lap a.
  // The derivative rows go through each layer's weight matrix in the same matmul as the
  // values (bias on the values only). All plain tensor ops: autograd gives the gradient of
  // anything built from the result in the parameters (second order in x for the
  // Laplacian, where reverse mode needs d^2 backward passes).
  Jets jets(const torch::Tensor& input, int64_t d) const {
    const int64_t n = input.size(0), cols = input.size(1);
    if (d < 1 || d > cols || cols > d + 1 || weights_.empty() || cols != weights_[0].size(0))
      throw Error("MLP::jets: the input must have the network's " + std::to_string(weights_.empty() ? 0 : weights_[0].size(0)) +
                  " columns: d = " + std::to_string(d) + " space columns and at most one time column");
    const int64_t k = cols;  // first-order directions: x_1..x_d, then t when present
    // Layer 0 is affine in the input: da/dx_k is row k of W0 for every sample, Lap a = 0.
    auto a = torch::addmm(biases_[0], input, weights_[0]);
    auto da = weights_[0].unsqueeze(1).expand({k, n, weights_[0].size(1)});  // [k, N, w]
    torch::Tensor lap;  // undefined means zero
    for (size_t i = 0;; ++i) {
      if (i > 0) {
        // [value; k first-order rows; Laplacian] as one (k + 2) N x w_in matrix.
        auto out = torch::cat({a.unsqueeze(0), da, lap.unsqueeze(0)}, 0)
                       .reshape({(k + 2) * n, -1})
                       .mm(weights_[i])
                       .view({k + 2, n, -1});
        a = out[0] + biases_[i];
        da = out.narrow(0, 1, k);
        lap = out[k + 1];
      }
      if (i + 1 == weights_.size()) break;
      auto act = activation_derivatives(activation_, a);
      auto lap_h = act.second * da.narrow(0, 0, d).square().sum(0);
      if (lap.defined()) lap_h = lap_h + act.first * lap;
      da = da * act.first.unsqueeze(0);
      a = act.value;  // from here on a, da, lap describe the layer's output h
      lap = lap_h;
    }
    Jets result;
    result.value = a;
    result.jacobian = da.narrow(0, 0, d).permute({1, 0, 2});
    result.laplacian = lap.defined() ? lap : torch::zeros_like(a);
    if (k > d) result.time = da[d];
    return result;
  }

  // The same as jets() with a hand-written reverse pass (detail::JetSweep): faster, and
  // differentiable once (in the parameters and the input), which is what a training loss
  // needs; use jets() to differentiate the result twice.
  Jets fused_jets(const torch::Tensor& input, int64_t d) const {
    const int64_t cols = input.size(1);
    if (d < 1 || d > cols || cols > d + 1 || weights_.empty() || cols != weights_[0].size(0))
      throw Error("MLP::fused_jets: the input must have the network's " +
                  std::to_string(weights_.empty() ? 0 : weights_[0].size(0)) + " columns: d = " +
                  std::to_string(d) + " space columns and at most one time column");
    std::vector<torch::Tensor> tensors{input};
    for (size_t i = 0; i < weights_.size(); ++i) tensors.insert(tensors.end(), {weights_[i], biases_[i]});
    auto out = detail::JetSweep::apply(at::TensorList(tensors), d, static_cast<int64_t>(activation_));
    Jets result;
    result.value = out[0];
    result.jacobian = out.narrow(0, 1, d).permute({1, 0, 2});
    result.laplacian = out[cols + 1];
    if (cols > d) result.time = out[d + 1];
    return result;
  }

  Activation activation() const { return activation_; }

  std::vector<torch::Tensor> parameters() const {
    std::vector<torch::Tensor> out;
    for (size_t i = 0; i < weights_.size(); ++i) {
      out.push_back(weights_[i]);
      out.push_back(biases_[i]);
    }
    return out;
  }

 private:
  std::vector<torch::Tensor> weights_, biases_;
  Activation activation_ = Activation::silu;
};

// d(sum of y)/dx with a graph kept for higher derivatives. x must require grad.
inline torch::Tensor grad(const torch::Tensor& y, const torch::Tensor& x, bool create_graph = true) {
  return torch::autograd::grad({y.sum()}, {x}, {}, /*retain_graph=*/true, create_graph)[0];
}

// Exact divergence sum_i d f_i / d x_i of f: [N, d] -> [N, d] by d backward passes.
inline torch::Tensor divergence(const torch::Tensor& f, const torch::Tensor& x, bool create_graph = true) {
  auto div = torch::zeros({f.size(0)}, f.options());
  for (int64_t i = 0; i < f.size(1); ++i) {
    auto gi = grad(f.select(1, i), x, create_graph);
    div = div + gi.select(1, i);
  }
  return div;
}

// Hutchinson estimate E[eps^T (df/dx) eps] with the given probes eps [N, d].
inline torch::Tensor divergence_hutchinson(const torch::Tensor& f, const torch::Tensor& x,
                                           const torch::Tensor& eps, bool create_graph = true) {
  auto vjp = torch::autograd::grad({f}, {x}, {eps}, /*retain_graph=*/true, create_graph)[0];
  return (vjp * eps).sum(1);
}

}  // namespace mfglab::nn
