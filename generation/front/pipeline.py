"""The front end's work for one request: a worker, the memory check, the generation, the result checks.

``FrontState.run`` takes a parsed job and returns the response to serve, or raises a typed ServiceError.
A splat that fails a gate is retried once with another seed and never served.
"""

from __future__ import annotations

import logging
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Literal

import anyio
import httpx
from fastapi import Response

from generation.contract import GenerationParams
from generation.errors import DegenerateOutput, MemoryPressure, WorkerUnavailable
from generation.front.history import History
from generation.front.memory_guard import MemoryCheck, MemoryGuard
from generation.front.metrics import FrontMetrics
from generation.front.result_check import CheckedResult, check_result
from generation.front.worker_client import WorkerClient, WorkerFailed
from generation.front.worker_pool import WorkerHandle, WorkerPool
from generation.prompts import ParsedPrompt
from generation.settings import FrontSettings

log = logging.getLogger("splatgen.front")

# A prime step, so that retried seeds do not fall back onto a seed a client is likely to send.
RETRY_SEED_STEP = 7919
# Gate failures about the gaussian count: another seed cannot change a count the request fixed.
_COUNT_FAILURES = frozenset({"too_few_gaussians", "too_many_gaussians", "degenerate_count"})

AfterGates = Literal["serve", "retry", "refuse", "refuse_count_fixed"]


def after_gates(
    params: GenerationParams, failure_codes: list[str], degenerate_so_far: int, degenerate_attempts: int
) -> AfterGates:
    """What to do with a checked splat: serve it, retry with another seed, or refuse it.

    ``degenerate_so_far`` counts this splat when it failed. A count the request fixed
    (``params.num_gaussians``) is refused at once: another seed cannot change it.
    """
    if not failure_codes:
        return "serve"
    if params.num_gaussians is not None and all(code in _COUNT_FAILURES for code in failure_codes):
        return "refuse_count_fixed"
    return "refuse" if degenerate_so_far >= degenerate_attempts else "retry"


def after_worker_failure(
    failure: Exception, other_healthy_workers: int
) -> Literal["try_another", "raise", "worker_unavailable"]:
    """A worker failed (or memory was too high on it): try another worker while one is healthy."""
    if other_healthy_workers:
        return "try_another"
    return "raise" if isinstance(failure, MemoryPressure) else "worker_unavailable"


def next_seed(seed: int) -> int:
    return (seed + RETRY_SEED_STEP) % 2**32


@dataclass(frozen=True)
class Job:
    prompt: ParsedPrompt
    seed: int
    params: GenerationParams
    endpoint: str


