"""What both FastAPI apps share: typed JSON errors, the bearer-token guard and the body size limit."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, SecretStr
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from generation.errors import BodyTooLarge, ServiceError, error_body

log = logging.getLogger("splatgen.http")
_MB = 1024 * 1024


class ErrorBody(BaseModel):
    """Every error the services answer: a stable code and a message for people."""

    error: str
    message: str


_ERROR_TEXT = {
    431: "Request headers over SPLATGEN_MAX_HEADER_KB.",
    401: "Missing or wrong bearer token (when SPLATGEN_API_TOKEN is set).",
    413: "Request body or image over its size limit.",
    415: "Wrong content type for this endpoint.",
    422: "Invalid input (empty prompt, bad image, unknown parameter, malformed body, ...).",
    503: "Typed refusal; retry after Retry-After seconds.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for typed JSON errors (503s also carry Retry-After)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorBody, "description": _ERROR_TEXT.get(status, "Error.")}
        if status == 503:
            entry["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."}}
        out[status] = entry
    return out


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: object
) -> JSONResponse:
    return JSONResponse(error_body(code, message, **extra), status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        if err.get("type") == "json_invalid":
            # FastAPI says only "JSON decode error"; json's own reason and position are what a person needs.
            reason = (err.get("ctx") or {}).get("error", "not valid JSON")
            position = err.get("loc", ("body", "?"))[-1]
            return f"the body is not valid JSON: {reason} at character {position}"
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Map every failure to ``{"error", "message"}`` JSON; never a traceback in a body."""

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, ServiceError):  # FastAPI wraps body-reading failures in a 400
            return await _service_error(_, exc.__cause__)
        if exc.status_code == 400:
            # FastAPI's own 400 is a body it could not parse (malformed JSON or multipart): bad input.
            return error_response(422, "invalid_request", f"malformed request body: {exc.detail}")
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            exc.status_code, "http_error"
        )
        return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, "internal_error", f"unexpected {type(exc).__name__}; see the service log")


async def _send_json(
    send: Send, status: int, body: dict[str, object], headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class GuardMiddleware:
    """Pure ASGI guard: bearer token (when set) on every path but the open ones, and a body size limit.

    The size limit is enforced on Content-Length before anything is read, and on the stream for chunked
    bodies, so an oversized upload is cut off with 413 instead of being buffered whole.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: SecretStr | None,
        max_body_bytes: int,
        open_paths: frozenset[str],
        max_header_bytes: int = 64 * 1024,
        image_paths: frozenset[str] = frozenset(),
        max_image_bytes: int = 0,
    ) -> None:
        self.app = app
        self.token = token.get_secret_value().encode() if token and token.get_secret_value() else None
        self.max_body_bytes = max_body_bytes
        self.open_paths = open_paths
        self.max_header_bytes = max_header_bytes
        # On these paths a body over the limit can only be an oversized image: say so with image_too_large.
        self.image_paths = image_paths
        self.max_image_bytes = max_image_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_headers = scope.get("headers") or []
        header_bytes = sum(len(name) + len(value) + 4 for name, value in raw_headers)
        if header_bytes > self.max_header_bytes:
            await _send_json(
                send,
                431,
                error_body(
                    "headers_too_large",
                    f"the request headers are {header_bytes:,} bytes; the limit is "
                    f"{self.max_header_bytes:,} (SPLATGEN_MAX_HEADER_KB)",
                ),
            )
            return
        headers = dict(raw_headers)
        if self.token is not None and scope.get("path") not in self.open_paths:
            auth = headers.get(b"authorization", b"")
            scheme, _, supplied = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(supplied.strip(), self.token):
                await _send_json(
                    send,
                    401,
                    error_body("unauthorized", "missing or wrong bearer token"),
                    [(b"www-authenticate", b"Bearer")],
                )
                return
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_body_bytes
            except ValueError:
                too_big = False
            if too_big:
                await self._refuse_size(send, scope, int(declared))
                return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    refusal = self._size_refusal(scope, None)
                    raise BodyTooLarge(refusal["message"], code=refusal["error"])
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse_size(send, scope, None)

    async def _refuse_size(self, send: Send, scope: Scope, declared: int | None) -> None:
        await _send_json(send, 413, self._size_refusal(scope, declared))

    def _size_refusal(self, scope: Scope, declared: int | None) -> dict[str, Any]:
        """The 413 body: image_too_large on generation routes (only an image can make one that big)."""
        limit_mb = self.max_body_bytes / _MB
        size = f"{declared / _MB:.1f} MB" if declared is not None else f"more than {limit_mb:g} MB"
        if scope.get("path") in self.image_paths:
            return error_body(
                "image_too_large",
                f"the request is {size}, over its {limit_mb:g} MB limit: the image in it is more "
                f"than the {self.max_image_bytes / _MB:g} MB an image may have (SPLATGEN_MAX_IMAGE_MB)",
            )
        return error_body("payload_too_large", f"the request body is {size}; the limit is {limit_mb:g} MB")
