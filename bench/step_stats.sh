# Shared by the side-by-side benchmarks (sgm_bench.sh, cnf_bench.sh); sourced, needs $python.

# "median p10" seconds per step of one run: a CSV column or a JSON list, the first 5 steps
# (warm-up) left out.
step_stats() {  # file csv-column|json-key
  "$python" - "$1" "$2" <<'PY'
import csv, json, statistics, sys
path, key = sys.argv[1], sys.argv[2]
if path.endswith('.csv'):
    v = [float(r[key]) for r in csv.DictReader(open(path))]
else:
    v = json.load(open(path))[key]
v = sorted(v[5:] if len(v) > 5 else v)
print(statistics.median(v), v[len(v) // 10])
PY
}

# "median [min, max]" in milliseconds of a list of seconds.
stats() {
  echo "$1" | tr ' ' '\n' | grep . | sort -g | awk '{v[NR] = $1 * 1000}
    END {m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
         printf "%.2f [%.2f, %.2f]", m, v[1], v[NR]}'
}
median() { echo "$1" | tr ' ' '\n' | grep . | sort -g | awk '{v[NR] = $1} END {print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
