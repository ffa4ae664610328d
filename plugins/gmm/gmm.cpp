// Gaussian mixtures in any dimension: given component by component in the experiment
// file, or generated (k means drawn from mean_scale * N(0, I), equal weights, isotropic
// std). The sets are drawn on the CPU in float64 from the run's generator and converted
// to the run's dtype and device once.
//
// The mixture's density is known, so the dataset offers "mfglab.exact_density/1": the
// law of alpha X + sigma Z (X from the mixture, Z ~ N(0, I) independent) is the mixture
// of N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I) with the same weights.
//
// How the density is evaluated: each Sigma_k is diagonalised once, Sigma_k = U_k
// diag(lambda_k) U_k^T. The noised covariance alpha^2 Sigma_k + sigma^2 I has the same
// eigenvectors and the eigenvalues alpha^2 lambda_k + sigma^2, so its inverse and
// log-determinant are closed forms in that basis for every alpha, sigma. Per-sample
// alpha and sigma ([N, 1], as in diffusion training) then cost O(N K d^2) and memory
// O(N K d), where a Cholesky factorisation per (sample, component) would cost
// O(N K d^3) time and O(N K d^2) memory. The mixture sum goes through logsumexp (and
// the score's posterior weights through softmax), so far-away points do not underflow.
#include <mfglab/plugin.h>

#include <cmath>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

