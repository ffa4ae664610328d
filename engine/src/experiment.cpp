#include "experiment.h"

#include <algorithm>
#include <cctype>
#include <climits>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "plugin_host.h"
#include "text.h"

namespace mfglab::engine {

ExperimentError::ExperimentError(std::vector<std::string> l)
    : std::runtime_error(l.empty() ? "invalid experiment" : l.front()), lines(std::move(l)) {}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates) {
  // The edit distance costs |word| x |candidate|; a very long word is no typo of a short name.
  if (word.size() > kMaxSuggestWord) return "";
  std::string best;
  size_t best_d = std::max<size_t>(2, word.size() / 3) + 1;
  for (const auto& c : candidates) {
    if (c.size() > kMaxSuggestWord) continue;
    size_t d = edit_distance(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  return best.empty() ? "" : fmt::format(" (did you mean '{}'?)", best);
}

uint64_t fnv1a64(const std::string& bytes) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

namespace {

std::string show(const nlohmann::json& v) { return show_value(v); }

// A name as messages quote it: at most 64 bytes.
std::string clip(const std::string& s) { return s.size() > 64 ? s.substr(0, 61) + "..." : s; }

// The compact JSON text of a value, object keys sorted: the same value gives the same text.
std::string canonical(const nlohmann::json& v) {
  return v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// The first `digits` hexadecimal digits of the FNV-1a hash of `bytes`.
std::string short_hash(const std::string& bytes, size_t digits) {
  return fmt::format("{:016x}", fnv1a64(bytes)).substr(0, digits);
}

// 1-based line and column (in bytes) of the byte at `index`.
std::pair<size_t, size_t> line_column(const std::string& text, size_t index) {
  size_t line = 1, column = 1;
  for (size_t i = 0; i < index && i < text.size(); ++i) {
    if (text[i] == '\n') ++line, column = 1;
    else ++column;
  }
  return {line, column};
}

// RFC 6901 escaping of one JSON pointer token.
std::string pointer_token(const std::string& key) {
  std::string out;
  for (char ch : key) {
    if (ch == '~') out += "~0";
    else if (ch == '/') out += "~1";
    else out += ch;
  }
  return out;
}

// Collects errors with their JSON paths while reading one expanded configuration.
class Checker {
 public:
  explicit Checker(const PluginHost& host) : host_(host) {}
  std::vector<std::pair<std::string, std::string>> errors;  // path, message

  void error(const std::string& path, const std::string& message) { errors.emplace_back(path, message); }

  // Rejects keys outside `allowed` in object `obj` at `path`.
  void only_keys(const nlohmann::json& obj, const std::string& path, const std::vector<std::string>& allowed) {
    for (const auto& [key, _] : obj.items()) {
      if (std::find(allowed.begin(), allowed.end(), key) == allowed.end())
        error(path + "/" + key, fmt::format("unknown key (expected one of: {}){}", join(allowed),
                                             did_you_mean(key, allowed)));
    }
  }

  bool object_at(const nlohmann::json& v, const std::string& path) {
    if (v.is_object()) return true;
    error(path, "expected an object, got " + show(v));
    return false;
  }

  // Reads obj[key] as an integer/number within bounds, or keeps the default.
  template <class T>
  void number(const nlohmann::json& obj, const std::string& path, const char* key, T& out,
              double lo, double hi, bool lo_exclusive = false) {
    if (!obj.contains(key)) return;
    const auto& v = obj.at(key);
    const std::string p = path + "/" + key;
    const bool want_int = std::is_integral_v<T>;
    const std::string what = want_int ? "an integer" : "a number";
    std::string range = fmt::format("{} {}", lo_exclusive ? ">" : ">=", lo);
    if (std::isfinite(hi)) range += fmt::format(" and <= {}", hi);
    if (!v.is_number() || (want_int && !v.is_number_integer())) {
      error(p, fmt::format("expected {} {}, got {}", what, range, show(v)));
      return;
    }
    double x = v.get<double>();
    if ((lo_exclusive ? !(x > lo) : !(x >= lo)) || !(x <= hi)) {
      error(p, fmt::format("expected {} {}, got {}", what, range, show(v)));
      return;
    }
    out = v.get<T>();
  }

  void choice(const nlohmann::json& obj, const std::string& path, const char* key, std::string& out,
              const std::vector<std::string>& options) {
    if (!obj.contains(key)) return;
    const auto& v = obj.at(key);
    if (!v.is_string() || std::find(options.begin(), options.end(), v.get<std::string>()) == options.end()) {
      error(path + "/" + key, fmt::format("expected one of {}, got {}{}", join(options), show(v),
                                          v.is_string() ? did_you_mean(v.get<std::string>(), options) : ""));
      return;
    }
    out = v.get<std::string>();
  }

  // {"plugin": NAME, "params": {...}} of the expected kind; returns the loaded plugin or null.
  const LoadedPlugin* plugin_use(const nlohmann::json& v, const std::string& path, int32_t kind,
                                 PluginUse& out, const std::vector<std::string>& extra_keys = {}) {
    if (!object_at(v, path)) return nullptr;
    std::vector<std::string> keys = {"plugin", "params"};
    keys.insert(keys.end(), extra_keys.begin(), extra_keys.end());
    only_keys(v, path, keys);
    if (!v.contains("plugin")) {
      error(path, fmt::format("missing key 'plugin' (the name of a {} plugin: {})", kind_name(kind),
                              join(host_.names(kind))));
      return nullptr;
    }
    const auto& name = v.at("plugin");
    if (!name.is_string()) {
      error(path + "/plugin", "expected a plugin name (string), got " + show(name));
      return nullptr;
    }
    out.plugin = name.get<std::string>();
    const LoadedPlugin* p = nullptr;
    try {
      p = host_.find(out.plugin);
    } catch (const std::exception& e) {
      error(path + "/plugin", e.what());
      return nullptr;
    }
    if (p == nullptr) {
      auto same_kind = host_.names(kind);
      error(path + "/plugin", fmt::format("no {} plugin named '{}'{}; available: {} ({})", kind_name(kind),
                                          clip(out.plugin), did_you_mean(out.plugin, host_.names()),
                                          same_kind.empty() ? "none" : join(same_kind), host_.search_hint()));
      return nullptr;
    }
    if (p->kind() != kind) {
      error(path + "/plugin", fmt::format("'{}' is a {} plugin, expected a {} plugin ({})", clip(out.plugin),
                                          kind_name(p->kind()), kind_name(kind), join(host_.names(kind))));
      return nullptr;
    }
    if (v.contains("params")) out.params = v.at("params");
    std::vector<ParamError> perrs;
    resolve_params(*p->manifest, out.params, perrs);
    for (const auto& e : perrs) error(path + "/params" + e.path, e.message);
    return p;
  }

 private:
  const PluginHost& host_;
};


const std::vector<std::string> kTopKeys = {"name", "description", "seeds", "dtype", "dataset", "model",
                                           "hamiltonian", "regularizers", "train", "eval", "sweep", "variants"};
// What a variant may hold: the sections it overrides, and a description of its own.
const std::vector<std::string> kVariantKeys = {"description", "dataset", "model", "hamiltonian", "regularizers",
                                               "train", "eval", "dtype"};

// Validates one configuration (variant and sweep already applied) and fills `run`. With
// `skip_unmet_metrics`, a metric whose needs this configuration cannot meet is left out
// and listed in run.eval.skipped_metrics instead of being an error.
void read_config(const nlohmann::json& cfg, Checker& c, const PluginHost& host, RunSpec& run,
                 bool skip_unmet_metrics = false) {
  c.only_keys(cfg, "", kTopKeys);
  c.choice(cfg, "", "dtype", run.dtype, {"float32", "float64"});

  const LoadedPlugin* model = nullptr;
  if (!cfg.contains("dataset")) c.error("", "missing key 'dataset' (e.g. {\"plugin\": \"toy2d\"})");
  else c.plugin_use(cfg.at("dataset"), "/dataset", MFGLAB_KIND_DATASET, run.dataset);
  if (!cfg.contains("model")) c.error("", "missing key 'model' (e.g. {\"plugin\": \"sgm\"})");
  else model = c.plugin_use(cfg.at("model"), "/model", MFGLAB_KIND_MODEL, run.model);
  if (cfg.contains("hamiltonian") && !cfg.at("hamiltonian").is_null()) {
    PluginUse h;
    if (c.plugin_use(cfg.at("hamiltonian"), "/hamiltonian", MFGLAB_KIND_HAMILTONIAN, h)) run.hamiltonian = h;
  }

  // What a regularizer or metric needs ("hamiltonian", or a model field) must exist. Both
  // sides may depend on parameters ("value(parameterization=potential)", manifest.h).
  auto unmet_needs = [&](const LoadedPlugin* p, const nlohmann::json& params) {
    std::vector<std::string> unmet;
    for (const auto& need : p->fields_for(params)) {
      if (need == "hamiltonian") {
        if (!run.hamiltonian)
          unmet.push_back(fmt::format("{} '{}' needs a Hamiltonian: add \"hamiltonian\": {{\"plugin\": ...}} ({})",
                                      kind_name(p->kind()), p->name(), join(host.names(MFGLAB_KIND_HAMILTONIAN))));
        continue;
      }
      if (model == nullptr || model->has_field(need, run.model.params)) continue;
      // Models built before SDK 1.3 did not declare "collocation"; theirs is found at run time.
      if (need == "collocation" && model->manifest->sdk_minor < 3) continue;
      const auto provided = model->fields_for(run.model.params);
      std::string why = fmt::format("which model '{}' does not provide", model->name());
      for (const auto& d : model->field_decls)
        if (d.name == need && !d.param.empty())
          why = fmt::format("which model '{}' provides only when {} (here {} = {})", model->name(), d.condition(),
                            d.param, show(model->param_value(d.param, run.model.params)));
      std::string how;
      if (need == "collocation")
        how = "; a model provides it by implementing Model::collocation and listing \"collocation\" in its fields";
      unmet.push_back(fmt::format("{} '{}' needs the model's '{}' field, {} (it provides: {}){}", kind_name(p->kind()),
                                  p->name(), need, why, provided.empty() ? "none" : join(provided), how));
    }
    return unmet;
  };
  auto check_needs = [&](const LoadedPlugin* p, const PluginUse& use, const std::string& path) {
    for (const auto& message : unmet_needs(p, use.params)) c.error(path, message);
  };

  if (cfg.contains("regularizers")) {
    const auto& regs = cfg.at("regularizers");
    if (!regs.is_array()) c.error("/regularizers", "expected a list of {\"plugin\", \"weight\", \"params\"}, got " + show(regs));
    else {
      for (size_t i = 0; i < regs.size(); ++i) {
        const std::string path = fmt::format("/regularizers/{}", i);
        PluginUse r;
        const LoadedPlugin* p = c.plugin_use(regs[i], path, MFGLAB_KIND_REGULARIZER, r, {"weight"});
        if (regs[i].is_object()) c.number(regs[i], path, "weight", r.weight, 0.0, INFINITY);
        if (p) check_needs(p, r, path + "/plugin");
        run.regularizers.push_back(r);
      }
    }
  }

  if (cfg.contains("train") && c.object_at(cfg.at("train"), "/train")) {
    const auto& t = cfg.at("train");
    auto& tr = run.train;
    c.only_keys(t, "/train", {"iterations", "batch_size", "optimizer", "schedule", "grad_clip", "log_every",
                              "checkpoint_every", "time_limit", "memory_limit", "data_parallel"});
    c.number(t, "/train", "iterations", tr.iterations, 0, 1e9);
    c.number(t, "/train", "batch_size", tr.batch_size, 1, 1e8);
    c.number(t, "/train", "grad_clip", tr.grad_clip, 0, INFINITY);
    c.number(t, "/train", "log_every", tr.log_every, 1, 1e9);
    c.number(t, "/train", "checkpoint_every", tr.checkpoint_every, 0, 1e9);
    if (t.contains("time_limit")) {
      const auto& v = t.at("time_limit");
      if (!v.is_number() || !(v.get<double>() > 0) || !std::isfinite(v.get<double>()))
        c.error("/train/time_limit", "expected a number of seconds > 0, got " + show(v));
      else tr.time_limit = v.get<double>();
    }
    if (t.contains("memory_limit")) {
      const auto& v = t.at("memory_limit");
      if (auto bytes = memory_size(v)) tr.memory_limit = *bytes;
      else c.error("/train/memory_limit", "expected a number of bytes >= 1 or a size like \"512M\", \"4G\", \"1.5G\" "
                                          "(K, M, G, T: powers of 1024), got " + show(v));
    }
    if (t.contains("data_parallel")) {
      const auto& v = t.at("data_parallel");
      if (!v.is_boolean()) c.error("/train/data_parallel", "expected true or false, got " + show(v));
      else tr.data_parallel = v.get<bool>();
    }
    if (t.contains("optimizer") && c.object_at(t.at("optimizer"), "/train/optimizer")) {
      const auto& o = t.at("optimizer");
      c.only_keys(o, "/train/optimizer", {"type", "lr", "betas", "momentum", "weight_decay"});
      c.choice(o, "/train/optimizer", "type", tr.optimizer, {"adam", "sgd"});
      c.number(o, "/train/optimizer", "lr", tr.lr, 0, INFINITY, true);
      c.number(o, "/train/optimizer", "momentum", tr.momentum, 0, 1);
      c.number(o, "/train/optimizer", "weight_decay", tr.weight_decay, 0, INFINITY);
      if (o.contains("betas")) {
        const auto& b = o.at("betas");
        bool ok = b.is_array() && b.size() == 2 && b[0].is_number() && b[1].is_number() &&
                  b[0].get<double>() >= 0 && b[0].get<double>() < 1 && b[1].get<double>() >= 0 && b[1].get<double>() < 1;
        if (!ok) c.error("/train/optimizer/betas", "expected two numbers in [0, 1), got " + show(b));
        else tr.beta1 = b[0].get<double>(), tr.beta2 = b[1].get<double>();
      }
    }
    if (t.contains("schedule") && c.object_at(t.at("schedule"), "/train/schedule")) {
      const auto& s = t.at("schedule");
      c.only_keys(s, "/train/schedule", {"type", "step_size", "gamma", "min_lr"});
      c.choice(s, "/train/schedule", "type", tr.schedule, {"constant", "step", "exponential", "cosine"});
      c.number(s, "/train/schedule", "step_size", tr.step_size, 1, 1e9);
      c.number(s, "/train/schedule", "gamma", tr.gamma, 0, 1, true);
      c.number(s, "/train/schedule", "min_lr", tr.min_lr, 0, INFINITY);
    }
  }

  if (cfg.contains("eval") && c.object_at(cfg.at("eval"), "/eval")) {
    const auto& e = cfg.at("eval");
    c.only_keys(e, "/eval", {"samples", "every", "metrics", "calibration_seed", "map_points", "map_steps"});
    c.number(e, "/eval", "samples", run.eval.samples, 1, 1e8);
    c.number(e, "/eval", "every", run.eval.every, 0, 1e9);
    c.number(e, "/eval", "map_points", run.eval.map_points, 0, 1e7);
    c.number(e, "/eval", "map_steps", run.eval.map_steps, 1, 1e6);
    if (run.eval.map_points > 0 && model != nullptr && !model->has_field("velocity", run.model.params))
      c.error("/eval/map_points", fmt::format("the learned map needs the model's 'velocity' field, which model '{}' "
                                              "does not provide (it provides: {})",
                                              model->name(), join(model->fields_for(run.model.params))));
    if (e.contains("calibration_seed")) {
      const auto& v = e.at("calibration_seed");
      if (!v.is_number_unsigned()) c.error("/eval/calibration_seed", "expected a non-negative integer, got " + show(v));
      else run.eval.calibration_seed = v.get<uint64_t>();
    }
    if (e.contains("metrics")) {
      const auto& ms = e.at("metrics");
      if (!ms.is_array()) c.error("/eval/metrics", "expected a list of {\"plugin\", \"params\"}, got " + show(ms));
      else {
        std::set<std::string> labels;
        for (size_t i = 0; i < ms.size(); ++i) {
          const std::string path = fmt::format("/eval/metrics/{}", i);
          PluginUse m;
          const LoadedPlugin* p = c.plugin_use(ms[i], path, MFGLAB_KIND_METRIC, m, {"label"});
          if (ms[i].is_object() && ms[i].contains("label")) {
            const auto& l = ms[i].at("label");
            if (!l.is_string() || l.get<std::string>().empty()) c.error(path + "/label", "expected a non-empty string, got " + show(l));
            else m.label = l.get<std::string>();
          }
          if (p && skip_unmet_metrics && model != nullptr) {
            if (auto unmet = unmet_needs(p, m.params); !unmet.empty()) {
              run.eval.skipped_metrics.push_back({m.plugin, m.label, unmet.front(), i});
              continue;
            }
          }
          if (p) {
            check_needs(p, m, path + "/plugin");
            const std::string key = m.label.empty() ? m.plugin : m.label;
            if (!labels.insert(key).second)
              c.error(path, fmt::format("metric '{}' appears twice: give one a distinct \"label\"", key));
          }
          run.eval.metrics.push_back(m);
        }
      }
    }
  }
}

// "model.params.width" -> {"model", "params", "width"}.
std::vector<std::string> dotted_parts(const std::string& dotted) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t dot = dotted.find('.', start);
    parts.push_back(dotted.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return parts;
}

// "model.params.width" -> "/model/params/width"; numeric parts index lists.
std::string dotted_to_pointer(const std::string& dotted) {
  std::string out;
  for (const auto& part : dotted_parts(dotted)) out += "/" + part;
  return out;
}

// Sets the value at a dotted path, creating missing objects on the way; a numeric part
// indexes an existing list element. False when the path does not lead into `cfg`.
bool set_path(nlohmann::json& cfg, const std::vector<std::string>& parts, const nlohmann::json& value) {
  nlohmann::json* cur = &cfg;
  for (const auto& part : parts) {
    if (cur->is_null()) *cur = nlohmann::json::object();
    if (cur->is_object()) {
      cur = &(*cur)[part];
    } else if (cur->is_array()) {
      if (part.empty() || part.size() > 18 || (part.size() > 1 && part[0] == '0') ||
          !std::all_of(part.begin(), part.end(), [](char ch) { return ch >= '0' && ch <= '9'; }))
        return false;
      const size_t index = std::stoull(part);
      if (index >= cur->size()) return false;
      cur = &(*cur)[index];
    } else {
      return false;
    }
  }
  *cur = value;
  return true;
}

// A value as run ids show it: strings without quotes; characters that cannot be in a
// file name (or would read badly in one) become '_'.
std::string format_value(const nlohmann::json& v) {
  std::string s = v.is_string() ? v.get<std::string>() : canonical(v);
  for (char& ch : s)
    if (ch == '/' || ch == ' ' || ch == '"' || static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) ch = '_';
  return s;
}

// A label part whose value holds one of these can be read as several parts.
bool ambiguous_value(const std::string& formatted) {
  return formatted.find_first_of(",=~") != std::string::npos;
}

// "<label>,seed=<s>", or "seed=<s>" without a sweep. One longer than kMaxRunIdBytes keeps
// a prefix of the label and appends "~" and the hash of the whole label.
std::string make_run_id(const std::string& label, bool has_sweep, uint64_t seed) {
  const std::string seed_part = fmt::format("seed={}", seed);
  if (!has_sweep) return seed_part;
  std::string id = label + "," + seed_part;
  if (id.size() <= kMaxRunIdBytes) return id;
  const std::string tail = "~" + short_hash(label, 16) + "," + seed_part;
  size_t keep = kMaxRunIdBytes - tail.size();
  // Do not cut a UTF-8 sequence.
  while (keep > 0 && (static_cast<unsigned char>(label[keep]) & 0xC0) == 0x80) --keep;
  std::string prefix = label.substr(0, keep);
  while (!prefix.empty() && prefix.back() == ',') prefix.pop_back();
  return prefix + tail;
}

// Refuses arrays and objects nested deeper than kMaxJsonDepth before anything recursive
// touches the document, naming the line and column of the bracket that goes too deep.
void check_nesting(const std::string& text, const std::string& file) {
  size_t depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    if (in_string) {
      if (ch == '\\') ++i;
      else if (ch == '"') in_string = false;
    } else if (ch == '"') {
      in_string = true;
    } else if (ch == '[' || ch == '{') {
      if (++depth > kMaxJsonDepth) {
        auto [line, column] = line_column(text, i);
        throw ExperimentError({fmt::format("{}:{}:{}: JSON nested more than {} levels deep", file, line, column,
                                           kMaxJsonDepth)});
      }
    } else if ((ch == ']' || ch == '}') && depth > 0) {
      --depth;
    }
  }
}

// A SAX pass over the text: the first syntax error (with its position) and every key that
// appears twice in one object (with the object's JSON pointer).
class SyntaxChecker : public nlohmann::json::json_sax_t {
 public:
  struct Duplicate {
    std::string pointer, key;
  };
  std::vector<Duplicate> duplicates;
  bool failed = false;
  size_t position = 0;      // bytes read when the error was found
  std::string token;        // the last token read
  int error_id = 0;         // nlohmann's exception id (101: syntax, 406: number out of range, ...)
  std::string message;      // nlohmann's message

  bool null() override { return value(); }
  bool boolean(bool) override { return value(); }
  bool number_integer(number_integer_t) override { return value(); }
  bool number_unsigned(number_unsigned_t) override { return value(); }
  bool number_float(number_float_t, const string_t&) override { return value(); }
  bool string(string_t&) override { return value(); }
  bool binary(binary_t&) override { return value(); }
  bool start_object(std::size_t) override { return open(true); }
  bool key(string_t& k) override {
    auto& frame = stack_.back();
    if (!frame.keys.insert(k).second) duplicates.push_back({pointer(), k});
    frame.key = k;
    return true;
  }
  bool end_object() override { return close(); }
  bool start_array(std::size_t) override { return open(false); }
  bool end_array() override { return close(); }
  bool parse_error(std::size_t pos, const std::string& last_token, const nlohmann::json::exception& ex) override {
    failed = true;
    position = pos;
    token = last_token;
    error_id = ex.id;
    message = ex.what();
    return false;
  }

 private:
  struct Frame {
    bool object = false;
    std::string segment;  // "/key" or "/index" in the parent; empty for the root
    std::string key;      // objects: the key being read
    size_t index = 0;     // arrays: the element being read
    std::unordered_set<std::string> keys;
  };
  std::vector<Frame> stack_;

  std::string pointer() const {
    std::string out;
    for (const auto& f : stack_) out += f.segment;
    return out.empty() ? "/" : out;
  }
  bool value() {
    if (!stack_.empty() && !stack_.back().object) ++stack_.back().index;
    return true;
  }
  bool open(bool object) {
    Frame f;
    f.object = object;
    if (!stack_.empty())
      f.segment = "/" + (stack_.back().object ? pointer_token(stack_.back().key) : std::to_string(stack_.back().index));
    stack_.push_back(std::move(f));
    return true;
  }
  bool close() {
    stack_.pop_back();
    return value();
  }
};

// Throws ExperimentError for text that is not JSON, holds a number out of range, nests
// too deep, or repeats a key within one object.
void check_syntax(const std::string& text, const std::string& file) {
  check_nesting(text, file);
  SyntaxChecker checker;
  nlohmann::json::sax_parse(text, &checker);
  if (checker.failed) {
    if (checker.error_id == 406) {
      // Number out of range: point at its first character.
      const size_t end = std::min(checker.position, text.size());
      const size_t start = end >= checker.token.size() ? end - checker.token.size() : 0;
      auto [line, column] = line_column(text, start);
      throw ExperimentError({fmt::format("{}:{}:{}: number out of range", file, line, column)});
    }
    // Line and column of the offending byte (1-based).
    auto [line, column] = line_column(text, checker.position > 0 ? checker.position - 1 : 0);
    const std::string& what = checker.message;
    auto colon = what.find(": ", what.find("parse error"));
    std::string reason = colon == std::string::npos ? what : what.substr(colon + 2);
    throw ExperimentError({fmt::format("{}:{}:{}: JSON syntax error: {}", file, line, column, reason)});
  }
  if (!checker.duplicates.empty()) {
    std::vector<std::string> lines;
    std::unordered_set<std::string> seen;
    for (const auto& d : checker.duplicates) {
      std::string line = fmt::format("{}: {}: key '{}' appears twice", file, d.pointer, clip(d.key));
      if (seen.insert(line).second) lines.push_back(std::move(line));
    }
    throw ExperimentError(lines);
  }
}

// The resolved train section: every setting, defaults filled in, spelled as in the file.
nlohmann::json train_json(const TrainConfig& t) {
  nlohmann::json optimizer = {{"type", t.optimizer}, {"lr", t.lr}, {"betas", {t.beta1, t.beta2}},
                              {"momentum", t.momentum}, {"weight_decay", t.weight_decay}};
  nlohmann::json schedule = {{"type", t.schedule}};
  if (t.schedule == "step") schedule["step_size"] = t.step_size, schedule["gamma"] = t.gamma;
  else if (t.schedule == "exponential") schedule["gamma"] = t.gamma;
  else if (t.schedule == "cosine") schedule["min_lr"] = t.min_lr;
  nlohmann::json out = {{"iterations", t.iterations}, {"batch_size", t.batch_size},
                        {"optimizer", optimizer}, {"schedule", schedule},
                        {"grad_clip", t.grad_clip}, {"log_every", t.log_every},
                        {"checkpoint_every", t.checkpoint_every}, {"data_parallel", t.data_parallel}};
  if (t.time_limit > 0) out["time_limit"] = t.time_limit;
  if (t.memory_limit > 0) out["memory_limit"] = t.memory_limit;
  return out;
}

// The experiment with one variant's sections in place of its own (see experiment.h):
// train and eval merged key by key (RFC 7386), the others replaced; null removes a section.
nlohmann::json apply_variant(nlohmann::json cfg, const nlohmann::json& patch) {
  for (const auto& [key, value] : patch.items()) {
    if (key == "description") continue;
    if ((key == "train" || key == "eval") && value.is_object()) {
      if (!cfg.contains(key) || !cfg[key].is_object()) cfg[key] = nlohmann::json::object();
      cfg[key].merge_patch(value);
    } else if (value.is_null()) {
      cfg.erase(key);
    } else {
      cfg[key] = value;
    }
  }
  return cfg;
}

// True when `path` (a JSON pointer as the checker writes it, keys unescaped) leads to a
// value in `j`.
bool has_path(const nlohmann::json& j, const std::string& path) {
  const nlohmann::json* cur = &j;
  size_t start = 1;
  while (start <= path.size()) {
    size_t slash = path.find('/', start);
    if (slash == std::string::npos) slash = path.size();
    const std::string token = path.substr(start, slash - start);
    if (cur->is_object()) {
      auto it = cur->find(token);
      if (it == cur->end()) return false;
      cur = &*it;
    } else if (cur->is_array()) {
      if (token.empty() || token.size() > 18 ||
          !std::all_of(token.begin(), token.end(), [](char ch) { return ch >= '0' && ch <= '9'; }))
        return false;
      const size_t index = std::stoull(token);
      if (index >= cur->size()) return false;
      cur = &(*cur)[index];
    } else {
      return false;
    }
    start = slash + 1;
  }
  return true;
}

// Whether an error at `path` of a variant's configuration is about something the variant
// wrote: a section it replaces, a key it sets in train or eval, or (at the root) a section
// that neither it nor the experiment gives.
bool variant_owns(const std::string& path, const nlohmann::json& patch) {
  if (path.empty() || path == "/") return true;
  const size_t slash = path.find('/', 1);
  const std::string top = path.substr(1, slash == std::string::npos ? std::string::npos : slash - 1);
  if (!patch.contains(top)) return false;
  if ((top == "train" || top == "eval") && patch.at(top).is_object()) return has_path(patch, path);
  return true;
}

}  // namespace

Experiment parse_experiment(const std::string& text, const std::string& file, const PluginHost& host) {
  check_syntax(text, file);
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {  // check_syntax has seen the same text
    throw ExperimentError({fmt::format("{}: JSON error: {}", file, e.what())});
  }
  auto fail = [&](const std::string& path, const std::string& msg) {
    throw ExperimentError({fmt::format("{}: {}: {}", file, path.empty() ? "/" : path, msg)});
  };
  if (!root.is_object()) fail("", "expected a JSON object describing an experiment, got " + show(root));

  Experiment ex;
  ex.file = file;
  std::vector<std::string> lines;
  std::unordered_set<std::string> seen_lines;
  auto add = [&](const std::string& path, const std::string& msg) {
    std::string line = fmt::format("{}: {}: {}", file, path.empty() ? "/" : path, msg);
    if (seen_lines.insert(line).second) lines.push_back(std::move(line));
  };

  // A name that is a usable part of a folder name: the experiment's, and each variant's.
  auto name_problem = [](const nlohmann::json& n) -> std::string {
    auto name_char = [](char ch) {
      return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_' ||
             ch == '-' || ch == '.';
    };
    if (n.is_string() && n.get_ref<const std::string&>().size() > kMaxNameBytes)
      return fmt::format("expected a name of at most {} bytes, got {} bytes", kMaxNameBytes,
                         n.get_ref<const std::string&>().size());
    if (!n.is_string() || n.get_ref<const std::string&>().empty() || n.get_ref<const std::string&>().front() == '.' ||
        !std::all_of(n.get_ref<const std::string&>().begin(), n.get_ref<const std::string&>().end(), name_char))
      return "expected a name of letters, digits, '_', '-', '.' (not starting with '.'), got " + show(n);
    return "";
  };

  // name and seeds are read once; the rest per expanded configuration.
  if (!root.contains("name")) {
    add("", "missing key 'name' (a short identifier, used as the results folder)");
  } else {
    const auto& n = root.at("name");
    if (auto problem = name_problem(n); !problem.empty()) add("/name", problem);
    else ex.name = n.get<std::string>();
  }
  if (root.contains("description") && !root.at("description").is_string())
    add("/description", "expected a string, got " + show(root.at("description")));

  std::vector<uint64_t> seeds = {0};
  if (root.contains("seeds")) {
    const auto& s = root.at("seeds");
    std::unordered_set<uint64_t> seen;
    seeds.clear();
    if (!s.is_array() || s.empty()) add("/seeds", "expected a non-empty list of non-negative integers, got " + show(s));
    else
      for (size_t i = 0; i < s.size(); ++i) {
        if (!s[i].is_number_unsigned()) add(fmt::format("/seeds/{}", i), "expected a non-negative integer, got " + show(s[i]));
        else if (!seen.insert(s[i].get<uint64_t>()).second) add(fmt::format("/seeds/{}", i), fmt::format("seed {} appears twice", s[i].get<uint64_t>()));
        else seeds.push_back(s[i].get<uint64_t>());
      }
  }

  // Variants: {"NAME": {section: ...}}, in file order; each one an arm of the study.
  struct Variant {
    std::string name;
    std::string path;     // "/variants/NAME"
    nlohmann::json patch;  // the sections it overrides
  };
  std::vector<Variant> variants;
  const bool has_variants = root.contains("variants");
  if (has_variants) {
    const auto& vs = root.at("variants");
    if (!vs.is_object()) {
      add("/variants", "expected an object mapping variant names to the sections they replace "
                       "({\"NAME\": {\"model\": {...}}, ...}), got " + show(vs));
    } else if (vs.empty()) {
      add("/variants", "expected at least one variant ({\"NAME\": {\"model\": {...}}, ...}), got {}");
    } else {
      const auto ordered = nlohmann::ordered_json::parse(text).at("variants");
      for (const auto& item : ordered.items()) {
        const std::string& name = item.key();
        const auto& v = vs.at(name);
        const std::string path = "/variants/" + pointer_token(name);
        bool ok = true;
        if (auto problem = name_problem(nlohmann::json(name)); !problem.empty()) {
          add(path, "variant name: " + problem);
          ok = false;
        }
        if (!v.is_object()) {
          add(path, fmt::format("expected an object of the sections this variant replaces ({}), got {}",
                                join({kVariantKeys.begin() + 1, kVariantKeys.end()}), show(v)));
          continue;
        }
        size_t overrides = 0;
        for (const auto& [key, value] : v.items()) {
          if (std::find(kVariantKeys.begin(), kVariantKeys.end(), key) == kVariantKeys.end()) {
            add(path + "/" + pointer_token(key),
                fmt::format("unknown key (a variant holds: {}){}", join(kVariantKeys), did_you_mean(key, kVariantKeys)));
            ok = false;
          } else if (key == "description") {
            if (!value.is_string()) {
              add(path + "/description", "expected a string, got " + show(value));
              ok = false;
            }
          } else {
            ++overrides;
          }
        }
        if (overrides == 0 && ok) {
          add(path, fmt::format("the variant overrides nothing: give it at least one of {}",
                                join({kVariantKeys.begin() + 1, kVariantKeys.end()})));
          ok = false;
        }
        if (ok) variants.push_back({name, path, v});
      }
    }
  }

  // Sweep: {"dotted.path": [values...]}, expanded as a Cartesian product in file order.
  struct SweepKey {
    std::string key;
    nlohmann::json values;
    std::vector<std::string> parts;  // the dotted path split
    std::string pointer;             // "/model/params/width"
  };
  std::vector<SweepKey> sweep;
  constexpr size_t kMaxSweepPathParts = 64;
  if (root.contains("sweep")) {
    const auto& sw = root.at("sweep");
    if (!sw.is_object()) add("/sweep", "expected an object mapping \"section.key\" paths to lists of values, got " + show(sw));
    else {
      // nlohmann::json sorts object keys; an ordered parse gives the order of the file.
      const auto ordered = nlohmann::ordered_json::parse(text).at("sweep");
      for (const auto& item : ordered.items()) {
        const std::string& key = item.key();
        const auto& values = sw.at(key);
        const std::string top = key.substr(0, key.find('.'));
        auto parts = dotted_parts(key);
        if (top == "name" || top == "seeds" || top == "sweep" || top == "variants" ||
            std::find(kTopKeys.begin(), kTopKeys.end(), top) == kTopKeys.end()) {
          add("/sweep/" + key, fmt::format("cannot sweep '{}': a sweep path starts with one of dataset, model, "
                                           "hamiltonian, regularizers, train, eval, dtype", clip(key)));
        } else if (parts.size() > kMaxSweepPathParts) {
          add("/sweep/" + key, fmt::format("expected a path of at most {} parts, got {}", kMaxSweepPathParts, parts.size()));
        } else if (!values.is_array() || values.empty()) {
          add("/sweep/" + key, "expected a non-empty list of values, got " + show(values));
        } else {
          // Two equal values would be two identical runs.
          std::map<nlohmann::json, size_t> first;
          bool unique = true;
          for (size_t i = 0; i < values.size(); ++i) {
            auto [it, inserted] = first.emplace(values[i], i);
            if (!inserted) {
              add(fmt::format("/sweep/{}/{}", key, i),
                  fmt::format("value {} appears twice (first at index {})", show(values[i]), it->second));
              unique = false;
            }
          }
          if (unique) sweep.push_back({key, values, std::move(parts), dotted_to_pointer(key)});
        }
      }
    }
  }

  // The number of runs, without wrapping around.
  {
    uint64_t total = seeds.size();
    bool overflow = false;
    if (has_variants && !variants.empty())
      overflow = __builtin_mul_overflow(total, static_cast<uint64_t>(variants.size()), &total);
    for (const auto& k : sweep)
      if (__builtin_mul_overflow(total, static_cast<uint64_t>(k.values.size()), &total)) overflow = true;
    if (overflow || total > kMaxRuns)
      add(sweep.empty() ? "/seeds" : "/sweep",
          fmt::format("expected at most {} runs (the sizes of the sweep lists multiplied together, times the "
                      "number of seeds{}), got {}",
                      kMaxRuns, has_variants ? " and of variants" : "",
                      overflow ? "more than 18446744073709551615" : std::to_string(total)));
  }
  if (!lines.empty()) throw ExperimentError(lines);

  // Short labels: the last path component, or the whole path when two would clash.
  std::vector<std::string> short_names;
  for (const auto& k : sweep) short_names.push_back(k.key.substr(k.key.rfind('.') + 1));
  {
    std::unordered_map<std::string, size_t> count;
    for (const auto& n : short_names) ++count[n];
    for (size_t i = 0; i < sweep.size(); ++i)
      if (count[short_names[i]] > 1) short_names[i] = sweep[i].key;
    for (auto& n : short_names) n = format_value(n);
  }

  // Label parts "name=value"; values of one key that print alike get "~" and a hash of
  // their JSON.
  struct Part {
    std::string text;    // "name=value"
    std::string hashed;  // "name=value~hash"
    bool ambiguous = false;
  };
  std::vector<std::vector<Part>> parts(sweep.size());
  for (size_t k = 0; k < sweep.size(); ++k) {
    const auto& values = sweep[k].values;
    std::vector<std::string> shown(values.size());
    std::unordered_map<std::string, size_t> count;
    for (size_t i = 0; i < values.size(); ++i) ++count[shown[i] = format_value(values[i])];
    for (size_t i = 0; i < values.size(); ++i) {
      Part& p = parts[k].emplace_back();
      p.hashed = short_names[k] + "=" + shown[i] + "~" + short_hash(canonical(values[i]), 8);
      p.text = count[shown[i]] > 1 ? p.hashed : short_names[k] + "=" + shown[i];
      p.ambiguous = ambiguous_value(shown[i]);
    }
  }

  size_t combos = 1;
  for (const auto& k : sweep) combos *= k.values.size();
  // Sweep indices of one combination: the last key varies fastest.
  auto indices_of = [&](size_t combo) {
    std::vector<size_t> index(sweep.size());
    for (size_t k = sweep.size(); k-- > 0;) {
      index[k] = combo % sweep[k].values.size();
      combo /= sweep[k].values.size();
    }
    return index;
  };
  auto label_of = [&](const std::vector<size_t>& index, bool hash_ambiguous) {
    std::string label;
    for (size_t k = 0; k < sweep.size(); ++k) {
      const Part& p = parts[k][index[k]];
      label += (k == 0 ? "" : ",") + (hash_ambiguous && p.ambiguous ? p.hashed : p.text);
    }
    return label.empty() ? std::string("default") : label;
  };
  std::vector<std::string> labels(combos);
  {
    std::unordered_map<std::string, size_t> count;
    for (size_t combo = 0; combo < combos; ++combo) ++count[labels[combo] = label_of(indices_of(combo), false)];
    // A value holding ',' or '=' can make two configurations read alike: those get hashes too.
    for (size_t combo = 0; combo < combos; ++combo)
      if (count[labels[combo]] > 1) labels[combo] = label_of(indices_of(combo), true);
  }
  auto describe = [&](size_t combo) {
    std::vector<std::string> where;
    auto index = indices_of(combo);
    for (size_t k = 0; k < sweep.size(); ++k) where.push_back(fmt::format("/sweep/{}/{}", sweep[k].key, index[k]));
    return "(" + join(where) + ")";
  };

  nlohmann::json base = root;
  base.erase("sweep");
  base.erase("seeds");
  base.erase("variants");

  // Errors of the expanded configurations, in order of first appearance. An error at a path
  // outside the variants (the experiment's own sections, the sweep) that only some variants
  // have names them.
  std::vector<std::pair<std::string, std::vector<std::string>>> config_errors;  // line, variants
  std::unordered_map<std::string, size_t> config_error_index;
  auto add_config_error = [&](const std::string& path, const std::string& msg, const std::string& variant) {
    std::string line = fmt::format("{}: {}: {}", file, path.empty() ? "/" : path, msg);
    auto [it, inserted] = config_error_index.emplace(line, config_errors.size());
    if (inserted) config_errors.push_back({std::move(line), {}});
    auto& names = config_errors[it->second].second;
    // Variants are expanded one after the other: a repeat of this variant's is the last name.
    if (!variant.empty() && (names.empty() || names.back() != variant)) names.push_back(variant);
  };

  // A file without variants has one unnamed arm.
  std::vector<const Variant*> arms;
  if (has_variants)
    for (const auto& v : variants) arms.push_back(&v);
  else
    arms.push_back(nullptr);

  // The experiment's own metrics, which variants that do not set eval.metrics inherit: each
  // must be computable by at least one of them.
  size_t base_metrics = 0;
  if (base.contains("eval") && base["eval"].is_object() && base["eval"].contains("metrics") &&
      base["eval"]["metrics"].is_array())
    base_metrics = base["eval"]["metrics"].size();
  std::vector<bool> metric_computed(base_metrics, false);
  std::vector<std::string> metric_skip_reason(base_metrics);
  bool metrics_inherited = false;

  std::unordered_map<std::string, std::string> variant_configs;  // canonical text -> variant name
  std::unordered_map<std::string, std::pair<size_t, size_t>> run_ids;  // run id -> (arm, combination)
  bool failed = false;
  ex.runs.reserve(arms.size() * combos * seeds.size());
  for (size_t a = 0; a < arms.size(); ++a) {
    const Variant* variant = arms[a];
    nlohmann::json arm_cfg = variant ? apply_variant(base, variant->patch) : base;
    bool inherits_metrics = false;
    if (variant) {
      // Two variants with the same configuration would be the same runs twice.
      nlohmann::json comparable = arm_cfg;
      comparable.erase("description");
      auto [same, first] = variant_configs.emplace(canonical(comparable), variant->name);
      if (!first) {
        add_config_error(variant->path, fmt::format("the same configuration as variant '{}'", clip(same->second)), "");
        failed = true;
        continue;
      }
      const auto& patch = variant->patch;
      inherits_metrics = !(patch.contains("eval") && patch.at("eval").is_object() && patch.at("eval").contains("metrics"));
      if (patch.contains("eval") && !patch.at("eval").is_object()) inherits_metrics = false;
      for (const auto& k : sweep)  // a swept metric list is not the experiment's own
        if (k.key == "eval" || k.key.rfind("eval.metrics", 0) == 0) inherits_metrics = false;
    }
    const std::string variant_name = variant ? variant->name : "";
    for (size_t combo = 0; combo < combos; ++combo) {
      nlohmann::json cfg = arm_cfg;
      std::map<std::string, std::string> swept_paths;  // pointer -> /sweep/key/index
      const auto index = indices_of(combo);
      for (size_t k = sweep.size(); k-- > 0;) {
        const auto& sk = sweep[k];
        if (!set_path(cfg, sk.parts, sk.values[index[k]])) {
          add_config_error(fmt::format("/sweep/{}", sk.key),
                           fmt::format("path '{}' does not lead into the experiment", clip(sk.key)), variant_name);
          failed = true;
          continue;
        }
        swept_paths[sk.pointer] = fmt::format("/sweep/{}/{}", sk.key, index[k]);
      }
      Checker checker(host);
      RunSpec spec;
      read_config(cfg, checker, host, spec, inherits_metrics);
      for (const auto& [path, msg] : checker.errors) {
        // An error in a swept value points at the sweep entry that produced it; one in a
        // section the variant gave points into the variant.
        std::string where = path;
        bool swept = false;
        for (const auto& [ptr, sweep_path] : swept_paths)
          if (path == ptr || path.rfind(ptr + "/", 0) == 0) where = sweep_path + path.substr(ptr.size()), swept = true;
        if (!swept && variant && variant_owns(path, variant->patch))
          add_config_error(variant->path + path, msg, "");
        else
          add_config_error(where, msg, variant_name);
      }
      if (!checker.errors.empty()) failed = true;
      if (failed || !lines.empty()) continue;
      if (inherits_metrics) {
        metrics_inherited = true;
        std::vector<bool> skipped(base_metrics, false);
        for (const auto& sm : spec.eval.skipped_metrics)
          if (sm.index < base_metrics) {
            skipped[sm.index] = true;
            if (metric_skip_reason[sm.index].empty()) metric_skip_reason[sm.index] = sm.reason;
          }
        for (size_t i = 0; i < base_metrics; ++i)
          if (!skipped[i]) metric_computed[i] = true;
      }
      spec.experiment = ex.name;
      spec.variant = variant_name;
      spec.label = variant ? "variant=" + variant_name + (sweep.empty() ? "" : "," + labels[combo]) : labels[combo];

      // The resolved configuration: what the file says, plus every engine setting.
      cfg["dtype"] = spec.dtype;
      cfg["train"] = train_json(spec.train);
      nlohmann::json metrics = nlohmann::json::array();
      if (cfg.contains("eval") && cfg["eval"].contains("metrics")) {
        const auto& listed = cfg["eval"]["metrics"];
        for (size_t i = 0; i < listed.size(); ++i) {
          bool skipped = false;
          for (const auto& sm : spec.eval.skipped_metrics) skipped = skipped || sm.index == i;
          if (!skipped) metrics.push_back(listed[i]);
        }
      }
      // Every run of the experiment calibrates its metrics on the same held-out data.
      if (!spec.eval.calibration_seed) spec.eval.calibration_seed = seeds.empty() ? 0 : seeds.front();
      cfg["eval"] = {{"samples", spec.eval.samples},
                     {"every", spec.eval.every},
                     {"metrics", metrics},
                     {"calibration_seed", *spec.eval.calibration_seed}};
      // Recorded only when on, so that the configurations of runs without it stay as they were.
      if (spec.eval.map_points > 0) {
        cfg["eval"]["map_points"] = spec.eval.map_points;
        cfg["eval"]["map_steps"] = spec.eval.map_steps;
      }
      if (!spec.eval.skipped_metrics.empty()) {
        nlohmann::json skipped = nlohmann::json::array();
        for (const auto& sm : spec.eval.skipped_metrics) {
          nlohmann::json entry = {{"plugin", sm.plugin}, {"reason", sm.reason}};
          if (!sm.label.empty()) entry["label"] = sm.label;
          skipped.push_back(entry);
        }
        cfg["eval"]["skipped_metrics"] = skipped;
      }
      if (cfg.contains("regularizers"))
        for (size_t i = 0; i < cfg["regularizers"].size(); ++i) cfg["regularizers"][i]["weight"] = spec.regularizers[i].weight;
      if (variant) cfg["variant"] = variant_name;

      for (uint64_t seed : seeds) {
        RunSpec run = spec;
        run.seed = seed;
        run.run_id = make_run_id(spec.label, !sweep.empty() || has_variants, seed);
        if (auto [it, inserted] = run_ids.emplace(run.run_id, std::make_pair(a, combo)); !inserted) {
          add_config_error("/sweep", fmt::format("two configurations would share the run id '{}': {} and {}", run.run_id,
                                                 describe(it->second.second), describe(combo)), "");
          failed = true;
          break;
        }
        run.config = cfg;
        run.config["seed"] = seed;
        run.config["run_id"] = run.run_id;
        run.config["label"] = run.label;
        ex.runs.push_back(std::move(run));
      }
    }
  }
  // A metric of the experiment that no variant can compute is a mistake, not a skip.
  if (!failed && lines.empty() && metrics_inherited)
    for (size_t i = 0; i < base_metrics; ++i)
      if (!metric_computed[i])
        add_config_error(fmt::format("/eval/metrics/{}/plugin", i),
                         metric_skip_reason[i] + "; no variant can compute it", "");
  for (const auto& [line, names] : config_errors) {
    std::string text = line;
    if (!names.empty() && names.size() < arms.size()) {
      std::vector<std::string> quoted;
      for (size_t i = 0; i < names.size() && i < 5; ++i) quoted.push_back("'" + clip(names[i]) + "'");
      if (names.size() > 5) quoted.push_back(fmt::format("and {} more", names.size() - 5));
      text += fmt::format(" (variant{} {})", names.size() > 1 ? "s" : "", join(quoted));
    }
    if (seen_lines.insert(text).second) lines.push_back(std::move(text));
  }
  if (!lines.empty()) throw ExperimentError(lines);
  return ex;
}

Experiment load_experiment(const std::string& file, const PluginHost& host) {
  const auto text = read_file(file);
  if (!text) throw ExperimentError({fmt::format("{}: cannot open the experiment file", file)});
  return parse_experiment(*text, file, host);
}

// A memory size: an integer number of bytes >= 1, or a string "<number><K|M|G|T>" in
// binary multiples ("512M", "1.5G"); nullopt when it is neither or does not fit.
std::optional<int64_t> memory_size(const nlohmann::json& v) {
  if (v.is_number_unsigned()) {
    const uint64_t n = v.get<uint64_t>();
    if (n < 1 || n > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<int64_t>(n);
  }
  if (v.is_number_integer()) return std::nullopt;  // negative
  if (!v.is_string()) return std::nullopt;
  const std::string s = v.get<std::string>();
  size_t i = 0, digits = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i, ++digits;
  if (digits == 0 || digits > 15) return std::nullopt;
  if (i < s.size() && s[i] == '.') {
    size_t frac = 0;
    ++i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i, ++frac;
    if (frac == 0 || frac > 15) return std::nullopt;
  }
  if (i + 1 != s.size()) return std::nullopt;
  const std::string units = "KMGT";
  const size_t unit = units.find(static_cast<char>(std::toupper(static_cast<unsigned char>(s[i]))));
  if (unit == std::string::npos) return std::nullopt;
  // The decimal number, read without the locale.
  double number = 0, scale = 1;
  bool fraction = false;
  for (size_t j = 0; j < i; ++j) {
    if (s[j] == '.') fraction = true;
    else if (!fraction) number = number * 10 + (s[j] - '0');
    else scale /= 10, number += (s[j] - '0') * scale;
  }
  const double bytes = number * std::ldexp(1.0, 10 * static_cast<int>(unit + 1));
  if (!(bytes >= 1) || !(bytes < 9.2e18)) return std::nullopt;
  return static_cast<int64_t>(std::llround(bytes));
}

}  // namespace mfglab::engine
