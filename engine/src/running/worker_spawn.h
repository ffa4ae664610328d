// Starting a worker process. A worker loads the engine and then waits for its run on stdin,
// so it can be started before its run is known. Two ways to start one:
//
// - A fork server (the default for `mfglab run`): the launcher starts one process, a fork+exec
//   of the mfglab binary in its hidden `worker --fork-server` mode, while the engine itself
//   loads. It loads LibTorch once (most of a second of CPU), starts no thread, and forks one
//   worker per request. A worker then costs a fork, not a LibTorch start, and is still a
//   process of its own. The server refuses to fork once it has a second thread; the worker is
//   then started the other way.
// - A fork+exec of the mfglab binary in its `worker --standby` mode, which loads LibTorch anew.
//
// Either way the worker is a child of the process that asked for it: the server forks it
// through an intermediate process that exits at once, and the launcher has made itself the
// "child subreaper" that adopts it (PR_SET_CHILD_SUBREAPER), so waitpid works as usual.
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

// The parent's end of a fork server.
struct ForkServer {
  pid_t pid = -1;
  int socket_fd = -1;  // requests go out with the worker's three pipe ends; its pid comes back
};

// The fd on which a fork server reads its requests.
constexpr int kForkServerFd = 3;

// Starts `executable worker --fork-server`. Call it from the main thread of a process that has
// made itself a child subreaper. Throws std::runtime_error.
ForkServer spawn_fork_server(const std::string& executable);

// A new worker from the server, waiting for its run like a standby worker. False when the
// server cannot give one (gone, refused, or no answer within `timeout_ms`); the server is
// then ended and `server.pid` is -1.
bool fork_worker(ForkServer& server, WorkerProcess& worker, int timeout_ms = 60000);

// The body of `mfglab worker --fork-server`: serves requests on kForkServerFd until the parent
// closes it. Returns false in the server when it ends, true in each forked worker, whose
// stdin, stdout/stderr and fd 3 are then its pipes: it goes on as a standby worker.
bool serve_forks();

// Gives a standby worker its run: one line holding the worker's command-line arguments as a
// JSON array of strings, then `payload` (the experiment's text); closes its stdin.
void assign_worker(WorkerProcess& worker, const std::vector<std::string>& args, const std::string& payload);

// Ends a worker that has no run (SIGKILL) and closes its pipes.
void discard_worker(WorkerProcess& worker);

// Writes all of `text`; stops quietly if the reader is gone.
void write_all(int fd, const std::string& text);

}  // namespace mfglab::engine
