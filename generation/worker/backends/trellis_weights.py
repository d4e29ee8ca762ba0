"""Where TRELLIS's weights come from, and what is missing before any of them is loaded.

TRELLIS resolves a model folder or hub id itself, but a missing local file surfaces as a misleading hub 404
and an offline start fails deep inside torch.hub or transformers. These checks name the exact file instead,
resolving every reference the way ``Pipeline.from_pretrained`` does (the folder first, then the hub).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from generation.settings import WorkerSettings

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
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_TRUE_VALUES = frozenset({"1", "ON", "YES", "TRUE"})

CacheLookup = Callable[[str, str], "str | None"]


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


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set the way huggingface_hub reads it."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE_VALUES


def weight_problems(sources: Mapping[PromptKind, ModelSource], *, rembg_model: str = "") -> list[str]:
    """Every missing or broken weight file the enabled pipelines need, each naming its setting and fix.

    Hub ids are checked only offline (``HF_HUB_OFFLINE``): online, TRELLIS downloads what is missing.
    """
    offline = hub_offline()
    lookup = _hub_cache_lookup() if offline else None
    problems: list[str] = []
    pipeline_args: dict[PromptKind, dict[str, Any]] = {}
    for kind, source in sources.items():
        args, found = _pipeline_args(source, lookup)
        problems += found
        if args is not None:
            pipeline_args[kind] = args
            problems += _model_file_problems(source, args, lookup)
    if rembg_model and "image" in sources and not Path(rembg_model).expanduser().is_file():
        problems.append(
            f"the background-removal model {rembg_model} does not exist (SPLATGEN_TRELLIS_REMBG_MODEL_PATH)"
        )
    if offline:
        problems += _offline_cache_problems(sources, pipeline_args, lookup, check_u2net=not rembg_model)
    return problems


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
                f"pre-fetch it (hf download {source.location}) or set {source.setting} to a folder"
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
            missing = _uncached(lookup, repo, name)
            if not missing:
                continue
            where = f"neither under {source.location} nor" if source.local else "not"
            fix = f"{where} in the Hugging Face cache; pre-fetch {repo} (hf download {repo})"
        else:
            fix = "the download is incomplete: fetch the model again (docs/gpu.md)"
        problems.append(f"missing {' and '.join(missing)} ({key} in pipeline.json, {source.setting}): {fix}")
    return problems


def _offline_cache_problems(
    sources: Mapping[PromptKind, ModelSource],
    pipeline_args: Mapping[PromptKind, dict[str, Any]],
    lookup: CacheLookup | None,
    *,
    check_u2net: bool = True,
) -> list[str]:
    """The conditioning models TRELLIS fetches outside its own repos: DINOv2, CLIP and rembg's u2net."""
    problems: list[str] = []
    if "image" in sources:
        name = str(pipeline_args.get("image", {}).get("image_cond_model", "dinov2_vitl14_reg"))
        problem = _dinov2_problem(name)
        if problem:
            problems.append(problem)
        u2net, legacy = _u2net_paths()
        if check_u2net and not (u2net.is_file() or legacy.is_file()):
            problems.append(
                f"rembg's {u2net} (or the older {legacy}) is missing and HF_HUB_OFFLINE is set: pre-fetch it "
                "(python -c \"import rembg; rembg.new_session('u2net')\") or set U2NET_HOME"
            )
    if "text" in sources and "text" in pipeline_args and lookup is not None:
        clip = str(pipeline_args["text"].get("text_cond_model", "openai/clip-vit-large-patch14"))
        weights = ("model.safetensors", "pytorch_model.bin")
        if lookup(clip, "config.json") is None or all(lookup(clip, w) is None for w in weights):
            problems.append(
                f"the text encoder {clip} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
                f"pre-fetch it (hf download {clip})"
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


def _u2net_paths() -> tuple[Path, Path]:
    """Where rembg looks for u2net: its per-model folder (where a download goes), then the older flat folder."""
    # rembg's own rules (2.0.x): U2NET_HOME wins for both; else REMBG_HOME, XDG_DATA_HOME/rembg or ~/.rembg
    # hold models/<name>/, and ~/.u2net (or XDG_DATA_HOME/.u2net) is still read for older downloads.
    xdg = os.environ.get("XDG_DATA_HOME")
    legacy = Path(os.environ.get("U2NET_HOME") or os.path.join(xdg or "~", ".u2net")).expanduser()
    if os.environ.get("U2NET_HOME"):
        home = legacy
    else:
        home = Path(os.environ.get("REMBG_HOME") or os.path.join(xdg or "~", "rembg" if xdg else ".rembg"))
    return home.expanduser() / "models" / "u2net" / "u2net.onnx", legacy / "u2net.onnx"


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
