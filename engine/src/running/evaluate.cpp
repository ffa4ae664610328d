#include "running/evaluate.h"

#include <algorithm>
#include <filesystem>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <mfglab/evaluation.h>

#include "experiment.h"
#include "plugin_host.h"
#include "results.h"
#include "running/assemble.h"
#include "running/run_directory.h"

namespace fs = std::filesystem;

namespace mfglab::engine {

namespace {

// Evaluation settings anybody may change; a model's own come from its capability.
bool is_eval_setting(const std::string& key) { return key == "eval.samples" || key == "eval.metrics"; }
constexpr const char* kModelParams = "model.params.";

// The folder name's part after '@': "sample_steps=100,samples=10000", safe as a file name.
std::string settings_label(const std::vector<std::pair<std::string, nlohmann::json>>& settings) {
  std::string label;
  for (const auto& [key, value] : settings) {
    const std::string name = key.substr(key.rfind('.') + 1);
    std::string shown = value.is_string() ? value.get<std::string>() : value.dump();
    label += (label.empty() ? "" : ",") + name + "=" + shown;
  }
  if (label.empty()) label = "evaluated";
  for (char& c : label)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || std::string("=,.+-_").find(c) != std::string::npos)) c = '_';
  if (label.size() > 100) label = label.substr(0, 80) + fmt::format("~{:08x}", fnv1a64(label) & 0xffffffffu);
  return label;
}

// Plugins built only to be asked about their parameters say nothing.
class SilentLogger final : public Logger {
 public:
  void info(const std::string&) override {}
  void warn(const std::string&) override {}
};

}  // namespace

nlohmann::json experiment_of_run(const nlohmann::json& config) {
  nlohmann::json experiment = {{"seeds", {config.at("seed")}}};
  for (const char* key : {"name", "description", "dtype", "dataset", "model", "hamiltonian", "regularizers", "train", "eval"})
    if (config.contains(key)) experiment[key] = config[key];
  if (experiment.contains("eval") && experiment["eval"].is_object()) experiment["eval"].erase("skipped_metrics");
  return experiment;
}

RunOutcome evaluate_run(const PluginHost& host, const EvaluateRequest& request, ProgressSink& progress) {
  fs::path run = fs::path(request.run_dir).lexically_normal();
  if (run.filename().empty()) run = run.parent_path();  // "RUN/": the new folder goes beside RUN, never into it
  const std::string config_file = (run / run_files::config).string();
  const std::string checkpoint = (run / run_files::checkpoint).string();
  if (!fs::is_regular_file(config_file)) throw Error(fmt::format("{}: no config.json: not a run directory", request.run_dir));
  if (!fs::is_regular_file(checkpoint))
    throw Error(fmt::format("{}: no checkpoint.pt: the run trained nothing that could be evaluated", request.run_dir));
  nlohmann::json config;
  try {
    config = read_json_file(config_file);
    if (!config.is_object() || !config.contains("seed") || !config["seed"].is_number_unsigned() || !config.contains("model"))
      throw Error("expected a run's resolved configuration");
  } catch (const std::exception& e) {
    throw Error(fmt::format("{}: {}", config_file, e.what()));
  }

  // --set KEY=VALUE: VALUE is JSON when it parses as JSON, else a string.
  std::vector<std::pair<std::string, nlohmann::json>> settings;
  std::vector<std::string> model_params;
  for (const auto& s : request.settings) {
    const size_t eq = s.find('=');
    if (eq == std::string::npos || eq == 0) throw Error(fmt::format("--set '{}': expected KEY=VALUE", s));
    const std::string key = s.substr(0, eq);
    auto value = nlohmann::json::parse(s.substr(eq + 1), nullptr, false);
    if (value.is_discarded()) value = s.substr(eq + 1);
    const bool model_param = key.rfind(kModelParams, 0) == 0 && key.size() > std::string(kModelParams).size() &&
                             key.find('.', std::string(kModelParams).size()) == std::string::npos;
    if (!is_eval_setting(key) && !model_param)
      throw Error(fmt::format("--set {}: evaluate changes only eval.samples, eval.metrics and the model's evaluation-time "
                              "parameters (model.params.NAME); this setting would change what was trained", key));
    if (model_param) {
      model_params.push_back(key.substr(std::string(kModelParams).size()));
      config["model"]["params"][model_params.back()] = value;
    } else {
      config["eval"][key.substr(5)] = value;
    }
    settings.emplace_back(key, value);
  }
  const Experiment ex = parse_experiment(experiment_of_run(config).dump(2), config_file, host);
  RunSpec spec = ex.runs.at(0);

  if (!model_params.empty()) {
    // Only what the model declares as read by sampling alone (mfglab/evaluation.h).
    RunContext ctx;
    ctx.generator = at::make_generator<at::CPUGeneratorImpl>(spec.seed);
    ctx.dtype = spec.dtype == "float64" ? torch::kFloat64 : torch::kFloat32;
    ctx.seed = spec.seed;
    SilentLogger silent;
    ctx.logger = &silent;
    RunObjects objects = assemble(spec, host, ctx);
    auto* declared = capability<EvaluationParams>(objects.model.get(), kEvaluationParams);
    const std::vector<std::string> allowed = declared ? declared->evaluation_params() : std::vector<std::string>{};
    for (const auto& name : model_params)
      if (std::find(allowed.begin(), allowed.end(), name) == allowed.end())
        throw Error(fmt::format("--set model.params.{}: this parameter of model '{}' would change the trained model; {}",
                                name, spec.model.plugin,
                                allowed.empty() ? "the model declares no evaluation-time parameters"
                                                : "its evaluation-time parameters are " + fmt::format("{}", fmt::join(allowed, ", "))));
  }

  const std::string label = settings_label(settings);
  const std::string folder = run.filename().string() + "@" + label;
  const fs::path dir = run.parent_path() / folder;
  if (fs::exists(dir / run_files::summary) && !request.force)
    throw Error(fmt::format("{} holds an earlier evaluation with these settings; --force replaces it", dir.string()));
  spec.run_id = folder;
  spec.label += "@" + label;  // its own row in `mfglab compare`, beside the trained runs
  TrainOptions options;
  options.results_root = run.parent_path().string();
  options.threads = request.threads;
  options.resume = false;
  options.plots = request.plots;
  options.weights_from = checkpoint;
  return run_one(spec, host, dir.string(), options, progress);
}

}  // namespace mfglab::engine
