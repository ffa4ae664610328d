#!/usr/bin/env bash
# Builds mfglab (engine and built-in plugins) and runs experiments/quickstart.json:
# a score-based model trained on FFJORD's 8gaussians, two seeds in parallel.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh mfglab
build/bin/mfglab run experiments/quickstart.json --out results "$@"
