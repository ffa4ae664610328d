#!/usr/bin/env bash
# Builds the engine, the plugins and a chosen set of unit tests with AddressSanitizer and
# UndefinedBehaviorSanitizer (GCC) in ./build-sanitize, and runs those tests. The chosen
# ones exercise the plugin host (broken and hostile libraries), the experiment validator,
# the file readers, the statistics and comparisons, and the MFG and score-PDE regularizers
# without long training; the isolation and MPI tests are left out (ASan reserves terabytes
# of address space, which the memory-limit tests forbid by design).
# usage: scripts/sanitize.sh [TEST_REGEX]
set -euo pipefail
cd "$(dirname "$0")/.."
tests=(test_plugin_host test_experiment test_array_io test_stats test_compare test_mfg_regularizers
       test_score_pde)
regex="${1:-^($(IFS='|'; echo "${tests[*]}"))\$}"
scripts/setup.sh
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" -DCMAKE_MODULE_LINKER_FLAGS="-fsanitize=address,undefined" \
  >/dev/null
targets=(--target mfglab)
for t in "${tests[@]}"; do targets+=(--target "$t"); done
cmake --build build-sanitize -j"$(nproc)" "${targets[@]}"
# Leaks are not checked: LibTorch's operator registry and the never-unloaded plugin
# libraries are alive at exit by design.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
cd build-sanitize
ctest --output-on-failure --timeout 1200 -R "$regex"
