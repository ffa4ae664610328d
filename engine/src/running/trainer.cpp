#include "running/trainer.h"
#include "version.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <numeric>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim.h>
#include <torch/serialize.h>

#include "fused_adam.h"
#include "gemm_backend.h"
#include "text.h"
#include "mfglab/flow.h"
#include "mfglab/sdk.h"
#include "model_arrays.h"
#include "plot.h"
#include "plugin_host.h"
#include "progress.h"
#include "results.h"
#include "running/assemble.h"
#include "running/run_directory.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace mfglab::engine {

namespace {

std::atomic<bool> g_stop{false};

struct Interrupted : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Sends plugin messages to the run's log file (none for an empty path) and the console.
class RunLogger final : public Logger {
 public:
  RunLogger(const std::string& path, std::string run_id, ProgressSink& progress)
      : run_id_(std::move(run_id)), progress_(progress) {
    if (!path.empty()) out_.open(path, std::ios::app);
  }
  void info(const std::string& m) override { write("info", m); }
  void warn(const std::string& m) override {
    write("warn", m);
    progress_.message(fmt::format("[run {}] warning: {}", run_id_, m));
  }

 private:
  void write(const char* level, const std::string& m) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!out_.is_open()) return;
    out_ << level << ": " << m << "\n";
    out_.flush();
  }
  std::mutex mutex_;
  std::ofstream out_;
  std::string run_id_;
  ProgressSink& progress_;
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

// Evaluates all metrics on fresh samples; names are "<label or value name>".
// A metric that throws (an ODE that diverges on a poor model, say) does not discard the
// others or the trained model: its value is null and its message goes into `errors`.
nlohmann::json evaluate(const RunSpec& spec, RunObjects& o, const torch::Tensor& samples,
                        std::map<std::string, std::string>& errors, const PluginHost& host,
                        nlohmann::json* better = nullptr) {
  nlohmann::json out = nlohmann::json::object();
  MetricInput in;
  in.samples = samples;
  in.reference = o.test;
  in.train = o.train;
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
      // Which way is better, as the metric's manifest declares it (compare reads it).
      const LoadedPlugin* p = host.find(use.plugin);
      const std::string way = p ? p->better_for(name) : "";
      if (better && !way.empty()) (*better)[key] = way;
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
  double train_seconds = 0;  // training time of every earlier segment of the run
};

uint64_t fingerprint(const std::string& text) {  // FNV-1a: stable across builds
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  return h;
}

void save_checkpoint(const RunDirectory& rd, const std::vector<torch::Tensor>& params, torch::optim::Optimizer* optimizer,
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
  archive.write("train_seconds", torch::tensor(state.train_seconds, torch::kFloat64));
  // Serialised in memory, then written like every other file: a full disk fails with the
  // file's name and leaves no temporary behind.
  std::ostringstream bytes;
  archive.save_to(bytes);
  write_file_atomic(rd.file(run_files::checkpoint), bytes.str());
}

enum class Restore { none, other_configuration, restored };

// The model's parameters as a checkpoint holds them, each checked against the model's shape.
std::vector<torch::Tensor> read_params(torch::serialize::InputArchive& archive, const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> values;
  for (size_t i = 0; i < params.size(); ++i) {
    torch::Tensor t;
    archive.read(fmt::format("param_{}", i), t);
    if (!t.sizes().equals(params[i].sizes()))
      throw Error(fmt::format("parameter {} has shape {} in the checkpoint, {} in the model", i, c10::str(t.sizes()),
                              c10::str(params[i].sizes())));
    values.push_back(t);
  }
  return values;
}

// For `mfglab evaluate`: a trained run's parameters and its generator as they were after
// training (so that unchanged settings sample the same bytes). Returns its iteration.
int64_t load_trained_state(const std::string& checkpoint, const std::vector<torch::Tensor>& params, torch::Generator& gen) {
  std::istringstream bytes(read_file(checkpoint).value_or(""));
  torch::serialize::InputArchive archive;
  archive.load_from(bytes);
  const std::vector<torch::Tensor> values = read_params(archive, params);
  torch::Tensor iteration, generator_state;
  archive.read("iteration", iteration);
  archive.read("generator_state", generator_state);
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) params[i].copy_(values[i]);
  gen.set_state(generator_state);
  return iteration.item<int64_t>();
}

