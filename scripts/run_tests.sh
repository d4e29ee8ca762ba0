#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run them.
#   scripts/run_tests.sh [pytest args...]
# Installs: the project venv (.venv, Python 3.11) with the dev extras, torch 2.14.1 and TRELLIS's inference code
# with a CPU sparse convolution (the trellis-cpu-tests extra), pm2 from npm into node_modules, Debian's
# chromium + chromium-driver.
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

step "TRELLIS's real code on the CPU: torch 2.14.1 + torchvision, trellis-3d-ms, spconv (CPU build)"
# torch 2.14.1 / torchvision 0.29.1 and their nvidia wheels lie on this machine's disk (pip.conf's find-links and
# file indexes): pip resolves them there, never as a multi-GB download. The --no-deps pins are explained in
# pyproject.toml (trellis-cpu-tests).
TRELLIS_NO_DEPS=(trellis-3d-ms==0.1.0 spconv==2.3.8 cumm==0.8.2)
# find_spec only: importing trellis before the backend's runtime has made its choices fails by design.
TRELLIS_MODULES='torch torchvision trellis spconv cumm spconv_triton rembg transformers onnx easydict'
if ! .venv/bin/python -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))' $TRELLIS_MODULES; then
  .venv/bin/python -m pip install -q -e '.[dev,trellis-cpu-tests]'
  .venv/bin/python -m pip install -q --no-deps "${TRELLIS_NO_DEPS[@]}"
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
