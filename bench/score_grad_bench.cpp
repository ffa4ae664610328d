// grad(div s) of a score network three ways, by dimension: the tangent-and-adjoint sweep
// (mfglab/divergence_gradient_sweep.h, sgm's route), one sweep of Hessian jets
// (mfglab/hessian_jets.h) and reverse-mode autograd (mfglab/score_pde.h's route: d passes for
// J and d_t s, then one for grad(div s)).
// Each step computes s, J, d_t s and grad(div s) of s = net([x, t]), a residual-like loss
// |d_t s - grad(div s) - J s|_1 + |s|^2, and its backward into the parameters: the part of a
// score-PDE training step that the choice of route changes. Prints the median milliseconds
// per step of each route, autograd's time over each sweep's, and the losses (equal up to
// rounding).
//
//   score_grad_bench [--dims 2,3,4,5,6,8] [--batch 1024] [--width 128] [--depth 3]
//                    [--iters 20] [--threads 1] [--routes adjoint,hessian,autograd]
// (a route left out prints 0 ms: for profiling one route alone)
#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <mfglab/divergence_gradient_sweep.h>
#include <mfglab/hessian_jets.h>
#include <mfglab/score_pde.h>

#include "running/gemm_backend.h"

namespace {

using Clock = std::chrono::steady_clock;
using torch::Tensor;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

Tensor residual_loss(const Tensor& s, const Tensor& jacobian, const Tensor& time, const Tensor& grad_div) {
  auto js = (jacobian * s.unsqueeze(1)).sum(2);  // (J s)_k = sum_j d_k s_j s_j
  return (time - grad_div - js).abs().sum(1).mean() + s.square().sum(1).mean();
}

// As sgm does: tangents up, output adjoints down, no second-order slabs.
Tensor adjoint_sweep_loss(const mfglab::nn::MLP& net, const Tensor& input, int64_t d) {
  auto jets = mfglab::nn::divergence_gradient_jets(net, input, d);
  return residual_loss(jets.value, jets.jacobian, jets.time, jets.divergence_gradient);
}

// One sweep of Hessian jets, then grad(div s) gathered from its slabs.
Tensor hessian_sweep_loss(const mfglab::nn::MLP& net, const Tensor& input, int64_t d) {
  auto jets = mfglab::nn::second_order_jets(net, input, d, mfglab::nn::SecondOrderKind::hessian);
  return residual_loss(jets.value, jets.jacobian, jets.time, mfglab::nn::divergence_gradient(jets, d));
}

Tensor autograd_loss(const mfglab::nn::MLP& net, const Tensor& input, int64_t d) {
  namespace pde = mfglab::score_pde;
  auto x = input.narrow(1, 0, d).detach().requires_grad_();
  auto t = input.narrow(1, d, 1).detach().requires_grad_();
  auto s = net.forward(torch::cat({x, t}, 1));
  std::vector<Tensor> columns, dt;
  for (int64_t j = 0; j < d; ++j) {
    auto g = pde::grads(s, {x, t}, pde::unit(s, j));
    columns.push_back(g[0]);
    dt.push_back(g[1]);
  }
  auto jacobian = torch::stack(columns, 2);
  auto div = jacobian.diagonal(0, 1, 2).sum(1);
  auto grad_div = pde::grads(div, {x}, torch::ones_like(div))[0];
  return residual_loss(s, jacobian, torch::cat(dt, 1), grad_div);
}

std::vector<int64_t> parse_list(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::stoll(item));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  // The engine's settings (main.cpp's tune_process): heap-kept large buffers.
  mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
  mallopt(M_TRIM_THRESHOLD, 256 * 1024 * 1024);
  std::vector<int64_t> dims{2, 3, 4, 5, 6, 8};
  int64_t batch = 1024, width = 128, depth = 3;
  int iters = 20, threads = 1;
  std::string routes = "adjoint,hessian,autograd";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--dims") dims = parse_list(value);
    else if (flag == "--batch") batch = std::stoll(value);
    else if (flag == "--width") width = std::stoll(value);
    else if (flag == "--depth") depth = std::stoll(value);
    else if (flag == "--iters") iters = std::stoi(value);
    else if (flag == "--threads") threads = std::stoi(value);
    else if (flag == "--routes") routes = value;
    else {
      std::fprintf(stderr, "score_grad_bench: unknown option %s\n", flag.c_str());
      return 2;
    }
  }
  at::set_num_threads(threads);
  std::printf("grad(div s), score network %lld x %lld silu, batch %lld, float32 (GEMM: %s), %d thread(s), median of %d steps\n",
              static_cast<long long>(depth), static_cast<long long>(width), static_cast<long long>(batch),
              mfglab::engine::gemm_backend(), threads, iters);
  std::printf("%4s %13s %13s %13s %9s %9s %13s %13s %13s\n", "d", "adjoint ms", "hessian ms", "autograd ms",
              "ag/adj", "ag/hess", "adjoint loss", "hessian loss", "autograd loss");
  for (int64_t d : dims) {
    auto gen = torch::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(d));
    std::vector<int64_t> sizes{d + 1};
    for (int64_t k = 0; k < depth; ++k) sizes.push_back(width);
    sizes.push_back(d);
    mfglab::nn::MLP net(sizes, mfglab::nn::Activation::silu, gen, torch::TensorOptions().dtype(torch::kFloat32));
    auto input = torch::cat({torch::randn({batch, d}, gen), torch::rand({batch, 1}, gen)}, 1);
    double loss_value[3] = {0, 0, 0};
    double ms[3] = {0, 0, 0};
    const char* names[3] = {"adjoint", "hessian", "autograd"};
    for (int route = 0; route < 3; ++route) {
      if (routes.find(names[route]) == std::string::npos) continue;
      std::vector<double> times;
      for (int it = 0; it < iters + 3; ++it) {
        for (auto& p : net.parameters()) p.mutable_grad() = Tensor();
        const auto t0 = Clock::now();
        auto loss = route == 0   ? adjoint_sweep_loss(net, input, d)
                    : route == 1 ? hessian_sweep_loss(net, input, d)
                                 : autograd_loss(net, input, d);
        loss.backward();
        const double dt = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        if (it >= 3) times.push_back(dt);  // after warm-up
        loss_value[route] = loss.item<double>();
      }
      ms[route] = median(times);
    }
    std::printf("%4lld %13.2f %13.2f %13.2f %8.2fx %8.2fx %13.6g %13.6g %13.6g\n", static_cast<long long>(d), ms[0],
                ms[1], ms[2], ms[2] / ms[0], ms[2] / ms[1], loss_value[0], loss_value[1], loss_value[2]);
    std::fflush(stdout);
  }
  return 0;
}
