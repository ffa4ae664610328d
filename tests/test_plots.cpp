// Figures (engine/src/figures/plot.h): synthetic run directories are drawn, the PNGs decoded with
// Cairo, and their pixels checked: right size, ink inside the panels, and points where the
// data are.
#include <catch2/catch.hpp>

#include <cairo.h>

#include <cstring>
#include <filesystem>
#include <functional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "model_arrays.h"
#include "plot.h"
#include "results.h"

namespace fs = std::filesystem;
using mfglab::engine::plot_compare;
using mfglab::engine::plot_run;
using mfglab::engine::PlotFile;
using mfglab::engine::save_npy;
using mfglab::engine::write_file_atomic;
using mfglab::engine::write_json_atomic;
using mfglab::engine::plot::Rect;
using mfglab::test::mfglab_cli;
using mfglab::test::TempDir;

namespace {

// A decoded PNG: 0x00RRGGBB pixels, row-major.
struct Image {
  int width = 0, height = 0;
  std::vector<uint32_t> pixels;

  explicit Image(const std::string& path) {
    cairo_surface_t* s = cairo_image_surface_create_from_png(path.c_str());
    REQUIRE(cairo_surface_status(s) == CAIRO_STATUS_SUCCESS);
    width = cairo_image_surface_get_width(s);
    height = cairo_image_surface_get_height(s);
    const int stride = cairo_image_surface_get_stride(s);
    const unsigned char* data = cairo_image_surface_get_data(s);
    pixels.resize(static_cast<size_t>(width) * height);
    for (int y = 0; y < height; ++y) std::memcpy(&pixels[static_cast<size_t>(y) * width], data + static_cast<size_t>(y) * stride, 4 * width);
    cairo_surface_destroy(s);
  }

  // Pixels of `r` (shrunk by `inset` to keep the frame out) for which `test` holds.
  size_t count(Rect r, const std::function<bool(int, int, int)>& test, int inset = 3) const {
    size_t n = 0;
    for (int y = static_cast<int>(r.y) + inset; y < static_cast<int>(r.y + r.h) - inset; ++y)
      for (int x = static_cast<int>(r.x) + inset; x < static_cast<int>(r.x + r.w) - inset; ++x) {
        const uint32_t p = pixels[static_cast<size_t>(y) * width + x];
        n += test((p >> 16) & 0xFF, (p >> 8) & 0xFF, p & 0xFF) ? 1 : 0;
      }
    return n;
  }
};

bool ink(int r, int g, int b) { return std::min({r, g, b}) < 235; }  // anything but the white background
bool coloured(int r, int g, int b) { return std::max({r, g, b}) - std::min({r, g, b}) > 40; }  // not grey
double area(Rect r) { return r.w * r.h; }
Rect upper_right(Rect r) { return {r.x + r.w / 2, r.y, r.w / 2, r.h / 2}; }
Rect lower_left(Rect r) { return {r.x, r.y + r.h / 2, r.w / 2, r.h / 2}; }

torch::Tensor normal(int64_t n, int64_t d, double mean, double sd, uint64_t seed) {
  torch::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randn({n, d}, g, torch::kFloat64) * sd + mean;
}

// A finished run directory: samples around `center`, held-out data N(0, I), a decaying
// loss with two terms, and a summary.
void write_run(const fs::path& dir, const torch::Tensor& samples, const std::string& experiment = "figures",
               const std::string& label = "default", uint64_t seed = 0, double mmd = 0.01) {
  fs::create_directories(dir);
  save_npy((dir / "samples.npy").string(), samples.to(torch::kFloat32));
  save_npy((dir / "data.npy").string(), normal(3000, samples.size(1), 0.0, 1.0, 99 + seed));
  std::string csv = "iteration,lr,total,dsm,reg,seconds\n";
  for (int i = 1; i <= 300; ++i) {
    const double dsm = 2.0 * std::exp(-i / 60.0) + 0.05 * (1 + 0.3 * std::sin(i)), reg = 0.01 + 0.002 * std::cos(i / 3.0);
    csv += fmt::format("{},0.001,{},{},{},0.002\n", i, dsm + reg, dsm, reg);
  }
  write_file_atomic((dir / "losses.csv").string(), csv);
  const std::string run_id = label == "default" ? fmt::format("seed={}", seed) : fmt::format("{},seed={}", label, seed);
  write_json_atomic((dir / "summary.json").string(),
                    {{"experiment", experiment}, {"run_id", run_id}, {"label", label}, {"seed", seed}, {"status", "ok"},
                     {"metrics", {{"mmd", mmd}, {"sliced_wasserstein", 0.1}}}});
}

const PlotFile& find(const std::vector<PlotFile>& files, const std::string& name) {
  for (const auto& f : files)
    if (fs::path(f.path).filename() == name) return f;
  FAIL("no " << name << " among the figures");
  throw;
}

}  // namespace

