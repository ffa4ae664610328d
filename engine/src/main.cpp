// The mfglab command line: plugins, describe, validate, run, compare, plot, metric.
// It lives in the engine library; the `mfglab` executable (launcher/launcher.cpp) loads it.
#include <malloc.h>
#include <dlfcn.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <ATen/Parallel.h>

#include "compare.h"
#include "launcher/entry.h"
#include "experiment.h"
#include "mfglab/sdk.h"
#include "plot.h"
#include "plugin_host.h"
#include "progress.h"
#include "results.h"
#include "runner.h"
#include "report.h"
#include "schema.h"
#include "text.h"
#include "version.h"
#include "running/cores.h"
#include "running/evaluate.h"
#include "running/isolation.h"
#include "running/mpi_sweep.h"
#include "running/run_directory.h"
#include "running/stop_signals.h"

namespace fs = std::filesystem;
using namespace mfglab;
using namespace mfglab::engine;

namespace {

constexpr int kExitFailedRuns = 1;
constexpr int kExitBadInput = 2;

// Speed hygiene that must happen before the first tensor exists (DESIGN.md section 4):
// keep LibTorch's large buffers in the heap instead of mmap/munmap on every free, and
// keep OpenBLAS single-threaded (runs parallelise across cores instead).
void tune_process() {
  mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);  // glibc's maximum on 64-bit
  mallopt(M_TRIM_THRESHOLD, 256 * 1024 * 1024);
  using SetThreads = void (*)(int);
  if (auto f = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) f(1);
}

void set_thread_budget(int threads) {
  at::set_num_threads(threads);
  at::set_num_interop_threads(1);
}

std::string describe_bounds(const mfglab_param& p) {
  std::string out = bounds_text(p);
  if (p.choices) out += (out.empty() ? "" : ", ") + std::string("one of ") + p.choices;
  return out;
}

nlohmann::json manifest_json(const LoadedPlugin& p) {
  const auto& m = *p.manifest;
  nlohmann::json params = nlohmann::json::array();
  for (uint32_t i = 0; i < m.param_count; ++i) {
    const auto& d = m.params[i];
    nlohmann::json j = {{"name", d.name}, {"type", d.type}, {"default", nlohmann::json::parse(d.default_json)},
                        {"doc", d.doc ? d.doc : ""}};
    if (!std::isnan(d.min)) j[d.min_exclusive ? "exclusive_min" : "min"] = d.min;
    if (!std::isnan(d.max)) j[d.max_exclusive ? "exclusive_max" : "max"] = d.max;
    if (d.choices) {
      nlohmann::json choices = nlohmann::json::array();
      std::string c = d.choices;
      size_t start = 0;
      while (start <= c.size()) {
        size_t bar = c.find('|', start);
        if (bar == std::string::npos) bar = c.size();
        choices.push_back(c.substr(start, bar - start));
        start = bar + 1;
      }
      j["choices"] = choices;
    }
    params.push_back(j);
  }
  // Fields that hold only for some parameter values: {"value": "parameterization = potential"}.
  nlohmann::json conditions = nlohmann::json::object();
  for (const auto& f : p.field_decls)
    if (!f.param.empty()) conditions[f.name] = f.condition();
  return {{"name", m.name}, {"kind", kind_name(m.kind)}, {"version", m.version}, {"description", m.description},
          {"fields", p.fields}, {"field_conditions", conditions}, {"file", p.file}, {"params", params},
          {"better", m.better ? nlohmann::json(m.better) : nlohmann::json(nullptr)}};
}

void print_problems(const PluginHost& host) {
  for (const auto& p : host.problems()) std::fprintf(stderr, "warning: %s\n", p.c_str());
}

