#!/usr/bin/env bash
# Seconds per training iteration of mfglab's cnf model against the PyTorch reference
# (../shared/ref/cnf_ref.py), same settings on both sides: FFJORD-style flow, velocity MLP
# 3 hidden layers of 64, tanh, RK4 with 8 steps, batch 512, 8gaussians, Adam lr 5e-3,
# float32, the same intra-op thread count and the same malloc thresholds:
#   exact       exact divergence (mfglab: its kernel's forward Jacobian sweep; the
#               reference: d reverse passes of autograd)
#   hutchinson  Hutchinson's estimator with one Rademacher probe per solve
# Both sides' figures come from their own per-iteration step times (mfglab: losses.csv;
# the reference: iter_s of its JSON), after 5 warm-up steps: the median and the 10th
# percentile (on a shared machine the less load-sensitive figure). Each seed is one
# repeat; the two sides run one after the other, alternating which goes first. The final
# test NLL (nats, exact divergence, 8 RK4 steps, 5000 held-out points) of every run is
# reported too: the two implementations should agree within seed-to-seed noise.
#
# usage: bench/cnf_bench.sh [--iters N] [--seeds "0 1 2"] [--threads "1 2"] [--configs "exact hutchinson"]
#                           [--mfglab PATH] [--no-ref]
# Needs /usr/bin/python3.11 with torch and numpy (apt-get install -y python3-torch python3-numpy).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
iters=300
seeds="0 1 2"
thread_counts="1 2"
configs="exact hutchinson"
mfglab="${MFGLAB:-$root/build/bin/mfglab}"
run_ref=1
ref="$root/../shared/ref/cnf_ref.py"
python=/usr/bin/python3.11

while [[ $# -gt 0 ]]; do
  case "$1" in
    --iters) iters="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --threads) thread_counts="$2"; shift 2 ;;
    --configs) configs="$2"; shift 2 ;;
    --mfglab) mfglab="$2"; shift 2 ;;
    --no-ref) run_ref=0; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "cnf_bench.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ -x "$mfglab" ]] || { echo "cnf_bench.sh: no mfglab binary at $mfglab (build it, or pass --mfglab)" >&2; exit 2; }
"$python" -c 'import numpy' 2>/dev/null || { echo "cnf_bench.sh: $python lacks numpy" >&2; exit 2; }
if [[ $run_ref == 1 ]]; then
  [[ -f "$ref" ]] || { echo "cnf_bench.sh: reference script not found at $ref" >&2; exit 2; }
  "$python" -c 'import torch, numpy' 2>/dev/null ||
    { echo "cnf_bench.sh: $python lacks torch/numpy: apt-get install -y python3-torch python3-numpy" >&2; exit 2; }
fi

work="$(mktemp -d /tmp/cnf_bench.XXXXXX)"
trap 'rm -rf "$work"' EXIT

# The engine raises glibc's malloc thresholds itself; the reference gets the same setting so
# that both sides are measured at their best. OpenBLAS stays single-threaded on both sides;
# OpenMP threads wait passively (spinning ones on a loaded machine slow both sides).
malloc_env=GLIBC_TUNABLES=glibc.malloc.mmap_threshold=67108864:glibc.malloc.trim_threshold=268435456
ref_env=(env "$malloc_env" OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=passive)
mfglab_env=(env OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=passive)

# One experiment per configuration and seed. The training pool is large (the reference draws
# fresh points every iteration); the test NLL is the nll metric on 5000 held-out points.
experiment() {  # config seed
  cat > "$work/$1-$2.json" <<EOF
{
  "name": "$1",
  "seeds": [$2],
  "dataset": {"plugin": "toy2d", "params": {"name": "8gaussians", "train_size": 200000, "test_size": 5000}},
  "model": {"plugin": "cnf", "params": {"width": 64, "depth": 3, "activation": "tanh", "solver": "rk4", "steps": 8,
                                        "divergence": "$1", "probe": "rademacher", "probes": 1, "log_every": 0}},
  "train": {"iterations": $iters, "batch_size": 512, "optimizer": {"type": "adam", "lr": 0.005},
            "log_every": $iters, "checkpoint_every": 1000000},
  "eval": {"samples": 100, "metrics": [{"plugin": "nll"}]}
}
EOF
}

# "median p10" of per-iteration seconds after 5 warm-up steps, from a csv column or a json list
source "$here/step_stats.sh"  # step_stats, stats, median

