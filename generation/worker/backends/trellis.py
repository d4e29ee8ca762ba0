"""The TRELLIS backend: microsoft/TRELLIS image- and text-to-3D pipelines on CUDA, one generation at a time.

torch and trellis are imported inside ``load()``, never when this module is imported, so CPU-only processes
can import it freely. Everything that can be checked before loading (settings, model folders, offline caches,
torch, CUDA, the trellis package) is checked first and reported in one line. Then the portable runtime
(``trellis_runtime``) makes TRELLIS's import-time choices and checks them on the device, and the pipelines are
loaded with only what Gaussian output runs (``trellis_loading``).

Long because loading, the pre-load checks' reporting, warm-up and one locked generation with its
seeding, parameters and cleanup are one lifecycle that shares the loaded pipelines and their lock.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import io
import logging
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from diagnostics.splat import Splat
from generation.errors import BackendUnavailable, GenerationFailed, InvalidRequest, UnsupportedPrompt
from generation.settings import WorkerSettings
from generation.worker.backends.base import GenerationParams, GenerationRequest
from generation.worker.backends.trellis_convert import GaussianParams, gaussian_to_splat
from generation.worker.backends.trellis_device_convert import gaussian_to_splat_on_device
from generation.worker.backends.trellis_loading import (
    CheckpointError,
    LoadedModels,
    load_pipeline,
    local_dinov2_loader,
)
from generation.worker.backends.trellis_optimised import Optimisations, Optimiser
from generation.worker.backends.trellis_runtime import (
    RuntimeProblem,
    RuntimeReport,
    cuda_calls_on_cpu,
    import_trellis,
    prepare,
    self_check,
    setting_problems,
)
from generation.worker.backends.trellis_stages import StageClock, instrument
from generation.worker.backends.trellis_weights import (
    MODEL_SETTINGS,
    PromptKind,
    hub_offline,
    model_sources,
    weight_problems,
)

log = logging.getLogger(__name__)

MIN_VRAM_BYTES = 16 * 1024**3
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


def gpu_memory() -> dict[str, int] | None:
    """Allocated, reserved and total bytes of the current CUDA device; None unless torch is loaded with CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    device = torch.cuda.current_device()
    return {
        "allocated_bytes": int(torch.cuda.memory_allocated(device)),
        "reserved_bytes": int(torch.cuda.memory_reserved(device)),
        "peak_allocated_bytes": int(torch.cuda.max_memory_allocated(device)),
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


def gaussian_params(gaussian: Any) -> GaussianParams:
    """A TRELLIS ``Gaussian``'s constants (biases, box, activation), on the host."""
    return GaussianParams(
        aabb=tuple(_host(gaussian.aabb).astype(float).tolist()),
        opacity_bias=float(gaussian.opacity_bias),
        scale_bias=float(gaussian.scale_bias),
        rotation_bias=tuple(_host(gaussian.rots_bias).astype(float).tolist()),
        min_kernel_size=float(gaussian.mininum_kernel_size),
        scaling_activation=gaussian.scaling_activation_type,
    )


def splat_from_gaussian(gaussian: Any, *, on_device: bool = False) -> Splat:
    """A TRELLIS ``Gaussian`` converted as ``save_ply`` does: on the host from copies of its raw tensors, or
    (``on_device``) in torch where the tensors live, with one host copy of the final rows."""
    params = gaussian_params(gaussian)
    if on_device:
        return gaussian_to_splat_on_device(sys.modules["torch"], gaussian, params)
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
        self._settings_problems = setting_problems(settings)
        self._device = "cpu" if settings.trellis_device.strip().lower() == "cpu" else "cuda"
        self._runtime: RuntimeReport | None = None
        self._clock: StageClock | None = None
        self._last_stages: dict[str, float] = {}
        self._loaded = LoadedModels()
        self._gpu_after_load: dict[str, int] | None = None
        self._optimisations = Optimisations.from_settings(settings, self._device)
        self._optimiser: Optimiser | None = None
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
        self._clock = StageClock(self._torch)
        if self._pipelines is None:
            self._pipelines = self._load_pipelines()
        self._optimiser = Optimiser(self._torch, self._optimisations)
        self._optimiser.prepare(self._pipelines)
        if self._settings.trellis_warmup:
            self._warm_up()
        self._optimiser.freeze()

    def prerequisite_problems(self) -> list[str]:
        """Everything missing for a real load, each naming its fix; empty when load can proceed."""
        problems = list(self._settings_problems)
        if not self._sources:
            problems.append(
                "both SPLATGEN_TRELLIS_IMAGE_MODEL and SPLATGEN_TRELLIS_TEXT_MODEL are disabled: enable at least one"
            )
        problems += weight_problems(self._sources, rembg_model=self._settings.trellis_rembg_model_path)
        torch_problem = _torch_problem(needs_cuda=self._device == "cuda")
        if torch_problem:
            problems.append(torch_problem)
        if importlib.util.find_spec("trellis") is None:
            problems.append(f"the trellis package is not importable: {INSTALL_HINT}")
        return problems

    def _load_pipelines(self) -> dict[PromptKind, Any]:
        torch = self._torch
        if "trellis.modules.attention" in sys.modules:
            log.warning("trellis was imported before the backend: its attention settings are already fixed")
        try:
            self._runtime = runtime = prepare(self._settings)
            module = import_trellis(runtime)
        except RuntimeProblem as exc:
            raise BackendUnavailable(_one_line(str(exc))) from None
        except ImportError as exc:
            missing = getattr(exc, "name", None) or str(exc)
            raise BackendUnavailable(
                f"importing trellis failed, {missing} is missing: {INSTALL_HINT}"
            ) from None
        except Exception as exc:
            raise BackendUnavailable(
                _one_line(f"importing trellis failed ({type(exc).__name__}: {exc}): {INSTALL_HINT}")
            ) from None
        if self._device == "cuda":
            device = torch.cuda.current_device()
            self._device_name = torch.cuda.get_device_name(device)
            total = torch.cuda.get_device_properties(device).total_memory
            if total < MIN_VRAM_BYTES:
                log.warning(
                    "%s has %.1f GiB; TRELLIS needs at least 16 GiB", self._device_name, total / 1024**3
                )
        else:
            self._device_name, total = "cpu (SPLATGEN_TRELLIS_DEVICE=cpu: tests and debugging only)", 0
        if self._settings.trellis_runtime_check:
            try:
                self_check(runtime, torch, self._device)
            except RuntimeProblem as exc:
                raise BackendUnavailable(_one_line(str(exc))) from None
        log.info("TRELLIS runtime: %s; checks: %s", runtime.summary(), runtime.checks or "skipped")
        pipelines: dict[PromptKind, Any] = {}
        for kind, source in self._sources.items():
            started = time.perf_counter()
            try:
                with self._device_scope():
                    pipeline = load_pipeline(
                        module, source, self._loaded, image_cond_loader=local_dinov2_loader
                    )
                    pipeline.to(torch.device(self._device))
                if kind == "image":
                    pipeline.rembg_session = _rembg_session(self._settings)
            except torch.cuda.OutOfMemoryError:
                raise BackendUnavailable(
                    f"the GPU ran out of memory loading the {kind} pipeline ({total / 1024**3:.0f} GiB on "
                    f"{self._device_name}; both pipelines together need more than one): disable one with "
                    f"{source.setting}=none"
                ) from None
            except CheckpointError as exc:
                raise BackendUnavailable(
                    _one_line(f"loading the TRELLIS {kind} pipeline failed: {exc} ({source.setting})")
                ) from None
            except Exception as exc:
                raise BackendUnavailable(
                    _one_line(
                        f"loading the TRELLIS {kind} pipeline from {source.location} failed "
                        f"({type(exc).__name__}: {exc}): check {source.setting} and docs/gpu.md"
                    )
                ) from None
            assert self._clock is not None
            instrument(pipeline, self._clock)
            pipelines[kind] = pipeline
            log.info(
                "loaded TRELLIS %s pipeline from %s in %.1f s",
                kind,
                source.location,
                time.perf_counter() - started,
            )
        self._gpu_after_load = gpu_memory()
        if self._loaded.skipped or self._loaded.shared:
            log.info(
                "not loaded (mesh output only): %s; shared between pipelines: %s",
                ", ".join(self._loaded.skipped) or "none",
                ", ".join(self._loaded.shared) or "none",
            )
        return pipelines

    def _device_scope(self) -> Any:
        """On the CPU (tests, debugging), TRELLIS's hard-coded CUDA calls are mapped to the CPU while inside."""
        if self._device == "cpu":
            return cuda_calls_on_cpu(self._torch)
        return contextlib.nullcontext()

    def _warm_up(self) -> None:
        assert self._pipelines is not None
        sampler = SamplerParams(
            self._settings.trellis_warmup_steps,
            self._settings.trellis_ss_cfg,
            self._settings.trellis_warmup_steps,
            self._settings.trellis_slat_cfg,
        )
        for kind, pipeline in self._pipelines.items():
            started = time.perf_counter()
            prompt = WARMUP_PROMPT if kind == "text" else _warmup_image()
            try:
                with self._lock:
                    self._run(kind, pipeline, prompt, 0, sampler)
            except GenerationFailed as exc:
                raise BackendUnavailable(
                    f"the TRELLIS {kind} pipeline failed its warm-up generation ({exc.message}); "
                    f"{_warmup_advice(exc.message)}, or set SPLATGEN_TRELLIS_WARMUP=false"
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
        clock = self._clock
        if clock is not None:
            clock.reset()
        try:
            on_device = self._optimisations.device_conversion
            with torch.inference_mode(), self._device_scope():
                with self._optimised(pipeline):
                    outputs = pipeline.run(prompt, **kwargs)
                gaussian = _single_gaussian(outputs)
                if clock is not None:
                    with clock.measure("conversion"):
                        splat = splat_from_gaussian(gaussian, on_device=on_device)
                else:
                    splat = splat_from_gaussian(gaussian, on_device=on_device)
                del gaussian
            if clock is not None:
                self._last_stages = clock.rounded()
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

    def _optimised(self, pipeline: Any) -> Any:
        if self._optimiser is None:
            return contextlib.nullcontext()
        return self._optimiser.applied(pipeline)

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

    def memory_details(self) -> dict[str, Any]:
        """GPU memory right after the models loaded (before any generation), for /memory."""
        return {"gpu_after_load": self._gpu_after_load}

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
            "runtime": self._runtime.as_dict() if self._runtime is not None else None,
            "loaded_models": {
                "skipped_mesh_only": list(self._loaded.skipped),
                "shared_between_pipelines": list(self._loaded.shared),
            },
            "last_stage_seconds": dict(self._last_stages),
            "mode": s.trellis_mode,
            "optimisations": (
                self._optimiser.describe()
                if self._optimiser is not None
                else {"active": self._optimisations.active(), "compiled": {}}
            ),
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


def _torch_problem(*, needs_cuda: bool = True) -> str | None:
    try:
        import torch
    except ImportError:
        return f"torch is not installed: {INSTALL_HINT}, {FALLBACK_HINT}"
    except Exception as exc:
        return f"torch failed to import ({type(exc).__name__}: {exc}): {INSTALL_HINT}"
    if torch.cuda.is_available() or not needs_cuda:
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


def _warmup_advice(message: str) -> str:
    """What to change after a failed warm-up, by what failed: convolution and attention have different fixes."""
    lowered = message.lower()
    if any(word in lowered for word in ("spconv", "conv3d", "submconv", "sparse conv", "indice")):
        return "check SPLATGEN_TRELLIS_SPARSE_CONV and SPLATGEN_TRELLIS_SPCONV_ALGO"
    if "attn" in lowered or "attention" in lowered:
        return "check SPLATGEN_TRELLIS_ATTN_BACKEND / SPLATGEN_TRELLIS_SPARSE_ATTN_BACKEND (sdpa runs everywhere)"
    return "see docs/gpu.md"


def _rembg_session(settings: WorkerSettings) -> Any:
    """Created at load so a missing background-removal model fails start-up, not the first RGB prompt."""
    import rembg

    if settings.trellis_rembg_model_path:
        return rembg.new_session("u2net_custom", model_path=settings.trellis_rembg_model_path)
    return rembg.new_session("u2net")


def _host(tensor: Any) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _warmup_image() -> Any:
    """A disc with a real alpha channel, so warm-up skips background removal and needs no network."""
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((48, 48, 208, 208), fill=(200, 120, 60, 255))
    return image
