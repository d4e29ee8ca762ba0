#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run them.
#   scripts/run_tests.sh [pytest args...]
# Installs: the project venv (.venv, Python 3.11) with the dev extras, PyTorch's CPU wheel when it lies on
# this disk (never a CUDA download), pm2 from npm into node_modules, Debian's chromium + chromium-driver.
set -euo pipefail
cd "$(dirname "$0")/.."
export PM2_DISABLE_VERSION_CHECK=1 PIP_DISABLE_PIP_VERSION_CHECK=1

step() { printf '\n== %s\n' "$*"; }

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
step "installing splatgen[dev] into .venv"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'

step "PyTorch CPU wheel (for the TRELLIS stand-in tests)"
# '+cpu' exists only as the local CPU build, so this can never pull a multi-GB CUDA build from the index.
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  .venv/bin/python -m pip install -q 'torch==2.13.0+cpu' \
    || echo "no local torch CPU wheel: the tests that need torch will be skipped"
fi

step "pm2 from npm (local, node_modules/.bin/pm2)"
if [ ! -x node_modules/.bin/pm2 ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

step "chromium + chromium-driver (browser tests)"
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
      || echo "could not install chromium: browser tests will be skipped"
  else
    echo "chromium not installed and no root apt-get: browser tests will be skipped"
  fi
fi

step "ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .

step "pytest"
# -ra: the reason of every skip, xfail and failure is printed at the end (a skipped suite must show).
exec .venv/bin/python -m pytest -ra "$@"