TEST_CASE("nice ticks and their labels", "[plots]") {
  using mfglab::engine::plot::nice_ticks;
  using mfglab::engine::plot::tick_labels;
  const auto unit = nice_ticks(0, 1, 5);
  REQUIRE(unit.size() == 6);
  for (size_t i = 0; i < unit.size(); ++i) CHECK(unit[i] == Approx(0.2 * i).margin(1e-12));
  CHECK(tick_labels(nice_ticks(0, 1, 5)) == std::vector<std::string>{"0", "0.2", "0.4", "0.6", "0.8", "1.0"});
  CHECK(tick_labels({-1, -0.5, 0, 0.5, 1}) == std::vector<std::string>{"−1.0", "−0.5", "0", "0.5", "1.0"});
  CHECK(tick_labels({0, 2.5, 5, 7.5}) == std::vector<std::string>{"0", "2.5", "5.0", "7.5"});
  CHECK(tick_labels({0, 200000, 400000}) == std::vector<std::string>{"0", "2×10⁵", "4×10⁵"});
  CHECK(tick_labels({0.0001, 0.0002, 0.0003}) == std::vector<std::string>{"10⁻⁴", "2×10⁻⁴", "3×10⁻⁴"});
  auto many = nice_ticks(-3.7, 3.7, 7);
  CHECK(many.front() >= -3.7);
  CHECK(many.back() <= 3.7);
  CHECK(many.size() >= 4);
  CHECK(many.size() <= 9);
}

TEST_CASE("plot_run draws samples over data and the losses", "[plots]") {
  TempDir tmp("plots_run");
  const fs::path run = tmp.path / "figures" / "seed=0";
  write_run(run, normal(2000, 2, 2.2, 0.3, 1));  // a sample cloud at the upper right of the data
  const auto files = plot_run(run.string());
  REQUIRE(files.size() == 2);

  const auto& samples = find(files, "samples.png");
  REQUIRE(samples.panels.size() == 1);
  Image img(samples.path);
  CHECK(img.width == 1120);  // 560 x 2 device pixels; the height follows the view's aspect
  CHECK(img.height > 900);
  CHECK(img.height < 1400);
  const Rect panel = samples.panels[0];
  CHECK(panel.y + panel.h < img.height);
  CHECK(panel.w > 0.6 * img.width);
  CHECK(img.count(panel, ink) > 0.05 * area(panel));
  // The samples (blue) colour the upper-right quadrant, not the lower-left one (grey data only).
  const size_t ur = img.count(upper_right(panel), coloured), ll = img.count(lower_left(panel), coloured);
  CHECK(ur > 0.02 * area(upper_right(panel)));
  CHECK(ur > 20 * (ll + 1));
  // Outside the panels: margins are white, apart from text and ticks.
  CHECK(img.count({0, 0, static_cast<double>(img.width), 12}, ink, 0) == 0);

  const auto& losses = find(files, "losses.png");
  Image curves(losses.path);
  CHECK(curves.width == 1440);
  CHECK(curves.height == 940);
  REQUIRE(losses.panels.size() == 1);
  CHECK(curves.count(losses.panels[0], coloured) > 0.002 * area(losses.panels[0]));
  // A decaying loss on a log axis: more curve in the left half (early, high) than the
  // lower-left corner would hold for a flat one.
  CHECK(curves.count(upper_right(losses.panels[0]), coloured) < curves.count({losses.panels[0].x, losses.panels[0].y, losses.panels[0].w / 2, losses.panels[0].h / 2}, coloured));
}

