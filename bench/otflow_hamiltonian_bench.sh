#!/usr/bin/env bash
# Seconds per OT-Flow training iteration by Hamiltonian, mfglab's otflow against a plain PyTorch
# OT-Flow (bench/otflow_ref_hamiltonian.py, built on ../shared/ref/otflow_ref.py), same settings on
# both sides: 8gaussians, batch 2048, ResNet potential width 32, 2 layers, RK4 8 steps, alphas
# (1, 100, 5), Adam lr 0.1, float32, 1 intra-op thread, the same malloc thresholds.
#   iso     quadratic, lambda = 1 (declared isotropic: otflow's block kernel)
#   aniso   diagonal_quadratic, lambda = (0.5, 2) (declared diagonal: the same kernel, weighted)
#   lp      lp with running cost |v|^p / p (general: mfglab's closed-form Hessian with autograd
#           through H only; the reference: v = -dH/dp by autograd, div v by d reverse passes)
# Figures: each run's median and 10th-percentile step time after 5 warm-up steps; the median of
# those over the repeats; the sides run one after the other, alternating which goes first.
#
# usage: bench/otflow_hamiltonian_bench.sh [--iters N] [--repeats R] [--p P] [--bench PATH] [--no-unfused]
# Needs otflow_bench (cmake --build BUILD --target otflow_bench) and /usr/bin/python3.11 with torch
# and numpy (apt-get install -y python3-torch python3-numpy).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
iters=40
repeats=3
p=3
bench="${OTFLOW_BENCH:-$root/build/bin/otflow_bench}"
unfused=1
python=/usr/bin/python3.11
ref="$here/otflow_ref_hamiltonian.py"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --iters) iters="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    --p) p="$2"; shift 2 ;;
    --bench) bench="$2"; shift 2 ;;
    --no-unfused) unfused=0; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "otflow_hamiltonian_bench.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ -x "$bench" ]] || { echo "otflow_hamiltonian_bench.sh: no otflow_bench at $bench (build it, or pass --bench)" >&2; exit 2; }
"$python" -c 'import torch, numpy' 2>/dev/null ||
  { echo "otflow_hamiltonian_bench.sh: $python lacks torch/numpy: apt-get install -y python3-torch python3-numpy" >&2; exit 2; }

work="$(mktemp -d /tmp/otflow_hamiltonian_bench.XXXXXX)"
trap 'rm -rf "$work"' EXIT

# As cnf_bench.sh: mfglab's bench sets the malloc thresholds itself (mallopt), the reference gets
# the same through GLIBC_TUNABLES; OpenBLAS single-threaded, passive OpenMP waits on both sides.
malloc_env=GLIBC_TUNABLES=glibc.malloc.mmap_threshold=67108864:glibc.malloc.trim_threshold=268435456
ref_env=(env "$malloc_env" OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1)
mfglab_env=(env OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=passive)
source "$here/step_stats.sh"  # step_stats, stats, median

mfglab_run() {  # config -> "median p10"
  local args=()
  case "$1" in
    iso) args=(--hamiltonian quadratic --ham-params '{"lambda": 1.0}') ;;
    aniso) args=(--hamiltonian diagonal_quadratic --ham-params '{"lambda": [0.5, 2.0]}') ;;
    lp) args=(--hamiltonian lp --ham-params "{\"p\": $p}") ;;
    lp-unfused) args=(--hamiltonian lp --ham-params "{\"p\": $p}" --unfused) ;;
  esac
  "${mfglab_env[@]}" "$bench" --no-ref --threads 1 --iters "$iters" "${args[@]}" --times "$work/m.json" \
      >"$work/m.log" 2>&1 || { cat "$work/m.log" >&2; echo "otflow_hamiltonian_bench.sh: mfglab $1 failed" >&2; exit 1; }
  step_stats "$work/m.json" iter_s
}

