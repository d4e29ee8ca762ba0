"""gen-worker-1: the competitive-serving front end the 404 miner talks to.

Run with ``splatgen front``. Every request: parse the prompt, take a free healthy worker (bounded queue),
check memory before generating, generate, then parse / fix / gate the PLY. A splat that fails a gate is
never served: one retry with another seed, then a typed 503 (refusing costs a miner nothing; a bad splat
costs a 600 s penalty).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
import httpx
from fastapi import Depends, FastAPI, File, Form, Request, Response, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from generation.api_models import GenerateJSON
from generation.backends.base import GenerationParams
from generation.dashboard import install_dashboard, start_memory_sampler
from generation.errors import InvalidRequest, ServiceError
from generation.front_metrics import FrontMetrics
from generation.history import History
from generation.http_common import GuardMiddleware, error_responses, install_error_handlers
from generation.memory import rss_bytes
from generation.memory_guard import MemoryCheck, MemoryGuard, MemoryPressure
from generation.prompts import ParsedPrompt, check_image, check_text, classify_prompt, decode_image_b64
from generation.result_check import CheckedResult, check_result
from generation.settings import FrontSettings
from generation.worker_pool import WorkerHandle, WorkerPool, WorkerUnavailable

log = logging.getLogger("splatgen.front")
_MB = 1024 * 1024
# A splat that fails the gates is retried once with another seed, never more.
_DEGENERATE_ATTEMPTS = 2
_RETRY_SEED_STEP = 7919
_PLY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "The splat as binary PLY bytes."},
    503: {
        "description": "Typed refusal (memory_pressure, overloaded, timeout, worker_unavailable, degenerate_output)."
    },
}


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
                    if degenerate >= _DEGENERATE_ATTEMPTS:
                        raise DegenerateOutput(
                            "the generated splat failed the quality gates twice: "
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


async def _wait_for_disconnect(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)


async def serve_job(state: FrontState, job: Job, request: Request) -> Response:
    """Run the job, dropping it (and its place in the queue) when the client goes away."""
    task = asyncio.create_task(state.run(job))
    watcher = asyncio.create_task(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with suppress(asyncio.CancelledError, ServiceError):
            await task
        log.info("client disconnected; request dropped (%s)", job.endpoint)
        state.history.count_outcome("client_gone")
        return Response(status_code=499)
    try:
        response = task.result()
    except ServiceError as exc:
        state.metrics.requests.labels(job.endpoint, exc.code).inc()
        state.history.count_outcome(exc.code)
        raise
    state.metrics.requests.labels(job.endpoint, "ok").inc()
    return response


def _require_form(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    empty = not content_type and request.headers.get("content-length", "0") == "0"
    if not empty and content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise ServiceError(
            f"expected a form body (application/x-www-form-urlencoded or multipart/form-data), got {content_type or 'none'}",
            code="unsupported_media_type",
            status=415,
        )


def create_app(settings: FrontSettings | None = None) -> FastAPI:
    """Build the front end; tests pass their own settings."""
    settings = settings or FrontSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
            state = FrontState(settings, client)
            app.state.front = state
            await state.pool.probe_all(state.worker_headers)
            prober = asyncio.create_task(
                state.pool.run_prober(settings.worker_probe_interval_s, state.worker_headers)
            )
            sampler = start_memory_sampler(app)
            try:
                yield
            finally:
                prober.cancel()
                sampler.cancel()
                with suppress(asyncio.CancelledError):
                    await prober
                with suppress(asyncio.CancelledError):
                    await sampler
                await anyio.to_thread.run_sync(state.history.close)

    app = FastAPI(title="splatgen front end (gen-worker-1)", lifespan=lifespan)
    app.add_middleware(
        GuardMiddleware,
        token=settings.api_token,
        max_body_bytes=int(settings.max_request_mb * _MB),
        open_paths=frozenset({"/health"}),
    )
    install_error_handlers(app)
    _add_routes(app, settings)
    install_dashboard(app)
    return app


def _add_routes(app: FastAPI, settings: FrontSettings) -> None:
    def state_of(request: Request) -> FrontState:
        return request.app.state.front

    @app.post(
        "/generate/", response_class=Response, responses=_PLY_RESPONSES, dependencies=[Depends(_require_form)]
    )
    async def generate_miner(
        request: Request,
        prompt: Annotated[str | None, Form(description="Text, or a base64 PNG/JPEG/WebP image.")] = None,
    ) -> Response:
        """The 404 miner's call: one urlencoded form field ``prompt``."""
        if prompt is None:
            # FastAPI reads an empty field as absent; the cached form tells the two apart.
            if "prompt" not in await request.form():
                raise InvalidRequest("the form field 'prompt' is missing", code="missing_field")
            prompt = ""
        parsed = classify_prompt(
            prompt, max_chars=settings.max_prompt_chars, max_image_mb=settings.max_image_mb
        )
        return await serve_job(state_of(request), Job(parsed, 0, GenerationParams(), "miner"), request)

    @app.post(
        "/generate", response_class=Response, responses=_PLY_RESPONSES, dependencies=[Depends(_require_form)]
    )
    async def generate_competition(
        request: Request,
        prompt_image_file: Annotated[UploadFile | None, File(description="The prompt image.")] = None,
        seed: Annotated[int, Form(ge=0, le=2**32 - 1)] = 0,
        prompt: Annotated[str | None, Form(description="Text or base64 image, when no file is sent.")] = None,
    ) -> Response:
        """The competition contract: multipart ``prompt_image_file`` + ``seed``."""
        if prompt_image_file is not None:
            data = await prompt_image_file.read(int(settings.max_image_mb * _MB) + 1)
            parsed = ParsedPrompt(image=data, image_format=check_image(data, settings.max_image_mb))
        elif prompt is not None:
            parsed = classify_prompt(
                prompt, max_chars=settings.max_prompt_chars, max_image_mb=settings.max_image_mb
            )
        else:
            raise InvalidRequest(
                "send a 'prompt_image_file' file (or a 'prompt' field)", code="missing_field"
            )
        return await serve_job(
            state_of(request), Job(parsed, seed, GenerationParams(), "competition"), request
        )

    @app.post("/v1/generate", response_class=Response, responses=_PLY_RESPONSES)
    async def generate_json(body: GenerateJSON, request: Request) -> Response:
        """Our own clients: ``{"prompt" | "image_b64", "seed", "params"}``."""
        if (body.prompt is None) == (body.image_b64 is None):
            raise InvalidRequest("give exactly one of 'prompt' or 'image_b64'", code="invalid_prompt")
        if body.prompt is not None:
            parsed = ParsedPrompt(text=check_text(body.prompt, settings.max_prompt_chars))
        else:
            parsed = decode_image_b64(body.image_b64 or "", settings.max_image_mb)
        return await serve_job(state_of(request), Job(parsed, body.seed, body.params, "v1"), request)

    @app.get("/health", responses={503: {"description": "No healthy worker."}})
    async def health(request: Request) -> JSONResponse:
        state = state_of(request)
        healthy = len(state.pool.healthy())
        body = {"status": "ok" if healthy else "unavailable", "healthy_workers": healthy,
                "workers": len(state.pool.workers)}  # fmt: skip
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.get("/status", responses=error_responses(401))
    async def status(request: Request) -> dict[str, Any]:
        return state_of(request).status()

    @app.get("/metrics", response_class=PlainTextResponse, responses=error_responses(401))
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(state_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
