"""Preview renderer benchmark: CPU EWA splatting at 518x518 against a plain numpy point scatter.

The splat is TRELLIS-sized and shaped like a real asset: 400K gaussians on the surfaces of a sphere and a
box, log-scales uniform in [-6, -5.5], opacity logits normal(2, 3.5), random rotations. The baseline,
measured in the same run on the same gaussians, is the floor any preview must pay: move the points into
the validator frame, project them and write their colours into the image (no splats, no depth order).

    .venv/bin/python benchmarks/bench_render.py [--gaussians 400000] [--size 518] [--repeat 5]
                                                [--threads 2] [--record]

``--record`` writes the "Preview renderer" section of benchmarks/RESULTS.md (other sections are kept).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import shlex
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import RESULTS, record_section

from diagnostics.render import GRID_AZIMUTHS_DEG, render_views
from diagnostics.render_camera import orbit_camera
from diagnostics.render_prepare import prepare_splat
from diagnostics.splat import SH_C0, Splat

SECTION = "## Preview renderer"
HAMBURGER = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "hamburger.ply"


def surface_splat(n: int, seed: int = 0) -> Splat:
    """Half the gaussians on a sphere, half on a box beside it, each shape in its own colour."""
    rng = np.random.default_rng(seed)
    on_sphere = n // 2
    direction = rng.normal(size=(on_sphere, 3))
    sphere = 0.35 * direction / np.linalg.norm(direction, axis=1, keepdims=True) + (-0.25, 0.0, 0.0)
    on_box = n - on_sphere
    box = rng.uniform(-1.0, 1.0, (on_box, 3))
    face_axis = rng.integers(0, 3, on_box)
    box[np.arange(on_box), face_axis] = rng.choice((-1.0, 1.0), on_box)
    box = 0.25 * box + (0.3, 0.0, 0.0)
    positions = np.concatenate([sphere, box])
    base = np.repeat([[0.8, 0.3, 0.2], [0.2, 0.4, 0.8]], [on_sphere, on_box], axis=0)
    colors = base + rng.normal(0.0, 0.05, (n, 3))
    rotations = rng.normal(size=(n, 4))
    columns = {axis: positions[:, i] for i, axis in enumerate("xyz")}
    columns |= {f"f_dc_{i}": (colors[:, i] - 0.5) / SH_C0 for i in range(3)}
    columns["opacity"] = rng.normal(2.0, 3.5, n)
    columns |= {f"scale_{i}": rng.uniform(-6.0, -5.5, n) for i in range(3)}
    columns |= {f"rot_{i}": rotations[:, i] for i in range(4)}
    return Splat.from_columns(columns)


def scatter_floor(splat: Splat, azimuths: tuple[float, ...], size: int) -> list[np.ndarray]:
    """The baseline: validator frame, pinhole projection, colours written to pixels; no splats, no sorting."""
    positions = splat.positions.astype(np.float64)
    positions -= positions.mean()
    positions *= 1.5 / np.max(positions.max(axis=0) - positions.min(axis=0))
    positions = np.ascontiguousarray(positions.T)
    colors = (splat.colors * 255).astype(np.uint8)
    images = []
    for azimuth in azimuths:
        u, v, depth = orbit_camera(azimuth, size=size).project_points(positions)
        inside = (depth > 0) & (u >= 0) & (u < size) & (v >= 0) & (v < size)
        image = np.full((size, size, 3), 255, dtype=np.uint8)
        image[v[inside].astype(np.int64), u[inside].astype(np.int64)] = colors[inside]
        images.append(image)
    return images


def measure(function: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median and best wall time in seconds, GC paused, after one warm-up call."""
    function()
    times = []
    gc.disable()
    try:
        for _ in range(repeat):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return statistics.median(times), min(times)


