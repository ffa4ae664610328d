// The `mfglab` executable: a launcher that loads the engine library and calls it.
//
// Why a launcher: loading LibTorch takes most of a second, and `mfglab run` trains each run
// in a worker process of its own (running/isolation.h). Started from here, before the engine
// is loaded, a fork server loads LibTorch once in parallel with the parent and then forks
// every worker from itself (running/worker_spawn.h), so isolation costs almost no time.
// The launcher does not link LibTorch.
#include <dlfcn.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "launcher/entry.h"
#include "running/cores.h"
#include "running/stop_signals.h"
#include "running/worker_spawn.h"

namespace fs = std::filesystem;
using mfglab::engine::ForkServer;

namespace {

// At most this many runs in an experiment, counted as seeds x variants x sweep values; an
// upper bound (finished runs are not known here): the engine ends the workers it does not
// need.
size_t count_runs(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return 0;
  std::stringstream text;
  text << in.rdbuf();
  const auto root = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (!root.is_object()) return 0;
  auto size_of = [&](const char* key, bool want_array) -> size_t {
    if (!root.contains(key)) return 1;
    const auto& v = root.at(key);
    if (want_array ? !v.is_array() : !v.is_object()) return 0;  // the engine will say what is wrong
    return v.size();
  };
  size_t runs = size_of("seeds", true) * size_of("variants", false);
  if (root.contains("sweep") && root.at("sweep").is_object())
    for (const auto& [key, values] : root.at("sweep").items()) runs *= values.is_array() ? values.size() : 0;
  return runs;
}

// Under an MPI launcher (as MpiWorld::launched() decides), the ranks on this machine, which
// share its cores; 1 otherwise.
long ranks_on_this_machine() {
  bool mpi = false;
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"}) mpi = mpi || std::getenv(v);
  if (!mpi) return 1;
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"})
    if (const char* n = std::getenv(v)) return std::max(1L, std::strtol(n, nullptr, 10));
  return 1;
}

// How many workers `mfglab run` will start at once, read from its command line (under MPI,
// each rank's own); 0 for any other command and for --in-process.
size_t workers_to_start(int argc, char** argv) {
  int i = 1;
  // Options before the command.
  while (i < argc && std::strncmp(argv[i], "--plugin-dir", 12) == 0) i += std::strchr(argv[i], '=') ? 1 : 2;
  if (i >= argc || std::strcmp(argv[i], "run") != 0) return 0;
  std::string file;
  long jobs = 0, threads = 1;
  for (++i; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--in-process" || arg == "--help" || arg == "-h") return 0;
    const std::string name = arg.substr(0, arg.find('='));
    const bool inline_value = arg.find('=') != std::string::npos;
    const bool takes_value = name == "--jobs" || name == "--threads" || name == "--out" || name == "--time-limit" ||
                             name == "--run-memory" || name == "--plugin-dir";
    std::string value;
    if (takes_value) {
      if (inline_value) value = arg.substr(arg.find('=') + 1);
      else if (i + 1 < argc) value = argv[++i];
    }
    if (name == "--jobs") jobs = std::strtol(value.c_str(), nullptr, 10);
    else if (name == "--threads") threads = std::max(1L, std::strtol(value.c_str(), nullptr, 10));
    else if (!takes_value && arg.rfind("-", 0) != 0 && file.empty()) file = arg;
  }
  if (file.empty()) return 0;
  if (jobs <= 0) jobs = mfglab::engine::default_jobs(static_cast<int>(ranks_on_this_machine()), static_cast<int>(threads));
  return std::min(count_runs(file), static_cast<size_t>(std::min(jobs, 64L)));
}

}  // namespace

int main(int argc, char** argv) {
  // Before any thread exists, so that every thread inherits the mask: the engine decides, per
  // command, whether a thread of its own takes Ctrl-C or it ends the process
  // (running/stop_signals.h says why never a handler).
  mfglab::engine::block_stop_signals();
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) {
    std::fprintf(stderr, "error: cannot find the mfglab executable (/proc/self/exe): %s\n", ec.message().c_str());
    return 1;
  }
  ForkServer server;
  // MFGLAB_FORK_SERVER=0 starts every worker by fork+exec instead (slower; for diagnosis).
  const char* fork_server = std::getenv("MFGLAB_FORK_SERVER");
  if (workers_to_start(argc, argv) > 0 && !(fork_server && std::strcmp(fork_server, "0") == 0)) {
    // Adopt the workers the server forks (through a process that exits at once), so that
    // they are children of this process and it can wait for them.
    if (::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0) {
      try {
        server = mfglab::engine::spawn_fork_server(exe.string());
      } catch (const std::exception&) {
        // the engine starts its workers by fork+exec, and reports what fails
      }
    }
  }
  // Runs parallelise across processes, never inside BLAS (main.cpp's tune_process keeps
  // OpenBLAS at one thread): said before it loads, it starts no threads of its own.
  ::setenv("OPENBLAS_NUM_THREADS", "1", /*overwrite=*/0);
  // The same layout as the plugins: <prefix>/bin/mfglab and <prefix>/lib/mfglab/.
  const fs::path engine = exe.parent_path().parent_path() / "lib" / "mfglab" / "libmfglab_engine.so";
  // Global: OpenMPI's components and the plugins resolve symbols against the engine's libraries.
  void* library = ::dlopen(engine.c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (!library) {
    std::fprintf(stderr, "error: cannot load the mfglab engine: %s\n", ::dlerror());
    return 1;
  }
  using Entry = int (*)(int, char**, const ForkServer*);
  const auto entry = reinterpret_cast<Entry>(::dlsym(library, "mfglab_main"));
  if (!entry) {
    std::fprintf(stderr, "error: %s has no entry point mfglab_main\n", engine.c_str());
    return 1;
  }
  return entry(argc, argv, server.pid > 0 ? &server : nullptr);
}
