"""trellis-microservice: the worker that owns one GPU and makes one splat at a time.

Run with ``splatgen worker``. The backend (TRELLIS on CUDA, or the procedural CPU stand-in) is loaded in
the background at start-up; ``/health`` answers 503 until it is ready.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from generation.access_log import AccessLogMiddleware
from generation.contract import (
    CleanupResult,
    GenerateJSON,
    RecycleAccepted,
    WorkerHealth,
    WorkerMemory,
    backend_info,
)
from generation.errors import BackendUnavailable, ServiceError, WorkerNotReady, WorkerRecycling
from generation.http_common import GuardMiddleware, error_responses, install_error_handlers
from generation.image_input import check_image
from generation.memory import collect_and_trim, malloc_trim, rss_bytes
from generation.prompts import json_prompt
from generation.settings import WorkerSettings
from generation.worker.backends import Backend, GenerationRequest, create_backend
from generation.worker.metrics import WorkerMetrics

log = logging.getLogger("splatgen.worker")


class WorkerState:
    def __init__(self, settings: WorkerSettings, backend: Backend) -> None:
        self.settings = settings
        self.backend = backend
        self.lock = asyncio.Lock()
        self.ready = False
        self.load_error: str | None = None
        self.recycling = False
        self.recycle_task: asyncio.Task[None] | None = None
        # Set by the CLI so that /recycle can end the process with exit code 0 (PM2 restarts it).
        self.server: Any = None
        self.metrics = WorkerMetrics()
        self.generations = 0
        self.started_at = time.time()


def _gpu_memory(backend: Backend) -> dict[str, int] | None:
    reader = getattr(backend, "gpu_memory", None)
    return reader() if callable(reader) else None


def _memory_details(backend: Backend) -> dict[str, Any]:
    # Optional: what a backend knows about its own memory (TRELLIS: GPU memory right after loading).
    reader = getattr(backend, "memory_details", None)
    return reader() if callable(reader) else {}


def create_app(settings: WorkerSettings | None = None, backend: Backend | None = None) -> FastAPI:
    """Build the worker app; tests pass their own settings (and may pass a backend)."""
    settings = settings or WorkerSettings()
    backend = backend or create_backend(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state: WorkerState = app.state.worker
        task = asyncio.create_task(_load(state))
        yield
        task.cancel()

    app = FastAPI(title="splatgen worker (trellis-microservice)", lifespan=lifespan)
    app.state.worker = WorkerState(settings, backend)
    app.add_middleware(
        GuardMiddleware,
        token=settings.api_token,
        max_body_bytes=settings.max_request_bytes,
        max_header_bytes=settings.max_header_bytes,
        open_paths=frozenset({"/health"}),
    )
    known_paths: set[str] = set()
    app.add_middleware(AccessLogMiddleware, known_paths=known_paths)
    install_error_handlers(app)
    app.include_router(routes)
    known_paths.update(getattr(route, "path", "") for route in app.routes)
    return app


async def _load(state: WorkerState) -> None:
    started = time.perf_counter()
    try:
        await anyio.to_thread.run_sync(state.backend.load)
    except BackendUnavailable as exc:
        state.load_error = exc.message
        log.error("backend %s cannot start: %s", state.backend.name, exc.message)
        if state.settings.exit_on_load_error:
            # Exiting lets the operator (or PM2's backoff) see the one-line reason at once.
            request_exit(state)
        return
    state.ready = True
    log.info("backend %s ready in %.1f s", state.backend.name, time.perf_counter() - started)


def _to_request(body: GenerateJSON, settings: WorkerSettings) -> GenerationRequest:
    # The front end decoded and prepared the image already: a header check suffices here (check_image).
    parsed = json_prompt(
        body, max_chars=settings.max_prompt_chars, max_image_mb=settings.max_image_mb, check=check_image
    )
    if parsed.text is not None:
        return GenerationRequest(prompt=parsed.text, seed=body.seed, params=body.params)
    return GenerationRequest(image=parsed.image, seed=body.seed, params=body.params)


def worker_health(state: WorkerState) -> WorkerHealth:
    """The /health answer; its ``backend.name`` is the backend's name whatever its describe() calls it."""
    backend = backend_info(state.backend.describe(), state.backend.name)
    busy = state.lock.locked()
    if state.load_error:
        return WorkerHealth(
            status="error", backend=backend, busy=busy, error="backend_unavailable", message=state.load_error
        )
    if state.recycling:
        return WorkerHealth(status="recycling", backend=backend, busy=busy)
    if not state.ready:
        return WorkerHealth(status="loading", backend=backend, busy=busy)
    return WorkerHealth(status="ok", backend=backend, busy=busy, generations=state.generations)


