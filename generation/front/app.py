"""gen-worker-1: the competitive-serving front end the 404 miner talks to.

Run with ``splatgen front``. Every request: parse the prompt, take a free healthy worker (bounded queue),
check memory before generating, generate, then parse / fix / gate the PLY. A splat that fails a gate is
never served: one retry with another seed, then a typed 503 (refusing costs a miner nothing; a bad splat
costs a 600 s penalty).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Annotated, Any

import anyio
import httpx
from fastapi import APIRouter, FastAPI, File, Form, Request, Response, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.formparsers import MultiPartException

from generation.access_log import CLIENT_GONE, AccessLogMiddleware, AccessRecord
from generation.contract import GenerateJSON
from generation.errors import InvalidRequest, ServiceError
from generation.front.dashboard import install_dashboard, start_memory_sampler
from generation.front.pipeline import FrontState, Job
from generation.http_common import GuardMiddleware, error_responses, install_error_handlers
from generation.prompts import ParsedPrompt, classify_prompt, decode_image_b64, image_prompt
from generation.settings import FrontSettings
from generation.worker.backends.base import GenerationParams

log = logging.getLogger("splatgen.front")
GENERATION_ROUTES = frozenset({"/generate/", "/generate", "/v1/generate"})
_PLY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "The splat as binary PLY bytes."},
    **error_responses(401, 413, 415, 422, 431, 503),
}


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
        return Response(status_code=CLIENT_GONE)
    return task.result()


_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class FormRoute(APIRoute):
    """A generation route with a form body: the content type is checked first, then the form is parsed
    with limits from the settings (Starlette's own default cuts every field at 1 MiB, far under an image).

    The parsed form is cached on the request, where FastAPI's own parsing finds it.
    """

    max_part_bytes = 1024 * 1024

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        max_part_bytes = self.max_part_bytes

        async def parse_then_handle(request: Request) -> Response:
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            empty = not content_type and request.headers.get("content-length", "0") == "0"
            if not empty and content_type not in _FORM_TYPES:
                raise ServiceError(
                    "expected a form body (application/x-www-form-urlencoded or multipart/form-data), "
                    f"got {content_type or 'none'}",
                    code="unsupported_media_type",
                    status=415,
                )
            try:
                await request.form(max_part_size=max_part_bytes)
            except MultiPartException as exc:
                raise InvalidRequest(f"malformed form body: {exc.message}") from None
            return await handler(request)

        return parse_then_handle


async def form_prompt(
    request: Request, upload: UploadFile | None, prompt: str | None, settings: FrontSettings
) -> ParsedPrompt:
    """The prompt of a form route: a ``prompt_image_file`` upload, or a ``prompt`` field (text or base64)."""
    form = await request.form()
    # FastAPI reads an empty field as absent; a client that sent one meant something else: refuse it.
    if isinstance(form.get("prompt_image_file"), str):
        raise InvalidRequest(
            "'prompt_image_file' must be a file part (or send the image as the field 'prompt')"
        )
    if form.get("seed") == "":
        raise InvalidRequest(
            "seed: the field is empty; give a whole number from 0 to 4294967295 or leave it out"
        )
    if upload is not None:
        # Bounded by the body limit already; reading it whole gives the real size for the message.
        data = await upload.read()
        # Decoding a large image takes tens of milliseconds: off the event loop.
        return await anyio.to_thread.run_sync(image_prompt, data, settings.max_image_mb)
    if prompt is None:
        # FastAPI reads an empty field as absent; the cached form tells the two apart.
        if "prompt" not in form:
            raise InvalidRequest(
                "send a form field 'prompt' (text or a base64 image) or a file 'prompt_image_file'",
                code="missing_field",
            )
        prompt = ""
    return await anyio.to_thread.run_sync(
        partial(
            classify_prompt, prompt, max_chars=settings.max_prompt_chars, max_image_mb=settings.max_image_mb
        )
    )


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
    _add_routes(app, settings)
    install_dashboard(app)
    # Included routers hide their paths from app.routes: the generation routes are named outright.
    known_paths.update({*GENERATION_ROUTES, *(getattr(route, "path", "") for route in app.routes)} - {""})
    return app


def _add_routes(app: FastAPI, settings: FrontSettings) -> None:
    def state_of(request: Request) -> FrontState:
        return request.app.state.front

    form_route = type("SettingsFormRoute", (FormRoute,), {"max_part_bytes": settings.max_request_bytes})
    forms = APIRouter(route_class=form_route)

    @forms.post("/generate/", response_class=Response, responses=_PLY_RESPONSES)
    async def generate_miner(
        request: Request,
        prompt: Annotated[str | None, Form(description="Text, or a base64 PNG/JPEG/WebP image.")] = None,
        prompt_image_file: Annotated[UploadFile | None, File(description="An image file instead.")] = None,
        seed: Annotated[int, Form(ge=0, le=2**32 - 1)] = 0,
    ) -> Response:
        """The 404 miner's call: one urlencoded form field ``prompt``."""
        parsed = await form_prompt(request, prompt_image_file, prompt, settings)
        return await serve_job(state_of(request), Job(parsed, seed, GenerationParams(), "miner"), request)

    @forms.post("/generate", response_class=Response, responses=_PLY_RESPONSES)
    async def generate_competition(
        request: Request,
        prompt_image_file: Annotated[UploadFile | None, File(description="The prompt image.")] = None,
        seed: Annotated[int, Form(ge=0, le=2**32 - 1)] = 0,
        prompt: Annotated[str | None, Form(description="Text or base64 image, when no file is sent.")] = None,
    ) -> Response:
        """The competition contract: multipart ``prompt_image_file`` + ``seed``."""
        parsed = await form_prompt(request, prompt_image_file, prompt, settings)
        return await serve_job(
            state_of(request), Job(parsed, seed, GenerationParams(), "competition"), request
        )

    app.include_router(forms)

    @app.post("/v1/generate", response_class=Response, responses=_PLY_RESPONSES)
    async def generate_json(body: GenerateJSON, request: Request) -> Response:
        """Our own clients: ``{"prompt" | "image_b64", "seed", "params"}``."""
        if (body.prompt is None) == (body.image_b64 is None):
            raise InvalidRequest("give exactly one of 'prompt' or 'image_b64'", code="invalid_prompt")
        if body.prompt is not None:
            parsed = await anyio.to_thread.run_sync(
                partial(classify_prompt, body.prompt, max_chars=settings.max_prompt_chars,
                        max_image_mb=settings.max_image_mb)
            )  # fmt: skip
        else:
            parsed = await anyio.to_thread.run_sync(
                decode_image_b64, body.image_b64 or "", settings.max_image_mb
            )
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
