#include "experiment.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "plugin_host.h"

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
  std::string best;
  size_t best_d = std::max<size_t>(2, word.size() / 3) + 1;
  for (const auto& c : candidates) {
    size_t d = edit_distance(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  return best.empty() ? "" : fmt::format(" (did you mean '{}'?)", best);
}

namespace {

std::string show(const nlohmann::json& v) {
  std::string s = v.dump();
  return s.size() > 40 ? s.substr(0, 37) + "..." : s;
}

std::string join(const std::vector<std::string>& v, const std::string& sep = ", ") {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : sep) + s;
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
      error(path + "/plugin", fmt::format("no {} plugin named '{}'{}; available: {}", kind_name(kind),
                                          out.plugin, did_you_mean(out.plugin, host_.names()),
                                          same_kind.empty() ? "none" : join(same_kind)));
      return nullptr;
    }
    if (p->kind() != kind) {
      error(path + "/plugin", fmt::format("'{}' is a {} plugin, expected a {} plugin ({})", out.plugin,
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
                                           "hamiltonian", "regularizers", "train", "eval", "sweep"};

// Validates one configuration (sweep already applied) and fills `run`.
void read_config(const nlohmann::json& cfg, Checker& c, const PluginHost& host, RunSpec& run) {
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

  // What a regularizer or metric needs ("hamiltonian", or a model field) must exist.
  auto check_needs = [&](const LoadedPlugin* p, const std::string& path) {
    for (const auto& need : p->fields) {
      if (need == "hamiltonian") {
        if (!run.hamiltonian)
          c.error(path, fmt::format("{} '{}' needs a Hamiltonian: add \"hamiltonian\": {{\"plugin\": ...}} ({})",
                                    kind_name(p->kind()), p->name(), join(host.names(MFGLAB_KIND_HAMILTONIAN))));
      } else if (model != nullptr && !model->has_field(need)) {
        c.error(path, fmt::format("{} '{}' needs the model's '{}' field, which model '{}' does not provide "
                                  "(it provides: {})",
                                  kind_name(p->kind()), p->name(), need, model->name(),
                                  model->fields.empty() ? "none" : join(model->fields)));
      }
    }
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
        if (p) check_needs(p, path + "/plugin");
        run.regularizers.push_back(r);
      }
    }
  }

  if (cfg.contains("train") && c.object_at(cfg.at("train"), "/train")) {
    const auto& t = cfg.at("train");
    auto& tr = run.train;
    c.only_keys(t, "/train", {"iterations", "batch_size", "optimizer", "schedule", "grad_clip", "log_every", "checkpoint_every"});
    c.number(t, "/train", "iterations", tr.iterations, 0, 1e9);
    c.number(t, "/train", "batch_size", tr.batch_size, 1, 1e8);
    c.number(t, "/train", "grad_clip", tr.grad_clip, 0, INFINITY);
    c.number(t, "/train", "log_every", tr.log_every, 1, 1e9);
    c.number(t, "/train", "checkpoint_every", tr.checkpoint_every, 0, 1e9);
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
    c.only_keys(e, "/eval", {"samples", "every", "metrics"});
    c.number(e, "/eval", "samples", run.eval.samples, 1, 1e8);
    c.number(e, "/eval", "every", run.eval.every, 0, 1e9);
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
          if (p) {
            check_needs(p, path + "/plugin");
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

// "model.params.width" -> "/model/params/width"; numeric parts index lists.
std::string dotted_to_pointer(const std::string& dotted) {
  std::string out;
  std::istringstream in(dotted);
  std::string part;
  while (std::getline(in, part, '.')) out += "/" + part;
  return out;
}

std::string format_value(const nlohmann::json& v) {
  std::string s = v.is_string() ? v.get<std::string>() : v.dump();
  for (char& ch : s)
    if (ch == '/' || ch == ' ' || ch == '"') ch = '_';
  return s;
}

}  // namespace

Experiment parse_experiment(const std::string& text, const std::string& file, const PluginHost& host) {
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    // Line and column of the offending byte (1-based).
    size_t line = 1, column = 1;
    for (size_t i = 0; i + 1 < e.byte && i < text.size(); ++i) {
      if (text[i] == '\n') ++line, column = 1;
      else ++column;
    }
    std::string what = e.what();
    auto colon = what.find(": ", what.find("parse error"));
    std::string reason = colon == std::string::npos ? what : what.substr(colon + 2);
    throw ExperimentError({fmt::format("{}:{}:{}: JSON syntax error: {}", file, line, column, reason)});
  }
  auto fail = [&](const std::string& path, const std::string& msg) {
    throw ExperimentError({fmt::format("{}: {}: {}", file, path.empty() ? "/" : path, msg)});
  };
  if (!root.is_object()) fail("", "expected a JSON object describing an experiment, got " + show(root));

  Experiment ex;
  ex.file = file;
  std::vector<std::string> lines;
  auto add = [&](const std::string& path, const std::string& msg) {
    std::string line = fmt::format("{}: {}: {}", file, path.empty() ? "/" : path, msg);
    if (std::find(lines.begin(), lines.end(), line) == lines.end()) lines.push_back(line);
  };

  // name and seeds are read once; the rest per expanded configuration.
  if (!root.contains("name")) add("", "missing key 'name' (a short identifier, used as the results folder)");
  else if (!root.at("name").is_string() || !std::regex_match(root.at("name").get<std::string>(), std::regex("[A-Za-z0-9_.-]+")) ||
           root.at("name").get<std::string>().front() == '.')
    add("/name", "expected a name of letters, digits, '_', '-', '.' (not starting with '.'), got " + show(root.at("name")));
  else ex.name = root.at("name").get<std::string>();
  if (root.contains("description") && !root.at("description").is_string())
    add("/description", "expected a string, got " + show(root.at("description")));

  std::vector<uint64_t> seeds = {0};
  if (root.contains("seeds")) {
    const auto& s = root.at("seeds");
    std::set<uint64_t> seen;
    seeds.clear();
    if (!s.is_array() || s.empty()) add("/seeds", "expected a non-empty list of non-negative integers, got " + show(s));
    else
      for (size_t i = 0; i < s.size(); ++i) {
        if (!s[i].is_number_unsigned()) add(fmt::format("/seeds/{}", i), "expected a non-negative integer, got " + show(s[i]));
        else if (!seen.insert(s[i].get<uint64_t>()).second) add(fmt::format("/seeds/{}", i), fmt::format("seed {} appears twice", s[i].get<uint64_t>()));
        else seeds.push_back(s[i].get<uint64_t>());
      }
  }

  // Sweep: {"dotted.path": [values...]}, expanded as a Cartesian product in file order.
  std::vector<std::pair<std::string, nlohmann::json>> sweep;
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
        if (top == "name" || top == "seeds" || top == "sweep" ||
            std::find(kTopKeys.begin(), kTopKeys.end(), top) == kTopKeys.end())
          add("/sweep/" + key, fmt::format("cannot sweep '{}': a sweep path starts with one of dataset, model, "
                                           "hamiltonian, regularizers, train, eval, dtype", key));
        else if (!values.is_array() || values.empty())
          add("/sweep/" + key, "expected a non-empty list of values, got " + show(values));
        else
          sweep.emplace_back(key, values);
      }
    }
  }
  if (!lines.empty()) throw ExperimentError(lines);

  // Short labels: the last path component, or the whole path when two would clash.
  std::vector<std::string> short_names;
  for (const auto& [key, _] : sweep) short_names.push_back(key.substr(key.rfind('.') + 1));
  for (size_t i = 0; i < sweep.size(); ++i)
    if (std::count(short_names.begin(), short_names.end(), short_names[i]) > 1) short_names[i] = sweep[i].first;

  nlohmann::json base = root;
  base.erase("sweep");
  size_t combos = 1;
  for (const auto& [_, values] : sweep) combos *= values.size();
  for (size_t combo = 0; combo < combos; ++combo) {
    nlohmann::json cfg = base;
    std::vector<std::string> label_parts;
    std::map<std::string, std::string> swept_paths;  // pointer -> /sweep/key/index
    size_t rest = combo;
    for (size_t k = sweep.size(); k-- > 0;) {  // last key varies fastest
      const auto& [key, values] = sweep[k];
      size_t index = rest % values.size();
      rest /= values.size();
      const std::string ptr = dotted_to_pointer(key);
      try {
        cfg[nlohmann::json::json_pointer(ptr)] = values[index];
      } catch (const std::exception&) {
        add(fmt::format("/sweep/{}", key), fmt::format("path '{}' does not lead into the experiment", key));
        continue;
      }
      swept_paths[ptr] = fmt::format("/sweep/{}/{}", key, index);
      label_parts.insert(label_parts.begin(), fmt::format("{}={}", short_names[k], format_value(values[index])));
    }
    Checker checker(host);
    RunSpec spec;
    read_config(cfg, checker, host, spec);
    for (const auto& [path, msg] : checker.errors) {
      // An error in a swept value points at the sweep entry that produced it.
      std::string where = path;
      for (const auto& [ptr, sweep_path] : swept_paths)
        if (path == ptr || path.rfind(ptr + "/", 0) == 0) where = sweep_path + path.substr(ptr.size());
      add(where, msg);
    }
    if (!checker.errors.empty()) continue;
    spec.experiment = ex.name;
    spec.label = label_parts.empty() ? "default" : join(label_parts, ",");
    for (uint64_t seed : seeds) {
      RunSpec run = spec;
      run.seed = seed;
      run.run_id = (label_parts.empty() ? "" : spec.label + ",") + fmt::format("seed={}", seed);
      run.config = cfg;
      run.config.erase("seeds");
      run.config["seed"] = seed;
      run.config["run_id"] = run.run_id;
      run.config["label"] = run.label;
      ex.runs.push_back(std::move(run));
    }
  }
  if (!lines.empty()) throw ExperimentError(lines);
  return ex;
}

Experiment load_experiment(const std::string& file, const PluginHost& host) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw ExperimentError({fmt::format("{}: cannot open the experiment file", file)});
  std::stringstream buffer;
  buffer << in.rdbuf();
  return parse_experiment(buffer.str(), file, host);
}

}  // namespace mfglab::engine