int cmd_plugins(const PluginHost& host, const std::string& kind_filter, bool as_json) {
  std::optional<int32_t> kind;
  if (!kind_filter.empty()) {
    kind = parse_kind(kind_filter);
    if (!kind) {
      std::fprintf(stderr, "error: --kind '%s' is not a plugin kind (dataset, model, hamiltonian, regularizer, metric)\n", kind_filter.c_str());
      return kExitBadInput;
    }
  }
  print_problems(host);
  if (as_json) {
    nlohmann::json out = nlohmann::json::array();
    for (auto* p : host.plugins(kind)) out.push_back(manifest_json(*p));
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  for (auto* p : host.plugins(kind)) {
    const auto& m = *p->manifest;
    std::cout << fmt::format("{:<20} {:<12} {:<8} {}\n", m.name, kind_name(m.kind), m.version, m.description);
    std::string defaults;
    for (uint32_t i = 0; i < m.param_count; ++i) defaults += fmt::format(" {}={}", m.params[i].name, m.params[i].default_json);
    if (!defaults.empty()) std::cout << fmt::format("{:<20}  params:{}\n", "", defaults);
  }
  return 0;
}

// One line per setting of an engine section's schema (schema.h), nested objects as
// "optimizer.lr", in the layout of a plugin's parameters.
void print_settings(const nlohmann::json& section, const std::string& prefix) {
  for (const auto& [key, s] : section.at("properties").items()) {
    if (s.contains("properties")) {
      print_settings(s, prefix + key + ".");
      continue;
    }
    std::string type = s.value("type", "");
    if (s.contains("enum")) type = "string";
    if (s.contains("anyOf") || s.contains("$ref") || type == "array") type = type.empty() ? "json" : type;
    std::string bounds;
    auto add = [&](const std::string& text) { bounds += (bounds.empty() ? "" : ", ") + text; };
    if (s.contains("minimum")) add(fmt::format(">= {}", s.at("minimum").get<double>()));
    if (s.contains("exclusiveMinimum")) add(fmt::format("> {}", s.at("exclusiveMinimum").get<double>()));
    if (s.contains("maximum")) add(fmt::format("<= {}", s.at("maximum").get<double>()));
    if (s.contains("enum")) {
      std::string choices;
      for (const auto& c : s.at("enum")) choices += (choices.empty() ? "" : "|") + c.get<std::string>();
      add("one of " + choices);
    }
    const std::string def = s.contains("default") ? "default " + s.at("default").dump() : "no default";
    std::cout << fmt::format("  {:<24} {:<7} {}{}\n      {}\n", prefix + key, type, def,
                             bounds.empty() ? "" : "; " + bounds, s.value("description", ""));
  }
}

int cmd_describe(const PluginHost& host, const std::string& name) {
  print_problems(host);
  const LoadedPlugin* p = nullptr;
  try {
    p = host.find(name);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return kExitBadInput;
  }
  // The engine's own sections, unless a plugin has taken the name.
  if (!p && (name == "train" || name == "eval")) {
    const auto section = name == "train" ? train_settings_schema() : eval_settings_schema(host);
    std::cout << fmt::format("{} (the experiment's \"{}\" section, read by the engine)\n  {}\nsettings:\n", name, name,
                             name == "train" ? "the training loop; every key has a default"
                                             : "what is measured after training and how often");
    print_settings(section, "");
    return 0;
  }
  if (!p) {
    std::fprintf(stderr, "error: no plugin named '%s'%s (the engine's own settings: describe train, describe eval)\n",
                 name.c_str(), did_you_mean(name, host.names()).c_str());
    return kExitBadInput;
  }
  const auto& m = *p->manifest;
  std::cout << fmt::format("{} ({} plugin, version {})\n  {}\n  file: {}\n", m.name, kind_name(m.kind), m.version, m.description, p->file);
  if (!p->fields.empty())
    std::cout << fmt::format("  {}: {}\n", m.kind == MFGLAB_KIND_MODEL ? "provides" : "needs", p->describe_fields());
  if (m.better) std::cout << fmt::format("  better: {}\n", m.better);
  std::cout << (m.param_count ? "parameters:\n" : "parameters: none\n");
  for (uint32_t i = 0; i < m.param_count; ++i) {
    const auto& d = m.params[i];
    std::string bounds = describe_bounds(d);
    std::cout << fmt::format("  {:<16} {:<7} default {}{}\n      {}\n", d.name, d.type, d.default_json,
                             bounds.empty() ? "" : "; " + bounds, d.doc ? d.doc : "");
  }
  return 0;
}

int report_experiment_error(const ExperimentError& e) {
  for (const auto& line : e.lines) std::fprintf(stderr, "error: %s\n", line.c_str());
  return kExitBadInput;
}

int cmd_validate(const PluginHost& host, const std::string& file) {
  print_problems(host);
  try {
    auto ex = load_experiment(file, host);
    std::cout << fmt::format("{}: valid experiment '{}' with {} run(s)\n", file, ex.name, ex.runs.size());
    return 0;
  } catch (const ExperimentError& e) {
    return report_experiment_error(e);
  }
}

// Called by the stop-signal thread (running/stop_signals.h), not in a signal handler.
void on_stop_signal(int) { request_stop(); }

// A worker that cannot stop (a plugin stuck in a loop) ends by SIGALRM's default action.
void on_worker_stop_signal(int) {
  request_stop();
  ::alarm(30);
}

// A standby worker's run comes on stdin: the count of arguments, then each as its length
// and its bytes (worker_spawn.h). False at end of input: the worker was not needed.
bool read_assignment(std::vector<std::string>& args) {
  std::string line;
  if (!std::getline(std::cin, line) || line.empty()) return false;
  const size_t count = std::stoul(line);
  for (size_t i = 0; i < count; ++i) {
    if (!std::getline(std::cin, line)) return false;
    std::string arg(std::stoul(line), '\0');
    if (!std::cin.read(arg.data(), static_cast<std::streamsize>(arg.size()))) return false;
    args.push_back(std::move(arg));
  }
  return true;
}

std::string self_executable() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  if (ec) throw Error(fmt::format("cannot find the mfglab executable (/proc/self/exe): {}", ec.message()));
  return p.string();
}

