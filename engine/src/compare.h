// Reads run directories and summarises them: one row per configuration, metric columns
// as mean ± std over seeds.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mfglab::engine {

struct ConfigRow {
  std::string experiment;
  std::string label;
  int runs_ok = 0, runs_failed = 0;
  std::vector<uint64_t> seeds;
  // name -> values over the successful seeds
  std::vector<std::pair<std::string, std::vector<double>>> values;
};

// Finds every summary.json under the given paths (a run dir, an experiment dir or a
// results root). Throws mfglab::Error when a path does not exist or holds no runs.
std::vector<ConfigRow> collect_runs(const std::vector<std::string>& paths);

std::string format_table(const std::vector<ConfigRow>& rows);
std::string format_csv(const std::vector<ConfigRow>& rows);
nlohmann::json format_json(const std::vector<ConfigRow>& rows);

}  // namespace mfglab::engine
