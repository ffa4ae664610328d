#!/usr/bin/env bash
# Seconds per training iteration of mfglab's score model against the PyTorch reference
# (../shared/ref/sgm_ref.py), same network (3 hidden layers of 128, SiLU), batch 1024,
# float32, the same intra-op thread count (1 by default) and the same malloc thresholds:
#   dsm       denoising score matching only
#   hjb-lap   DSM + the score-PDE residual, Laplacian form (the reference's default; mfglab
#             takes the score's derivatives from sgm's one-sweep forward-mode jets)
#   hjb-grad  DSM + the score-PDE residual, gradient form (mfglab: one sweep of tangents up
#             and output adjoints down). Both sides take the residual at the DSM loss's own
#             points and run the network there once for both terms.
#   pot-lap   the potential parameterisation (score = -grad_x U / sigma, U a scalar network of
#             the same size) with DSM + the score-PDE residual, Laplacian form; the reference
#             side is bench/sgm_potential_ref.py (plain PyTorch, autograd to third order).
#             Its steps are slow, so it runs --pot-iters iterations (default 30).
#   pot-grad  the same with the gradient form
# Both sides' figures come from their own per-iteration step times (mfglab: losses.csv;
# the reference: iter_s of its JSON), after 5 warm-up steps: the median, and the 10th
# percentile, which on a shared machine estimates the step's cost when it was not
# preempted. Every configuration runs --repeats times, the two sides alternating which
# goes first, and the table shows the median over repeats with the [min, max] range.
#
# usage: bench/sgm_bench.sh [--iters N] [--repeats R] [--mfglab PATH] [--configs "dsm hjb-lap hjb-grad pot-lap"]
#                           [--threads "1 2"] [--no-ref] [--pot-iters N]
# Needs /usr/bin/python3.11 with torch and numpy (apt-get install -y python3-torch python3-numpy).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
iters=200
pot_iters=30
repeats=3
mfglab="${MFGLAB:-$root/build/bin/mfglab}"
thread_counts=1
configs="dsm hjb-lap hjb-grad pot-lap"
run_ref=1
ref="$root/../shared/ref/sgm_ref.py"
potential_ref="$here/sgm_potential_ref.py"
python=/usr/bin/python3.11

while [[ $# -gt 0 ]]; do
  case "$1" in
    --iters) iters="$2"; shift 2 ;;
    --pot-iters) pot_iters="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    --mfglab) mfglab="$2"; shift 2 ;;
    --configs) configs="$2"; shift 2 ;;
    --threads) thread_counts="$2"; shift 2 ;;
    --no-ref) run_ref=0; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "sgm_bench.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ -x "$mfglab" ]] || { echo "sgm_bench.sh: no mfglab binary at $mfglab (build it, or pass --mfglab)" >&2; exit 2; }
if [[ $run_ref == 1 ]]; then
  [[ -f "$ref" ]] || { echo "sgm_bench.sh: reference script not found at $ref" >&2; exit 2; }
  "$python" -c 'import torch, numpy' 2>/dev/null ||
    { echo "sgm_bench.sh: $python lacks torch/numpy: apt-get install -y python3-torch python3-numpy" >&2; exit 2; }
fi

work="$(mktemp -d /tmp/sgm_bench.XXXXXX)"
trap 'rm -rf "$work"' EXIT

# The engine raises glibc's malloc thresholds itself; the reference gets the same setting
# (its faster case, README of ../shared/ref) so that both sides are measured at their best.
# OpenBLAS stays single-threaded on both sides (the engine sets it at start); OpenMP
# threads wait passively, since spinning ones on a loaded machine slow both sides 10x.
malloc_env=GLIBC_TUNABLES=glibc.malloc.mmap_threshold=67108864:glibc.malloc.trim_threshold=268435456
ref_env=(env "$malloc_env" OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=passive)
mfglab_env=(env OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=passive)

# An experiment running N iterations of one configuration; sampling and evaluation are
# kept tiny (they are not timed).
experiment() {  # name regularizers-json [parameterization] [iterations]
  local n="${4:-$iters}"
  cat > "$work/$1.json" <<EOF
{
  "name": "$1",
  "seeds": [0],
  "dataset": {"plugin": "toy2d", "params": {"name": "8gaussians", "train_size": 20000, "test_size": 200}},
  "model": {"plugin": "sgm", "params": {"width": 128, "depth": 3, "activation": "silu", "sample_steps": 2,
                                        "parameterization": "${3:-score}"}},
  "regularizers": $2,
  "train": {"iterations": $n, "batch_size": 1024, "optimizer": {"type": "adam", "lr": 0.001},
            "log_every": $n, "checkpoint_every": 1000000},
  "eval": {"samples": 100, "metrics": []}
}
EOF
}
experiment dsm '[]'
experiment hjb-lap '[{"plugin": "score_pde", "weight": 1.0, "params": {"form": "lap"}}]'
experiment hjb-grad '[{"plugin": "score_pde", "weight": 1.0, "params": {"form": "grad"}}]'
experiment pot-lap '[{"plugin": "score_pde", "weight": 1.0, "params": {"form": "lap"}}]' potential "$pot_iters"
experiment pot-grad '[{"plugin": "score_pde", "weight": 1.0, "params": {"form": "grad"}}]' potential "$pot_iters"

# "median p10" of per-iteration seconds after 5 warm-up steps, from a csv column or a json list
source "$here/step_stats.sh"  # step_stats, stats, median

mfglab_step() {  # config threads -> seconds per iteration
  rm -rf "$work/out"
  "${mfglab_env[@]}" "$mfglab" run "$work/$1.json" --out "$work/out" --jobs 1 --threads "$2" --force --no-plots \
      >"$work/mfglab.log" 2>&1 ||
    { cat "$work/mfglab.log" >&2; echo "sgm_bench.sh: mfglab run failed for $1" >&2; exit 1; }
  step_stats "$(ls "$work"/out/"$1"/*/losses.csv | head -1)" seconds
}

