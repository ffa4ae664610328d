// libFuzzer target: plugin parameters as JSON against a manifest with every kind of
// parameter. Any input must resolve, or give ParamErrors with a JSON path and a reason.
#include <cstdint>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "mfglab/plugin.h"
#include "plugin_host.h"

namespace {

const mfglab_manifest& manifest() {
  static mfglab::detail::ManifestHolder holder(
      MFGLAB_KIND_METRIC, "fuzzed", "1.0.0", "every kind of parameter", "", nullptr,
      std::vector<mfglab::ParamSpec>{mfglab::int_param("width", 64, "an integer").at_least(1).at_most(4096),
       mfglab::number_param("rate", 0.5, "a number").range(0, 1),
       mfglab::bool_param("flag", true, "a flag"),
       mfglab::string_param("name", "x", "a string"),
       mfglab::choice_param("mode", "a", "a|b|c", "a choice"),
       mfglab::numbers_param("list", {1.0, 2.0}, "numbers"),
       mfglab::json_param("raw", nlohmann::json::object(), "any JSON")});
  return *holder.get();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json params;
  try {
    params = nlohmann::json::parse(std::string(reinterpret_cast<const char*>(data), size));
  } catch (const nlohmann::json::exception&) {
    return 0;  // not JSON: the experiment parser's business
  }
  std::vector<mfglab::engine::ParamError> errors;
  auto resolved = mfglab::engine::resolve_params(manifest(), params, errors);
  for (const auto& e : errors)
    if (e.message.empty()) std::abort();
  if (errors.empty() && (!resolved.is_object() || resolved.size() != 7)) std::abort();
  return 0;
}
