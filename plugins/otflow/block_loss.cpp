#include "block_loss.h"

#include <algorithm>
#include <functional>
#include <string>
#include <type_traits>

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include "block_kernel.h"

namespace mfglab::otflow {
namespace {

using torch::Tensor;
using torch::autograd::variable_list;

// Samples per block. Measured at width 32, 8 steps: 128 is ~5% faster than 64 (fewer matrix
// products, each with a fixed cost) and as fast as 256; a block keeps every stage's
// intermediates, 4.6 MB at 128.
constexpr int kBlock = 128;

struct Result {
  double terms[3] = {0, 0, 0};
  std::vector<Tensor> grads;  // one per parameter; empty unless asked for
};

// The kernel's view of Potential::parameters() (contiguous, kept alive by the caller), with
// trace weights c (empty: all 1).
template <class T>
kernel::Net<T> make_net(const std::vector<Tensor>& params, int64_t d, const std::vector<double>& c) {
  const int M = static_cast<int>(params.size()) / 2 - 3;
  kernel::Net<T> net;
  net.d = static_cast<int>(d), net.m = static_cast<int>(params[0].size(1)), net.M = M;
  net.h = T(1) / static_cast<T>(M);
  for (int i = 0; i <= M; ++i) {
    net.K.push_back(params[2 * i].data_ptr<T>());
    net.b.push_back(params[2 * i + 1].data_ptr<T>());
  }
  net.w = params[2 * M + 2].data_ptr<T>();
  net.A = params[2 * M + 3].data_ptr<T>();
  net.r = static_cast<int>(params[2 * M + 3].size(0));
  net.bvec = params[2 * M + 4].data_ptr<T>();
  if (!c.empty()) {
    if (static_cast<int64_t>(c.size()) != d)
      throw Error("block_loss: " + std::to_string(c.size()) + " weights for dimension " + std::to_string(d));
    for (double ck : c) net.c.push_back(static_cast<T>(ck));
  }
  net.prepare();
  return net;
}

// Potential::parameters()' gradients from the kernel's flat gradient g (Net offsets; S's slot
// holds dl/dS: dl/dA = A (Sbar + Sbar^T); c gets zeros).
template <class T>
std::vector<Tensor> unflatten(const kernel::Net<T>& net, std::vector<T>& g, const std::vector<Tensor>& params) {
  const int M = net.M;
  const int64_t d = net.d;
  auto opts = params[0].options();
  auto piece = [&](int64_t offset, at::IntArrayRef shape) {
    return torch::from_blob(g.data() + offset, shape, opts).clone();
  };
  std::vector<Tensor> out;
  for (int i = 0; i <= M; ++i) {
    out.push_back(piece(net.offK[i], params[2 * i].sizes()));
    out.push_back(piece(net.offb[i], params[2 * i + 1].sizes()));
  }
  out.push_back(piece(net.offw, params[2 * M + 2].sizes()));
  auto Sbar = piece(net.offS, {d + 1, d + 1});
  out.push_back(torch::mm(params[2 * M + 3], Sbar + Sbar.t()));
  out.push_back(piece(net.offbvec, params[2 * M + 4].sizes()));
  out.push_back(torch::zeros_like(params[2 * M + 5]));
  return out;
}

template <class T>
Result run(const Tensor& x_in, const std::vector<Tensor>& params_in, const BlockLossSettings& st,
           const double seed[3], bool want_grad) {
  auto x = x_in.contiguous();
  std::vector<Tensor> params;
  for (const auto& p : params_in) params.push_back(p.detach().contiguous());
  const int64_t n = x.size(0), d = x.size(1);
  auto net = make_net<T>(params, d, st.weights);

  kernel::Config<T> cfg;
  cfg.steps = static_cast<int>(st.steps);
  cfg.lambda = static_cast<T>(st.lambda);
  for (int k = 0; k < 3; ++k) cfg.alpha[k] = static_cast<T>(st.alpha[k]), cfg.seed[k] = static_cast<T>(seed[k]);
  cfg.n = n;
  cfg.want_grad = want_grad;

  // Fixed blocks, each with its own slot; worker w runs blocks w, w + workers, ... with one
  // scratch set. Nothing a block computes depends on which worker runs it.
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(st.threads, blocks));
  std::vector<kernel::Slot<T>> slots(blocks);
  const T* xp = x.data_ptr<T>();
  auto work = [&](int64_t w) {
#if defined(__x86_64__)
    // The AVX2 build of the kernel where the CPU has it (float only; double is for the tests).
    static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if constexpr (std::is_same_v<T, float>) {
      if (avx2) return kernel::avx2::run_blocks(net, cfg, xp, n, kBlock, w, workers, slots.data());
    }
#endif
    kernel::generic::run_blocks(net, cfg, xp, n, kBlock, w, workers, slots.data());
  };
  if (want_grad)
    for (auto& s : slots) s.grad.assign(net.size, T(0));
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
  if (bad > 0)
    throw Error("non-finite state at RK4 step " + std::to_string(bad) + " of " + std::to_string(st.steps) +
                " (t = " + std::to_string(static_cast<double>(bad) / static_cast<double>(st.steps)) + ")");