// Restores a checkpoint written for the same configuration. Throws when the file cannot be
// read (the caller moves it aside).
Restore load_checkpoint(const RunDirectory& rd, const std::vector<torch::Tensor>& params, torch::optim::Optimizer* optimizer,
                        Checkpoint& state, torch::Generator& gen, uint64_t config_fingerprint) {
  if (!rd.has(run_files::checkpoint)) return Restore::none;
  std::istringstream bytes(read_file(rd.file(run_files::checkpoint)).value_or(""));
  torch::serialize::InputArchive archive;
  archive.load_from(bytes);
  // A fresh tensor per read: reading into a loaded tensor would try to resize its storage.
  auto read = [&](const std::string& key) {
    torch::Tensor t;
    archive.read(key, t);
    return t;
  };
  if (static_cast<uint64_t>(read("config_fingerprint").item<int64_t>()) != config_fingerprint)
    return Restore::other_configuration;
  // Read everything before changing anything: a damaged archive leaves the run untouched.
  const std::vector<torch::Tensor> values = read_params(archive, params);
  Checkpoint loaded;
  loaded.iteration = read("iteration").item<int64_t>();
  loaded.cursor = read("cursor").item<int64_t>();
  loaded.order = read("order").clone();
  if (loaded.order.numel() == 0) loaded.order = torch::Tensor();
  torch::Tensor seconds;
  if (archive.try_read("train_seconds", seconds)) loaded.train_seconds = seconds.item<double>();
  torch::Tensor generator_state = read("generator_state");
  torch::serialize::InputArchive opt;
  if (optimizer) archive.read("optimizer", opt);
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) params[i].copy_(values[i]);
  }
  if (optimizer) optimizer->load(opt);
  gen.set_state(generator_state);
  state = loaded;
  return Restore::restored;
}

std::string csv_line(const std::vector<std::string>& cells) {
  std::string out;
  for (const auto& c : cells) out += (out.empty() ? "" : ",") + c;
  return out + "\n";
}

// losses.csv up to a checkpoint: its header and the first `rows` rows, each checked
// (iteration number, cell count, numbers only). Empty when the file cannot give them.
struct LossHistory {
  std::string text;  // header and rows, ready to append to
  std::vector<std::string> term_names;
  std::vector<double> step_seconds;
  std::map<std::string, double> last_terms;
  int64_t rows_in_file = 0;  // every row the file holds, readable or not
};

std::optional<LossHistory> read_loss_history(const std::string& path, int64_t rows) {
  LossHistory h;
  std::istringstream in(read_file(path).value_or(""));
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  std::vector<std::string> header;
  {
    std::istringstream cells(line);
    for (std::string c; std::getline(cells, c, ',');) header.push_back(c);
  }
  if (header.size() < 4 || header[0] != "iteration" || header[1] != "lr" || header[2] != "total" || header.back() != "seconds")
    return std::nullopt;
  h.term_names.assign(header.begin() + 3, header.end() - 1);
  h.text = line + "\n";
  int64_t row = 0;
  for (std::string text; std::getline(in, text);) {
    ++h.rows_in_file;
    if (row == rows) continue;
    std::vector<double> values;
    std::istringstream cells(text);
    for (std::string c; std::getline(cells, c, ',');) {
      char* end = nullptr;
      const double v = std::strtod(c.c_str(), &end);
      if (c.empty() || *end != '\0') return std::nullopt;
      values.push_back(v);
    }
    if (values.size() != header.size() || values[0] != static_cast<double>(row + 1)) return std::nullopt;
    ++row;
    h.text += text + "\n";
    h.step_seconds.push_back(values.back());
    for (size_t i = 0; i < h.term_names.size(); ++i) h.last_terms[h.term_names[i]] = values[3 + i];
  }
  if (row < rows) return std::nullopt;
  return h;
}

