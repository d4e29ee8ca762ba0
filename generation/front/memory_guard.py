"""The memory check run before every generation: clean up at one threshold, refuse at the next.

PM2 looks at RSS only every 30 s, so a leak can cross its limit between two looks and the process is killed
mid-generation. This check runs on every request, acts first (cleanup, then refuse and recycle), and
leaves PM2 as the backstop.
"""

from __future__ import annotations

import logging
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from generation.errors import MemoryPressure
from generation.front.worker_client import WorkerClient
from generation.front.worker_pool import WorkerHandle, WorkerPool
from generation.memory import collect_and_trim, rss_bytes
from generation.settings import GB, FrontSettings

log = logging.getLogger("splatgen.memory")

Action = Literal["ok", "cleaned", "refused"]


@dataclass
class MemoryReading:
    worker_rss: int
    front_rss: int
    gpu_used: int | None = None
    gpu_total: int | None = None

    @property
    def gpu_fraction(self) -> float | None:
        if self.gpu_used is None or not self.gpu_total:
            return None
        return self.gpu_used / self.gpu_total


@dataclass
class MemoryCheck:
    action: Action
    before: MemoryReading
    after: MemoryReading | None = None
    reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        after = self.after or self.before
        return {
            "action": self.action,
            "worker_rss_bytes": after.worker_rss,
            "front_rss_bytes": after.front_rss,
            "gpu_used_bytes": after.gpu_used,
            "reasons": self.reasons,
            "seconds": round(self.seconds, 6),
        }


class MemoryGuard:
    """``check(worker)``: read memory, clean up at ``memory_cleanup_gb``, refuse at ``memory_refuse_gb``."""

    def __init__(self, settings: FrontSettings, workers: WorkerClient, pool: WorkerPool) -> None:
        self.settings = settings
        self.workers = workers
        self.pool = pool
        self.cleanup_bytes = int(settings.memory_cleanup_gb * GB)
        self.refuse_bytes = int(settings.memory_refuse_gb * GB)

    def thresholds(self) -> dict[str, float]:
        s = self.settings
        return {
            "memory_cleanup_gb": s.memory_cleanup_gb,
            "memory_refuse_gb": s.memory_refuse_gb,
            "gpu_cleanup_fraction": s.gpu_cleanup_fraction,
            "gpu_refuse_fraction": s.gpu_refuse_fraction,
        }

    async def read(self, worker: WorkerHandle) -> MemoryReading:
        memory = await self.workers.memory(worker.url)
        self.pool.note_memory(worker, memory)
        gpu_used, gpu_total = memory.gpu_used_and_total()
        return MemoryReading(
            worker_rss=memory.rss_bytes, front_rss=rss_bytes(), gpu_used=gpu_used, gpu_total=gpu_total
        )

    def over(self, reading: MemoryReading, rss_limit: int, gpu_limit: float) -> list[str]:
        reasons = []
        if reading.worker_rss >= rss_limit:
            reasons.append(f"worker RSS {reading.worker_rss / GB:.2f} GB >= {rss_limit / GB:g} GB")
        if reading.front_rss >= rss_limit:
            reasons.append(f"front-end RSS {reading.front_rss / GB:.2f} GB >= {rss_limit / GB:g} GB")
        fraction = reading.gpu_fraction
        if fraction is not None and fraction >= gpu_limit:
            reasons.append(f"GPU memory {fraction:.0%} of the card >= {gpu_limit:.0%}")
        return reasons

    async def check(self, worker: WorkerHandle) -> MemoryCheck:
        """Raise MemoryPressure (after asking the worker to recycle) when memory stays too high."""
        started = time.perf_counter()
        before = await self.read(worker)
        if not self.over(before, self.cleanup_bytes, self.settings.gpu_cleanup_fraction):
            return MemoryCheck("ok", before, seconds=time.perf_counter() - started)

        log.info("memory at cleanup threshold on %s: cleaning up", worker.url)
        # A worker that refuses the cleanup is read again all the same: the second reading decides.
        with suppress(httpx.HTTPStatusError):
            await self.workers.cleanup(worker.url)
        if before.front_rss >= self.cleanup_bytes:
            collect_and_trim()
        after = await self.read(worker)
        reasons = self.over(after, self.refuse_bytes, self.settings.gpu_refuse_fraction)
        check = MemoryCheck("cleaned", before, after, reasons, time.perf_counter() - started)
        if not reasons:
            return check
        check.action = "refused"
        await self.recycle(worker)
        raise MemoryPressure(
            "memory is too high to generate safely ("
            + "; ".join(reasons)
            + "); the worker is being recycled",
            headers={"Retry-After": str(self.settings.retry_after_s)},
            extra={"memory": check.to_dict()},
        )

    async def recycle(self, worker: WorkerHandle) -> None:
        try:
            await self.workers.recycle(worker.url)
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("could not ask %s to recycle: %s", worker.url, exc)
        await self.pool.mark_recycling(worker)
