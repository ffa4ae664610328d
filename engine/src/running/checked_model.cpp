#include "running/checked_model.h"

#include <fmt/format.h>

namespace mfglab::engine {

CheckedModel::CheckedModel(std::unique_ptr<Model> inner, std::string name, int64_t data_dim, torch::ScalarType dtype)
    : inner_(std::move(inner)), name_(std::move(name)), d_(data_dim), dtype_(dtype) {}

void CheckedModel::check(const char* method, const torch::Tensor& out, c10::IntArrayRef shape, const torch::Tensor& like) const {
  if (!out.defined()) throw Error(fmt::format("model '{}': {} returned an undefined tensor", name_, method));
  if (!out.sizes().equals(shape))
    throw Error(fmt::format("model '{}': {} returned {}, expected {}", name_, method, c10::str(out.sizes()), c10::str(shape)));
  if (out.scalar_type() != dtype_)
    throw Error(fmt::format("model '{}': {} returned {} values, expected {} (the run's dtype)", name_, method,
                            c10::toString(out.scalar_type()), c10::toString(dtype_)));
  if (like.defined() && out.device() != like.device())
    throw Error(fmt::format("model '{}': {} returned a tensor on {}, expected {} (its input's device)", name_, method,
                            out.device().str(), like.device().str()));
}

torch::Tensor CheckedModel::sample(int64_t n) {
  auto out = inner_->sample(n);
  check("sample", out, {n, d_}, torch::Tensor());
  return out;
}

torch::Tensor CheckedModel::log_prob(const torch::Tensor& x) {
  auto out = inner_->log_prob(x);
  check("log_prob", out, {x.size(0)}, x);
  return out;
}

torch::Tensor CheckedModel::value(const torch::Tensor& x, const torch::Tensor& t) {
  auto out = inner_->value(x, t);
  check("value", out, {x.size(0)}, x);
  return out;
}

torch::Tensor CheckedModel::velocity(const torch::Tensor& x, const torch::Tensor& t) {
  auto out = inner_->velocity(x, t);
  check("velocity", out, {x.size(0), d_}, x);
  return out;
}

torch::Tensor CheckedModel::score(const torch::Tensor& x, const torch::Tensor& t) {
  auto out = inner_->score(x, t);
  check("score", out, {x.size(0), d_}, x);
  return out;
}

torch::Tensor CheckedModel::drift(const torch::Tensor& x, const torch::Tensor& t) {
  auto out = inner_->drift(x, t);
  check("drift", out, {x.size(0), d_}, x);
  return out;
}

torch::Tensor CheckedModel::diffusion(const torch::Tensor& t) {
  auto out = inner_->diffusion(t);
  check("diffusion", out, {t.size(0), 1}, t);
  return out;
}

Collocation CheckedModel::collocation(const torch::Tensor& batch) {
  auto out = inner_->collocation(batch);
  if (!out.x.defined() || !out.t.defined())
    throw Error(fmt::format("model '{}': collocation returned an undefined x or t", name_));
  check("collocation (x)", out.x, {out.x.size(0), d_}, batch);
  check("collocation (t)", out.t, {out.x.size(0), 1}, batch);
  return out;
}

}  // namespace mfglab::engine
