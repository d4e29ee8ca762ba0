"""Workers behind the front end: health, dispatch to a free one, and a bounded queue in front of them.

The pool is the only writer of a ``WorkerHandle``: the memory guard, the pipeline and the prober report
what they saw through its methods, so one place decides when a worker is up, down or recycling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from generation.contract import BackendInfo, WorkerMemory
from generation.errors import Overloaded, QueueTimeout, WorkerUnavailable
from generation.front.worker_client import WorkerClient

log = logging.getLogger("splatgen.pool")


@dataclass
class WorkerHandle:
    url: str
    healthy: bool = False
    busy: bool = False
    status: str = "unknown"
    last_error: str | None = None
    last_seen: float | None = None
    memory: WorkerMemory | None = None
    generations: int = 0
    failures: int = 0
    backend: BackendInfo | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "busy": self.busy,
            "status": self.status,
            "last_error": self.last_error,
            "last_seen": self.last_seen,
            "rss_bytes": self.memory.rss_bytes if self.memory else None,
            "gpu": self.memory.gpu if self.memory else None,
            "generations": self.generations,
            "failures": self.failures,
            "backend": self.backend.name if self.backend else None,
        }


class WorkerPool:
    """Hands each request a free healthy worker; at most ``max_queue`` requests wait for one."""

    def __init__(self, urls: list[str], workers: WorkerClient, *, max_queue: int, retry_after_s: int) -> None:
        self.workers = [WorkerHandle(url) for url in urls]
        self.client = workers
        self.max_queue = max_queue
        self.retry_after = {"Retry-After": str(retry_after_s)}
        self.waiting = 0
        self._changed = asyncio.Condition()

    def healthy(self, exclude: frozenset[str] = frozenset()) -> list[WorkerHandle]:
        return [w for w in self.workers if w.healthy and w.url not in exclude]

    def _free(self, exclude: frozenset[str]) -> WorkerHandle | None:
        free = [w for w in self.healthy(exclude) if not w.busy]
        # Least-used first spreads load evenly across equal workers.
        return min(free, key=lambda w: w.generations) if free else None

    @contextlib.asynccontextmanager
    async def acquire(
        self, timeout_s: float, exclude: frozenset[str] = frozenset()
    ) -> AsyncIterator[WorkerHandle]:
        worker = await self._take(timeout_s, exclude)
        try:
            yield worker
        finally:
            worker.busy = False
            await self._notify()

    async def _take(self, timeout_s: float, exclude: frozenset[str]) -> WorkerHandle:
        async with self._changed:
            worker = self._free(exclude)
            if worker is None:
                if not self.healthy(exclude):
                    raise WorkerUnavailable("no healthy worker is available", headers=self.retry_after)
                if self.waiting >= self.max_queue:
                    raise Overloaded(
                        f"all workers are busy and {self.waiting} requests are already waiting",
                        headers=self.retry_after,
                    )
                self.waiting += 1
                try:
                    async with asyncio.timeout(timeout_s):
                        await self._changed.wait_for(lambda: self._free(exclude) or not self.healthy(exclude))
                except TimeoutError:
                    raise QueueTimeout(
                        f"no worker became free within {timeout_s:g} s", headers=self.retry_after
                    ) from None
                finally:
                    self.waiting -= 1
                worker = self._free(exclude)
                if worker is None:
                    raise WorkerUnavailable(
                        "every worker went down while the request waited", headers=self.retry_after
                    )
            worker.busy = True
            return worker

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def note_memory(self, worker: WorkerHandle, memory: WorkerMemory) -> None:
        worker.memory = memory

    def note_generation(self, worker: WorkerHandle) -> None:
        worker.generations += 1

    async def mark_down(self, worker: WorkerHandle, reason: str) -> None:
        if worker.healthy:
            log.warning("worker %s marked down: %s", worker.url, reason)
        worker.healthy = False
        worker.status = "down"
        worker.last_error = reason
        worker.failures += 1
        await self._notify()

    async def mark_recycling(self, worker: WorkerHandle) -> None:
        """The worker was asked to recycle: no new work until a probe finds it healthy again."""
        worker.healthy = False
        worker.status = "recycling"
        await self._notify()

    async def probe(self, worker: WorkerHandle) -> None:
        """Refresh one worker's health and memory; a worker that answers 200 on /health is back."""
        try:
            ok, health = await self.client.health(worker.url)
            worker.status = health.status
            worker.backend = health.backend
            if ok:
                with contextlib.suppress(httpx.HTTPStatusError):
                    self.note_memory(worker, await self.client.memory(worker.url))
        except (httpx.HTTPError, ValueError) as exc:
            ok = False
            worker.status = "unreachable"
            worker.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        was = worker.healthy
        worker.healthy = ok
        if ok:
            worker.last_seen = time.time()
            if not was:
                log.info("worker %s is healthy", worker.url)
                worker.last_error = None
        if ok != was:
            await self._notify()

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(w) for w in self.workers))

    async def run_prober(self, interval_s: float) -> None:
        while True:
            await self.probe_all()
            await asyncio.sleep(interval_s)
