// What produced a result: recorded in every summary.json and printed by `mfglab --version`.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace mfglab::engine {

class PluginHost;
struct RunSpec;

// The project's version, from CMakeLists.txt (project(... VERSION ...)).
const char* mfglab_version();
// "mfglab 0.1.0 (plugin SDK 1.2, LibTorch 1.13.1)".
std::string version_line();
// The mfglab version, LibTorch's, and each plugin the run uses: kind, name, version, library
// file and its SHA-256.
nlohmann::json provenance(const RunSpec& spec, const PluginHost& host);

}  // namespace mfglab::engine
