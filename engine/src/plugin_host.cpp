#include "plugin_host.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>
#include <fmt/format.h>

#include "mfglab/sdk.h"
#include <torch/csrc/api/include/torch/version.h>
#include "mfglab/plugin.h"  // MFGLAB_ABI_TAG: the engine's own tag

namespace fs = std::filesystem;

namespace mfglab::engine {

const char* kind_name(int32_t kind) {
  switch (kind) {
    case MFGLAB_KIND_DATASET: return "dataset";
    case MFGLAB_KIND_MODEL: return "model";
    case MFGLAB_KIND_HAMILTONIAN: return "hamiltonian";
    case MFGLAB_KIND_REGULARIZER: return "regularizer";
    case MFGLAB_KIND_METRIC: return "metric";
  }
  return "unknown";
}

std::optional<int32_t> parse_kind(const std::string& name) {
  for (int32_t k = MFGLAB_KIND_DATASET; k <= MFGLAB_KIND_METRIC; ++k)
    if (name == kind_name(k)) return k;
  return std::nullopt;
}

bool LoadedPlugin::has_field(const std::string& f) const {
  return std::find(fields.begin(), fields.end(), f) != fields.end();
}

namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string item;
  std::istringstream in(s);
  while (std::getline(in, item, sep))
    if (!item.empty()) out.push_back(item);
  return out;
}

// The first fields every SDK major shares; read before trusting anything else.
struct ManifestHead {
  uint32_t sdk_major;
  uint32_t sdk_minor;
  uint32_t struct_size;
};

}  // namespace

std::vector<std::string> PluginHost::search_path(const std::vector<std::string>& extra) {
  std::vector<std::string> dirs;
  fs::path exe = boost::dll::program_location().string();
  dirs.push_back((exe.parent_path().parent_path() / "lib" / "mfglab" / "plugins").string());
  if (const char* env = std::getenv("MFGLAB_PLUGIN_PATH"))
    for (auto& d : split(env, ':')) dirs.push_back(d);
  dirs.insert(dirs.end(), extra.begin(), extra.end());
  return dirs;
}

PluginHost::PluginHost(const std::vector<std::string>& directories) {
  for (const auto& dir : directories) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) continue;  // a missing default folder is not an error
    std::vector<std::string> files;
    for (const auto& entry : fs::directory_iterator(dir, ec))
      if (entry.path().extension() == ".so") files.push_back(entry.path().string());
    std::sort(files.begin(), files.end());  // deterministic load order
    for (const auto& f : files) load_file(f);
  }
}

PluginHost::~PluginHost() = default;

