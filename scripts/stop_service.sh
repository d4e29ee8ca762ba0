#!/usr/bin/env bash
# Stop splatgen's PM2 apps (every worker, the front end, the miner app when configured).
#
#   scripts/stop_service.sh [--kill-daemon]
#
# Other PM2 apps are left alone. --kill-daemon also stops the PM2 daemon when no other app is left in it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PM2_DISABLE_VERSION_CHECK=1

kill_daemon=false
case "${1:-}" in
  "") ;;
  --kill-daemon) kill_daemon=true ;;
  -h|--help) sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "stop_service.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
esac

pm2="$ROOT/node_modules/.bin/pm2"
if [[ ! -x "$pm2" ]]; then
  echo "stop_service.sh: $pm2 not found; nothing was started with scripts/start_service.sh here" >&2
  exit 1
fi

# `pm2 jlist` would start a daemon just to answer; with none running there is nothing to stop.
pm2_home="${PM2_HOME:-$HOME/.pm2}"
if [[ ! -S "$pm2_home/rpc.sock" ]]; then
  echo "No PM2 daemon is running (PM2_HOME=$pm2_home): nothing to stop."
  exit 0
fi

# Matched by name, not through ecosystem.config.js, so apps from an earlier SPLATGEN_GPUS list go too.
mapfile -t names < <(
  "$pm2" jlist | node -e '
    let text = "";
    process.stdin.on("data", (chunk) => (text += chunk));
    process.stdin.on("end", () => {
      const ours = /^(trellis-microservice(-[0-9]+)?|gen-worker-1|miner-sn17-mainnet)$/;
      for (const app of JSON.parse(text)) if (ours.test(app.name)) console.log(app.name);
    });'
)

if [[ ${#names[@]} -eq 0 ]]; then
  echo "No splatgen apps are running under PM2."
else
  for name in "${names[@]}"; do
    "$pm2" delete "$name" >/dev/null
    echo "Stopped $name"
  done
fi

if $kill_daemon; then
  left="$("$pm2" jlist 2>/dev/null | node -e 'let t="";process.stdin.on("data",c=>t+=c);process.stdin.on("end",()=>console.log(JSON.parse(t).length))')"
  if [[ "$left" == 0 ]]; then
    "$pm2" kill >/dev/null
    echo "PM2 daemon stopped."
  else
    echo "PM2 daemon left running: it still runs $left other app(s)."
  fi
fi