TEST_CASE("many samples become a 2-D histogram beside the data; d > 2 uses two coordinates", "[plots]") {
  TempDir tmp("plots_hist");
  const fs::path run = tmp.path / "figures" / "seed=0";
  write_run(run, normal(20000, 3, 2.0, 0.4, 2));
  const auto files = plot_run(run.string());
  const auto& samples = find(files, "samples.png");
  REQUIRE(samples.panels.size() == 2);  // data | sample histogram
  Image img(samples.path);
  CHECK(img.width == 2360);
  CHECK(img.height == 1120);
  const Rect data = samples.panels[0], hist = samples.panels[1];
  CHECK(img.count(data, ink) > 0.05 * area(data));
  const size_t ur = img.count(upper_right(hist), coloured), ll = img.count(lower_left(hist), coloured);
  CHECK(ur > 0.05 * area(upper_right(hist)));
  CHECK(ur > 20 * (ll + 1));
  // The two panels show the same view: equal sizes.
  CHECK(data.w == Approx(hist.w));
  CHECK(data.h == Approx(hist.h));
}

TEST_CASE("density.npy and trajectories.npy get their figures", "[plots]") {
  TempDir tmp("plots_extra");
  const fs::path run = tmp.path / "figures" / "seed=0";
  write_run(run, normal(1000, 2, 0.0, 1.0, 3));
  // A bump at (1.5, 1.5) on [-3, 3]^2: row i at y, column j at x.
  const int g = 60;
  auto grid = torch::empty({g, g}, torch::kFloat64);
  for (int i = 0; i < g; ++i)
    for (int j = 0; j < g; ++j) {
      const double x = -3 + 6.0 * (j + 0.5) / g, y = -3 + 6.0 * (i + 0.5) / g;
      grid[i][j] = std::exp(-((x - 1.5) * (x - 1.5) + (y - 1.5) * (y - 1.5)) / 0.5);
    }
  save_npy((run / "density.npy").string(), grid);

  SECTION("without its extent the density is an error, and the other figures are still drawn") {
    CHECK_THROWS_WITH(plot_run(run.string()), Catch::Contains("density_extent.json"));
    CHECK(fs::exists(run / "samples.png"));
    CHECK(fs::exists(run / "losses.png"));
  }

  SECTION("with its extent") {
    write_json_atomic((run / "density_extent.json").string(), {{"x", {-3, 3}}, {"y", {-3, 3}}});
    // Paths from around the origin to around (2, -2): 50 particles, 30 steps.
    const int steps = 30, n = 50;
    std::vector<float> paths;
    for (int t = 0; t < steps; ++t)
      for (int i = 0; i < n; ++i) {
        const double s = t / (steps - 1.0), a = 2 * M_PI * i / n;
        paths.push_back(static_cast<float>(0.5 * std::cos(a) * (1 - s) + 2 * s));
        paths.push_back(static_cast<float>(0.5 * std::sin(a) * (1 - s) - 2 * s));
      }
    save_npy((run / "trajectories.npy").string(), torch::from_blob(paths.data(), {steps, n, 2}, torch::kFloat32).clone());
    const auto files = plot_run(run.string());
    CHECK(files.size() == 4);

    const auto& density = find(files, "density.png");
    Image img(density.path);
    const Rect panel = density.panels.at(0);
    // The colour scale is light where the density is high: the bump's quadrant is lighter.
    auto light = [](int r, int g, int b) { return 0.3 * r + 0.6 * g + 0.1 * b > 150; };
    CHECK(img.count(upper_right(panel), light) > 0.05 * area(upper_right(panel)));
    CHECK(img.count(lower_left(panel), light) == 0);
    CHECK(img.count(panel, ink) > 0.95 * area(panel));  // the heat map fills the panel

    const auto& traj = find(files, "trajectories.png");
    Image paths_img(traj.path);
    const Rect p = traj.panels.at(0);
    CHECK(paths_img.count(p, coloured) > 0.01 * area(p));
    // The paths end at the lower right: nothing in the upper-left quadrant.
    CHECK(paths_img.count({p.x, p.y, p.w / 2, p.h / 2}, coloured) < paths_img.count({p.x + p.w / 2, p.y + p.h / 2, p.w / 2, p.h / 2}, coloured));
  }
}

