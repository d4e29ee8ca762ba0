"""The ``procedural`` backend: deterministic splats made on the CPU with numpy.

It is a stand-in for a GPU model, not a learned model: text prompts become a composition of primitives
whose shapes and colours come from the words; images become a relief lifted from their pixels. The output
has TRELLIS-like statistics (hundreds of thousands of gaussians, logit opacities with a realistic spread)
so that everything around generation can run and be tested anywhere.
"""

from __future__ import annotations

import hashlib
import io
import re
import time
from typing import Any

import numpy as np

from diagnostics.splat import SH_C0, Splat
from generation.errors import InvalidRequest
from generation.settings import WorkerSettings
from generation.worker.backends.base import GenerationRequest
from generation.worker.backends.procedural_shapes import (
    ARCHETYPE_WORDS,
    COLOUR_WORDS,
    INHERENT_COLOURS,
    Part,
    sample_surface,
)

_MB = 1024 * 1024
# Largest image side the relief samples from; more pixels add nothing at these gaussian counts.
_IMAGE_SIDE = 192
_HALF_EXTENT = 0.45  # keep every position inside the unit cube [-0.5, 0.5]^3


class ProceduralBackend:
    """CPU stand-in backend; same (prompt, seed, params) -> same bytes."""

    name = "procedural"

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        # Fault injection (tests only): memory that is never released, like a real leak.
        self._leaked: list[bytearray] = []

    def load(self) -> None:
        """Nothing to load: the backend is numpy code."""

    def cleanup(self) -> None:
        """Nothing cached; an injected leak is deliberately not released."""

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "cpu-stand-in",
            "description": "deterministic CPU stand-in (composed primitives / image relief), not a learned model",
            "gaussians": self.settings.procedural_gaussians,
            "fault_injection": {
                "leak_mb": self.settings.procedural_leak_mb,
                "delay_s": self.settings.procedural_delay_s,
            },
        }

    def generate(self, request: GenerationRequest) -> Splat:
        count = request.params.num_gaussians or self.settings.procedural_gaussians
        rng = np.random.default_rng(_request_seed(request, count))
        if request.prompt is not None:
            positions, colours = _text_object(request.prompt, count, rng)
        else:
            assert request.image is not None
            positions, colours = _image_relief(request.image, count, rng)
        splat = _assemble(positions, colours, rng)
        self._inject_faults()
        return splat

    def _inject_faults(self) -> None:
        if self.settings.procedural_leak_mb > 0:
            block = bytearray(int(self.settings.procedural_leak_mb * _MB))
            block[::4096] = b"\x01" * len(block[::4096])  # touch every page so RSS really grows
            self._leaked.append(block)
        if self.settings.procedural_delay_s > 0:
            time.sleep(self.settings.procedural_delay_s)


def _request_seed(request: GenerationRequest, count: int) -> int:
    digest = hashlib.sha256()
    digest.update(request.kind.encode())
    digest.update(request.prompt.encode() if request.prompt is not None else request.image or b"")
    digest.update(f"|{request.seed}|{count}".encode())
    return int.from_bytes(digest.digest()[:8], "little")


def _word_rng(words: list[str]) -> np.random.Generator:
    return np.random.default_rng(
        int.from_bytes(hashlib.sha256(" ".join(words).encode()).digest()[:8], "little")
    )


