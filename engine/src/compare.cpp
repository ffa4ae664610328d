#include "compare.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "mfglab/params.h"
#include "results.h"

namespace fs = std::filesystem;

namespace mfglab::engine {

namespace {

std::pair<double, double> mean_std(const std::vector<double>& v) {
  if (v.empty()) return {NAN, NAN};
  double m = 0;
  for (double x : v) m += x;
  m /= v.size();
  if (v.size() < 2) return {m, NAN};
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return {m, std::sqrt(s / (v.size() - 1))};  // sample standard deviation
}

void add_value(ConfigRow& row, const std::string& name, double v) {
  for (auto& [n, vals] : row.values)
    if (n == name) return vals.push_back(v);
  row.values.push_back({name, {v}});
}

std::vector<std::string> columns(const std::vector<ConfigRow>& rows) {
  std::vector<std::string> cols;
  for (const auto& r : rows)
    for (const auto& [n, _] : r.values)
      if (std::find(cols.begin(), cols.end(), n) == cols.end()) cols.push_back(n);
  // The timing column last.
  std::stable_partition(cols.begin(), cols.end(), [](const std::string& c) { return c != kSecondsPerIteration; });
  return cols;
}

const std::vector<double>* find_values(const ConfigRow& r, const std::string& name) {
  for (const auto& [n, v] : r.values)
    if (n == name) return &v;
  return nullptr;
}

const double* find_run_value(const RunRecord& run, const std::string& name) {
  for (const auto& [n, v] : run.values)
    if (n == name) return &v;
  return nullptr;
}

double number_or(const nlohmann::json& j, const char* key, double fallback) {
  return j.contains(key) && j.at(key).is_number() ? j.at(key).get<double>() : fallback;
}

// A number starting at s[i]: digits with an optional fraction and exponent, and a sign
// when it does not follow a letter or digit ("lr=-1", not "a-1"). Sets `end` and `value`.
bool number_at(const std::string& s, size_t i, size_t& end, double& value) {
  size_t j = i;
  if ((s[j] == '-' || s[j] == '+') && j + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[j + 1])) &&
      (j == 0 || !std::isalnum(static_cast<unsigned char>(s[j - 1]))))
    ++j;
  if (j >= s.size() || !std::isdigit(static_cast<unsigned char>(s[j]))) return false;
  while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
  if (j + 1 < s.size() && s[j] == '.' && std::isdigit(static_cast<unsigned char>(s[j + 1]))) {
    ++j;
    while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
  }
  if (j < s.size() && (s[j] == 'e' || s[j] == 'E')) {
    size_t k = j + 1;
    if (k < s.size() && (s[k] == '-' || s[k] == '+')) ++k;
    if (k < s.size() && std::isdigit(static_cast<unsigned char>(s[k]))) {
      while (k < s.size() && std::isdigit(static_cast<unsigned char>(s[k]))) ++k;
      j = k;
    }
  }
  const std::string text = s.substr(i, j - i);
  value = std::strtod(text.c_str(), nullptr);
  end = j;
  return true;
}

int natural_compare(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    size_t ei = 0, ej = 0;
    double x = 0, y = 0;
    if (number_at(a, i, ei, x) && number_at(b, j, ej, y)) {
      if (x != y) return x < y ? -1 : 1;
      i = ei, j = ej;
      continue;
    }
    if (a[i] != b[j]) return static_cast<unsigned char>(a[i]) < static_cast<unsigned char>(b[j]) ? -1 : 1;
    ++i, ++j;
  }
  if (i < a.size()) return 1;
  if (j < b.size()) return -1;
  return 0;
}

// "12.3 s", "21m03s", "1h02m".
std::string format_duration(double seconds) {
  if (!(seconds >= 0) || !std::isfinite(seconds)) return "n/a";
  if (seconds < 100) return fmt::format("{:.3g} s", seconds);
  const long long s = std::llround(seconds);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
}

std::string format_number(double v) { return std::isnan(v) ? "n/a" : fmt::format("{:.4g}", v); }

