"""Typed service errors: a code, a human message and an HTTP status, mapped to JSON in one place."""

from __future__ import annotations

from typing import Any


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
        return {"error": self.code, "message": self.message, **self.extra}


class InvalidRequest(ServiceError):
    status = 422
    code = "invalid_request"


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
