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
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from diagnostics.splat import Splat
from generation.backends.base import GenerationParams, GenerationRequest
from generation.backends.trellis_convert import GaussianParams, gaussian_to_splat
from generation.errors import BackendUnavailable, GenerationFailed, InvalidRequest, UnsupportedPrompt
from generation.settings import WorkerSettings

log = logging.getLogger(__name__)

PromptKind = Literal["image", "text"]

MODEL_SETTINGS: dict[PromptKind, str] = {
    "image": "SPLATGEN_TRELLIS_IMAGE_MODEL",
    "text": "SPLATGEN_TRELLIS_TEXT_MODEL",
}
PIPELINE_CLASSES: dict[PromptKind, str] = {
    "image": "TrellisImageTo3DPipeline",
    "text": "TrellisTextTo3DPipeline",
}
DISABLED_MODEL_VALUES = frozenset({"", "none"})
# The values TRELLIS reads at import (trellis/modules/attention, modules/sparse, modules/sparse/conv);
# it silently keeps its default for anything else, so unknown values are refused here instead.
ATTN_BACKENDS = ("flash_attn", "xformers", "sdpa", "naive")
SPARSE_ATTN_BACKENDS = ("flash_attn", "xformers")
SPCONV_ALGOS = ("auto", "implicit_gemm", "native")
MIN_VRAM_BYTES = 16 * 1024**3
# Enough steps to compile every kernel and run the sparse-conv search on realistic shapes, cheap enough to wait for.
WARMUP_STEPS = 4
WARMUP_PROMPT = "a wooden chair"
# TRELLIS crops images to the pixels whose alpha exceeds 0.8 * 255; with none it fails deep inside numpy.
ALPHA_FOREGROUND = 204
MAX_SEED = 2**64 - 1
INSTALL_HINT = "run scripts/install_trellis.sh (docs/gpu.md)"
FALLBACK_HINT = "or run with SPLATGEN_BACKEND=procedural"

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_TRUE_VALUES = frozenset({"1", "ON", "YES", "TRUE"})

CacheLookup = Callable[[str, str], "str | None"]


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


@dataclass(frozen=True)
class ModelSource:
    """Where one pipeline's weights come from: a local folder (absolute path) or a Hugging Face repo id."""

    kind: PromptKind
    location: str
    local: bool

    @property
    def setting(self) -> str:
        return MODEL_SETTINGS[self.kind]


