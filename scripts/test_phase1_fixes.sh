#!/usr/bin/env bash
# The operator's phase-1 smoke test: (re)starts splatgen under PM2, runs 20 generations through the front end,
# measures every output and the memory of every PM2 process, prints PASS or FAIL and writes a report.
# Every flag: scripts/test_phase1_fixes.sh --help. Exit status: 0 PASS, 1 FAIL, 2 the test could not run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT_NAME=test_phase1_fixes.sh
SETUP_FAILED_EXIT=2
# Sets up .venv (and installs splatgen) when it is missing, as start_service.sh does.
# shellcheck source=scripts/lib/ensure_venv.sh
source "$ROOT/scripts/lib/ensure_venv.sh"
export PM2_DISABLE_VERSION_CHECK=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$python_bin" "$ROOT/scripts/smoke_phase1.py" "$@"
