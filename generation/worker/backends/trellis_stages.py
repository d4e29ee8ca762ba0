"""Seconds per stage of a TRELLIS generation, measured by wrapping a loaded pipeline's own steps.

Stages: ``preprocess`` (background removal and crop), ``conditioning`` (DINOv2 or CLIP), ``ss_sampling``
(sparse-structure flow sampler), ``ss_decoding`` (the sparse-structure decoder), ``slat_sampling`` (structured
latent flow sampler), ``gaussian_decoding`` (the Gaussian decoder) and ``conversion`` (splatgen's Gaussian ->
PLY columns, measured by the backend). ``instrument()`` wraps one pipeline instance (never its class), so the same
hooks serve the worker, the GPU check and any other execution mode built on a pipeline. On CUDA each stage
boundary synchronises, so the seconds are the GPU's, not the launch queue's.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

STAGES = (
    "preprocess",
    "conditioning",
    "ss_sampling",
    "ss_decoding",
    "slat_sampling",
    "gaussian_decoding",
    "conversion",
)


class StageClock:
    """Accumulates seconds per stage for the current generation; ``reset()`` before each one."""

    def __init__(self, torch: Any) -> None:
        self._torch = torch
        self.seconds: dict[str, float] = {}

    def reset(self) -> None:
        self.seconds = {}

    def _sync(self) -> None:
        torch = self._torch
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        self._sync()
        started = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started

    def wrap(self, stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.measure(stage):
                return function(*args, **kwargs)

        return timed

    def rounded(self) -> dict[str, float]:
        return {stage: round(self.seconds[stage], 4) for stage in STAGES if stage in self.seconds}


def instrument(pipeline: Any, clock: StageClock) -> None:
    """Wrap ``pipeline``'s steps with ``clock``; the decoder is timed inside the sparse-structure step."""
    if getattr(pipeline, "_splatgen_stage_clock", None) is clock:
        return
    if hasattr(pipeline, "preprocess_image"):
        pipeline.preprocess_image = clock.wrap("preprocess", pipeline.preprocess_image)
    pipeline.get_cond = clock.wrap("conditioning", pipeline.get_cond)
    sampler = pipeline.sparse_structure_sampler
    sampler.sample = clock.wrap("ss_sampling", sampler.sample)
    decoder = pipeline.models["sparse_structure_decoder"]
    if getattr(decoder, "_splatgen_stage_clock", None) is not clock:  # shared by the text and image pipelines
        decoder.forward = clock.wrap("ss_decoding", decoder.forward)
        decoder._splatgen_stage_clock = clock
    slat_sampler = pipeline.slat_sampler
    slat_sampler.sample = clock.wrap("slat_sampling", slat_sampler.sample)
    pipeline.decode_slat = clock.wrap("gaussian_decoding", pipeline.decode_slat)
    pipeline._splatgen_stage_clock = clock