TEST_CASE("compare --png: one panel per configuration", "[plots]") {
  TempDir tmp("plots_compare");
  const fs::path root = tmp.path / "results";
  const std::vector<std::pair<std::string, double>> configs = {{"width=32", 1.8}, {"width=64", 0.0}, {"width=128", -1.8}};
  for (const auto& [label, where] : configs)
    for (uint64_t seed : {0, 1})
      write_run(root / "grid" / fmt::format("{},seed={}", label, seed), normal(1500, 2, where, 0.3, 10 + seed), "grid", label, seed,
                0.01 * (seed + 1));
  const std::string png = (tmp.path / "grid.png").string();
  const PlotFile grid = plot_compare({root.string()}, png);
  Image img(png);
  CHECK(img.width == 2040);
  CHECK(img.height == 868);
  REQUIRE(grid.panels.size() == 3);
  for (const Rect& p : grid.panels) CHECK(img.count(p, coloured) > 0.01 * area(p));
  // Labels sort as text: width=128 (samples at the lower left), width=32 (upper right),
  // width=64 (centre).
  CHECK(img.count(lower_left(grid.panels[0]), coloured) > 10 * (img.count(upper_right(grid.panels[0]), coloured) + 1));
  CHECK(img.count(upper_right(grid.panels[1]), coloured) > 10 * (img.count(lower_left(grid.panels[1]), coloured) + 1));

  SECTION("through the CLI") {
    const std::string png2 = (tmp.path / "cli.png").string();
    auto r = mfglab_cli("compare " + root.string() + " --png " + png2);
    INFO(r.err);
    CHECK(r.exit_code == 0);
    CHECK(fs::exists(png2));
    CHECK(r.out.find("width=64") != std::string::npos);  // the table is still printed
  }

  SECTION("--draw trajectories: each configuration's paths side by side") {
    // Paths from the origin towards the configuration's corner; width=64 has none.
    for (const auto& [label, where] : configs) {
      if (label == "width=64") continue;
      const int64_t steps = 6, n = 40;
      std::vector<float> paths;
      for (int64_t t = 0; t < steps; ++t)
        for (int64_t i = 0; i < n; ++i) {
          const double s = t / (steps - 1.0);
          paths.push_back(static_cast<float>(where * s + 0.01 * i));
          paths.push_back(static_cast<float>(where * s - 0.01 * i));
        }
      save_npy((root / "grid" / (label + ",seed=0") / "trajectories.npy").string(),
               torch::from_blob(paths.data(), {steps, n, 2}, torch::kFloat32).clone());
    }
    const std::string png3 = (tmp.path / "paths.png").string();
    auto r = mfglab_cli("compare " + root.string() + " --png " + png3 + " --draw trajectories");
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    const PlotFile paths = plot_compare({root.string()}, png3, mfglab::engine::CompareView::trajectories);
    REQUIRE(paths.panels.size() == 3);
    Image img3(png3);
    // Each panel frames its own paths, so where they go shows in the last steps (orange):
    // width=128's end at the lower left of its panel, width=32's at the upper right;
    // width=64 has no trajectories and stays empty.
    auto orange = [](int r, int g, int b) { return r > 160 && g > 50 && g < 140 && b < 90; };
    CHECK(img3.count(lower_left(paths.panels[0]), orange) > 10 * (img3.count(upper_right(paths.panels[0]), orange) + 1));
    CHECK(img3.count(upper_right(paths.panels[1]), orange) > 10 * (img3.count(lower_left(paths.panels[1]), orange) + 1));
    CHECK(img3.count(paths.panels[2], coloured) == 0);
    // --draw needs --png, and only two values exist.
    CHECK(mfglab_cli("compare " + root.string() + " --draw trajectories").exit_code != 0);
    CHECK(mfglab_cli("compare " + root.string() + " --png " + png3 + " --draw density").exit_code != 0);
  }

  SECTION("a configuration without a successful run gets an empty panel") {
    auto s = nlohmann::json::parse(mfglab::test::read_text((root / "grid" / "width=64,seed=0" / "summary.json").string()));
    for (uint64_t seed : {0, 1}) {
      s["status"] = "failed", s["seed"] = seed;
      write_json_atomic((root / "grid" / fmt::format("width=64,seed={}", seed) / "summary.json").string(), s);
    }
    const PlotFile again = plot_compare({root.string()}, png);
    REQUIRE(again.panels.size() == 3);
    Image failed(png);
    CHECK(failed.count(again.panels[2], coloured) == 0);
  }
}

