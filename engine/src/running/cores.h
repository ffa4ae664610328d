// How many cores a `run` may use, and so how many runs it starts at once by default.
//
// A process may be confined to some of the machine's cores: by taskset, a container's cpuset,
// Slurm, or mpirun, which binds each rank to a core (two ranks or fewer) or a socket unless
// told `--bind-to none`; or to some CPU time, by a cgroup quota (Docker's --cpus, a Kubernetes
// CPU limit). Every worker inherits that confinement, so the default number of jobs counts the
// cores this process may use, not the machine's. Header-only: the launcher, which does not
// link the engine, decides the same number.
#pragma once

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

namespace mfglab::engine {

inline int machine_cores() { return std::max(1, static_cast<int>(std::thread::hardware_concurrency())); }

// Cores' worth of CPU time in a quota of `quota` microseconds per `period`, rounded up; 0 for
// no limit ("max", -1, or text that is not a quota).
inline int quota_cores(const std::string& quota, const std::string& period) {
  double q = 0, p = 0;
  std::istringstream qs(quota), ps(period);
  if (!(qs >> q) || !(ps >> p) || q <= 0 || p <= 0) return 0;
  return std::max(1, static_cast<int>(std::ceil(q / p - 1e-9)));
}

// The tightest CPU quota on this process's cgroup or any cgroup above it, in cores; 0 for none.
// cgroup v2 writes "QUOTA PERIOD" (or "max PERIOD") in cpu.max; v1 writes them in two files.
inline int cgroup_cpu_limit() {
  std::ifstream self("/proc/self/cgroup");
  int limit = 0;
  auto consider = [&](int cores) {
    if (cores > 0) limit = limit == 0 ? cores : std::min(limit, cores);
  };
  auto read_word = [](const std::string& file) {
    std::ifstream in(file);
    std::string word;
    in >> word;
    return word;
  };
  std::string line;
  while (std::getline(self, line)) {  // "ID:CONTROLLERS:PATH"
    const auto a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1);
    std::string path = line.substr(b + 1);
    const bool v2 = controllers.empty();
    if (!v2 && ("," + controllers + ",").find(",cpu,") == std::string::npos) continue;
    const std::string roots[] = {v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/" + controllers,
                                 v2 ? "/sys/fs/cgroup/unified" : "/sys/fs/cgroup/cpu"};
    // From this cgroup up to the root: in a container the path may name a cgroup of the host,
    // whose files are mounted at the container's root.
    while (true) {
      for (const auto& root : roots) {
        const std::string dir = root + (path == "/" ? "" : path);
        if (v2) {
          std::ifstream in(dir + "/cpu.max");
          std::string quota, period;
          if (in >> quota >> period) consider(quota_cores(quota, period));
        } else {
          consider(quota_cores(read_word(dir + "/cpu.cfs_quota_us"), read_word(dir + "/cpu.cfs_period_us")));
        }
      }
      if (path.empty() || path == "/") break;
      path = path.substr(0, path.find_last_of('/'));
      if (path.empty()) path = "/";
    }
  }
  return limit;
}

// The cores this process may use: those in its CPU affinity mask, at most its cgroup's quota.
inline int usable_cores() {
  int cores = machine_cores();
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) == 0) cores = std::max(1, CPU_COUNT(&set));
  const int quota = cgroup_cpu_limit();
  return quota > 0 ? std::min(cores, quota) : cores;
}

// Whether this process is confined to fewer cores than the machine has.
inline bool confined_to_some_cores() { return usable_cores() < machine_cores(); }

// The cores one of `ranks` processes on this machine may count as its own: all it may use
// when it is confined (the confinement is its share), else an equal part of the machine.
inline int cores_per_rank(int ranks) {
  return confined_to_some_cores() ? usable_cores() : std::max(1, machine_cores() / std::max(1, ranks));
}

// Runs at once by default, each with `threads` threads.
inline int default_jobs(int ranks, int threads) { return std::max(1, cores_per_rank(ranks) / std::max(1, threads)); }

// Says so on stderr when `jobs` runs of `threads` threads each would share fewer cores.
inline void warn_if_oversubscribed(int jobs, int threads, int ranks = 1) {
  const int cores = cores_per_rank(ranks);
  if (jobs * threads <= cores) return;
  if (confined_to_some_cores())
    std::fprintf(stderr,
                 "warning: %d jobs x %d threads share the %d of the machine's %d cores this process is confined to "
                 "(by taskset, a cpuset, a CPU quota, or mpirun, which binds each rank unless given --bind-to none)\n",
                 jobs, threads, cores, machine_cores());
  else
    std::fprintf(stderr, "warning: %d jobs x %d threads exceed the %d cores%s\n", jobs, threads, cores,
                 ranks > 1 ? " of this rank's share of the machine" : "");
}

}  // namespace mfglab::engine
