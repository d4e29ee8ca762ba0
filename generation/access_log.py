"""One access-log line per request, refusals included, and a hook that counts every outcome.

Pure ASGI and outermost, so that answers written by the guard (401, 413, 431) and by the error handlers
are seen exactly as the client sees them: route, status, error code, bytes in and out, seconds, worker.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("splatgen.access")

# Error bodies are small JSON documents; anything larger is not one of ours and is not parsed.
_MAX_ERROR_BODY = 64 * 1024
# A client that went away before its answer (nginx's convention, which the front end also uses).
CLIENT_GONE = 499


@dataclass(frozen=True)
class AccessRecord:
    method: str
    route: str
    status: int
    code: str
    bytes_in: int
    bytes_out: int
    seconds: float
    worker: str

    def line(self) -> str:
        return (
            f"{self.method} {self.route} status={self.status} code={self.code} in={self.bytes_in} "
            f"out={self.bytes_out} seconds={self.seconds:.3f} worker={self.worker}"
        )


def route_of(scope: Scope, known_paths: set[str] | frozenset[str]) -> str:
    """The route's path template (bounded label values); unknown paths share one name."""
    path = getattr(scope.get("route"), "path", None)
    if path:
        return str(path)
    # Answers written before routing (401, 413, 431) have no route yet: the raw path, when it is ours.
    raw = str(scope.get("path", ""))
    return raw if raw in known_paths else "unmatched"


class AccessLogMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        known_paths: set[str],
        observe: Callable[[AccessRecord], None] | None = None,
    ) -> None:
        self.app = app
        # Filled in by the app once its routes exist (middleware is configured before them).
        self.known_paths = known_paths
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        json_error = False
        error_body = bytearray()
        bytes_in = 0
        bytes_out = 0
        worker = "-"
        written = False

        def write_record() -> None:
            nonlocal written
            written = True
            declared = dict(scope.get("headers") or []).get(b"content-length", b"")
            record = AccessRecord(
                method=str(scope.get("method", "")),
                route=route_of(scope, self.known_paths),
                status=status,
                code=_code(status, json_error, bytes(error_body)),
                bytes_in=max(bytes_in, int(declared) if declared.isdigit() else 0),
                bytes_out=bytes_out,
                seconds=time.perf_counter() - started,
                worker=worker,
            )
            log.info("%s", record.line())
            if self.observe is not None:
                self.observe(record)

        async def counting_receive() -> Message:
            nonlocal bytes_in
            message = await receive()
            if message["type"] == "http.request":
                bytes_in += len(message.get("body", b""))
            return message

        async def watching_send(message: Message) -> None:
            nonlocal status, json_error, bytes_out, worker
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                json_error = status >= 400 and headers.get(b"content-type", b"").startswith(
                    b"application/json"
                )
                worker = headers.get(b"x-worker", b"-").decode("latin-1")
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                bytes_out += len(body)
                if json_error and len(error_body) + len(body) <= _MAX_ERROR_BODY:
                    error_body.extend(body)
                if not message.get("more_body", False) and not written:
                    # Recorded before the last byte leaves: whoever has the answer can already see it counted.
                    write_record()
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        finally:
            if not written:
                write_record()


def _code(status: int, json_error: bool, body: bytes) -> str:
    if status < 400:
        return "ok"
    if status == CLIENT_GONE:
        return "client_gone"
    if json_error:
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if isinstance(document, dict) and isinstance(document.get("error"), str):
            return document["error"]
    return f"http_{status}"