  Result out;
  for (const auto& s : slots)
    for (int k = 0; k < 3; ++k) out.terms[k] += s.terms[k];
  if (!want_grad) return out;

  std::vector<T> g(net.size, T(0));
  for (const auto& s : slots)
    for (int64_t e = 0; e < net.size; ++e) g[e] += s.grad[e];
  out.grads = unflatten(net, g, params);
  return out;
}

Result dispatch(const Tensor& x, const std::vector<Tensor>& params, const BlockLossSettings& st,
                const double seed[3], bool want_grad) {
  if (x.scalar_type() == torch::kFloat32) return run<float>(x, params, st, seed, want_grad);
  if (x.scalar_type() == torch::kFloat64) return run<double>(x, params, st, seed, want_grad);
  throw Error("the otflow block kernel needs float32 or float64");
}

// The terms as one autograd node. The gradient is computed in the forward call for upstream
// gradients (1, 1, 1), which is what the engine's backward of L + C + R asks for; any other
// upstream gradients are handled by running the kernel again with them as seeds.
struct BlockLossFunction : public torch::autograd::Function<BlockLossFunction> {
  using Ctx = torch::autograd::AutogradContext;

  static variable_list forward(Ctx* ctx, const Tensor& x, at::TensorList params, int64_t steps, double lambda,
                               std::vector<double> weights, double alpha_L, double alpha_C, double alpha_R,
                               int64_t threads) {
    const BlockLossSettings st{steps, lambda, weights, {alpha_L, alpha_C, alpha_R}, static_cast<int>(threads)};
    const double ones[3] = {1, 1, 1};
    auto r = dispatch(x, params.vec(), st, ones, true);
    std::vector<Tensor> saved{x};
    saved.insert(saved.end(), params.begin(), params.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["grads"] = r.grads;
    ctx->saved_data["steps"] = steps;
    ctx->saved_data["lambda"] = lambda;
    ctx->saved_data["weights"] = weights;
    ctx->saved_data["alpha_L"] = alpha_L;
    ctx->saved_data["alpha_C"] = alpha_C;
    ctx->saved_data["alpha_R"] = alpha_R;
    ctx->saved_data["threads"] = threads;
    auto opts = x.options();
    return {torch::tensor(r.terms[0], opts), torch::tensor(r.terms[1], opts), torch::tensor(r.terms[2], opts)};
  }

  static variable_list backward(Ctx* ctx, variable_list upstream) {
    if (torch::GradMode::is_enabled())  // create_graph: these gradients are plain numbers
      throw Error("otflow's block-kernel loss is differentiable once; set the model's fused: false "
                  "for higher derivatives");
    double seed[3];
    for (int k = 0; k < 3; ++k) seed[k] = upstream[k].defined() ? upstream[k].item<double>() : 0.0;
    auto saved = ctx->get_saved_variables();
    std::vector<Tensor> grads;
    if (seed[0] == seed[1] && seed[1] == seed[2]) {
      grads = ctx->saved_data["grads"].toTensorVector();
      if (seed[0] != 1)
        for (auto& g : grads) g = g * seed[0];
    } else {
      const BlockLossSettings st{ctx->saved_data["steps"].toInt(), ctx->saved_data["lambda"].toDouble(),
                                 ctx->saved_data["weights"].toDoubleVector(),
                                 {ctx->saved_data["alpha_L"].toDouble(), ctx->saved_data["alpha_C"].toDouble(),
                                  ctx->saved_data["alpha_R"].toDouble()},
                                 static_cast<int>(ctx->saved_data["threads"].toInt())};
      std::vector<Tensor> params(saved.begin() + 1, saved.end());
      grads = dispatch(saved[0], params, st, seed, true).grads;
    }
    variable_list out;
    out.emplace_back();  // x: no gradient
    out.insert(out.end(), grads.begin(), grads.end());
    for (int k = 0; k < 7; ++k) out.emplace_back();  // steps, lambda, weights, alphas, threads
    return out;
  }
};

// grad and Hessian by the sweep of block_kernel.h, in blocks of kBlock rows so that each
// block's intermediates stay in cache: forward into a tape (one region per block), reverse
// from it. Rows are independent; the parameter adjoints add up over the blocks in order.
template <class T>
void for_blocks(int64_t n, const std::function<void(int64_t, int)>& f) {
  for (int64_t lo = 0; lo < n; lo += kBlock) f(lo / kBlock, static_cast<int>(std::min<int64_t>(kBlock, n - lo)));
}

template <class T>
bool has_avx2() {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return std::is_same_v<T, float> && avx2;
#else
  return false;
#endif
}

template <class T>
std::vector<Tensor> hessian_forward(const Tensor& s, const std::vector<Tensor>& params, Tensor& tape) {
  const int64_t n = s.size(0), d = s.size(1) - 1;
  auto net = make_net<T>(params, d, {});
  const int64_t per_block = static_cast<int64_t>(kernel::Tape<T>::size(net, kBlock));
  tape = torch::empty({(n + kBlock - 1) / kBlock * per_block}, s.options());
  auto grad = torch::empty({n, d + 1}, s.options()), hess = torch::empty({n, d, d}, s.options());
  const T* sp = s.data_ptr<T>();
  T *gp = grad.data_ptr<T>(), *hp = hess.data_ptr<T>(), *tb = tape.data_ptr<T>();
  for_blocks<T>(n, [&](int64_t b, int nb) {
    const int64_t lo = b * kBlock;
    kernel::Tape<T> tp(net, nb, tb + b * per_block);
#if defined(__x86_64__)
    if constexpr (std::is_same_v<T, float>) {
      if (has_avx2<T>())
        return kernel::avx2::hessian_forward(net, sp + lo * (d + 1), nb, tp, gp + lo * (d + 1), hp + lo * d * d);
    }
#endif
    kernel::generic::hessian_forward(net, sp + lo * (d + 1), nb, tp, gp + lo * (d + 1), hp + lo * d * d);
  });
  return {grad, hess};
}

template <class T>
std::vector<Tensor> hessian_backward(const Tensor& s, const std::vector<Tensor>& params, const Tensor& tape,
                                     const Tensor& gbar, const Tensor& hbar) {
  const int64_t n = s.size(0), d = s.size(1) - 1;
  auto net = make_net<T>(params, d, {});
  const int64_t per_block = static_cast<int64_t>(kernel::Tape<T>::size(net, kBlock));
  auto sbar = torch::empty({n, d + 1}, s.options());
  std::vector<T> g(net.size, T(0));
  const T *sp = s.data_ptr<T>(), *gb = gbar.data_ptr<T>(), *hb = hbar.data_ptr<T>();
  T* tb = const_cast<T*>(tape.data_ptr<T>());
  T* sb = sbar.data_ptr<T>();
  for_blocks<T>(n, [&](int64_t b, int nb) {
    const int64_t lo = b * kBlock;
    kernel::Tape<T> tp(net, nb, tb + b * per_block);
#if defined(__x86_64__)
    if constexpr (std::is_same_v<T, float>) {
      if (has_avx2<T>())
        return kernel::avx2::hessian_backward(net, sp + lo * (d + 1), nb, tp, gb + lo * (d + 1), hb + lo * d * d,
                                              sb + lo * (d + 1), g.data());
    }
#endif
    kernel::generic::hessian_backward(net, sp + lo * (d + 1), nb, tp, gb + lo * (d + 1), hb + lo * d * d,
                                      sb + lo * (d + 1), g.data());
  });
  auto out = unflatten(net, g, params);
  out.insert(out.begin(), sbar);
  return out;
}

struct HessianFunction : public torch::autograd::Function<HessianFunction> {
  using Ctx = torch::autograd::AutogradContext;

