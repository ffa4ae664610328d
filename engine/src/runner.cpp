#include "runner.h"

#include <algorithm>
#include <atomic>
#include <sstream>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <map>
#include <mutex>
#include <numeric>

#include <fmt/format.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>
#include <torch/optim.h>
#include <torch/serialize.h>
#include <torch/nn/utils/clip_grad.h>

#include "mfglab/sdk.h"
#include "fused_adam.h"
#include "gemm_backend.h"
#include "plot.h"
#include "model_arrays.h"
#include "plugin_host.h"
#include "progress.h"
#include "results.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace mfglab::engine {

namespace {

std::atomic<bool> g_stop{false};

struct Interrupted : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Sends plugin messages to the run's log file and the console.
class RunLogger final : public Logger {
 public:
  RunLogger(const std::string& path, std::string run_id, Progress& progress)
      : out_(path, std::ios::app), run_id_(std::move(run_id)), progress_(progress) {}
  void info(const std::string& m) override { write("info", m); }
  void warn(const std::string& m) override {
    write("warn", m);
    progress_.message(fmt::format("[run {}] warning: {}", run_id_, m));
  }

 private:
  void write(const char* level, const std::string& m) {
    std::lock_guard<std::mutex> lock(mutex_);
    out_ << level << ": " << m << "\n";
    out_.flush();
  }
  std::mutex mutex_;
  std::ofstream out_;
  std::string run_id_;
  Progress& progress_;
};

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double learning_rate(const TrainConfig& t, int64_t it) {
  if (t.schedule == "step") return t.lr * std::pow(t.gamma, static_cast<double>(it / t.step_size));
  if (t.schedule == "exponential") return t.lr * std::pow(t.gamma, static_cast<double>(it));
  if (t.schedule == "cosine") {
    const double frac = t.iterations > 0 ? static_cast<double>(it) / t.iterations : 0.0;
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + std::cos(M_PI * frac));
  }
  return t.lr;
}

nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

// Everything a run creates, in creation order (destroyed in reverse: metrics before the
// model, the model before the Hamiltonian it may hold).
struct RunObjects {
  std::unique_ptr<Dataset> dataset;
  std::unique_ptr<Hamiltonian> hamiltonian;
  std::unique_ptr<Model> model;
  std::vector<std::unique_ptr<Regularizer>> regularizers;
  std::vector<std::unique_ptr<Metric>> metrics;
};

// Evaluates all metrics on fresh samples; names are "<label or value name>".
// A metric that throws (an ODE that diverges on a poor model, say) does not discard the
// others or the trained model: its value is null and its message goes into `errors`.
nlohmann::json evaluate(const RunSpec& spec, RunObjects& o, const torch::Tensor& samples,
                        const torch::Tensor& train, const torch::Tensor& test,
                        std::map<std::string, std::string>& errors) {
  nlohmann::json out = nlohmann::json::object();
  MetricInput in;
  in.samples = samples;
  in.reference = test;
  in.train = train;
  in.model = o.model.get();
  in.dataset = o.dataset.get();
  for (size_t i = 0; i < o.metrics.size(); ++i) {
    const auto& use = spec.eval.metrics[i];
    MetricValues values;
    try {
      values = o.metrics[i]->evaluate(in);
    } catch (const std::exception& e) {
      const std::string key = use.label.empty() ? use.plugin : use.label;
      if (out.contains(key)) throw Error(fmt::format("two metrics report a value named '{}': give one a \"label\"", key));
      out[key] = nullptr;
      errors[key] = fmt::format("metric '{}' failed: {}", use.plugin, e.what());
      continue;
    }
    for (const auto& [name, value] : values) {
      std::string key = use.label.empty() ? name : (values.size() == 1 ? use.label : use.label + "." + name);
      if (out.contains(key)) throw Error(fmt::format("two metrics report a value named '{}': give one a \"label\"", key));
      out[key] = number_or_null(value);
    }
  }
  return out;
}

