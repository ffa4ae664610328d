// How many cores a `run` may use, and so how many runs it starts at once by default.
//
// A process may be confined to some of the machine's cores: by taskset, a container's cpuset,
// Slurm, or mpirun, which binds each rank to a core (two ranks or fewer) or a socket unless
// told `--bind-to none`. Every worker inherits that confinement, so the default number of jobs
// counts the cores this process may run on, not the machine's. Header-only: the launcher,
// which does not link the engine, decides the same number.
#pragma once

#include <sched.h>

#include <algorithm>
#include <cstdio>
#include <thread>

namespace mfglab::engine {

inline int machine_cores() { return std::max(1, static_cast<int>(std::thread::hardware_concurrency())); }

// The cores in this process's CPU affinity mask.
inline int usable_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return machine_cores();
  return std::max(1, CPU_COUNT(&set));
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
                 "(by taskset, a cpuset, or mpirun, which binds each rank unless given --bind-to none)\n",
                 jobs, threads, cores, machine_cores());
  else
    std::fprintf(stderr, "warning: %d jobs x %d threads exceed the %d cores%s\n", jobs, threads, cores,
                 ranks > 1 ? " of this rank's share of the machine" : "");
}

}  // namespace mfglab::engine