// Display width: UTF-8 code points.
size_t width(const std::string& s) {
  size_t n = 0;
  for (unsigned char ch : s) n += (ch & 0xC0) != 0x80;
  return n;
}

// Aligned columns, a rule under the header.
std::string render(const std::vector<std::vector<std::string>>& cells) {
  if (cells.empty()) return "";
  std::vector<size_t> widths;
  for (const auto& line : cells) {
    if (widths.size() < line.size()) widths.resize(line.size(), 0);
    for (size_t i = 0; i < line.size(); ++i) widths[i] = std::max(widths[i], width(line[i]));
  }
  std::string out;
  for (size_t li = 0; li < cells.size(); ++li) {
    std::string line;
    for (size_t i = 0; i < cells[li].size(); ++i)
      line += cells[li][i] + std::string(widths[i] - width(cells[li][i]) + (i + 1 < cells[li].size() ? 2 : 0), ' ');
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
    if (li == 0) {
      size_t total = 0;
      for (size_t w : widths) total += w + 2;
      out += std::string(total - 2, '-') + "\n";
    }
  }
  return out;
}

std::string csv_cell(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) out += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return out + "\"";
}

std::string csv_number(double v) { return std::isnan(v) ? "" : fmt::format("{:.8g}", v); }

nlohmann::json json_number(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

// The configuration's name in messages: its label, with the experiment when several are shown.
std::string config_name(const ConfigRow& r, bool with_experiment) {
  return with_experiment ? r.experiment + "/" + r.label : r.label;
}

bool several_experiments(const std::vector<ConfigRow>& rows) {
  for (const auto& r : rows)
    if (r.experiment != rows.front().experiment) return true;
  return false;
}

// The label without its "variant=NAME" part: what a configuration shares with the other
// variants' configurations of the same sweep point.
std::string context_of(const ConfigRow& r) {
  if (r.variant.empty()) return r.label;
  const std::string prefix = "variant=" + r.variant;
  if (r.label.rfind(prefix, 0) != 0) return r.label;
  std::string rest = r.label.substr(prefix.size());
  if (!rest.empty() && rest.front() == ',') rest.erase(0, 1);
  return rest;
}

std::string seed_list(const std::vector<uint64_t>& seeds) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < seeds.size() && i < 10; ++i) parts.push_back(std::to_string(seeds[i]));
  if (seeds.size() > 10) parts.push_back("...");
  return fmt::format("{}", fmt::join(parts, ", "));
}

// Every successful run's seed -> run; a seed twice is an error (two result folders of the
// same experiment compared together).
std::map<uint64_t, const RunRecord*> ok_runs(const ConfigRow& r) {
  std::map<uint64_t, const RunRecord*> out;
  for (const auto& run : r.runs) {
    if (!run.ok) continue;
    if (!out.emplace(run.seed, &run).second)
      throw Error(fmt::format("configuration {}/{} holds two successful runs of seed {}: compare its result folders "
                              "one at a time",
                              r.experiment, r.label, run.seed));
  }
  return out;
}

MapSpread map_spread(const std::vector<RunRecord>& runs) {
  MapSpread spread;
  std::vector<std::pair<std::string, at::Tensor>> maps;  // run id, [n, d] float64
  std::vector<std::string> problems;
  for (const auto& run : runs) {
    if (run.map_file.empty()) continue;
    try {
      auto m = load_npy_array(run.map_file);
      if (m.dim() != 2) throw Error(fmt::format("expected an [n, d] array, got {} dimensions", m.dim()));
      if (!maps.empty() && m.sizes() != maps.front().second.sizes())
        throw Error(fmt::format("shape [{}] differs from run {}'s [{}]", fmt::join(m.sizes(), ", "), maps.front().first,
                                fmt::join(maps.front().second.sizes(), ", ")));
      maps.emplace_back(run.run_id, m.to(at::kDouble));
    } catch (const std::exception& e) {
      problems.push_back(fmt::format("{}: {}", run.run_id, e.what()));
    }
  }
  spread.maps = static_cast<int>(maps.size());
  for (size_t a = 0; a < maps.size(); ++a)
    for (size_t b = a + 1; b < maps.size(); ++b)
      spread.distances.push_back((maps[a].second - maps[b].second).norm(2, 1).mean().item<double>());
  if (!problems.empty()) spread.problem = "maps left out: " + fmt::format("{}", fmt::join(problems, "; "));
  return spread;
}

