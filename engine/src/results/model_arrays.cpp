#include "model_arrays.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <mfglab/flow.h>

#include "results.h"

namespace mfglab::engine {
namespace {

constexpr int64_t kDensityGrid = 48;    // cells per side of density.npy
constexpr int64_t kResidualGrid = 48;   // cells per side of each hjb_residual.npy slice
constexpr int64_t kResidualTimes = 5;   // slices over t
constexpr int64_t kPaths = 300;         // trajectories drawn
constexpr int64_t kPathSteps = 40;      // RK4 steps along them
constexpr int64_t kChunk = 1024;        // points per model call: bounds the memory of autograd

bool has(const std::vector<std::string>& fields, const char* f) {
  return std::find(fields.begin(), fields.end(), f) != fields.end();
}

// [lo, hi] of coordinate k of the data, widened by 10% on each side.
std::pair<double, double> extent(const torch::Tensor& data, int64_t k) {
  auto c = data.select(1, k).to(torch::kFloat64);
  const double lo = c.min().item<double>(), hi = c.max().item<double>();
  if (!std::isfinite(lo) || !std::isfinite(hi)) throw Error("the held-out data are not finite");
  const double pad = 0.1 * std::max(hi - lo, 1e-6);
  return {lo - pad, hi + pad};
}

// Cell centres of a G x G grid over the extents of the first two coordinates, row-major
// with rows along y (row i at y_i, column j at x_j), as [G*G, d] points with the other
// coordinates at 0.
torch::Tensor grid_points(std::pair<double, double> xr, std::pair<double, double> yr, int64_t G, int64_t d,
                          const torch::TensorOptions& opts) {
  auto centres = [&](std::pair<double, double> r) {
    const double h = (r.second - r.first) / static_cast<double>(G);
    return torch::linspace(r.first + h / 2, r.second - h / 2, G, opts);
  };
  auto ys = centres(yr), xs = centres(xr);
  auto pts = torch::zeros({G * G, d}, opts);
  pts.select(1, 0).copy_(xs.repeat({G}));
  pts.select(1, 1).copy_(ys.repeat_interleave(G));
  return pts;
}

// f applied to chunks of the points, results concatenated along dim 0, detached.
template <typename F>
torch::Tensor chunked(const torch::Tensor& pts, F&& f) {
  std::vector<torch::Tensor> parts;
  for (int64_t lo = 0; lo < pts.size(0); lo += kChunk)
    parts.push_back(f(pts.slice(0, lo, std::min(pts.size(0), lo + kChunk))).detach().to(torch::kFloat64));
  return torch::cat(parts);
}

nlohmann::json range_json(std::pair<double, double> r) { return nlohmann::json::array({r.first, r.second}); }

void write_density(Model& model, const torch::Tensor& data, const std::string& dir) {
  const auto xr = extent(data, 0), yr = extent(data, 1);
  auto pts = grid_points(xr, yr, kDensityGrid, 2, data.options());
  auto logp = chunked(pts, [&](const torch::Tensor& x) { return model.log_prob(x); });
  if (logp.numel() != pts.size(0)) throw Error(fmt::format("log_prob returned {} values for {} points", logp.numel(), pts.size(0)));
  save_npy(dir + "/density.npy", torch::exp(logp).reshape({kDensityGrid, kDensityGrid}));
  write_json_atomic(dir + "/density_extent.json", {{"x", range_json(xr)}, {"y", range_json(yr)}});
}

void write_trajectories(Model& model, const torch::Tensor& data, const std::string& dir) {
  const int64_t stride = std::max<int64_t>(1, data.size(0) / kPaths);
  auto x0 = data.slice(0, 0, data.size(0), stride).slice(0, 0, kPaths);
  torch::Tensor path;
  {
    torch::NoGradGuard no_grad;
    path = flow_path(model, x0, 0.0, model.horizon(), kPathSteps);
  }
  if (!torch::isfinite(path).all().item<bool>()) throw Error("the flow left the finite numbers");
  save_npy(dir + "/trajectories.npy", path.to(torch::kFloat64));
}

void write_hjb_residual(Model& model, HjbResidual& pde, const torch::Tensor& data, const std::string& dir) {
  const int64_t d = data.size(1);
  const auto xr = extent(data, 0), yr = extent(data, 1);
  auto* fp = capability<ForwardProcess>(&model, kForwardProcess);
  const double t0 = fp ? fp->t_min() : 0.0, t1 = fp ? fp->t_max() : model.horizon();
  auto pts = grid_points(xr, yr, kResidualGrid, d, data.options());
  std::vector<torch::Tensor> slices;
  nlohmann::json times = nlohmann::json::array();
  for (int64_t k = 0; k < kResidualTimes; ++k) {
    const double t = t0 + (t1 - t0) * static_cast<double>(k) / static_cast<double>(kResidualTimes - 1);
    times.push_back(t);
    auto r = chunked(pts, [&](const torch::Tensor& x) {
      torch::AutoGradMode grad_on(true);  // residuals take derivatives of the model's fields
      return pde.hjb_residual(x, torch::full({x.size(0), 1}, t, x.options()));
    });
    if (r.numel() != pts.size(0)) throw Error(fmt::format("hjb_residual returned {} values for {} points", r.numel(), pts.size(0)));
    slices.push_back(r.reshape({kResidualGrid, kResidualGrid}));
  }
  save_npy(dir + "/hjb_residual.npy", torch::stack(slices));
  write_json_atomic(dir + "/hjb_residual.json",
                    {{"x", range_json(xr)}, {"y", range_json(yr)}, {"t", times}, {"equation", pde.hjb_equation()},
                     {"dimension", d}});
}

template <typename F>
void attempt(std::vector<std::string>& errors, const char* what, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    errors.push_back(fmt::format("{} not written: {}", what, e.what()));
  }
}

}  // namespace

std::vector<std::string> write_model_arrays(Model& model, const std::vector<std::string>& fields,
                                            const torch::Tensor& data, const std::string& dir) {
  std::vector<std::string> errors;
  if (data.dim() != 2 || data.size(0) < 1 || data.size(1) < 1) return errors;
  const int64_t d = data.size(1);
  if (d == 2 && has(fields, "log_prob")) attempt(errors, "density.npy", [&] { write_density(model, data, dir); });
  if (has(fields, "velocity")) attempt(errors, "trajectories.npy", [&] { write_trajectories(model, data, dir); });
  if (d >= 2)
    if (auto* pde = capability<HjbResidual>(&model, kHjbResidual))
      attempt(errors, "hjb_residual.npy", [&] { write_hjb_residual(model, *pde, data, dir); });
  return errors;
}

}  // namespace mfglab::engine