TEST_CASE("mfglab plot", "[plots][cli]") {
  TempDir tmp("plots_cli");
  SECTION("a missing path is bad input") {
    auto r = mfglab_cli("plot " + tmp.str() + "/no-such-dir");
    CHECK(r.exit_code == 2);
    CHECK(r.err.find("no-such-dir") != std::string::npos);
  }
  SECTION("a folder without runs is bad input") {
    auto r = mfglab_cli("plot " + tmp.str());
    CHECK(r.exit_code == 2);
  }
  SECTION("every run under a folder is drawn") {
    for (uint64_t seed : {0, 1}) write_run(tmp.path / "exp" / fmt::format("seed={}", seed), normal(500, 2, 0.5, 0.5, seed), "exp", "default", seed);
    auto r = mfglab_cli("plot " + tmp.str());
    INFO(r.err);
    CHECK(r.exit_code == 0);
    for (uint64_t seed : {0, 1})
      for (const char* f : {"samples.png", "losses.png"}) CHECK(fs::exists(tmp.path / "exp" / fmt::format("seed={}", seed) / f));
    CHECK(r.out.find("samples.png losses.png") != std::string::npos);
  }
  SECTION("a malformed run fails with exit code 1, naming it") {
    write_run(tmp.path / "bad", normal(100, 2, 0, 1, 0));
    write_file_atomic((tmp.path / "bad" / "samples.npy").string(), "not numpy");
    auto r = mfglab_cli("plot " + (tmp.path / "bad").string());
    CHECK(r.exit_code == 1);
    CHECK(r.err.find("samples.png") != std::string::npos);
    CHECK(fs::exists(tmp.path / "bad" / "losses.png"));
  }
}

TEST_CASE("run draws each run's figures, and a drawing failure does not fail the run", "[plots][cli]") {
  TempDir tmp("plots_run_cli");
  auto file = tmp.file("exp.json", R"({"name": "drawn", "seeds": [0, 1],
    "dataset": {"plugin": "toy2d", "params": {"name": "8gaussians", "train_size": 1000, "test_size": 500}},
    "model": {"plugin": "sgm", "params": {"width": 32, "depth": 2, "sample_steps": 20}},
    "train": {"iterations": 20, "batch_size": 128, "log_every": 10},
    "eval": {"samples": 300, "metrics": [{"plugin": "mmd"}]}})");
  // A folder where seed=1's samples.png should go: its figure cannot be written.
  fs::create_directories(tmp.path / "out" / "drawn" / "seed=1" / "samples.png");
  auto r = mfglab_cli("run " + file + " --out " + tmp.str() + "/out --quiet");
  INFO(r.err);
  CHECK(r.exit_code == 0);
  const fs::path ok = tmp.path / "out" / "drawn" / "seed=0", broken = tmp.path / "out" / "drawn" / "seed=1";
  for (const char* f : {"data.npy", "samples.png", "losses.png"}) CHECK(fs::exists(ok / f));
  CHECK(nlohmann::json::parse(mfglab::test::read_text((broken / "summary.json").string()))["status"] == "ok");
  CHECK(fs::exists(broken / "losses.png"));
  CHECK(mfglab::test::read_text((broken / "log.txt").string()).find("figures not drawn") != std::string::npos);

  SECTION("--no-plots draws nothing") {
    auto again = mfglab_cli("run " + file + " --out " + tmp.str() + "/fresh --quiet --no-plots");
    CHECK(again.exit_code == 0);
    CHECK(fs::exists(tmp.path / "fresh" / "drawn" / "seed=0" / "samples.npy"));
    CHECK_FALSE(fs::exists(tmp.path / "fresh" / "drawn" / "seed=0" / "samples.png"));
  }
}