ArmComparison compare_arm(const ConfigRow& arm, const ConfigRow& base, double level) {
  ArmComparison out;
  out.arm = &arm;
  out.baseline = &base;
  const auto a = ok_runs(arm), b = ok_runs(base);
  for (const auto& [seed, _] : a)
    if (b.count(seed)) out.paired_seeds.push_back(seed);
    else out.unpaired_seeds.push_back(seed);
  for (const auto& [seed, _] : b)
    if (!a.count(seed)) out.unpaired_seeds.push_back(seed);
  std::sort(out.unpaired_seeds.begin(), out.unpaired_seeds.end());
  if (base.runs_ok == 0) out.note = "the baseline has no successful runs";
  else if (arm.runs_ok == 0) out.note = "no successful runs";
  else if (out.paired_seeds.empty()) out.note = "no seed ran successfully on both sides";

  // The metrics of either side, in column order; the timing column is not a metric.
  std::vector<std::string> names;
  for (const ConfigRow* r : {&arm, &base})
    for (const auto& [n, _] : r->values)
      if (n != kSecondsPerIteration && std::find(names.begin(), names.end(), n) == names.end()) names.push_back(n);
  std::map<std::string, std::string> better = base.metric_better;
  for (const auto& [k, v] : arm.metric_better) better.emplace(k, v);

  std::vector<double> p;
  for (const auto& name : names) {
    MetricComparison m;
    m.metric = name;
    auto it = better.find(name);
    if (it == better.end()) it = better.find(name.substr(0, name.find('.')));  // "label.value" -> "label"
    if (it != better.end() && (it->second == "lower" || it->second == "higher")) m.better = it->second;
    std::vector<double> d;
    for (uint64_t seed : out.paired_seeds) {
      const double* x = find_run_value(*a.at(seed), name);
      const double* y = find_run_value(*b.at(seed), name);
      if (!x || !y || !std::isfinite(*x) || !std::isfinite(*y)) {
        ++m.missing;
        continue;
      }
      const double diff = *x - *y;
      d.push_back(diff);
      m.differences.emplace_back(seed, diff);
      if (diff > 0) ++m.higher;
      else if (diff < 0) ++m.lower;
    }
    m.pairs = d.size();
    m.diff = stats::t_interval(d, 0.95);
    m.test = stats::paired_test(d);
    p.push_back(m.pairs ? m.test.p : NAN);
    out.metrics.push_back(std::move(m));
  }
  const auto adjusted = stats::holm(p);
  for (size_t i = 0; i < out.metrics.size(); ++i) {
    auto& m = out.metrics[i];
    m.p_holm = adjusted[i];
    if (m.pairs == 0) m.verdict = "n/a";
    else if (m.p_holm < level && m.test.direction != 0) {
      const bool up = m.test.direction > 0;
      if (m.better.empty()) m.verdict = up ? "higher" : "lower";
      else m.verdict = (up == (m.better == "higher")) ? "better" : "worse";
    } else {
      m.verdict = "no detectable difference";
    }
  }
  return out;
}

}  // namespace

bool natural_less(const std::string& a, const std::string& b) {
  const int c = natural_compare(a, b);
  return c != 0 ? c < 0 : a < b;
}