class FrontState:
    """What the front end holds for its lifetime: the worker client, the pool, the guard, metrics, history.

    ``run`` is the per-request pipeline; the status view (``generation.front.status_view``) reads the rest.
    """

    def __init__(self, settings: FrontSettings, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.workers = WorkerClient(settings, client)
        self.pool = WorkerPool(
            settings.workers, self.workers, max_queue=settings.max_queue, retry_after_s=settings.retry_after_s
        )
        self.guard = MemoryGuard(settings, self.workers, self.pool)
        self.metrics = FrontMetrics()
        self.history = History.from_settings(settings)
        self.retry_after = {"Retry-After": str(settings.retry_after_s)}

    async def run(self, job: Job) -> Response:
        """Generate, check and serve one splat, or raise a typed ServiceError."""
        started = time.perf_counter()
        deadline = started + self.settings.queue_timeout_s
        tried: set[str] = set()
        seed = job.seed
        degenerate = 0
        attempts = self.settings.degenerate_attempts
        for attempt in range(1, len(self.pool.workers) + attempts + 1):
            queued = time.perf_counter()
            self.metrics.queue_depth.set(self.pool.waiting + 1)
            try:
                ctx = self.pool.acquire(max(deadline - queued, 0.001), exclude=frozenset(tried))
                async with ctx as worker:
                    self.metrics.queue_depth.set(self.pool.waiting)
                    self.metrics.queue_seconds.observe(time.perf_counter() - queued)
                    try:
                        memory = await self._check_memory(worker)
                        ply, worker_seconds = await self.workers.generate(
                            worker.url, job.prompt, seed, job.params
                        )
                    except (WorkerFailed, MemoryPressure) as exc:
                        tried.add(worker.url)
                        if isinstance(exc, WorkerFailed):
                            await self.pool.mark_down(worker, str(exc))
                        step = after_worker_failure(exc, len(self.pool.healthy(frozenset(tried))))
                        if step == "try_another":
                            self.metrics.retries.labels("worker_failed").inc()
                            continue
                        if step == "raise":
                            raise
                        raise WorkerUnavailable(
                            f"the worker failed and no other worker is available: {exc}",
                            headers=self.retry_after,
                        ) from None
                    result = await anyio.to_thread.run_sync(check_result, ply, self.settings)
                    del ply
                    self.pool.note_generation(worker)
                    if result.ok:
                        return self._serve(
                            job, worker, result, memory, started, queued, worker_seconds, attempt
                        )
                    degenerate += 1
                    self._count_failures(result)
                    step = after_gates(job.params, [f.code for f in result.failures], degenerate, attempts)
                    if step != "retry":
                        raise DegenerateOutput(
                            (
                                "the generated splat failed the quality gates (params.num_gaussians fixes the "
                                "count, so another seed cannot help): "
                                if step == "refuse_count_fixed"
                                else f"the generated splat failed the quality gates {_times(degenerate)}: "
                            )
                            + "; ".join(f.message for f in result.failures),
                            headers=self.retry_after,
                            extra={"reasons": [f.to_dict() for f in result.failures]},
                        )
                    log.warning("degenerate splat from %s (%s); retrying with another seed", worker.url,
                                ", ".join(f.code for f in result.failures))  # fmt: skip
                    self.metrics.retries.labels("degenerate").inc()
                    await self._cleanup(worker)
                    seed = next_seed(seed)
            finally:
                self.metrics.queue_depth.set(self.pool.waiting)
        raise WorkerUnavailable("every worker failed this request", headers=self.retry_after)

    async def _check_memory(self, worker: WorkerHandle) -> MemoryCheck:
        try:
            check = await self.guard.check(worker)
        except MemoryPressure:
            self.metrics.memory_checks.labels("refused").inc()
            raise
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise WorkerFailed(f"memory check failed: {type(exc).__name__}: {exc}") from None
        self.metrics.memory_checks.labels(check.action).inc()
        self.metrics.memory_check_seconds.observe(check.seconds)
        return check

    async def _cleanup(self, worker: WorkerHandle) -> None:
        with suppress(httpx.HTTPError, ValueError):
            await self.workers.cleanup(worker.url)

    def _count_failures(self, result: CheckedResult) -> None:
        for failure in result.failures:
            self.metrics.gate_failures.labels(failure.code).inc()

    def _serve(
        self,
        job: Job,
        worker: WorkerHandle,
        result: CheckedResult,
        memory: MemoryCheck,
        started: float,
        queued: float,
        worker_seconds: float,
        attempts: int,
    ) -> Response:
        seconds = time.perf_counter() - started
        summary = result.summary()
        self.metrics.generation_seconds.observe(seconds)
        if summary["fixed"]:
            self.metrics.opacity_fixes.inc()
        record = {
            "time": time.time(),
            "endpoint": job.endpoint,
            "kind": job.prompt.kind,
            "prompt": job.prompt.text[:200] if job.prompt.text is not None else None,
            "image_format": job.prompt.image_format,
            "seed": job.seed,
            "outcome": "ok",
            "seconds": round(seconds, 3),
            "queue_seconds": round(queued - started, 3),
            "worker_seconds": worker_seconds,
            "worker": worker.url,
            "attempts": attempts,
            "memory": memory.to_dict(),
            "stats": result.stats,
            **summary,
        }
        self.history.add(record, result.ply, job.prompt.image)
        log.info(
            "generated kind=%s seconds=%.2f gaussians=%d opacity mean %.2f->%.2f std %.2f->%.2f fixed=%s "
            "gates=pass worker=%s worker_rss=%.2fGB attempts=%d",
            job.prompt.kind, seconds, result.gaussians,
            _num(summary["opacity_mean_before"]), _num(summary["opacity_mean_after"]),
            _num(summary["opacity_std_before"]), _num(summary["opacity_std_after"]),
            summary["fixed"], worker.url, memory.to_dict()["worker_rss_bytes"] / 1024**3, attempts,
        )  # fmt: skip
        return Response(
            result.ply,
            media_type="application/octet-stream",
            headers={
                "X-Gaussian-Count": str(result.gaussians),
                "X-Generation-Seconds": f"{seconds:.3f}",
                "X-Worker-Seconds": f"{worker_seconds:.3f}",
                "X-Opacity-Fixed": "true" if summary["fixed"] else "false",
                "X-Worker": worker.url,
                "X-Attempts": str(attempts),
            },
        )


def _times(count: int) -> str:
    return "twice" if count == 2 else f"{count} times"


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")
