#!/usr/bin/env bash
# Builds mfglab with its tests and runs the whole suite through CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
# The tests' own tools: an independent JSON Schema validator (test_schema) and a browser
# that renders the HTML report (test_report).
scripts/setup.sh python3 python3-jsonschema chromium
scripts/build.sh
cd build
ctest --output-on-failure --timeout 1200 "$@"
