# Sourced by the operator scripts: make sure $python_bin is a Python with splatgen installed.
#   ROOT (the repository) and SCRIPT_NAME (for messages) must be set; sets python_bin.
#   SETUP_FAILED_EXIT: the exit status when this cannot be done (default 1).
# SPLATGEN_PYTHON names an existing environment; otherwise .venv is created when missing
# (PYTHON, default python3.11) and splatgen installed into it (pip install -e .).
python_bin="${SPLATGEN_PYTHON:-$ROOT/.venv/bin/python}"
if [[ ! -x "$python_bin" ]]; then
  base_python="${PYTHON:-python3.11}"
  if ! command -v "$base_python" >/dev/null 2>&1; then
    echo "$SCRIPT_NAME: $base_python not found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2
    exit "${SETUP_FAILED_EXIT:-1}"
  fi
  echo "Creating the virtual environment in .venv ..."
  "$base_python" -m venv "$ROOT/.venv" || exit "${SETUP_FAILED_EXIT:-1}"
  python_bin="$ROOT/.venv/bin/python"
fi
if ! "$python_bin" -c "import generation.cli" >/dev/null 2>&1 || [[ ! -x "$(dirname "$python_bin")/splatgen" ]]; then
  echo "Installing splatgen into $(dirname "$(dirname "$python_bin")") ..."
  "$python_bin" -m pip install --quiet -e "$ROOT" || exit "${SETUP_FAILED_EXIT:-1}"
fi
