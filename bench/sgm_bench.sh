#!/usr/bin/env bash
# Seconds per training iteration of mfglab's score model against the PyTorch reference
# (../shared/ref/sgm_ref.py), same network (3 hidden layers of 128, SiLU), batch 1024 and
# one thread:
#   dsm       denoising score matching only
#   hjb-lap   DSM + the score-PDE residual, Laplacian form (the reference's default)
#   hjb-grad  DSM + the score-PDE residual, gradient form
# mfglab's figure is the median step time the engine writes to summary.json; the
# reference's is its own median after 5 warm-up steps. Every configuration runs --repeats
# times, interleaved, and the table shows the median with the [min, max] range: the
# machine is shared, so single figures mislead.
#
# usage: bench/sgm_bench.sh [--iters N] [--repeats R] [--mfglab PATH] [--configs "dsm hjb-lap hjb-grad"]
#                           [--no-ref]
# Needs /usr/bin/python3.11 with torch and numpy (apt-get install -y python3-torch python3-numpy).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
iters=200
repeats=3
mfglab="${MFGLAB:-$root/build-i/bin/mfglab}"
configs="dsm hjb-lap hjb-grad"
run_ref=1
ref="$root/../shared/ref/sgm_ref.py"
python=/usr/bin/python3.11

while [[ $# -gt 0 ]]; do
  case "$1" in
    --iters) iters="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    --mfglab) mfglab="$2"; shift 2 ;;
    --configs) configs="$2"; shift 2 ;;
    --no-ref) run_ref=0; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
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
ref_env=(env GLIBC_TUNABLES=glibc.malloc.mmap_threshold=67108864:glibc.malloc.trim_threshold=268435456
         OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1)

# An experiment running N iterations of one configuration; sampling and evaluation are
# kept tiny (they are not timed).
experiment() {  # name regularizers-json
  cat > "$work/$1.json" <<EOF
{
  "name": "$1",
  "seeds": [0],
  "dataset": {"plugin": "toy2d", "params": {"name": "8gaussians", "train_size": 20000, "test_size": 200}},
  "model": {"plugin": "sgm", "params": {"width": 128, "depth": 3, "activation": "silu", "sample_steps": 2}},
  "regularizers": $2,
  "train": {"iterations": $iters, "batch_size": 1024, "optimizer": {"type": "adam", "lr": 0.001},
            "log_every": $iters, "checkpoint_every": 1000000},
  "eval": {"samples": 100, "metrics": []}
}
EOF
}
experiment dsm '[]'
experiment hjb-lap '[{"plugin": "score_pde", "weight": 1.0, "params": {"form": "lap"}}]'
experiment hjb-grad '[{"plugin": "score_pde", "weight": 1.0, "params": {"form": "grad"}}]'

json_field() {  # file key
  "$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

mfglab_step() {  # config -> seconds per iteration
  rm -rf "$work/out"
  "$mfglab" run "$work/$1.json" --out "$work/out" --jobs 1 --threads 1 --force >"$work/mfglab.log" 2>&1 ||
    { cat "$work/mfglab.log" >&2; echo "sgm_bench.sh: mfglab run failed for $1" >&2; exit 1; }
  json_field "$(ls "$work"/out/"$1"/*/summary.json | head -1)" seconds_per_iteration
}

ref_step() {  # config -> seconds per iteration
  local extra=()
  case "$1" in
    hjb-lap) extra=(--hjb_weight 1 --hjb_form lap) ;;
    hjb-grad) extra=(--hjb_weight 1 --hjb_form grad) ;;
  esac
  (cd "$work" && "${ref_env[@]}" "$python" "$ref" --data 8gaussians --iters "$iters" --batch 1024 --width 128 \
      --depth 3 --act silu --threads 1 --n_eval 200 --steps 2 --log_every 1000000 --out ref.json \
      "${extra[@]}" >"$work/ref.log" 2>&1) ||
    { cat "$work/ref.log" >&2; echo "sgm_bench.sh: reference failed for $1" >&2; exit 1; }
  json_field "$work/ref.json" sec_per_iter_median
}

echo "sgm_bench: $iters iterations x $repeats repeats, batch 1024, MLP 3 x 128 SiLU, 1 thread; $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "mfglab: $mfglab"
declare -A mine theirs
for ((r = 1; r <= repeats; r++)); do
  for c in $configs; do
    mine[$c]+="$(mfglab_step "$c") "
    if [[ $run_ref == 1 ]]; then theirs[$c]+="$(ref_step "$c") "; fi
    echo "  repeat $r $c: mfglab $(echo "${mine[$c]}" | awk '{print $NF}') s/it" \
         "${theirs[$c]:+reference $(echo "${theirs[$c]}" | awk '{print $NF}') s/it}"
  done
done

# median [min, max] of a list of numbers, in milliseconds
stats() {
  echo "$1" | tr ' ' '\n' | grep . | sort -g | awk '{v[NR] = $1 * 1000}
    END {m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
         printf "%.2f [%.2f, %.2f]", m, v[1], v[NR]}'
}
median() { echo "$1" | tr ' ' '\n' | grep . | sort -g | awk '{v[NR] = $1} END {print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

echo
printf "%-9s  %-28s  %-28s  %s\n" config "mfglab ms/it median [min,max]" "reference ms/it" "speedup (reference/mfglab, medians)"
for c in $configs; do
  if [[ $run_ref == 1 ]]; then
    ratio=$(awk -v a="$(median "${theirs[$c]}")" -v b="$(median "${mine[$c]}")" 'BEGIN {printf "%.2fx", a / b}')
    printf "%-9s  %-28s  %-28s  %s\n" "$c" "$(stats "${mine[$c]}")" "$(stats "${theirs[$c]}")" "$ratio"
  else
    printf "%-9s  %-28s\n" "$c" "$(stats "${mine[$c]}")"
  fi
done
for c in $configs; do
  [[ $c == dsm || -z "${mine[dsm]:-}" ]] && continue
  echo "$c / dsm step time: mfglab $(awk -v a="$(median "${mine[$c]}")" -v b="$(median "${mine[dsm]}")" 'BEGIN {printf "%.1fx", a / b}')" \
       "${theirs[$c]:+reference $(awk -v a="$(median "${theirs[$c]}")" -v b="$(median "${theirs[dsm]}")" 'BEGIN {printf "%.1fx", a / b}')}"
done
echo "goals: dsm >= 2x faster than the reference, hjb >= 3x faster"
