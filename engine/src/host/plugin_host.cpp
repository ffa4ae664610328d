#include "plugin_host.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <set>
#include <sstream>

#include <dlfcn.h>
#include <fcntl.h>
#include <unistd.h>

#include <boost/dll/runtime_symbol_info.hpp>
#include <fmt/format.h>

#include "mfglab/sdk.h"
#include <torch/csrc/api/include/torch/version.h>
#include "mfglab/plugin.h"  // MFGLAB_ABI_TAG: the engine's own tag
#include "text.h"

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

bool FieldDecl::holds(const nlohmann::json& v) const {
  if (param.empty()) return true;
  // JSON equality: 3 and 3.0 are the same number.
  return std::find(accepted.begin(), accepted.end(), v) != accepted.end();
}

std::string FieldDecl::condition() const {
  if (param.empty()) return "";
  std::string alternatives;
  for (const auto& v : values) alternatives += (alternatives.empty() ? "" : " or ") + v;
  return param + " = " + alternatives;
}

nlohmann::json LoadedPlugin::param_value(const std::string& name, const nlohmann::json& params) const {
  if (params.is_object() && params.contains(name)) return params.at(name);
  for (const auto& d : this->params)
    if (name == d.name) return nlohmann::json::parse(d.default_json, nullptr, false);
  return nullptr;
}

bool LoadedPlugin::has_field(const std::string& f, const nlohmann::json& params) const {
  for (const auto& d : field_decls)
    if (d.name == f && d.holds(param_value(d.param, params))) return true;
  return false;
}

std::vector<std::string> LoadedPlugin::fields_for(const nlohmann::json& params) const {
  std::vector<std::string> out;
  for (const auto& f : fields)
    if (has_field(f, params)) out.push_back(f);
  return out;
}

std::string LoadedPlugin::describe_fields() const {
  std::string out;
  for (const auto& d : field_decls) {
    out += (out.empty() ? "" : ", ") + d.name;
    if (!d.param.empty()) out += " (when " + d.condition() + ")";
  }
  return out;
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

static_assert(MFGLAB_MANIFEST_SIZE_1_0 == offsetof(mfglab_manifest, param_size),
              "the SDK 1.0 manifest ends where the SDK 1.2 fields begin");

// More parameters than any plugin declares: a count beyond it is garbage, not a schema.
constexpr uint32_t kMaxParams = 4096;

// Whether a struct of `size` bytes (as the plugin was built) contains the field at
// [offset, offset + field_size).
constexpr bool covers(size_t size, size_t offset, size_t field_size) { return offset + field_size <= size; }

// A plugin's string for a one-line message: control characters escaped, at most 60 bytes.
std::string printable(const char* text) {
  std::string out;
  for (const char* c = text; *c != '\0'; ++c) {
    if (out.size() >= 60) {
      out += "...";
      break;
    }
    const auto u = static_cast<unsigned char>(*c);
    out += u < 0x20 || u == 0x7f ? fmt::format("\\x{:02x}", u) : std::string(1, *c);
  }
  return out;
}

// A message from elsewhere (the loader, a JSON parser) on one line.
std::string one_line(std::string text) {
  for (auto& c : text)
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  return text;
}

// "1.13.0" -> (1, 13); nothing when the text does not start with <major>.<minor>.
std::optional<std::pair<long, long>> major_minor(const char* version) {
  if (version == nullptr) return std::nullopt;
  char* end = nullptr;
  if (!std::isdigit(static_cast<unsigned char>(version[0]))) return std::nullopt;
  const long major = std::strtol(version, &end, 10);
  if (*end != '.' || !std::isdigit(static_cast<unsigned char>(end[1]))) return std::nullopt;
  const long minor = std::strtol(end + 1, &end, 10);
  return std::make_pair(major, minor);
}

// "gxx-abi-<N>-cxx11abi-<M>" -> (N / 1000, M): the C++ ABI family and libstdc++'s string ABI.
std::optional<std::pair<long, std::string>> abi_family(const std::string& tag) {
  const std::string head = "gxx-abi-", mid = "-cxx11abi-";
  if (tag.compare(0, head.size(), head) != 0) return std::nullopt;
  const size_t at = tag.find(mid, head.size());
  if (at == std::string::npos || at == head.size()) return std::nullopt;
  const std::string number = tag.substr(head.size(), at - head.size());
  if (number.size() > 9 ||
      !std::all_of(number.begin(), number.end(), [](unsigned char c) { return std::isdigit(c); }))
    return std::nullopt;
  const std::string string_abi = tag.substr(at + mid.size());
  if (string_abi.empty()) return std::nullopt;
  return std::make_pair(std::stol(number) / 1000, string_abi);
}

// Points fd 1 at fd 2 while it lives, so that what a library prints while it loads (static
// initialisers, the entry function) reaches stderr and leaves stdout to the engine (e.g. the
// JSON of `mfglab plugins --json`). C and C++ streams are flushed on both sides, so text
// buffered by the library goes to stderr too. Not thread-safe: hosts are built at start-up.
class StdoutToStderr {
 public:
  StdoutToStderr() {
    std::cout.flush();
    std::fflush(stdout);
    saved_ = ::fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 0);
    if (saved_ >= 0 && ::dup2(STDERR_FILENO, STDOUT_FILENO) < 0) {
      ::close(saved_);
      saved_ = -1;
    }
  }
  ~StdoutToStderr() {
    std::cout.flush();
    std::fflush(stdout);
    if (saved_ >= 0) {
      ::dup2(saved_, STDOUT_FILENO);
      ::close(saved_);
    }
  }
  StdoutToStderr(const StdoutToStderr&) = delete;
  StdoutToStderr& operator=(const StdoutToStderr&) = delete;

 private:
  int saved_ = -1;
};

