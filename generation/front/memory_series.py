"""Memory over time for the dashboard: RSS of the front end and of every worker, in a bounded ring buffer.

Worker figures come from ``WorkerHandle.memory``, which the pool's prober refreshes every few seconds, so
sampling costs no extra request to any worker.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from generation.front.worker_pool import WorkerHandle
from generation.memory import rss_bytes


@dataclass(frozen=True)
class MemorySample:
    time: float
    front_rss: int
    # Per worker URL; None while a worker has not answered /memory yet.
    worker_rss: dict[str, int | None]
    worker_gpu: dict[str, int | None]
    gpu_total: dict[str, int | None]


class MemorySeries:
    """At most ``capacity`` samples, oldest dropped first; ``sample()`` is cheap (one RSS read)."""

    def __init__(
        self,
        workers: Sequence[WorkerHandle],
        *,
        capacity: int,
        interval_s: float,
        front_rss: Callable[[], int] = rss_bytes,
    ) -> None:
        self.workers = workers
        self.interval_s = interval_s
        self._front_rss = front_rss
        self._samples: collections.deque[MemorySample] = collections.deque(maxlen=max(capacity, 1))

    @property
    def capacity(self) -> int:
        return self._samples.maxlen or 0

    def __len__(self) -> int:
        return len(self._samples)

    def sample(self) -> MemorySample:
        """Record the current memory of every process and return it."""
        worker_rss: dict[str, int | None] = {}
        worker_gpu: dict[str, int | None] = {}
        gpu_total: dict[str, int | None] = {}
        for worker in self.workers:
            memory = worker.memory
            worker_rss[worker.url] = memory.rss_bytes if memory else None
            worker_gpu[worker.url], gpu_total[worker.url] = (
                memory.gpu_used_and_total() if memory else (None, None)
            )
        point = MemorySample(time.time(), self._front_rss(), worker_rss, worker_gpu, gpu_total)
        self._samples.append(point)
        return point

    async def run(self) -> None:
        """Sample every ``interval_s`` until cancelled."""
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

    def to_dict(self) -> dict[str, Any]:
        """Column form for the page: one time axis, one list of values per process (None where unknown)."""
        samples = list(self._samples)
        processes: list[dict[str, Any]] = [
            {"name": "front end", "kind": "front", "rss": [s.front_rss for s in samples], "gpu": None}
        ]
        for worker in self.workers:
            gpu = [s.worker_gpu.get(worker.url) for s in samples]
            totals = [t for s in samples if (t := s.gpu_total.get(worker.url))]
            processes.append(
                {
                    "name": worker.url,
                    "kind": "worker",
                    "rss": [s.worker_rss.get(worker.url) for s in samples],
                    "gpu": gpu if any(v is not None for v in gpu) else None,
                    "gpu_total": totals[-1] if totals else None,
                }
            )
        return {
            "interval_s": self.interval_s,
            "capacity": self.capacity,
            "times": [round(s.time, 3) for s in samples],
            "processes": processes,
        }
