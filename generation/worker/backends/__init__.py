"""Backends make splats; the worker knows them only through the ``Backend`` protocol."""

from __future__ import annotations

from generation.settings import WorkerSettings
from generation.worker.backends.base import Backend, GenerationParams, GenerationRequest

__all__ = ["Backend", "GenerationParams", "GenerationRequest", "create_backend"]


def create_backend(settings: WorkerSettings) -> Backend:
    """The backend named by ``settings.backend``; TRELLIS is imported only when chosen."""
    if settings.backend == "procedural":
        from generation.worker.backends.procedural import ProceduralBackend

        return ProceduralBackend(settings)
    if settings.backend == "trellis":
        from generation.worker.backends.trellis import TrellisBackend

        return TrellisBackend(settings)
    raise ValueError(f"unknown backend {settings.backend!r}")
