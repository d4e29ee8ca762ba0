"""gen-worker-1: the competitive-serving front end the 404 miner talks to.

Run with ``splatgen front``. Every request: parse the prompt, take a free healthy worker (bounded queue),
check memory before generating, generate, then parse / fix / gate the PLY. A splat that fails a gate is
never served: one retry with another seed, then a typed 503 (refusing costs a miner nothing; a bad splat
costs a 600 s penalty).

``create_app(settings)`` builds the whole front end; the routes live in ``generation.front.routes``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

import anyio
import httpx
from fastapi import FastAPI

from generation.access_log import AccessLogMiddleware, AccessRecord
from generation.front.dashboard import install_dashboard, start_memory_sampler
from generation.front.pipeline import FrontState
from generation.front.routes import GENERATION_ROUTES, forms, service
from generation.http_common import GuardMiddleware, install_error_handlers
from generation.settings import FrontSettings


def observe_request(state_of: Callable[[], FrontState | None]) -> Callable[[AccessRecord], None]:
    """Count every answer in splatgen_requests_total; generation outcomes also go to /status and /ui."""

    def observe(record: AccessRecord) -> None:
        state = state_of()
        if state is None:
            return
        state.metrics.requests.labels(record.route, str(record.status), record.code).inc()
        # A served splat is counted by the history itself, together with its record.
        if record.route in GENERATION_ROUTES and record.code != "ok":
            state.history.count_outcome(record.code)

    return observe


def create_app(
    settings: FrontSettings | None = None, worker_transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """Build the front end; tests pass their own settings, and may reach the workers through their own
    transport (in-process worker apps) instead of the network."""
    settings = settings or FrontSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limits = httpx.Limits(
            max_connections=settings.worker_max_connections,
            max_keepalive_connections=settings.worker_max_keepalive_connections,
        )
        async with httpx.AsyncClient(limits=limits, trust_env=False, transport=worker_transport) as client:
            state = FrontState(settings, client)
            app.state.front = state
            await state.pool.probe_all()
            prober = asyncio.create_task(state.pool.run_prober(settings.worker_probe_interval_s))
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
    app.state.settings = settings
    app.add_middleware(
        GuardMiddleware,
        token=settings.api_token,
        max_body_bytes=settings.max_request_bytes,
        max_header_bytes=settings.max_header_bytes,
        open_paths=frozenset({"/health"}),
        image_paths=GENERATION_ROUTES,
        max_image_bytes=settings.max_image_bytes,
    )
    known_paths: set[str] = set()
    app.add_middleware(
        AccessLogMiddleware,
        known_paths=known_paths,
        observe=observe_request(lambda: getattr(app.state, "front", None)),
    )
    install_error_handlers(app)
    app.include_router(forms)
    app.include_router(service)
    install_dashboard(app)
    # Included routers hide their paths from app.routes: the generation routes are named outright.
    known_paths.update({*GENERATION_ROUTES, *(getattr(route, "path", "") for route in app.routes)} - {""})
    return app
