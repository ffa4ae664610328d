#include "running/worker_spawn.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
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

// ---- the fork server -------------------------------------------------------------------

ForkServer spawn_fork_server(const std::string& executable) {
  std::string exe = executable, mode = "worker", flag = "--fork-server";
  char* argv[] = {exe.data(), mode.data(), flag.data(), nullptr};
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
    throw std::runtime_error(std::string("cannot create a socket: ") + std::strerror(errno));
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(sv[0]);
    ::close(sv[1]);
    throw std::runtime_error(std::string("cannot start the fork server: ") + std::strerror(errno));
  }
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(127);
    if (sv[1] == kForkServerFd) ::fcntl(sv[1], F_SETFD, 0);
    else ::dup2(sv[1], kForkServerFd);  // the copy is kept across exec
    ::execv(argv[0], argv);
    ::_exit(127);
  }
  ::close(sv[1]);
  return ForkServer{pid, sv[0]};
}

namespace {

void end_fork_server(ForkServer& server) {
  if (server.socket_fd >= 0) ::close(server.socket_fd);
  if (server.pid > 0) {
    ::kill(server.pid, SIGKILL);
    int status = 0;
    ::waitpid(server.pid, &status, 0);
  }
  server = ForkServer{};
}

// Pipes for a worker, both ends close-on-exec; the parent keeps in[1], out[0], status[0].
struct WorkerPipes {
  int in[2] = {-1, -1}, out[2] = {-1, -1}, status[2] = {-1, -1};
  WorkerPipes() {
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(status, O_CLOEXEC) != 0) {
      close_all();
      throw std::runtime_error(std::string("cannot create a pipe: ") + std::strerror(errno));
    }
  }
  void close_all() {
    for (int* fd : {&in[0], &in[1], &out[0], &out[1], &status[0], &status[1]})
      if (*fd >= 0) ::close(*fd), *fd = -1;
  }
};

}  // namespace

bool fork_worker(ForkServer& server, WorkerProcess& worker, int timeout_ms) {
  if (server.socket_fd < 0) return false;
  WorkerPipes pipes;
  // The request: one byte, and the child's ends of its three pipes.
  int child_ends[3] = {pipes.in[0], pipes.out[1], pipes.status[1]};
  char byte = 'w';
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof child_ends)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof child_ends);
  std::memcpy(CMSG_DATA(c), child_ends, sizeof child_ends);
  int32_t pid = -1;
  bool answered = false;
  if (::sendmsg(server.socket_fd, &msg, MSG_NOSIGNAL) == 1) {
    pollfd p{server.socket_fd, POLLIN, 0};
    int ready;
    while ((ready = ::poll(&p, 1, timeout_ms)) < 0 && errno == EINTR) {}
    ssize_t n = -1;
    if (ready == 1)
      while ((n = ::recv(server.socket_fd, &pid, sizeof pid, 0)) < 0 && errno == EINTR) {}
    answered = n == static_cast<ssize_t>(sizeof pid);
  }
  for (int* fd : {&pipes.in[0], &pipes.out[1], &pipes.status[1]}) ::close(*fd), *fd = -1;
  if (!answered || pid <= 0) {
    pipes.close_all();
    end_fork_server(server);  // gone, stuck or with threads: it will not serve again
    return false;
  }
  worker.pid = pid;
  worker.input_fd = pipes.in[1];
  worker.status_fd = pipes.status[0];
  worker.output_fd = pipes.out[0];
  return true;
}

namespace {

// Whether this process has one thread: only then is a fork without exec safe.
bool single_threaded() {
  DIR* d = ::opendir("/proc/self/task");
  if (!d) return false;
  int threads = 0;
  while (const dirent* e = ::readdir(d))
    if (e->d_name[0] != '.') ++threads;
  ::closedir(d);
  return threads == 1;
}

// In a worker the server has just forked: waits until the parent has adopted it, then takes
// its pipes as stdin, stdout/stderr and fd 3 (which closes the server's socket there).
void become_worker(int fds[3], pid_t middle, pid_t parent) {
  while (::getppid() == middle) ::usleep(50);
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // a worker never outlives its parent
  if (::getppid() != parent) ::_exit(127);
  int high[3];
  for (int k = 0; k < 3; ++k) high[k] = ::fcntl(fds[k], F_DUPFD_CLOEXEC, 10);  // out of 0..3's way
  for (int k = 0; k < 3; ++k) ::close(fds[k]);
  ::dup2(high[0], 0);
  ::dup2(high[1], 1);
  ::dup2(high[1], 2);
  ::dup2(high[2], kWorkerStatusFd);
  for (int k = 0; k < 3; ++k) ::close(high[k]);
  ::signal(SIGPIPE, SIG_DFL);
}

void reply(pid_t pid) {
  const int32_t answer = pid;
  ::send(kForkServerFd, &answer, sizeof answer, MSG_NOSIGNAL);
}

}  // namespace

bool serve_forks() {
  const pid_t parent = ::getppid();
  for (;;) {
    char byte;
    iovec iov{&byte, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(3 * sizeof(int))] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(kForkServerFd, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;  // the parent is done
    int fds[3] = {-1, -1, -1};
    const cmsghdr* c = CMSG_FIRSTHDR(&msg);
    const bool complete = c && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof fds);
    if (c && c->cmsg_type == SCM_RIGHTS) std::memcpy(fds, CMSG_DATA(c), std::min<size_t>(sizeof fds, c->cmsg_len - CMSG_LEN(0)));
    pid_t worker = -1;
    if (complete && single_threaded()) {
      int pid_pipe[2];
      if (::pipe2(pid_pipe, O_CLOEXEC) == 0) {
        // Through a middle process that exits at once, so that the worker is adopted by the
        // parent (a child subreaper) and the parent can wait for it.
        const pid_t middle = ::fork();
        if (middle == 0) {
          const pid_t self = ::getpid();
          const pid_t w = ::fork();
          if (w == 0) {
            ::close(pid_pipe[0]);
            ::close(pid_pipe[1]);
            become_worker(fds, self, parent);
            return true;
          }
          const int32_t told = w;
          [[maybe_unused]] const ssize_t written = ::write(pid_pipe[1], &told, sizeof told);
          ::_exit(0);
        }
        ::close(pid_pipe[1]);
        int32_t told = -1;
        if (middle > 0) {
          if (::read(pid_pipe[0], &told, sizeof told) != static_cast<ssize_t>(sizeof told)) told = -1;
          int status = 0;
          while (::waitpid(middle, &status, 0) < 0 && errno == EINTR) {}  // then the worker is adopted
        }
        ::close(pid_pipe[0]);
        worker = told;
      }
    }
    for (int fd : fds)
      if (fd >= 0) ::close(fd);
    reply(worker > 0 ? worker : 0);  // 0: refused, the parent starts its worker by exec
  }
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