TEST_CASE("hjb_residual.npy: one heat map per time on a shared scale", "[plots]") {
  TempDir tmp("plots_hjb");
  const fs::path run = tmp.path / "figures" / "seed=0";
  write_run(run, normal(1000, 2, 0.0, 1.0, 3));
  // |r| = 10^(k - 3) everywhere at slice k, and 10^(k - 1) in the upper-right quadrant.
  const int K = 3, g = 40;
  auto r = torch::empty({K, g, g}, torch::kFloat64);
  for (int k = 0; k < K; ++k)
    for (int i = 0; i < g; ++i)
      for (int j = 0; j < g; ++j) r[k][i][j] = std::pow(10.0, (i >= g / 2 && j >= g / 2) ? k - 1 : k - 3);
  save_npy((run / "hjb_residual.npy").string(), r);

  SECTION("without its description it is an error") {
    CHECK_THROWS_WITH(plot_run(run.string()), Catch::Contains("hjb_residual.json"));
  }
  SECTION("with it") {
    write_json_atomic((run / "hjb_residual.json").string(),
                      {{"x", {-2, 2}}, {"y", {-2, 2}}, {"t", {0.0, 0.5, 1.0}}, {"equation", "test"}, {"dimension", 2}});
    const auto files = plot_run(run.string());
    const auto& f = find(files, "hjb_residual.png");
    REQUIRE(f.panels.size() == K);
    Image img(f.path);
    auto light = [](int r, int g, int b) { return 0.3 * r + 0.6 * g + 0.1 * b > 150; };
    for (int k = 0; k < K; ++k) CHECK(img.count(f.panels[k], ink) > 0.95 * area(f.panels[k]));  // filled
    // One scale for all slices: the first slice's background is the darkest value, the last
    // slice's quadrant the lightest; within a slice the quadrant is lighter.
    CHECK(img.count(lower_left(f.panels[0]), light) == 0);
    CHECK(img.count(upper_right(f.panels[2]), light) > 0.9 * area(upper_right(f.panels[2])));
    CHECK(img.count(upper_right(f.panels[1]), light) > img.count(lower_left(f.panels[1]), light));
  }
  SECTION("a slice count that disagrees with the times is an error") {
    write_json_atomic((run / "hjb_residual.json").string(), {{"x", {-2, 2}}, {"y", {-2, 2}}, {"t", {0.0, 1.0}}});
    CHECK_THROWS_WITH(plot_run(run.string()), Catch::Contains("3 slice times"));
  }
}

namespace {
// A model with fields in closed form: density N(0, I), velocity -x (paths x0 e^{-t}) and
// the "residual" |x1| + t.
class ClosedFormModel final : public mfglab::Model, public mfglab::HjbResidual {
 public:
  std::vector<torch::Tensor> parameters() override { return {}; }
  mfglab::LossTerms loss(const torch::Tensor&) override { return {}; }
  torch::Tensor sample(int64_t n) override { return torch::zeros({n, 2}); }
  torch::Tensor log_prob(const torch::Tensor& x) override { return -0.5 * x.square().sum(1) - std::log(2 * M_PI); }
  torch::Tensor velocity(const torch::Tensor& x, const torch::Tensor&) override { return -x; }
  void* capability(const char* id) override { return std::strcmp(id, mfglab::kHjbResidual) == 0 ? static_cast<mfglab::HjbResidual*>(this) : nullptr; }
  torch::Tensor hjb_residual(const torch::Tensor& x, const torch::Tensor& t) override { return x.select(1, 0).abs() + t.reshape({-1}); }
  std::string hjb_equation() const override { return "test"; }
};
}  // namespace