std::vector<ConfigRow> collect_runs(const std::vector<std::string>& paths) {
  std::vector<std::string> summaries;
  for (const auto& p : paths) {
    if (!fs::exists(p)) throw Error(fmt::format("{}: no such directory", p));
    if (fs::is_regular_file(p) && fs::path(p).filename() == "summary.json") { summaries.push_back(p); continue; }
    for (const auto& e : fs::recursive_directory_iterator(p))
      if (e.is_regular_file() && e.path().filename() == "summary.json") summaries.push_back(e.path().string());
  }
  std::sort(summaries.begin(), summaries.end());
  summaries.erase(std::unique(summaries.begin(), summaries.end()), summaries.end());
  if (summaries.empty()) throw Error(fmt::format("no finished runs (summary.json) under {}", fmt::join(paths, ", ")));

  std::vector<ConfigRow> rows;
  std::map<std::pair<std::string, std::string>, size_t> index;
  for (const auto& file : summaries) {
    auto s = read_json_file(file);
    auto key = std::make_pair(s.value("experiment", std::string("?")), s.value("label", std::string("default")));
    if (!index.count(key)) {
      index[key] = rows.size();
      ConfigRow row;
      row.experiment = key.first;
      row.label = key.second;
      rows.push_back(std::move(row));
    }
    auto& row = rows[index[key]];
    // The variant is in config.json beside the summary (a damaged one is no variant).
    if (row.variant.empty()) {
      const auto config = fs::path(file).parent_path() / "config.json";
      std::error_code ec;
      if (fs::is_regular_file(config, ec)) {
        try {
          const auto c = read_json_file(config.string());
          if (c.contains("variant") && c.at("variant").is_string()) row.variant = c.at("variant").get<std::string>();
        } catch (const std::exception&) {
        }
      }
    }
    if (s.contains("metric_better") && s.at("metric_better").is_object())
      for (const auto& [k, v] : s.at("metric_better").items())
        if (v.is_string()) row.metric_better.emplace(k, v.get<std::string>());
    RunRecord run;
    run.seed = s.contains("seed") && s.at("seed").is_number_unsigned() ? s.at("seed").get<uint64_t>() : 0;
    run.run_id = s.contains("run_id") && s.at("run_id").is_string() ? s.at("run_id").get<std::string>()
                                                                     : fs::path(file).parent_path().filename().string();
    run.status = s.contains("status") && s.at("status").is_string() ? s.at("status").get<std::string>() : "?";
    run.ok = run.status == "ok";
    run.wall_seconds = number_or(s, "train_seconds", 0) + number_or(s, "sample_seconds", 0);
    if (run.ok) {
      const auto map = fs::path(file).parent_path() / "map.npy";
      std::error_code ec;
      if (fs::is_regular_file(map, ec)) run.map_file = map.string();
      if (s.contains("metrics") && s.at("metrics").is_object())
        for (const auto& [k, v] : s["metrics"].items()) run.values.emplace_back(k, v.is_number() ? v.get<double>() : NAN);
      if (s.contains("seconds_per_iteration") && s.at("seconds_per_iteration").is_number())
        run.values.emplace_back(kSecondsPerIteration, s["seconds_per_iteration"].get<double>());
    }
    row.runs.push_back(std::move(run));
  }
  for (auto& row : rows) {
    std::stable_sort(row.runs.begin(), row.runs.end(), [](const RunRecord& a, const RunRecord& b) { return a.seed < b.seed; });
    for (const auto& run : row.runs) {
      row.seeds.push_back(run.seed);
      row.wall_seconds += run.wall_seconds;
      if (!run.ok) {
        ++row.runs_failed;
        continue;
      }
      ++row.runs_ok;
      for (const auto& [k, v] : run.values) add_value(row, k, v);
    }
    row.map_spread = map_spread(row.runs);
  }
  std::stable_sort(rows.begin(), rows.end(), [](const ConfigRow& a, const ConfigRow& b) {
    if (a.experiment != b.experiment) return natural_less(a.experiment, b.experiment);
    return natural_less(a.label, b.label);
  });
  return rows;
}

