"""The TRELLIS backend: microsoft/TRELLIS image- and text-to-3D pipelines on CUDA, one generation at a time.

torch and trellis are imported inside ``load()``, never when this module is imported, so CPU-only processes
can import it freely. Everything that can be checked before loading (settings, model folders, offline caches,
torch, CUDA, the trellis package) is checked first and reported in one line.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import io
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from diagnostics.splat import Splat
from generation.backends.base import GenerationParams, GenerationRequest
from generation.backends.trellis_convert import GaussianParams, gaussian_to_splat
from generation.backends.trellis_weights import (
    MODEL_SETTINGS,
    PIPELINE_CLASSES,
    PromptKind,
    hub_offline,
    model_sources,
    weight_problems,
)
from generation.errors import BackendUnavailable, GenerationFailed, InvalidRequest, UnsupportedPrompt
from generation.settings import WorkerSettings

log = logging.getLogger(__name__)

# The values TRELLIS reads at import (trellis/modules/attention, modules/sparse, modules/sparse/conv);
# it silently keeps its default for anything else, so unknown values are refused here instead.
ATTN_BACKENDS = ("flash_attn", "xformers", "sdpa", "naive")
SPARSE_ATTN_BACKENDS = ("flash_attn", "xformers")
SPCONV_ALGOS = ("auto", "implicit_gemm", "native")
MIN_VRAM_BYTES = 16 * 1024**3
# Few steps suffice: the step count changes how often kernels run, not which ones compile.
WARMUP_STEPS = 4
WARMUP_PROMPT = "a wooden chair"
# TRELLIS crops images to the pixels whose alpha exceeds 0.8 * 255; with none it fails deep inside numpy.
ALPHA_FOREGROUND = 204
MAX_SEED = 2**64 - 1
INSTALL_HINT = "run scripts/install_trellis.sh (docs/gpu.md)"
FALLBACK_HINT = "or run with SPLATGEN_BACKEND=procedural"


@dataclass(frozen=True)
class SamplerParams:
    """Flow sampler settings for one generation: sparse structure, then structured latent (SLAT)."""

    ss_steps: int
    ss_cfg: float
    slat_steps: int
    slat_cfg: float

    def sparse_structure(self) -> dict[str, Any]:
        return {"steps": self.ss_steps, "cfg_strength": self.ss_cfg}

    def slat(self) -> dict[str, Any]:
        return {"steps": self.slat_steps, "cfg_strength": self.slat_cfg}


def sampler_params(settings: WorkerSettings, params: GenerationParams) -> SamplerParams:
    """The request's values where it sets them, else the worker's (60 / 7.5 and 50 / 3.5 by default).

    Both sources are range-checked by pydantic (``WorkerSettings`` and ``GenerationParams``).
    """

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    return SamplerParams(
        ss_steps=pick(params.ss_steps, settings.trellis_ss_steps),
        ss_cfg=pick(params.ss_cfg, settings.trellis_ss_cfg),
        slat_steps=pick(params.slat_steps, settings.trellis_slat_steps),
        slat_cfg=pick(params.slat_cfg, settings.trellis_slat_cfg),
    )


def attention_environment(settings: WorkerSettings) -> tuple[dict[str, str], list[str]]:
    """The environment TRELLIS reads at import, from settings; ``flash-attn`` is accepted for ``flash_attn``."""
    env: dict[str, str] = {}
    problems: list[str] = []
    for variable, setting, value, allowed in (
        ("ATTN_BACKEND", "SPLATGEN_TRELLIS_ATTN_BACKEND", settings.trellis_attn_backend, ATTN_BACKENDS),
        (
            "SPARSE_ATTN_BACKEND",
            "SPLATGEN_TRELLIS_SPARSE_ATTN_BACKEND",
            settings.trellis_sparse_attn_backend,
            SPARSE_ATTN_BACKENDS,
        ),
        ("SPCONV_ALGO", "SPLATGEN_TRELLIS_SPCONV_ALGO", settings.trellis_spconv_algo, SPCONV_ALGOS),
    ):
        normal = value.strip().lower().replace("-", "_")
        if normal in allowed:
            env[variable] = normal
        else:
            problems.append(f"{setting}={value!r} is not one of {', '.join(allowed)}")
    return env, problems


def gpu_memory() -> dict[str, int] | None:
    """Allocated, reserved and total bytes of the current CUDA device; None unless torch is loaded with CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    device = torch.cuda.current_device()
    return {
        "allocated_bytes": int(torch.cuda.memory_allocated(device)),
        "reserved_bytes": int(torch.cuda.memory_reserved(device)),
        "total_bytes": int(torch.cuda.get_device_properties(device).total_memory),
    }