  static variable_list forward(Ctx* ctx, const Tensor& s_in, at::TensorList params_in) {
    auto s = s_in.detach().contiguous();
    std::vector<Tensor> params;
    for (const auto& p : params_in) params.push_back(p.detach().contiguous());
    Tensor tape;
    auto out = s.scalar_type() == torch::kFloat32 ? hessian_forward<float>(s, params, tape)
                                                  : hessian_forward<double>(s, params, tape);
    ctx->saved_data["s"] = s;
    ctx->saved_data["params"] = params;
    ctx->saved_data["tape"] = tape;
    return out;
  }

  static variable_list backward(Ctx* ctx, variable_list upstream) {
    if (torch::GradMode::is_enabled())
      throw Error("otflow's closed-form Hessian is differentiable once; set the model's fused: false "
                  "for higher derivatives");
    auto s = ctx->saved_data["s"].toTensor();
    auto params = ctx->saved_data["params"].toTensorVector();
    auto tape = ctx->saved_data["tape"].toTensor();
    const int64_t n = s.size(0), d = s.size(1) - 1;
    auto gbar = upstream[0].defined() ? upstream[0].contiguous() : torch::zeros({n, d + 1}, s.options());
    auto hbar = upstream[1].defined() ? upstream[1].contiguous() : torch::zeros({n, d, d}, s.options());
    return s.scalar_type() == torch::kFloat32 ? hessian_backward<float>(s, params, tape, gbar, hbar)
                                              : hessian_backward<double>(s, params, tape, gbar, hbar);
  }
};

}  // namespace

std::vector<Tensor> gradient_hessian(const Tensor& s, const std::vector<Tensor>& params) {
  if (s.dim() != 2 || s.size(1) < 2) throw Error("gradient_hessian: expected points [N, d+1]");
  if (s.scalar_type() != torch::kFloat32 && s.scalar_type() != torch::kFloat64)
    throw Error("otflow's closed-form Hessian needs float32 or float64");
  return HessianFunction::apply(s, at::TensorList(params));
}

std::vector<Tensor> block_loss(const Tensor& x, const std::vector<Tensor>& params, const BlockLossSettings& st) {
  if (x.dim() != 2 || x.size(0) < 1) throw Error("block_loss: expected a non-empty batch [N, d]");
  const bool grad = torch::GradMode::is_enabled() &&
                    std::any_of(params.begin(), params.end(), [](const Tensor& p) { return p.requires_grad(); });
  if (grad)
    return BlockLossFunction::apply(x, at::TensorList(params), st.steps, st.lambda, st.weights, st.alpha[0],
                                    st.alpha[1], st.alpha[2], static_cast<int64_t>(st.threads));
  const double ones[3] = {1, 1, 1};
  auto r = dispatch(x, params, st, ones, false);
  auto opts = x.options();
  return {torch::tensor(r.terms[0], opts), torch::tensor(r.terms[1], opts), torch::tensor(r.terms[2], opts)};
}

}  // namespace mfglab::otflow
