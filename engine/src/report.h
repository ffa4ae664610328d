// `mfglab report`: one self-contained HTML page of a comparison (no network, no external
// file; figures embedded as PNG data): what differs between the configurations, the
// comparison table with paired statistics, the samples (and trajectories, densities),
// every arm's loss curve on one axis, the failures with their messages, and what made the
// results. Reads the run folders only.
#pragma once

#include <string>
#include <vector>

#include "compare.h"

namespace mfglab::engine {

// The page's text (well-formed XHTML syntax, UTF-8). Throws mfglab::Error when a path
// holds no runs or a comparison option is bad (an unknown baseline).
std::string make_report(const std::vector<std::string>& paths, const CompareOptions& options);

}  // namespace mfglab::engine