def decode_image(data: bytes) -> Any:
    """PNG/JPEG/WebP bytes -> a PIL image: RGBA when it has an alpha channel (TRELLIS uses it), else RGB."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        image = ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise InvalidRequest(f"the image could not be decoded: {exc}") from None
    if image.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in image.info:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    if alpha.min() < 255 and alpha.max() <= ALPHA_FOREGROUND:
        raise InvalidRequest("the image's alpha channel hides everything: there is no object to reconstruct")
    return rgba


def splat_from_gaussian(gaussian: Any) -> Splat:
    """Copy a TRELLIS ``Gaussian``'s raw tensors and biases to the host and convert them as ``save_ply`` does."""
    params = GaussianParams(
        aabb=tuple(_host(gaussian.aabb).astype(float).tolist()),
        opacity_bias=float(gaussian.opacity_bias),
        scale_bias=float(gaussian.scale_bias),
        rotation_bias=tuple(_host(gaussian.rots_bias).astype(float).tolist()),
        min_kernel_size=float(gaussian.mininum_kernel_size),
        scaling_activation=gaussian.scaling_activation_type,
    )
    return gaussian_to_splat(
        _host(gaussian._xyz),
        _host(gaussian._features_dc),
        _host(gaussian._opacity),
        _host(gaussian._scaling),
        _host(gaussian._rotation),
        params,
    )


