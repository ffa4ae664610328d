// FusedAdam (engine/src/running/fused_adam.h) against LibTorch's Adam: the same parameters after
// many steps, and checkpoints that move between the two.
#include <sstream>
#include <vector>

#include <catch2/catch.hpp>
#include <torch/torch.h>

#include "fused_adam.h"

namespace {

// Parameters of several shapes and a gradient that depends on them (a quadratic with a
// varying target), so that the moments and the bias corrections all matter.
std::vector<torch::Tensor> make_params(torch::Dtype dtype) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  const auto opts = torch::TensorOptions().dtype(dtype);
  return {torch::randn({7, 5}, gen, opts).requires_grad_(), torch::randn({5}, gen, opts).requires_grad_(),
          torch::randn({1}, gen, opts).requires_grad_()};
}

void set_gradients(std::vector<torch::Tensor>& params, int step) {
  for (size_t i = 0; i < params.size(); ++i) {
    torch::NoGradGuard no_grad;
    auto target = torch::full_like(params[i], std::sin(0.3 * step + static_cast<double>(i)));
    params[i].mutable_grad() = 2 * (params[i] - target) + 0.1 * params[i].square();
  }
}

}  // namespace

TEST_CASE("FusedAdam takes the same steps as torch::optim::Adam") {
  for (auto dtype : {torch::kFloat64, torch::kFloat32})
    for (double weight_decay : {0.0, 0.05}) {
      INFO((dtype == torch::kFloat64 ? "float64" : "float32") << ", weight decay " << weight_decay);
      auto a = make_params(dtype), b = make_params(dtype);
      const auto options = torch::optim::AdamOptions(0.05).betas({0.8, 0.95}).weight_decay(weight_decay);
      torch::optim::Adam reference(a, options);
      mfglab::engine::FusedAdam fused(b, options);
      for (int step = 0; step < 50; ++step) {
        set_gradients(a, step);
        set_gradients(b, step);
        reference.step();
        fused.step();
      }
      const double tol = dtype == torch::kFloat64 ? 1e-12 : 2e-5;
      for (size_t i = 0; i < a.size(); ++i) {
        INFO("parameter " << i);
        CHECK(torch::allclose(a[i], b[i], tol, tol));
        CHECK_FALSE(torch::allclose(a[i], make_params(dtype)[i]));  // they did move
      }

      // A checkpoint of either optimizer continues in the other.
      std::ostringstream saved;
      {
        torch::serialize::OutputArchive archive;
        fused.save(archive);
        archive.save_to(saved);
      }
      auto c = std::vector<torch::Tensor>{};
      for (auto& p : a) c.push_back(p.detach().clone().requires_grad_());
      torch::optim::Adam resumed(c, options);
      std::istringstream in(saved.str());
      torch::serialize::InputArchive archive;
      archive.load_from(in);
      resumed.load(archive);
      for (int step = 50; step < 60; ++step) {
        set_gradients(b, step);
        set_gradients(c, step);
        fused.step();
        resumed.step();
      }
      for (size_t i = 0; i < b.size(); ++i) CHECK(torch::allclose(b[i], c[i], tol, tol));
    }
}

TEST_CASE("FusedAdam hands what it cannot fuse to Adam::step") {
  // A non-contiguous parameter (a transposed view's storage order) and amsgrad.
  auto base = torch::randn({4, 3}, at::make_generator<at::CPUGeneratorImpl>(6), torch::kFloat64);
  auto p = base.t().requires_grad_();
  auto q = base.t().clone().requires_grad_();
  REQUIRE_FALSE(p.is_contiguous());
  for (bool amsgrad : {false, true}) {
    auto options = torch::optim::AdamOptions(0.1).amsgrad(amsgrad);
    auto pp = p.detach().clone(torch::MemoryFormat::Preserve).requires_grad_();
    auto qq = q.detach().clone().requires_grad_();
    mfglab::engine::FusedAdam fused({pp}, options);
    torch::optim::Adam reference({qq}, options);
    for (int step = 0; step < 5; ++step) {
      pp.mutable_grad() = torch::cos(pp.detach() * (step + 1));
      qq.mutable_grad() = torch::cos(qq.detach() * (step + 1));
      fused.step();
      reference.step();
    }
    CHECK(torch::allclose(pp, qq, 1e-12, 1e-12));
  }
}
