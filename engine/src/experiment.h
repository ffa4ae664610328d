// Experiment files: parsing, validation against the plugins' declarations, and
// expansion of seeds x sweep into runs.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mfglab::engine {

class PluginHost;

// Bad input: every line names the file and a JSON path (or line:column) and what was
// expected. The CLI prints the lines and exits with code 2.
struct ExperimentError : std::runtime_error {
  explicit ExperimentError(std::vector<std::string> lines);
  std::vector<std::string> lines;
};

struct PluginUse {
  std::string plugin;
  nlohmann::json params = nlohmann::json::object();  // as written (defaults filled by the host)
  double weight = 1.0;                               // regularizers only
  std::string label;                                 // metrics only: prefix of value names
};

struct TrainConfig {
  int64_t iterations = 1000;
  int64_t batch_size = 256;
  std::string optimizer = "adam";  // adam | sgd
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;
  double momentum = 0.0;  // sgd
  double weight_decay = 0.0;
  std::string schedule = "constant";  // constant | step | exponential | cosine
  int64_t step_size = 100;            // step: multiply by gamma every step_size iterations
  double gamma = 0.5;                 // step / exponential (per iteration)
  double min_lr = 0.0;                // cosine
  double grad_clip = 0.0;             // max global gradient norm; 0 = off
  int64_t log_every = 100;
  int64_t checkpoint_every = 1000;    // 0 = only the final checkpoint
  double time_limit = 0;              // seconds, 0 = none
  int64_t memory_limit = 0;           // bytes, 0 = none
  bool data_parallel = false;
};

// A metric of the experiment's eval section that one variant's run does not compute,
// because that variant's model lacks a field the metric needs (or there is no Hamiltonian).
struct SkippedMetric {
  std::string plugin;
  std::string label;
  std::string reason;
  size_t index = 0;  // position in the eval.metrics list the variant inherits
};

struct EvalConfig {
  int64_t samples = 2000;
  int64_t every = 0;  // periodic evaluation every N iterations; 0 = only at the end
  // The seed whose held-out data calibrates data-dependent metric settings
  // ("mfglab.metric_calibration/1"); unset in a file: the experiment's first seed.
  std::optional<uint64_t> calibration_seed;
  // The learned map, for comparing flows across seeds: the images at the horizon of the
  // first map_points held-out points of calibration_seed (the same points in every run),
  // carried by RK4 with map_steps steps along the model's velocity, into map.npy. 0 = off.
  int64_t map_points = 0;
  int64_t map_steps = 64;
  std::vector<PluginUse> metrics;
  std::vector<SkippedMetric> skipped_metrics;  // files with variants only
};

struct RunSpec {
  std::string experiment;
  // Directory name: "<label>,seed=<s>" or "seed=<s>"; unique within the experiment and at
  // most kMaxRunIdBytes long (a longer one keeps a prefix of the label and a hash of it).
  std::string run_id;
  // The configuration without the seed: "width=64" or "default". A swept value that prints
  // like another value of the same key gets "~" and a hash of its JSON: "path=a_b~1a2b3c4d".
  // In a file with variants the label starts with the variant: "variant=otflow",
  // "variant=otflow,lr=0.01".
  std::string label;
  // The name of the variant this run belongs to; "" in a file without variants.
  std::string variant;
  uint64_t seed = 0;
  std::string dtype = "float32";
  PluginUse dataset, model;
  std::optional<PluginUse> hamiltonian;
  std::vector<PluginUse> regularizers;
  TrainConfig train;
  EvalConfig eval;
  // The resolved configuration of this run (written to config.json): the experiment with
  // its variant and the sweep applied, dtype and every train and eval setting with its
  // default filled in; "variant": NAME and eval.skipped_metrics in files with variants.
  nlohmann::json config;

  // Every plugin the run uses, each once: dataset, model, Hamiltonian, regularizers, metrics.
  std::vector<std::string> plugins() const {
    std::vector<std::string> names = {dataset.plugin, model.plugin};
    if (hamiltonian) names.push_back(hamiltonian->plugin);
    for (const auto& r : regularizers) names.push_back(r.plugin);
    for (const auto& m : eval.metrics) names.push_back(m.plugin);
    std::vector<std::string> once;
    for (auto& n : names)
      if (std::find(once.begin(), once.end(), n) == once.end()) once.push_back(std::move(n));
    return once;
  }
};

// Limits of validation.
inline constexpr size_t kMaxNameBytes = 200;     // experiment name
inline constexpr size_t kMaxRunIdBytes = 200;    // run id (longer ones are shortened)
inline constexpr size_t kMaxJsonDepth = 256;     // nesting of arrays and objects
inline constexpr uint64_t kMaxRuns = 100000;     // sweep combinations x seeds
inline constexpr size_t kMaxSuggestWord = 64;    // longer words get no did-you-mean

// 64-bit FNV-1a of a byte string (stable across builds and platforms).
uint64_t fnv1a64(const std::string& bytes);

struct Experiment {
  std::string file;
  std::string name;
  std::vector<RunSpec> runs;
};

// Reads, validates and expands an experiment file. Throws ExperimentError.
//
// Variants: an experiment may hold "variants": {"NAME": {SECTION: ..., ...}, ...}. Each
// variant is one arm of a study and runs every seed and sweep combination. A section
// given in a variant takes the place of the experiment's: dataset, model, hamiltonian
// (null removes it), regularizers and dtype are replaced whole; train and eval are merged
// into the experiment's key by key (RFC 7386 merge patch: nested objects such as
// train.optimizer merge too, lists such as eval.metrics are replaced, null removes a key).
// The sweep applies on top of the variant. Every variant is validated as a whole experiment
// and its errors point into it (/variants/NAME/...). A metric of the experiment's own
// eval.metrics that a variant's model cannot compute is left out of that variant's runs
// (eval.skipped_metrics says why) instead of rejecting the file.
Experiment load_experiment(const std::string& file, const PluginHost& host);
// Same from JSON text (file is used in messages only).
Experiment parse_experiment(const std::string& text, const std::string& file, const PluginHost& host);

// A memory size: an integer number of bytes >= 1, or a string "<number><K|M|G|T>" in binary
// multiples ("512M", "1.5G"); nullopt when it is neither or does not fit. train.memory_limit
// and `run --run-memory` both read sizes with it.
std::optional<int64_t> memory_size(const nlohmann::json& v);

// Edit distance, for did-you-mean suggestions. did_you_mean gives no suggestion for a word
// (or candidate) longer than kMaxSuggestWord bytes.
size_t edit_distance(const std::string& a, const std::string& b);
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace mfglab::engine
