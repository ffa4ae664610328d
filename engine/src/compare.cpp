#include "compare.h"

#include <algorithm>
#include <cmath>
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
  return cols;
}

const std::vector<double>* find_values(const ConfigRow& r, const std::string& name) {
  for (const auto& [n, v] : r.values)
    if (n == name) return &v;
  return nullptr;
}

}  // namespace

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
      rows.push_back({key.first, key.second});
    }
    auto& row = rows[index[key]];
    row.seeds.push_back(s.value("seed", uint64_t{0}));
    if (s.value("status", "") != "ok") { ++row.runs_failed; continue; }
    ++row.runs_ok;
    if (s.contains("metrics"))
      for (const auto& [k, v] : s["metrics"].items()) add_value(row, k, v.is_number() ? v.get<double>() : NAN);
    if (s.contains("seconds_per_iteration")) add_value(row, "sec/iter", s["seconds_per_iteration"].get<double>());
  }
  return rows;
}

std::string format_table(const std::vector<ConfigRow>& rows) {
  const auto cols = columns(rows);
  std::vector<std::vector<std::string>> cells;
  std::vector<std::string> header = {"experiment", "config", "runs"};
  header.insert(header.end(), cols.begin(), cols.end());
  cells.push_back(header);
  for (const auto& r : rows) {
    std::vector<std::string> line = {r.experiment, r.label,
                                     r.runs_failed ? fmt::format("{} ok, {} failed", r.runs_ok, r.runs_failed) : std::to_string(r.runs_ok)};
    for (const auto& c : cols) {
      const auto* v = find_values(r, c);
      if (!v) { line.push_back("-"); continue; }
      auto [m, s] = mean_std(*v);
      line.push_back(std::isnan(s) ? fmt::format("{:.4g}", m) : fmt::format("{:.4g} ± {:.2g}", m, s));
    }
    cells.push_back(line);
  }
  auto width = [](const std::string& s) {  // display width: count UTF-8 code points
    size_t n = 0;
    for (unsigned char ch : s) n += (ch & 0xC0) != 0x80;
    return n;
  };
  std::vector<size_t> widths(header.size(), 0);
  for (const auto& line : cells)
    for (size_t i = 0; i < line.size(); ++i) widths[i] = std::max(widths[i], width(line[i]));
  std::string out;
  for (size_t li = 0; li < cells.size(); ++li) {
    for (size_t i = 0; i < cells[li].size(); ++i)
      out += cells[li][i] + std::string(widths[i] - width(cells[li][i]) + (i + 1 < cells[li].size() ? 2 : 0), ' ');
    out += "\n";
    if (li == 0) {
      size_t total = 0;
      for (size_t w : widths) total += w + 2;
      out += std::string(total - 2, '-') + "\n";
    }
  }
  return out;
}

std::string format_csv(const std::vector<ConfigRow>& rows) {
  const auto cols = columns(rows);
  std::string out = "experiment,config,runs_ok,runs_failed";
  for (const auto& c : cols) out += fmt::format(",{}_mean,{}_std", c, c);
  out += "\n";
  for (const auto& r : rows) {
    out += fmt::format("{},\"{}\",{},{}", r.experiment, r.label, r.runs_ok, r.runs_failed);
    for (const auto& c : cols) {
      const auto* v = find_values(r, c);
      auto [m, s] = v ? mean_std(*v) : std::pair<double, double>(NAN, NAN);
      out += std::isnan(m) ? "," : fmt::format(",{:.8g}", m);
      out += std::isnan(s) ? "," : fmt::format(",{:.8g}", s);
    }
    out += "\n";
  }
  return out;
}

nlohmann::json format_json(const std::vector<ConfigRow>& rows) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& r : rows) {
    nlohmann::json row = {{"experiment", r.experiment}, {"config", r.label}, {"runs_ok", r.runs_ok},
                          {"runs_failed", r.runs_failed}, {"seeds", r.seeds}};
    nlohmann::json metrics = nlohmann::json::object();
    for (const auto& [name, vals] : r.values) {
      auto [m, s] = mean_std(vals);
      metrics[name] = {{"mean", std::isnan(m) ? nlohmann::json(nullptr) : nlohmann::json(m)},
                       {"std", std::isnan(s) ? nlohmann::json(nullptr) : nlohmann::json(s)},
                       {"values", vals}};
    }
    row["metrics"] = metrics;
    out.push_back(row);
  }
  return out;
}

}  // namespace mfglab::engine