// Everything needed to continue a run exactly where it stopped: parameters, optimizer
// state, the generator, the batch order, and a fingerprint of the configuration.
struct Checkpoint {
  int64_t iteration = 0;
  torch::Tensor order;
  int64_t cursor = 0;
};

uint64_t fingerprint(const std::string& text) {  // FNV-1a: stable across builds
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  return h;
}

void save_checkpoint(const std::string& dir, const std::vector<torch::Tensor>& params, torch::optim::Optimizer* optimizer,
                     const Checkpoint& state, torch::Generator& gen, uint64_t config_fingerprint) {
  torch::serialize::OutputArchive archive;
  for (size_t i = 0; i < params.size(); ++i) archive.write(fmt::format("param_{}", i), params[i].detach());
  if (optimizer) {
    torch::serialize::OutputArchive opt;
    optimizer->save(opt);
    archive.write("optimizer", opt);
  }
  archive.write("iteration", torch::tensor(state.iteration));
  archive.write("cursor", torch::tensor(state.cursor));
  archive.write("order", state.order.defined() ? state.order : torch::empty({0}, torch::kLong));
  archive.write("generator_state", gen.get_state());
  archive.write("config_fingerprint", torch::tensor(static_cast<int64_t>(config_fingerprint)));
  const std::string path = dir + "/checkpoint.pt";
  archive.save_to(path + ".tmp");
  fs::rename(path + ".tmp", path);
}

// Restores a checkpoint written for the same configuration; false when there is none
// (or it belongs to another configuration).
bool load_checkpoint(const std::string& dir, const std::vector<torch::Tensor>& params, torch::optim::Optimizer* optimizer,
                     Checkpoint& state, torch::Generator& gen, uint64_t config_fingerprint) {
  const std::string path = dir + "/checkpoint.pt";
  if (!fs::exists(path)) return false;
  torch::serialize::InputArchive archive;
  archive.load_from(path);
  // A fresh tensor per read: reading into a loaded tensor would try to resize its storage.
  auto read = [&](const std::string& key) {
    torch::Tensor t;
    archive.read(key, t);
    return t;
  };
  torch::Tensor t = read("config_fingerprint");
  if (static_cast<uint64_t>(t.item<int64_t>()) != config_fingerprint) return false;
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) {
    params[i].copy_(read(fmt::format("param_{}", i)));
  }
  if (optimizer) {
    torch::serialize::InputArchive opt;
    archive.read("optimizer", opt);
    optimizer->load(opt);
  }
  state.iteration = read("iteration").item<int64_t>();
  state.cursor = read("cursor").item<int64_t>();
  state.order = read("order").clone();
  if (state.order.numel() == 0) state.order = torch::Tensor();
  gen.set_state(read("generator_state"));
  return true;
}

std::string csv_line(const std::vector<std::string>& cells) {
  std::string out;
  for (const auto& c : cells) out += (out.empty() ? "" : ",") + c;
  return out + "\n";
}

}  // namespace

void request_stop() { g_stop.store(true); }
bool stop_requested() { return g_stop.load(); }