int cmd_run(const PluginHost& host, const std::string& file, RunOptions options, bool quiet, MpiWorld* mpi) {
  options.executable = self_executable();
  if (mpi && mpi->size() > 1) return run_experiment_mpi(*mpi, host, file, options, quiet);
  print_problems(host);
  Experiment ex;
  try {
    ex = load_experiment(file, host);
  } catch (const ExperimentError& e) {
    return report_experiment_error(e);
  }
  if (options.jobs <= 0) options.jobs = std::min(static_cast<int>(ex.runs.size()), default_jobs(1, options.threads));
  warn_if_oversubscribed(options.jobs, options.threads);
  set_thread_budget(options.threads);
  const bool terminal = ::isatty(STDERR_FILENO) != 0;
  std::fprintf(stderr, "experiment '%s': %zu run(s), %d in parallel%s, %d thread(s) each, results in %s\n", ex.name.c_str(),
               ex.runs.size(), options.jobs, options.in_process ? " in this process" : "", options.threads,
               (fs::path(options.out_dir) / ex.name).c_str());
  options.experiment_text = read_file(file).value_or("");
  const size_t todo = runs_to_do(ex, host, options).size();
  // Workers the launcher started ahead: as many as will have a run, the others end now.
  Progress live(static_cast<int>(todo), terminal, quiet);
  std::vector<RunOutcome> outcomes;
  try {
    outcomes = run_experiment(ex, host, options, live);
  } catch (const Error& e) {  // the folder is locked by another run, or cannot be made
    live.finish();
    std::fprintf(stderr, "error: %s\n", e.what());
    return kExitBadInput;
  }
  return report_outcomes(outcomes, (fs::path(options.out_dir) / ex.name).string());
}

