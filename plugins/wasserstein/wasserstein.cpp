// Exact 2-Wasserstein distance between two equal-size empirical measures: generated
// samples x_1..x_n and reference data y_1..y_n, each point of mass 1/n. An optimal
// coupling of two uniform measures on n points may be taken to be a permutation
// (Birkhoff), so
//   W_2 = sqrt( min over permutations π of (1/n) Σ_i |x_i - y_π(i)|² ),
// found exactly by solving the assignment problem on the n x n cost matrix.
//
// Sizes: sets larger than max_points are cut to their first max_points rows, and sets of
// unequal size to their first min(n, m) rows, so the value is always for two equal-size
// prefixes. The cost matrices take about 11 n² bytes (44 MB at n = 2000) and the solver
// O(n³) time in the worst case, much less on typical data (about 1 s at n = 2000).
//
// Solver (Jonker & Volgenant 1987): an initial matching (from column reduction, or for
// n > 256 from the potentials of the half-size problem on every other point, solved the
// same way) and two rounds of augmenting row reduction match most rows cheaply; each
// remaining free row is then matched by a shortest augmenting path (Dijkstra over columns
// on reduced costs c(i,j) - u_i - v_j >= 0), after which the potentials are updated so
// that the reduced costs stay non-negative and are zero on matched pairs. When every row
// is matched, the potentials certify optimality. All arithmetic is float64.
//
// Bounds: the costs are checked before solving. A squared distance beyond the float64 range
// (points about 1e154 apart) is refused with its size; finite costs are scaled by a power of
// two so that the largest is in [1, 2), which changes no comparison and no rounding (the
// result is the same bit for bit) but keeps the potentials, which may grow to several times
// the largest cost, far from overflow. The solver counts its steps against an explicit bound
// (it needs at most n shortest-path steps per free row) and stops with an error when the
// bound is hit or a distance is not finite, rather than running on broken arithmetic.
#include <mfglab/plugin.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

namespace {

using torch::Tensor;

constexpr double kInf = std::numeric_limits<double>::infinity();

const auto kMaxPoints = mfglab::int_param("max_points", 2000,
                                          "use at most the first max_points of each set (time up to O(n^3), memory "
                                          "about 11 n^2 bytes)")
                            .at_least(1);

// Squared distances |x_i - y_j|², row-major [n, n], by direct differences: exact zeros for
// equal points, no cancellation as in |x|² + |y|² - 2 x·y.
std::vector<double> squared_distance_matrix(const Tensor& x, const Tensor& y) {
  const int64_t n = x.size(0), d = x.size(1);
  const double* xp = x.data_ptr<double>();
  const double* yp = y.data_ptr<double>();
  std::vector<double> cost(static_cast<size_t>(n) * n);
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const double* xi = xp + i * d;
      double* row = cost.data() + i * n;
      for (int64_t j = 0; j < n; ++j) {
        const double* yj = yp + j * d;
        double s = 0;
        for (int64_t k = 0; k < d; ++k) {
          const double diff = xi[k] - yj[k];
          s += diff * diff;
        }
        row[j] = s;
      }
    }
  });
  return cost;
}

// log10 of the largest |x_i - y_j|² without overflow (for a message when that square is not
// a float64): halves are exact, and the norm is taken relative to its largest component.
double log10_max_squared_distance(const Tensor& x, const Tensor& y) {
  const int64_t n = x.size(0), d = x.size(1);
  const double* xp = x.data_ptr<double>();
  const double* yp = y.data_ptr<double>();
  double best = -kInf;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double largest = 0;
      for (int64_t k = 0; k < d; ++k) largest = std::max(largest, std::abs(xp[i * d + k] / 2 - yp[j * d + k] / 2));
      if (largest == 0) continue;
      double s = 0;
      for (int64_t k = 0; k < d; ++k) {
        const double r = (xp[i * d + k] / 2 - yp[j * d + k] / 2) / largest;
        s += r * r;
      }
      best = std::max(best, 2 * std::log10(2 * largest) + std::log10(s));
    }
  return best;
}

// 10^e as "1e400", "2.5e308" (3 significant digits), for numbers beyond float64.
std::string power_of_ten(double e) {
  double exponent = std::floor(e);
  char mantissa[32];
  std::snprintf(mantissa, sizeof mantissa, "%.3g", std::pow(10.0, e - exponent));
  if (std::string(mantissa) == "10") {
    exponent += 1;
    std::snprintf(mantissa, sizeof mantissa, "1");
  }
  return std::string(mantissa) + "e" + std::to_string(static_cast<long long>(exponent));
}