RunOutcome run_one(const RunSpec& spec, const PluginHost& host, const std::string& dir, int threads,
                   bool resume, int run_index, Progress& progress, bool plots) {
  RunOutcome outcome{spec.run_id, dir, "failed", ""};
  nlohmann::json summary = {{"experiment", spec.experiment}, {"run_id", spec.run_id}, {"label", spec.label},
                            {"seed", spec.seed}, {"status", "failed"}, {"iterations", 0},
                            {"iterations_planned", spec.train.iterations}, {"metrics", nlohmann::json::object()},
                            {"error", nullptr}};
  int64_t iteration = 0;
  std::string losses_csv;
  const auto run_start = Clock::now();
  progress.set_run(run_index, spec.run_id, spec.train.iterations);
  try {
    fs::create_directories(dir);
    fs::remove(dir + "/summary.json");
    if (!resume) {
      fs::remove(dir + "/log.txt");
      fs::remove(dir + "/checkpoint.pt");
      fs::remove(dir + "/evals.json");
    }
    RunLogger logger(dir + "/log.txt", spec.run_id, progress);

    RunContext ctx;
    ctx.generator = at::make_generator<at::CPUGeneratorImpl>(spec.seed);
    ctx.dtype = spec.dtype == "float64" ? torch::kFloat64 : torch::kFloat32;
    ctx.threads = threads;
    ctx.output_dir = dir;
    ctx.logger = &logger;
    ctx.seed = spec.seed;

    // Resolved configuration, with every plugin's defaults filled in.
    nlohmann::json config = spec.config;
    auto resolve_into = [&](nlohmann::json& use) {
      std::vector<ParamError> errs;
      use["params"] = resolve_params(*host.find(use.at("plugin").get<std::string>())->manifest,
                                     use.value("params", nlohmann::json::object()), errs);
    };
    for (const char* key : {"dataset", "model", "hamiltonian"})
      if (config.contains(key) && !config[key].is_null()) resolve_into(config[key]);
    if (config.contains("regularizers")) for (auto& r : config["regularizers"]) resolve_into(r);
    if (config.contains("eval") && config["eval"].contains("metrics")) for (auto& m : config["eval"]["metrics"]) resolve_into(m);
    write_json_atomic(dir + "/config.json", config);

    RunObjects o;
    auto stage = [&](const std::string& what, auto&& fn) {
      try {
        fn();
      } catch (const std::exception& e) {
        throw Error(fmt::format("{}: {}", what, e.what()));
      }
    };
    stage("dataset '" + spec.dataset.plugin + "'", [&] {
      o.dataset = host.create_as<Dataset>(spec.dataset.plugin, MFGLAB_KIND_DATASET, spec.dataset.params, ctx);
    });
    torch::Tensor train, test;
    stage("dataset '" + spec.dataset.plugin + "'", [&] {
      train = o.dataset->train().to(ctx.dtype).contiguous();
      test = o.dataset->test().to(ctx.dtype).contiguous();
      if (train.dim() != 2 || train.size(0) == 0) throw Error(fmt::format("train set must be a non-empty [N, d] tensor, got {}", c10::str(train.sizes())));
      if (test.dim() != 2 || test.size(1) != train.size(1)) throw Error("test set must be [M, d] with the train set's d");
    });
    ctx.data_dim = train.size(1);
    ctx.dataset = o.dataset.get();  // the model may use the dataset's capabilities (sgm's esm loss)
    if (spec.hamiltonian) {
      stage("hamiltonian '" + spec.hamiltonian->plugin + "'", [&] {
        o.hamiltonian = host.create_as<Hamiltonian>(spec.hamiltonian->plugin, MFGLAB_KIND_HAMILTONIAN, spec.hamiltonian->params, ctx);
      });
      ctx.hamiltonian = o.hamiltonian.get();
    }
    stage("model '" + spec.model.plugin + "'", [&] {
      o.model = host.create_as<Model>(spec.model.plugin, MFGLAB_KIND_MODEL, spec.model.params, ctx);
    });
    for (const auto& r : spec.regularizers)
      stage("regularizer '" + r.plugin + "'", [&] {
        o.regularizers.push_back(host.create_as<Regularizer>(r.plugin, MFGLAB_KIND_REGULARIZER, r.params, ctx));
      });
    for (const auto& m : spec.eval.metrics)
      stage("metric '" + m.plugin + "'", [&] {
        o.metrics.push_back(host.create_as<Metric>(m.plugin, MFGLAB_KIND_METRIC, m.params, ctx));
      });

    // ---- training: the engine owns the loop ------------------------------------------
    const auto& tc = spec.train;
    std::vector<torch::Tensor> params;
    stage("model '" + spec.model.plugin + "'", [&] { params = o.model->parameters(); });
    std::unique_ptr<torch::optim::Optimizer> optimizer;
    if (!params.empty() && tc.iterations > 0) {
      if (tc.optimizer == "sgd")
        optimizer = std::make_unique<torch::optim::SGD>(params, torch::optim::SGDOptions(tc.lr).momentum(tc.momentum).weight_decay(tc.weight_decay));
      else
        optimizer = std::make_unique<FusedAdam>(params, torch::optim::AdamOptions(tc.lr).betas({tc.beta1, tc.beta2}).weight_decay(tc.weight_decay));
    } else if (params.empty() && tc.iterations > 0) {
      throw Error(fmt::format("model '{}' has no trainable parameters but train.iterations is {}", spec.model.plugin, tc.iterations));
    }

    torch::Generator gen = ctx.generator;
    const int64_t n_train = train.size(0);
    Checkpoint state;
    state.cursor = n_train;  // forces a fresh permutation on the first batch
    auto next_batch = [&]() {
      if (tc.batch_size >= n_train) return train.index_select(0, torch::randint(n_train, {tc.batch_size}, gen, torch::kLong));
      if (state.cursor + tc.batch_size > n_train) state.order = torch::randperm(n_train, gen, torch::kLong), state.cursor = 0;
      auto idx = state.order.slice(0, state.cursor, state.cursor + tc.batch_size);
      state.cursor += tc.batch_size;
      return train.index_select(0, idx);
    };

    std::vector<std::string> term_names;
    std::vector<double> step_seconds;
    nlohmann::json evals = nlohmann::json::array();
    std::map<std::string, double> last_terms;
    const uint64_t config_fp = fingerprint(config.dump());

    // Resume an interrupted run: parameters, optimizer, generator and batch order come
    // from the checkpoint, the loss history up to it from losses.csv.
    int64_t start = 0;
    if (resume && tc.iterations > 0 && fs::exists(dir + "/losses.csv") &&
        load_checkpoint(dir, params, optimizer.get(), state, gen, config_fp)) {
      std::istringstream in(read_text_file(dir + "/losses.csv"));
      std::string line;
      std::getline(in, line);
      losses_csv = line + "\n";
      std::string cell;
      std::istringstream header(line);
      for (int col = 0; std::getline(header, cell, ','); ++col)
        if (col >= 3 && cell != "seconds") term_names.push_back(cell);
      for (int64_t i = 0; i < state.iteration && std::getline(in, line); ++i) {
        losses_csv += line + "\n";
        step_seconds.push_back(std::stod(line.substr(line.rfind(',') + 1)));
      }
      if (static_cast<int64_t>(step_seconds.size()) == state.iteration) {
        start = state.iteration;
        if (fs::exists(dir + "/evals.json")) evals = read_json_file(dir + "/evals.json");
        logger.info(fmt::format("resumed from the checkpoint at iteration {}", start));
        progress.message(fmt::format("[run {}] resuming at iteration {}", spec.run_id, start));
      } else {
        throw Error("losses.csv is shorter than the checkpoint; rerun with --force");
      }
    }
    for (iteration = start; iteration < tc.iterations; ++iteration) {
      if (stop_requested()) {
        write_file_atomic(dir + "/losses.csv", losses_csv);
        state.iteration = iteration;
        save_checkpoint(dir, params, optimizer.get(), state, gen, config_fp);
        throw Interrupted(fmt::format("interrupted at iteration {}; run again to resume", iteration));
      }
      const auto t0 = Clock::now();
      const double lr = learning_rate(tc, iteration);
      for (auto& group : optimizer->param_groups()) group.options().set_lr(lr);
      auto batch = next_batch();
      LossTerms terms;
      stage("model '" + spec.model.plugin + "' loss", [&] { terms = o.model->loss(batch); });
      for (size_t r = 0; r < o.regularizers.size(); ++r) {
        const auto& use = spec.regularizers[r];
        stage("regularizer '" + use.plugin + "'", [&] {
          terms.push_back({use.plugin, use.weight * o.regularizers[r]->penalty(*o.model, batch)});
        });
      }
      if (terms.empty()) throw Error(fmt::format("model '{}' returned no loss terms", spec.model.plugin));
      torch::Tensor total = torch::zeros({}, train.options());
      std::vector<double> values;
      for (const auto& term : terms) {
        if (!term.value.defined() || term.value.numel() != 1)
          throw Error(fmt::format("loss term '{}' is not a scalar", term.name));
        const double v = term.value.item<double>();
        if (!std::isfinite(v))
          throw Error(fmt::format("non-finite loss term '{}' ({}) at iteration {}", term.name, v, iteration + 1));
        values.push_back(v);
        total = total + term.value;
      }
      if (term_names.empty()) {
        for (const auto& term : terms) term_names.push_back(term.name);
        std::vector<std::string> header = {"iteration", "lr", "total"};
        header.insert(header.end(), term_names.begin(), term_names.end());
        header.push_back("seconds");
        losses_csv = csv_line(header);
      }
      optimizer->zero_grad();
      stage("backward pass", [&] { total.backward(); });
      if (tc.grad_clip > 0) torch::nn::utils::clip_grad_norm_(params, tc.grad_clip);
      optimizer->step();
      const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
      step_seconds.push_back(secs);

      const double total_v = std::accumulate(values.begin(), values.end(), 0.0);
      std::vector<std::string> row = {std::to_string(iteration + 1), fmt::format("{:.6g}", lr), fmt::format("{:.8g}", total_v)};
      for (size_t i = 0; i < values.size(); ++i) {
        row.push_back(fmt::format("{:.8g}", values[i]));
        last_terms[term_names.size() > i ? term_names[i] : terms[i].name] = values[i];
      }
      row.push_back(fmt::format("{:.6f}", secs));
      losses_csv += csv_line(row);

      const int64_t done = iteration + 1;
      const bool log_point = done % tc.log_every == 0 || done == tc.iterations;
      progress.iteration(run_index, done, total_v, log_point);
      if (log_point) write_file_atomic(dir + "/losses.csv", losses_csv);
      if (tc.checkpoint_every > 0 && done % tc.checkpoint_every == 0 && done < tc.iterations) {
        write_file_atomic(dir + "/losses.csv", losses_csv);
        state.iteration = done;
        save_checkpoint(dir, params, optimizer.get(), state, gen, config_fp);
      }
      if (spec.eval.every > 0 && done % spec.eval.every == 0 && done < tc.iterations && !o.metrics.empty()) {
        torch::Tensor s;
        stage("model '" + spec.model.plugin + "' sample", [&] { s = o.model->sample(spec.eval.samples); });
        std::map<std::string, std::string> errors;
        auto m = evaluate(spec, o, s, train, test, errors);
        for (const auto& [_, message] : errors) logger.warn(fmt::format("iteration {}: {}", done, message));
        if (!errors.empty()) m["metric_errors"] = errors;
        m["iteration"] = done;
        evals.push_back(m);
        write_json_atomic(dir + "/evals.json", evals);
      }
    }
    const double train_seconds = std::chrono::duration<double>(Clock::now() - run_start).count();
    if (tc.iterations > 0) {
      write_file_atomic(dir + "/losses.csv", losses_csv);
      state.iteration = iteration;
      save_checkpoint(dir, params, optimizer.get(), state, gen, config_fp);
    }

    // ---- evaluation -----------------------------------------------------------------
    const auto s0 = Clock::now();
    torch::Tensor samples;
    stage("model '" + spec.model.plugin + "' sample", [&] {
      samples = o.model->sample(spec.eval.samples).detach();
      if (samples.dim() != 2 || samples.size(0) != spec.eval.samples || samples.size(1) != ctx.data_dim)
        throw Error(fmt::format("expected [{}, {}] samples, got {}", spec.eval.samples, ctx.data_dim, c10::str(samples.sizes())));
      if (!torch::isfinite(samples).all().item<bool>()) throw Error("generated samples contain NaN or Inf");
    });
    const double sample_seconds = std::chrono::duration<double>(Clock::now() - s0).count();
    save_npy(dir + "/samples.npy", samples.to(ctx.dtype));
    // At most 4000 held-out points for figures.
    const auto figure_data = test.slice(0, 0, test.size(0), std::max<int64_t>(1, (test.size(0) + 3999) / 4000));
    save_npy(dir + "/data.npy", figure_data);
    std::map<std::string, std::string> metric_errors;
    auto metrics = evaluate(spec, o, samples, train, test, metric_errors);
    for (const auto& [_, message] : metric_errors) logger.warn(message);

    summary["status"] = "ok";
    summary["iterations"] = iteration;
    summary["train_seconds"] = train_seconds;
    summary["seconds_per_iteration"] = median(step_seconds);
    summary["sample_seconds"] = sample_seconds;
    summary["final_loss"] = last_terms;
    summary["metrics"] = metrics;
    if (!metric_errors.empty()) summary["metric_errors"] = metric_errors;
    summary["threads"] = threads;
    summary["float_gemm"] = gemm_backend();  // timings depend on it (gemm_backend.cpp)
    write_json_atomic(dir + "/summary.json", summary);
    if (plots) {
      // Figures are a convenience: a drawing failure must not fail a finished run.
      for (const auto& problem : write_model_arrays(*o.model, host.find(spec.model.plugin)->fields, figure_data, dir))
        logger.warn(problem);
      try {
        plot_run(dir);
      } catch (const std::exception& e) {
        logger.warn(fmt::format("figures not drawn: {}", e.what()));
      }
    }
    outcome.status = "ok";
    std::string brief;
    for (const auto& [k, v] : metrics.items()) brief += fmt::format("{}{}={}", brief.empty() ? "" : " ", k, v.dump());
    progress.run_finished(run_index, "ok", brief);
  } catch (const Interrupted& e) {
    // No summary: the run is not finished, and the next `run` resumes it.
    outcome.status = "interrupted";
    outcome.error = e.what();
    progress.run_finished(run_index, "interrupted", outcome.error);
  } catch (const std::exception& e) {
    outcome.error = e.what();
    summary["status"] = "failed";
    summary["iterations"] = iteration;
    summary["error"] = outcome.error;
    summary["train_seconds"] = std::chrono::duration<double>(Clock::now() - run_start).count();
    try {
      if (!losses_csv.empty()) write_file_atomic(dir + "/losses.csv", losses_csv);
      write_json_atomic(dir + "/summary.json", summary);
    } catch (const std::exception& e2) {
      outcome.error += fmt::format(" (and the summary could not be written: {})", e2.what());
    }
    progress.run_finished(run_index, "failed", outcome.error);
  }
  return outcome;
}

