// Reads run directories and summarises them: one row per configuration, metric columns
// as mean ± std over seeds, the total wall time; on request every seed's values, and
// paired statistics of every configuration against a baseline (same seed on both sides).
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "stats.h"

namespace mfglab::engine {

// One run as its summary.json (and config.json) describe it.
struct RunRecord {
  uint64_t seed = 0;
  std::string run_id;
  std::string status;  // "ok", "failed", "crashed", ...
  bool ok = false;
  // Successful runs: metric name -> value (NaN when the summary holds null), then
  // "sec/iter" (seconds_per_iteration).
  std::vector<std::pair<std::string, double>> values;
  double wall_seconds = 0;  // train_seconds + sample_seconds, as far as the summary has them
  std::string map_file;     // the run's map.npy (eval.map_points), when it is ok and has one
};

// How far apart the maps learned by different seeds of one configuration are: for each pair
// of runs, the mean Euclidean distance between their images (map.npy) of the same held-out
// points.
struct MapSpread {
  int maps = 0;                      // runs with a map.npy
  std::vector<double> distances;     // one per pair of those runs
  std::string problem;               // why some maps were not compared, when that happened
};

struct ConfigRow {
  std::string experiment;
  std::string label;
  std::string variant;  // config.json's "variant"; "" for a file without variants
  int runs_ok = 0, runs_failed = 0;
  std::vector<uint64_t> seeds;  // every run's seed, ascending
  // name -> values over the successful seeds, in seed order
  std::vector<std::pair<std::string, std::vector<double>>> values;
  std::vector<RunRecord> runs;  // every run, by seed
  double wall_seconds = 0;      // sum of the runs' wall_seconds
  // summary.json's optional "metric_better": value name -> "lower" | "higher".
  std::map<std::string, std::string> metric_better;
  MapSpread map_spread;
};

// The timing column; not a metric (never tested against a baseline).
inline constexpr const char* kSecondsPerIteration = "sec/iter";

// Finds every summary.json under the given paths (a run dir, an experiment dir or a
// results root). Throws mfglab::Error when a path does not exist or holds no runs. Rows
// come in natural order of experiment, then label (natural_less). Reads only.
std::vector<ConfigRow> collect_runs(const std::vector<std::string>& paths);

// Natural order: numbers inside the strings compare as numbers ("steps=32" before
// "steps=100", "lr=1e-3" before "lr=0.01"), the rest byte by byte; equal strings under
// this order fall back to plain byte order.
bool natural_less(const std::string& a, const std::string& b);

// One metric of one configuration against its baseline, over the seeds both ran.
struct MetricComparison {
  std::string metric;
  std::string better;   // "lower" / "higher" from metric_better, "" when unknown
  size_t pairs = 0;     // seeds with a value on both sides
  size_t missing = 0;   // paired seeds where one side has no value (skipped, null)
  stats::Interval diff;  // of arm - baseline: mean and its t interval
  size_t higher = 0, lower = 0;  // pairs where the arm's value is higher / lower
  stats::PairedTest test;
  double p_holm = NAN;  // Holm-adjusted over the metrics of this arm
  // "better" / "worse" (direction known), "higher" / "lower" (unknown), "no detectable
  // difference", or "n/a" (no pairs).
  std::string verdict;
  std::vector<std::pair<uint64_t, double>> differences;  // seed, arm - baseline
  // Pairs where the arm is better; with the direction unknown, the pairs where it is higher.
  size_t wins() const { return better == "lower" ? lower : higher; }
};

struct ArmComparison {
  const ConfigRow* arm = nullptr;
  const ConfigRow* baseline = nullptr;  // null when no baseline configuration matches it
  std::vector<uint64_t> paired_seeds;
  std::vector<uint64_t> unpaired_seeds;  // a successful run in one of the two only
  std::vector<MetricComparison> metrics;
  std::string note;  // why there are no statistics, when there are none
};

struct PairedComparison {
  std::string baseline;                    // as given
  std::vector<const ConfigRow*> baselines;  // the configurations it names
  std::vector<ArmComparison> arms;          // every other configuration, in row order
  double level = 0.05;
};

// Pairs every configuration with the baseline `name`: a variant name, a configuration
// label ("variant=otflow,lr=0.01", "steps=32", "default"), "EXPERIMENT/LABEL", or an
// experiment name. When the name covers several configurations (a variant crossed with a
// sweep), each other configuration is paired with the one of the same experiment and the
// same label apart from the variant. Throws mfglab::Error for an unknown baseline or one
// without successful runs.
PairedComparison compare_paired(const std::vector<ConfigRow>& rows, const std::string& name, double level = 0.05);

struct CompareOptions {
  bool per_seed = false;  // also every run's values
  std::string baseline;   // "" = no paired statistics
};

// The table: configurations, then (per_seed) every run, then (baseline) the paired
// statistics with their notes.
std::string format_table(const std::vector<ConfigRow>& rows, const CompareOptions& options = {});
// One CSV table: the paired statistics with a baseline, else every run with per_seed,
// else the configurations.
std::string format_csv(const std::vector<ConfigRow>& rows, const CompareOptions& options = {});
// An array of configurations, each with its runs; with a baseline, "baseline": true on
// the baseline rows and "paired" on the others.
nlohmann::json format_json(const std::vector<ConfigRow>& rows, const CompareOptions& options = {});

}  // namespace mfglab::engine
