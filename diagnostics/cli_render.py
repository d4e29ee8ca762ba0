"""``splatgen ply render``: a PNG preview of a splat as 404's validators render it (CPU only)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import numpy as np
import typer
from rich.console import Console
from rich.status import Status

from diagnostics.ply_io import PlyFormatError
from diagnostics.render import DEFAULT_SIZE, RenderTooLarge, render_grid, render_strip, save_png_atomic
from diagnostics.render_prepare import finite_mask
from diagnostics.splat import Splat

EXIT_FAILED = 1
EXIT_UNREADABLE = 2
MIN_VIEW_PX = 16
MAX_VIEW_PX = 2048
MAX_VIEWS = 36
# Views rendered at once: each holds about 200 MiB at 518 px for a 400K-gaussian splat.
MAX_WORKERS = 4


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"splatgen ply render: {message}", err=True)
    raise typer.Exit(code)


def _load(path: Path) -> Splat:
    """Read and parse the PLY; any failure is one line on stderr and exit code 2."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror or exc}", EXIT_UNREADABLE)
    try:
        return Splat.from_ply_bytes(data)
    except (PlyFormatError, ValueError, TypeError) as exc:
        _fail(f"{path} is not a readable splat PLY: {exc}", EXIT_UNREADABLE)
    except MemoryError:
        _fail(f"not enough memory to read {path}", EXIT_UNREADABLE)


@contextlib.contextmanager
def _spinner(console: Console, views: int) -> Iterator[Status | None]:
    """A transient spinner on stderr when it is a terminal; nothing when output is piped."""
    if not console.is_terminal:
        yield None
        return
    with console.status(f"rendering {views} view{'s' if views > 1 else ''}...") as status:
        yield status


def render(
    file: Annotated[Path, typer.Argument(help="The PLY file to render.", show_default=False)],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="The PNG file to write.", show_default=False)
    ],
    grid: Annotated[
        bool, typer.Option("--grid", help="The 2x2 duel view: azimuths 0, 90, 180, 270.")
    ] = False,
    views: Annotated[
        int, typer.Option("--views", min=1, max=MAX_VIEWS, help="A strip of N azimuths evenly spaced from 0.")
    ] = 1,
    size: Annotated[
        int, typer.Option("--size", min=MIN_VIEW_PX, max=MAX_VIEW_PX, help="Pixels per view (square).")
    ] = DEFAULT_SIZE,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")] = False,
) -> None:
    """Render a splat on the CPU as validators do: white background, camera 15 degrees above, extent 1.5.

    Exit code 0 when the PNG was written, 2 when the PLY cannot be read, 1 when it has no usable gaussians
    (nothing to draw: no PNG is written) or the PNG cannot be written.
    """
    if grid and views != 1:
        _fail("--grid and --views are exclusive", EXIT_UNREADABLE)
    if not output.parent.is_dir():
        _fail(f"cannot write {output}: folder {output.parent} does not exist", EXIT_FAILED)
    splat = _load(file)
    if not np.count_nonzero(finite_mask(splat)):
        # A blank white PNG would look like a rendering of something.
        what = "0 vertices" if len(splat) == 0 else f"all {len(splat):,} have NaN or inf values"
        _fail(f"{file} has no usable gaussians ({what}); no PNG written", EXIT_FAILED)
    count = 4 if grid else views
    workers = max(1, min(count, os.cpu_count() or 1, MAX_WORKERS))
    console = Console(stderr=True)
    started = time.perf_counter()
    with _spinner(console, count) as status:

        def progress(done: int, total: int) -> None:
            if status is not None:
                status.update(f"rendering: {done} of {total} views done...")

        try:
            if grid:
                image = render_grid(splat, size, workers=workers, progress=progress)
            else:
                image = render_strip(splat, views, size, workers=workers, progress=progress)
        except RenderTooLarge as exc:
            _fail(f"cannot render {file}: {exc}", EXIT_FAILED)
    try:
        save_png_atomic(image, output)
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror or exc}", EXIT_FAILED)
    seconds = time.perf_counter() - started
    skipped = int(len(splat) - np.count_nonzero(finite_mask(splat)))
    layout = "grid" if grid else ("strip" if views > 1 else "single")
    if json_output:
        document = {
            "output": str(output),
            "layout": layout,
            "views": count,
            "view_px": size,
            "width": image.width,
            "height": image.height,
            "gaussians": len(splat),
            "skipped_non_finite": skipped,
            "seconds": round(seconds, 3),
        }
        typer.echo(json.dumps(document))
        return
    note = f", {skipped:,} non-finite gaussians skipped" if skipped else ""
    shape = f"{image.width}x{image.height}, {layout}, {len(splat):,} gaussians{note}"
    typer.echo(f"wrote {output} ({shape}) in {seconds:.1f} s")


if __name__ == "__main__":
    typer.run(render)
