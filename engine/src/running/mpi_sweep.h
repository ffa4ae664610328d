// Sweeps across machines on MPI. Under `mpirun -np N mfglab run ...` (or Slurm's srun),
// rank 0 coordinates: it hands the next run to whichever rank has a free slot, so long and
// short runs mix well, and collects the outcomes. Every rank (rank 0 too) runs its runs in
// worker processes of its own (isolation.h), with its own --jobs and --threads. The
// results folder must be shared by all ranks.
//
// Runs with train.data_parallel are trained by all ranks together, one after the other:
// every rank takes a slice of each batch and the gradients are summed with MPI_Allreduce
// before the optimizer step (trainer.h's Collective); rank 0 writes the files.
#pragma once

#include <string>

#include "runner.h"

namespace mfglab::engine {

class PluginHost;

class MpiWorld {
 public:
  // True when this process was started by an MPI launcher (mpirun, mpiexec, srun).
  static bool launched();
  MpiWorld(int* argc, char*** argv);  // MPI_Init
  ~MpiWorld();                        // MPI_Finalize
  MpiWorld(const MpiWorld&) = delete;
  MpiWorld& operator=(const MpiWorld&) = delete;
  int rank() const { return rank_; }
  int size() const { return size_; }
  int ranks_on_this_node() const;

 private:
  int rank_ = 0, size_ = 1;
};

// `mfglab run` on every rank of `world`; returns this rank's exit code (rank 0's is the
// one to read: 0, 1 when a run failed, 2 for bad input, 130 when interrupted).
int run_experiment_mpi(MpiWorld& world, const PluginHost& host, const std::string& file, RunOptions options, bool quiet);

}  // namespace mfglab::engine