// Minimum-cost perfect matching of an n x n cost matrix (row-major), after Jonker and
// Volgenant (1987). Only column potentials v are stored. Invariant: every matched row's
// column minimises c(i, j) - v_j over j, so with u_i that minimum, all reduced costs
// c(i, j) - u_i - v_j are >= 0 and 0 on matched pairs; a complete matching with this
// property is optimal (the potentials certify it).
class AssignmentSolver {
 public:
  AssignmentSolver(const std::vector<double>& cost, int64_t n)
      : cost_(cost), n_(n), v_(n), col_of_(n, -1), row_of_(n, -1), dist_(n), via_(n), scanned_(n) {}

  // Returns the column matched to each row. Throws when the step bound is hit or the
  // arithmetic breaks down (a distance that is not finite).
  std::vector<int64_t> solve() {
    if (n_ > kDirectSize) start_from_coarse();
    else reduce_columns();
    std::vector<int64_t> free_rows;
    for (int64_t i = 0; i < n_; ++i)
      if (col_of_[i] < 0) free_rows.push_back(i);
    // Two rounds of the cheap heuristic leave fewer rows for the exact (and costlier)
    // shortest-path phase.
    for (int round = 0; round < 2 && !free_rows.empty(); ++round)
      free_rows = reduce_rows(free_rows);
    for (int64_t row : free_rows) augment(row);
    return col_of_;
  }

 private:
  // Problems up to this size start from column reduction; larger ones from the solution
  // of a half-size problem.
  static constexpr int64_t kDirectSize = 256;

  // One step: a column settled by the shortest-path search, or a pair flipped along a path.
  // Each free row needs at most n of each, so 2 n² + n steps can only be exceeded when the
  // arithmetic broke down.
  void step() {
    if (++steps_ > max_steps_)
      throw mfglab::Error("wasserstein: the assignment solver did not finish within " + std::to_string(max_steps_) +
                          " steps for " + std::to_string(n_) + " points (are the costs finite and of a sane range?)");
  }
  [[noreturn]] static void broke_down(const char* where) {
    throw mfglab::Error(std::string("wasserstein: the assignment solver met a non-finite value in ") + where +
                        " (costs too large or not finite)");
  }

  const double* row(int64_t i) const { return cost_.data() + i * n_; }
  void match(int64_t i, int64_t j) {
    col_of_[i] = j;
    row_of_[j] = i;
  }

  // v_j = min_i c(i, j); each column's cheapest row, when still free, takes it. The
  // invariant holds: c(i, j) - v_j >= 0 everywhere, and is 0 on the matched pairs.
  void reduce_columns() {
    for (int64_t j = 0; j < n_; ++j) {
      int64_t best = 0;
      for (int64_t i = 1; i < n_; ++i)
        if (cost_[i * n_ + j] < cost_[best * n_ + j]) best = i;
      v_[j] = cost_[best * n_ + j];
      if (col_of_[best] < 0) match(best, j);
    }
  }

  // Coarse-to-fine start. The optimal potentials of the problem restricted to every other
  // row and column approximate those of the full problem (for point clouds both
  // approximate the continuous Kantorovich potentials), so extended to all columns they
  // let most rows find a final column at once. Without it, mismatched clouds (a scale or
  // mode mismatch between samples and data) need long augmenting paths: 5-10x slower.
  void start_from_coarse() {
    const int64_t h = (n_ + 1) / 2;
    std::vector<double> coarse_cost(h * h);
    for (int64_t a = 0; a < h; ++a)
      for (int64_t b = 0; b < h; ++b) coarse_cost[a * h + b] = cost_[(2 * a) * n_ + 2 * b];
    AssignmentSolver coarse(coarse_cost, h);
    const auto coarse_match = coarse.solve();
    std::vector<double> u(h);  // the coarse rows' potentials
    for (int64_t a = 0; a < h; ++a)
      u[a] = coarse_cost[a * h + coarse_match[a]] - coarse.v_[coarse_match[a]];
    // v_j = min over coarse rows of c(i, j) - u_i: the coarse v on the coarse columns, and
    // its natural extension to the others.
    std::fill(v_.begin(), v_.end(), kInf);
    for (int64_t a = 0; a < h; ++a) {
      const double* c = row(2 * a);
      for (int64_t j = 0; j < n_; ++j) v_[j] = std::min(v_[j], c[j] - u[a]);
    }
    // Each row takes its best column by c - v when that is free: the invariant holds.
    for (int64_t i = 0; i < n_; ++i) {
      const double* c = row(i);
      int64_t best = 0;
      for (int64_t j = 1; j < n_; ++j)
        if (c[j] - v_[j] < c[best] - v_[best]) best = j;
      if (row_of_[best] < 0) match(i, best);
    }
  }

