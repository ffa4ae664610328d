#!/usr/bin/env bash
# Builds a chosen set of unit tests with AddressSanitizer and UndefinedBehaviorSanitizer (GCC)
# and runs them: the plugin host (broken and hostile libraries), the experiment validator, the
# .npy/CSV readers, the statistics and comparisons. The isolation and MPI tests are left out
# (ASan reserves terabytes of address space, which the memory-limit tests forbid by design), and
# so are the timing tests ([perf]): sanitized code runs several times slower.
#
# By default (CI: about 8 minutes on 2 cores) the engine, the `mfglab` launcher and these tests
# are sanitized, in ./build-sanitize. The plugins, built-in and the tests' own, are those of the
# normal build in ./build (built first if needed), loaded unsanitized: the ASan runtime lives in
# the executables, and plugins built from the same sources agree with the engine on the SDK ABI.
# Sanitizing them too takes about half an hour: --full does it, in ./build-sanitize-full, and
# adds the MFG and score-PDE regularizer tests, whose code is mostly in plugins.
# usage: scripts/sanitize.sh [--full] [TEST_REGEX]
set -euo pipefail
cd "$(dirname "$0")/.."
full=0
tests=(test_plugin_host test_experiment test_array_io test_stats test_compare)
if [ "${1:-}" = --full ]; then full=1; shift; tests+=(test_mfg_regularizers test_score_pde); fi
regex="${1:-^($(IFS='|'; echo "${tests[*]}"))\$}"
scripts/setup.sh ninja-build  # Ninja builds the chosen targets side by side
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
config=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DCMAKE_CXX_FLAGS="$flags"
        -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined"
        -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined"
        -DCMAKE_MODULE_LINKER_FLAGS="-fsanitize=address,undefined" -DMFGLAB_TEST_ARGS="~[perf]")
targets=(mfglab "${tests[@]}")
if [ $full = 1 ]; then
  dir=build-sanitize-full
else
  dir=build-sanitize
  scripts/build.sh "${targets[@]}"  # the plugins these tests load; nothing to do after scripts/test.sh
  config+=(-DMFGLAB_PLUGINS_FROM="$PWD/build")
fi
# A tree of another generator (this script used to build everything with Make in ./build-sanitize)
# is started afresh.
if [ -f $dir/CMakeCache.txt ] && ! grep -qx "CMAKE_GENERATOR:INTERNAL=Ninja" $dir/CMakeCache.txt; then
  rm -rf $dir
fi
cmake -S . -B $dir -G Ninja "${config[@]}" >/dev/null
cmake --build $dir -j"$(nproc)" $(printf -- '--target %s ' "${targets[@]}")
# Leaks are not checked: LibTorch's operator registry and the never-unloaded plugin
# libraries are alive at exit by design. ASan's reports go to files, so that one from a process
# a test starts (the mfglab CLI, its workers) fails the run whatever exit code the test expected.
# UBSan's stay on stderr (beside ASan, GCC's UBSan ignores log_path); they end the process with
# exit code 1, which the tests' exact exit-code checks catch.
reports="$PWD/$dir/sanitizer-reports"
rm -rf "$reports" && mkdir -p "$reports"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:log_path=$reports/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
status=0
(cd $dir && ctest --output-on-failure --timeout 1200 -j"$(nproc)" -R "$regex") || status=$?
if [ -n "$(ls -A "$reports")" ]; then
  cat "$reports"/*
  echo "sanitize: reports above, in $reports" >&2
  exit 1
fi
exit $status
