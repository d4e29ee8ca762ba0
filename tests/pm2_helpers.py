"""Real PM2 for tests: a daemon of the test's own (PM2_HOME in a temp dir), free ports, no leftovers.

pm2 comes from npm into <repo>/node_modules (``npm ci``; .ci/run does it). Tests that need it skip with the
reason when it is absent.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
PM2_BIN = REPO / "node_modules" / ".bin" / "pm2"
ECOSYSTEM = REPO / "ecosystem.config.js"
START_SCRIPT = REPO / "scripts" / "start_service.sh"
STOP_SCRIPT = REPO / "scripts" / "stop_service.sh"
WORKER_APP = "trellis-microservice"
FRONT_APP = "gen-worker-1"
# Small splats keep fault tests quick; the smoke test itself runs the full 400K.
SMALL_SPLATS = "20000"

T = TypeVar("T")


def require_pm2() -> Path:
    """The local pm2 binary, or skip the test saying how to get it."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed: PM2 needs Node.js")
    if not os.access(PM2_BIN, os.X_OK):
        pytest.skip(f"pm2 is not installed at {PM2_BIN}: run `npm ci` in the repository root")
    return PM2_BIN


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all held open together while they are picked)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def wait_until(condition: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.2) -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` when it never does."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def alive(pid: int) -> bool:
    """True for a running process; a zombie waiting to be reaped counts as gone."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass(frozen=True)
class App:
    name: str
    pid: int
    status: str
    restarts: int
    env: dict[str, Any]
    raw: dict[str, Any]


class Pm2Daemon:
    """One PM2 daemon in its own PM2_HOME; every pid it ever showed is remembered for the leftover check."""

    def __init__(self, home: Path, env: dict[str, str], worker_port: int, front_port: int) -> None:
        self.home = home
        self.worker_port = worker_port
        self.front_port = front_port
        self.worker_url = f"http://127.0.0.1:{worker_port}"
        self.front_url = f"http://127.0.0.1:{front_port}"
        # The outer environment's splatgen and PM2 settings must not leak into a test.
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SPLATGEN_", "PM2_"))}
        self.env = {
            **base,
            "PM2_HOME": str(home),
            "PM2_DISABLE_VERSION_CHECK": "1",
            "SPLATGEN_WORKER_PORT": str(worker_port),
            "SPLATGEN_FRONT_PORT": str(front_port),
            # A stuck process must not hold a test for PM2's 90 s production grace period.
            "SPLATGEN_PM2_KILL_TIMEOUT_MS": "5000",
            "SPLATGEN_WORKER_PROBE_INTERVAL_S": "0.5",
            **env,
        }
        self.seen_pids: set[int] = set()

    def pm2(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PM2_BIN), *args], env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )

    def script(self, path: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(path), *args], env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )

    def start(self, timeout_s: int = 90) -> None:
        """scripts/start_service.sh: start (or reload) every app and wait for the front end's /health."""
        done = self.script(START_SCRIPT, "--timeout", str(timeout_s))
        self.apps()
        if done.returncode != 0:
            pytest.fail(
                f"start_service.sh exited {done.returncode}:\n{done.stdout}\n{done.stderr}\n{self.logs()}"
            )

    def apps(self) -> dict[str, App]:
        done = self.pm2("jlist")
        start = done.stdout.find("[")
        entries = json.loads(done.stdout[start:]) if start >= 0 else []
        apps = {}
        for entry in entries:
            env = entry.get("pm2_env") or {}
            app = App(
                entry["name"],
                int(entry.get("pid") or 0),
                env.get("status", ""),
                int(env.get("restart_time") or 0),
                env.get("env") or {},
                entry,
            )
            if app.pid:
                self.seen_pids.add(app.pid)
            apps[app.name] = app
        return apps

    def app(self, name: str) -> App:
        apps = self.apps()
        assert name in apps, f"{name} is not running under PM2; apps: {sorted(apps)}"
        return apps[name]

    def daemon_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.home / "pm2.pid").read_text().strip())
        return None

    def logs(self) -> str:
        parts = []
        for path in [*sorted((self.home / "logs").glob("*.log")), self.home / "pm2.log"]:
            if path.is_file():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def wait_online_again(self, name: str, old_pid: int, timeout_s: float = 60) -> App:
        """Wait until PM2 runs ``name`` under a new pid."""

        def restarted() -> App | None:
            app = self.apps().get(name)
            return app if app and app.status == "online" and app.pid not in (0, old_pid) else None

        return wait_until(restarted, timeout_s, f"PM2 to restart {name}")

    def wait_front_healthy(self, timeout_s: float = 60) -> None:
        def healthy() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{self.front_url}/health", timeout=2).status_code == 200
            return False

        wait_until(healthy, timeout_s, "the front end's /health to answer 200")

    def kill(self) -> list[int]:
        """``pm2 kill``; returns the pids still running afterwards (after ending them, by pid)."""
        daemon = self.daemon_pid()
        if daemon:
            self.seen_pids.add(daemon)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.pm2("kill", timeout=60)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(alive(pid) for pid in self.seen_pids):
            time.sleep(0.1)
        leftovers = sorted(pid for pid in self.seen_pids if alive(pid))
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return leftovers


@contextlib.contextmanager
def pm2_daemon(env: dict[str, str] | None = None) -> Iterator[Pm2Daemon]:
    """A fresh PM2 daemon in a temp PM2_HOME; on exit ``pm2 kill`` and fail if any of its processes remain."""
    require_pm2()
    # PM2 puts unix sockets in PM2_HOME: keep the path short (sun_path is 108 bytes).
    home = Path(tempfile.mkdtemp(prefix="pm2-"))
    worker_port, front_port = free_ports(2)
    daemon = Pm2Daemon(home, env or {}, worker_port, front_port)
    try:
        yield daemon
    finally:
        leftovers = daemon.kill()
        logs = daemon.logs()
        shutil.rmtree(home, ignore_errors=True)
        assert not leftovers, f"processes left behind after pm2 kill: {leftovers}\n{logs}"
