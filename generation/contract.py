"""The worker's HTTP contract: the bodies the front end sends and the answers the worker gives.

The worker's routes return these models and the front end's ``WorkerClient`` parses every answer with
them, so a field renamed on one side fails a test instead of reading as ``None`` on the other. Both rooms
import this module; it imports neither.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from diagnostics.ply_io import MAX_SPZ_VERTICES


class GenerationParams(BaseModel):
    """Per-request knobs. Sampler settings apply to TRELLIS; ``num_gaussians`` to the procedural backend.

    Every backend accepts every field so that one client works against either; unknown keys are refused.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_gaussians: int | None = Field(default=None, ge=1, le=MAX_SPZ_VERTICES)
    ss_steps: int | None = Field(default=None, ge=1, le=500)
    ss_cfg: float | None = Field(default=None, ge=0.0, le=30.0)
    slat_steps: int | None = Field(default=None, ge=1, le=500)
    slat_cfg: float | None = Field(default=None, ge=0.0, le=30.0)


class GenerateJSON(BaseModel):
    """``{"prompt" | "image_b64", "seed", "params"}``: exactly one of prompt or image_b64.

    The body of the front end's ``/v1/generate`` and of the worker's ``/generate``.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    image_b64: str | None = None
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    params: GenerationParams = Field(default_factory=GenerationParams)


class BackendInfo(BaseModel):
    """What a worker's backend is: ``name`` always, then whatever the backend describes of itself."""

    model_config = ConfigDict(extra="allow")

    name: str


class WorkerHealth(BaseModel):
    """``GET /health``: 200 with ``status`` "ok", else 503 with "loading", "recycling" or "error"."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["ok", "loading", "recycling", "error"]
    backend: BackendInfo
    busy: bool
    generations: int | None = None
    error: str | None = None
    message: str | None = None


class WorkerMemory(BaseModel):
    """``GET /memory``: the worker's main-process RSS and, with CUDA, the GPU memory TRELLIS holds."""

    # Backends may add their own details (TRELLIS: ``gpu_after_load``).
    model_config = ConfigDict(extra="allow")

    pid: int
    rss_bytes: int
    gpu: dict[str, int] | None = None
    busy: bool = False

    def gpu_used_and_total(self) -> tuple[int | None, int | None]:
        """Reserved (else allocated) and total GPU bytes; (None, None) without a GPU."""
        gpu = self.gpu or {}
        return gpu.get("reserved_bytes", gpu.get("allocated_bytes")), gpu.get("total_bytes")


class CleanupResult(BaseModel):
    """``POST /cleanup``: RSS before and after gc, the backend's cleanup and ``malloc_trim``."""

    model_config = ConfigDict(extra="forbid")

    rss_before_bytes: int
    rss_after_bytes: int
    freed_bytes: int
    seconds: float
    gpu: dict[str, int] | None = None


class RecycleAccepted(BaseModel):
    """``POST /recycle`` (202): the worker finishes in-flight work, then exits for PM2 to restart it."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["recycling"] = "recycling"
    pid: int


def backend_info(description: dict[str, Any], name: str) -> BackendInfo:
    """A backend's own ``describe()`` with its ``name`` set, whatever key the backend used for it."""
    return BackendInfo.model_validate({**description, "name": name})
