#include "cnf_loss.h"

#include <algorithm>
#include <string>
#include <type_traits>

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include "cnf_kernel.h"

namespace mfglab::cnf {
namespace {

using torch::Tensor;
using torch::autograd::variable_list;

// Samples per block: every stage's layer buffers of a block are kept for the reverse sweep
// (9 MB at width 64, depth 3, 8 steps, exact divergence in 2D). At batch 512, 64 and 128
// measured alike and 256 ~5% slower.
// Fewer when the buffers of 128 samples would pass kBudget (many directions: exact divergence
// in high dimension); when even 8 would, the kernel declines (fast_supported) and autograd runs.
constexpr int kBlock = 128;
constexpr double kBudget = 256.0 * 1024 * 1024;

int block_size(int64_t d, int64_t w, int64_t depth, int64_t directions, int64_t steps, size_t scalar, bool keep_pre) {
  const double per_sample = 4.0 * static_cast<double>(steps * depth * (directions + 1) * std::max(w, d)) *
                            static_cast<double>(scalar) * (keep_pre ? 2 : 1);
  for (int b = kBlock; b >= 8; b /= 2)
    if (per_sample * b <= kBudget) return b;
  return 0;
}

struct Result {
  double nll_sum = 0;
  std::vector<Tensor> grads;
};

template <class T>
Result run(const Tensor& x_in, const Tensor& eps_in, const std::vector<Tensor>& params_in, const FastSettings& st,
           double seed, bool want_grad, T* log_prob) {
  auto x = x_in.contiguous();
  Tensor eps = eps_in.defined() && eps_in.numel() > 0 ? eps_in.contiguous() : Tensor();
  std::vector<Tensor> params;
  for (const auto& p : params_in) params.push_back(p.detach().contiguous());
  const int64_t n = x.size(0), d = x.size(1);
  kernel::Net<T> net;
  net.d = static_cast<int>(d);
  net.w = static_cast<int>(params[0].size(1));
  net.depth = static_cast<int>(params.size()) / 2 - 1;
  for (size_t i = 0; i < params.size(); i += 2) {
    net.W.push_back(params[i].data_ptr<T>());
    net.b.push_back(params[i + 1].data_ptr<T>());
  }
  net.prepare();

  kernel::Config<T> cfg;
  cfg.steps = static_cast<int>(st.steps);
  cfg.act = static_cast<kernel::Act>(st.activation);
  cfg.exact = !eps.defined();
  cfg.probes = eps.defined() ? static_cast<int>(eps.size(0)) : 1;
  cfg.eps = eps.defined() ? eps.data_ptr<T>() : nullptr;
  cfg.seed = static_cast<T>(seed);
  cfg.n = n;
  cfg.want_grad = want_grad;
  cfg.log_prob = log_prob;

  const int B = block_size(d, net.w, net.depth, cfg.exact ? d : cfg.probes, cfg.steps, sizeof(T),
                           cfg.act != kernel::Act::tanh);
  if (B == 0) throw Error("cnf kernel: the stage buffers would not fit its memory budget");
  const int64_t blocks = (n + B - 1) / B;
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(st.threads, blocks));
  std::vector<kernel::Slot<T>> slots(blocks);
  if (want_grad)
    for (auto& s : slots) s.grad.assign(net.size, T(0));
  const T* xp = x.data_ptr<T>();
  auto work = [&](int64_t w) {
#if defined(__x86_64__)
    // The widest build of the kernel the CPU runs (float only; double is for the tests).
    if constexpr (std::is_same_v<T, float>) {
      static const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                                 __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
      static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
      if (avx512) return kernel::avx512::run_blocks(net, cfg, xp, n, B, w, workers, slots.data());
      if (avx2) return kernel::avx2::run_blocks(net, cfg, xp, n, B, w, workers, slots.data());
    }
#endif
    kernel::generic::run_blocks(net, cfg, xp, n, B, w, workers, slots.data());
  };
  if (workers == 1) {
    work(0);
  } else {
    at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
      for (int64_t w = begin; w < end; ++w) work(w);
    });
  }

  int bad = 0;
  for (const auto& s : slots)
    if (s.bad_step > 0) bad = bad == 0 ? s.bad_step : std::min(bad, s.bad_step);
  if (bad > 0) {
    // As the tensor RK4 says it (ode.h): the time the step reaches.
    const double t = static_cast<double>(bad) / static_cast<double>(st.steps);
    throw Error("non-finite state in rk4 at step " + std::to_string(bad) + " (t = " + std::to_string(t) + ")");
  }

  Result out;
  for (const auto& s : slots) out.nll_sum += s.nll_sum;
  if (!want_grad) return out;
  std::vector<T> g(net.size, T(0));
  for (const auto& s : slots)
    for (int64_t e = 0; e < net.size; ++e) g[e] += s.grad[e];
  auto opts = params[0].options();
  for (size_t i = 0; i < params.size(); i += 2) {
    const size_t l = i / 2;
    out.grads.push_back(torch::from_blob(g.data() + net.offW[l], params[i].sizes(), opts).clone());
    out.grads.push_back(torch::from_blob(g.data() + net.offb[l], params[i + 1].sizes(), opts).clone());
  }
  return out;
}

