// OT-Flow speed and accuracy, mfglab against the PyTorch reference (../shared/ref/otflow_ref.py),
// in one invocation.
//
//   otflow_bench [--iters N] [--threads 1,2] [--repeats R] [--ref PATH] [--no-ref]
//       seconds per training iteration (median after warm-up) of both, and their ratio, for
//       each thread count; plus where mfglab's step goes (loss() forward vs backward + Adam).
//   otflow_bench --accuracy [--iters 200] [--seeds 3]
//       mean test NLL after N iterations over seeds, both implementations.
//   --unfused: mfglab through autograd's graph of the closed-form sweep instead of the
//       hand-written block kernel (otflow's "fused": false), for comparing the two.
//   --hamiltonian NAME [--ham-params JSON]: mfglab with that Hamiltonian plugin (default: none,
//       OT-Flow's own quadratic); --times FILE writes mfglab's per-iteration seconds of the
//       last run as {"iter_s": [...]} (bench/otflow_hamiltonian_bench.sh reads it).
//
// Setup as DESIGN.md's OT-Flow reference: 8gaussians, batch 2048, width 32, 2 layers, 8 RK4
// steps, alphas (1, 100, 5), Adam lr 0.1 halved every 100 iterations.
#include <malloc.h>
#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <torch/optim.h>

#include <mfglab/sdk.h>

#include "plugin_host.h"

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Options {
  int iters = 60;
  int warmup = 5;
  int repeats = 1;
  int seeds = 3;
  int batch = 2048;
  std::vector<int> threads{1, 2};
  std::string ref = MFGLAB_SOURCE_DIR "/../shared/ref/otflow_ref.py";
  std::string python = "/usr/bin/python3.11";
  bool run_ref = true;
  bool accuracy = false;
  bool fused = true;
  std::string hamiltonian;         // plugin name; empty: none
  json ham_params = json::object();
  std::string times;               // where to write the last run's step times
};

struct MfgResult {
  double sec_iter = 0, forward = 0, backward = 0, test_nll = 0;
};

// Trains otflow like the engine does (batch from the toy2d train set, Adam, step schedule)
// and times each step; forward = model->loss(), backward = backward + Adam step.
MfgResult run_mfglab(const Options& o, int threads, int iters, uint64_t seed, bool eval) {
  at::set_num_threads(threads);
  mfglab::engine::PluginHost host{{MFGLAB_BENCH_PLUGIN_DIR}};
  mfglab::RunContext ctx;
  ctx.generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  ctx.threads = threads;
  auto data = host.create_as<mfglab::Dataset>("toy2d", MFGLAB_KIND_DATASET,
                                              json{{"name", "8gaussians"}, {"train_size", 100000}, {"test_size", 20000}}, ctx);
  auto train = data->train().contiguous(), test = data->test().contiguous();
  ctx.data_dim = 2;
  std::unique_ptr<mfglab::Hamiltonian> H;
  if (!o.hamiltonian.empty()) {
    H = host.create_as<mfglab::Hamiltonian>(o.hamiltonian, MFGLAB_KIND_HAMILTONIAN, o.ham_params, ctx);
    ctx.hamiltonian = H.get();
  }
  auto model = host.create_as<mfglab::Model>("otflow", MFGLAB_KIND_MODEL,
                                             json{{"width", 32}, {"layers", 2}, {"steps", 8}, {"fused", o.fused}}, ctx);
  auto params = model->parameters();
  torch::optim::Adam adam(params, torch::optim::AdamOptions(0.1));
  torch::Generator g = ctx.generator;
  std::vector<double> step, fwd, bwd, every;
  for (int it = 0; it < iters; ++it) {
    const double lr = 0.1 * std::pow(0.5, it / 100);
    for (auto& group : adam.param_groups()) group.options().set_lr(lr);
    auto batch = train.index_select(0, torch::randint(train.size(0), {o.batch}, g, torch::kLong));
    const auto t0 = Clock::now();
    auto terms = model->loss(batch);
    auto total = terms[0].value + terms[1].value + terms[2].value;
    (void)total.item<double>();  // the engine reads every term's value
    const double f = seconds_since(t0);
    adam.zero_grad();
    total.backward();
    adam.step();
    const double s = seconds_since(t0);
    every.push_back(s);
    if (it >= o.warmup) step.push_back(s), fwd.push_back(f), bwd.push_back(s - f);
  }
  if (!o.times.empty()) {
    std::ofstream(o.times) << json{{"iter_s", every}}.dump() << "\n";
  }
  MfgResult r{median(step), median(fwd), median(bwd), 0};
  if (eval) {
    torch::NoGradGuard no_grad;
    r.test_nll = -model->log_prob(test).mean().item<double>();
  }
  return r;
}

