// The engine's view of a model plugin: every call is forwarded, and what comes back is checked
// against the SDK's contract (shapes, dtype, device) before anything else sees it. A model
// whose velocity returns [500] for 500 points of dimension 2 fails its run with "model 'm':
// velocity returned [500], expected [500, 2]" instead of feeding a metric a wrong tensor.
// Regularizers and metrics receive this view too, so the check covers every caller.
#pragma once

#include <memory>
#include <string>

#include "mfglab/sdk.h"

namespace mfglab::engine {

class CheckedModel final : public Model {
 public:
  CheckedModel(std::unique_ptr<Model> inner, std::string name, int64_t data_dim, torch::ScalarType dtype);

  std::vector<torch::Tensor> parameters() override { return inner_->parameters(); }
  LossTerms loss(const torch::Tensor& batch) override { return inner_->loss(batch); }
  torch::Tensor sample(int64_t n) override;
  torch::Tensor log_prob(const torch::Tensor& x) override;
  torch::Tensor value(const torch::Tensor& x, const torch::Tensor& t) override;
  torch::Tensor velocity(const torch::Tensor& x, const torch::Tensor& t) override;
  torch::Tensor score(const torch::Tensor& x, const torch::Tensor& t) override;
  double horizon() const override { return inner_->horizon(); }
  torch::Tensor drift(const torch::Tensor& x, const torch::Tensor& t) override;
  torch::Tensor diffusion(const torch::Tensor& t) override;
  Collocation collocation(const torch::Tensor& batch) override;
  void* capability(const char* id) override { return inner_->capability(id); }

  Model& inner() { return *inner_; }

 private:
  // Throws mfglab::Error unless `out` is a defined tensor of `shape`, with the run's dtype
  // and the device of `like`.
  void check(const char* method, const torch::Tensor& out, c10::IntArrayRef shape, const torch::Tensor& like) const;
  std::unique_ptr<Model> inner_;
  std::string name_;
  int64_t d_;
  torch::ScalarType dtype_;
};

}  // namespace mfglab::engine