def _compose(words: list[str], rng: np.random.Generator) -> list[Part]:
    """Primitives for an archetype named by the words, proportions jittered by the request's seed."""
    colours = [INHERENT_COLOURS[w] for w in words if w in INHERENT_COLOURS]
    colours += [COLOUR_WORDS[w] for w in words if w in COLOUR_WORDS]
    wrng = _word_rng(words)
    main = colours[0] if colours else tuple(wrng.uniform(0.2, 0.9, 3))
    second = colours[1] if len(colours) > 1 else tuple(np.clip(np.array(main) * 0.6 + 0.1, 0, 1))
    archetype = next((ARCHETYPE_WORDS[w] for w in reversed(words) if w in ARCHETYPE_WORDS), None)
    if archetype is None:
        archetype = ["vessel", "creature", "blocks", "round", "mushroom"][int(wrng.integers(5))]
    j = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731 - proportions vary with the seed

    if archetype == "furniture":
        seat_h = j(0.0, 0.1)
        parts = [Part("box", (0, seat_h, 0), (0.35, 0.04, 0.35), main)]
        for sx in (-0.3, 0.3):
            for sz in (-0.3, 0.3):
                parts.append(Part("cylinder", (sx, seat_h - 0.3, sz), (0.035, 0.3, 0.035), second))
        parts.append(Part("box", (0, seat_h + 0.35, -0.32), (0.35, j(0.25, 0.4), 0.03), main))
        return parts
    if archetype == "vessel":
        parts = [Part("lathe", (0, 0, 0), (0.3, j(0.35, 0.5), 0.3), main)]
        if any(w in words for w in ("teapot", "handle", "cup", "mug", "kettle", "trophy")):
            parts.append(Part("torus", (0.38, 0.05, 0), (0.12, 0.12, 0.03), second))
        if any(w in words for w in ("teapot", "kettle")):
            parts.append(Part("cone", (-0.38, 0.05, 0), (0.05, 0.15, 0.05), main))
        return parts
    if archetype == "creature":
        body = j(0.25, 0.32)
        head = body * j(0.55, 0.7)
        return [
            Part("sphere", (0, -0.15, 0), (body, body * 0.9, body), main),
            Part("sphere", (0, -0.15 + body + head * 0.8, 0.05), (head, head, head), main),
            Part("cone", (0, -0.15 + body + head * 0.8, head + 0.08), (0.04, 0.06, 0.04), second),
        ]
    if archetype == "blocks":
        torso = (j(0.18, 0.25), j(0.2, 0.28), 0.15)
        return [
            Part("box", (0, 0, 0), torso, main),
            Part("box", (0, torso[1] + 0.13, 0), (0.12, 0.1, 0.1), main),
            Part("box", (-0.1, -torso[1] - 0.15, 0), (0.06, 0.15, 0.06), second),
            Part("box", (0.1, -torso[1] - 0.15, 0), (0.06, 0.15, 0.06), second),
            Part("box", (-torso[0] - 0.06, 0.02, 0), (0.05, 0.16, 0.05), second),
            Part("box", (torso[0] + 0.06, 0.02, 0), (0.05, 0.16, 0.05), second),
        ]
    if archetype == "ring":
        return [Part("torus", (0, 0, 0), (0.3, 0.3, j(0.08, 0.14)), main)]
    if archetype == "mushroom":
        return [
            Part("cylinder", (0, -0.15, 0), (0.08, 0.2, 0.08), second),
            Part("sphere", (0, 0.08, 0), (j(0.28, 0.36), 0.14, j(0.28, 0.36)), main),
        ]
    if archetype == "blade":
        return [
            Part("box", (0, 0.15, 0), (0.04, j(0.3, 0.4), 0.012), main),
            Part("box", (0, -0.27, 0), (0.14, 0.02, 0.03), second),
            Part("cylinder", (0, -0.38, 0), (0.025, 0.09, 0.025), second),
        ]
    if archetype == "boxes":
        stack = 3 if "three" in words else int(rng.integers(1, 4))
        parts = []
        for i in range(stack):
            tint = np.clip(np.array(main) * (0.8 + 0.2 * i), 0, 1)
            parts.append(Part("box", (j(-0.03, 0.03), -0.2 + 0.16 * i, 0), (0.3, 0.07, 0.22), tuple(tint)))
        return parts
    return [Part("sphere", (0, 0, 0), (j(0.3, 0.4), j(0.28, 0.35), j(0.3, 0.4)), main)]


