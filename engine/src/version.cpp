#include "version.h"

#include <fmt/format.h>
#include <torch/version.h>

#include "experiment.h"
#include "plugin_host.h"
#include "results/sha256.h"

namespace mfglab::engine {

const char* mfglab_version() { return MFGLAB_VERSION; }

std::string version_line() {
  return fmt::format("mfglab {} (plugin SDK {}.{}, LibTorch {})", MFGLAB_VERSION, MFGLAB_SDK_MAJOR, MFGLAB_SDK_MINOR,
                     TORCH_VERSION);
}

nlohmann::json provenance(const RunSpec& spec, const PluginHost& host) {
  nlohmann::json plugins = nlohmann::json::array();
  for (const auto& name : spec.plugins()) {
    const LoadedPlugin* p = host.find(name);
    if (!p) continue;
    std::string digest;
    try {
      digest = sha256_file(p->file);
    } catch (const std::exception& e) {
      digest = e.what();  // recorded as it is: the library was loaded, so this is rare
    }
    plugins.push_back({{"name", name}, {"kind", kind_name(p->manifest->kind)}, {"version", p->manifest->version},
                       {"file", p->file}, {"sha256", digest}});
  }
  return {{"mfglab_version", MFGLAB_VERSION}, {"libtorch_version", TORCH_VERSION}, {"plugins", plugins}};
}

}  // namespace mfglab::engine