PairedComparison compare_paired(const std::vector<ConfigRow>& rows, const std::string& name, double level) {
  PairedComparison out;
  out.baseline = name;
  out.level = level;
  for (const auto& r : rows)
    if (r.label == name || r.experiment + "/" + r.label == name ||
        (!r.variant.empty() && (r.variant == name || "variant=" + r.variant == name)))
      out.baselines.push_back(&r);
  if (out.baselines.empty())
    for (const auto& r : rows)
      if (r.experiment == name) out.baselines.push_back(&r);
  if (out.baselines.empty()) {
    std::set<std::string> variants;
    std::vector<std::string> labels;
    for (const auto& r : rows) {
      if (!r.variant.empty()) variants.insert(r.variant);
      labels.push_back(r.label);
    }
    throw Error(fmt::format("unknown baseline '{}': expected a variant name{} or a configuration label ({})", name,
                            variants.empty() ? "" : fmt::format(" ({})", fmt::join(variants, ", ")),
                            fmt::join(labels, ", ")));
  }
  if (std::none_of(out.baselines.begin(), out.baselines.end(), [](const ConfigRow* r) { return r->runs_ok > 0; }))
    throw Error(fmt::format("baseline '{}' has no successful runs", name));

  const bool with_experiment = several_experiments(rows);
  for (const auto& r : rows) {
    if (std::find(out.baselines.begin(), out.baselines.end(), &r) != out.baselines.end()) continue;
    const ConfigRow* base = nullptr;
    if (out.baselines.size() == 1) {
      base = out.baselines.front();
    } else {
      // The baseline configuration of the same sweep point: same experiment and label
      // apart from the variant, else same label apart from the variant, else the only
      // one of the same experiment.
      auto pick = [&](auto&& same) -> const ConfigRow* {
        const ConfigRow* found = nullptr;
        for (const ConfigRow* b : out.baselines)
          if (same(*b)) {
            if (found) return nullptr;
            found = b;
          }
        return found;
      };
      base = pick([&](const ConfigRow& b) { return b.experiment == r.experiment && context_of(b) == context_of(r); });
      if (!base) base = pick([&](const ConfigRow& b) { return context_of(b) == context_of(r); });
      if (!base) base = pick([&](const ConfigRow& b) { return b.experiment == r.experiment; });
    }
    if (!base) {
      ArmComparison arm;
      arm.arm = &r;
      std::vector<std::string> names;
      for (const ConfigRow* b : out.baselines) names.push_back(config_name(*b, with_experiment));
      arm.note = fmt::format("no single baseline configuration of '{}' matches it (candidates: {})", name,
                             fmt::join(names, ", "));
      out.arms.push_back(std::move(arm));
      continue;
    }
    out.arms.push_back(compare_arm(r, *base, level));
  }
  return out;
}

