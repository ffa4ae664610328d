#!/usr/bin/env bash
# Fuzzes the experiment parser and validator, the .npy/CSV readers and the parameter parser
# with libFuzzer (Clang, AddressSanitizer + UndefinedBehaviorSanitizer), each for a bounded
# time, starting from the experiments/ files and tests/fuzz/corpus/<target>/. A crash fails
# the script and its input is written to tests/fuzz/corpus/<target>/ to be kept as a
# regression case.
# usage: scripts/fuzz.sh [SECONDS_PER_TARGET [SEED]]   (default 60 s; a SEED repeats the same mutations)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
seed_option=()
[ $# -ge 2 ] && seed_option=(-seed="$2")
scripts/setup.sh clang libclang-rt-14-dev
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ -DMFGLAB_FUZZ=ON >/dev/null
cmake --build build-fuzz -j"$(nproc)"
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1"
# The experiment validator sees the real plugins when a build tree has them.
[ -d build/lib/mfglab/plugins ] && export MFGLAB_FUZZ_PLUGIN_DIR="$PWD/build/lib/mfglab/plugins"
status=0
for target in experiment array_io params; do
  work="$(mktemp -d)"
  mkdir -p "tests/fuzz/corpus/$target"   # where a crashing input is kept
  seeds=("tests/fuzz/corpus/$target")
  [ "$target" = experiment ] && seeds+=(experiments)
  echo "fuzz_$target: ${seconds} s" >&2
  if ! build-fuzz/bin/fuzz_$target "${seed_option[@]}" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 \
         -max_len=65536 -print_final_stats=1 -artifact_prefix="tests/fuzz/corpus/$target/crash-" \
         "$work" "${seeds[@]}" > "$work.log" 2>&1; then
    tail -40 "$work.log" >&2
    echo "fuzz_$target: FAILED (the input is in tests/fuzz/corpus/$target/)" >&2
    status=1
  else
    grep -E "stat::number_of_executed_units|Done" "$work.log" | tail -2 >&2 || true
  fi
  rm -rf "$work" "$work.log"
done
exit $status
