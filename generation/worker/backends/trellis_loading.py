"""Load TRELLIS pipelines with only what Gaussian output runs, and with errors that name the real cause.

This follows ``Pipeline.from_pretrained`` and ``trellis.models.from_pretrained`` step for step (the folder or
hub id first, then the reference itself as a hub path; the same classes, configs and ``load_state_dict``), with
three differences:
- ``slat_decoder_rf`` and ``slat_decoder_mesh`` are never built (176M parameters and the mesh decoder's dense
  256^3 grid, about 1.5 GB, that Gaussian output never runs);
- a checkpoint already loaded by another pipeline (the text model borrows the image model's decoders) is shared,
  not loaded twice;
- a checkpoint that fails to build or load is reported with its file and the real exception (TRELLIS's bare
  ``except:`` retries it as a hub id and reports a misleading download error instead).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generation.worker.backends.trellis_weights import PIPELINE_CLASSES, ModelSource, hub_offline

MESH_ONLY_MODELS = ("slat_decoder_rf", "slat_decoder_mesh")


class CheckpointError(Exception):
    """A checkpoint that could not be found, built or loaded; the message names the file."""


@dataclass
class LoadedModels:
    """Checkpoints loaded so far, keyed by their weight file's real path, shared between pipelines."""

    by_file: dict[str, Any] = field(default_factory=dict)
    shared: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _resolve(location: str, local: bool, name: str) -> tuple[Path, Path] | None:
    """``(config, weights)`` for a checkpoint named relative to a folder or hub repo; None when absent."""
    if local:
        config, weights = Path(f"{location}/{name}.json"), Path(f"{location}/{name}.safetensors")
        return (config, weights) if config.is_file() and weights.is_file() else None
    try:
        return _hub_file(location, f"{name}.json"), _hub_file(location, f"{name}.safetensors")
    except Exception:
        return None


def _hub_file(repo: str, filename: str) -> Path:
    """``hf_hub_download`` reading HF_HUB_OFFLINE / HF_HUB_CACHE now, not when huggingface_hub was imported."""
    from huggingface_hub import hf_hub_download

    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    return Path(hf_hub_download(repo, filename, cache_dir=cache_dir, local_files_only=hub_offline()))


def checkpoint_files(source: ModelSource, ref: str) -> tuple[Path, Path]:
    """Where TRELLIS would read ``ref`` from: relative to the pipeline first, then ``ref`` as a path or hub path."""
    found = _resolve(source.location, source.local, ref)
    if found is not None:
        return found
    if Path(f"{ref}.json").is_file():
        found = _resolve(ref, True, "")
        if found is None:
            found = (Path(f"{ref}.json"), Path(f"{ref}.safetensors"))
        return found
    parts = ref.split("/")
    if len(parts) >= 3:
        found = _resolve("/".join(parts[:2]), False, "/".join(parts[2:]))
        if found is not None:
            return found
    raise CheckpointError(
        f"checkpoint {ref} ({source.setting}) is neither under {source.location} nor a reachable hub path"
    )


def build_checkpoint(trellis_models: Any, config_path: Path, weights_path: Path) -> Any:
    """``trellis.models.from_pretrained`` on resolved files, failures naming the file and the real exception."""
    from safetensors.torch import load_file

    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        model = getattr(trellis_models, config["name"])(**config["args"])
    except Exception as exc:
        raise CheckpointError(
            f"building the model of {config_path} failed: {type(exc).__name__}: {exc}"
        ) from None
    try:
        model.load_state_dict(load_file(str(weights_path)))
    except Exception as exc:
        raise CheckpointError(f"loading {weights_path} failed: {type(exc).__name__}: {exc}") from None
    return model


def pipeline_config(source: ModelSource) -> dict[str, Any]:
    if source.local:
        path = Path(source.location) / "pipeline.json"
    else:
        path = _hub_file(source.location, "pipeline.json")
    return json.loads(path.read_text(encoding="utf-8"))["args"]


def load_pipeline(
    trellis_pipelines: Any,
    source: ModelSource,
    loaded: LoadedModels,
    *,
    image_cond_loader: Callable[[Any, str], None] | None = None,
) -> Any:
    """A ready TRELLIS pipeline of ``source.kind`` on the CPU, holding only the Gaussian path's models."""
    import trellis.models as trellis_models
    from trellis.pipelines import samplers
    from trellis.pipelines.base import Pipeline

    args = pipeline_config(source)
    models: dict[str, Any] = {}
    for key, ref in args["models"].items():
        if key in MESH_ONLY_MODELS:
            loaded.skipped.append(f"{source.kind}:{key}")
            continue
        config_path, weights_path = checkpoint_files(source, ref)
        identity = os.path.realpath(weights_path)
        if identity in loaded.by_file:
            models[key] = loaded.by_file[identity]
            loaded.shared.append(f"{source.kind}:{key}")
            continue
        models[key] = loaded.by_file[identity] = build_checkpoint(trellis_models, config_path, weights_path)

    pipeline = getattr(trellis_pipelines, PIPELINE_CLASSES[source.kind])()
    Pipeline.__init__(pipeline, models)
    pipeline._pretrained_args = args
    for name in ("sparse_structure_sampler", "slat_sampler"):
        spec = args[name]
        setattr(pipeline, name, getattr(samplers, spec["name"])(**spec["args"]))
        setattr(pipeline, f"{name}_params", spec["params"])
    pipeline.slat_normalization = args["slat_normalization"]
    if source.kind == "image":
        pipeline.rembg_session = None
        (image_cond_loader or _trellis_image_cond)(pipeline, args["image_cond_model"])
    else:
        pipeline._init_text_cond_model(args["text_cond_model"])
    return pipeline


def _trellis_image_cond(pipeline: Any, name: str) -> None:
    pipeline._init_image_cond_model(name)


def local_dinov2_loader(pipeline: Any, name: str) -> None:
    """TRELLIS's own DINOv2 set-up, reading the torch hub cache directly when it holds the code.

    ``torch.hub.load('facebookresearch/dinov2', ...)`` asks GitHub for the default branch before it looks at its
    cache; offline that is a failed connection at best and a stall at worst. With the code cached, loading it as
    a local hub directory is what torch.hub would end up doing anyway.
    """
    import torch

    cached = [Path(torch.hub.get_dir()) / f"facebookresearch_dinov2_{ref}" for ref in ("main", "master")]
    repo = next((path for path in cached if (path / "hubconf.py").is_file()), None)
    if repo is None:
        pipeline._init_image_cond_model(name)
        return
    hub_load = torch.hub.load

    def load_cached(github: str, model: str, *args: Any, **kwargs: Any) -> Any:
        if github == "facebookresearch/dinov2":
            return hub_load(str(repo), model, *args, source="local", **kwargs)
        return hub_load(github, model, *args, **kwargs)

    torch.hub.load = load_cached
    try:
        pipeline._init_image_cond_model(name)
    finally:
        torch.hub.load = hub_load