namespace {

std::string format_p(double p) {
  if (std::isnan(p)) return "n/a";
  return p < 1e-4 ? fmt::format("{:.1e}", p) : fmt::format("{:.3g}", p);
}

std::string test_name(const stats::PairedTest& t) {
  switch (t.method) {
    case stats::PairedTest::Method::wilcoxon_exact: return "signed-rank";
    case stats::PairedTest::Method::wilcoxon_normal: return "signed-rank (normal)";
    case stats::PairedTest::Method::sign_exact: return "sign";
    case stats::PairedTest::Method::none: break;
  }
  return "-";
}

std::string paired_table(const std::vector<ConfigRow>& rows, const PairedComparison& pc) {
  const bool with_experiment = several_experiments(rows);
  std::vector<std::string> base_names;
  for (const ConfigRow* b : pc.baselines) base_names.push_back(config_name(*b, with_experiment));
  std::string out = fmt::format("\npaired against {} (per seed: configuration - baseline; {:g}% t interval; "
                                "p two-sided, Holm-adjusted over each configuration's metrics; level {:g})\n",
                                fmt::join(base_names, ", "), 95.0, pc.level);
  std::vector<std::vector<std::string>> cells = {
      {"config", "metric", "pairs", "mean diff", "95% CI", "wins", "test", "p", "p (Holm)", "verdict"}};
  std::vector<std::string> notes;
  for (const auto& arm : pc.arms) {
    const std::string name = config_name(*arm.arm, with_experiment);
    const std::string against = arm.baseline && pc.baselines.size() > 1
                                    ? " vs " + config_name(*arm.baseline, with_experiment) : "";
    if (!arm.note.empty()) notes.push_back(fmt::format("{}{}: {}", name, against, arm.note));
    if (!arm.unpaired_seeds.empty())
      notes.push_back(fmt::format("{}{}: {} unpaired (seed{} {}: a successful run on one side only; left out)", name,
                                  against, arm.unpaired_seeds.size(), arm.unpaired_seeds.size() > 1 ? "s" : "",
                                  seed_list(arm.unpaired_seeds)));
    bool first = true;
    double smallest = INFINITY;
    size_t tested = 0;
    for (const auto& m : arm.metrics) {
      std::string ci = std::isnan(m.diff.lo) ? "n/a" : fmt::format("[{:.3g}, {:.3g}]", m.diff.lo, m.diff.hi);
      std::string wins = m.pairs ? fmt::format("{}/{}{}", m.wins(), m.pairs, m.better.empty() ? " higher" : "") : "n/a";
      std::string pairs = std::to_string(m.pairs);
      if (m.missing) pairs += fmt::format(" ({} n/a)", m.missing);
      cells.push_back({first ? name + against : "", m.metric, pairs, format_number(m.diff.mean), ci, wins,
                       m.pairs ? test_name(m.test) : "-", format_p(m.pairs ? m.test.p : NAN), format_p(m.p_holm),
                       m.verdict});
      first = false;
      if (m.pairs) {
        ++tested;
        smallest = std::min(smallest, m.test.min_p);
      }
    }
    if (tested && smallest >= pc.level)
      notes.push_back(fmt::format("{}{}: with these pairs no test here can give p < {:g} (smallest possible p {:.3g}); "
                                  "more seeds are needed to detect a difference",
                                  name, against, pc.level, smallest));
  }
  out += render(cells);
  bool unknown = false;
  for (const auto& arm : pc.arms)
    for (const auto& m : arm.metrics) unknown = unknown || (m.pairs && m.better.empty());
  if (unknown)
    notes.push_back("wins and verdicts say higher / lower where summary.json's metric_better does not say which "
                    "direction is better");
  for (const auto& n : notes) out += "note: " + n + "\n";
  return out;
}

}  // namespace

std::string format_table(const std::vector<ConfigRow>& rows, const CompareOptions& options) {
  PairedComparison pc;
  if (!options.baseline.empty()) pc = compare_paired(rows, options.baseline);
  const auto cols = columns(rows);
  std::vector<std::vector<std::string>> cells;
  std::vector<std::string> header = {"experiment", "config", "runs"};
  header.insert(header.end(), cols.begin(), cols.end());
  header.push_back("wall time");
  cells.push_back(header);
  for (const auto& r : rows) {
    std::vector<std::string> line = {r.experiment, r.label,
                                     r.runs_failed ? fmt::format("{} ok, {} failed", r.runs_ok, r.runs_failed) : std::to_string(r.runs_ok)};
    for (const auto& c : cols) {
      const auto* v = find_values(r, c);
      if (!v) { line.push_back("n/a"); continue; }
      auto [m, s] = mean_std(*v);
      if (std::isnan(m)) line.push_back("n/a");
      else line.push_back(std::isnan(s) ? fmt::format("{:.4g}", m) : fmt::format("{:.4g} ± {:.2g}", m, s));
    }
    line.push_back(format_duration(r.wall_seconds));
    cells.push_back(line);
  }
  std::string out = render(cells);

  if (options.per_seed) {
    std::vector<std::vector<std::string>> seeds;
    std::vector<std::string> h = {"experiment", "config", "seed", "status"};
    h.insert(h.end(), cols.begin(), cols.end());
    h.push_back("wall time");
    seeds.push_back(h);
    for (const auto& r : rows)
      for (const auto& run : r.runs) {
        std::vector<std::string> line = {r.experiment, r.label, std::to_string(run.seed), run.status};
        for (const auto& c : cols) {
          const double* v = find_run_value(run, c);
          line.push_back(v ? format_number(*v) : "n/a");
        }
        line.push_back(format_duration(run.wall_seconds));
        seeds.push_back(line);
      }
    out += "\nper seed\n" + render(seeds);
  }
  if (std::any_of(rows.begin(), rows.end(), [](const ConfigRow& r) { return r.map_spread.maps > 0; })) {
    std::vector<std::vector<std::string>> maps = {{"experiment", "config", "maps", "pairs", "spread", "min", "max"}};
    std::vector<std::string> problems;
    for (const auto& r : rows) {
      const auto& ms = r.map_spread;
      if (ms.maps == 0) continue;
      auto [m, s] = mean_std(ms.distances);
      double lo = NAN, hi = NAN;
      if (!ms.distances.empty()) {
        lo = *std::min_element(ms.distances.begin(), ms.distances.end());
        hi = *std::max_element(ms.distances.begin(), ms.distances.end());
      }
      const std::string spread = std::isnan(m)   ? std::string("n/a")
                                 : std::isnan(s) ? fmt::format("{:.4g}", m)
                                                 : fmt::format("{:.4g} ± {:.2g}", m, s);
      maps.push_back({r.experiment, r.label, std::to_string(ms.maps), std::to_string(ms.distances.size()), spread,
                      format_number(lo), format_number(hi)});
      if (!ms.problem.empty()) problems.push_back(fmt::format("{}: {}", r.label, ms.problem));
    }
    out += "\nlearned maps (map.npy): mean distance between two seeds' images of the same held-out points, over pairs of seeds\n" +
           render(maps);
    for (const auto& p : problems) out += p + "\n";
  }
  if (!options.baseline.empty()) out += paired_table(rows, pc);
  return out;
}

