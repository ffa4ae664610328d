// The engine's entry point. The `mfglab` executable is a small launcher (launcher.cpp) that
// loads the engine library, libmfglab_engine.so, and calls this with its command line and
// the fork server it started (null if none).
#pragma once

#include <cstddef>

#include "running/worker_spawn.h"

extern "C" __attribute__((visibility("default"))) int mfglab_main(int argc, char** argv,
                                                                  const mfglab::engine::ForkServer* fork_server);