def _text_object(prompt: str, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    words = re.findall(r"[a-z]+", prompt.lower())
    parts = _compose(words, rng)
    areas = np.array([p.area() for p in parts])
    per_part = rng.multinomial(count, areas / areas.sum())
    profile = float(_word_rng(words).uniform())
    positions, colours = [], []
    for part, n in zip(parts, per_part, strict=True):
        if n == 0:
            continue
        positions.append(sample_surface(part, int(n), rng, profile))
        colours.append(np.broadcast_to(np.array(part.colour), (int(n), 3)))
    pos = np.concatenate(positions)
    col = np.concatenate(colours)
    # Shade by height and add texture noise so the colour field is not flat.
    shade = 0.85 + 0.15 * (pos[:, 1] - pos[:, 1].min()) / (np.ptp(pos[:, 1]) + 1e-9)
    col = np.clip(col * shade[:, None] + rng.normal(0.0, 0.04, col.shape), 0.0, 1.0)
    return pos, col


def _image_relief(image_bytes: bytes, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image_bytes)) as img:
            img.thumbnail((_IMAGE_SIDE, _IMAGE_SIDE))
            rgba = np.asarray(img.convert("RGBA"), dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidRequest(f"the image could not be decoded: {exc}", code="invalid_image") from None
    rgb, alpha = rgba[..., :3], rgba[..., 3]
    if alpha.min() < 0.98:
        mask = alpha > 0.5
    else:
        # Key out the background: the colour most of the border has.
        border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
        background = np.median(border, axis=0)
        mask = np.linalg.norm(rgb - background, axis=-1) > 0.12
    if mask.mean() < 0.01:
        mask = np.ones_like(mask)
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    pick = rng.integers(0, len(ys), count)
    py = ys[pick] + rng.uniform(0, 1, count)
    px = xs[pick] + rng.uniform(0, 1, count)
    # Relief height: thickest inside the silhouette, modulated by brightness.
    depth = _distance_to_edge(mask)
    depth = depth / (depth.max() + 1e-9)
    lum = rgb @ np.array([0.299, 0.587, 0.114])
    height = (0.6 * np.sqrt(depth) + 0.15 * lum)[ys[pick], xs[pick]]
    side = np.where(rng.uniform(size=count) < 0.5, -1.0, 1.0)
    z = side * height * rng.uniform(0.85, 1.0, count)
    scale = 1.0 / max(h, w)
    pos = np.stack([(px - w / 2) * scale, (h / 2 - py) * scale, z * 0.25], axis=1)
    col = rgb[ys[pick], xs[pick]] * np.where(side < 0, 0.8, 1.0)[:, None]
    col = np.clip(col + rng.normal(0, 0.02, col.shape), 0, 1)
    return pos, col


def _distance_to_edge(mask: np.ndarray, steps: int = 24) -> np.ndarray:
    """Approximate distance to the silhouette edge by repeated 4-neighbour erosion."""
    dist = np.zeros(mask.shape)
    cur = mask.copy()
    for _ in range(steps):
        if not cur.any():
            break
        dist += cur
        nxt = cur.copy()
        nxt[1:] &= cur[:-1]
        nxt[:-1] &= cur[1:]
        nxt[:, 1:] &= cur[:, :-1]
        nxt[:, :-1] &= cur[:, 1:]
        cur = nxt
    return dist


def _assemble(positions: np.ndarray, colours: np.ndarray, rng: np.random.Generator) -> Splat:
    n = len(positions)
    # Fit into the unit cube, centred, largest half-extent _HALF_EXTENT.
    lo, hi = positions.min(axis=0), positions.max(axis=0)
    positions = (positions - (lo + hi) / 2) * (2 * _HALF_EXTENT / max(float(np.max(hi - lo)), 1e-6))
    positions += rng.normal(0.0, 0.002, positions.shape)
    np.clip(positions, -0.499, 0.499, out=positions)

    # Gaussian size follows the point spacing on the surface, like a reconstruction would.
    spacing = np.sqrt(4.0 / max(n, 1))
    log_scale = np.log(spacing) + rng.normal(0.0, 0.35, (n, 3))
    flat_axis = rng.integers(0, 3, n)
    log_scale[np.arange(n), flat_axis] -= 0.8  # surfels: one thin axis

    # Mostly solid with a faint tail: mean ~1.8, std ~3.8, ~3% under sigmoid 1e-3.
    faint = rng.uniform(size=n) < 0.15
    opacity = np.where(faint, rng.normal(-5.0, 2.5, n), rng.normal(3.0, 2.5, n))

    rot = rng.standard_normal((n, 4))
    rot /= np.linalg.norm(rot, axis=1, keepdims=True) + 1e-12

    return Splat.from_columns(
        {
            "x": positions[:, 0],
            "y": positions[:, 1],
            "z": positions[:, 2],
            "f_dc_0": (colours[:, 0] - 0.5) / SH_C0,
            "f_dc_1": (colours[:, 1] - 0.5) / SH_C0,
            "f_dc_2": (colours[:, 2] - 0.5) / SH_C0,
            "opacity": opacity,
            "scale_0": log_scale[:, 0],
            "scale_1": log_scale[:, 1],
            "scale_2": log_scale[:, 2],
            "rot_0": rot[:, 0],
            "rot_1": rot[:, 1],
            "rot_2": rot[:, 2],
            "rot_3": rot[:, 3],
        }
    )
