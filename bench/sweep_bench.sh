#!/usr/bin/env bash
# Throughput of sweeps and the cost of isolation, on this machine:
#   jobs      8 short runs of one experiment (sgm on 8gaussians): --jobs 2 against --jobs 1,
#             every run in a worker process of its own
#   mpi       the same 8 runs: mpirun -np 2 against -np 1 (one job per rank; --bind-to none, so
#             that -np 1 may use both cores as the plain run does, README "Beyond one machine")
#   overhead  experiments/quickstart.json, isolated workers against --in-process (wall time)
#   dp        data-parallel OT-Flow at batch 16384: seconds per step on 2 ranks against 1
# Wall times are the median of --repeats runs; every run starts from an empty folder. Each
# sweep also pays the start of its processes once (LibTorch loads in most of a second, MPI
# starts in a few tenths): with the default 1500 iterations a run trains for about 0.5 s and
# that fixed cost bounds the ratios; --iterations 10000 shows the throughput of longer runs.
# The jobs and mpi lines also give the runs' own mean training time in both sweeps: when two
# runs side by side each train slower (or faster) than one alone, that moves the ratio too.
#
# usage: bench/sweep_bench.sh [--repeats R] [--iterations N] [--mfglab PATH] [--parts "jobs mpi overhead dp"]
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
mfglab="${MFGLAB:-$root/build/bin/mfglab}"
repeats=3
iterations=1500
parts="jobs mpi overhead dp"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --repeats) repeats="$2"; shift 2 ;;
    --mfglab) mfglab="$2"; shift 2 ;;
    --parts) parts="$2"; shift 2 ;;
    --iterations) iterations="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "sweep_bench.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mpirun=(mpirun --allow-run-as-root --oversubscribe --bind-to none --mca btl self,vader,tcp --mca btl_vader_single_copy_mechanism none)

cat > "$work/sweep.json" <<EOF
{"name": "sweep", "seeds": [0, 1, 2, 3],
 "dataset": {"plugin": "toy2d", "params": {"name": "8gaussians", "train_size": 8000, "test_size": 1000}},
 "model": {"plugin": "sgm", "params": {"width": 64, "depth": 2, "sample_steps": 100}},
 "train": {"iterations": $iterations, "batch_size": 256, "log_every": 500},
 "eval": {"samples": 1000, "metrics": [{"plugin": "mmd", "params": {"bandwidth": [1]}}]},
 "sweep": {"train.optimizer.lr": [0.001, 0.002]}}
EOF
cat > "$work/dp.json" <<'EOF'
{"name": "dp", "seeds": [0],
 "dataset": {"plugin": "toy2d", "params": {"name": "8gaussians", "train_size": 65536, "test_size": 1000}},
 "model": {"plugin": "otflow", "params": {"width": 32, "steps": 8}},
 "train": {"iterations": 12, "batch_size": 16384, "data_parallel": true, "log_every": 4},
 "eval": {"samples": 100, "metrics": []}}
EOF

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Mean train_seconds of the runs in $work/out: the runs' own training time, which running
# runs side by side can slow (shared caches, memory and vector units) whatever the runner does.
train_mean() {
  python3 -c "import json,glob,sys; v=[json.load(open(f))['train_seconds'] for f in glob.glob(sys.argv[1] + '/*/*/summary.json')]; print(sum(v)/len(v))" "$work/out"
}

# Median wall seconds of `"$@"` over the repeats, each into a fresh output folder; the median
# of train_mean goes to $work/train.
wall() {
  local times=() trains=()
  for ((r = 0; r < repeats; r++)); do
    rm -rf "$work/out"
    local t0 t1
    t0=$(date +%s.%N)
    "$@" --out "$work/out" --no-plots --quiet > "$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }
    t1=$(date +%s.%N)
    times+=("$(echo "$t1 - $t0" | bc -l)")
    trains+=("$(train_mean)")
  done
  median "${trains[@]}" > "$work/train"
  median "${times[@]}"
}

# "each run trained A s alone and B s side by side (+P%)", from the two sweeps' train_mean.
side_by_side() {
  printf 'training time per run %.2f s one at a time, %.2f s two at a time (%+.0f%%)' "$1" "$2" \
    "$(echo "100 * ($2 - $1) / $1" | bc -l)"
}

# Wall seconds of one `"$@"` into a fresh output folder (figures as the arguments say).
once() {
  rm -rf "$work/out"
  local t0 t1
  t0=$(date +%s.%N)
  "$@" --out "$work/out" --quiet > "$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}

ratio() { echo "scale=2; $1 / $2" | bc -l; }

for part in $parts; do
  case "$part" in
    jobs)
      one=$(wall "$mfglab" run "$work/sweep.json" --jobs 1); t1=$(cat "$work/train")
      two=$(wall "$mfglab" run "$work/sweep.json" --jobs 2); t2=$(cat "$work/train")
      echo "jobs: 8 runs of $iterations iterations, --jobs 1 ${one} s, --jobs 2 ${two} s: $(ratio "$one" "$two")x (goal 1.8x); $(side_by_side "$t1" "$t2")" ;;
    mpi)
      one=$(wall "${mpirun[@]}" -np 1 "$mfglab" run "$work/sweep.json" --jobs 1); t1=$(cat "$work/train")
      two=$(wall "${mpirun[@]}" -np 2 "$mfglab" run "$work/sweep.json" --jobs 1); t2=$(cat "$work/train")
      echo "mpi: 8 runs of $iterations iterations, -np 1 ${one} s, -np 2 ${two} s: $(ratio "$one" "$two")x (goal 1.8x); $(side_by_side "$t1" "$t2")" ;;
    overhead)
      # The two modes alternate, so that a change of machine load hits both alike; without
      # figures (the strict case: all of the difference is process start) and with them (the
      # quickstart as the README runs it).
      for plots in "--no-plots" ""; do
        iso=(); inp=()
        for ((r = 0; r < repeats; r++)); do
          iso+=("$(once "$mfglab" run "$root/experiments/quickstart.json" $plots)")
          inp+=("$(once "$mfglab" run "$root/experiments/quickstart.json" --in-process $plots)")
        done
        i=$(median "${iso[@]}"); p=$(median "${inp[@]}")
        echo "overhead (${plots:-with figures}): quickstart isolated ${i} s, in-process ${p} s: $(echo "scale=1; 100 * ($i - $p) / $p" | bc -l)% (goal <= 3%)"
      done ;;
    dp)
      step() {  # median seconds per iteration of the dp run on $1 ranks
        rm -rf "$work/out"
        "${mpirun[@]}" -np "$1" "$mfglab" run "$work/dp.json" --out "$work/out" --no-plots --quiet > "$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }
        python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['seconds_per_iteration'])" "$work/out/dp/seed=0/summary.json"
      }
      s1=$(step 1); s2=$(step 2)
      echo "dp: OT-Flow batch 16384, 1 rank ${s1} s/step, 2 ranks ${s2} s/step: speed-up $(ratio "$s1" "$s2")x, efficiency $(echo "scale=2; $s1 / (2 * $s2)" | bc -l)" ;;
    *) echo "sweep_bench.sh: unknown part '$part'" >&2; exit 2 ;;
  esac
done