std::string format_csv(const std::vector<ConfigRow>& rows, const CompareOptions& options) {
  const auto cols = columns(rows);
  if (!options.baseline.empty()) {
    const auto pc = compare_paired(rows, options.baseline);
    std::string out = "experiment,config,baseline,metric,better,pairs,missing,unpaired,mean_diff,ci_low,ci_high,wins,"
                      "test,statistic,p,p_holm,verdict\n";
    for (const auto& arm : pc.arms) {
      const std::string base = arm.baseline ? arm.baseline->label : "";
      if (arm.metrics.empty())
        out += fmt::format("{},{},{},,,0,0,{},,,,,,,,,{}\n", csv_cell(arm.arm->experiment), csv_cell(arm.arm->label),
                           csv_cell(base), arm.unpaired_seeds.size(), csv_cell(arm.note));
      for (const auto& m : arm.metrics)
        out += fmt::format("{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n", csv_cell(arm.arm->experiment),
                           csv_cell(arm.arm->label), csv_cell(base), csv_cell(m.metric), m.better, m.pairs, m.missing,
                           arm.unpaired_seeds.size(), csv_number(m.diff.mean), csv_number(m.diff.lo),
                           csv_number(m.diff.hi), m.pairs ? std::to_string(m.wins()) : "",
                           m.pairs ? stats::method_name(m.test.method) : "", m.pairs ? csv_number(m.test.statistic) : "",
                           csv_number(m.pairs ? m.test.p : NAN), csv_number(m.p_holm), csv_cell(m.verdict));
    }
    return out;
  }
  if (options.per_seed) {
    std::string out = "experiment,config,seed,status";
    for (const auto& c : cols) out += "," + c;
    out += ",wall_seconds\n";
    for (const auto& r : rows)
      for (const auto& run : r.runs) {
        out += fmt::format("{},{},{},{}", csv_cell(r.experiment), csv_cell(r.label), run.seed, run.status);
        for (const auto& c : cols) {
          const double* v = find_run_value(run, c);
          out += "," + (v ? csv_number(*v) : std::string());
        }
        out += fmt::format(",{}\n", csv_number(run.wall_seconds));
      }
    return out;
  }
  std::string out = "experiment,config,runs_ok,runs_failed";
  for (const auto& c : cols) out += fmt::format(",{}_mean,{}_std", c, c);
  out += ",wall_seconds\n";
  for (const auto& r : rows) {
    out += fmt::format("{},{},{},{}", r.experiment, csv_cell(r.label), r.runs_ok, r.runs_failed);
    for (const auto& c : cols) {
      const auto* v = find_values(r, c);
      auto [m, s] = v ? mean_std(*v) : std::pair<double, double>(NAN, NAN);
      out += "," + csv_number(m);
      out += "," + csv_number(s);
    }
    out += "," + csv_number(r.wall_seconds) + "\n";
  }
  return out;
}

