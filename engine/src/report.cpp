#include "report.h"

#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <torch/version.h>

#include "plot.h"
#include "results.h"
#include "text.h"
#include "running/run_directory.h"
#include "version.h"

namespace fs = std::filesystem;

namespace mfglab::engine {

namespace {

using json = nlohmann::json;

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default:
        // Control characters other than tab and newline are not allowed in XML text.
        if (static_cast<unsigned char>(c) < 0x20 && c != '\n' && c != '\t') out += ' ';
        else out += c;
    }
  }
  return out;
}

std::string base64(const std::string& bytes) {
  static const char* table = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v = uint32_t(uint8_t(bytes[i])) << 16 | uint32_t(uint8_t(bytes[i + 1])) << 8 | uint8_t(bytes[i + 2]);
    for (int k = 18; k >= 0; k -= 6) out += table[(v >> k) & 63];
  }
  if (i < bytes.size()) {
    uint32_t v = uint32_t(uint8_t(bytes[i])) << 16;
    if (i + 1 < bytes.size()) v |= uint32_t(uint8_t(bytes[i + 1])) << 8;
    out += table[(v >> 18) & 63];
    out += table[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? table[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string image(const std::string& png, const std::string& alt) {
  return "<img alt=\"" + escape(alt) + "\" src=\"data:image/png;base64," + base64(png) + "\"/>\n";
}

// A run folder as the report needs it.
struct Run {
  fs::path dir;
  json summary, config;
  std::string key;  // "experiment/label": its configuration
};

json read_or_empty(const fs::path& p) {
  try {
    return read_json_file(p.string());
  } catch (const std::exception&) {
    return json::object();
  }
}

// JSON pointer -> value text for every leaf of a configuration.
void flatten(const json& v, const std::string& at, std::map<std::string, std::string>& out) {
  if (v.is_object() && !v.empty()) {
    for (const auto& [k, x] : v.items()) flatten(x, at + "/" + k, out);
  } else if (v.is_array() && !v.empty() && (v[0].is_object() || v[0].is_array())) {
    for (size_t i = 0; i < v.size(); ++i) flatten(v[i], at + "/" + std::to_string(i), out);
  } else {
    out[at] = v.dump();
  }
}

// The settings in which the configurations differ: one row per configuration.
std::string differences(const std::vector<std::pair<std::string, const Run*>>& firsts) {
  std::vector<std::map<std::string, std::string>> flat;
  std::set<std::string> keys;
  for (const auto& [key, run] : firsts) {
    std::map<std::string, std::string> f;
    json c = run->config;
    for (const char* k : {"run_id", "seed", "label", "description"}) c.erase(k);
    if (c.contains("eval")) c["eval"].erase("skipped_metrics");
    flatten(c, "", f);
    for (const auto& [k, _] : f) keys.insert(k);
    flat.push_back(std::move(f));
  }
  std::vector<std::string> differing;
  for (const auto& k : keys) {
    std::set<std::string> values;
    for (const auto& f : flat) values.insert(f.count(k) ? f.at(k) : "(none)");
    if (values.size() > 1) differing.push_back(k);
  }
  if (firsts.size() < 2) return "<p>One configuration: nothing to tell apart.</p>\n";
  if (differing.empty()) return "<p>The configurations have the same settings.</p>\n";
  std::string html = "<table><tr><th>configuration</th>";
  for (const auto& k : differing) html += "<th>" + escape(k) + "</th>";
  html += "</tr>\n";
  for (size_t i = 0; i < firsts.size(); ++i) {
    html += "<tr><td>" + escape(firsts[i].first) + "</td>";
    for (const auto& k : differing) html += "<td>" + escape(flat[i].count(k) ? flat[i].at(k) : "(none)") + "</td>";
    html += "</tr>\n";
  }
  return html + "</table>\n";
}

// Every configuration's loss curve ("total" of its first successful run) on one axis.
std::string loss_figure(const std::vector<std::pair<std::string, const Run*>>& firsts) {
  plot::Figure figure(900, 460);
  plot::Axes& axes = figure.subplot(1, 1, 0);
  axes.set_xlabel("iteration");
  axes.set_ylabel("total loss");
  bool any = false, positive = true;
  for (size_t i = 0; i < firsts.size(); ++i) {
    std::ifstream in(firsts[i].second->dir / run_files::losses);
    std::string line;
    if (!std::getline(in, line)) continue;
    std::vector<std::string> header;
    for (std::stringstream ss(line); std::getline(ss, line, ',');) header.push_back(line);
    const auto total = std::find(header.begin(), header.end(), "total");
    if (total == header.end() || header.empty() || header[0] != "iteration") continue;
    const size_t column = static_cast<size_t>(total - header.begin());
    std::vector<double> x, y;
    while (std::getline(in, line)) {
      std::vector<std::string> cells;
      for (std::stringstream ss(line); std::getline(ss, line, ',');) cells.push_back(line);
      if (cells.size() != header.size()) continue;
      char* end = nullptr;
      const double it = std::strtod(cells[0].c_str(), &end), v = std::strtod(cells[column].c_str(), nullptr);
      if (!std::isfinite(it) || !std::isfinite(v)) continue;
      x.push_back(it), y.push_back(v);
      positive = positive && v > 0;
    }
    // At most about 1500 points a curve.
    const size_t stride = std::max<size_t>(1, x.size() / 1500);
    std::vector<double> xs, ys;
    for (size_t k = 0; k < x.size(); k += stride) xs.push_back(x[k]), ys.push_back(y[k]);
    if (xs.empty()) continue;
    axes.line(xs, ys, plot::palette(static_cast<int>(i)), 1.5, firsts[i].first);
    any = true;
  }
  if (!any) return "<p>No loss history.</p>\n";
  axes.set_log_y(positive);
  return image(figure.png_bytes(), "loss curves");
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos) return line.substr(line.find(':') + 2);
  return "unknown";
}

std::string now_utc() {
  const std::time_t t = std::time(nullptr);
  char text[64];
  std::strftime(text, sizeof text, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&t));
  return text;
}

// A private folder for the figures drawn by plot_compare; removed afterwards.
class TempFolder {
 public:
  TempFolder() {
    std::string pattern = (fs::temp_directory_path() / "mfglab-report-XXXXXX").string();
    if (!::mkdtemp(pattern.data())) throw Error("cannot create a temporary folder for the report's figures");
    path_ = pattern;
  }
  ~TempFolder() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

}  // namespace

std::string make_report(const std::vector<std::string>& paths, const CompareOptions& options) {
  const auto rows = collect_runs(paths);       // throws for a path without runs
  const std::string table = format_table(rows, options);  // throws for an unknown baseline
  std::vector<Run> runs;
  for (const auto& dir : find_run_dirs(paths)) {
    Run r{dir, read_or_empty(fs::path(dir) / run_files::summary), read_or_empty(fs::path(dir) / run_files::config), ""};
    r.key = r.summary.value("experiment", std::string("?")) + "/" + r.summary.value("label", std::string("?"));
    runs.push_back(std::move(r));
  }
  // Each configuration's first successful run (else its first run), in the table's order.
  std::vector<std::pair<std::string, const Run*>> firsts;
  for (const auto& row : rows) {
    const std::string key = row.experiment + "/" + row.label;
    const Run* first = nullptr;
    for (const auto& r : runs)
      if (r.key == key && (!first || (r.summary.value("status", "") == "ok" && first->summary.value("status", "") != "ok")))
        first = &r;
    if (first) firsts.emplace_back(key, first);
  }

  std::string html = R"(<!DOCTYPE html>
<html xmlns="http://www.w3.org/1999/xhtml" lang="en">
<head>
<meta charset="utf-8"/>
<title>mfglab report</title>
<style>
body { font-family: sans-serif; margin: 2em auto; padding: 0 1em; max-width: 70em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
img { max-width: 100%; height: auto; display: block; margin: 0.6em 0; }
.failed { color: #a00; }
</style>
</head>
<body>
)";
  html += "<h1>mfglab report</h1>\n<p>" + escape(fmt::format("{} configuration(s), {} run(s), from: ", rows.size(), runs.size()));
  for (size_t i = 0; i < paths.size(); ++i) html += (i ? ", " : "") + std::string("<code>") + escape(paths[i]) + "</code>";
  html += "</p>\n";

  html += "<h2>What was compared</h2>\n" + differences(firsts);
  html += "<h2>Results</h2>\n";
  if (options.baseline.empty())
    html += "<p>Mean ± standard deviation over seeds. With <code>--baseline NAME</code> the report adds paired statistics.</p>\n";
  html += "<pre>" + escape(table) + "</pre>\n";

  TempFolder tmp;
  // One panel per configuration, as `compare --png` draws it; a figure that cannot be drawn
  // is said, not fatal.
  auto compare_figure = [&](CompareView view, const std::string& what) {
    try {
      const auto f = plot_compare(paths, (tmp.path() / (what + ".png")).string(), view);
      return image(read_file(f.path).value_or(""), what + " of each configuration");
    } catch (const std::exception& e) {
      return "<p>" + escape("No " + what + " figure: " + e.what()) + "</p>\n";
    }
  };
  html += "<h2>Samples</h2>\n" + compare_figure(CompareView::samples, "samples");
  bool trajectories = false;
  for (const auto& r : runs) trajectories = trajectories || fs::exists(r.dir / "trajectories.npy");
  if (trajectories) html += "<h2>Trajectories</h2>\n" + compare_figure(CompareView::trajectories, "trajectories");
  std::string densities;
  for (const auto& [key, run] : firsts)
    if (fs::exists(run->dir / "density.png"))
      densities += "<p>" + escape(key) + "</p>\n" + image(read_file((run->dir / "density.png").string()).value_or(""), "density of " + key);
  if (!densities.empty()) html += "<h2>Densities</h2>\n" + densities;

  html += "<h2>Loss curves</h2>\n<p>The total loss of each configuration's first successful seed.</p>\n" + loss_figure(firsts);

  html += "<h2>Failures</h2>\n";
  std::string failures;
  for (const auto& r : runs) {
    const std::string status = r.summary.value("status", std::string("unknown"));
    if (status == "ok") continue;
    const auto& error = r.summary.contains("error") && r.summary["error"].is_string() ? r.summary["error"].get<std::string>() : "";
    failures += "<li class=\"failed\"><code>" + escape(r.dir.string()) + "</code>: " + escape(status) + "<pre>" + escape(error) +
                "</pre></li>\n";
  }
  html += failures.empty() ? "<p>None: every run finished.</p>\n" : "<ul>\n" + failures + "</ul>\n";

  // What made the results, as the summaries record it.
  std::set<std::string> versions, torches, gemms, threads, plugins;
  double wall = 0;
  for (const auto& r : runs) {
    const auto& s = r.summary;
    if (s.contains("mfglab_version")) versions.insert(s["mfglab_version"].dump());
    if (s.contains("libtorch_version")) torches.insert(s["libtorch_version"].dump());
    if (s.contains("float_gemm")) gemms.insert(s["float_gemm"].dump());
    if (s.contains("threads")) threads.insert(s["threads"].dump());
    for (const char* k : {"train_seconds", "sample_seconds"})
      if (s.contains(k) && s[k].is_number()) wall += s[k].get<double>();
    if (s.contains("plugins") && s["plugins"].is_array())
      for (const auto& p : s["plugins"])
        if (p.is_object())
          plugins.insert(fmt::format("{} {} ({}) sha256 {}", p.value("name", "?"), p.value("version", "?"), p.value("kind", "?"),
                                     p.value("sha256", "?")));
  }
  auto list = [](const std::set<std::string>& s) {
    if (s.empty()) return std::string("not recorded");
    std::string out;
    for (const auto& x : s) out += (out.empty() ? "" : ", ") + x;
    return out;
  };
  html += "<h2>How it was made</h2>\n<table>\n";
  auto row = [&](const std::string& k, const std::string& v) { html += "<tr><th>" + escape(k) + "</th><td>" + escape(v) + "</td></tr>\n"; };
  row("mfglab (runs)", list(versions));
  row("LibTorch (runs)", list(torches));
  row("float matrix products", list(gemms));
  row("threads per run", list(threads));
  row("training and sampling time, all runs", fmt::format("{:.1f} s", wall));
  row("CPU", cpu_model() + fmt::format(" ({} logical cores)", std::thread::hardware_concurrency()));
  row("report", version_line() + ", " + now_utc());
  html += "</table>\n<p>Plugins (name, version, kind, SHA-256 of the library):</p>\n<ul>\n";
  for (const auto& p : plugins) html += "<li><code>" + escape(p) + "</code></li>\n";
  if (plugins.empty()) html += "<li>not recorded by these runs</li>\n";
  html += "</ul>\n</body>\n</html>\n";
  return html;
}

}  // namespace mfglab::engine