// Which failures are the machine's, not the run's: memory exhaustion.
bool is_out_of_memory(const std::string& message) {
  return message.find("bad_alloc") != std::string::npos || message.find("can't allocate memory") != std::string::npos ||
         message.find("Cannot allocate memory") != std::string::npos;
}

// The model's randomness on one rank of a data-parallel run: its own stream per rank and
// iteration, so that a resumed run draws what an uninterrupted one drew.
uint64_t rank_stream_seed(uint64_t seed, int rank, int64_t iteration) {
  uint64_t h = fingerprint(fmt::format("{}:{}:{}", seed, rank, iteration));
  return h >> 1;
}

}  // namespace

void request_stop() { g_stop.store(true); }
bool stop_requested() { return g_stop.load(); }

RunOutcome run_one(const RunSpec& spec, const PluginHost& host, const std::string& dir, const TrainOptions& opt,
                   ProgressSink& progress) {
  RunOutcome outcome{spec.run_id, dir, "failed", "", ""};
  const RunDirectory rd(dir);
  Collective* const group = opt.collective && opt.collective->size() > 1 ? opt.collective : nullptr;
  const bool writer = !group || group->rank() == 0;  // rank 0 writes the files of a data-parallel run
  nlohmann::json summary = {{"experiment", spec.experiment}, {"run_id", spec.run_id}, {"label", spec.label},
                            {"seed", spec.seed}, {"status", "failed"}, {"iterations", 0},
                            {"iterations_planned", spec.train.iterations}, {"metrics", nlohmann::json::object()},
                            {"error", nullptr}};
  summary.update(provenance(spec, host));  // what made it: mfglab, LibTorch, each plugin's library
  int64_t iteration = 0;
  std::string losses_csv;
  int64_t losses_rows = 0, losses_rows_on_disk = 0;  // a file is never replaced by a shorter one
  double earlier_seconds = 0;
  const auto run_start = Clock::now();
  // losses.csv holds every earlier result: it is only replaced by at least as many rows.
  auto save_losses = [&] {
    if (writer && !losses_csv.empty() && losses_rows >= losses_rows_on_disk) {
      write_file_atomic(rd.file(run_files::losses), losses_csv);
      losses_rows_on_disk = losses_rows;
    }
  };
  progress.set_run(opt.index, spec.run_id, spec.train.iterations);
  FileLock run_lock;
  bool owns_directory = false;  // false: another process's run or configuration; never written
  try {
    const nlohmann::json config = resolved_config(spec, host);
    if (writer) {
      rd.create(opt.results_root);
      // A worker of an earlier, killed `run` may still be saving its checkpoint: wait for it.
      run_lock = FileLock::acquire(rd.file(run_files::lock), "run directory " + dir, 30);
      rd.remove_temporaries();
      if (opt.resume) rd.check_config(config);
      owns_directory = true;  // from here on the directory holds this run
      fs::remove(rd.file(run_files::summary));  // not finished while it runs
      if (!opt.resume)
        for (const char* f : {run_files::log, run_files::checkpoint, run_files::evals, run_files::losses})
          fs::remove(rd.file(f));
      write_json_atomic(rd.file(run_files::config), config);
    }
    RunLogger logger(writer ? rd.file(run_files::log) : "", spec.run_id, progress);

    RunContext ctx;
    ctx.generator = at::make_generator<at::CPUGeneratorImpl>(spec.seed);
    ctx.dtype = spec.dtype == "float64" ? torch::kFloat64 : torch::kFloat32;
    ctx.threads = opt.threads;
    ctx.output_dir = dir;
    ctx.logger = &logger;
    ctx.seed = spec.seed;
    RunObjects o = assemble(spec, host, ctx);
    const torch::Tensor& train = o.train;

    // ---- training: the engine owns the loop ------------------------------------------
    const auto& tc = spec.train;
    const std::string model_name = "model '" + spec.model.plugin + "'";
    auto stage = [&](const std::string& what, auto&& fn) {
      try {
        fn();
      } catch (const std::exception& e) {
        throw Error(fmt::format("{}: {}", what, e.what()));
      }
    };
    std::vector<torch::Tensor> params;
    stage(model_name, [&] { params = o.model->parameters(); });
    std::unique_ptr<torch::optim::Optimizer> optimizer;
    if (!params.empty() && tc.iterations > 0) {
      if (tc.optimizer == "sgd")
        optimizer = std::make_unique<torch::optim::SGD>(params, torch::optim::SGDOptions(tc.lr).momentum(tc.momentum).weight_decay(tc.weight_decay));
      else
        optimizer = std::make_unique<FusedAdam>(params, torch::optim::AdamOptions(tc.lr).betas({tc.beta1, tc.beta2}).weight_decay(tc.weight_decay));
    } else if (params.empty() && tc.iterations > 0) {
      throw Error(fmt::format("model '{}' has no trainable parameters but train.iterations is {}", spec.model.plugin, tc.iterations));
    }
    if (group && !params.empty()) {
      // Every rank must start from the same parameters: the model may only draw from the
      // run's generator.
      auto flat = torch::cat([&] {
        std::vector<torch::Tensor> v;
        for (auto& p : params) v.push_back(p.detach().reshape(-1).to(torch::kFloat64));
        return v;
      }());
      auto root = flat.clone();
      group->broadcast(root);
      auto differ = torch::tensor({root.equal(flat) ? int64_t{0} : int64_t{1}});
      group->sum(differ);
      if (differ.item<int64_t>() != 0)
        throw Error(fmt::format("train.data_parallel: the parameters of model '{}' differ across ranks after it is built "
                                "({} of {} ranks differ from rank 0); a data-parallel model must draw its initial "
                                "values from the run's generator only", spec.model.plugin, differ.item<int64_t>(), group->size()));
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
    const uint64_t config_fp = fingerprint(result_defining_config(config).dump());

    // Resume an interrupted run: parameters, optimizer, generator and batch order come from
    // the checkpoint, the loss history up to it from losses.csv. A file that cannot give
    // them is kept under another name and the run starts over.
    int64_t start = 0;
    const bool evaluate_only = !opt.weights_from.empty();
    if (evaluate_only) {
      stage("the trained run's checkpoint " + opt.weights_from, [&] { start = load_trained_state(opt.weights_from, params, gen); });
      summary["evaluated_from"] = opt.weights_from;
    }
    if (!evaluate_only && opt.resume && tc.iterations > 0 && rd.has(run_files::checkpoint)) {
      auto start_over = [&](const std::string& why) {
        std::string kept;
        if (writer)
          for (const char* f : {run_files::checkpoint, run_files::losses, run_files::evals})
            if (rd.has(f)) kept += fmt::format("{}{} -> {}", kept.empty() ? "" : ", ", f, rd.move_aside(f));
        const std::string line = fmt::format("{}; the run starts over from iteration 0 (kept: {})", why, kept.empty() ? "nothing" : kept);
        logger.warn(line);
        throw Error("restart");
      };
      try {
        Restore r = Restore::none;
        try {
          r = load_checkpoint(rd, params, optimizer.get(), state, gen, config_fp);
        } catch (const std::exception& e) {
          start_over(fmt::format("{} cannot be read ({})", rd.file(run_files::checkpoint), e.what()));
        }
        if (r == Restore::other_configuration) start_over(fmt::format("{} belongs to another configuration", rd.file(run_files::checkpoint)));
        if (r == Restore::restored) {
          auto history = rd.has(run_files::losses) ? read_loss_history(rd.file(run_files::losses), state.iteration) : std::nullopt;
          if (!history)
            start_over(fmt::format("{} does not hold the {} readable rows the checkpoint needs", rd.file(run_files::losses), state.iteration));
          losses_csv = history->text;
          losses_rows = state.iteration;
          losses_rows_on_disk = history->rows_in_file;
          term_names = history->term_names;
          step_seconds = history->step_seconds;
          last_terms = history->last_terms;
          earlier_seconds = state.train_seconds;
          start = state.iteration;
          if (rd.has(run_files::evals)) {
            try {
              evals = read_json_file(rd.file(run_files::evals));
              if (!evals.is_array()) throw Error("not a list");
              // Evaluations after the checkpoint are done again, as in an uninterrupted run.
              nlohmann::json kept = nlohmann::json::array();
              for (const auto& e : evals)
                if (e.is_object() && e.value("iteration", int64_t{0}) <= start) kept.push_back(e);
              evals = kept;
            } catch (const std::exception& e) {
              evals = nlohmann::json::array();
              if (writer) logger.warn(fmt::format("{} is unreadable ({}); kept as {}", rd.file(run_files::evals), e.what(), rd.move_aside(run_files::evals)));
            }
          }
          logger.info(fmt::format("resumed from the checkpoint at iteration {}", start));
          progress.message(fmt::format("[run {}] resuming at iteration {}", spec.run_id, start));
        }
      } catch (const Error& e) {
        if (std::string(e.what()) != "restart") throw;
        // The model's parameters may have been half restored: rebuild every object.
        o = RunObjects{};
        ctx.generator = at::make_generator<at::CPUGeneratorImpl>(spec.seed);
        o = assemble(spec, host, ctx);
        gen = ctx.generator;
        params = o.model->parameters();
        if (tc.optimizer == "sgd")
          optimizer = std::make_unique<torch::optim::SGD>(params, torch::optim::SGDOptions(tc.lr).momentum(tc.momentum).weight_decay(tc.weight_decay));
        else
          optimizer = std::make_unique<FusedAdam>(params, torch::optim::AdamOptions(tc.lr).betas({tc.beta1, tc.beta2}).weight_decay(tc.weight_decay));
        state = Checkpoint{};
        state.cursor = n_train;
        term_names.clear(), step_seconds.clear(), last_terms.clear(), losses_csv.clear();
        losses_rows = 0;
        losses_rows_on_disk = 0;
        evals = nlohmann::json::array();
      }
    }
    if (group) {
      // Every rank resumes from the same iteration, or none does.
      auto starts = torch::tensor({start});
      group->sum(starts);
      if (starts.item<int64_t>() != start * group->size())
        throw Error("train.data_parallel: the ranks found different checkpoints; is the output folder shared by all of them?");
    }

    const auto segment_start = Clock::now();
    auto train_seconds = [&] { return earlier_seconds + std::chrono::duration<double>(Clock::now() - segment_start).count(); };
    auto checkpoint_at = [&](int64_t done) {
      save_losses();
      state.iteration = done;
      state.train_seconds = train_seconds();
      if (writer) save_checkpoint(rd, params, optimizer.get(), state, gen, config_fp);
    };
    auto stop_now = [&] {
      bool stop = stop_requested();
      if (group) {  // all ranks stop at the same iteration
        auto flag = torch::tensor({stop ? int64_t{1} : int64_t{0}});
        group->sum(flag);
        stop = flag.item<int64_t>() > 0;
      }
      return stop;
    };
    const int64_t last_iteration = evaluate_only ? start : tc.iterations;
    for (iteration = start; iteration < last_iteration; ++iteration) {
      if (stop_now()) {
        checkpoint_at(iteration);
        throw Interrupted(fmt::format("interrupted at iteration {}; run again to resume", iteration));
      }
      const auto t0 = Clock::now();
      const double lr = learning_rate(tc, iteration);
      for (auto& group_options : optimizer->param_groups()) group_options.options().set_lr(lr);
      // Where this iteration starts, to checkpoint it if its loss is not finite.
      const auto rng_before = gen.get_state();
      const auto cursor_before = state.cursor;
      const auto order_before = state.order;
      auto batch = next_batch();
      double share = 1.0;  // this rank's part of the global batch
      torch::Tensor batch_state;
      if (group) {
        // Every rank drew the same global batch; each trains on its slice, with the model's
        // own randomness from a stream of its own.
        const int64_t b = batch.size(0), r = group->rank(), k = group->size();
        const int64_t lo = b * r / k, hi = b * (r + 1) / k;
        batch = batch.slice(0, lo, hi);
        share = static_cast<double>(hi - lo) / static_cast<double>(b);
        batch_state = gen.get_state();
        gen.set_current_seed(rank_stream_seed(spec.seed, group->rank(), iteration));
      }
      // The regularizers run before the model's loss, so that a model may train on the
      // points its collocation() drew for them and reuse the network pass made there (sgm
      // does: its loss and the score-PDE residual at the same noised points). losses.csv
      // keeps the model's terms first.
      LossTerms penalties;
      for (size_t r = 0; r < o.regularizers.size(); ++r) {
        const auto& use = spec.regularizers[r];
        // A weight-0 term (the baseline of a weight sweep) keeps its column in losses.csv but
        // costs nothing: its penalty, and the graph behind it, would only be multiplied by 0.
        if (use.weight == 0) {
          penalties.push_back({use.plugin, torch::zeros({}, train.options())});
          continue;
        }
        stage("regularizer '" + use.plugin + "'", [&] {
          penalties.push_back({use.plugin, use.weight * o.regularizers[r]->penalty(*o.model, batch)});
        });
      }
      LossTerms terms;
      stage(model_name + " loss", [&] { terms = o.model->loss(batch); });
      terms.insert(terms.end(), penalties.begin(), penalties.end());
      if (terms.empty())
        throw Error(fmt::format("nothing to train: model '{}' returned no loss terms and the experiment has no "
                                "regularizers (a model whose own loss is off, such as sgm with loss \"none\", "
                                "needs at least one)",
                                spec.model.plugin));
      torch::Tensor total = torch::zeros({}, train.options());
      std::vector<double> values;
      for (const auto& term : terms) {
        if (!term.value.defined() || term.value.numel() != 1)
          throw Error(fmt::format("loss term '{}' is not a scalar", term.name));
        values.push_back(term.value.item<double>() * share);
        total = total + term.value;
      }
      if (group) {
        auto v = torch::tensor(values, torch::kFloat64);
        group->sum(v);
        for (size_t i = 0; i < values.size(); ++i) values[i] = v[static_cast<int64_t>(i)].item<double>();
      }
      for (size_t i = 0; i < values.size(); ++i)
        if (!std::isfinite(values[i])) {
          // No step was taken with this loss: the parameters are those of the last good
          // iteration. Keep them, so that the failure can be inspected and evaluated.
          const bool finite = std::all_of(params.begin(), params.end(), [](const torch::Tensor& p) {
            return torch::isfinite(p).all().item<bool>();
          });
          std::string kept;
          if (finite && iteration > start) {
            gen.set_state(rng_before);  // a resumed run draws this iteration's batch again
            state.cursor = cursor_before;
            state.order = order_before;
            checkpoint_at(iteration);
            kept = fmt::format("; the checkpoint holds the parameters after iteration {}", iteration);
          }
          throw Error(fmt::format("non-finite loss term '{}' ({}) at iteration {}{}", terms[i].name, values[i],
                                  iteration + 1, kept));
        }
      if (term_names.empty()) {
        for (const auto& term : terms) term_names.push_back(term.name);
        std::vector<std::string> header = {"iteration", "lr", "total"};
        header.insert(header.end(), term_names.begin(), term_names.end());
        header.push_back("seconds");
        losses_csv = csv_line(header);
      }
      if (!total.requires_grad())
        throw Error("nothing to train: no loss term depends on the parameters (the model has no loss of its own "
                    "and every regularizer has weight 0?)");
      optimizer->zero_grad();
      stage("backward pass", [&] { (group ? total * share : total).backward(); });
      if (group) {
        // The global batch's gradient: the sum of each rank's share.
        std::vector<torch::Tensor> grads;
        for (auto& p : params) grads.push_back(p.grad().defined() ? p.grad().reshape(-1) : torch::zeros({p.numel()}, p.options()));
        auto flat = torch::cat(grads);
        group->sum(flat);
        int64_t at = 0;
        for (auto& p : params) {
          auto g = flat.slice(0, at, at + p.numel()).view(p.sizes());
          if (p.grad().defined()) p.mutable_grad().copy_(g);
          else p.mutable_grad() = g.clone();
          at += p.numel();
        }
        gen.set_state(batch_state);
      }
      if (tc.grad_clip > 0) torch::nn::utils::clip_grad_norm_(params, tc.grad_clip);
      optimizer->step();
      const double secs = std::chrono::duration<double>(Clock::now() - t0).count();

      const double total_v = std::accumulate(values.begin(), values.end(), 0.0);
      std::vector<std::string> row = {std::to_string(iteration + 1), fmt::format("{:.6g}", lr), fmt::format("{:.8g}", total_v)};
      // The summary reports what losses.csv says, so that a resumed run, which reads them
      // back from it, reports the same numbers.
      for (size_t i = 0; i < values.size(); ++i) {
        row.push_back(fmt::format("{:.8g}", values[i]));
        last_terms[term_names.size() > i ? term_names[i] : terms[i].name] = std::strtod(row.back().c_str(), nullptr);
      }
      row.push_back(fmt::format("{:.6f}", secs));
      step_seconds.push_back(std::strtod(row.back().c_str(), nullptr));
      losses_csv += csv_line(row);
      ++losses_rows;

      const int64_t done = iteration + 1;
      const bool log_point = done % tc.log_every == 0 || done == tc.iterations;
      progress.iteration(opt.index, done, total_v, log_point);
      if (log_point) save_losses();
      // Periodic evaluation before the checkpoint: its draws are part of the state a
      // resumed run continues from.
      if (spec.eval.every > 0 && done % spec.eval.every == 0 && done < tc.iterations && !o.metrics.empty()) {
        // Every rank evaluates (their generators stay equal); rank 0 writes.
        torch::Tensor s;
        stage(model_name + " sample", [&] { s = o.model->sample(spec.eval.samples); });
        std::map<std::string, std::string> errors;
        auto m = evaluate(spec, o, s, errors, host);
        for (const auto& [_, message] : errors) logger.warn(fmt::format("iteration {}: {}", done, message));
        if (!errors.empty()) m["metric_errors"] = errors;
        m["iteration"] = done;
        evals.push_back(m);
        if (writer) write_json_atomic(rd.file(run_files::evals), evals);
      }
      if (tc.checkpoint_every > 0 && done % tc.checkpoint_every == 0 && done < tc.iterations) checkpoint_at(done);
    }
    if (tc.iterations > 0 && !evaluate_only) checkpoint_at(iteration);
    const double trained_seconds = train_seconds();

    // ---- evaluation -----------------------------------------------------------------
    const auto s0 = Clock::now();
    torch::Tensor samples;
    stage(model_name + " sample", [&] {
      samples = o.model->sample(spec.eval.samples).detach();
      if (samples.dim() != 2 || samples.size(0) != spec.eval.samples || samples.size(1) != ctx.data_dim)
        throw Error(fmt::format("sample returned {}, expected [{}, {}]", c10::str(samples.sizes()), spec.eval.samples, ctx.data_dim));
      if (!torch::isfinite(samples).all().item<bool>()) throw Error("generated samples contain NaN or Inf");
    });
    const double sample_seconds = std::chrono::duration<double>(Clock::now() - s0).count();
    // At most 4000 held-out points for figures.
    const auto& test = o.test;
    const auto figure_data = test.slice(0, 0, test.size(0), std::max<int64_t>(1, (test.size(0) + 3999) / 4000));
    std::map<std::string, std::string> metric_errors;
    nlohmann::json metric_better = nlohmann::json::object();
    auto metrics = evaluate(spec, o, samples, metric_errors, host, &metric_better);
    for (const auto& [_, message] : metric_errors) logger.warn(message);
    // The learned map on points every run shares, computed where it is written. Like a
    // metric, a failure here is reported and leaves the run intact.
    torch::Tensor learned_map;
    std::string map_error;
    if (spec.eval.map_points > 0 && writer) {
      try {
        const auto shared = calibration_set(spec, host, ctx, o);
        const auto x0 = shared.slice(0, 0, std::min<int64_t>(spec.eval.map_points, shared.size(0)));
        learned_map = flow_path(*o.model, x0, 0.0, o.model->horizon(), spec.eval.map_steps)[spec.eval.map_steps];
      } catch (const std::exception& e) {
        map_error = fmt::format("the learned map (eval.map_points) was not computed: {}", e.what());
        logger.warn(map_error);
      }
    }

    if (writer) {
      save_npy(rd.file(run_files::samples), samples.to(ctx.dtype));
      save_npy(rd.file(run_files::data), figure_data);
      if (learned_map.defined()) save_npy(rd.file(run_files::map), learned_map.to(torch::kFloat64));
      if (opt.plots) {
        // Figures are a convenience: a drawing failure must not fail a finished run.
        for (const auto& problem : write_model_arrays(*o.model, host.find(spec.model.plugin)->fields_for(spec.model.params), figure_data, dir))
          logger.warn(problem);
        try {
          plot_run(dir);
        } catch (const std::exception& e) {
          logger.warn(fmt::format("figures not drawn: {}", e.what()));
        }
      }
      summary["status"] = "ok";
      summary["iterations"] = iteration;
      summary["train_seconds"] = trained_seconds;
      summary["seconds_per_iteration"] = evaluate_only ? nlohmann::json(nullptr) : nlohmann::json(median(step_seconds));
      summary["sample_seconds"] = sample_seconds;
      summary["final_loss"] = last_terms;
      summary["metrics"] = metrics;
      summary["metric_better"] = metric_better;
      if (!metric_errors.empty()) summary["metric_errors"] = metric_errors;
      if (!map_error.empty()) summary["map_error"] = map_error;
      summary["threads"] = opt.threads;
      if (group) summary["data_parallel_ranks"] = group->size();
      summary["float_gemm"] = gemm_backend();  // timings depend on it (gemm_backend.cpp)
      // The last file: its list says what a finished run holds.
      summary["files"] = rd.list_files();
      write_json_atomic(rd.file(run_files::summary), summary);
    }
    outcome.status = "ok";
    for (const auto& [k, v] : metrics.items()) outcome.detail += fmt::format("{}{}={}", outcome.detail.empty() ? "" : " ", k, v.dump());
    progress.run_finished(opt.index, "ok", outcome.detail);
  } catch (const Interrupted& e) {
    // No summary: the run is not finished, and the next `run` resumes it.
    outcome.status = "interrupted";
    outcome.error = e.what();
    progress.run_finished(opt.index, "interrupted", outcome.error);
    return outcome;
  } catch (const std::exception& e) {
    outcome.error = e.what();
  } catch (...) {
    outcome.error = "a plugin threw something that is not a std::exception";
  }
  if (outcome.status != "ok") {
    if (is_out_of_memory(outcome.error)) {
      outcome.status = "out_of_memory";
      outcome.error = "out of memory: " + outcome.error;
    }
    summary["status"] = outcome.status;
    summary["iterations"] = iteration;
    summary["error"] = outcome.error;
    summary["train_seconds"] = earlier_seconds + std::chrono::duration<double>(Clock::now() - run_start).count();
    if (writer && owns_directory) {
      try {
        save_losses();
        write_json_atomic(rd.file(run_files::summary), summary);
      } catch (const std::exception& e2) {
        outcome.error += fmt::format(" (and the summary could not be written: {})", e2.what());
      }
      if (opt.plots) {
        try {
          plot_run(dir);  // what there is: the loss curves up to the failure, at least
        } catch (const std::exception&) {
        }
      }
    }
    progress.run_finished(opt.index, outcome.status, outcome.error);
  }
  return outcome;
}

}  // namespace mfglab::engine
