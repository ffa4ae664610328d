#!/usr/bin/env bash
# Builds mfglab with its tests and runs the whole suite through CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
cd build
ctest --output-on-failure --timeout 1200 "$@"