// Runs one finished run again from its own config.json into OUT and says whether its
// samples came out byte-identical.
int cmd_rerun(const PluginHost& host, const std::string& run_dir, RunOptions options, bool quiet) {
  const fs::path dir(run_dir);
  const std::string config_file = (dir / run_files::config).string();
  nlohmann::json config;
  try {
    if (!fs::is_regular_file(config_file)) throw Error("no such file (is " + run_dir + " a run directory?)");
    config = nlohmann::json::parse(read_file(config_file).value_or(""));
    if (!config.is_object() || !config.contains("name") || !config["name"].is_string() || !config.contains("seed") ||
        !config["seed"].is_number_unsigned())
      throw Error("expected a run's resolved configuration, with its \"name\" and \"seed\"");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s: %s\n", config_file.c_str(), e.what());
    return kExitBadInput;
  }
  const nlohmann::json experiment = experiment_of_run(config);
  const std::string name = config["name"];
  const fs::path new_run = fs::path(options.out_dir) / name / fmt::format("seed={}", config["seed"].get<uint64_t>());
  if (fs::weakly_canonical(new_run) == fs::weakly_canonical(dir)) {
    std::fprintf(stderr, "error: --out %s would put the rerun into %s itself: choose another folder\n",
                 options.out_dir.c_str(), run_dir.c_str());
    return kExitBadInput;
  }
  const std::string file = (fs::path(options.out_dir) / (name + ".rerun.json")).string();
  try {
    fs::create_directories(options.out_dir);
    write_json_atomic(file, experiment);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return kExitBadInput;
  }
  std::fprintf(stderr, "rerun of %s from its config.json (experiment file %s)\n", run_dir.c_str(), file.c_str());
  const int code = cmd_run(host, file, options, quiet, nullptr);
  if (code != 0) return code;
  const std::string before = (dir / run_files::samples).string(), after = (new_run / run_files::samples).string();
  if (!fs::is_regular_file(before)) {
    std::cout << fmt::format("{} has no samples.npy to compare with (it did not finish)\n", run_dir);
    return kExitFailedRuns;
  }
  if (read_file(before).value_or("") == read_file(after).value_or("")) {
    std::cout << fmt::format("samples.npy: byte-identical to {}\n", before);
    return 0;
  }
  std::string how;
  try {
    const auto a = load_samples(before), b = load_samples(after);
    how = a.sizes() == b.sizes() ? fmt::format("largest difference {:.3g}", (a - b).abs().max().item<double>())
                                 : "different shapes";
  } catch (const std::exception& e) {
    how = e.what();
  }
  std::cout << fmt::format("samples.npy: DIFFERS from {} ({})\n", before, how);
  return kExitFailedRuns;
}

// Evaluates each run again with other evaluation settings, into RUN@<settings> beside it.
int cmd_evaluate(const PluginHost& host, const std::vector<std::string>& dirs, EvaluateRequest request) {
  print_problems(host);
  set_thread_budget(request.threads);
  int failed = 0;
  for (const auto& dir : dirs) {
    request.run_dir = dir;
    Progress quiet_progress(1, false, true);
    RunOutcome outcome;
    try {
      outcome = evaluate_run(host, request, quiet_progress);
    } catch (const ExperimentError& e) {
      return report_experiment_error(e);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      return kExitBadInput;
    }
    if (outcome.status != "ok") {
      std::fprintf(stderr, "error: %s: %s\n", outcome.dir.c_str(), outcome.error.c_str());
      ++failed;
      continue;
    }
    // The new metrics beside the run's own.
    nlohmann::json before = nlohmann::json::object(), after = nlohmann::json::object();
    try {
      before = read_json_file((fs::path(dir) / run_files::summary).string()).value("metrics", nlohmann::json::object());
    } catch (const std::exception&) {
    }
    after = read_json_file((fs::path(outcome.dir) / run_files::summary).string()).value("metrics", nlohmann::json::object());
    std::cout << fmt::format("{}\n", outcome.dir);
    for (const auto& [name, value] : after.items())
      std::cout << fmt::format("  {:<24} {:>14}  (the run: {})\n", name, value.dump(),
                               before.contains(name) ? before[name].dump() : "n/a");
  }
  return failed ? kExitFailedRuns : 0;
}

