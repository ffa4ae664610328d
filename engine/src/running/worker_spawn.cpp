#include "running/worker_spawn.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace mfglab::engine {

void write_all(int fd, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the reader is gone: nothing to tell it
    done += static_cast<size_t>(n);
  }
}

WorkerProcess spawn_standby_worker(const std::string& executable) {
  // Everything the child needs is prepared before fork: after it, only exec.
  std::string exe = executable, mode = "worker", standby = "--standby";
  char* argv[] = {exe.data(), mode.data(), standby.data(), nullptr};
  int in_pipe[2], out_pipe[2], status_pipe[2];
  if (::pipe2(in_pipe, O_CLOEXEC) != 0) throw std::runtime_error(std::string("cannot create a pipe: ") + std::strerror(errno));
  if (::pipe2(out_pipe, O_CLOEXEC) != 0 || ::pipe2(status_pipe, O_CLOEXEC) != 0)
    throw std::runtime_error(std::string("cannot create a pipe: ") + std::strerror(errno));
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error(std::string("cannot start a worker process: ") + std::strerror(errno));
  if (pid == 0) {
    // The child: async-signal-safe calls only, then exec.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // a worker never outlives its parent
    if (::getppid() != parent) ::_exit(127);
    struct sigaction dfl{};
    dfl.sa_handler = SIG_DFL;
    ::sigaction(SIGPIPE, &dfl, nullptr);
    ::dup2(in_pipe[0], 0);
    ::dup2(out_pipe[1], 1);
    ::dup2(out_pipe[1], 2);
    ::dup2(status_pipe[1], kWorkerStatusFd);
    ::execv(argv[0], argv);
    ::_exit(127);
  }
  ::close(in_pipe[0]);
  ::close(out_pipe[1]);
  ::close(status_pipe[1]);
  WorkerProcess w;
  w.pid = pid;
  w.input_fd = in_pipe[1];
  w.status_fd = status_pipe[0];
  w.output_fd = out_pipe[0];
  return w;
}

void assign_worker(WorkerProcess& worker, const std::vector<std::string>& args, const std::string& payload) {
  // The count, then each argument as its length and its bytes: any byte may be in a path.
  std::string message = std::to_string(args.size()) + "\n";
  for (const auto& a : args) message += std::to_string(a.size()) + "\n" + a;
  write_all(worker.input_fd, message + payload);
  ::close(worker.input_fd);
  worker.input_fd = -1;
}

void discard_worker(WorkerProcess& worker) {
  if (worker.pid > 0) {
    ::kill(worker.pid, SIGKILL);
    int status = 0;
    ::waitpid(worker.pid, &status, 0);
  }
  for (int* fd : {&worker.input_fd, &worker.status_fd, &worker.output_fd})
    if (*fd >= 0) ::close(*fd), *fd = -1;
  worker.pid = -1;
}

}  // namespace mfglab::engine