Result dispatch(const Tensor& x, const Tensor& eps, const std::vector<Tensor>& params, const FastSettings& st,
                double seed, bool want_grad, Tensor* log_prob = nullptr) {
  if (x.scalar_type() == torch::kFloat32)
    return run<float>(x, eps, params, st, seed, want_grad, log_prob ? log_prob->data_ptr<float>() : nullptr);
  if (x.scalar_type() == torch::kFloat64)
    return run<double>(x, eps, params, st, seed, want_grad, log_prob ? log_prob->data_ptr<double>() : nullptr);
  throw Error("the cnf kernel needs float32 or float64");
}

// The NLL as one autograd node; the gradient for upstream 1 is computed in the forward call
// and scaled by the upstream gradient in backward (the loss is a scalar).
struct NllFunction : public torch::autograd::Function<NllFunction> {
  using Ctx = torch::autograd::AutogradContext;

  static variable_list forward(Ctx* ctx, const Tensor& x, const Tensor& eps, at::TensorList params, int64_t steps,
                               int64_t activation, int64_t threads) {
    const FastSettings st{steps, static_cast<int>(activation), static_cast<int>(threads)};
    auto r = dispatch(x, eps, params.vec(), st, 1.0, true);
    ctx->saved_data["grads"] = r.grads;
    ctx->saved_data["params"] = static_cast<int64_t>(params.size());
    return {torch::tensor(r.nll_sum / static_cast<double>(x.size(0)), x.options())};
  }

  static variable_list backward(Ctx* ctx, variable_list upstream) {
    if (torch::GradMode::is_enabled())
      throw Error("cnf's kernel loss is differentiable once; set the model's fused: false for higher derivatives");
    auto grads = ctx->saved_data["grads"].toTensorVector();
    variable_list out{Tensor(), Tensor()};  // x, eps
    const bool seeded = upstream[0].defined();
    for (auto& g : grads) out.push_back(seeded ? g * upstream[0] : torch::zeros_like(g));
    for (int k = 0; k < 3; ++k) out.emplace_back();  // steps, activation, threads
    return out;
  }
};

}  // namespace

bool fast_supported(const std::vector<Tensor>& params, torch::ScalarType dtype, int64_t directions,
                    const FastSettings& st) {
  if (dtype != torch::kFloat32 && dtype != torch::kFloat64) return false;
  if (params.size() < 4 || params.size() % 2 != 0) return false;  // at least one hidden layer
  for (size_t i = 0; i < params.size(); ++i)
    if (params[i].scalar_type() != dtype || !params[i].device().is_cpu() || params[i].dim() != (i % 2 ? 1 : 2))
      return false;
  const int64_t d = params.back().size(0), w = params[0].size(1);
  const int64_t depth = static_cast<int64_t>(params.size()) / 2 - 1;
  return block_size(d, w, depth, directions, st.steps, dtype == torch::kFloat32 ? 4 : 8,
                    st.activation != static_cast<int>(kernel::Act::tanh)) > 0;
}

Tensor fast_nll(const Tensor& x, const Tensor& eps, const std::vector<Tensor>& params, const FastSettings& st) {
  if (x.dim() != 2 || x.size(0) < 1) throw Error("cnf kernel: expected a non-empty batch [N, d]");
  const bool grad = torch::GradMode::is_enabled() &&
                    std::any_of(params.begin(), params.end(), [](const Tensor& p) { return p.requires_grad(); });
  if (grad)
    // (an autograd input must be defined: no probes are an empty tensor)
    return NllFunction::apply(x, eps.defined() ? eps : torch::empty({0}, x.options()), at::TensorList(params), st.steps, static_cast<int64_t>(st.activation),
                              static_cast<int64_t>(st.threads))[0];
  auto r = dispatch(x, eps, params, st, 1.0, false);
  return torch::tensor(r.nll_sum / static_cast<double>(x.size(0)), x.options());
}

Tensor fast_log_prob(const Tensor& x, const Tensor& eps, const std::vector<Tensor>& params, const FastSettings& st) {
  if (x.dim() != 2) throw Error("cnf kernel: expected points [N, d]");
  auto out = torch::empty({x.size(0)}, x.options());
  if (x.size(0) == 0) return out;
  dispatch(x, eps, params, st, 1.0, false, &out);
  return out;
}

}  // namespace mfglab::cnf