routes = APIRouter()


def state_of(request: Request) -> WorkerState:
    return request.app.state.worker


@routes.get("/health", response_model=WorkerHealth, responses={503: {"model": WorkerHealth}})
async def health(request: Request) -> JSONResponse:
    answer = worker_health(state_of(request))
    # Absent, not null: "generations" only when ready, "error" and "message" only on a load error.
    body = {k: v for k, v in answer.model_dump(mode="json").items() if v is not None}
    return JSONResponse(body, status_code=200 if answer.status == "ok" else 503)


@routes.get("/memory", response_model=WorkerMemory)
async def memory(request: Request) -> WorkerMemory:
    state = state_of(request)
    rss = rss_bytes()
    state.metrics.rss.set(rss)
    return WorkerMemory(
        pid=os.getpid(),
        rss_bytes=rss,
        gpu=_gpu_memory(state.backend),
        **_memory_details(state.backend),
        busy=state.lock.locked(),
    )


@routes.post("/cleanup", response_model=CleanupResult)
async def cleanup(request: Request) -> CleanupResult:
    state = state_of(request)
    before = rss_bytes()
    started = time.perf_counter()
    # Cleanup waits for an in-flight generation: freeing a model's caches under it is unsafe.
    async with state.lock:
        await anyio.to_thread.run_sync(_cleanup_sync, state.backend)
    state.metrics.cleanups.inc()
    after = rss_bytes()
    return CleanupResult(
        rss_before_bytes=before,
        rss_after_bytes=after,
        freed_bytes=before - after,
        seconds=round(time.perf_counter() - started, 4),
        gpu=_gpu_memory(state.backend),
    )


@routes.post("/recycle", status_code=202, response_model=RecycleAccepted)
async def recycle(request: Request) -> JSONResponse:
    """Finish in-flight work, then exit so the process manager starts a fresh process."""
    state = state_of(request)
    if not state.recycling:
        state.recycling = True
        state.recycle_task = asyncio.create_task(_exit_when_idle(state))
    return JSONResponse(RecycleAccepted(pid=os.getpid()).model_dump(mode="json"), status_code=202)


@routes.get("/metrics", response_class=PlainTextResponse, responses=error_responses(401))
async def metrics(request: Request) -> Response:
    state = state_of(request)
    state.metrics.rss.set(rss_bytes())
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@routes.post(
    "/generate",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "The splat as binary PLY bytes.",
        },
        **error_responses(401, 413, 422, 503),
    },
)
async def generate(body: GenerateJSON, request: Request) -> Response:
    state = state_of(request)
    # Image decoding and conversion take tens of milliseconds for a large photo: off the event loop.
    gen_request = await anyio.to_thread.run_sync(_to_request, body, state.settings)
    if state.recycling:
        raise WorkerRecycling(
            "the worker is recycling",
            headers={"Retry-After": str(state.settings.recycling_retry_after_s)},
        )
    if not state.ready:
        raise WorkerNotReady(
            state.load_error or "the backend is still loading",
            headers={"Retry-After": str(state.settings.loading_retry_after_s)},
        )
    async with state.lock:
        state.metrics.busy.set(1)
        started = time.perf_counter()
        try:
            splat = await anyio.to_thread.run_sync(state.backend.generate, gen_request)
            ply = splat.to_ply_bytes()
        except ServiceError:
            state.metrics.generations.labels(gen_request.kind, "error").inc()
            raise
        finally:
            state.metrics.busy.set(0)
        seconds = time.perf_counter() - started
        count = len(splat)
        del splat
    state.generations += 1
    state.metrics.generations.labels(gen_request.kind, "ok").inc()
    state.metrics.seconds.observe(seconds)
    state.metrics.gaussians.observe(count)
    return Response(
        ply,
        media_type="application/octet-stream",
        headers={
            "X-Gaussian-Count": str(count),
            "X-Generation-Seconds": f"{seconds:.3f}",
            "X-Worker-Pid": str(os.getpid()),
        },
    )


def _cleanup_sync(backend: Backend) -> None:
    backend.cleanup()
    collect_and_trim()


async def _exit_when_idle(state: WorkerState) -> None:
    async with state.lock:
        log.warning("recycling on request: exiting so the process manager restarts the worker")
        malloc_trim()
    await asyncio.sleep(0.05)
    request_exit(state)


def request_exit(state: WorkerState) -> None:
    """Graceful shutdown: through the uvicorn server when the CLI gave us one, else SIGTERM."""
    if state.server is not None:
        state.server.should_exit = True
    else:
        os.kill(os.getpid(), signal.SIGTERM)
