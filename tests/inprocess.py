"""The in-process layer: both apps built by ``create_app(settings)`` and called through httpx.ASGITransport.

``serving(app)`` runs an app's lifespan around the block (ASGITransport alone does not); ``WorkersByHost``
lets a front end reach several in-process worker apps by the host of their URLs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
from fastapi import FastAPI

from generation.front.app import create_app as create_front
from generation.settings import FrontSettings, WorkerSettings
from generation.worker.app import create_app as create_worker

# Small splats keep each in-process generation to a fraction of a second; still over the validators' 7000.
SMALL_SPLAT = 20_000


class WorkersByHost(httpx.AsyncBaseTransport):
    """Sends each request to the in-process app named by its URL's host."""

    def __init__(self, apps: Mapping[str, FastAPI]) -> None:
        self.transports = {host: httpx.ASGITransport(app=app) for host, app in apps.items()}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = self.transports.get(request.url.host)
        if transport is None:
            raise httpx.ConnectError(f"no in-process worker at {request.url.host}", request=request)
        return await transport.handle_async_request(request)


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client for ``app`` with its lifespan running (start-up before, shutdown after)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def wait_ready(worker_app: FastAPI) -> None:
    """Until the worker's background load finished (the procedural backend loads at once)."""
    state = worker_app.state.worker
    async with asyncio.timeout(60):
        while not (state.ready or state.load_error):
            await asyncio.sleep(0.01)


def worker_settings(**overrides: object) -> WorkerSettings:
    return WorkerSettings(**{"procedural_gaussians": SMALL_SPLAT, **overrides})


def front_settings(workers: list[str], **overrides: object) -> FrontSettings:
    # Probing is driven by the tests (pool.probe_all) rather than by a timer.
    return FrontSettings(**{"workers": workers, "worker_probe_interval_s": 3600, **overrides})


@asynccontextmanager
async def front_with_workers(
    workers: Mapping[str, FastAPI], **overrides: object
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """A front end whose workers are the given in-process apps (host -> app), all of them serving."""
    async with AsyncExitStack() as stack:
        for app in workers.values():
            await stack.enter_async_context(app.router.lifespan_context(app))
            if hasattr(app.state, "worker"):
                await wait_ready(app)
        front = create_front(
            front_settings([f"http://{host}" for host in workers], **overrides), WorkersByHost(workers)
        )
        client = await stack.enter_async_context(serving(front))
        await front.state.front.pool.probe_all()
        yield front, client


def real_worker(**overrides: object) -> FastAPI:
    return create_worker(worker_settings(**overrides))
