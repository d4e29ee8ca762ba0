#!/usr/bin/env bash
# Start splatgen under PM2 (or reload it when it already runs), then wait until the front end is healthy.
#
#   scripts/start_service.sh [--backend procedural|trellis] [--timeout SECONDS]
#
# Sets up .venv when missing (python3.11 -m venv .venv && pip install -e .), installs pm2 from npm into
# node_modules (no global install), runs `pm2 startOrReload ecosystem.config.js --update-env` (so re-running
# reloads the apps instead of adding copies), and waits for GET /health on the front end.
# Every SPLATGEN_* variable in the environment reaches the services (see ecosystem.config.js).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

usage() {
  sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

backend="${SPLATGEN_BACKEND:-procedural}"
timeout_s=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --backend) backend="${2:?--backend needs a value}"; shift 2 ;;
    --backend=*) backend="${1#*=}"; shift ;;
    --timeout) timeout_s="${2:?--timeout needs a value}"; shift 2 ;;
    --timeout=*) timeout_s="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "start_service.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$backend" in
  procedural|trellis) ;;
  *) echo "start_service.sh: --backend must be procedural or trellis, not '$backend'" >&2; exit 2 ;;
esac
# TRELLIS loads several GB of weights before /health turns green.
if [[ -z "$timeout_s" ]]; then
  if [[ "$backend" == trellis ]]; then timeout_s=900; else timeout_s=120; fi
fi
if ! [[ "$timeout_s" =~ ^[0-9]+$ ]]; then
  echo "start_service.sh: --timeout must be a whole number of seconds, not '$timeout_s'" >&2
  exit 2
fi

export SPLATGEN_BACKEND="$backend"
export PM2_DISABLE_VERSION_CHECK=1

SCRIPT_NAME=start_service.sh
# shellcheck source=scripts/lib/ensure_venv.sh
source "$ROOT/scripts/lib/ensure_venv.sh"

pm2="$ROOT/node_modules/.bin/pm2"
if [[ ! -x "$pm2" ]]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "start_service.sh: npm not found; install Node.js 18 or newer (with npm), then run this again" >&2
    exit 1
  fi
  echo "Installing pm2 into node_modules ..."
  if [[ -f package-lock.json ]]; then
    npm ci --no-audit --no-fund --loglevel=error
  else
    npm install --no-audit --no-fund --loglevel=error
  fi
fi

"$pm2" startOrReload "$ROOT/ecosystem.config.js" --update-env

front_host="${SPLATGEN_FRONT_HOST:-${SPLATGEN_HOST:-127.0.0.1}}"
[[ "$front_host" == 0.0.0.0 ]] && front_host=127.0.0.1
url="http://${front_host}:${SPLATGEN_FRONT_PORT:-8093}"

echo "Waiting up to ${timeout_s}s for ${url}/health ..."
if ! "$python_bin" - "$url/health" "$timeout_s" <<'PY'
import sys
import time
import urllib.error
import urllib.request

url, limit = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + limit
last = "no answer yet"
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            if response.status == 200:
                sys.exit(0)
            last = f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        last = f"HTTP {exc.code}: {exc.read(300).decode('utf-8', 'replace')}"
    except (OSError, ValueError) as exc:
        last = str(getattr(exc, "reason", exc))
    time.sleep(1)
print(f"last answer: {last}", file=sys.stderr)
sys.exit(1)
PY
then
  echo "" >&2
  echo "splatgen did not become healthy within ${timeout_s}s." >&2
  "$pm2" ls >&2 || true
  echo "See the logs:  ${PM2_HOME:+PM2_HOME=$PM2_HOME }$pm2 logs --lines 100" >&2
  exit 1
fi

# A non-default PM2 home has to be named again in every later pm2 command.
prefix=""
[[ -n "${PM2_HOME:-}" ]] && prefix="PM2_HOME=$PM2_HOME "
echo ""
echo "splatgen is running (backend: $backend)"
echo "  URL:   $url   (POST /generate/ with form field 'prompt'; GET /status)"
echo "  Logs:  ${prefix}$pm2 logs"
echo "  Stop:  ${prefix}$ROOT/scripts/stop_service.sh"
