"""CPU previews of a splat as 404's validators render it (numpy only).

The setup follows the validator: the model is moved into its frame (largest extent 1.5, see
``render_prepare``), cameras orbit at radius 2.5 with a 49.1 degree field of view, 15 degrees above the
model (elevation -15 in the validator's sign convention, see ``render_camera``), on white. Gaussians are
EWA-splatted with a 0.3 px low-pass filter and composited front to back exactly (``render_raster``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from PIL import Image

from diagnostics.atomic import write_bytes_atomic
from diagnostics.render_camera import CAMERA_RADIUS, ELEVATION_DEG, FOV_DEG, orbit_camera
from diagnostics.render_prepare import REFERENCE_EXTENT, PreparedSplat, prepare_splat
from diagnostics.render_project import project
from diagnostics.render_raster import RenderTooLarge, rasterize
from diagnostics.splat import Splat

__all__ = [
    "GRID_AZIMUTHS_DEG",
    "VALIDATOR_GRID_AZIMUTHS_DEG",
    "RenderTooLarge",
    "png_bytes",
    "render_grid",
    "render_prepared",
    "render_strip",
    "render_views",
    "save_png_atomic",
    "strip_azimuths",
    "tile_images",
]

DEFAULT_SIZE = 518
GRID_AZIMUTHS_DEG = (0.0, 90.0, 180.0, 270.0)
# The views the validator's own duel grid shows (16 views over linspace(0, 360, 16), indices 1, 5, 9, 13).
VALIDATOR_GRID_AZIMUTHS_DEG = (24.0, 120.0, 216.0, 312.0)
WHITE = (1.0, 1.0, 1.0)

ProgressCallback = Callable[[int, int], None]


def render_prepared(
    prepared: PreparedSplat,
    azimuth_deg: float,
    *,
    size: int = DEFAULT_SIZE,
    elevation_deg: float = ELEVATION_DEG,
    radius: float = CAMERA_RADIUS,
    fov_deg: float = FOV_DEG,
    background: Sequence[float] = WHITE,
) -> np.ndarray:
    """One (size, size, 3) uint8 view of an already prepared splat."""
    camera = orbit_camera(azimuth_deg, elevation_deg, radius=radius, fov_deg=fov_deg, size=size)
    linear = rasterize(project(prepared, camera), size, size, np.asarray(background, dtype=np.float64))
    # The validator converts with a truncating cast after clipping, not rounding.
    return (np.clip(linear, 0.0, 1.0) * 255.0).astype(np.uint8)


def render_views(
    splat: Splat,
    *,
    azimuths_deg: Sequence[float],
    size: int = DEFAULT_SIZE,
    elevation_deg: float = ELEVATION_DEG,
    radius: float = CAMERA_RADIUS,
    fov_deg: float = FOV_DEG,
    extent: float = REFERENCE_EXTENT,
    background: Sequence[float] = WHITE,
    validator_quirks: bool = True,
    workers: int = 1,
    progress: ProgressCallback | None = None,
) -> list[np.ndarray]:
    """Render one (size, size, 3) uint8 image per azimuth, ``workers`` views at a time.

    ``progress(done, total)`` is called as views finish. numpy releases the GIL in the heavy steps,
    so threads overlap well; each needs about 200 MiB for a 400K-gaussian splat at 518 px.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    prepared = prepare_splat(splat, extent=extent, validator_quirks=validator_quirks)

    def one(azimuth: float) -> np.ndarray:
        return render_prepared(
            prepared,
            azimuth,
            size=size,
            elevation_deg=elevation_deg,
            radius=radius,
            fov_deg=fov_deg,
            background=background,
        )

    total = len(azimuths_deg)
    if workers <= 1 or total <= 1:
        images = []
        for done, azimuth in enumerate(azimuths_deg, start=1):
            images.append(one(azimuth))
            if progress is not None:
                progress(done, total)
        return images
    with ThreadPoolExecutor(max_workers=min(workers, total), thread_name_prefix="render") as pool:
        futures = [pool.submit(one, azimuth) for azimuth in azimuths_deg]
        for done, _ in enumerate(as_completed(futures), start=1):
            if progress is not None:
                progress(done, total)
        return [future.result() for future in futures]


def tile_images(images: Sequence[np.ndarray], columns: int) -> Image.Image:
    """Lay equally sized views out left to right, top to bottom, with no gap."""
    if not images:
        raise ValueError("no images to lay out")
    height, width = images[0].shape[:2]
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * width, rows * height), color="white")
    for i, image in enumerate(images):
        sheet.paste(Image.fromarray(image), ((i % columns) * width, (i // columns) * height))
    return sheet


def render_grid(
    splat: Splat,
    size: int = DEFAULT_SIZE,
    *,
    azimuths_deg: Sequence[float] = GRID_AZIMUTHS_DEG,
    elevation_deg: float = ELEVATION_DEG,
    validator_quirks: bool = True,
    workers: int = 1,
    progress: ProgressCallback | None = None,
) -> Image.Image:
    """The 2x2 duel view: four azimuths, first row then second, ``2 * size`` pixels square."""
    if len(azimuths_deg) != 4:
        raise ValueError("a grid needs exactly four azimuths")
    images = render_views(
        splat,
        azimuths_deg=azimuths_deg,
        size=size,
        elevation_deg=elevation_deg,
        validator_quirks=validator_quirks,
        workers=workers,
        progress=progress,
    )
    return tile_images(images, columns=2)


def strip_azimuths(views: int) -> list[float]:
    """``views`` azimuths evenly spaced around the model, starting at 0."""
    if views < 1:
        raise ValueError(f"views must be at least 1, got {views}")
    return [360.0 * i / views for i in range(views)]


def render_strip(
    splat: Splat,
    views: int,
    size: int = DEFAULT_SIZE,
    *,
    elevation_deg: float = ELEVATION_DEG,
    validator_quirks: bool = True,
    workers: int = 1,
    progress: ProgressCallback | None = None,
) -> Image.Image:
    """``views`` evenly spaced azimuths side by side: ``views * size`` wide, ``size`` high."""
    images = render_views(
        splat,
        azimuths_deg=strip_azimuths(views),
        size=size,
        elevation_deg=elevation_deg,
        validator_quirks=validator_quirks,
        workers=workers,
        progress=progress,
    )
    return tile_images(images, columns=views)


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    """Encode an image (PIL or (H, W, 3) uint8) as PNG."""
    picture = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def save_png_atomic(image: Image.Image | np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a PNG through a temporary file in the same folder and ``os.replace``; returns the path."""
    return write_bytes_atomic(path, png_bytes(image))
