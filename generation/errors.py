"""Every typed service error, and the one JSON body they all answer with.

A ``ServiceError`` carries a stable code, a message for people, an HTTP status and optional headers; the HTTP
layer (``generation.http_common``) turns it into ``error_body(...)`` JSON. Both services raise these, so
they sit beside the two rooms, not in either.
"""

from __future__ import annotations

from typing import Any


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """``{"error": code, "message": text, ...}``: the only shape an error answer has."""
    return {"error": code, "message": message, **extra}


class ServiceError(Exception):
    """An error the HTTP layer turns into ``{"error": code, "message": ...}`` with ``status``."""

    status: int = 400
    code: str = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, **self.extra)


# Bad input (both services).


class InvalidRequest(ServiceError):
    status = 422
    code = "invalid_request"


class ImageTooLarge(ServiceError):
    status = 413
    code = "image_too_large"


class BodyTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


class NotKept(ServiceError):
    """A dashboard generation (or one of its files) that the history no longer holds."""

    status = 404
    code = "not_found"


# The worker's refusals.


class BackendUnavailable(ServiceError):
    """The configured backend cannot run here (no CUDA, no trellis, missing weights)."""

    status = 503
    code = "backend_unavailable"


class UnsupportedPrompt(ServiceError):
    """The prompt kind (text or image) has no loaded pipeline."""

    status = 422
    code = "unsupported_prompt_kind"


class GenerationFailed(ServiceError):
    status = 503
    code = "generation_failed"


class WorkerNotReady(ServiceError):
    status = 503
    code = "not_ready"


class WorkerRecycling(ServiceError):
    status = 503
    code = "recycling"


# The front end's refusals: all 503 with Retry-After, none of them costs a miner anything.


class MemoryPressure(ServiceError):
    status = 503
    code = "memory_pressure"


class Overloaded(ServiceError):
    status = 503
    code = "overloaded"


class QueueTimeout(ServiceError):
    status = 503
    code = "timeout"


class WorkerUnavailable(ServiceError):
    status = 503
    code = "worker_unavailable"


class DegenerateOutput(ServiceError):
    status = 503
    code = "degenerate_output"
