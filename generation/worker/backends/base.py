"""The Backend protocol: everything the worker knows about how splats are made."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from diagnostics.splat import Splat
from generation.contract import GenerationParams


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: exactly one of ``prompt`` (text) or ``image`` (raw PNG/JPEG/WebP bytes)."""

    prompt: str | None = None
    image: bytes | None = None
    seed: int = 0
    params: GenerationParams = field(default_factory=GenerationParams)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.image is None):
            raise ValueError("exactly one of prompt or image is required")

    @property
    def kind(self) -> Literal["text", "image"]:
        return "text" if self.prompt is not None else "image"


@runtime_checkable
class Backend(Protocol):
    name: str

    def load(self) -> None:
        """Load models (may take minutes); the worker's /health answers 503 until it returns."""

    def generate(self, request: GenerationRequest) -> Splat:
        """Make one splat. Called from a worker thread, never two at once."""
        ...

    def cleanup(self) -> None:
        """Release cached memory between generations."""

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for /health and /status: what this backend is and how it is set up."""
        ...
