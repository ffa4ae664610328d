// The C++ interfaces a plugin implements, and the run context it receives.
// Objects cross the library boundary only after the engine has checked the manifest
// (same SDK major, LibTorch version and C++ ABI), so they may use LibTorch types freely.
// Methods may throw (mfglab::Error preferably); the engine catches at its edge.
//
// Shapes: x is [N, d]; times t are [N, 1]; per-sample scalars are [N].
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/types.h>

#include "mfglab/manifest.h"
#include "mfglab/params.h"

namespace mfglab {

class Hamiltonian;
class Plugin;

// Where plugins send messages; the engine routes them to the run's log and the console.
class Logger {
 public:
  virtual ~Logger() = default;
  virtual void info(const std::string& message) = 0;
  virtual void warn(const std::string& message) = 0;
};

// Everything a plugin gets from the run that creates it. Owned by the engine and valid
// for the plugin object's whole life. Fields are only ever appended.
struct RunContext {
  // The run's generator: the only source of randomness. Copies share its state, so
  // `torch::Generator g = ctx.generator;` then `torch::randn(..., g, ...)` is right.
  // Never use torch::manual_seed or functions that draw from the global generator.
  torch::Generator generator;
  torch::Device device = torch::kCPU;
  torch::Dtype dtype = torch::kFloat32;
  int threads = 1;          // intra-op thread budget of this run
  std::string output_dir;   // the run directory; plugins may write files here
  Logger* logger = nullptr; // never null inside a run
  uint64_t seed = 0;
  int64_t data_dim = 0;     // dimension of the data; 0 while the dataset is created
  Hamiltonian* hamiltonian = nullptr;  // the experiment's Hamiltonian, or null
  // (SDK 1.1) The run's dataset, set before the model and everything after it is created;
  // null while the dataset itself is created and outside runs. Not owned. Lets a model
  // use the data's optional capabilities (e.g. an exact score for explicit score matching).
  Plugin* dataset = nullptr;

  torch::TensorOptions options() const { return torch::TensorOptions().dtype(dtype).device(device); }
  void info(const std::string& m) const { if (logger) logger->info(m); }
  void warn(const std::string& m) const { if (logger) logger->warn(m); }
};

// Common base of every plugin object. The engine deletes objects through it.
class Plugin {
 public:
  virtual ~Plugin() = default;
  // Optional capabilities looked up by a versioned id ("mfglab.<what>/<n>"); null when
  // absent. Lets later SDK minors add interfaces without touching these vtables.
  virtual void* capability(const char* /*id*/) { return nullptr; }
};

// A data source. Sets are drawn once, when the object is created, from ctx.generator.
class Dataset : public Plugin {
 public:
  virtual torch::Tensor train() = 0;  // [N, d]
  virtual torch::Tensor test() = 0;   // [M, d], held out
};

// Hamiltonian H(x, p) = sup_v { -p.v - L(x, v) }.
class Hamiltonian : public Plugin {
 public:
  virtual torch::Tensor hamiltonian(const torch::Tensor& x, const torch::Tensor& p) = 0;      // [N]
  virtual torch::Tensor optimal_control(const torch::Tensor& x, const torch::Tensor& p) = 0;  // -dH/dp, [N, d]
  virtual torch::Tensor running_cost(const torch::Tensor& x, const torch::Tensor& v) = 0;     // L(x, v), [N]
};

struct LossTerm {
  std::string name;
  torch::Tensor value;  // scalar, part of the autograd graph
};
using LossTerms = std::vector<LossTerm>;

// Points (x, t) on the model's own particle paths, where regularizers evaluate fields.
struct Collocation {
  torch::Tensor x;  // [N, d]
  torch::Tensor t;  // [N, 1]
};

// A generative model seen as a mean-field game: particles follow
//   dX = (b(X,t) + v(X,t)) dt + sigma(t) dW   on [0, horizon()].
// Optional fields are declared in the manifest's `fields` ("value,velocity,score,
// log_prob"); the engine refuses an experiment that needs a field the model lacks, and
// the defaults below throw.
class Model : public Plugin {
 public:
  virtual std::vector<torch::Tensor> parameters() = 0;
  // Named training loss terms on a data batch; the engine adds them up (with the
  // regularizers' weighted penalties), logs each, and steps the optimizer.
  virtual LossTerms loss(const torch::Tensor& batch) = 0;
  // n generated samples, [n, d], detached.
  virtual torch::Tensor sample(int64_t n) = 0;

  virtual torch::Tensor log_prob(const torch::Tensor& x);                      // [N]
  virtual torch::Tensor value(const torch::Tensor& x, const torch::Tensor& t);     // U, [N]
  virtual torch::Tensor velocity(const torch::Tensor& x, const torch::Tensor& t);  // v, [N, d]
  virtual torch::Tensor score(const torch::Tensor& x, const torch::Tensor& t);     // grad log rho_t, [N, d]