json run_reference(const Options& o, int threads, int iters, int seed) {
  const std::string out = "/tmp/otflow_bench_ref_" + std::to_string(::getpid()) + ".json";
  std::ostringstream cmd;
  cmd << o.python << " " << o.ref << " --data 8gaussians --iters " << iters << " --batch " << o.batch
      << " --width 32 --layers 2 --nt 8 --threads " << threads << " --seed " << seed << " --warmup " << o.warmup
      << " --n_eval 10000 --log_every 100000 --out " << out << " > /dev/null";
  if (std::system(cmd.str().c_str()) != 0) throw std::runtime_error("reference failed: " + cmd.str());
  std::ifstream in(out);
  json j = json::parse(in);
  std::remove(out.c_str());
  return j;
}

std::vector<int> parse_list(const std::string& s) {
  std::vector<int> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) out.push_back(std::stoi(item));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  // As the engine does before the first tensor (DESIGN.md section 4).
  mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
  mallopt(M_TRIM_THRESHOLD, 256 * 1024 * 1024);
  using SetThreads = void (*)(int);
  if (auto f = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) f(1);
  at::set_num_interop_threads(1);

  Options o;
  bool iters_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--iters") o.iters = std::stoi(next()), iters_given = true;
    else if (a == "--threads") o.threads = parse_list(next());
    else if (a == "--repeats") o.repeats = std::stoi(next());
    else if (a == "--seeds") o.seeds = std::stoi(next());
    else if (a == "--ref") o.ref = next();
    else if (a == "--python") o.python = next();
    else if (a == "--no-ref") o.run_ref = false;
    else if (a == "--accuracy") o.accuracy = true;
    else if (a == "--unfused") o.fused = false;
    else if (a == "--hamiltonian") o.hamiltonian = next();
    else if (a == "--ham-params") o.ham_params = json::parse(next());
    else if (a == "--times") o.times = next();
    else {
      std::cerr << "usage: otflow_bench [--iters N] [--threads 1,2] [--repeats R] [--ref PATH] [--python EXE] "
                   "[--no-ref] [--unfused] [--hamiltonian NAME [--ham-params JSON]] [--times FILE] "
                   "[--accuracy [--seeds S]]\n";
      return 2;
    }
  }
  std::cout.setf(std::ios::fixed);
  if (o.accuracy) {
    const int iters = iters_given ? o.iters : 200;
    std::vector<double> mine, ref;
    for (int s = 0; s < o.seeds; ++s) {
      mine.push_back(run_mfglab(o, 1, iters, s, true).test_nll);
      if (o.run_ref) ref.push_back(run_reference(o, 1, iters, s).at("test_nll").get<double>());
      std::cout << "seed " << s << ": mfglab test NLL " << std::setprecision(4) << mine.back();
      if (o.run_ref) std::cout << "   reference " << ref.back();
      std::cout << std::endl;
    }
    auto mean = [](const std::vector<double>& v) { double s = 0; for (double x : v) s += x; return v.empty() ? 0 : s / v.size(); };
    std::cout << "mean test NLL over " << o.seeds << " seeds after " << iters << " iterations: mfglab "
              << std::setprecision(4) << mean(mine);
    if (o.run_ref) std::cout << "   reference " << mean(ref);
    std::cout << " nats" << std::endl;
    return 0;
  }
  std::cout << "OT-Flow, 8gaussians, batch " << o.batch << ", width 32, 2 layers, 8 RK4 steps, " << o.iters
            << " iterations (median after " << o.warmup << " warm-up), mfglab "
            << (o.fused ? "fused" : "unfused (autograd RHS)") << ", Hamiltonian "
            << (o.hamiltonian.empty() ? std::string("none (quadratic, lambda 1)") : o.hamiltonian + " " + o.ham_params.dump())
            << "\n";
  for (int r = 0; r < o.repeats; ++r) {
    for (int t : o.threads) {
      auto m = run_mfglab(o, t, o.iters, 0, false);
      std::cout << "threads " << t << ": mfglab " << std::setprecision(4) << m.sec_iter << " s/it (loss "
                << m.forward << ", backward+step " << m.backward << ")";
      if (o.run_ref) {
        const double ref = run_reference(o, t, o.iters, 0).at("sec_per_iter_median").get<double>();
        std::cout << "   reference " << ref << " s/it   ratio ref/mfglab " << std::setprecision(2) << ref / m.sec_iter;
      }
      std::cout << std::endl;
    }
  }
  return 0;
}
