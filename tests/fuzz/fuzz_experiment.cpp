// libFuzzer target: experiment files. Any input must end in a parsed experiment or an
// ExperimentError whose every line names the file; anything else (another exception, a
// crash, a sanitizer report, a hang) is a bug.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "experiment.h"
#include "plugin_host.h"

namespace {

const mfglab::engine::PluginHost& host() {
  // The plugins of a build tree, when given, so that validation reaches the parameters.
  static mfglab::engine::PluginHost h([] {
    std::vector<std::string> dirs;
    if (const char* d = std::getenv("MFGLAB_FUZZ_PLUGIN_DIR")) dirs.push_back(d);
    return dirs;
  }());
  return h;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    auto ex = mfglab::engine::parse_experiment(text, "fuzz.json", host());
    if (ex.runs.empty() || ex.runs.size() > mfglab::engine::kMaxRuns) std::abort();
  } catch (const mfglab::engine::ExperimentError& e) {
    if (e.lines.empty()) std::abort();
    for (const auto& line : e.lines)
      if (line.rfind("fuzz.json", 0) != 0) {
        std::fprintf(stderr, "an error line without the file name: %s\n", line.c_str());
        std::abort();
      }
  }
  return 0;
}