ref_step() {  # config threads -> seconds per iteration
  local extra=()
  case "$1" in
    hjb-lap) extra=(--hjb_weight 1 --hjb_form lap) ;;
    hjb-grad) extra=(--hjb_weight 1 --hjb_form grad) ;;
    pot-lap|pot-grad)
      (cd "$work" && "${ref_env[@]}" OMP_NUM_THREADS="$2" "$python" "$potential_ref" --ref_dir "$(dirname "$ref")" \
          --data 8gaussians --iters "$pot_iters" --batch 1024 --width 128 --depth 3 --threads "$2" \
          --hjb_weight 1 --hjb_form "${1#pot-}" --out ref.json >"$work/ref.log" 2>&1) ||
        { cat "$work/ref.log" >&2; echo "sgm_bench.sh: potential reference failed for $1" >&2; exit 1; }
      step_stats "$work/ref.json" iter_s
      return ;;
  esac
  (cd "$work" && "${ref_env[@]}" OMP_NUM_THREADS="$2" "$python" "$ref" --data 8gaussians --iters "$iters" \
      --batch 1024 --width 128 --depth 3 --act silu --threads "$2" --n_eval 200 --steps 2 --log_every 1000000 --out ref.json \
      "${extra[@]}" >"$work/ref.log" 2>&1) ||
    { cat "$work/ref.log" >&2; echo "sgm_bench.sh: reference failed for $1" >&2; exit 1; }
  step_stats "$work/ref.json" iter_s
}

echo "sgm_bench: $iters iterations ($pot_iters for pot-*) x $repeats repeats, batch 1024, MLP 3 x 128 SiLU, float32, Adam, threads: $thread_counts"
echo "  both: OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=passive OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-(auto)}; malloc thresholds: mfglab sets them itself (mallopt),"
echo "  the reference gets $malloc_env"
echo "  machine: $(nproc) cores; load before: $(uptime | sed 's/.*load/load/')"
echo "mfglab: $mfglab"
echo "reference: $ref (pot-*: $potential_ref)"
declare -A mine theirs mine10 theirs10
for ((r = 1; r <= repeats; r++)); do
  for T in $thread_counts; do
    for c in $configs; do
      k="$c/$T"
      # Alternate which side goes first, so that a load change hits both alike.
      a="" b=""
      if ((r % 2)) || [[ $run_ref == 0 ]]; then
        a="$(mfglab_step "$c" "$T")"
        if [[ $run_ref == 1 ]]; then b="$(ref_step "$c" "$T")"; fi
      else
        b="$(ref_step "$c" "$T")"
        a="$(mfglab_step "$c" "$T")"
      fi
      read -r a_med a_p10 <<<"$a"
      mine[$k]+="$a_med " mine10[$k]+="$a_p10 "
      if [[ -n $b ]]; then
        read -r b_med b_p10 <<<"$b"
        theirs[$k]+="$b_med " theirs10[$k]+="$b_p10 "
      fi
      echo "  repeat $r, $T thread(s), $c: mfglab median $a_med p10 $a_p10 s/it" \
           "${b:+reference median $b_med p10 $b_p10 s/it}  ($(cut -d' ' -f1 /proc/loadavg) load)"
    done
  done
done

# median [min, max] of a list of numbers, in milliseconds

echo
echo "machine load after: $(uptime | sed 's/.*load/load/')"
printf "%-9s %-7s %-6s  %-28s  %-28s  %s\n" config threads stat "mfglab ms/it [min,max]" "reference ms/it" "speedup (reference/mfglab)"
for T in $thread_counts; do
  for c in $configs; do
    k="$c/$T"
    if [[ $run_ref == 1 ]]; then
      ratio=$(awk -v a="$(median "${theirs[$k]}")" -v b="$(median "${mine[$k]}")" 'BEGIN {printf "%.2fx", a / b}')
      printf "%-9s %-7s %-6s  %-28s  %-28s  %s\n" "$c" "$T" median "$(stats "${mine[$k]}")" "$(stats "${theirs[$k]}")" "$ratio"
      ratio=$(awk -v a="$(median "${theirs10[$k]}")" -v b="$(median "${mine10[$k]}")" 'BEGIN {printf "%.2fx", a / b}')
      printf "%-9s %-7s %-6s  %-28s  %-28s  %s\n" "$c" "$T" p10 "$(stats "${mine10[$k]}")" "$(stats "${theirs10[$k]}")" "$ratio"
    else
      printf "%-9s %-7s %-6s  %-28s\n" "$c" "$T" median "$(stats "${mine[$k]}")"
      printf "%-9s %-7s %-6s  %-28s\n" "$c" "$T" p10 "$(stats "${mine10[$k]}")"
    fi
  done
  for c in $configs; do
    [[ $c == dsm || $c == pot-* || -z "${mine[dsm/$T]:-}" ]] && continue
    echo "$c / dsm step time, $T thread(s): mfglab $(awk -v a="$(median "${mine[$c/$T]}")" -v b="$(median "${mine[dsm/$T]}")" 'BEGIN {printf "%.1fx", a / b}')" \
         "${theirs[$c/$T]:+reference $(awk -v a="$(median "${theirs[$c/$T]}")" -v b="$(median "${theirs[dsm/$T]}")" 'BEGIN {printf "%.1fx", a / b}')}"
  done
done
echo "(median over repeats of each run's median / 10th-percentile step time; p10 is the less load-sensitive figure)"
echo "goals: dsm >= 2x faster than the reference, hjb-lap and hjb-grad >= 3x, pot-lap >= 2x"