nlohmann::json format_json(const std::vector<ConfigRow>& rows, const CompareOptions& options) {
  PairedComparison pc;
  if (!options.baseline.empty()) pc = compare_paired(rows, options.baseline);
  nlohmann::json out = nlohmann::json::array();
  for (const auto& r : rows) {
    nlohmann::json row = {{"experiment", r.experiment}, {"config", r.label}, {"runs_ok", r.runs_ok},
                          {"runs_failed", r.runs_failed}, {"seeds", r.seeds}, {"wall_seconds", r.wall_seconds}};
    if (!r.variant.empty()) row["variant"] = r.variant;
    nlohmann::json metrics = nlohmann::json::object();
    for (const auto& [name, vals] : r.values) {
      auto [m, s] = mean_std(vals);
      nlohmann::json values = nlohmann::json::array();
      for (double v : vals) values.push_back(json_number(v));
      metrics[name] = {{"mean", json_number(m)}, {"std", json_number(s)}, {"values", values}};
    }
    row["metrics"] = metrics;
    nlohmann::json runs = nlohmann::json::array();
    for (const auto& run : r.runs) {
      nlohmann::json values = nlohmann::json::object();
      for (const auto& [k, v] : run.values) values[k] = json_number(v);
      runs.push_back({{"seed", run.seed}, {"run_id", run.run_id}, {"status", run.status},
                      {"wall_seconds", run.wall_seconds}, {"values", values}});
    }
    row["runs"] = runs;
    if (r.map_spread.maps > 0) {
      const auto& ms = r.map_spread;
      auto [m, s] = mean_std(ms.distances);
      row["map_spread"] = {{"maps", ms.maps}, {"pairs", ms.distances.size()}, {"mean", json_number(m)},
                           {"std", json_number(s)}, {"distances", ms.distances}};
      if (!ms.problem.empty()) row["map_spread"]["problem"] = ms.problem;
    }
    if (!options.baseline.empty()) {
      if (std::find(pc.baselines.begin(), pc.baselines.end(), &r) != pc.baselines.end()) row["baseline"] = true;
      for (const auto& arm : pc.arms) {
        if (arm.arm != &r) continue;
        nlohmann::json paired = {{"baseline", arm.baseline ? nlohmann::json(arm.baseline->label) : nlohmann::json(nullptr)},
                                 {"pairs", arm.paired_seeds.size()}, {"paired_seeds", arm.paired_seeds},
                                 {"unpaired", arm.unpaired_seeds.size()}, {"unpaired_seeds", arm.unpaired_seeds},
                                 {"level", pc.level}};
        if (!arm.note.empty()) paired["note"] = arm.note;
        nlohmann::json ms = nlohmann::json::object();
        for (const auto& m : arm.metrics) {
          nlohmann::json diffs = nlohmann::json::object();
          for (const auto& [seed, d] : m.differences) diffs[std::to_string(seed)] = d;
          ms[m.metric] = {{"better", m.better.empty() ? nlohmann::json(nullptr) : nlohmann::json(m.better)},
                          {"pairs", m.pairs}, {"missing", m.missing},
                          {"mean_diff", json_number(m.diff.mean)},
                          {"ci95", {json_number(m.diff.lo), json_number(m.diff.hi)}},
                          {"wins", m.wins()}, {"higher", m.higher}, {"lower", m.lower},
                          {"test", stats::method_name(m.test.method)}, {"statistic", json_number(m.test.statistic)},
                          {"p", json_number(m.pairs ? m.test.p : NAN)}, {"p_holm", json_number(m.p_holm)},
                          {"min_p", json_number(m.test.min_p)},
                          {"verdict", m.verdict}, {"differences", diffs}};
        }
        paired["metrics"] = ms;
        row["paired"] = paired;
      }
    }
    out.push_back(row);
  }
  return out;
}

}  // namespace mfglab::engine