  // Augmenting row reduction: a free row takes its best column j1 (by c - v), lowering
  // v_j1 until its second best j2 is as good, so that j1 stays its minimum. Lowering v_j1
  // can only break the invariant for j1's former row, which is displaced: it is served
  // next when v_j1 actually moved, and left to the next round otherwise (a tie, where
  // cycling could not end).
  // Returns the rows still free.
  std::vector<int64_t> reduce_rows(const std::vector<int64_t>& free_rows) {
    std::vector<int64_t> still_free;
    if (n_ < 2) return free_rows;  // no second-best column; the search phase handles it
    // A chain of displacements ends (v only decreases), but may be long; past this budget
    // the rows are left to the exact phase, which the invariant keeps valid at any point.
    int64_t budget = 4 * n_;
    for (int64_t i : free_rows) {
      while (i >= 0) {
        if (budget-- <= 0) {
          still_free.push_back(i);
          break;
        }
        const double* c = row(i);
        int64_t j1 = -1, j2 = -1;
        double u1 = kInf, u2 = kInf;  // the two smallest c(i, j) - v_j
        for (int64_t j = 0; j < n_; ++j) {
          const double h = c[j] - v_[j];
          if (h < u2) {
            if (h < u1) {
              u2 = u1, j2 = j1;
              u1 = h, j1 = j;
            } else {
              u2 = h, j2 = j;
            }
          }
        }
        if (j1 < 0 || !std::isfinite(u1)) broke_down("row reduction");
        int64_t displaced = row_of_[j1];
        const bool moved = u1 < u2;
        if (moved) v_[j1] -= u2 - u1;
        else if (displaced >= 0) displaced = row_of_[j1 = j2];  // tie: a free column is better
        if (displaced >= 0) col_of_[displaced] = -1;
        match(i, j1);
        if (displaced >= 0 && !moved) {
          still_free.push_back(displaced);
          displaced = -1;
        }
        i = displaced;
      }
    }
    return still_free;
  }

  // Shortest augmenting path from the free row `start` (Dijkstra over columns on reduced
  // costs), then the potential update and the flip of the matching along the path.
  void augment(int64_t start) {
    std::fill(dist_.begin(), dist_.end(), kInf);
    std::fill(scanned_.begin(), scanned_.end(), 0);
    scanned_columns_.clear();

    // Rows are entered through their matched column; the search stops at the first free
    // column it settles. Distances of the start row carry its (unknown) u_start as a
    // common offset, which cancels in the update below.
    int64_t i = start, sink = -1;
    double reached = 0;  // distance of the column through which row i was entered
    while (sink < 0) {
      const double* c = row(i);
      // Minus u_i: c(i, j) - v_j is smallest, by the invariant, at i's matched column.
      const double offset = i == start ? 0.0 : reached - (c[col_of_[i]] - v_[col_of_[i]]);
      double nearest = kInf;
      int64_t next = -1;
      for (int64_t j = 0; j < n_; ++j) {
        if (scanned_[j]) continue;
        const double through_i = offset + c[j] - v_[j];
        if (through_i < dist_[j]) {
          dist_[j] = through_i;
          via_[j] = i;
        }
        // Among equally near columns a free one ends the search sooner.
        if (dist_[j] < nearest || (dist_[j] == nearest && row_of_[j] < 0)) {
          nearest = dist_[j];
          next = j;
        }
      }
      if (next < 0) throw mfglab::Error("wasserstein: the assignment search found no column");
      if (!std::isfinite(nearest)) broke_down("the shortest-path search");
      step();
      scanned_[next] = 1;
      scanned_columns_.push_back(next);
      reached = nearest;
      if (row_of_[next] < 0) sink = next;
      else i = row_of_[next];
    }

    // Lowering each settled column's v by how much nearer it is than the sink keeps the
    // invariant for every row and makes the path's pairs minimal for their new rows.
    for (int64_t j : scanned_columns_) v_[j] -= reached - dist_[j];

    // Flip the matching along the path back from sink to start: at most one pair per
    // settled column.
    size_t flips = 0;
    for (int64_t j = sink;;) {
      if (j < 0 || ++flips > scanned_columns_.size()) broke_down("the augmenting path");
      step();
      const int64_t r = via_[j];
      const int64_t previous = col_of_[r];
      match(r, j);
      if (r == start) break;
      j = previous;
    }
  }

