// The "mfglab.jko.internals/1" capability of the jko model: its block schedule and, in the
// particle mode, the per-step record of the particle cloud against the exact solutions.
// For tests and diagnostics; header-only, include it next to <mfglab/sdk.h>.
#pragma once

#include <cstdint>
#include <vector>

#include <mfglab/sdk.h>

namespace mfglab::jko {

// One JKO step of the particle cloud (step 0 is the initial cloud). The *_wgf columns
// compare with the exact Wasserstein gradient flow at time t, the *_jko columns with the
// exact JKO scheme (the same steps tau_k solved in closed form); both are NaN unless the
// target is Gaussian. Errors compare the cloud with the same initial particles moved by
// the exact (affine) map, so they carry no sampling noise from the initial draw:
//   rms   sqrt(mean |x_i - T(x0_i)|^2)   (a coupling bound on W2 to the exact law)
//   mean  |mean(x) - mean(T(x0))|,  cov  ||cov(x) - cov(T(x0))||_F
struct StepRecord {
  int64_t step = 0;
  double t = 0, tau = 0;
  double energy = 0;  // Monte Carlo estimate on the cloud, with its exactly tracked log-density
  double energy_wgf = 0, energy_jko = 0;  // closed forms
  double rms_wgf = 0, mean_wgf = 0, cov_wgf = 0;
  double rms_jko = 0, mean_jko = 0, cov_jko = 0;
};

class Internals {
 public:
  virtual ~Internals() = default;
  virtual int64_t block() const = 0;   // the block being trained, 0-based
  virtual int64_t blocks() const = 0;  // K
  // Freezes the current block and starts training the next one (as reaching
  // iterations_per_block does). Throws on the last block.
  virtual void advance() = 0;
  // Particle mode: steps 0 .. block() + 1 (the current block counted as trained).
  virtual std::vector<StepRecord> steps() = 0;
  // Particle mode: the cloud after `k` blocks, [N, d], detached.
  virtual torch::Tensor particles(int64_t k) = 0;
};

inline constexpr const char* kInternals = "mfglab.jko.internals/1";

}  // namespace mfglab::jko
