#include "plot.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "mfglab/params.h"
#include "results.h"
#include "text.h"

namespace fs = std::filesystem;

namespace mfglab::engine {

// ---- figures of run directories ----------------------------------------------------

namespace {

using plot::Color;
using plot::Range;

constexpr size_t kScatterLimit = 5000;  // more samples than this are drawn as a 2-D histogram
const Color kDataColor{0.3, 0.3, 0.3};

Color sample_color() { return plot::palette(0); }

// A .npy array of any rank as doubles (figures also need the [T, N, 2] trajectories).
struct NdArray {
  std::vector<int64_t> shape;
  std::vector<double> values;
};

NdArray read_npy(const std::string& path) {
  const at::Tensor t = load_npy_array(path).contiguous();
  NdArray a;
  a.shape.assign(t.sizes().begin(), t.sizes().end());
  const double* p = t.data_ptr<double>();
  a.values.assign(p, p + t.numel());
  return a;
}

// The first two coordinates of the points of an [N, d] array (y is empty when d = 1).
struct Cloud {
  std::vector<double> x, y;
  int64_t d = 0;
  size_t size() const { return x.size(); }
};

Cloud read_cloud(const std::string& path) {
  const NdArray a = read_npy(path);
  if (a.shape.empty() || a.shape.size() > 2) throw Error(fmt::format("{}: expected an [N, d] array, got {} dimensions", path, a.shape.size()));
  Cloud c;
  c.d = a.shape.size() == 2 ? a.shape[1] : 1;
  if (c.d < 1) throw Error(fmt::format("{}: points have no coordinates", path));
  for (int64_t i = 0; i < a.shape[0]; ++i) {
    c.x.push_back(a.values[i * c.d]);
    if (c.d >= 2) c.y.push_back(a.values[i * c.d + 1]);
  }
  return c;
}

double quantile(std::vector<double> v, double q) {
  v.erase(std::remove_if(v.begin(), v.end(), [](double x) { return !std::isfinite(x); }), v.end());
  if (v.empty()) return NAN;
  const auto k = static_cast<std::ptrdiff_t>(q * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return v[k];
}

// What a figure shows of one coordinate: all of the data, and the samples but for far
// outliers (a diverging model must not shrink the data to a dot).
Range view_range(const std::vector<double>& data, const std::vector<double>& samples) {
  Range r;
  for (double v : data) r.include(v);
  if (!samples.empty()) {
    const double q0 = quantile(samples, 0.005), q1 = quantile(samples, 0.995), reach = 0.5 * (q1 - q0);
    for (double v : samples)
      if (v >= q0 - reach && v <= q1 + reach) r.include(v);
  }
  return plot::padded(r, 0.05);
}

struct View {
  Range x, y;
  bool contains(double px, double py) const { return px >= x.lo && px <= x.hi && py >= y.lo && py <= y.hi; }
};

View view_of(const Cloud& samples, const Cloud* data) {
  static const std::vector<double> none;
  return {view_range(data ? data->x : none, samples.x), view_range(data ? data->y : none, samples.y)};
}

// Dots fade as they get many, so that dense regions stay readable.
double dot_alpha(size_t n) { return std::clamp(20 / std::sqrt(static_cast<double>(std::max<size_t>(n, 1))), 0.2, 0.8); }

// The height of a figure `width` wide holding one equal-aspect panel of `v` under a
// two-line title, so that the panel fills it (`colorbar`: one is drawn on the right).
int fitted_height(const View& v, int width, bool colorbar) {
  const double area_w = width - 64 - (colorbar ? 82 : 0);  // y tick labels, axis label, margins
  const double area_h = std::clamp(area_w * (v.y.hi - v.y.lo) / (v.x.hi - v.x.lo), 0.4 * area_w, 1.6 * area_w);
  return static_cast<int>(std::ceil(area_h + 94));  // title above; tick labels and axis label below
}

void frame_view(plot::Axes& ax, const View& v) {
  ax.set_xlim(v.x.lo, v.x.hi);
  ax.set_ylim(v.y.lo, v.y.hi);
  ax.set_equal_aspect(true);
  ax.set_xlabel("x₁");
  ax.set_ylabel("x₂");
}

void scatter_cloud(plot::Axes& ax, const Cloud& c, Color color, double radius, const std::string& label) {
  ax.scatter(c.x, c.y, color.with_alpha(dot_alpha(c.size())), radius, label);
}

int hist_bins(size_t n) { return std::clamp(static_cast<int>(std::sqrt(static_cast<double>(n)) / 2), 30, 160); }

size_t count_outside(const Cloud& c, const View& v) {
  size_t n = 0;
  for (size_t i = 0; i < c.size(); ++i) n += v.contains(c.x[i], c.y[i]) ? 0 : 1;
  return n;
}

// One panel of samples over data: dots up to kScatterLimit samples, a 2-D histogram of
// the samples beyond. Returns a note on samples outside the view ("" when none).
std::string draw_samples(plot::Axes& ax, const Cloud& samples, const Cloud* data) {
  const View view = view_of(samples, data);
  frame_view(ax, view);
  if (samples.size() > kScatterLimit) {
    ax.hist2d(samples.x, samples.y, hist_bins(samples.size()), "samples per bin");
  } else {
    if (data) scatter_cloud(ax, *data, kDataColor, 1.3, fmt::format("held-out data (n = {})", data->size()));
    scatter_cloud(ax, samples, sample_color(), 1.6, fmt::format("samples (n = {})", samples.size()));
  }
  const size_t outside = count_outside(samples, view);
  return outside ? fmt::format("{} sample{} outside the view", outside, outside == 1 ? "" : "s") : "";
}

// 1-D data: normalised histograms of samples and data as step curves.
void draw_samples_1d(plot::Axes& ax, const Cloud& samples, const Cloud* data) {
  static const std::vector<double> none;
  const Range r = view_range(data ? data->x : none, samples.x);
  const int bins = std::clamp(static_cast<int>(std::sqrt(static_cast<double>(samples.size()))), 20, 80);
  const double width = (r.hi - r.lo) / bins;
  double top = 0;
  auto steps = [&](const Cloud& c, Color color, const std::string& label) {
    std::vector<double> count(bins, 0.0);
    for (double v : c.x) {
      const int k = static_cast<int>((v - r.lo) / width);
      if (v >= r.lo && v <= r.hi) count[std::min(k, bins - 1)] += 1;
    }
    std::vector<double> xs, ys;
    for (int k = 0; k < bins; ++k) {
      const double density = count[k] / (static_cast<double>(c.size()) * width);
      top = std::max(top, density);
      xs.insert(xs.end(), {r.lo + k * width, r.lo + (k + 1) * width});
      ys.insert(ys.end(), {density, density});
    }
    ax.line(xs, ys, color, 1.6, label);
  };
  if (data) steps(*data, kDataColor, fmt::format("held-out data (n = {})", data->size()));
  steps(samples, sample_color(), fmt::format("samples (n = {})", samples.size()));
  ax.set_xlim(r.lo, r.hi);
  ax.set_ylim(0, top > 0 ? 1.08 * top : 1);
  ax.set_xlabel("x");
  ax.set_ylabel("density");
}

// What summary.json (or config.json, for a run without a summary yet) says of a run.
struct RunInfo {
  std::string experiment, run_id, label, status;
  bool has_seed = false;
  uint64_t seed = 0;
  nlohmann::json metrics = nlohmann::json::object();
};

RunInfo read_run_info(const fs::path& dir) {
  RunInfo info;
  info.run_id = dir.filename().string();
  info.experiment = dir.parent_path().filename().string();
  nlohmann::json j;
  if (fs::exists(dir / "summary.json")) {
    j = read_json_file((dir / "summary.json").string());
  } else if (fs::exists(dir / "config.json")) {
    j = read_json_file((dir / "config.json").string());
    if (j.is_object() && j.contains("name")) j["experiment"] = j["name"];
  }
  if (!j.is_object()) return info;
  auto text = [&](const char* key, std::string& out) {
    if (j.contains(key) && j[key].is_string()) out = j[key].get<std::string>();
  };
  text("experiment", info.experiment);
  text("run_id", info.run_id);
  text("label", info.label);
  text("status", info.status);
  if (j.contains("seed") && j["seed"].is_number_integer()) info.has_seed = true, info.seed = j["seed"].get<uint64_t>();
  if (j.contains("metrics") && j["metrics"].is_object()) info.metrics = j["metrics"];
  return info;
}

std::string run_title(const RunInfo& r) {
  std::string title = r.experiment.empty() ? r.run_id : r.experiment + " · " + r.run_id;
  if (r.has_seed && r.run_id.find(fmt::format("seed={}", r.seed)) == std::string::npos) title += fmt::format(" · seed {}", r.seed);
  return title;
}

std::vector<PlotFile> saved(plot::Figure& fig, const fs::path& path) {
  fig.save_png(path.string());
  return {PlotFile{path.string(), fig.pixel_data_areas()}};
}

// samples.png; nothing when the run has no samples.npy.
std::vector<PlotFile> plot_samples(const fs::path& dir, const std::string& title) {
  if (!fs::exists(dir / "samples.npy")) return {};
  const Cloud samples = read_cloud((dir / "samples.npy").string());
  std::optional<Cloud> data;
  if (fs::exists(dir / "data.npy")) {
    data = read_cloud((dir / "data.npy").string());
    if (data->d != samples.d) throw Error(fmt::format("data.npy has dimension {} but samples.npy {}", data->d, samples.d));
  }
  const Cloud* d = data ? &*data : nullptr;
  const fs::path out = dir / "samples.png";
  const std::string coords = samples.d > 2 ? fmt::format("first two of {} coordinates", samples.d) : "";
  if (samples.d == 1) {
    plot::Figure fig(640, 460);
    auto& ax = fig.subplot(1, 1, 0);
    ax.set_title(title + (d ? "\nsamples and held-out data, normalised histograms" : "\nsamples, normalised histogram"));
    draw_samples_1d(ax, samples, d);
    return saved(fig, out);
  }
  if (samples.size() > kScatterLimit && d) {
    // Too many samples for dots: data and a sample histogram side by side, same view.
    plot::Figure fig(1180, 560);  // wide enough for both panels to have the same size
    fig.set_title(title + (coords.empty() ? "" : "\n" + coords));
    const View view = view_of(samples, d);
    auto& left = fig.subplot(1, 2, 0);
    frame_view(left, view);
    left.set_title(fmt::format("held-out data\nn = {}", d->size()));
    if (d->size() > kScatterLimit) left.hist2d(d->x, d->y, hist_bins(d->size()), "points per bin");
    else scatter_cloud(left, *d, kDataColor, 1.3, "");
    auto& right = fig.subplot(1, 2, 1);
    const size_t outside = count_outside(samples, view);
    right.set_title(fmt::format("generated samples\nn = {}{}", samples.size(), outside ? fmt::format(", {} outside the view", outside) : ""));
    frame_view(right, view);
    right.hist2d(samples.x, samples.y, hist_bins(samples.size()), "samples per bin");
    return saved(fig, out);
  }
  const int width = samples.size() > kScatterLimit ? 640 : 560;
  plot::Figure fig(width, fitted_height(view_of(samples, d), width, samples.size() > kScatterLimit));
  auto& ax = fig.subplot(1, 1, 0);
  const std::string note = draw_samples(ax, samples, d);
  std::string subtitle = d ? "generated samples over held-out data" : "generated samples";
  for (const auto& extra : {coords, note})
    if (!extra.empty()) subtitle += "; " + extra;
  ax.set_title(title + "\n" + subtitle);
  return saved(fig, out);
}

struct LossTable {
  std::vector<std::string> names;  // loss terms, "total" first
  std::vector<double> iteration;
  std::vector<std::vector<double>> values;  // per name
};

LossTable read_losses(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(fmt::format("{}: cannot open the file", path));
  auto cells = [](const std::string& line) {
    std::vector<std::string> out;
    std::stringstream ss(line);
    for (std::string c; std::getline(ss, c, ',');) out.push_back(c);
    return out;
  };
  std::string line;
  std::getline(in, line);
  const auto header = cells(line);
  if (header.empty() || header[0] != "iteration") throw Error(fmt::format("{}: expected a header starting with 'iteration'", path));
  LossTable t;
  std::vector<size_t> columns;  // the loss columns: all but iteration, lr and seconds
  for (size_t i = 1; i < header.size(); ++i)
    if (header[i] != "lr" && header[i] != "seconds") columns.push_back(i), t.names.push_back(header[i]);
  t.values.resize(columns.size());
  for (int line_no = 2; std::getline(in, line); ++line_no) {
    if (line.empty()) continue;
    const auto row = cells(line);
    if (row.size() != header.size()) throw Error(fmt::format("{}:{}: {} values, expected {}", path, line_no, row.size(), header.size()));
    try {
      t.iteration.push_back(std::stod(row[0]));
      for (size_t k = 0; k < columns.size(); ++k) t.values[k].push_back(std::stod(row[columns[k]]));
    } catch (const std::exception&) {
      throw Error(fmt::format("{}:{}: not a row of numbers", path, line_no));
    }
  }
  return t;
}

// Centred moving average over `window` points (odd), of log values when `log_scale`
// (a geometric mean suits losses spanning decades).
std::vector<double> smooth(const std::vector<double>& v, size_t window, bool log_scale) {
  const size_t n = v.size(), half = window / 2;
  std::vector<double> sum(n + 1, 0.0), count(n + 1, 0.0), out(n, NAN);
  for (size_t i = 0; i < n; ++i) {
    const double x = log_scale ? std::log(v[i]) : v[i];
    const bool ok = std::isfinite(x);
    sum[i + 1] = sum[i] + (ok ? x : 0.0);
    count[i + 1] = count[i] + (ok ? 1.0 : 0.0);
  }
  for (size_t i = 0; i < n; ++i) {
    const size_t a = i > half ? i - half : 0, b = std::min(n, i + half + 1);
    if (count[b] - count[a] > 0) {
      const double mean = (sum[b] - sum[a]) / (count[b] - count[a]);
      out[i] = log_scale ? std::exp(mean) : mean;
    }
  }
  return out;
}

// losses.png; nothing when the run has no losses.csv or no iteration yet.
std::vector<PlotFile> plot_losses(const fs::path& dir, const std::string& title) {
  if (!fs::exists(dir / "losses.csv")) return {};
  LossTable t = read_losses((dir / "losses.csv").string());
  if (t.iteration.empty() || t.names.empty()) return {};
  // With a single term the total is that term: draw it once.
  if (t.names.size() == 2 && t.names[0] == "total") t.names.erase(t.names.begin()), t.values.erase(t.values.begin());
  bool positive = true;
  for (const auto& column : t.values)
    for (double v : column) positive = positive && (!std::isfinite(v) || v > 0);
  const size_t n = t.iteration.size();
  const size_t window = n >= 100 ? (n / 50) | 1 : 1;

  plot::Figure fig(720, 470);
  auto& ax = fig.subplot(1, 1, 0);
  ax.set_log_y(positive);
  ax.set_xlabel("iteration");
  ax.set_ylabel("loss");
  ax.set_xlim(t.iteration.front(), t.iteration.back());
  Range y;  // the smoothed curves and the bulk of the raw values: a few spikes may leave the view
  int colour = 0;
  for (size_t k = 0; k < t.names.size(); ++k) {
    const Color c = t.names[k] == "total" ? Color{0.1, 0.1, 0.1} : plot::palette(colour++);
    const auto& raw = t.values[k];
    if (window > 1) {
      const auto smoothed = smooth(raw, window, positive);
      ax.line(t.iteration, raw, c.with_alpha(0.25), 0.8);
      ax.line(t.iteration, smoothed, c, 1.8, t.names[k]);
      for (double v : smoothed) y.include(v);
    } else {
      ax.line(t.iteration, raw, c, 1.5, t.names[k]);
    }
    y.include(quantile(raw, 0.005));
    y.include(quantile(raw, 0.995));
  }
  y = plot::padded(y, 0.04, positive);
  ax.set_ylim(y.lo, y.hi);
  ax.set_title(title + "\ntraining loss" + (positive ? " (log scale)" : "") +
               (window > 1 ? fmt::format("; lines: moving average over {} iterations, faint: raw", window) : ""));
  return saved(fig, dir / "losses.png");
}

std::vector<PlotFile> plot_density(const fs::path& dir, const std::string& title) {
  const NdArray a = read_npy((dir / "density.npy").string());
  if (a.shape.size() != 2 || a.shape[0] < 2 || a.shape[1] < 2)
    throw Error(fmt::format("density.npy: expected a G x G grid, got {} dimensions", a.shape.size()));
  const fs::path extent_file = dir / "density_extent.json";
  if (!fs::exists(extent_file)) throw Error("density.npy needs density_extent.json: {\"x\": [lo, hi], \"y\": [lo, hi]}");
  const auto extent = read_json_file(extent_file.string());
  auto range = [&](const char* key) {
    if (!extent.contains(key) || !extent[key].is_array() || extent[key].size() != 2 || !extent[key][0].is_number() || !extent[key][1].is_number())
      throw Error(fmt::format("density_extent.json: \"{}\" must be [lo, hi]", key));
    Range r{extent[key][0].get<double>(), extent[key][1].get<double>()};
    if (!(r.hi > r.lo)) throw Error(fmt::format("density_extent.json: \"{}\" must have lo < hi", key));
    return r;
  };
  const Range xr = range("x"), yr = range("y");
  const int rows = static_cast<int>(a.shape[0]), cols = static_cast<int>(a.shape[1]);
  plot::Figure fig(640, fitted_height({xr, yr}, 640, true));
  auto& ax = fig.subplot(1, 1, 0);
  ax.set_title(title + fmt::format("\nmodel density on a {} × {} grid", rows, cols));
  ax.image(a.values, rows, cols, xr, yr, "density");
  frame_view(ax, {xr, yr});
  return saved(fig, dir / "density.png");
}

// The paths of a trajectories.npy ([T, N, >= 2], time first), thinned to a few hundred
// (more only cover each other), ready to draw.
struct Trajectories {
  std::vector<std::pair<std::vector<double>, std::vector<double>>> lines;
  Cloud start, end;
  View view;
  std::string description;  // "particle trajectories: ..."
};

Trajectories read_trajectories(const fs::path& file) {
  const NdArray a = read_npy(file.string());
  if (a.shape.size() != 3 || a.shape[0] < 1 || a.shape[2] < 2)
    throw Error(fmt::format("trajectories.npy: expected a [T, N, 2] array, got {} dimensions", a.shape.size()));
  const int64_t steps = a.shape[0], paths = a.shape[1], dims = a.shape[2];
  auto at = [&](int64_t t, int64_t i, int64_t k) { return a.values[(t * paths + i) * dims + k]; };
  const int64_t stride = std::max<int64_t>(1, (paths + 299) / 300);
  Trajectories out;
  std::vector<double> all_x, all_y;
  for (int64_t i = 0; i < paths; i += stride) {
    std::vector<double> xs, ys;
    for (int64_t t = 0; t < steps; ++t) xs.push_back(at(t, i, 0)), ys.push_back(at(t, i, 1));
    all_x.insert(all_x.end(), xs.begin(), xs.end());
    all_y.insert(all_y.end(), ys.begin(), ys.end());
    out.start.x.push_back(xs.front()), out.start.y.push_back(ys.front());
    out.end.x.push_back(xs.back()), out.end.y.push_back(ys.back());
    out.lines.emplace_back(std::move(xs), std::move(ys));
  }
  out.view = View{view_range({}, all_x), view_range({}, all_y)};
  out.description = fmt::format("particle trajectories: {} of {} paths, {} time steps{}", out.lines.size(), paths,
                                steps, dims > 2 ? fmt::format(", first two of {} coordinates", dims) : "");
  return out;
}

void draw_trajectories(plot::Axes& ax, const Trajectories& tr) {
  frame_view(ax, tr.view);
  for (size_t i = 0; i < tr.lines.size(); ++i)
    ax.line(tr.lines[i].first, tr.lines[i].second, plot::palette(0).with_alpha(0.3), 0.7, i == 0 ? "paths" : "");
  ax.scatter(tr.start.x, tr.start.y, kDataColor.with_alpha(0.7), 1.6, "first step");
  ax.scatter(tr.end.x, tr.end.y, plot::palette(1).with_alpha(0.8), 1.6, "last step");
}

std::vector<PlotFile> plot_trajectories(const fs::path& dir, const std::string& title) {
  const Trajectories tr = read_trajectories(dir / "trajectories.npy");
  plot::Figure fig(580, fitted_height(tr.view, 580, false));
  auto& ax = fig.subplot(1, 1, 0);
  draw_trajectories(ax, tr);
  ax.set_title(title + "\n" + tr.description);
  return saved(fig, dir / "trajectories.png");
}

std::vector<PlotFile> plot_hjb_residual(const fs::path& dir, const std::string& title) {
  const NdArray a = read_npy((dir / "hjb_residual.npy").string());
  if (a.shape.size() != 3 || a.shape[0] < 1 || a.shape[1] < 2 || a.shape[2] < 2)
    throw Error(fmt::format("hjb_residual.npy: expected a [K, G, G] array, got {} dimensions", a.shape.size()));
  const fs::path info_file = dir / "hjb_residual.json";
  if (!fs::exists(info_file)) throw Error("hjb_residual.npy needs hjb_residual.json");
  const auto info = read_json_file(info_file.string());
  auto range = [&](const char* key) {
    if (!info.contains(key) || !info[key].is_array() || info[key].size() != 2 || !info[key][0].is_number() || !info[key][1].is_number())
      throw Error(fmt::format("hjb_residual.json: \"{}\" must be [lo, hi]", key));
    Range r{info[key][0].get<double>(), info[key][1].get<double>()};
    if (!(r.hi > r.lo)) throw Error(fmt::format("hjb_residual.json: \"{}\" must have lo < hi", key));
    return r;
  };
  const Range xr = range("x"), yr = range("y");
  const int64_t K = a.shape[0], rows = a.shape[1], cols = a.shape[2];
  if (!info.contains("t") || !info["t"].is_array() || static_cast<int64_t>(info["t"].size()) != K)
    throw Error(fmt::format("hjb_residual.json: \"t\" must list the {} slice times", K));
  // log10 |r| on one scale for all slices, so that times compare at a glance. Exact zeros
  // (and anything below 1e-12) sit at the floor.
  std::vector<double> logs(a.values.size());
  Range colors;
  for (size_t i = 0; i < logs.size(); ++i) {
    logs[i] = std::log10(std::max(std::abs(a.values[i]), 1e-12));
    if (std::isfinite(logs[i])) colors.include(logs[i]);
  }
  if (!colors.valid()) throw Error("hjb_residual.npy holds no finite value");
  if (!(colors.hi > colors.lo)) colors = {colors.lo - 0.5, colors.hi + 0.5};
  const int64_t cols_fig = std::min<int64_t>(K, 5), rows_fig = (K + cols_fig - 1) / cols_fig;
  const int panel = 300;
  plot::Figure fig(static_cast<int>(cols_fig * panel), static_cast<int>(rows_fig * (fitted_height({xr, yr}, panel, true) + 10) + 70));
  const size_t cells = static_cast<size_t>(rows * cols);
  for (int64_t k = 0; k < K; ++k) {
    auto& ax = fig.subplot(static_cast<int>(rows_fig), static_cast<int>(cols_fig), static_cast<int>(k));
    ax.set_anchor_top(true);
    ax.set_title(fmt::format("t = {:.3g}", info["t"][k].get<double>()));
    std::vector<double> slice(logs.begin() + k * cells, logs.begin() + (k + 1) * cells);
    ax.image(slice, static_cast<int>(rows), static_cast<int>(cols), xr, yr, "log₁₀ |r|");
    ax.set_color_range(colors);
    frame_view(ax, {xr, yr});
  }
  const int64_t d = info.value("dimension", int64_t{2});
  fig.set_title(title + fmt::format("\nHJB residual |r| of {} on (x₁, x₂){}", info.value("equation", std::string("the model's equation")),
                                    d > 2 ? ", other coordinates 0" : ""));
  return saved(fig, dir / "hjb_residual.png");
}

// Runs one drawer, turning its failure into a message so that the other figures are drawn.
template <typename Draw>
void attempt(std::vector<PlotFile>& files, std::vector<std::string>& errors, const std::string& what, Draw&& draw) {
  try {
    auto more = draw();
    files.insert(files.end(), more.begin(), more.end());
  } catch (const std::exception& e) {
    errors.push_back(fmt::format("{}: {}", what, e.what()));
  }
}

}  // namespace

std::vector<PlotFile> plot_model_extras(const std::string& run_dir, const std::string& title) {
  const fs::path dir(run_dir);
  std::vector<PlotFile> files;
  std::vector<std::string> errors;
  if (fs::exists(dir / "density.npy")) attempt(files, errors, "density.png", [&] { return plot_density(dir, title); });
  if (fs::exists(dir / "trajectories.npy")) attempt(files, errors, "trajectories.png", [&] { return plot_trajectories(dir, title); });
  if (fs::exists(dir / "hjb_residual.npy")) attempt(files, errors, "hjb_residual.png", [&] { return plot_hjb_residual(dir, title); });
  if (!errors.empty()) throw Error(join(errors, "; "));
  return files;
}

std::vector<PlotFile> plot_run(const std::string& run_dir) {
  const fs::path dir(run_dir);
  if (!fs::is_directory(dir)) throw Error(fmt::format("{}: no such directory", run_dir));
  const std::string title = run_title(read_run_info(dir));
  std::vector<PlotFile> files;
  std::vector<std::string> errors;
  attempt(files, errors, "samples.png", [&] { return plot_samples(dir, title); });
  attempt(files, errors, "losses.png", [&] { return plot_losses(dir, title); });
  try {
    auto extras = plot_model_extras(run_dir, title);
    files.insert(files.end(), extras.begin(), extras.end());
  } catch (const std::exception& e) {
    errors.push_back(e.what());
  }
  if (!errors.empty()) throw Error(fmt::format("{}: {}", run_dir, join(errors, "; ")));
  return files;
}

std::vector<std::string> find_run_dirs(const std::vector<std::string>& paths) {
  std::vector<std::string> dirs;
  for (const auto& p : paths) {
    if (!fs::exists(p)) throw Error(fmt::format("{}: no such file or directory", p));
    const size_t before = dirs.size();
    if (fs::is_regular_file(p) && fs::path(p).filename() == "summary.json") dirs.push_back(fs::path(p).parent_path().string());
    else if (fs::exists(fs::path(p) / "summary.json")) dirs.push_back(p);
    else if (fs::is_directory(p))
      for (const auto& e : fs::recursive_directory_iterator(p, fs::directory_options::skip_permission_denied))
        if (e.is_regular_file() && e.path().filename() == "summary.json") dirs.push_back(e.path().parent_path().string());
    if (dirs.size() == before) throw Error(fmt::format("{}: no run directories (folders with summary.json) in it", p));
  }
  std::sort(dirs.begin(), dirs.end());
  dirs.erase(std::unique(dirs.begin(), dirs.end()), dirs.end());
  return dirs;
}

PlotFile plot_compare(const std::vector<std::string>& paths, const std::string& png_path, CompareView what) {
  struct Config {
    std::string experiment, label;
    std::vector<std::pair<fs::path, RunInfo>> runs;
  };
  std::vector<Config> configs;
  std::map<std::pair<std::string, std::string>, size_t> index;
  std::vector<std::string> experiments;
  for (const auto& dir : find_run_dirs(paths)) {
    RunInfo info = read_run_info(dir);
    auto key = std::make_pair(info.experiment, info.label.empty() ? "default" : info.label);
    if (!index.count(key)) {
      index[key] = configs.size();
      configs.push_back({key.first, key.second, {}});
    }
    if (std::find(experiments.begin(), experiments.end(), info.experiment) == experiments.end()) experiments.push_back(info.experiment);
    configs[index[key]].runs.emplace_back(dir, std::move(info));
  }

  const int n = static_cast<int>(configs.size());
  const int cols = n <= 3 ? n : static_cast<int>(std::ceil(std::sqrt(static_cast<double>(n))));
  const int rows = (n + cols - 1) / cols;
  plot::Figure fig(std::max(560, cols * 340), rows * 370 + 64);  // 64: the three title lines
  bool projected = false;
  for (int i = 0; i < n; ++i) {
    const Config& c = configs[i];
    auto& ax = fig.subplot(rows, cols, i);
    ax.set_anchor_top(true);  // the titles of a row line up whatever each panel's aspect
    const std::string name = experiments.size() > 1 ? c.experiment + " · " + c.label : c.label;
    std::vector<const std::pair<fs::path, RunInfo>*> ok;
    for (const auto& run : c.runs)
      if (run.second.status == "ok") ok.push_back(&run);
    if (ok.empty()) {
      ax.set_title(name + fmt::format("\n{} run{}, none succeeded", c.runs.size(), c.runs.size() == 1 ? "" : "s"));
      ax.set_message("no successful run");
      frame_view(ax, {{0, 1}, {0, 1}});
      continue;
    }
    std::sort(ok.begin(), ok.end(), [](auto* a, auto* b) { return a->second.seed < b->second.seed; });
    // The headline metric: the first of summary.json, mean ± std over the successful seeds.
    std::string headline = "no metrics";
    const auto& first_metrics = ok.front()->second.metrics;
    if (!first_metrics.empty()) {
      const std::string metric = first_metrics.begin().key();
      std::vector<double> v;
      for (const auto* run : ok)
        if (run->second.metrics.contains(metric) && run->second.metrics[metric].is_number()) v.push_back(run->second.metrics[metric].get<double>());
      double mean = 0, var = 0;
      for (double x : v) mean += x / v.size();
      for (double x : v) var += (x - mean) * (x - mean) / std::max<size_t>(1, v.size() - 1);
      if (v.empty()) headline = metric + " = n/a";
      else if (v.size() == 1) headline = fmt::format("{} = {:.3g} (1 seed)", metric, mean);
      else headline = fmt::format("{} = {:.3g} ± {:.2g} ({} seeds)", metric, mean, std::sqrt(var), v.size());
    }
    ax.set_title(name + "\n" + headline);
    ax.set_legend(plot::Legend::none);
    const fs::path dir = ok.front()->first;
    try {
      if (what == CompareView::trajectories) {
        if (!fs::exists(dir / "trajectories.npy")) throw Error("no trajectories.npy (a model without velocity, or --no-plots)");
        draw_trajectories(ax, read_trajectories(dir / "trajectories.npy"));
        continue;
      }
      if (!fs::exists(dir / "samples.npy")) throw Error("no samples.npy");
      const Cloud samples = read_cloud((dir / "samples.npy").string());
      std::optional<Cloud> data;
      if (fs::exists(dir / "data.npy")) data = read_cloud((dir / "data.npy").string());
      if (data && data->d != samples.d) data.reset();
      projected = projected || samples.d > 2;
      if (samples.d == 1) draw_samples_1d(ax, samples, data ? &*data : nullptr);
      else draw_samples(ax, samples, data ? &*data : nullptr);
    } catch (const std::exception& e) {
      ax.set_message(e.what());  // thrown while reading, before anything was drawn
      frame_view(ax, {{0, 1}, {0, 1}});
    }
  }
  fig.set_title(join(experiments, ", ") + fmt::format(": {} configuration{}", n, n == 1 ? "" : "s") +
                (what == CompareView::trajectories
                     ? "\nparticle paths of each configuration's first seed, from held-out data (grey) to the last step (orange)"
                     : "\nsamples of each configuration's first seed (blue) over held-out data (grey)" +
                           std::string(projected ? ", first two coordinates" : "")) +
                "\npanel titles: headline metric, mean ± std over seeds");
  fig.save_png(png_path);
  return {png_path, fig.pixel_data_areas()};
}

}  // namespace mfglab::engine