class TrellisBackend:
    """TRELLIS on CUDA. ``pipelines`` injects ready pipeline objects (keyed ``image``/``text``) instead of loading."""

    name = "trellis"

    def __init__(
        self, settings: WorkerSettings, *, pipelines: Mapping[PromptKind, Any] | None = None
    ) -> None:
        self._settings = settings
        self._sources = model_sources(settings)
        self._env, self._settings_problems = attention_environment(settings)
        if pipelines is not None and not set(pipelines) <= {"image", "text"}:
            raise ValueError(f"pipelines must be keyed 'image' and/or 'text', got {sorted(pipelines)}")
        self._pipelines: dict[PromptKind, Any] | None = dict(pipelines) if pipelines is not None else None
        self._lock = threading.Lock()
        self._torch: Any = None
        self._ready = False
        self._device_name: str | None = None
        self._generations = 0

    # -- start-up -------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Check prerequisites, load the pipelines onto the GPU, then warm each up once.

        Every failure is a one-line ``BackendUnavailable`` naming what is missing and what fixes it.
        """
        if self._ready:
            return
        started = time.perf_counter()
        try:
            self._load()
        except BackendUnavailable:
            raise
        except Exception as exc:
            log.exception("TRELLIS backend failed to start")
            raise BackendUnavailable(
                _one_line(f"TRELLIS failed to start ({type(exc).__name__}: {exc}); see docs/gpu.md")
            ) from None
        self._ready = True
        log.info(
            "TRELLIS backend ready in %.1f s: %s",
            time.perf_counter() - started,
            ", ".join(self._pipelines or ()),
        )

    def _load(self) -> None:
        if self._pipelines is None:
            problems = self.prerequisite_problems()
            if problems:
                raise BackendUnavailable(_one_line("; ".join(problems)))
        self._torch = _import_torch()
        if self._pipelines is None:
            self._pipelines = self._load_pipelines()
        if self._settings.trellis_warmup:
            self._warm_up()

    def prerequisite_problems(self) -> list[str]:
        """Everything missing for a real load, each naming its fix; empty when load can proceed."""
        problems = list(self._settings_problems)
        if not self._sources:
            problems.append(
                "both SPLATGEN_TRELLIS_IMAGE_MODEL and SPLATGEN_TRELLIS_TEXT_MODEL are disabled: enable at least one"
            )
        problems += weight_problems(self._sources)
        torch_problem = _torch_problem()
        if torch_problem:
            problems.append(torch_problem)
        if importlib.util.find_spec("trellis") is None:
            problems.append(f"the trellis package is not importable: {INSTALL_HINT}")
        return problems

    def _load_pipelines(self) -> dict[PromptKind, Any]:
        torch = self._torch
        if "trellis.modules.attention" in sys.modules:
            log.warning("trellis was imported before the backend: its attention settings are already fixed")
        os.environ.update(self._env)
        try:
            module = importlib.import_module("trellis.pipelines")
        except ImportError as exc:
            missing = getattr(exc, "name", None) or str(exc)
            raise BackendUnavailable(
                f"importing trellis failed, {missing} is missing: {INSTALL_HINT}"
            ) from None
        except Exception as exc:
            raise BackendUnavailable(
                _one_line(f"importing trellis failed ({type(exc).__name__}: {exc}): {INSTALL_HINT}")
            ) from None
        device = torch.cuda.current_device()
        self._device_name = torch.cuda.get_device_name(device)
        total = torch.cuda.get_device_properties(device).total_memory
        if total < MIN_VRAM_BYTES:
            log.warning("%s has %.1f GiB; TRELLIS needs at least 16 GiB", self._device_name, total / 1024**3)
        pipelines: dict[PromptKind, Any] = {}
        for kind, source in self._sources.items():
            started = time.perf_counter()
            try:
                pipeline = getattr(module, PIPELINE_CLASSES[kind]).from_pretrained(source.location)
                pipeline.cuda()
                if kind == "image":
                    # Created now so a missing u2net model fails start-up, not the first RGB prompt.
                    import rembg

                    pipeline.rembg_session = rembg.new_session("u2net")
            except torch.cuda.OutOfMemoryError:
                raise BackendUnavailable(
                    f"the GPU ran out of memory loading the {kind} pipeline ({total / 1024**3:.0f} GiB on "
                    f"{self._device_name}; both pipelines together need more than one): disable one with "
                    f"{source.setting}=none"
                ) from None
            except Exception as exc:
                raise BackendUnavailable(
                    _one_line(
                        f"loading the TRELLIS {kind} pipeline from {source.location} failed "
                        f"({type(exc).__name__}: {exc}): check {source.setting} and docs/gpu.md"
                    )
                ) from None
            pipelines[kind] = pipeline
            log.info(
                "loaded TRELLIS %s pipeline from %s in %.1f s",
                kind,
                source.location,
                time.perf_counter() - started,
            )
        return pipelines

    def _warm_up(self) -> None:
        assert self._pipelines is not None
        sampler = SamplerParams(
            WARMUP_STEPS, self._settings.trellis_ss_cfg, WARMUP_STEPS, self._settings.trellis_slat_cfg
        )
        for kind, pipeline in self._pipelines.items():
            started = time.perf_counter()
            prompt = WARMUP_PROMPT if kind == "text" else _warmup_image()
            try:
                with self._lock:
                    self._run(kind, pipeline, prompt, 0, sampler)
            except GenerationFailed as exc:
                raise BackendUnavailable(
                    f"the TRELLIS {kind} pipeline failed its warm-up generation ({exc.message}); check "
                    "SPLATGEN_TRELLIS_ATTN_BACKEND / SPLATGEN_TRELLIS_SPARSE_ATTN_BACKEND (xformers where "
                    "flash-attn does not support the GPU), or set SPLATGEN_TRELLIS_WARMUP=false"
                ) from None
            log.info("warmed up TRELLIS %s pipeline in %.1f s", kind, time.perf_counter() - started)

    # -- serving --------------------------------------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> Splat:
        """One splat from a text prompt or an image, under the backend's lock."""
        pipeline = self._pipeline_for(request.kind)
        if not 0 <= request.seed <= MAX_SEED:
            raise InvalidRequest(f"seed must be between 0 and {MAX_SEED}")
        sampler = sampler_params(self._settings, request.params)
        prompt = request.prompt if request.kind == "text" else decode_image(request.image or b"")
        with self._lock:
            splat = self._run(request.kind, pipeline, prompt, request.seed, sampler)
            self._generations += 1
        return splat

    def _pipeline_for(self, kind: PromptKind) -> Any:
        if not self._ready or self._pipelines is None:
            raise BackendUnavailable("the TRELLIS backend is still loading")
        pipeline = self._pipelines.get(kind)
        if pipeline is None:
            served = ", ".join(self._pipelines) or "nothing"
            raise UnsupportedPrompt(
                f"{kind} prompts are not served here: the {kind} pipeline is disabled "
                f"({MODEL_SETTINGS[kind]}); this worker serves {served} prompts"
            )
        return pipeline

    def _run(self, kind: PromptKind, pipeline: Any, prompt: Any, seed: int, sampler: SamplerParams) -> Splat:
        """One pipeline run; the caller holds the lock. No Gaussian outlives this call."""
        torch = self._torch
        kwargs: dict[str, Any] = {
            "num_samples": 1,
            "seed": seed,
            "sparse_structure_sampler_params": sampler.sparse_structure(),
            "slat_sampler_params": sampler.slat(),
            "formats": ["gaussian"],
        }
        if kind == "image":
            kwargs["preprocess_image"] = True
        failure: str | None = None
        splat: Splat | None = None
        outputs: Any = None
        try:
            with torch.inference_mode():
                outputs = pipeline.run(prompt, **kwargs)
                splat = splat_from_gaussian(_single_gaussian(outputs))
        except torch.cuda.OutOfMemoryError:
            log.exception("TRELLIS %s generation ran out of GPU memory", kind)
            failure = (
                "the GPU ran out of memory during generation; the worker released its cache, retry later"
            )
        except Exception as exc:
            log.exception("TRELLIS %s generation failed", kind)
            failure = _one_line(f"TRELLIS {kind} generation failed: {type(exc).__name__}: {exc}")
        finally:
            outputs = None
        # Outside the except blocks the traceback, and the GPU tensors its frames hold, are already gone.
        if failure is not None or splat is None:
            gc.collect()
            self._empty_cache()
            raise GenerationFailed(failure or f"TRELLIS {kind} generation returned nothing")
        self._empty_cache()
        if len(splat) == 0:
            raise GenerationFailed(
                f"TRELLIS {kind} generation produced no gaussians (an empty sparse structure)"
            )
        return splat

    def cleanup(self) -> None:
        """Collect garbage and hand cached GPU blocks back to the driver."""
        gc.collect()
        self._empty_cache()

    def _empty_cache(self) -> None:
        torch = self._torch
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def gpu_memory(self) -> dict[str, int] | None:
        """See the module-level ``gpu_memory``."""
        return gpu_memory()

    def describe(self) -> dict[str, Any]:
        """Models, sampler defaults and attention settings; cheap and safe to call while loading."""
        s = self._settings
        return {
            "backend": self.name,
            "ready": self._ready,
            "prompt_kinds": sorted(self._pipelines) if self._ready and self._pipelines else [],
            "models": {kind: source.location for kind, source in self._sources.items()},
            "sampler_defaults": {
                "ss_steps": s.trellis_ss_steps,
                "ss_cfg": s.trellis_ss_cfg,
                "slat_steps": s.trellis_slat_steps,
                "slat_cfg": s.trellis_slat_cfg,
            },
            "environment": dict(self._env),
            "warmup": s.trellis_warmup,
            "hub_offline": hub_offline(),
            "device": self._device_name,
            "generations": self._generations,
        }


