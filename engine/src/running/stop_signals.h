// SIGINT (Ctrl-C) and SIGTERM (a parent, the time limit, mpirun, a batch scheduler) ask a run
// to stop. They are taken by a thread of their own, never by a signal handler.
//
// Why: a handler runs on the stack of whichever thread the signal lands on, and oneDNN's sgemm
// kernels (gemm_backend.cpp: every float matrix product in the process) keep live data below
// the stack pointer, beyond the 128 bytes the x86-64 ABI sets aside for that. A handler frame
// that lands there silently changes a product or corrupts the heap ("corrupted size vs.
// prev_size"): measured with oneDNN 2.6.3, a loop of products aborts within seconds under a
// stream of signals whose handler does nothing, and never with the handler on another stack.
//
// So the launcher blocks both signals before anything else (block_stop_signals), every thread
// inherits the mask, and one thread waits for them (watch_stop_signals). Commands that simply
// end on Ctrl-C unblock them instead (restore_stop_signals). The mask is kept across exec, so
// a worker the engine starts is covered from its first instruction.
//
// Nothing here uses LibTorch: the launcher links this file.
#pragma once

namespace mfglab::engine {

// Blocks SIGINT and SIGTERM in the calling thread and so in every thread it starts later.
void block_stop_signals();

// Starts (once per process) a thread that calls on_signal(signo) for each SIGINT or SIGTERM,
// outside any signal handler; blocks both signals in the calling thread first.
void watch_stop_signals(void (*on_signal)(int));

// Unblocks SIGINT and SIGTERM in the calling thread: their default action ends the process.
void restore_stop_signals();

}  // namespace mfglab::engine