const std::vector<std::string> kParamTypes = {"int", "number", "bool", "string", "numbers", "json"};

std::string check_value(const mfglab_param& d, const nlohmann::json& v);

// Checks one declared parameter (already known to have its strings); "" when it is sound.
std::string check_declaration(const mfglab_param& d) {
  const std::string name = printable(d.name);
  if (std::find(kParamTypes.begin(), kParamTypes.end(), d.type) == kParamTypes.end())
    return fmt::format("parameter '{}': type '{}' is not one of int, number, bool, string, numbers, json", name,
                       printable(d.type));
  if (!std::isnan(d.min) && !std::isnan(d.max) &&
      (d.min > d.max || (d.min == d.max && (d.min_exclusive || d.max_exclusive))))
    return fmt::format("parameter '{}': bounds {} admit no value", name, bounds_text(d));
  nlohmann::json def;
  try {
    def = nlohmann::json::parse(d.default_json);
  } catch (const std::exception& e) {
    return fmt::format("parameter '{}': default_json '{}' is not valid JSON ({})", name, printable(d.default_json),
                       one_line(e.what()));
  }
  const std::string problem = check_value(d, def);
  if (!problem.empty())
    return fmt::format("parameter '{}': default {} does not satisfy its declaration: {}", name,
                       printable(d.default_json), problem);
  return "";
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

// Reads a manifest's `fields` ("a,b(param=x|y)"); returns a problem to report, or "" when
// every entry is well formed and each condition names a declared parameter and values it
// can take.
std::string parse_fields(const char* text, const std::vector<mfglab_param>& params, std::vector<FieldDecl>& out) {
  for (const auto& raw : split(text ? text : "", ',')) {
    const std::string entry = trim(raw);
    if (entry.empty()) continue;
    FieldDecl f;
    const auto open = entry.find('(');
    f.name = trim(entry.substr(0, open));
    const bool name_ok = !f.name.empty() && std::all_of(f.name.begin(), f.name.end(), [](char c) {
      return std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) || c == '_';
    });
    if (!name_ok)
      return fmt::format("manifest field 'fields': entry \"{}\" is not a name ([a-z0-9_]+) with an optional "
                         "condition \"(param=value|value)\"", printable(entry.c_str()));
    if (open != std::string::npos) {
      const auto eq = entry.find('=', open);
      if (entry.back() != ')' || eq == std::string::npos)
        return fmt::format("manifest field 'fields': entry \"{}\" has a malformed condition, expected "
                           "\"{}(param=value|value)\"", printable(entry.c_str()), f.name);
      f.param = trim(entry.substr(open + 1, eq - open - 1));
      f.values = split(entry.substr(eq + 1, entry.size() - eq - 2), '|');
      for (auto& v : f.values) v = trim(v);
      auto decl = std::find_if(params.begin(), params.end(), [&](const mfglab_param& d) { return f.param == d.name; });
      if (decl == params.end())
        return fmt::format("manifest field 'fields': entry \"{}\" depends on parameter '{}', which is not declared",
                           printable(entry.c_str()), printable(f.param.c_str()));
      if (f.values.empty())
        return fmt::format("manifest field 'fields': entry \"{}\" lists no value", printable(entry.c_str()));
      for (const auto& v : f.values) {
        nlohmann::json value = nlohmann::json::parse(v, nullptr, false);
        if (std::string(decl->type) == "string" || value.is_discarded()) value = v;
        if (const std::string problem = check_value(*decl, value); !problem.empty())
          return fmt::format("manifest field 'fields': entry \"{}\": value '{}' of parameter '{}': {}",
                             printable(entry.c_str()), printable(v.c_str()), printable(f.param.c_str()), problem);
        f.accepted.push_back(value);
      }
    }
    out.push_back(f);
  }
  return "";
}

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