void PluginHost::load_file(const std::string& path) {
  auto refuse = [&](const std::string& reason) {
    problems_.push_back(fmt::format("refused {}: {}", path, reason));
  };
  auto lib = std::make_shared<boost::dll::shared_library>();
  boost::system::error_code ec;
  lib->load(path, boost::dll::load_mode::rtld_lazy | boost::dll::load_mode::rtld_local, ec);
  if (ec) return refuse("cannot load library (" + ec.message() + ")");
  if (!lib->has(MFGLAB_ENTRY_SYMBOL))
    return refuse(fmt::format("no entry symbol '{}' (not an mfglab plugin)", MFGLAB_ENTRY_SYMBOL));
  auto entry = lib->get<const mfglab_manifest*()>(MFGLAB_ENTRY_SYMBOL);
  const mfglab_manifest* m = entry();
  if (m == nullptr) return refuse("entry returned no manifest");
  const auto* head = reinterpret_cast<const ManifestHead*>(m);
  if (head->sdk_major != MFGLAB_SDK_MAJOR)
    return refuse(fmt::format("built for SDK major {}, this engine supports major {}",
                              head->sdk_major, MFGLAB_SDK_MAJOR));
  if (head->struct_size < sizeof(mfglab_manifest))
    return refuse(fmt::format("manifest struct is {} bytes, SDK {}.{} needs at least {}",
                              head->struct_size, MFGLAB_SDK_MAJOR, MFGLAB_SDK_MINOR,
                              sizeof(mfglab_manifest)));
  const std::string torch_version = m->torch_version ? m->torch_version : "";
  if (torch_version != TORCH_VERSION)
    return refuse(fmt::format("built against LibTorch {}, this engine uses LibTorch {}",
                              torch_version.empty() ? "(none)" : torch_version, TORCH_VERSION));
  const std::string abi = m->abi_tag ? m->abi_tag : "";
  if (abi != MFGLAB_ABI_TAG)
    return refuse(fmt::format("C++ ABI tag '{}' differs from the engine's '{}'", abi, MFGLAB_ABI_TAG));
  if (m->name == nullptr || *m->name == '\0') return refuse("manifest has no name");
  if (m->kind < MFGLAB_KIND_DATASET || m->kind > MFGLAB_KIND_METRIC)
    return refuse(fmt::format("unknown plugin kind {}", m->kind));
  if (m->create == nullptr) return refuse("manifest has no factory");
  if (m->param_count > 0 && m->params == nullptr) return refuse("manifest declares parameters but gives none");

  auto plugin = std::make_unique<LoadedPlugin>();
  plugin->file = path;
  plugin->manifest = m;
  plugin->fields = split(m->fields ? m->fields : "", ',');
  plugin->library = std::move(lib);
  for (const auto& other : plugins_) {
    if (other->name() == plugin->name()) {
      auto msg = fmt::format("two plugins are named '{}': {} and {}", plugin->name(), other->file, path);
      problems_.push_back(msg);
      clashes_.emplace_back(plugin->name(), msg);
      return;  // keep the first, but using the name is an error (see find)
    }
  }
  plugins_.push_back(std::move(plugin));
}

std::vector<const LoadedPlugin*> PluginHost::plugins(std::optional<int32_t> kind) const {
  std::vector<const LoadedPlugin*> out;
  for (const auto& p : plugins_)
    if (!kind || p->kind() == *kind) out.push_back(p.get());
  std::sort(out.begin(), out.end(), [](auto* a, auto* b) {
    return std::make_pair(a->kind(), a->name()) < std::make_pair(b->kind(), b->name());
  });
  return out;
}

std::vector<std::string> PluginHost::names(std::optional<int32_t> kind) const {
  std::vector<std::string> out;
  for (auto* p : plugins(kind)) out.push_back(p->name());
  return out;
}

const LoadedPlugin* PluginHost::find(const std::string& name) const {
  for (const auto& [n, msg] : clashes_)
    if (n == name) throw Error(msg);
  for (const auto& p : plugins_)
    if (p->name() == name) return p.get();
  return nullptr;
}

std::unique_ptr<Plugin> PluginHost::create(const std::string& name, int32_t expected_kind,
                                           const nlohmann::json& params,
                                           const RunContext& context) const {
  const LoadedPlugin* p = find(name);
  if (p == nullptr) throw Error(fmt::format("no {} plugin named '{}'", kind_name(expected_kind), name));
  if (p->kind() != expected_kind)
    throw Error(fmt::format("plugin '{}' is a {}, expected a {}", name, kind_name(p->kind()),
                            kind_name(expected_kind)));
  std::vector<ParamError> errors;
  nlohmann::json resolved = resolve_params(*p->manifest, params, errors);
  if (!errors.empty())
    throw Error(fmt::format("plugin '{}': params{}: {}", name, errors[0].path, errors[0].message));
  void* object = nullptr;
  char error[1024] = {0};
  const std::string text = resolved.dump();
  if (!p->manifest->create(text.c_str(), &context, &object, error, sizeof(error)) || object == nullptr)
    throw Error(fmt::format("plugin '{}' ({}) failed to create: {}", name, p->file,
                            error[0] ? error : "factory returned nothing"));
  return std::unique_ptr<Plugin>(static_cast<Plugin*>(object));
}

// ---- parameter validation -----------------------------------------------------------