namespace {

using mfglab::Error;
using nlohmann::json;
using torch::Tensor;

constexpr double kPi = 3.14159265358979323846;
const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

const auto kComponents = mfglab::json_param(
    "components", nullptr,
    "list of {\"weight\": w (default 1; weights are normalised by their sum), \"mean\": [...], \"cov\": [[...]] or "
    "\"std\": number or list (diagonal)}; null generates a mixture from k, dim, mean_scale and std");
const auto kK = mfglab::int_param("k", 8, "components of a generated mixture").at_least(1);
const auto kDim = mfglab::int_param("dim", 2, "dimension of a generated mixture").at_least(1);
const auto kMeanScale = mfglab::number_param("mean_scale", 3.0, "generated means are mean_scale * N(0, I)").at_least(0);
const auto kStd = mfglab::number_param("std", 0.5, "isotropic std of the generated components").above(0);
const auto kTrainSize = mfglab::int_param("train_size", 20000, "points in the training set").at_least(1);
const auto kTestSize = mfglab::int_param("test_size", 5000, "points in the held-out set").at_least(1);

std::string show(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

std::string shape_of(const Tensor& t) {
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}

// ---- reading the "components" parameter -------------------------------------------

// "params.components[2].mean": every message starts with the offending JSON path.
std::string where(size_t i, const std::string& field) {
  return "params.components[" + std::to_string(i) + "]" + (field.empty() ? "" : "." + field);
}

double positive_number(const json& v, const std::string& at) {
  if (!v.is_number()) throw Error(at + ": expected a positive number, got " + v.dump());
  const double x = v.get<double>();
  if (!(x > 0) || !std::isfinite(x)) throw Error(at + ": must be positive, got " + v.dump());
  return x;
}

std::vector<double> number_list(const json& v, const std::string& at) {
  if (!v.is_array() || v.empty()) throw Error(at + ": expected a non-empty list of numbers, got " + v.dump());
  std::vector<double> out;
  for (size_t j = 0; j < v.size(); ++j) {
    if (!v[j].is_number()) throw Error(at + "[" + std::to_string(j) + "]: expected a number, got " + v[j].dump());
    out.push_back(v[j].get<double>());
  }
  return out;
}

// A d x d covariance from "cov" (a full matrix) or "std" (a number, or a list: diagonal).
Tensor read_covariance(const json& c, size_t i, int64_t d) {
  const bool has_cov = c.contains("cov"), has_std = c.contains("std");
  if (has_cov == has_std)
    throw Error(where(i, "") + ": give exactly one of 'cov' (a " + std::to_string(d) + " x " +
                std::to_string(d) + " matrix) and 'std' (a number or a list of " +
                std::to_string(d) + ")");
  if (has_std) {
    const json& s = c["std"];
    const std::string at = where(i, "std");
    if (s.is_number()) return torch::eye(d, kF64) * std::pow(positive_number(s, at), 2);
    if (!s.is_array() || static_cast<int64_t>(s.size()) != d)
      throw Error(at + ": expected a positive number or a list of " + std::to_string(d) +
                  " positive numbers, got " + s.dump());
    auto var = torch::empty({d}, kF64);
    for (int64_t j = 0; j < d; ++j)
      var[j] = std::pow(positive_number(s[j], at + "[" + std::to_string(j) + "]"), 2);
    return torch::diag(var);
  }

  const json& m = c["cov"];
  const std::string at = where(i, "cov");
  const std::string expected = "expected a " + std::to_string(d) + " x " + std::to_string(d) +
                               " list of lists of numbers (the dimension of the means)";
  if (!m.is_array() || static_cast<int64_t>(m.size()) != d) throw Error(at + ": " + expected + ", got " + m.dump());
  auto cov = torch::empty({d, d}, kF64);
  auto acc = cov.accessor<double, 2>();
  for (int64_t r = 0; r < d; ++r) {
    const auto row = number_list(m[r], at + "[" + std::to_string(r) + "]");
    if (static_cast<int64_t>(row.size()) != d)
      throw Error(at + "[" + std::to_string(r) + "]: has " + std::to_string(row.size()) +
                  " entries, " + expected);
    for (int64_t col = 0; col < d; ++col) acc[r][col] = row[col];
  }
  // Symmetric up to rounding in the user's decimals (relative 1e-10 of the largest
  // entry); then exactly symmetrised so that the eigendecomposition is well posed.
  const double tol = 1e-10 * cov.abs().max().item<double>();
  for (int64_t r = 0; r < d; ++r)
    for (int64_t col = r + 1; col < d; ++col)
      if (std::abs(acc[r][col] - acc[col][r]) > tol)
        throw Error(at + ": not symmetric: entry [" + std::to_string(r) + "][" + std::to_string(col) +
                    "] = " + show(acc[r][col]) + " but entry [" + std::to_string(col) + "][" +
                    std::to_string(r) + "] = " + show(acc[col][r]));
  cov = 0.5 * (cov + cov.t());
  // info > 0 is the order of the first leading minor that is not positive definite.
  const auto info = std::get<1>(torch::linalg_cholesky_ex(cov)).item<int64_t>();
  if (info != 0)
    throw Error(at + ": not positive definite (its Cholesky factorisation fails at the leading " +
                std::to_string(info) + " x " + std::to_string(info) + " minor)");
  return cov;
}

struct Mixture {
  Tensor weights;  // [K], summing to 1
  Tensor means;    // [K, d]
  Tensor covs;     // [K, d, d]
};

Mixture read_components(const json& spec) {
  if (!spec.is_array() || spec.empty())
    throw Error("params.components: expected a non-empty list of {\"weight\", \"mean\", \"cov\" or "
                "\"std\"} objects (or null to generate a mixture), got " + spec.dump());
  int64_t d = 0;
  std::vector<double> weights;
  std::vector<Tensor> means, covs;
  for (size_t i = 0; i < spec.size(); ++i) {
    const json& c = spec[i];
    if (!c.is_object()) throw Error(where(i, "") + ": expected an object, got " + c.dump());
    for (const auto& item : c.items())  // a misspelt key would otherwise be ignored
      if (item.key() != "weight" && item.key() != "mean" && item.key() != "cov" && item.key() != "std")
        throw Error(where(i, item.key()) + ": unknown key (expected weight, mean, cov or std)");
    weights.push_back(c.contains("weight") ? positive_number(c["weight"], where(i, "weight")) : 1.0);
    if (!c.contains("mean")) throw Error(where(i, "mean") + ": missing (a list of numbers)");
    const auto mean = number_list(c["mean"], where(i, "mean"));
    if (i == 0) d = static_cast<int64_t>(mean.size());
    if (static_cast<int64_t>(mean.size()) != d)
      throw Error(where(i, "mean") + ": has " + std::to_string(mean.size()) + " entries, expected " +
                  std::to_string(d) + " (the length of params.components[0].mean)");
    means.push_back(torch::tensor(mean, kF64));
    covs.push_back(read_covariance(c, i, d));
  }
  auto w = torch::tensor(weights, kF64);
  return {w / w.sum(), torch::stack(means), torch::stack(covs)};
}

Mixture generate(torch::Generator& g, int64_t k, int64_t d, double mean_scale, double std) {
  return {torch::full({k}, 1.0 / static_cast<double>(k), kF64),
          mean_scale * torch::randn({k, d}, g, kF64),
          (std * std * torch::eye(d, kF64)).expand({k, d, d}).contiguous()};
}

// alpha or sigma as given to ExactDensity: a scalar (any shape with one element) stays
// 0-dim; a per-sample [N, 1] (or [N]) becomes [N, 1, 1] to broadcast over [N, K, d].
Tensor coefficient(const Tensor& v, int64_t n, const char* name, const torch::Device& device) {
  if (!v.defined()) throw Error(std::string("gmm: ") + name + " is undefined");
  const auto opt = kF64.device(device);
  if (v.numel() == 1) return v.reshape({}).to(opt);
  if ((v.dim() == 2 && v.size(0) == n && v.size(1) == 1) || (v.dim() == 1 && v.size(0) == n))
    return v.reshape({n, 1, 1}).to(opt);
  throw Error(std::string("gmm: ") + name + " must be a scalar or [N, 1] with N = " +
              std::to_string(n) + " (the rows of x), got shape " + shape_of(v));
}

class Gmm final : public mfglab::Dataset, public mfglab::ExactDensity {
 public:
  Gmm(const mfglab::Params& params, const mfglab::RunContext& ctx) {
    torch::Generator g = ctx.generator;
    const json spec = params[kComponents];
    const bool given = !spec.is_null();
    const Mixture m =
        given ? read_components(spec) : generate(g, params[kK], params[kDim], params[kMeanScale], params[kStd]);
    weights_ = m.weights;
    means_ = m.means;
    chol_ = torch::linalg_cholesky(m.covs);
    std::tie(eigvals_, eigvecs_) = torch::linalg_eigh(m.covs);
    log_weights_ = weights_.log();
    d_ = means_.size(1);

    train_ = sample(g, params[kTrainSize]).to(ctx.options());
    test_ = sample(g, params[kTestSize]).to(ctx.options());
    ctx.info("gmm: " + std::to_string(weights_.size(0)) + " components in dimension " +
             std::to_string(d_) + (given ? " (given)" : " (generated)"));
  }

  torch::Tensor train() override { return train_; }
  torch::Tensor test() override { return test_; }

  void* capability(const char* id) override {
    return std::strcmp(id, mfglab::kExactDensity) == 0 ? static_cast<mfglab::ExactDensity*>(this)
                                                       : nullptr;
  }

  torch::Tensor log_density(const torch::Tensor& x, const torch::Tensor& alpha,
                            const torch::Tensor& sigma) override {
    return torch::logsumexp(components(x, alpha, sigma).log_joint, 1).to(x.scalar_type());
  }

  // grad log p = sum_k r_k(x) (-C_k^{-1} (x - alpha mu_k)), r_k the posterior weights.
  torch::Tensor score(const torch::Tensor& x, const torch::Tensor& alpha,
                      const torch::Tensor& sigma) override {
    const auto c = components(x, alpha, sigma);
    const auto r = torch::softmax(c.log_joint, 1).unsqueeze(-1);                  // [N, K, 1]
    const auto solved = torch::einsum("nke,kde->nkd", {c.whitened, basis(x)});  // C_k^{-1}(x - a mu_k)
    return -(r * solved).sum(1).to(x.scalar_type());
  }

 private:
  struct Components {
    Tensor log_joint;  // [N, K]: log w_k + log N(x; alpha mu_k, C_k)
    Tensor whitened;   // [N, K, d]: C_k^{-1} (x - alpha mu_k) in the eigenbasis of Sigma_k
  };

  Tensor basis(const Tensor& x) const { return eigvecs_.to(x.device()); }

  Components components(const Tensor& x, const Tensor& alpha, const Tensor& sigma) const {
    if (x.dim() != 2 || x.size(1) != d_)
      throw Error("gmm: x must be [N, " + std::to_string(d_) + "], got shape " + shape_of(x));
    const auto dev = x.device();
    const int64_t n = x.size(0);
    const auto a = coefficient(alpha, n, "alpha", dev), s = coefficient(sigma, n, "sigma", dev);
    const auto diff = x.to(torch::kFloat64).unsqueeze(1) - a * means_.to(dev);  // [N, K, d]
    const auto y = torch::einsum("nkd,kde->nke", {diff, basis(x)});            // eigen-coordinates
    const auto var = a * a * eigvals_.to(dev) + s * s;  // [K, d], or [N, K, d] per sample
    const auto log_det = var.log().sum(-1);
    const auto log_joint = log_weights_.to(dev) - 0.5 * (log_det + d_ * std::log(2 * kPi)) -
                           0.5 * (y * y / var).sum(-1);
    return {log_joint, y / var};
  }

  // Component labels from the weights, then mu_k + L_k z component by component (one
  // [n, d] buffer, not a [n, d, d] stack of factors).
  Tensor sample(torch::Generator& g, int64_t n) const {
    const auto which = torch::multinomial(weights_, n, /*replacement=*/true, g);
    const auto z = torch::randn({n, d_}, g, kF64);
    auto x = torch::empty({n, d_}, kF64);
    for (int64_t k = 0; k < weights_.size(0); ++k) {
      const auto rows = (which == k).nonzero().squeeze(1);
      if (rows.numel() == 0) continue;
      x.index_copy_(0, rows, means_[k] + z.index_select(0, rows).matmul(chol_[k].t()));
    }
    return x;
  }

  int64_t d_ = 0;
  Tensor weights_, log_weights_, means_, chol_, eigvals_, eigvecs_;  // float64, CPU
  Tensor train_, test_;
};

}  // namespace

MFGLAB_PLUGIN(Gmm, MFGLAB_KIND_DATASET, "gmm", "1.0.0",
              "Gaussian mixture in any dimension, given or generated; offers its exact density "
              "and score under Gaussian noising",
              "", kComponents, kK, kDim, kMeanScale, kStd, kTrainSize, kTestSize)
