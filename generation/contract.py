"""JSON request bodies shared by the worker and the front end."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from generation.worker.backends.base import GenerationParams


class GenerateJSON(BaseModel):
    """``{"prompt" | "image_b64", "seed", "params"}``: exactly one of prompt or image_b64."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    image_b64: str | None = None
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    params: GenerationParams = Field(default_factory=GenerationParams)
