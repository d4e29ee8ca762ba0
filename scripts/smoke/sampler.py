"""A background thread sampling the RSS of every PM2 process (and GPU memory) at least once a second."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import psutil

from smoke.pm2 import Pm2

MB = 1024**2
# pm2 jlist costs a node start-up; pids are re-read this often, and at once when a process vanishes.
PM2_REFRESH_S = 5.0


def nvidia_smi_used_bytes() -> int | None:
    """Device memory in use on every GPU together, or None without nvidia-smi."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return None
    try:
        done = subprocess.run(
            [binary, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return sum(int(float(line)) for line in done.stdout.split() if line.strip()) * MB
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


class MemorySampler:
    """Samples the RSS of every process it is told about (and GPU memory) every ``interval`` seconds."""

    def __init__(
        self,
        discover: Callable[[], dict[str, int]],
        gpu_reader: Callable[[], int | None] | None,
        interval: float,
    ) -> None:
        self.discover = discover
        self.gpu_reader = gpu_reader
        self.interval = interval
        self.origin = time.monotonic()
        self.samples: list[dict[str, Any]] = []
        self.pid_changes: list[dict[str, Any]] = []
        self._pids: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def now(self) -> float:
        return time.monotonic() - self.origin

    def start(self) -> None:
        self._refresh()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _refresh(self) -> None:
        found = self.discover()
        for name, pid in found.items():
            old = self._pids.get(name)
            if old is not None and old != pid:
                self.pid_changes.append(
                    {"t": round(self.now(), 3), "name": name, "old_pid": old, "new_pid": pid}
                )
        self._pids = found

    def _run(self) -> None:
        refreshed = time.monotonic()
        while not self._stop.is_set():
            tick = time.monotonic()
            rss: dict[str, int] = {}
            vanished = False
            for name, pid in self._pids.items():
                try:
                    rss[name] = int(psutil.Process(pid).memory_info().rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    vanished = True
            gpu = self.gpu_reader() if self.gpu_reader else None
            self.samples.append({"t": round(self.now(), 3), "rss": rss, "gpu_used_bytes": gpu})
            if vanished or tick - refreshed >= PM2_REFRESH_S:
                self._refresh()
                refreshed = time.monotonic()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - tick)))

    def summary(self) -> dict[str, Any]:
        per_process: dict[str, int] = {}
        peak_total = 0
        gpu_peak: int | None = None
        for sample in self.samples:
            for name, value in sample["rss"].items():
                per_process[name] = max(per_process.get(name, 0), value)
            peak_total = max(peak_total, sum(sample["rss"].values()))
            if sample["gpu_used_bytes"] is not None:
                gpu_peak = max(gpu_peak or 0, sample["gpu_used_bytes"])
        times = [s["t"] for s in self.samples]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        peak_name = max(per_process, key=lambda n: per_process[n]) if per_process else None
        return {
            "samples": len(self.samples),
            "interval_s": self.interval,
            "max_gap_s": round(max(gaps), 3) if gaps else None,
            "peak_rss_bytes": per_process,
            "peak_process": peak_name,
            "peak_process_rss_bytes": per_process.get(peak_name, 0) if peak_name else 0,
            "peak_total_rss_bytes": peak_total,
            "peak_gpu_used_bytes": gpu_peak,
            "pid_changes": self.pid_changes,
        }


def pid_discovery(pm2: Pm2, client: httpx.Client, url: str) -> Callable[[], dict[str, int]]:
    """PM2's apps when it runs the service; else the front end's own pid from /status."""

    def discover() -> dict[str, int]:
        apps = {app.name: app.pid for app in pm2.apps() if app.pid > 0}
        if apps:
            return apps
        try:
            front = client.get(f"{url}/status", timeout=5).json().get("front") or {}
            return {"front": int(front["pid"])} if "pid" in front else {}
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    return discover


def gpu_reader_for(client: httpx.Client, url: str) -> Callable[[], int | None] | None:
    """nvidia-smi when present, else the sum of the workers' /memory gpu fields when they report any."""
    if nvidia_smi_used_bytes() is not None:
        return nvidia_smi_used_bytes
    try:
        workers = client.get(f"{url}/status", timeout=5).json().get("workers") or []
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    urls = [w["url"] for w in workers if isinstance(w, dict) and w.get("url")]

    def from_workers() -> int | None:
        used = 0
        seen = False
        for worker in urls:
            try:
                gpu = client.get(f"{worker}/memory", timeout=2).json().get("gpu") or {}
            except (httpx.HTTPError, ValueError, AttributeError):
                continue
            value = gpu.get("reserved_bytes", gpu.get("allocated_bytes"))
            if isinstance(value, int):
                used, seen = used + value, True
        return used if seen else None

    return from_workers if from_workers() is not None else None
