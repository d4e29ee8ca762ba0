"""The front end's routes: the three generation routes, /health, /status and /metrics, as APIRouters.

Every generation route parses its prompt, then hands a ``Job`` to the pipeline (``generation.front.pipeline``),
dropping it when the client goes away. The app (``generation.front.app``) includes these routers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from contextlib import suppress
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.formparsers import MultiPartException

from generation.access_log import CLIENT_GONE
from generation.contract import GenerateJSON, GenerationParams
from generation.errors import InvalidRequest, ServiceError
from generation.front.pipeline import FrontState, Job
from generation.front.status_view import status_view
from generation.http_common import error_responses
from generation.prompts import ParsedPrompt, classify_prompt, image_prompt, json_prompt
from generation.settings import FrontSettings

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

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

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
                await request.form(max_part_size=settings_of(request).max_request_bytes)
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


def state_of(request: Request) -> FrontState:
    return request.app.state.front


def settings_of(request: Request) -> FrontSettings:
    return request.app.state.settings


forms = APIRouter(route_class=FormRoute)
service = APIRouter()


@forms.post("/generate/", response_class=Response, responses=_PLY_RESPONSES)
async def generate_miner(
    request: Request,
    prompt: Annotated[str | None, Form(description="Text, or a base64 PNG/JPEG/WebP image.")] = None,
    prompt_image_file: Annotated[UploadFile | None, File(description="An image file instead.")] = None,
    seed: Annotated[int, Form(ge=0, le=2**32 - 1)] = 0,
) -> Response:
    """The 404 miner's call: one urlencoded form field ``prompt``."""
    parsed = await form_prompt(request, prompt_image_file, prompt, settings_of(request))
    return await serve_job(state_of(request), Job(parsed, seed, GenerationParams(), "miner"), request)


@forms.post("/generate", response_class=Response, responses=_PLY_RESPONSES)
async def generate_competition(
    request: Request,
    prompt_image_file: Annotated[UploadFile | None, File(description="The prompt image.")] = None,
    seed: Annotated[int, Form(ge=0, le=2**32 - 1)] = 0,
    prompt: Annotated[str | None, Form(description="Text or base64 image, when no file is sent.")] = None,
) -> Response:
    """The competition contract: multipart ``prompt_image_file`` + ``seed``."""
    parsed = await form_prompt(request, prompt_image_file, prompt, settings_of(request))
    return await serve_job(state_of(request), Job(parsed, seed, GenerationParams(), "competition"), request)


@service.post("/v1/generate", response_class=Response, responses=_PLY_RESPONSES)
async def generate_json(body: GenerateJSON, request: Request) -> Response:
    """Our own clients: ``{"prompt" | "image_b64", "seed", "params"}``."""
    settings = settings_of(request)
    parsed = await anyio.to_thread.run_sync(
        partial(json_prompt, body, max_chars=settings.max_prompt_chars, max_image_mb=settings.max_image_mb)
    )
    return await serve_job(state_of(request), Job(parsed, body.seed, body.params, "v1"), request)


@service.get("/health", responses={503: {"description": "No healthy worker."}})
async def health(request: Request) -> JSONResponse:
    state = state_of(request)
    healthy = len(state.pool.healthy())
    body = {"status": "ok" if healthy else "unavailable", "healthy_workers": healthy,
            "workers": len(state.pool.workers)}  # fmt: skip
    return JSONResponse(body, status_code=200 if healthy else 503)


@service.get("/status", responses=error_responses(401))
async def status(request: Request) -> dict[str, Any]:
    return status_view(state_of(request))


@service.get("/metrics", response_class=PlainTextResponse, responses=error_responses(401))
async def metrics(request: Request) -> Response:
    return Response(generate_latest(state_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