  virtual double horizon() const { return 1.0; }
  // Uncontrolled drift b(x, t), [N, d]; zero by default.
  virtual torch::Tensor drift(const torch::Tensor& x, const torch::Tensor& /*t*/) { return torch::zeros_like(x); }
  // Diffusion sigma(t), [N, 1]; zero (a deterministic flow) by default.
  virtual torch::Tensor diffusion(const torch::Tensor& t) { return torch::zeros_like(t); }
  // Points on the particle paths for a data batch.
  virtual Collocation collocation(const torch::Tensor& batch);
};

// A penalty added to the training loss with the experiment's weight.
class Regularizer : public Plugin {
 public:
  virtual torch::Tensor penalty(Model& model, const torch::Tensor& batch) = 0;  // scalar
};

struct MetricInput {
  torch::Tensor samples;    // generated, [n, d]
  torch::Tensor reference;  // held-out data, [m, d]
  torch::Tensor train;      // training data, [k, d]; may be undefined
  Model* model = nullptr;   // null when evaluating sample files
  Dataset* dataset = nullptr;
};
using MetricValues = std::vector<std::pair<std::string, double>>;

class Metric : public Plugin {
 public:
  virtual MetricValues evaluate(const MetricInput& input) = 0;
};

// ---- optional capabilities (Plugin::capability) -----------------------------------

// "mfglab.exact_density/1", offered by datasets whose density is known in closed form
// (e.g. Gaussian mixtures): the ground truth for score errors, NLL checks and HJB tests.
// It describes the law of alpha * X + sigma * Z with X ~ data and Z ~ N(0, I)
// independent: every linear forward noising process (VP, sub-VP, VE, OU) has marginals
// of this form. alpha and sigma are scalars or [N, 1]; alpha = 1, sigma = 0 is the data.
class ExactDensity {
 public:
  virtual ~ExactDensity() = default;
  virtual torch::Tensor log_density(const torch::Tensor& x, const torch::Tensor& alpha,
                                    const torch::Tensor& sigma) = 0;  // [N]
  virtual torch::Tensor score(const torch::Tensor& x, const torch::Tensor& alpha,
                              const torch::Tensor& sigma) = 0;        // [N, d]
};
inline constexpr const char* kExactDensity = "mfglab.exact_density/1";

// "mfglab.forward_process/1", offered by score models: the marginal of their forward
// noising process, X_t = alpha(t) X_0 + sigma(t) Z, on [t_min, t_max].
class ForwardProcess {
 public:
  virtual ~ForwardProcess() = default;
  virtual torch::Tensor alpha(const torch::Tensor& t) = 0;  // same shape as t
  virtual torch::Tensor sigma(const torch::Tensor& t) = 0;
  virtual double t_min() const = 0;
  virtual double t_max() const = 0;
};
inline constexpr const char* kForwardProcess = "mfglab.forward_process/1";

// "mfglab.hjb_residual/1", offered by models that solve an optimality PDE (the HJB
// equation of a potential flow, the score PDE of a score model): its residual at points
// (x [N, d], t [N, 1]) as a per-point magnitude [N] (|r| for a scalar equation, |r|_2 for a
// vector one). The engine draws it over (x, t) slices (hjb_residual.png); zero means the
// model's field satisfies its equation there. May be computed with autograd; the caller
// detaches the result.
class HjbResidual {
 public:
  virtual ~HjbResidual() = default;
  virtual torch::Tensor hjb_residual(const torch::Tensor& x, const torch::Tensor& t) = 0;  // [N]
  virtual std::string hjb_equation() const = 0;  // e.g. "-d_t Phi + H(grad Phi)", for titles
};
inline constexpr const char* kHjbResidual = "mfglab.hjb_residual/1";

// "mfglab.flow_map/1", offered by deterministic flows: the map x(t0) -> x(t1) of
// dx/dt = b + v computed with the model's own solver (t1 < t0 integrates backwards), for
// x [N, d]. The result is detached; metrics use it for invertibility checks.
class FlowMap {
 public:
  virtual ~FlowMap() = default;
  virtual torch::Tensor transport(const torch::Tensor& x, double t0, double t1) = 0;  // [N, d]
};
inline constexpr const char* kFlowMap = "mfglab.flow_map/1";

// "mfglab.score_derivatives/1", offered by score models that compute their score's
// derivatives in closed form (sgm with a score network: one forward sweep, mfglab/nn.h
// MLP::jets). At points (x [N, d], t [N, 1]) it returns the score and its derivatives,
// differentiable in the model's parameters (not in x or t). The score-PDE regularizer
// uses it instead of d + d^2 reverse-mode passes; mfglab/score_pde.h computes the same
// quantities by autograd for any model.
struct ScoreDerivativeValues {
  torch::Tensor score;      // s, [N, d]
  torch::Tensor jacobian;   // [N, d, d]: jacobian[n][i][j] = d_i s_j
  torch::Tensor laplacian;  // [N, d]: Lap s_j = sum_i d_i d_i s_j
  torch::Tensor time;       // d_t s, [N, d]
};
class ScoreDerivatives {
 public:
  virtual ~ScoreDerivatives() = default;
  virtual ScoreDerivativeValues score_derivatives(const torch::Tensor& x, const torch::Tensor& t) = 0;
};
inline constexpr const char* kScoreDerivatives = "mfglab.score_derivatives/1";

// Looks a capability up: `if (auto* d = capability<ExactDensity>(dataset, kExactDensity))`.
template <class T>
T* capability(Plugin* p, const char* id) {
  return p ? static_cast<T*>(p->capability(id)) : nullptr;
}

// ---- defaults for optional model fields -------------------------------------------
inline torch::Tensor Model::log_prob(const torch::Tensor&) {
  throw Error("this model has no log_prob");
}
inline torch::Tensor Model::value(const torch::Tensor&, const torch::Tensor&) {
  throw Error("this model has no value function field");
}
inline torch::Tensor Model::velocity(const torch::Tensor&, const torch::Tensor&) {
  throw Error("this model has no velocity field");
}
inline torch::Tensor Model::score(const torch::Tensor&, const torch::Tensor&) {
  throw Error("this model has no score field");
}
inline Collocation Model::collocation(const torch::Tensor&) {
  throw Error("this model does not provide collocation points");
}

}  // namespace mfglab
