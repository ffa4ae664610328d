// Starting a worker process: a fork+exec of the mfglab binary in its hidden `worker --standby`
// mode. The new process loads the engine (LibTorch's start takes most of a second) and then
// waits for its run on stdin, so a worker can be started before its run is known: the
// launcher starts them while the engine itself loads (launcher/launcher.cpp).
//
// Nothing here uses LibTorch: the launcher links this file alone.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace mfglab::engine {

// The parent's ends of a worker's pipes.
struct WorkerProcess {
  pid_t pid = -1;
  int input_fd = -1;   // the worker's stdin: its assignment, then the experiment's text
  int status_fd = -1;  // its fd 3: progress as one JSON object per line
  int output_fd = -1;  // its stdout and stderr
};

// The fd on which a worker reports its progress.
constexpr int kWorkerStatusFd = 3;

// Starts `executable worker --standby`. The worker dies with the calling thread
// (PR_SET_PDEATHSIG), so call it from the main thread. Throws std::runtime_error.
WorkerProcess spawn_standby_worker(const std::string& executable);

// Gives a standby worker its run: one line holding the worker's command-line arguments as a
// JSON array of strings, then `payload` (the experiment's text); closes its stdin.
void assign_worker(WorkerProcess& worker, const std::vector<std::string>& args, const std::string& payload);

// Ends a worker that has no run (SIGKILL) and closes its pipes.
void discard_worker(WorkerProcess& worker);

// Writes all of `text`; stops quietly if the reader is gone.
void write_all(int fd, const std::string& text);

}  // namespace mfglab::engine
