"""The front end's work for one request: a worker, the memory check, the generation, the result checks.

``FrontState.run`` takes a parsed job and returns the response to serve, or raises a typed ServiceError.
A splat that fails a gate is retried once with another seed and never served.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from fastapi import Response

from generation.errors import ServiceError
from generation.front.history import History
from generation.front.memory_guard import MemoryCheck, MemoryGuard, MemoryPressure
from generation.front.metrics import FrontMetrics
from generation.front.result_check import CheckedResult, check_result
from generation.front.worker_pool import WorkerHandle, WorkerPool, WorkerUnavailable
from generation.memory import rss_bytes
from generation.prompts import ParsedPrompt
from generation.settings import FrontSettings
from generation.worker.backends.base import GenerationParams

log = logging.getLogger("splatgen.front")

# A splat that fails the gates is retried once with another seed, never more.
_DEGENERATE_ATTEMPTS = 2
_RETRY_SEED_STEP = 7919
# Gate failures about the gaussian count: another seed cannot change a count the request fixed.
_COUNT_FAILURES = frozenset({"too_few_gaussians", "too_many_gaussians", "degenerate_count"})


def _seed_cannot_help(job: Job, result: CheckedResult) -> bool:
    return job.params.num_gaussians is not None and all(f.code in _COUNT_FAILURES for f in result.failures)


class DegenerateOutput(ServiceError):
    status = 503
    code = "degenerate_output"


class WorkerFailed(Exception):
    """The worker broke off, hung, or answered with a server error: try another worker."""


@dataclass(frozen=True)
class Job:
    prompt: ParsedPrompt
    seed: int
    params: GenerationParams
    endpoint: str


class FrontState:
    def __init__(self, settings: FrontSettings, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.client = client
        token = settings.worker_token.get_secret_value() if settings.worker_token else None
        self.worker_headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.pool = WorkerPool(
            settings.workers,
            client,
            max_queue=settings.max_queue,
            retry_after_s=settings.retry_after_s,
            control_timeout_s=settings.worker_control_timeout_s,
        )
        self.guard = MemoryGuard(settings, client, self.worker_headers)
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
        for attempt in range(1, len(self.pool.workers) + _DEGENERATE_ATTEMPTS + 1):
            queued = time.perf_counter()
            self.metrics.queue_depth.set(self.pool.waiting + 1)
            try:
                ctx = self.pool.acquire(max(deadline - queued, 0.001), exclude=frozenset(tried))
                async with ctx as worker:
                    self.metrics.queue_depth.set(self.pool.waiting)
                    self.metrics.queue_seconds.observe(time.perf_counter() - queued)
                    try:
                        memory = await self._check_memory(worker)
                        ply, worker_seconds = await self._call_worker(worker, job, seed)
                    except (WorkerFailed, MemoryPressure) as exc:
                        tried.add(worker.url)
                        if isinstance(exc, WorkerFailed):
                            await self.pool.mark_down(worker, str(exc))
                        if self.pool.healthy(frozenset(tried)):
                            self.metrics.retries.labels("worker_failed").inc()
                            continue
                        if isinstance(exc, MemoryPressure):
                            raise
                        raise WorkerUnavailable(
                            f"the worker failed and no other worker is available: {exc}",
                            headers=self.retry_after,
                        ) from None
                    result = await anyio.to_thread.run_sync(check_result, ply, self.settings)
                    del ply
                    worker.generations += 1
                    if result.ok:
                        return self._serve(
                            job, worker, result, memory, started, queued, worker_seconds, attempt
                        )
                    degenerate += 1
                    self._count_failures(result)
                    no_retry = _seed_cannot_help(job, result)
                    if degenerate >= _DEGENERATE_ATTEMPTS or no_retry:
                        raise DegenerateOutput(
                            (
                                "the generated splat failed the quality gates (params.num_gaussians fixes the "
                                "count, so another seed cannot help): "
                                if no_retry
                                else "the generated splat failed the quality gates twice: "
                            )
                            + "; ".join(f.message for f in result.failures),
                            headers=self.retry_after,
                            extra={"reasons": [f.to_dict() for f in result.failures]},
                        )
                    log.warning("degenerate splat from %s (%s); retrying with another seed", worker.url,
                                ", ".join(f.code for f in result.failures))  # fmt: skip
                    self.metrics.retries.labels("degenerate").inc()
                    await self._cleanup(worker)
                    seed = (seed + _RETRY_SEED_STEP) % 2**32
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

    async def _call_worker(self, worker: WorkerHandle, job: Job, seed: int) -> tuple[memoryview, float]:
        payload: dict[str, Any] = {"seed": seed, "params": job.params.model_dump(exclude_none=True)}
        if job.prompt.text is not None:
            payload["prompt"] = job.prompt.text
        else:
            payload["image_b64"] = base64.b64encode(job.prompt.image or b"").decode("ascii")
        request = self.client.build_request(
            "POST",
            f"{worker.url}/generate",
            json=payload,
            headers=self.worker_headers,
            timeout=self.settings.worker_timeout_s,
        )
        try:
            response = await self.client.send(request, stream=True)
            try:
                if response.status_code == 200:
                    return await _read_body_once(response), _seconds_header(response)
                await response.aread()
            finally:
                await response.aclose()
        except httpx.TimeoutException:
            raise WorkerFailed(f"no answer within {self.settings.worker_timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise WorkerFailed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
        body = _json_or_none(response)
        if 400 <= response.status_code < 500 and body and "error" in body:
            # The request itself is wrong (e.g. a prompt kind with no pipeline): no other worker will differ.
            raise ServiceError(
                str(body.get("message", "")), code=str(body["error"]), status=response.status_code
            )
        detail = body.get("message") if body else response.text[:200]
        raise WorkerFailed(f"worker answered {response.status_code}: {detail}")

    async def _cleanup(self, worker: WorkerHandle) -> None:
        with suppress(httpx.HTTPError):
            await self.client.post(
                f"{worker.url}/cleanup",
                headers=self.worker_headers,
                timeout=self.settings.worker_cleanup_timeout_s,
            )

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

    def status(self) -> dict[str, Any]:
        return {
            "workers": [w.snapshot() for w in self.pool.workers],
            "queue_depth": self.pool.waiting,
            "max_queue": self.settings.max_queue,
            "queue_timeout_s": self.settings.queue_timeout_s,
            "thresholds": self.guard.thresholds(),
            "front": {"pid": os.getpid(), "rss_bytes": rss_bytes()},
            "outcomes": dict(self.history.outcomes),
            "generations": self.history.recent(),
        }


async def _read_body_once(response: httpx.Response) -> memoryview:
    """Read a PLY body straight into one buffer of its declared size.

    ``response.content`` keeps every chunk and then joins them: two copies of a large PLY at the peak.
    """
    try:
        size = int(response.headers["content-length"])
    except (KeyError, ValueError):
        raise WorkerFailed("the worker answered without a valid Content-Length") from None
    buffer = bytearray(size)
    view = memoryview(buffer)
    filled = 0
    async for chunk in response.aiter_raw():
        end = filled + len(chunk)
        if end > size:
            raise WorkerFailed(f"the worker sent more than its Content-Length of {size} bytes")
        view[filled:end] = chunk
        filled = end
    if filled != size:
        raise WorkerFailed(f"the worker sent {filled} of {size} bytes")
    return view


def _seconds_header(response: httpx.Response) -> float:
    try:
        return float(response.headers.get("x-generation-seconds", "nan"))
    except ValueError:
        return float("nan")


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


def _json_or_none(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