ref_run() {  # config -> "median p10"
  local args=()
  case "$1" in
    iso) args=(--hamiltonian quadratic --lambda_ 1) ;;
    aniso) args=(--hamiltonian diagonal --lambdas 0.5,2) ;;
    lp) args=(--hamiltonian lp --p "$p") ;;
  esac
  "${ref_env[@]}" "$python" "$ref" --iters "$iters" --threads 1 "${args[@]}" --out "$work/r.json" >"$work/r.log" 2>&1 ||
    { cat "$work/r.log" >&2; echo "otflow_hamiltonian_bench.sh: reference $1 failed" >&2; exit 1; }
  step_stats "$work/r.json" iter_s
}

configs="iso aniso lp"
echo "otflow_hamiltonian_bench: $iters iterations x $repeats repeats, 8gaussians, batch 2048, width 32, 2 layers," \
     "RK4 8 steps, float32, 1 thread, lp p = $p"
echo "  machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); load before: $(uptime | sed 's/.*load/load/')"
echo "  mfglab: $bench"
echo "  reference: $ref (torch $("$python" -c 'import torch; print(torch.__version__)'))"
declare -A mine theirs mine10 theirs10
for r in $(seq 1 "$repeats"); do
  for c in $configs; do
    if ((r % 2)); then a="$(mfglab_run "$c")"; b="$(ref_run "$c")"
    else b="$(ref_run "$c")"; a="$(mfglab_run "$c")"; fi
    read -r a_med a_p10 <<<"$a"
    read -r b_med b_p10 <<<"$b"
    mine[$c]+="$a_med " mine10[$c]+="$a_p10 " theirs[$c]+="$b_med " theirs10[$c]+="$b_p10 "
    echo "  repeat $r, $c: mfglab median $a_med p10 $a_p10 s/it; reference median $b_med p10 $b_p10 s/it ($(cut -d' ' -f1 /proc/loadavg) load)"
  done
  if [[ $unfused == 1 ]]; then
    a="$(mfglab_run lp-unfused)"
    read -r a_med a_p10 <<<"$a"
    mine[lp-unfused]+="$a_med " mine10[lp-unfused]+="$a_p10 "
    echo "  repeat $r, lp-unfused: mfglab median $a_med p10 $a_p10 s/it ($(cut -d' ' -f1 /proc/loadavg) load)"
  fi
done

ratio() { awk -v a="$(median "$1")" -v b="$(median "$2")" 'BEGIN {printf "%.2fx", a / b}'; }
echo
echo "machine load after: $(uptime | sed 's/.*load/load/')"
printf "%-11s %-6s  %-26s  %-26s  %s\n" config stat "mfglab ms/it [min,max]" "reference ms/it" "reference/mfglab"
for c in $configs; do
  for st in median p10; do
    if [[ $st == median ]]; then m="${mine[$c]}" t="${theirs[$c]}"; else m="${mine10[$c]}" t="${theirs10[$c]}"; fi
    printf "%-11s %-6s  %-26s  %-26s  %s\n" "$c" "$st" "$(stats "$m")" "$(stats "$t")" "$(ratio "$t" "$m")"
  done
done
if [[ $unfused == 1 ]]; then
  for st in median p10; do
    if [[ $st == median ]]; then m="${mine[lp-unfused]}"; else m="${mine10[lp-unfused]}"; fi
    printf "%-11s %-6s  %-26s\n" lp-unfused "$st" "$(stats "$m")"
  done
fi
echo
echo "mfglab anisotropic / isotropic step time: median $(ratio "${mine[aniso]}" "${mine[iso]}"), p10 $(ratio "${mine10[aniso]}" "${mine10[iso]}")   (goal <= 1.2x)"
echo "lp p = $p, reference (autograd through H) / mfglab: median $(ratio "${theirs[lp]}" "${mine[lp]}"), p10 $(ratio "${theirs10[lp]}" "${mine10[lp]}")   (goal >= 2x)"
if [[ $unfused == 1 ]]; then
  echo "lp p = $p, mfglab autograd through the network (fused: false) / closed-form Hessian: median $(ratio "${mine[lp-unfused]}" "${mine[lp]}")"
fi
echo "(median over repeats of each run's median / 10th-percentile step time; p10 is the less load-sensitive figure)"
