"""Small pictures for the dashboard: the 2x2 preview grid of a generation and the prompt image's thumbnail."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from diagnostics import Splat
from diagnostics.render import render_grid

# A prompt image bigger than this many pixels is not thumbnailed (PIL's own bomb limit is far larger).
_MAX_THUMBNAIL_SOURCE_PIXELS = 64_000_000


def subsample(splat: Splat, max_gaussians: int) -> Splat:
    """At most ``max_gaussians`` gaussians, evenly spaced through the file: the same input gives the same output."""
    count = len(splat)
    if max_gaussians <= 0 or count <= max_gaussians:
        return splat
    index = np.linspace(0, count - 1, max_gaussians).round().astype(np.int64)
    return splat.select(index)


def preview_png(ply: bytes, view_px: int, max_gaussians: int) -> bytes:
    """The validator-style 2x2 grid (``2 * view_px`` square) of a PLY, as PNG bytes."""
    splat = subsample(Splat.from_ply_bytes(ply), max_gaussians)
    grid = render_grid(splat, view_px)
    return _png(grid)


def thumbnail_png(image: bytes, max_px: int) -> bytes | None:
    """A PNG no larger than ``max_px`` on either side, or None when the bytes are not a readable image."""
    try:
        with Image.open(io.BytesIO(image)) as source:
            if source.width * source.height > _MAX_THUMBNAIL_SOURCE_PIXELS:
                return None
            # JPEG decodes at a reduced scale straight away; other formats ignore the hint.
            source.draft("RGB", (max_px, max_px))
            picture = source.convert("RGBA" if "A" in source.getbands() else "RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    picture.thumbnail((max_px, max_px))
    return _png(picture)


def _png(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=True)
    return out.getvalue()
