// The C++ interfaces a plugin implements, and the run context it receives.
// Objects cross the library boundary only after the engine has checked the manifest
// (same SDK major, an SDK minor no newer than the engine's, the same LibTorch major.minor
// and C++ ABI: manifest.h, "Compatibility"), so they may use LibTorch types freely.
// Methods may throw (mfglab::Error preferably); the engine catches at its edge.
//
// Versioning of these interfaces. They are C++ vtables shared with plugins built against
// older SDK minors, so within SDK 1.x:
//   - adding, removing or reordering a virtual function of any class here (Plugin, Dataset,
//     Model, Hamiltonian, Regularizer, Metric, Logger, or a capability interface) is an SDK
//     MAJOR bump: an older plugin's vtable would lack the slot;
//   - later additions come through capability ids instead: a new interface with a new id
//     "mfglab.<what>/<n>" returned by Plugin::capability (null from plugins that predate
//     it), and a changed one gets a new id (".../2") beside the old;
//   - RunContext, LossTerm, Collocation, MetricInput and ScoreDerivativeValues only grow
//     at their end (a minor bump); a plugin built for a newer minor is refused at load,
//     so nobody reads past the engine's structs.
//
// Shapes and types. x is [N, d]; times t are [N, 1]; per-sample scalars are [N]. Every
// tensor a plugin returns has the run's dtype and device (ctx.options()) unless stated,
// and is finite. Inputs arrive in that dtype and device too.
//
// Conventions of a model (what an author cannot guess; otflow and sgm follow them):
//   - Time runs from the data to the reference: rho_0 (t = 0) is the data law and
//     rho_T (t = horizon() = T) the model's reference law (e.g. N(0, I)). The model's
//     particles follow, forward in time,
//         dX = (drift(X, t) + velocity(X, t)) dt + diffusion(t) dW,   X_0 ~ data,
//     so `velocity` points from the data towards the reference (the control v of the MFG:
//     for a potential flow v = -grad U / lambda), and rho_t is the law of X_t.
//   - sample(n) draws from the model's approximation of rho_0 (the data law), typically
//     by drawing from rho_T and integrating the dynamics backwards to t = 0.
//   - log_prob(x) is log rho_0(x) (the data law's density under the model); score(x, t)
//     is grad_x log rho_t(x); value(x, t) is the MFG value function U(x, t) (for a score
//     model read as log rho_t, so that score = grad value).
//   - value, velocity, score, drift and diffusion are differentiable in x and t (and in
//     the parameters) when called under grad mode: regularizers take their derivatives
//     (grad_x U, d_t U, Laplacians) with autograd. They accept any N, including points
//     that are not on the model's paths.
//   - collocation(batch) returns points (x [N, d], t [N, 1]) with t in [0, T] and x ~ rho_t:
//     each batch point (a draw from rho_0) carried along the model's own dynamics to its
//     time t. Times are drawn from ctx.generator, uniform on [0, T] unless the model's
//     forward process restricts them (a score model starts at its t_min). The points may
//     carry the parameters' graph (kinetic differentiates through the paths); callers that
//     do not want it run collocation under torch::NoGradGuard.
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
// for the plugin object's whole life. Fields are only ever appended (an SDK minor bump):
// a plugin of an older minor reads its prefix.
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
//   dX = (b(X,t) + v(X,t)) dt + sigma(t) dW   on [0, horizon()],
// from the data at t = 0 to the reference law at t = horizon() (see the conventions at the
// top of this file). Optional fields are declared in the manifest's `fields`
// ("value,velocity,score,log_prob"); the engine refuses an experiment that needs a field
// the model lacks, and the defaults below throw. sdk/example/gaussian_model.cpp is a small
// complete model.
class Model : public Plugin {
 public:
  // The trainable tensors: leaves with requires_grad, the same tensors on every call (the
  // engine builds its optimizer, checkpoints and gradient sums from them).
  virtual std::vector<torch::Tensor> parameters() = 0;
  // Named training loss terms on a data batch ([B, d], a draw from rho_0); each value is a
  // scalar (numel 1) in the graph of parameters(). The engine adds them up (with the
  // regularizers' weighted penalties), logs each, and steps the optimizer. Names are
  // stable from one call to the next (they are the columns of losses.csv). In each
  // training iteration the engine calls it after the regularizers' penalties, with the same
  // batch tensor: a model may train on the points its collocation() drew for them.
  virtual LossTerms loss(const torch::Tensor& batch) = 0;
  // n generated samples from the model's rho_0, [n, d], detached, finite.
  virtual torch::Tensor sample(int64_t n) = 0;

  virtual torch::Tensor log_prob(const torch::Tensor& x);                      // log rho_0(x), [N]
  virtual torch::Tensor value(const torch::Tensor& x, const torch::Tensor& t);     // U, [N]
  virtual torch::Tensor velocity(const torch::Tensor& x, const torch::Tensor& t);  // v, [N, d], data -> reference
  virtual torch::Tensor score(const torch::Tensor& x, const torch::Tensor& t);     // grad log rho_t, [N, d]

  // T > 0: the time of the reference law.
  virtual double horizon() const { return 1.0; }
  // Uncontrolled drift b(x, t), [N, d]; zero by default.
  virtual torch::Tensor drift(const torch::Tensor& x, const torch::Tensor& /*t*/) { return torch::zeros_like(x); }
  // Diffusion sigma(t) for t [N, 1], [N, 1]; zero (a deterministic flow) by default.
  virtual torch::Tensor diffusion(const torch::Tensor& t) { return torch::zeros_like(t); }
  // Points on the particle paths for a data batch: x [N, d] ~ rho_t at t [N, 1] in
  // [0, horizon()], one per batch point (see the conventions at the top of this file).
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