int cmd_compare(const std::vector<std::string>& dirs, bool csv, bool as_json, const std::string& png,
                const std::string& draw, const CompareOptions& options) {
  if (csv && options.per_seed && !options.baseline.empty()) {
    std::fprintf(stderr, "error: --csv prints one table: give --per-seed or --baseline, not both\n");
    return kExitBadInput;
  }
  try {
    auto rows = collect_runs(dirs);
    // Each output is made whole before anything is printed: a bad baseline prints only the error.
    if (as_json) std::cout << format_json(rows, options).dump(2) << "\n";
    else if (csv) std::cout << format_csv(rows, options);
    else std::cout << format_table(rows, options);
    if (!png.empty()) {
      plot_compare(dirs, png, draw == "trajectories" ? CompareView::trajectories : CompareView::samples);
      std::fprintf(stderr, "wrote %s\n", png.c_str());
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return kExitBadInput;
  }
}

// Draws the figures of every run found under the paths; a missing path is bad input.
int cmd_plot(const std::vector<std::string>& paths) {
  std::vector<std::string> dirs;
  try {
    dirs = find_run_dirs(paths);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return kExitBadInput;
  }
  int failed = 0;
  for (const auto& dir : dirs) {
    try {
      std::string names;
      for (const auto& f : plot_run(dir)) names += " " + fs::path(f.path).filename().string();
      std::cout << fmt::format("{}:{}\n", dir, names.empty() ? " nothing to draw" : names);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      ++failed;
    }
  }
  return failed ? kExitFailedRuns : 0;
}

int cmd_metric(const PluginHost& host, const std::string& name, const std::string& samples_file,
               const std::string& data_file, const std::string& params_text, uint64_t seed, bool as_json) {
  print_problems(host);
  nlohmann::json params = nlohmann::json::object();
  if (!params_text.empty()) {
    try {
      params = nlohmann::json::parse(params_text);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: --params is not valid JSON: %s\n", e.what());
      return kExitBadInput;
    }
  }
  set_thread_budget(1);
  try {
    const LoadedPlugin* p = host.find(name);
    if (!p) throw Error(fmt::format("no metric plugin named '{}'{}", name, did_you_mean(name, host.names(MFGLAB_KIND_METRIC))));
    std::vector<ParamError> errs;
    resolve_params(*p->manifest, params, errs);
    if (!errs.empty()) throw Error(fmt::format("--params{}: {}", errs[0].path, errs[0].message));
    auto samples = load_samples(samples_file);
    auto data = load_samples(data_file);
    if (samples.size(1) != data.size(1))
      throw Error(fmt::format("{} has dimension {} but {} has dimension {}", samples_file, samples.size(1), data_file, data.size(1)));
    RunContext ctx;
    ctx.generator = at::make_generator<at::CPUGeneratorImpl>(seed);
    ctx.dtype = torch::kFloat64;
    ctx.seed = seed;
    ctx.data_dim = samples.size(1);
    auto metric = host.create_as<Metric>(name, MFGLAB_KIND_METRIC, params, ctx);
    MetricInput in;
    in.samples = samples;
    in.reference = data;
    auto values = metric->evaluate(in);
    nlohmann::json out = nlohmann::json::object();
    for (const auto& [k, v] : values) out[k] = std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
    if (as_json) std::cout << out.dump() << "\n";
    else
      for (const auto& [k, v] : values) std::cout << fmt::format("{}: {:.8g}\n", k, v);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return kExitBadInput;
  }
}

}  // namespace