mfglab_run() {  # config seed threads -> "median p10 nll"
  experiment "$1" "$2"
  rm -rf "$work/out"
  "${mfglab_env[@]}" "$mfglab" run "$work/$1-$2.json" --out "$work/out" --jobs 1 --threads "$3" --force --no-plots \
      >"$work/mfglab.log" 2>&1 ||
    { cat "$work/mfglab.log" >&2; echo "cnf_bench.sh: mfglab run failed for $1, seed $2" >&2; exit 1; }
  local dir
  dir="$(dirname "$(ls "$work"/out/"$1"/*/losses.csv | head -1)")"
  echo "$(step_stats "$dir/losses.csv" seconds) $("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["metrics"]["nll"])' "$dir/summary.json")"
}

ref_run() {  # config seed threads -> "median p10 nll"
  (cd "$work" && "${ref_env[@]}" OMP_NUM_THREADS="$3" "$python" "$ref" --data 8gaussians --iters "$iters" \
      --batch 512 --width 64 --depth 3 --act tanh --steps 8 --divergence "$1" --lr 5e-3 --seed "$2" \
      --threads "$3" --n_eval 5000 --log_every 1000000 --out ref.json >"$work/ref.log" 2>&1) ||
    { cat "$work/ref.log" >&2; echo "cnf_bench.sh: reference failed for $1, seed $2" >&2; exit 1; }
  echo "$(step_stats "$work/ref.json" iter_s) $("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["test_nll"])' "$work/ref.json")"
}

echo "cnf_bench: $iters iterations, seeds: $seeds, batch 512, MLP 3 x 64 tanh, RK4 8 steps, float32, Adam 5e-3, threads: $thread_counts"
echo "  both: OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=passive; malloc thresholds: mfglab sets them itself (mallopt),"
echo "  the reference gets $malloc_env"
echo "  machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); load before: $(uptime | sed 's/.*load/load/')"
echo "mfglab: $mfglab"
echo "reference: $ref"
declare -A mine theirs mine10 theirs10 mine_nll theirs_nll
r=0
for s in $seeds; do
  r=$((r + 1))
  for T in $thread_counts; do
    for c in $configs; do
      k="$c/$T"
      a="" b=""
      # Alternate which side goes first, so that a load change hits both alike.
      if ((r % 2)) || [[ $run_ref == 0 ]]; then
        a="$(mfglab_run "$c" "$s" "$T")"
        if [[ $run_ref == 1 ]]; then b="$(ref_run "$c" "$s" "$T")"; fi
      else
        b="$(ref_run "$c" "$s" "$T")"
        a="$(mfglab_run "$c" "$s" "$T")"
      fi
      read -r a_med a_p10 a_nll <<<"$a"
      mine[$k]+="$a_med " mine10[$k]+="$a_p10 " mine_nll[$k]+="$a_nll "
      line="  seed $s, $T thread(s), $c: mfglab median $a_med p10 $a_p10 s/it, NLL $a_nll"
      if [[ -n $b ]]; then
        read -r b_med b_p10 b_nll <<<"$b"
        theirs[$k]+="$b_med " theirs10[$k]+="$b_p10 " theirs_nll[$k]+="$b_nll "
        line+="; reference median $b_med p10 $b_p10 s/it, NLL $b_nll"
      fi
      echo "$line  ($(cut -d' ' -f1 /proc/loadavg) load)"
    done
  done
done

# median [min, max] of a list of numbers, in milliseconds
# mean +- standard deviation of a list
meansd() {
  echo "$1" | tr ' ' '\n' | grep . | awk '{s += $1; q += $1 * $1; n++}
    END {m = s / n; v = n > 1 ? (q - n * m * m) / (n - 1) : 0; printf "%.3f +- %.3f", m, sqrt(v > 0 ? v : 0)}'
}

echo
echo "machine load after: $(uptime | sed 's/.*load/load/')"
printf "%-11s %-7s %-6s  %-26s  %-26s  %s\n" config threads stat "mfglab ms/it [min,max]" "reference ms/it" "speedup (reference/mfglab)"
for T in $thread_counts; do
  for c in $configs; do
    k="$c/$T"
    for st in median p10; do
      if [[ $st == median ]]; then m="${mine[$k]}" t="${theirs[$k]:-}"; else m="${mine10[$k]}" t="${theirs10[$k]:-}"; fi
      if [[ $run_ref == 1 ]]; then
        ratio=$(awk -v a="$(median "$t")" -v b="$(median "$m")" 'BEGIN {printf "%.2fx", a / b}')
        printf "%-11s %-7s %-6s  %-26s  %-26s  %s\n" "$c" "$T" "$st" "$(stats "$m")" "$(stats "$t")" "$ratio"
      else
        printf "%-11s %-7s %-6s  %-26s\n" "$c" "$T" "$st" "$(stats "$m")"
      fi
    done
  done
done
for c in $configs; do
  first="${thread_counts%% *}" last="${thread_counts##* }"
  [[ $first == "$last" ]] && continue
  echo "$c: $first -> $last threads, median step time ratio: mfglab" \
       "$(awk -v a="$(median "${mine[$c/$first]}")" -v b="$(median "${mine[$c/$last]}")" 'BEGIN {printf "%.2fx", a / b}')" \
       "${theirs[$c/$first]:+reference $(awk -v a="$(median "${theirs[$c/$first]}")" -v b="$(median "${theirs[$c/$last]}")" 'BEGIN {printf "%.2fx", a / b}')}"
done
echo
# One run per seed (the first thread count's): mfglab's results do not depend on the thread count.
first="${thread_counts%% *}"
echo "final test NLL (nats, mean +- sd over seeds $seeds, runs with $first thread(s)):"
for c in $configs; do
  if [[ $run_ref == 1 ]]; then
    echo "  $c: mfglab $(meansd "${mine_nll[$c/$first]}"), reference $(meansd "${theirs_nll[$c/$first]}")"
  else
    echo "  $c: mfglab $(meansd "${mine_nll[$c/$first]}")"
  fi
done
echo "(median over seeds of each run's median / 10th-percentile step time; p10 is the less load-sensitive figure)"
echo "goal: >= 3x faster than the reference on 1 thread, exact and Hutchinson divergence"