namespace {

std::string bounds_text(const mfglab_param& d) {
  std::string lo, hi;
  if (!std::isnan(d.min)) lo = fmt::format("{} {}", d.min_exclusive ? ">" : ">=", d.min);
  if (!std::isnan(d.max)) hi = fmt::format("{} {}", d.max_exclusive ? "<" : "<=", d.max);
  if (!lo.empty() && !hi.empty()) return lo + " and " + hi;
  return lo + hi;
}

bool in_bounds(const mfglab_param& d, double v) {
  if (!std::isnan(d.min) && (d.min_exclusive ? !(v > d.min) : !(v >= d.min))) return false;
  if (!std::isnan(d.max) && (d.max_exclusive ? !(v < d.max) : !(v <= d.max))) return false;
  return true;
}

std::string describe_value(const nlohmann::json& v) {
  std::string s = v.dump();
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

// Checks one value against its declaration; returns "" when it is fine.
std::string check_value(const mfglab_param& d, const nlohmann::json& v) {
  const std::string type = d.type;
  const std::string bounds = bounds_text(d);
  const std::string within = bounds.empty() ? "" : " " + bounds;
  if (type == "int") {
    bool integral = v.is_number_integer() ||
                    (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>() &&
                     std::abs(v.get<double>()) < 9e15);
    if (!integral) return fmt::format("expected an integer{}, got {}", within, describe_value(v));
    if (!in_bounds(d, v.get<double>())) return fmt::format("expected an integer{}, got {}", within, describe_value(v));
  } else if (type == "number") {
    if (!v.is_number()) return fmt::format("expected a number{}, got {}", within, describe_value(v));
    if (!in_bounds(d, v.get<double>())) return fmt::format("expected a number{}, got {}", within, describe_value(v));
  } else if (type == "numbers") {
    auto bad = [&] { return fmt::format("expected a number or a non-empty list of numbers{}, got {}", within, describe_value(v)); };
    if (v.is_number()) {
      if (!in_bounds(d, v.get<double>())) return bad();
    } else if (v.is_array() && !v.empty()) {
      for (const auto& e : v)
        if (!e.is_number() || !in_bounds(d, e.get<double>())) return bad();
    } else {
      return bad();
    }
  } else if (type == "bool") {
    if (!v.is_boolean()) return fmt::format("expected true or false, got {}", describe_value(v));
  } else if (type == "string") {
    if (!v.is_string()) return fmt::format("expected a string, got {}", describe_value(v));
    if (d.choices != nullptr) {
      auto options = split(d.choices, '|');
      if (std::find(options.begin(), options.end(), v.get<std::string>()) == options.end()) {
        std::string list;
        for (const auto& o : options) list += (list.empty() ? "" : ", ") + o;
        return fmt::format("expected one of {}, got {}", list, describe_value(v));
      }
    }
  }  // "json": the plugin checks it
  return "";
}

}  // namespace

nlohmann::json resolve_params(const mfglab_manifest& manifest, const nlohmann::json& params,
                              std::vector<ParamError>& errors) {
  nlohmann::json resolved = nlohmann::json::object();
  if (!params.is_null() && !params.is_object()) {
    errors.push_back({"", "expected an object of parameters, got " + describe_value(params)});
    return resolved;
  }
  std::vector<std::string> declared;
  for (uint32_t i = 0; i < manifest.param_count; ++i) {
    const mfglab_param& d = manifest.params[i];
    declared.push_back(d.name);
    if (params.is_object() && params.contains(d.name)) {
      const auto& v = params.at(d.name);
      std::string problem = check_value(d, v);
      if (!problem.empty()) errors.push_back({std::string("/") + d.name, problem});
      resolved[d.name] = v;
    } else {
      resolved[d.name] = nlohmann::json::parse(d.default_json ? d.default_json : "null");
    }
  }
  if (params.is_object()) {
    for (const auto& [key, value] : params.items()) {
      if (std::find(declared.begin(), declared.end(), key) != declared.end()) continue;
      std::string list;
      for (const auto& n : declared) list += (list.empty() ? "" : ", ") + n;
      errors.push_back({"/" + key, fmt::format("unknown parameter of plugin '{}' (it accepts: {})",
                                               manifest.name, list.empty() ? "none" : list)});
    }
  }
  return resolved;
}

}  // namespace mfglab::engine