def peak_mib(function: Callable[[], object]) -> float:
    """Peak Python + numpy heap of one call, as tracemalloc sees it."""
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def stage_seconds(splat: Splat, size: int) -> str:
    """Where one view's time goes: prepare (once per splat), then project and rasterise per view."""
    from diagnostics.render_project import project
    from diagnostics.render_raster import rasterize

    start = time.perf_counter()
    prepared = prepare_splat(splat)
    prepare_s = time.perf_counter() - start
    start = time.perf_counter()
    footprints = project(prepared, orbit_camera(0.0, size=size))
    project_s = time.perf_counter() - start
    start = time.perf_counter()
    rasterize(footprints, size, size, np.ones(3))
    raster_s = time.perf_counter() - start
    return f"prepare {prepare_s:.2f} s, project {project_s:.2f} s, rasterise {raster_s:.2f} s"


def run(cases: dict[str, Splat], size: int, repeat: int, threads: int) -> tuple[list[str], list[str]]:
    outputs = [("1 view", (0.0,), 1), ("2x2 grid", GRID_AZIMUTHS_DEG, 1)]
    if threads > 1:
        outputs.append((f"2x2 grid, {threads} threads", GRID_AZIMUTHS_DEG, threads))
    rows, notes = [], []
    for name, splat in cases.items():
        for label, azimuths, workers in outputs:

            def ours_call(s: Splat = splat, a: tuple[float, ...] = azimuths, w: int = workers) -> object:
                return render_views(s, azimuths_deg=a, size=size, workers=w)

            ours, ours_best = measure(ours_call, repeat)
            floor, floor_best = measure(lambda s=splat, a=azimuths: scatter_floor(s, a, size), repeat)
            rows.append(
                f"| {name} | {len(splat):,} | {label} | {ours:.2f} / {ours_best:.2f} "
                f"| {floor * 1e3:.0f} / {floor_best * 1e3:.0f} | {ours_best / floor_best:.0f}x |"
            )
        peak = peak_mib(lambda s=splat: render_views(s, azimuths_deg=(0.0,), size=size))
        notes.append(f"{name}: {stage_seconds(splat, size)}; peak heap of one view {peak:.0f} MiB.")
    return rows, notes


def table(rows: list[str], notes: list[str], size: int, repeat: int, command: str, load_start: str) -> str:
    python = f"Python {platform.python_version()}, numpy {np.__version__}"
    machine = f"{platform.machine()}, nproc {os.cpu_count()}, {python}"
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return "\n".join(
        [
            f"Command: `{command}`",
            "",
            f"Date: {dt.date.today().isoformat()}; machine: {machine}; load average at the start: "
            f"{load_start}, at the end: {load}.",
            f"{size}x{size} px per view; median / best of {repeat} runs; the ratio compares bests.",
            "",
            "| splat | gaussians | output | ours s | scatter floor ms | ours / floor |",
            "|---|---:|---|---:|---:|---:|",
            *rows,
            "",
            "ours = render_views: activation and validator frame, EWA projection, exact front-to-back",
            "compositing, uint8 conversion. Scatter floor = the same points moved into the validator frame,",
            "projected and written into the image as single pixels (no footprints, depth order or blending).",
            "",
            *[f"- {note}" for note in notes],
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gaussians", type=int, default=400_000)
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="workers for the threaded grid"
    )
    parser.add_argument("--record", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args()
    command = shlex.join(["python", "benchmarks/bench_render.py", *sys.argv[1:]])
    cases = {"sphere + box surfaces": surface_splat(args.gaussians)}
    if HAMBURGER.is_file():
        cases["hamburger.ply (real)"] = Splat.from_ply_bytes(HAMBURGER.read_bytes())
    load_start = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    rows, notes = run(cases, args.size, args.repeat, min(args.threads, 4))
    text = table(rows, notes, args.size, args.repeat, command, load_start)
    print(text)
    if args.record:
        record_section(SECTION, text)
        print(f"\nrecorded in {RESULTS}")


if __name__ == "__main__":
    main()