# -- helpers: torch, pipelines, outputs ---------------------------------------------------------------------


def _one_line(text: str) -> str:
    # The worker CLI prints start-up errors on one line; exception texts often span several.
    return " ".join(text.split())


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise BackendUnavailable(f"torch is not installed: {INSTALL_HINT}") from None
    return torch


def _torch_problem() -> str | None:
    try:
        import torch
    except ImportError:
        return f"torch is not installed: {INSTALL_HINT}, {FALLBACK_HINT}"
    except Exception as exc:
        return f"torch failed to import ({type(exc).__name__}: {exc}): {INSTALL_HINT}"
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return (
            f"CUDA is not available: torch {torch.__version__} is a CPU-only build; install a CUDA build "
            f"with scripts/install_trellis.sh, {FALLBACK_HINT}"
        )
    return (
        f"CUDA is not available to torch {torch.__version__} (built for CUDA {torch.version.cuda}): no GPU is "
        f"visible; check nvidia-smi and CUDA_VISIBLE_DEVICES, {FALLBACK_HINT}"
    )


def _single_gaussian(outputs: Any) -> Any:
    gaussians = outputs.get("gaussian") if isinstance(outputs, dict) else None
    if not gaussians:
        raise ValueError("the pipeline returned no 'gaussian' output")
    return gaussians[0]


def _host(tensor: Any) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _warmup_image() -> Any:
    """A disc with a real alpha channel, so warm-up skips background removal and needs no network."""
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((48, 48, 208, 208), fill=(200, 120, 60, 255))
    return image
