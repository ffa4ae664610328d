// Two-dimensional toy distributions as in FFJORD (Grathwohl et al., 2019), three of
// which go through scikit-learn's generators (make_swiss_roll, make_circles,
// make_moons). Each recipe keeps its constants at its top.
//
// Everything is drawn on the CPU in float64 from the run's generator (a CPU generator,
// so it cannot draw on another device) and converted to the run's dtype and device once.
#include <mfglab/plugin.h>

#include <cmath>
#include <string>

namespace {

using torch::Tensor;
using Recipe = Tensor (*)(torch::Generator&, int64_t);

constexpr double kPi = 3.14159265358979323846;
const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

Tensor normal(torch::Generator& g, int64_t n, int64_t d) { return torch::randn({n, d}, g, kF64); }
Tensor uniform(torch::Generator& g, int64_t n) { return torch::rand({n}, g, kF64); }
Tensor shuffle(torch::Generator& g, const Tensor& x) {
  return x.index_select(0, torch::randperm(x.size(0), g, torch::kLong));
}
// numpy.linspace(0, stop, k, endpoint=False)
Tensor open_linspace(double stop, int64_t k) { return torch::arange(k, kF64) * (stop / k); }
// Points on the circle of radius r at the given angles, [k, 2].
Tensor circle(const Tensor& angle, double r) { return torch::stack({angle.cos(), angle.sin()}, 1) * r; }

Tensor eight_gaussians(torch::Generator& g, int64_t n) {
  const double scale = 4.0;     // distance of the centers from the origin
  const double std = 0.5;       // of each component
  const double shrink = 1.414;  // FFJORD divides the whole set by this (~sqrt 2)
  const double s = 1.0 / std::sqrt(2.0);
  auto centers = torch::tensor({1.0, 0.0, -1.0, 0.0, 0.0, 1.0, 0.0, -1.0,  //
                                s, s, s, -s, -s, s, -s, -s}, kF64).view({8, 2}) * scale;
  auto which = torch::randint(8, {n}, g, torch::kLong);
  return (std * normal(g, n, 2) + centers.index_select(0, which)) / shrink;
}

Tensor checkerboard(torch::Generator& g, int64_t n) {
  const double scale = 2.0;  // the 4x4 board [-2,2]^2 is stretched to [-4,4]^2
  auto x1 = uniform(g, n) * 4 - 2;
  auto x2_ = uniform(g, n) - torch::randint(2, {n}, g, kF64) * 2;
  // remainder() has Python's sign convention, so floor(x1) mod 2 is 0 or 1.
  auto x2 = x2_ + torch::remainder(torch::floor(x1), 2);
  return torch::stack({x1, x2}, 1) * scale;
}

Tensor swissroll(torch::Generator& g, int64_t n) {
  const double noise = 1.0;   // make_swiss_roll(noise=1.0)
  const double shrink = 5.0;  // FFJORD divides (x, z) by 5
  auto t = 1.5 * kPi * (1 + 2 * uniform(g, n));
  // make_swiss_roll also draws the height y = 21 U and its noise; FFJORD drops that
  // coordinate, so it is not drawn here (the kept coordinates have the same law).
  auto xz = torch::stack({t * t.cos(), t * t.sin()}, 1) + noise * normal(g, n, 2);
  return xz / shrink;
}

Tensor circles(torch::Generator& g, int64_t n) {
  const double factor = 0.5;  // make_circles(factor=0.5): radius of the inner circle
  const double noise = 0.08;  // make_circles(noise=0.08), added before scaling
  const double scale = 3.0;   // FFJORD multiplies the set by 3
  const int64_t n_out = n / 2, n_in = n - n_out;
  auto x = torch::cat({circle(open_linspace(2 * kPi, n_out), 1.0),
                       circle(open_linspace(2 * kPi, n_in), factor)});
  return (shuffle(g, x) + noise * normal(g, n, 2)) * scale;
}

Tensor moons(torch::Generator& g, int64_t n) {
  const double noise = 0.1;  // make_moons(noise=0.1), added before the affine map
  const double scale = 2.0;  // FFJORD: data * 2 + (-1, -0.2)
  const auto shift = torch::tensor({-1.0, -0.2}, kF64);
  const int64_t n_out = n / 2, n_in = n - n_out;
  auto a_out = torch::linspace(0, kPi, n_out, kF64);  // endpoint included, as numpy's default
  auto a_in = torch::linspace(0, kPi, n_in, kF64);
  auto outer = torch::stack({a_out.cos(), a_out.sin()}, 1);
  auto inner = torch::stack({1 - a_in.cos(), 1 - a_in.sin() - 0.5}, 1);
  auto x = shuffle(g, torch::cat({outer, inner})) + noise * normal(g, n, 2);
  return x * scale + shift;
}

Tensor pinwheel(torch::Generator& g, int64_t n) {
  const double radial_std = 0.3, tangential_std = 0.1;
  const double rate = 0.25;   // how fast an arm turns with its radius
  const double scale = 2.0;   // FFJORD multiplies the set by 2
  const int64_t classes = 5;  // arms
  // FFJORD draws n//5 points per arm, fewer than n when 5 does not divide n. To return
  // exactly n, draw ceil(n/5) per arm and keep the first n after the permutation (at
  // most 4 points, chosen at random, are dropped).
  const int64_t per_class = (n + classes - 1) / classes, total = per_class * classes;
  auto rads = open_linspace(2 * kPi, classes);
  auto f = normal(g, total, 2) * torch::tensor({radial_std, tangential_std}, kF64);
  f.select(1, 0).add_(1.0);
  auto labels = torch::arange(classes, torch::kLong).repeat_interleave(per_class);
  auto angle = rads.index_select(0, labels) + rate * f.select(1, 0).exp();
  auto c = angle.cos(), s = angle.sin();
  // Row vector times R = [[c, -s], [s, c]] (FFJORD's einsum "ti,tij->tj").
  auto f0 = f.select(1, 0), f1 = f.select(1, 1);
  auto out = torch::stack({f0 * c + f1 * s, -f0 * s + f1 * c}, 1) * scale;
  return shuffle(g, out).slice(0, 0, n);
}

Tensor two_spirals(torch::Generator& g, int64_t n) {
  const double turn = 540 * (2 * kPi) / 360;  // the spirals wind 540 degrees
  const double jitter = 0.5;                   // width of the uniform jitter
  const double shrink = 3.0, noise = 0.1;
  // FFJORD draws n//2 points per spiral (one short when n is odd): draw ceil(n/2) per
  // spiral and drop one point. FFJORD leaves the two spirals one after the other; the
  // set is permuted so that any prefix of it is a fair sample of both.
  const int64_t m = (n + 1) / 2;
  auto r = torch::rand({m, 1}, g, kF64).sqrt() * turn;
  auto dx = -r.cos() * r + torch::rand({m, 1}, g, kF64) * jitter;
  auto dy = r.sin() * r + torch::rand({m, 1}, g, kF64) * jitter;
  auto d = torch::cat({dx, dy}, 1);
  auto x = torch::cat({d, -d}) / shrink + noise * normal(g, 2 * m, 2);
  return shuffle(g, x.slice(0, 0, n));
}

Tensor rings(torch::Generator& g, int64_t n) {
  const double radii[4] = {1.0, 0.75, 0.5, 0.25};  // outermost first
  const double scale = 3.0, noise = 0.08;          // noise is added after scaling
  const int64_t q = n / 4;
  const int64_t counts[4] = {q, q, q, n - 3 * q};  // the innermost ring takes the rest
  std::vector<Tensor> parts;
  for (int k = 0; k < 4; ++k) parts.push_back(circle(open_linspace(2 * kPi, counts[k]), radii[k]));
  return shuffle(g, torch::cat(parts) * scale) + noise * normal(g, n, 2);
}

const char* const kChoices = "8gaussians|checkerboard|swissroll|circles|moons|pinwheel|2spirals|rings";

const auto kName = mfglab::choice_param("name", "8gaussians", kChoices, "which toy distribution");
const auto kTrainSize = mfglab::int_param("train_size", 20000, "points in the training set").at_least(1);
const auto kTestSize = mfglab::int_param("test_size", 5000, "points in the held-out set").at_least(1);

Recipe find_recipe(const std::string& name) {
  static const std::pair<const char*, Recipe> table[] = {
      {"8gaussians", eight_gaussians}, {"checkerboard", checkerboard}, {"swissroll", swissroll},
      {"circles", circles},            {"moons", moons},               {"pinwheel", pinwheel},
      {"2spirals", two_spirals},       {"rings", rings}};
  for (const auto& [key, recipe] : table)
    if (name == key) return recipe;
  throw mfglab::Error("unknown toy set '" + name + "' (expected " + kChoices + ")");
}

class Toy2d final : public mfglab::Dataset {
 public:
  Toy2d(const mfglab::Params& params, const mfglab::RunContext& ctx) {
    const Recipe recipe = find_recipe(params[kName]);
    torch::Generator g = ctx.generator;
    train_ = recipe(g, params[kTrainSize]).to(ctx.options());
    test_ = recipe(g, params[kTestSize]).to(ctx.options());
  }
  torch::Tensor train() override { return train_; }
  torch::Tensor test() override { return test_; }

 private:
  torch::Tensor train_, test_;
};

}  // namespace

MFGLAB_PLUGIN(Toy2d, MFGLAB_KIND_DATASET, "toy2d", "1.0.0",
              "2-D toy distributions of FFJORD (8gaussians, checkerboard, swissroll, circles, "
              "moons, pinwheel, 2spirals, rings)",
              "", kName, kTrainSize, kTestSize)
