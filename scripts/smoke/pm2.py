"""Read-only access to the PM2 daemon: app names, pids, restart counters, memory limits."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Pm2App:
    name: str
    pid: int
    status: str
    restarts: int
    max_memory_bytes: int | None


class Pm2:
    """Read-only view of the PM2 daemon in ``PM2_HOME`` (the caller's environment)."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary

    @property
    def available(self) -> bool:
        return self.binary.is_file() and os.access(self.binary, os.X_OK)

    def apps(self) -> list[Pm2App]:
        if not self.available:
            return []
        env = {**os.environ, "PM2_DISABLE_VERSION_CHECK": "1"}
        try:
            done = subprocess.run(
                [str(self.binary), "jlist"], capture_output=True, text=True, timeout=30, env=env
            )
        except (OSError, subprocess.TimeoutExpired):
            return []
        # Warnings can precede the JSON on stdout.
        start = done.stdout.find("[")
        try:
            raw = json.loads(done.stdout[start:]) if start >= 0 else []
        except json.JSONDecodeError:
            return []
        apps = []
        for entry in raw:
            pm2_env = entry.get("pm2_env") or {}
            limit = pm2_env.get("max_memory_restart")
            apps.append(
                Pm2App(
                    name=str(entry.get("name")),
                    pid=int(entry.get("pid") or 0),
                    status=str(pm2_env.get("status", "unknown")),
                    restarts=int(pm2_env.get("restart_time") or 0),
                    max_memory_bytes=int(limit) if isinstance(limit, int | float) else None,
                )
            )
        return apps


def restart_findings(
    before: Sequence[Pm2App], after: Sequence[Pm2App], pid_changes: Sequence[dict[str, Any]]
) -> list[str]:
    """Why a process looks restarted: PM2's counter moved, its pid changed, or it is gone or not online."""
    found = []
    named: set[str] = set()
    now = {app.name: app for app in after}
    for app in before:
        later = now.get(app.name)
        if later is None:
            found.append(f"{app.name} disappeared")
        elif later.restarts != app.restarts:
            found.append(f"{app.name} restart counter {app.restarts}->{later.restarts}")
        elif later.pid != app.pid:
            found.append(f"{app.name} pid {app.pid}->{later.pid}")
        elif later.status != "online":
            found.append(f"{app.name} is {later.status}")
        else:
            continue
        named.add(app.name)
    # Catches a restart the counters miss (e.g. an app deleted and started again); the sampler saw every pid.
    for change in pid_changes:
        if change["name"] not in named:
            found.append(f"{change['name']} pid {change['old_pid']}->{change['new_pid']} during the run")
            named.add(change["name"])
    return found