std::vector<RunOutcome> run_experiment(const Experiment& ex, const PluginHost& host, const RunOptions& options,
                                       Progress& progress) {
  std::vector<RunOutcome> outcomes(ex.runs.size());
  std::vector<size_t> todo;
  for (size_t i = 0; i < ex.runs.size(); ++i) {
    const std::string dir = (fs::path(options.out_dir) / ex.name / ex.runs[i].run_id).string();
    outcomes[i] = {ex.runs[i].run_id, dir, "", ""};
    bool finished = false;
    if (!options.force && fs::exists(dir + "/summary.json")) {
      try {
        finished = read_json_file(dir + "/summary.json").value("status", "") == "ok";
      } catch (const std::exception&) {
      }
    }
    if (finished) outcomes[i].status = "skipped";
    else todo.push_back(i);
  }
  tbb::task_arena arena(std::max(1, options.jobs));
  arena.execute([&] {
    tbb::parallel_for(tbb::blocked_range<size_t>(0, todo.size(), 1), [&](const tbb::blocked_range<size_t>& range) {
      for (size_t k = range.begin(); k != range.end(); ++k) {
        const size_t i = todo[k];
        if (stop_requested()) {
          outcomes[i].status = "interrupted";
          outcomes[i].error = "not started";
          continue;
        }
        outcomes[i] = run_one(ex.runs[i], host, outcomes[i].dir, options.threads, !options.force, static_cast<int>(k), progress,
                              options.plots);
      }
    }, tbb::simple_partitioner());
  });
  progress.finish();
  return outcomes;
}

}  // namespace mfglab::engine
