// Small building blocks for model plugins: an MLP whose weights come from the run's
// generator (torch::nn modules initialise from the global generator, which breaks
// reproducibility under parallel runs), and derivative helpers.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "mfglab/sdk.h"

namespace mfglab::nn {

enum class Activation { silu, gelu, tanh, relu, softplus, logcosh };

inline Activation parse_activation(const std::string& name) {
  if (name == "silu") return Activation::silu;
  if (name == "gelu") return Activation::gelu;
  if (name == "tanh") return Activation::tanh;
  if (name == "relu") return Activation::relu;
  if (name == "softplus") return Activation::softplus;
  if (name == "logcosh") return Activation::logcosh;
  throw Error("unknown activation '" + name + "' (expected silu|gelu|tanh|relu|softplus|logcosh)");
}

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

  torch::Tensor forward(const torch::Tensor& input) const {
    torch::Tensor h = input;
    for (size_t i = 0; i < weights_.size(); ++i) {
      h = torch::addmm(biases_[i], h, weights_[i]);
      if (i + 1 < weights_.size()) h = activate(activation_, h);
    }
    return h;
  }

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
