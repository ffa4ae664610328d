// Finds plugin libraries, checks their manifests, and creates plugin objects.
//
// Libraries are opened with immediate binding (an unresolved symbol refuses the library
// with the loader's message) and with stdout pointed at stderr while they load. A library
// once opened is never unloaded, like LLVM's permanent libraries: objects returned by
// create() may outlive the PluginHost and still call into their library. create() returns a
// plain std::unique_ptr (every run and test stores it so), which has no room for a deleter
// holding the library; and unloading a library linked to LibTorch is not safe anyway: its
// static initialisers may have registered operators or atexit handlers with LibTorch, and
// its thread-local destructors would point into unmapped code. That holds for refused
// libraries too (their initialisers have run), so they stay mapped as well. Loading the same
// file again (another PluginHost) reuses the mapping.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mfglab/manifest.h"
#include "mfglab/params.h"

namespace mfglab {
struct RunContext;
class Plugin;
}

namespace mfglab::engine {

const char* kind_name(int32_t kind);               // "dataset", "model", ...
std::optional<int32_t> parse_kind(const std::string& name);

// One entry of a manifest's `fields` (manifest.h): "value", or "value(parameterization=
// potential)", a field that holds only while one of the plugin's own parameters has one of
// the listed values ("a|b").
struct FieldDecl {
  std::string name;
  std::string param;                 // empty: the field always holds
  std::vector<std::string> values;   // the parameter's values, as written in the manifest
  std::vector<nlohmann::json> accepted;  // the same values as JSON, as the parameter holds them
  bool holds(const nlohmann::json& param_value) const;
  std::string condition() const;     // "parameterization = potential", or "" when unconditional
};

struct LoadedPlugin {
  LoadedPlugin() = default;
  LoadedPlugin(const LoadedPlugin&) = delete;  // manifest points into the object
  LoadedPlugin& operator=(const LoadedPlugin&) = delete;

  std::string file;  // the library's path
  // The engine's copy of the plugin's manifest, complete whatever the plugin's SDK minor:
  // the plugin's prefix (struct_size bytes), the defaults beyond it, and params pointing
  // at `params` below (each entry read with the plugin's param_size stride). Strings point
  // into the library, which stays loaded.
  const mfglab_manifest* manifest = nullptr;
  std::vector<std::string> fields;      // the names of manifest->fields, each once
  std::vector<FieldDecl> field_decls;   // manifest->fields with their conditions
  mfglab_manifest manifest_copy{};
  std::vector<mfglab_param> params;
  void* library = nullptr;  // the dlopen handle; never closed

  std::string name() const { return manifest->name; }
  int32_t kind() const { return manifest->kind; }
  bool has_field(const std::string& f) const;  // declared, under any condition
  // The fields that hold for these parameters (as written; omitted ones take their defaults).
  bool has_field(const std::string& f, const nlohmann::json& params) const;
  std::vector<std::string> fields_for(const nlohmann::json& params) const;
  // A parameter's value in `params`, else its declared default; null if undeclared.
  nlohmann::json param_value(const std::string& name, const nlohmann::json& params) const;
  // The fields as a reader sees them: "score, value (when parameterization = potential)".
  std::string describe_fields() const;
  // A metric's declared direction for one of its values: "lower", "higher", or "" when the
  // manifest does not say (manifest.h, `better`).
  std::string better_for(const std::string& value_name) const;
};

// Checks a manifest's `better` text ("lower", "higher" or "name=lower,..."); returns a
// problem to report, or "" when it is well formed.
std::string check_better(const char* better);

class PluginHost {
 public:
  // Loads every *.so in the given directories, in order. Libraries that fail a check are
  // refused (see problems()); the others load.
  explicit PluginHost(const std::vector<std::string>& directories);
  // Loads exactly these library files (a worker process loads only the plugins its
  // experiment uses: starting a run costs less).
  static std::unique_ptr<PluginHost> of_files(const std::vector<std::string>& files);
  ~PluginHost();
  PluginHost(const PluginHost&) = delete;
  PluginHost& operator=(const PluginHost&) = delete;

  // The search path: the plugin folder beside the executable (../lib/mfglab/plugins),
  // then MFGLAB_PLUGIN_PATH (colon-separated), then the given extra directories.
  static std::vector<std::string> search_path(const std::vector<std::string>& extra_directories);

  // One line per refused library or name clash, naming the file(s) and the reason.
  const std::vector<std::string>& problems() const { return problems_; }
  // The directories given to the constructor, in order, whether they exist or not.
  const std::vector<std::string>& searched_directories() const { return directories_; }
  // How to find a plugin that is not there, for "no model plugin named 'x'" messages:
  // "searched A, B (missing); add a plugin folder with --plugin-dir DIR or
  // MFGLAB_PLUGIN_PATH=DIR[:DIR...]".
  std::string search_hint() const;
  // All accepted plugins, sorted by kind then name; optionally of one kind.
  std::vector<const LoadedPlugin*> plugins(std::optional<int32_t> kind = std::nullopt) const;
  // The plugin with this name, or null. Throws mfglab::Error when two libraries claim it.
  const LoadedPlugin* find(const std::string& name) const;
  // Names of accepted plugins (for did-you-mean suggestions).
  std::vector<std::string> names(std::optional<int32_t> kind = std::nullopt) const;

  // Creates a plugin object of the expected kind from user parameters: fills declared
  // defaults, validates (unknown keys, types, bounds, choices) and calls the factory.
  // Throws mfglab::Error naming the plugin, its file and the reason. The object may outlive
  // this host (its library stays loaded).
  std::unique_ptr<Plugin> create(const std::string& name, int32_t expected_kind,
                                 const nlohmann::json& params, const RunContext& context) const;
  template <class T>
  std::unique_ptr<T> create_as(const std::string& name, int32_t expected_kind,
                               const nlohmann::json& params, const RunContext& context) const {
    return std::unique_ptr<T>(static_cast<T*>(create(name, expected_kind, params, context).release()));
  }

 private:
  void load_file(const std::string& path);
  std::vector<std::string> directories_;
  std::vector<std::unique_ptr<LoadedPlugin>> plugins_;
  std::vector<std::string> problems_;
  std::vector<std::pair<std::string, std::string>> clashes_;  // name, message
};

// Parameter validation against a manifest's declarations, shared by the host and the
// experiment validator. Returns the resolved parameters (defaults filled in) or throws
// ParamError with a JSON path relative to the params object ("/width") and a reason.
struct ParamError {
  std::string path;
  std::string message;
};
nlohmann::json resolve_params(const mfglab_manifest& manifest, const nlohmann::json& params,
                              std::vector<ParamError>& errors);

}  // namespace mfglab::engine
