#include "running/stop_signals.h"

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <thread>

namespace mfglab::engine {

namespace {

sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

}  // namespace

void block_stop_signals() {
  const sigset_t set = stop_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

void restore_stop_signals() {
  const sigset_t set = stop_signals();
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
}

void watch_stop_signals(void (*on_signal)(int)) {
  static std::atomic<bool> started{false};
  block_stop_signals();
  if (started.exchange(true)) return;
  std::thread([on_signal] {
    const sigset_t set = stop_signals();
    for (;;) {
      int signo = 0;
      if (sigwait(&set, &signo) == 0) on_signal(signo);
    }
  }).detach();
}

}  // namespace mfglab::engine
