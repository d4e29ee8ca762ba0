"""Start the real services as subprocesses on free loopback ports, and stop them without leftovers.

The one launcher the end-to-end tests and the service benchmarks share (run from a checkout).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
SPLATGEN = [sys.executable, "-m", "generation.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """A running ``splatgen worker`` or ``splatgen front`` process."""

    def __init__(self, args: list[str], env: dict[str, str], port: int, log_path: Path) -> None:
        self.kind = args[0]
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [*SPLATGEN, *args, "--port", str(port)],
            cwd=REPO,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"service not healthy within {timeout_s} s:\n{self.log()}")

    def wait_generating(self, timeout_s: float = 60.0) -> None:
        """Until this worker's /health says a generation holds its lock; the deadline bounds a broken one."""
        deadline = time.monotonic() + timeout_s
        while not httpx.get(f"{self.url}/health", timeout=30.0).json()["busy"]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no generation started within {timeout_s} s:\n{self.log()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@contextlib.contextmanager
def running(kind: str, tmp_path: Path, env: dict[str, str] | None = None, extra: list[str] | None = None,
            wait: bool = True) -> Iterator[Service]:  # fmt: skip
    port = free_port()
    service = Service([kind, *(extra or [])], env or {}, port, tmp_path / f"{kind}-{port}.log")
    try:
        if wait:
            service.wait_healthy()
        yield service
    finally:
        service.stop()