PluginHost::PluginHost(const std::vector<std::string>& directories) : directories_(directories) {
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

std::unique_ptr<PluginHost> PluginHost::of_files(const std::vector<std::string>& files) {
  auto host = std::make_unique<PluginHost>(std::vector<std::string>{});
  for (const auto& f : files) host->load_file(f);
  return host;
}

PluginHost::~PluginHost() = default;

void PluginHost::load_file(const std::string& path) {
  auto refuse = [&](const std::string& reason) {
    problems_.push_back(fmt::format("refused {}: {}", path, reason));
  };
  // Immediate binding: a library that needs a symbol nobody provides is refused here, with
  // the loader's reason, rather than ended by the lazy binder mid-run (exit 127). The
  // handle is never closed (see plugin_host.h).
  void* handle = nullptr;
  const mfglab_manifest* m = nullptr;
  {
    StdoutToStderr quiet;
    ::dlerror();
    handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* why = ::dlerror();
      std::string reason = why ? why : "unknown reason";
      if (reason.compare(0, path.size() + 2, path + ": ") == 0) reason.erase(0, path.size() + 2);
      return refuse("cannot load library: " + one_line(reason));
    }
    void* symbol = ::dlsym(handle, MFGLAB_ENTRY_SYMBOL);
    if (symbol == nullptr)
      return refuse(fmt::format("no entry symbol '{}' (not an mfglab plugin)", MFGLAB_ENTRY_SYMBOL));
    m = reinterpret_cast<mfglab_entry_fn>(symbol)();
  }
  if (m == nullptr) return refuse("entry returned no manifest");

  // Version: the head first, then only the prefix the plugin's SDK had.
  const auto* head = reinterpret_cast<const ManifestHead*>(m);
  if (head->sdk_major != MFGLAB_SDK_MAJOR)
    return refuse(fmt::format("built for SDK major {}, this engine supports major {}",
                              head->sdk_major, MFGLAB_SDK_MAJOR));
  if (head->sdk_minor > MFGLAB_SDK_MINOR)
    return refuse(fmt::format("built for SDK {}.{}, this mfglab provides SDK {}.{}", head->sdk_major,
                              head->sdk_minor, MFGLAB_SDK_MAJOR, MFGLAB_SDK_MINOR));
  if (head->struct_size < MFGLAB_MANIFEST_SIZE_1_0)
    return refuse(fmt::format("manifest struct is {} bytes, smaller than any SDK {}.x manifest ({} bytes)",
                              head->struct_size, MFGLAB_SDK_MAJOR, MFGLAB_MANIFEST_SIZE_1_0));
  auto plugin = std::make_unique<LoadedPlugin>();
  mfglab_manifest& copy = plugin->manifest_copy;
  copy.param_size = MFGLAB_PARAM_SIZE_1_0;  // the default of every field beyond the prefix
  copy.better = nullptr;
  std::memcpy(&copy, m, std::min<size_t>(head->struct_size, sizeof(copy)));
  if (!covers(head->struct_size, offsetof(mfglab_manifest, param_size), sizeof(copy.param_size)))
    copy.param_size = MFGLAB_PARAM_SIZE_1_0;
  if (!covers(head->struct_size, offsetof(mfglab_manifest, better), sizeof(copy.better))) copy.better = nullptr;

  const auto torch_mm = major_minor(copy.torch_version);
  const auto engine_mm = major_minor(TORCH_VERSION);
  if (!torch_mm || torch_mm != engine_mm)
    return refuse(fmt::format("built against LibTorch {}, this engine uses LibTorch {} (major.minor must match)",
                              copy.torch_version ? printable(copy.torch_version) : "(none)", TORCH_VERSION));
  const std::string abi = copy.abi_tag ? copy.abi_tag : "";
  const auto abi_mine = abi_family(MFGLAB_ABI_TAG);
  const auto abi_theirs = abi_family(abi);
  if (!abi_theirs || abi_theirs != abi_mine)
    return refuse(fmt::format("C++ ABI tag '{}' differs from the engine's '{}'", printable(abi.c_str()),
                              MFGLAB_ABI_TAG));

  // The manifest's own fields: nothing below may be NULL or inconsistent once accepted.
  auto null_field = [&](const std::string& field) { refuse(fmt::format("manifest field '{}' is NULL", field)); };
  if (copy.name == nullptr) return null_field("name");
  if (*copy.name == '\0') return refuse("manifest has no name");
  for (const char* c = copy.name; *c != '\0'; ++c)
    if (!(std::islower(static_cast<unsigned char>(*c)) || std::isdigit(static_cast<unsigned char>(*c)) || *c == '_'))
      return refuse(fmt::format("manifest field 'name' is \"{}\", expected [a-z0-9_]+", printable(copy.name)));
  if (copy.version == nullptr) return null_field("version");
  if (copy.description == nullptr) return null_field("description");
  if (copy.kind < MFGLAB_KIND_DATASET || copy.kind > MFGLAB_KIND_METRIC)
    return refuse(fmt::format("unknown plugin kind {}", copy.kind));
  if (copy.create == nullptr) return refuse("manifest has no factory");
  if (const std::string problem = check_better(copy.better); !problem.empty()) return refuse(problem);
  if (copy.param_count > 0 && copy.params == nullptr) return refuse("manifest declares parameters but gives none");
  if (copy.param_count > kMaxParams)
    return refuse(fmt::format("manifest field 'param_count' is {}, more than {}", copy.param_count, kMaxParams));
  if (copy.param_count > 0 && copy.param_size < MFGLAB_PARAM_SIZE_1_0)
    return refuse(fmt::format("manifest field 'param_size' is {}, smaller than an SDK {}.0 parameter ({} bytes)",
                              copy.param_size, MFGLAB_SDK_MAJOR, MFGLAB_PARAM_SIZE_1_0));

  // Parameters: each entry's prefix (param_size bytes), then its declaration.
  plugin->params.resize(copy.param_count);
  std::set<std::string> names;
  for (uint32_t i = 0; i < copy.param_count; ++i) {
    mfglab_param& d = plugin->params[i];
    std::memcpy(&d, reinterpret_cast<const char*>(copy.params) + size_t{i} * copy.param_size,
                std::min<size_t>(copy.param_size, sizeof(d)));
    const std::string which = d.name ? fmt::format(" (parameter '{}')", printable(d.name)) : "";
    if (d.name == nullptr) return null_field(fmt::format("params[{}].name", i));
    if (d.type == nullptr) return refuse(fmt::format("manifest field 'params[{}].type'{} is NULL", i, which));
    if (d.default_json == nullptr)
      return refuse(fmt::format("manifest field 'params[{}].default_json'{} is NULL", i, which));
    if (!names.insert(d.name).second)
      return refuse(fmt::format("parameter '{}' is declared twice (params[{}] repeats a name)", printable(d.name), i));
    const std::string problem = check_declaration(d);
    if (!problem.empty()) return refuse(problem);
  }
  plugin->file = path;
  plugin->library = handle;
  copy.params = plugin->params.empty() ? nullptr : plugin->params.data();
  plugin->manifest = &copy;
  if (const std::string problem = parse_fields(copy.fields, plugin->params, plugin->field_decls); !problem.empty())
    return refuse(problem);
  for (const auto& f : plugin->field_decls)
    if (!plugin->has_field(f.name)) plugin->fields.push_back(f.name);
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

std::string PluginHost::search_hint() const {
  std::string searched;
  for (const auto& dir : directories_) {
    std::error_code ec;
    searched += (searched.empty() ? "" : ", ") + dir + (fs::is_directory(dir, ec) ? "" : " (missing)");
  }
  return fmt::format("searched {}; add a plugin folder with --plugin-dir DIR or MFGLAB_PLUGIN_PATH=DIR[:DIR...]",
                     searched.empty() ? "no folder" : searched);
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
  if (p == nullptr)
    throw Error(fmt::format("no {} plugin named '{}'; {}", kind_name(expected_kind), name, search_hint()));
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

bool in_bounds(const mfglab_param& d, double v) {
  if (!std::isnan(d.min) && (d.min_exclusive ? !(v > d.min) : !(v >= d.min))) return false;
  if (!std::isnan(d.max) && (d.max_exclusive ? !(v < d.max) : !(v <= d.max))) return false;
  return true;
}

std::string describe_value(const nlohmann::json& v) { return show_value(v); }

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

std::string LoadedPlugin::better_for(const std::string& value_name) const {
  const std::string text = manifest && manifest->better ? manifest->better : "";
  if (text == "lower" || text == "higher") return text;
  size_t start = 0;
  while (start < text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    const std::string item = text.substr(start, comma - start);
    const size_t eq = item.find('=');
    if (eq != std::string::npos && item.substr(0, eq) == value_name) return item.substr(eq + 1);
    start = comma + 1;
  }
  return "";
}

std::string check_better(const char* better) {
  if (better == nullptr) return "";
  const std::string text = better;
  if (text == "lower" || text == "higher") return "";
  bool ok = !text.empty();
  for (size_t start = 0; ok && start <= text.size();) {
    size_t comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    const std::string item = text.substr(start, comma - start);
    const size_t eq = item.find('=');
    const std::string way = eq == std::string::npos ? "" : item.substr(eq + 1);
    ok = eq != 0 && eq != std::string::npos && (way == "lower" || way == "higher");
    start = comma + 1;
  }
  if (ok) return "";
  return fmt::format("manifest field 'better' is \"{}\", expected \"lower\", \"higher\" or \"name=lower,name=higher\"",
                     printable(better));
}

}  // namespace mfglab::engine