def model_sources(settings: WorkerSettings) -> dict[PromptKind, ModelSource]:
    """The enabled pipelines; an empty value or ``none`` disables one.

    Like TRELLIS, a folder holding ``pipeline.json`` is local; anything not shaped ``owner/name`` is a path too.
    """
    sources: dict[PromptKind, ModelSource] = {}
    for kind, raw in (("image", settings.trellis_image_model), ("text", settings.trellis_text_model)):
        value = raw.strip()
        if value.lower() in DISABLED_MODEL_VALUES:
            continue
        path = Path(value).expanduser()
        local = (path / "pipeline.json").is_file() or not _HUB_ID.fullmatch(value)
        sources[kind] = ModelSource(kind, str(path.resolve()) if local else value, local)
    return sources


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


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set the way huggingface_hub reads it."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE_VALUES


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
        """Check prerequisites, load the pipelines onto the GPU, then warm each up once."""
        if self._ready:
            return
        started = time.perf_counter()
        if self._pipelines is None:
            problems = self.prerequisite_problems()
            if problems:
                detail = "; ".join(" ".join(p.split()) for p in problems)
                raise BackendUnavailable(f"TRELLIS backend cannot start: {detail}")
        self._torch = _import_torch()
        if self._pipelines is None:
            self._pipelines = self._load_pipelines()
        if self._settings.trellis_warmup:
            self._warm_up()
        self._ready = True
        log.info(
            "TRELLIS backend ready in %.1f s: %s", time.perf_counter() - started, ", ".join(self._pipelines)
        )

    def prerequisite_problems(self) -> list[str]:
        """Everything missing for a real load, each naming its fix; empty when load can proceed."""
        problems = list(self._settings_problems)
        if not self._sources:
            problems.append(
                "both SPLATGEN_TRELLIS_IMAGE_MODEL and SPLATGEN_TRELLIS_TEXT_MODEL are disabled: enable at least one"
            )
        offline = hub_offline()
        lookup = _hub_cache_lookup() if offline else None
        pipeline_args: dict[PromptKind, dict[str, Any]] = {}
        for kind, source in self._sources.items():
            args, found = _pipeline_args(source, lookup)
            problems += found
            if args is not None:
                pipeline_args[kind] = args
                problems += _model_file_problems(source, args, lookup)
        torch_problem = _torch_problem()
        if torch_problem:
            problems.append(torch_problem)
        if importlib.util.find_spec("trellis") is None:
            problems.append(f"the trellis package is not importable: {INSTALL_HINT}")
        if offline:
            problems += _offline_cache_problems(self._sources, pipeline_args, lookup)
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
                f"importing trellis failed ({type(exc).__name__}: {exc}): {INSTALL_HINT}"
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
                    f"{self._device_name}; both pipelines want 24 GiB): disable one with {source.setting}=none"
                ) from None
            except Exception as exc:
                raise BackendUnavailable(
                    f"loading the TRELLIS {kind} pipeline from {source.location} failed "
                    f"({type(exc).__name__}: {exc}): check {source.setting} and docs/gpu.md"
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
            failure = f"TRELLIS {kind} generation failed: {type(exc).__name__}: {exc}"
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


# -- helpers: weights on disk and in caches -----------------------------------------------------------------


def _hub_cache_lookup() -> CacheLookup | None:
    """A cache-only file lookup; None without huggingface_hub (trellis needs it, so its absence is reported)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cache_dir = os.environ.get("HF_HUB_CACHE") or None

    def lookup(repo_id: str, filename: str) -> str | None:
        try:
            found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        except Exception:
            return None
        return found if isinstance(found, str) else None

    return lookup


def _pipeline_args(
    source: ModelSource, lookup: CacheLookup | None
) -> tuple[dict[str, Any] | None, list[str]]:
    """``pipeline.json``'s ``args`` when it can be read without the network, with what is wrong."""
    if source.local:
        folder = Path(source.location)
        if not folder.is_dir():
            return None, [f"model folder {folder} does not exist ({source.setting})"]
        path = folder / "pipeline.json"
        if not path.is_file():
            return None, [f"{path} is missing ({source.setting} must name a downloaded TRELLIS model folder)"]
    elif lookup is None:
        return None, []
    else:
        cached = lookup(source.location, "pipeline.json")
        if cached is None:
            return None, [
                f"{source.location} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
                f"pre-fetch it (huggingface-cli download {source.location}) or set {source.setting} to a folder"
            ]
        path = Path(cached)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, [f"{path} cannot be read as JSON ({exc}; {source.setting})"]
    args = config.get("args") if isinstance(config, dict) else None
    models = args.get("models") if isinstance(args, dict) else None
    if not isinstance(models, dict) or not all(isinstance(v, str) for v in models.values()):
        return None, [f"{path} is not a TRELLIS pipeline file: it has no args.models ({source.setting})"]
    expected = PIPELINE_CLASSES[source.kind]
    if config.get("name") != expected:
        return None, [f"{path} describes a {config.get('name')}, not a {expected}: check {source.setting}"]
    return args, []


def _model_file_problems(source: ModelSource, args: dict[str, Any], lookup: CacheLookup | None) -> list[str]:
    """Every checkpoint ``pipeline.json`` names, resolved the way TRELLIS resolves it (folder first, then hub)."""
    problems: list[str] = []
    for key, ref in args["models"].items():
        if source.local:
            base = f"{source.location}/{ref}"
            files = [Path(f"{base}.json"), Path(f"{base}.safetensors")]
            missing = [str(f) for f in files if not f.is_file()]
            if not missing:
                broken = _safetensors_problem(files[1])
                if broken:
                    problems.append(f"{files[1]} {broken} ({source.setting})")
                continue
        else:
            if lookup is None:
                continue
            missing = _uncached(lookup, source.location, ref)
            if not missing:
                continue
        if _is_hub_path(ref):
            # TRELLIS's fallback: the reference is itself a hub path (text models borrow image-model decoders).
            if lookup is None:
                continue
            repo, name = _split_hub_path(ref)
            also = _uncached(lookup, repo, name)
            if not also:
                continue
            missing += also
            fix = f"pre-fetch {repo} (huggingface-cli download {repo}) or put the files under the folder"
        else:
            fix = "the download is incomplete: fetch the model again (docs/gpu.md)"
        problems.append(f"missing {' and '.join(missing)} ({key} in pipeline.json, {source.setting}): {fix}")
    return problems


def _offline_cache_problems(
    sources: Mapping[PromptKind, ModelSource],
    pipeline_args: Mapping[PromptKind, dict[str, Any]],
    lookup: CacheLookup | None,
) -> list[str]:
    """The conditioning models TRELLIS fetches outside its own repos: DINOv2, CLIP and rembg's u2net."""
    problems: list[str] = []
    if "image" in sources:
        name = str(pipeline_args.get("image", {}).get("image_cond_model", "dinov2_vitl14_reg"))
        problem = _dinov2_problem(name)
        if problem:
            problems.append(problem)
        u2net = _u2net_path()
        if not u2net.is_file():
            problems.append(
                f"rembg's {u2net} is missing and HF_HUB_OFFLINE is set: pre-fetch it "
                "(python -c \"import rembg; rembg.new_session('u2net')\") or set U2NET_HOME"
            )
    if "text" in sources and "text" in pipeline_args and lookup is not None:
        clip = str(pipeline_args["text"].get("text_cond_model", "openai/clip-vit-large-patch14"))
        weights = ("model.safetensors", "pytorch_model.bin")
        if lookup(clip, "config.json") is None or all(lookup(clip, w) is None for w in weights):
            problems.append(
                f"the text encoder {clip} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
                f"pre-fetch it (huggingface-cli download {clip})"
            )
    return problems


def _dinov2_problem(name: str) -> str | None:
    try:
        import torch.hub
    except ImportError:
        return None
    hub = Path(torch.hub.get_dir())
    fix = f"pre-fetch it (python -c \"import torch; torch.hub.load('facebookresearch/dinov2', '{name}')\")"
    if not any((hub / f"facebookresearch_dinov2_{ref}").is_dir() for ref in ("main", "master")):
        return f"DINOv2's code is not in the torch hub cache {hub} and HF_HUB_OFFLINE is set: {fix} or set TORCH_HOME"
    if not any((hub / "checkpoints").glob(f"{name}*.pth")):
        return f"DINOv2 weights {name}*.pth are not in {hub / 'checkpoints'} and HF_HUB_OFFLINE is set: {fix}"
    return None


def _u2net_path() -> Path:
    # rembg's own rule for where it keeps its models.
    home = os.environ.get("U2NET_HOME") or os.path.join(os.environ.get("XDG_DATA_HOME", "~"), ".u2net")
    return Path(home).expanduser() / "u2net.onnx"


def _uncached(lookup: CacheLookup, repo: str, name: str) -> list[str]:
    return [
        f"{repo}/{name}{ext}" for ext in (".json", ".safetensors") if lookup(repo, f"{name}{ext}") is None
    ]


def _is_hub_path(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) >= 3 and _HUB_ID.fullmatch("/".join(parts[:2])) is not None


def _split_hub_path(ref: str) -> tuple[str, str]:
    parts = ref.split("/")
    return "/".join(parts[:2]), "/".join(parts[2:])


def _safetensors_problem(path: Path) -> str | None:
    """A cheap header check: catches Git LFS pointers and truncated downloads before torch does."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(9)
    if len(head) < 9:
        return "is too small to be a safetensors file"
    header_length = int.from_bytes(head[:8], "little")
    if head[8:9] != b"{" or 8 + header_length > size:
        return "is not a complete safetensors file (a Git LFS pointer or a truncated download?)"
    return None