TEST_CASE("a model's density, trajectories and HJB residual are written for the figures", "[plots]") {
  TempDir tmp("model_arrays");
  ClosedFormModel model;
  auto data = normal(500, 2, 0.0, 1.0, 5);
  auto problems = mfglab::engine::write_model_arrays(model, {"log_prob", "velocity"}, data, tmp.str());
  CHECK(problems.empty());

  auto extent = mfglab::engine::read_json_file(tmp.str() + "/density_extent.json");
  const double x0 = extent["x"][0], x1 = extent["x"][1], y0 = extent["y"][0], y1 = extent["y"][1];
  auto density = mfglab::engine::load_npy_array(tmp.str() + "/density.npy");
  REQUIRE(density.dim() == 2);
  const int64_t G = density.size(0);
  // Cell (i, j) is centred at (x_j, y_i); the density there is the standard normal's.
  for (int64_t i : {int64_t{0}, G / 3, G - 1})
    for (int64_t j : {int64_t{1}, G / 2, G - 2}) {
      const double x = x0 + (x1 - x0) * (j + 0.5) / G, y = y0 + (y1 - y0) * (i + 0.5) / G;
      CHECK(density[i][j].item<double>() == Approx(std::exp(-0.5 * (x * x + y * y)) / (2 * M_PI)).epsilon(1e-5));
    }

  auto paths = mfglab::engine::load_npy_array(tmp.str() + "/trajectories.npy");
  REQUIRE(paths.dim() == 3);
  const int64_t T = paths.size(0);
  // RK4 on x' = -x: x(1) = x(0) e^{-1} to RK4 accuracy.
  CHECK(torch::allclose(paths[T - 1], paths[0] * std::exp(-1.0), 1e-6, 1e-7));
  CHECK(paths.size(2) == 2);

  auto r = mfglab::engine::load_npy_array(tmp.str() + "/hjb_residual.npy");
  auto info = mfglab::engine::read_json_file(tmp.str() + "/hjb_residual.json");
  REQUIRE(r.dim() == 3);
  const int64_t K = r.size(0), g = r.size(1);
  REQUIRE(info["t"].size() == static_cast<size_t>(K));
  const double rx0 = info["x"][0], rx1 = info["x"][1];
  for (int64_t k = 0; k < K; ++k) {
    const double t = info["t"][k], x = rx0 + (rx1 - rx0) * (3 + 0.5) / g;
    CHECK(r[k][g / 2][3].item<double>() == Approx(std::abs(x) + t).epsilon(1e-6));
  }
  CHECK(info["equation"] == "test");

  SECTION("a model without these fields gets none of the arrays") {
    TempDir none("model_arrays_none");
    CHECK(mfglab::engine::write_model_arrays(model, {}, data, none.str()).size() == 0);
    CHECK_FALSE(fs::exists(none.path / "density.npy"));
    CHECK_FALSE(fs::exists(none.path / "trajectories.npy"));
    CHECK(fs::exists(none.path / "hjb_residual.npy"));  // a capability, not a declared field
  }
  SECTION("failures are reported one per array, not thrown") {
    TempDir bad("model_arrays_bad");
    auto problems2 = mfglab::engine::write_model_arrays(model, {"log_prob", "velocity"}, torch::full({10, 2}, NAN, torch::kFloat64), bad.str());
    REQUIRE(problems2.size() == 3);
    CHECK_THAT(problems2[0], Catch::Contains("density.npy not written") && Catch::Contains("not finite"));
    CHECK_THAT(problems2[1], Catch::Contains("trajectories.npy not written") && Catch::Contains("non-finite"));
  }
}

TEST_CASE("an OT-Flow run draws its density, trajectories and HJB residual", "[plots][cli]") {
  TempDir tmp("plots_otflow");
  auto file = tmp.file("exp.json", R"({"name": "flow", "seeds": [0],
    "dataset": {"plugin": "toy2d", "params": {"name": "8gaussians", "train_size": 1000, "test_size": 500}},
    "model": {"plugin": "otflow", "params": {"width": 8, "steps": 4}},
    "train": {"iterations": 10, "batch_size": 128, "log_every": 10},
    "eval": {"samples": 300, "metrics": [{"plugin": "mmd"}]}})");
  auto r = mfglab_cli("run " + file + " --out " + tmp.str() + "/out --quiet");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const fs::path run = tmp.path / "out" / "flow" / "seed=0";
  INFO(mfglab::test::read_text((run / "log.txt").string()));
  for (const char* f : {"density.npy", "density.png", "trajectories.npy", "trajectories.png", "hjb_residual.npy", "hjb_residual.png"})
    CHECK(fs::exists(run / f));
}