int mfglab_main(int argc, char** argv, const ForkServer* fork_server) {
  tune_process();
  if (fork_server) adopt_fork_server(*fork_server);
  bool standby = argc == 3 && std::string(argv[1]) == "worker" && std::string(argv[2]) == "--standby";
  if (argc == 3 && std::string(argv[1]) == "worker" && std::string(argv[2]) == "--fork-server") {
    if (!serve_forks()) return 0;
    standby = true;  // a worker the server forked: its run comes on stdin
    // `ps` shows it as `mfglab worker --forked`, not as a second server (same memory: shorter).
    std::memset(argv[2], 0, std::strlen(argv[2]));
    std::memcpy(argv[2], "--forked", 8);
  }
  // A worker started ahead of its run reads its arguments from stdin.
  std::vector<std::string> assigned_args;
  std::vector<char*> assigned_argv;
  if (standby) {
    assigned_args.emplace_back(argv[0]);
    try {
      if (!read_assignment(assigned_args)) return 0;
    } catch (const std::exception&) {
      std::fprintf(stderr, "error: a worker's assignment on stdin is unreadable\n");
      return kExitBadInput;
    }
    for (auto& a : assigned_args) assigned_argv.push_back(a.data());
    argc = static_cast<int>(assigned_argv.size());
    assigned_argv.push_back(nullptr);
    argv = assigned_argv.data();
  }

  CLI::App app{"mfglab: a mean-field-game laboratory for generative modeling"};
  app.require_subcommand(1);
  app.set_version_flag("--version", version_line());
  std::vector<std::string> plugin_dirs;
  app.add_option("--plugin-dir", plugin_dirs, "extra folder to search for plugins (repeatable)")->check(CLI::ExistingDirectory);

  auto* plugins = app.add_subcommand("plugins", "list plugins (reads manifests only)");
  std::string kind;
  bool plugins_json = false;
  plugins->add_option("--kind", kind, "dataset | model | hamiltonian | regularizer | metric");
  plugins->add_flag("--json", plugins_json, "print a JSON array");

  auto* describe = app.add_subcommand("describe", "show one plugin's parameters, or the engine's 'train' or 'eval' settings");
  std::string describe_name;
  describe->add_option("name", describe_name, "plugin name")->required();

  auto* validate = app.add_subcommand("validate", "check an experiment file; writes nothing");
  std::string validate_file;
  validate->add_option("file", validate_file, "experiment JSON")->required();

  auto* schema = app.add_subcommand("schema", "print a JSON Schema of experiment files, built from the installed plugins");

  auto* run = app.add_subcommand("run", "run an experiment: seeds x sweep, in parallel");
  std::string run_file;
  RunOptions options;
  options.jobs = 0;
  bool quiet = false;
  run->add_option("file", run_file, "experiment JSON")->required();
  run->add_option("--out", options.out_dir, "results root (runs go to OUT/<experiment>/<run-id>)")->capture_default_str();
  run->add_option("--jobs", options.jobs, "runs in parallel (default: min(runs, cores this process may use / threads))")->check(CLI::Range(1, 1024));
  run->add_option("--threads", options.threads, "intra-op threads per run")->capture_default_str()->check(CLI::Range(1, 256));
  run->add_flag("--force", options.force, "rerun runs that already finished");
  run->add_flag("--quiet", quiet, "no progress output");
  bool no_plots = false;
  run->add_flag("--no-plots", no_plots, "do not draw samples.png and losses.png into each run directory");
  run->add_flag("--in-process", options.in_process, "run every run inside this process (no isolation; for debuggers)");
  run->add_option("--time-limit", options.time_limit, "wall-clock limit per run in seconds (overrides train.time_limit)")
      ->check(CLI::PositiveNumber);
  std::string run_memory;
  run->add_option("--run-memory", run_memory, "memory limit per run, e.g. 4G or 512M (overrides train.memory_limit)");

  auto* rerun = app.add_subcommand("rerun", "run one run again from its config.json; says whether its samples are byte-identical");
  std::string rerun_dir;
  RunOptions rerun_options;
  rerun->add_option("run_dir", rerun_dir, "a run directory (holding config.json)")->required()->check(CLI::ExistingDirectory);
  rerun->add_option("--out", rerun_options.out_dir, "results root of the new run (never the run's own)")->required();
  rerun->add_option("--threads", rerun_options.threads, "intra-op threads")->capture_default_str()->check(CLI::Range(1, 256));
  rerun->add_flag("--in-process", rerun_options.in_process, "run inside this process (no isolation; for debuggers)");
  bool rerun_quiet = false;
  rerun->add_flag("--quiet", rerun_quiet, "no progress output");

  auto* evaluate = app.add_subcommand("evaluate", "sample and measure trained runs again with other evaluation settings, "
                                                  "into RUN@<settings> beside each run (no training)");
  std::vector<std::string> evaluate_dirs;
  EvaluateRequest evaluate_request;
  evaluate->add_option("run_dirs", evaluate_dirs, "run directories (holding config.json and checkpoint.pt)")->required();
  evaluate->add_option("--set", evaluate_request.settings,
                       "KEY=VALUE: eval.samples, eval.metrics (JSON) or model.params.NAME for a parameter the model "
                       "declares evaluation-time (repeatable)")
      ->allow_extra_args(false);
  evaluate->add_flag("--force", evaluate_request.force, "replace an earlier evaluation with the same settings");
  bool evaluate_no_plots = false;
  evaluate->add_flag("--no-plots", evaluate_no_plots, "do not draw the figures");
  evaluate->add_option("--threads", evaluate_request.threads, "intra-op threads")->capture_default_str()->check(CLI::Range(1, 256));

  // A run in a process of its own: started by `run`, never by hand.
  auto* worker = app.add_subcommand("worker", "");
  worker->group("");
  WorkerRequest worker_request;
  worker->add_option("file", worker_request.experiment_file)->required();
  worker->add_option("--run-index", worker_request.run_index)->required();
  worker->add_option("--slot", worker_request.slot);
  worker->add_option("--out", worker_request.out_dir)->required();
  worker->add_option("--threads", worker_request.threads)->check(CLI::Range(1, 256));
  worker->add_flag("--force", worker_request.force);
  std::vector<std::string> worker_plugin_files;
  worker->add_option("--plugin-file", worker_plugin_files);
  bool worker_no_plots = false;
  worker->add_flag("--no-plots", worker_no_plots);
  int64_t worker_memory_limit = 0;
  worker->add_option("--memory-limit", worker_memory_limit);

  auto* compare = app.add_subcommand("compare", "table of runs: one row per configuration, mean ± std over seeds");
  std::vector<std::string> compare_dirs;
  bool compare_csv = false, compare_json = false;
  CompareOptions compare_options;
  compare->add_option("dirs", compare_dirs, "run, experiment or results folders")->required();
  auto* csv_flag = compare->add_flag("--csv", compare_csv, "print CSV");
  compare->add_flag("--json", compare_json, "print JSON")->excludes(csv_flag);
  compare->add_option("--baseline", compare_options.baseline,
                      "paired statistics of every configuration against this one, seed by seed: a variant name or "
                      "a configuration label");
  compare->add_flag("--per-seed", compare_options.per_seed, "also show every run's values");
  std::string compare_png;
  auto* png_option = compare->add_option("--png", compare_png, "also draw a grid of samples, one panel per configuration, into this PNG");
  std::string compare_draw = "samples";
  compare->add_option("--draw", compare_draw, "what the --png panels show: samples (over held-out data) or trajectories "
                      "(each run's trajectories.npy)")
      ->check(CLI::IsMember({"samples", "trajectories"}))
      ->needs(png_option);

  auto* report = app.add_subcommand("report", "one self-contained HTML page comparing the runs under the given folders");
  std::vector<std::string> report_dirs;
  std::string report_out;
  CompareOptions report_options;
  report->add_option("dirs", report_dirs, "run, experiment or results folders")->required();
  report->add_option("--out", report_out, "the HTML file to write")->required();
  report->add_option("--baseline", report_options.baseline, "add paired statistics against this configuration (as compare)");

  auto* plot = app.add_subcommand("plot", "draw the figures of runs (samples.png, losses.png, ...) into their directories");
  std::vector<std::string> plot_dirs;
  plot->add_option("dirs", plot_dirs, "run directories, or folders containing them")->required();

  auto* metric = app.add_subcommand("metric", "compute a metric plugin on two sample files (.npy or .csv)");
  std::string metric_name, samples_file, data_file, params_text;
  uint64_t metric_seed = 0;
  bool metric_json = false;
  metric->add_option("name", metric_name, "metric plugin")->required();
  metric->add_option("--samples", samples_file, "generated samples")->required()->check(CLI::ExistingFile);
  metric->add_option("--data", data_file, "reference data")->required()->check(CLI::ExistingFile);
  metric->add_option("--params", params_text, "plugin parameters as a JSON object");
  metric->add_option("--seed", metric_seed, "seed for randomised metrics")->capture_default_str();
  metric->add_flag("--json", metric_json, "print one JSON object");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitBadInput;
  }

  // Ctrl-C stops `run` and `rerun` cleanly: each run saves a checkpoint and the next `run`
  // resumes it. Other commands simply end.
  if (*run || *rerun) watch_stop_signals(on_stop_signal);
  else if (*worker) watch_stop_signals(on_worker_stop_signal);
  else restore_stop_signals();
  if (*run) {
    if (!run_memory.empty()) {
      // The same sizes as train.memory_limit: bytes, or "512M", "1.5G", ...
      const bool digits = run_memory.find_first_not_of("0123456789") == std::string::npos;
      const auto bytes = digits && run_memory.size() < 19 ? memory_size(nlohmann::json(std::stoull(run_memory)))
                                                         : memory_size(nlohmann::json(run_memory));
      if (!bytes) {
        std::fprintf(stderr, "error: --run-memory: '%s' is not a size (bytes, or a number with K, M, G or T)\n",
                     run_memory.c_str());
        return kExitBadInput;
      }
      options.memory_limit = *bytes;
    }
  }
  if (*worker) {
    if (worker_memory_limit > 0) {  // before the run allocates anything
      const rlimit rl{static_cast<rlim_t>(worker_memory_limit), static_cast<rlim_t>(worker_memory_limit)};
      ::setrlimit(RLIMIT_AS, &rl);
    }
  }
  // Under mpirun or srun, `run` spreads its runs over the ranks (mpi_sweep.h).
  std::unique_ptr<MpiWorld> mpi;
  if (*run && MpiWorld::launched()) mpi = std::make_unique<MpiWorld>(&argc, &argv);
  try {
    if (*worker) {
      set_thread_budget(worker_request.threads);
      worker_request.plots = !worker_no_plots;
      auto host = worker_plugin_files.empty() ? std::make_unique<PluginHost>(PluginHost::search_path(plugin_dirs))
                                              : PluginHost::of_files(worker_plugin_files);
      const int code = worker_main(*host, worker_request);
      // Everything the run wrote is closed and its outcome reported: tearing down LibTorch
      // and the plugins would only keep the parent waiting.
      std::cout.flush();
      std::fflush(nullptr);
      ::_exit(code);
    }
    PluginHost host(PluginHost::search_path(plugin_dirs));
    if (*plugins) return cmd_plugins(host, kind, plugins_json);
    if (*describe) return cmd_describe(host, describe_name);
    if (*validate) return cmd_validate(host, validate_file);
    if (*schema) {
      print_problems(host);
      std::cout << experiment_schema(host).dump(2) << "\n";
      return 0;
    }
    if (*run) {
      options.plots = !no_plots;
      return cmd_run(host, run_file, options, quiet, mpi.get());
    }
    if (*rerun) {
      rerun_options.jobs = 1;
      return cmd_rerun(host, rerun_dir, rerun_options, rerun_quiet);
    }
    if (*evaluate) {
      evaluate_request.plots = !evaluate_no_plots;
      return cmd_evaluate(host, evaluate_dirs, evaluate_request);
    }
    if (*compare) return cmd_compare(compare_dirs, compare_csv, compare_json, compare_png, compare_draw, compare_options);
    if (*report) {
      try {
        write_file_atomic(report_out, make_report(report_dirs, report_options));
      } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return kExitBadInput;
      }
      std::fprintf(stderr, "wrote %s\n", report_out.c_str());
      return 0;
    }
    if (*plot) return cmd_plot(plot_dirs);
    if (*metric) return cmd_metric(host, metric_name, samples_file, data_file, params_text, metric_seed, metric_json);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return kExitFailedRuns;
  }
  return 0;
}