  const std::vector<double>& cost_;
  int64_t n_;
  std::vector<double> v_;                     // column potentials
  std::vector<int64_t> col_of_, row_of_;      // the current matching, -1 when free
  std::vector<double> dist_;                  // shortest path length to each column
  std::vector<int64_t> via_;                  // the row from which a column was last reached
  std::vector<char> scanned_;                 // columns whose distance is final
  std::vector<int64_t> scanned_columns_;      // the same, as a list
  int64_t steps_ = 0;
  int64_t max_steps_ = 2 * n_ * n_ + n_;      // explicit bound on the search and flip steps
};

class Wasserstein final : public mfglab::Metric {
 public:
  static constexpr const char* kBetter = "lower";  // for comparisons (manifest.h)

  Wasserstein(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : ctx_(&ctx), max_points_(params[kMaxPoints]) {
    if (max_points_ < 1) throw mfglab::Error("max_points must be at least 1");
  }

  mfglab::MetricValues evaluate(const mfglab::MetricInput& in) override {
    if (!in.samples.defined() || !in.reference.defined())
      throw mfglab::Error("wasserstein needs both samples and reference data");
    if (in.samples.dim() != 2 || in.reference.dim() != 2 ||
        in.samples.size(1) != in.reference.size(1))
      throw mfglab::Error(
          "wasserstein: samples and reference must be [n, d] and [m, d] with the same d");
    const int64_t n_in = in.samples.size(0), m_in = in.reference.size(0);
    if (n_in == 0 || m_in == 0)
      throw mfglab::Error("wasserstein: samples and reference must not be empty");

    const int64_t n = std::min({n_in, m_in, max_points_});
    if (n < std::max(n_in, m_in))
      ctx_->info("wasserstein: using the first " + std::to_string(n) + " of " +
                 std::to_string(n_in) + " samples and of " + std::to_string(m_in) +
                 " reference points");
    torch::NoGradGuard no_grad;
    const auto cpu64 = torch::TensorOptions().dtype(torch::kFloat64).device(torch::kCPU);
    auto x = in.samples.detach().narrow(0, 0, n).to(cpu64).contiguous();
    auto y = in.reference.detach().narrow(0, 0, n).to(cpu64).contiguous();

    // A NaN cost would break the search's comparisons: refuse it with a clear message.
    if (!torch::isfinite(x).all().item<bool>() || !torch::isfinite(y).all().item<bool>())
      throw mfglab::Error("wasserstein: samples or reference contain NaN or infinite values");
    auto cost = squared_distance_matrix(x, y);
    const double max_cost = *std::max_element(cost.begin(), cost.end());
    if (!std::isfinite(max_cost))
      throw mfglab::Error("wasserstein: samples too large for an exact assignment (max cost " +
                          power_of_ten(log10_max_squared_distance(x, y)) +
                          " overflows): every squared distance |x_i - y_j|^2 must be below 1.8e308; "
                          "rescale the data");
    // Scaled by 2^-e, the largest cost is in [1, 2) and the potentials stay far from
    // overflow. A power of two scales exactly (down to costs 2^-1022 times the largest), so
    // the matching and the sum below are those of the unscaled costs.
    const int e = max_cost > 0 ? std::ilogb(max_cost) : 0;
    if (e != 0)
      for (double& c : cost) c = std::ldexp(c, -e);
    const auto match = AssignmentSolver(cost, n).solve();
    double total = 0;  // from the original costs, not the duals: no accumulated rounding
    for (int64_t i = 0; i < n; ++i) total += cost[i * n + match[i]];
    return {{"wasserstein", std::sqrt(std::ldexp(total / static_cast<double>(n), e))}};
  }

 private:
  const mfglab::RunContext* ctx_;
  int64_t max_points_;
};

}  // namespace

MFGLAB_PLUGIN(Wasserstein, MFGLAB_KIND_METRIC, "wasserstein", "1.0.0",
              "Exact W2 between equal-size samples and reference, sqrt(min over matchings of "
              "the mean |x_i - y_pi(i)|^2), by an exact assignment solver; uses the first "
              "min(n, m, max_points) points of each",
              "", kMaxPoints)
