"""The CPU preview renderer: camera placement, colours, compositing order, edge cases, the CLI."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import diagnostics.render_raster as render_raster
from diagnostics.render import RenderTooLarge, render_grid, render_strip, render_views, save_png_atomic
from diagnostics.render_camera import orbit_camera
from diagnostics.render_prepare import prepare_splat
from diagnostics.render_project import ALPHA_MIN, project
from diagnostics.splat import SH_C0, Splat

REPO_ROOT = Path(__file__).resolve().parents[1]
FOV_DEG = 49.1
CAMERA_RADIUS = 2.5
ELEVATION_ABOVE_DEG = 15.0
RED, GREEN, BLUE = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
# One 8-bit step, plus one for the validator's truncating conversion.
TOLERANCE = 2


def make_splat(
    positions: Sequence[Sequence[float]],
    colors: Sequence[Sequence[float]],
    opacity_logits: Sequence[float],
    log_scales: Sequence[float] | float,
) -> Splat:
    """Isotropic gaussians with the given base colours (in [0, 1]) and stored (pre-activation) values."""
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    rgb = np.asarray(colors, dtype=np.float64).reshape(-1, 3)
    n = len(pos)
    scales = np.broadcast_to(np.asarray(log_scales, dtype=np.float64), (n,))
    columns = {axis: pos[:, i] for i, axis in enumerate("xyz")}
    columns |= {f"f_dc_{i}": (rgb[:, i] - 0.5) / SH_C0 for i in range(3)}
    columns["opacity"] = np.asarray(opacity_logits, dtype=np.float64)
    columns |= {f"scale_{i}": scales for i in range(3)}
    columns |= {"rot_0": np.ones(n), "rot_1": np.zeros(n), "rot_2": np.zeros(n), "rot_3": np.zeros(n)}
    return Splat.from_columns(columns)


def pinhole_pixel(point: Sequence[float], size: int) -> tuple[float, float]:
    """Where the validator's azimuth-0 camera (on +Z, 15 degrees above, looking at the origin) sees a point.

    Written independently of render_camera: rotate the world about X by the elevation, then divide by depth.
    """
    x, y, z = point
    el = math.radians(ELEVATION_ABOVE_DEG)
    up = y * math.cos(el) - z * math.sin(el)
    depth = CAMERA_RADIUS - (y * math.sin(el) + z * math.cos(el))
    focal = size / (2.0 * math.tan(math.radians(FOV_DEG) / 2.0))
    return focal * x / depth + size / 2.0, -focal * up / depth + size / 2.0


def darkness_centroid(
    channel: np.ndarray, around: tuple[float, float] | None = None, radius: float = 6.0
) -> tuple[float, float]:
    """Centroid, in pixel coordinates (pixel i spans [i, i + 1)), of how far a channel is below white.

    ``around`` limits it to a square window, so other gaussians elsewhere in the image do not count.
    """
    weight = 255.0 - channel.astype(np.float64)
    ys, xs = np.mgrid[0 : channel.shape[0], 0 : channel.shape[1]] + 0.5
    if around is not None:
        weight[(np.abs(xs - around[0]) > radius) | (np.abs(ys - around[1]) > radius)] = 0.0
    return float((weight * xs).sum() / weight.sum()), float((weight * ys).sum() / weight.sum())


def centre_pixel(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    return image[h // 2, w // 2].astype(int)


def expected_over_white(color: Sequence[float], alpha: float) -> np.ndarray:
    return np.floor((alpha * np.asarray(color) + (1.0 - alpha)) * 255.0)


# --- camera and projection -------------------------------------------------------------------


def test_a_single_gaussian_at_the_origin_lands_at_the_image_centre() -> None:
    splat = make_splat([[0, 0, 0]], [GREEN], [8.0], -4.0)
    (image,) = render_views(splat, azimuths_deg=[0], size=64)
    cx, cy = darkness_centroid(image[..., 0])
    assert cx == pytest.approx(32.0, abs=0.05)
    assert cy == pytest.approx(32.0, abs=0.05)


@pytest.mark.parametrize("validator_quirks", [True, False])
def test_an_offset_gaussian_lands_where_the_pinhole_projection_predicts(validator_quirks: bool) -> None:
    # Two blue markers set the extent (1.0 along x, so the scale factor is 1.5); the red one is measured
    # through the blue channel, which the blue markers leave at 255.
    positions = np.array([[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0], [0.2, 0.1, 0.0]])
    splat = make_splat(positions, [BLUE, BLUE, RED], [8.0, 8.0, 8.0], math.log(0.004))
    size = 128
    (image,) = render_views(splat, azimuths_deg=[0], size=size, validator_quirks=validator_quirks)
    # The validator subtracts the mean of all coordinates (a scalar); the alternative is the per-axis mean.
    centre = positions.mean() if validator_quirks else positions.mean(axis=0)
    expected = pinhole_pixel((positions[2] - centre) * 1.5, size)
    measured = darkness_centroid(image[..., 2], around=expected)
    assert measured == pytest.approx(expected, abs=0.15)


def test_azimuth_90_looks_from_plus_x_and_elevation_minus_15_looks_from_above() -> None:
    # Seen from +X, a marker at -Z is on the right; from 15 degrees above, a marker at the back is higher.
    splat = make_splat([[0, 0, -0.5], [0, 0, 0.5]], [RED, BLUE], [8.0, 8.0], math.log(0.01))
    (side,) = render_views(splat, azimuths_deg=[90], size=96)
    red_x, _ = darkness_centroid(side[..., 2])
    blue_x, _ = darkness_centroid(side[..., 0])
    assert red_x > 48 > blue_x
    (front,) = render_views(splat, azimuths_deg=[0], size=96)
    _, red_y = darkness_centroid(front[..., 2])
    _, blue_y = darkness_centroid(front[..., 0])
    assert red_y < 48 < blue_y


@pytest.mark.parametrize("rotated", [False, True], ids=["long-along-x", "long-along-y"])
def test_screen_covariance_is_the_projected_3d_covariance_plus_the_low_pass_filter(rotated: bool) -> None:
    # One gaussian at the origin (no rescaling), 0.05 long and 0.001 thin; rotated 90 degrees about Z it
    # lies along Y, which the camera 15 degrees above sees shortened by cos(15).
    long, thin, size = 0.05, 0.001, 128
    half_turn = math.sqrt(0.5)
    rotation = (half_turn, 0.0, 0.0, half_turn) if rotated else (1.0, 0.0, 0.0, 0.0)
    columns = {"x": [0.0], "y": [0.0], "z": [0.0], "opacity": [5.0]}
    columns |= {f"f_dc_{i}": [0.0] for i in range(3)}
    columns |= {"scale_0": [math.log(long)], "scale_1": [math.log(thin)], "scale_2": [math.log(thin)]}
    columns |= {f"rot_{i}": [q] for i, q in enumerate(rotation)}
    fp = project(prepare_splat(Splat.from_columns(columns)), orbit_camera(0.0, size=size))
    conic = np.array([[fp.conic_a[0], fp.conic_b[0]], [fp.conic_b[0], fp.conic_c[0]]])
    cov = np.linalg.inv(conic)
    px = size / (2.0 * math.tan(math.radians(FOV_DEG) / 2.0)) / CAMERA_RADIUS  # pixels per unit at the origin
    el = math.radians(ELEVATION_ABOVE_DEG)
    if rotated:
        expected_x = (px * thin) ** 2
        expected_y = (px * long * math.cos(el)) ** 2 + (px * thin * math.sin(el)) ** 2
    else:
        expected_x = (px * long) ** 2
        expected_y = (px * thin) ** 2
    assert cov[0, 0] == pytest.approx(expected_x + 0.3, rel=1e-6)
    assert cov[1, 1] == pytest.approx(expected_y + 0.3, rel=1e-6)
    assert cov[0, 1] == pytest.approx(0.0, abs=1e-9)


# --- colour and opacity -----------------------------------------------------------------------

COLOR = (0.2, 0.6, 0.4)


def test_an_opaque_large_gaussian_shows_its_own_colour() -> None:
    splat = make_splat([[0, 0, 0]], [COLOR], [math.inf], -1.0)
    (image,) = render_views(splat, azimuths_deg=[0], size=64)
    expected = expected_over_white(COLOR, render_raster.ALPHA_MAX)
    assert np.abs(centre_pixel(image) - expected).max() <= TOLERANCE


def test_half_opacity_over_white_blends_half_and_half() -> None:
    splat = make_splat([[0, 0, 0]], [COLOR], [0.0], -1.0)
    (image,) = render_views(splat, azimuths_deg=[0], size=64)
    assert np.abs(centre_pixel(image) - expected_over_white(COLOR, 0.5)).max() <= TOLERANCE


def test_validator_quirk_divides_opacity_by_the_scale_factor() -> None:
    # Extent 1.0 -> factor 1.5: a saturated gaussian is drawn with alpha 1 / 1.5 by the validator,
    # which also moves it by the scalar mean of all coordinates (1/6 here).
    splat = make_splat([[0, 0, 0], [1.0, 0, 0]], [COLOR, COLOR], [math.inf, math.inf], -2.0)
    (quirky,) = render_views(splat, azimuths_deg=[0], size=96)
    x, y = pinhole_pixel((np.zeros(3) - 1.0 / 6.0) * 1.5, 96)
    assert np.abs(quirky[int(y), int(x)] - expected_over_white(COLOR, 1 / 1.5)).max() <= TOLERANCE
    (plain,) = render_views(splat, azimuths_deg=[0], size=96, validator_quirks=False)
    x, y = pinhole_pixel((-0.75, 0.0, 0.0), 96)
    assert (
        np.abs(plain[int(y), int(x)] - expected_over_white(COLOR, render_raster.ALPHA_MAX)).max() <= TOLERANCE
    )


def test_minus_infinite_opacity_is_invisible_and_plus_infinite_is_opaque() -> None:
    hidden = make_splat([[0, 0, 0]], [COLOR], [-math.inf], -1.0)
    (image,) = render_views(hidden, azimuths_deg=[0], size=32)
    assert (image == 255).all()
    shown = make_splat([[0, 0, 0]], [COLOR], [math.inf], -1.0)
    (image,) = render_views(shown, azimuths_deg=[0], size=32)
    assert (centre_pixel(image) < 200).any()


@pytest.mark.parametrize(
    "splat",
    [
        Splat.empty(0),
        make_splat([[0, 0, 0], [0.3, 0, 0]], [COLOR, COLOR], [-30.0, -math.inf], -2.0),
        make_splat([[math.nan, 0, 0]], [COLOR], [5.0], -2.0),
    ],
    ids=["empty", "transparent", "only-non-finite"],
)
def test_nothing_visible_renders_pure_white(splat: Splat) -> None:
    for image in render_views(splat, azimuths_deg=[0, 90], size=48):
        assert image.shape == (48, 48, 3)
        assert image.dtype == np.uint8
        assert (image == 255).all()


def test_non_finite_gaussians_are_skipped_and_do_not_move_the_rest() -> None:
    good = make_splat([[0, 0, 0], [0.4, 0.1, 0]], [COLOR, RED], [3.0, 3.0], -3.0)
    broken = make_splat(
        [[0, 0, 0], [0.4, 0.1, 0], [math.nan, 0, 0], [5.0, 5.0, 5.0], [0.1, 0, 0]],
        [COLOR, RED, COLOR, COLOR, (0.5, math.inf, 0.5)],
        [3.0, 3.0, 3.0, math.nan, 3.0],
        -3.0,
    )
    expected = render_views(good, azimuths_deg=[30], size=64)[0]
    assert np.array_equal(render_views(broken, azimuths_deg=[30], size=64)[0], expected)


# --- compositing --------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["red-first", "blue-first"])
def test_the_gaussian_in_front_hides_the_one_behind(order: str) -> None:
    # Red sits toward +Z, where the azimuth-0 camera is; blue is behind it. File order must not matter.
    # Extent 1.5 already: nothing is rescaled, and from azimuth 180 blue is where red was from 0.
    red = ([0, 0, 0.75], RED)
    blue = ([0, 0, -0.75], BLUE)
    first, second = (red, blue) if order == "red-first" else (blue, red)
    splat = make_splat([first[0], second[0]], [first[1], second[1]], [8.0, 8.0], -1.5)
    front, back = render_views(splat, azimuths_deg=[0, 180], size=64)
    x, y = (int(v) for v in pinhole_pixel((0.0, 0.0, 0.75), 64))
    opaque = render_raster.ALPHA_MAX
    assert np.abs(front[y, x].astype(int) - expected_over_white(RED, opaque)).max() <= TOLERANCE
    assert np.abs(back[y, x].astype(int) - expected_over_white(BLUE, opaque)).max() <= TOLERANCE


def reference_render(fp, width: int, height: int) -> tuple[np.ndarray, int]:
    """Plain 3DGS compositing, one gaussian at a time over all pixels; also the count of stopped pixels."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    color = np.zeros((height, width, 3))
    trans = np.ones((height, width))
    stopped = np.zeros((height, width), dtype=bool)
    for i in range(len(fp)):
        dx, dy = xs - fp.mean_x[i], ys - fp.mean_y[i]
        sigma = 0.5 * (fp.conic_a[i] * dx * dx + fp.conic_c[i] * dy * dy) + fp.conic_b[i] * dx * dy
        alpha = np.minimum(render_raster.ALPHA_MAX, fp.opacities[i] * np.exp(-sigma))
        inside = (np.abs(dx) <= fp.extent_x[i]) & (np.abs(dy) <= fp.extent_y[i])
        used = inside & (alpha >= ALPHA_MIN) & ~stopped
        after = trans * (1.0 - alpha)
        stopping = used & (after <= render_raster.TRANSMITTANCE_MIN)
        stopped |= stopping
        used &= ~stopping
        color += np.where(used, alpha * trans, 0.0)[..., None] * fp.colors[i]
        trans = np.where(used, after, trans)
    return color + trans[..., None], int(stopped.sum())


@pytest.mark.parametrize("chunk_fragments", [1 << 21, 97])
def test_vectorised_compositing_matches_a_per_gaussian_reference(
    chunk_fragments: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks exercise the transmittance carried between chunks and the skipping of finished pixels.
    monkeypatch.setattr(render_raster, "CHUNK_FRAGMENTS", chunk_fragments)
    rng = np.random.default_rng(7)
    n = 300
    logits = rng.normal(3.0, 2.5, n)
    logits[:30] = math.inf
    splat = make_splat(
        rng.normal(0, 0.25, (n, 3)), rng.uniform(0, 1, (n, 3)), logits, rng.normal(-3.2, 0.4, n)
    )
    fp = project(prepare_splat(splat), orbit_camera(40.0, size=40))
    expected, stopped_pixels = reference_render(fp, 40, 40)
    got = render_raster.rasterize(fp, 40, 40, np.ones(3))
    assert stopped_pixels > 0
    assert np.abs(got - expected).max() < 1e-3


def test_a_view_needing_too_many_fragments_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    splat = make_splat([[0, 0, 0], [0.2, 0, 0]], [COLOR, COLOR], [5.0, 5.0], -1.0)
    monkeypatch.setattr(render_raster, "MAX_FRAGMENTS_PER_VIEW", 1000)
    with pytest.raises(RenderTooLarge, match="fragments"):
        render_views(splat, azimuths_deg=[0], size=64)


# --- layouts and files ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_splat() -> Splat:
    rng = np.random.default_rng(3)
    n = 200
    return make_splat(rng.normal(0, 0.2, (n, 3)), rng.uniform(0, 1, (n, 3)), rng.normal(1, 2, n), -3.5)


def test_grid_is_two_by_two_views_and_strip_is_n_views_wide(small_splat: Splat) -> None:
    grid = render_grid(small_splat, 40)
    assert (grid.size, grid.mode) == ((80, 80), "RGB")
    strip = render_strip(small_splat, 3, 32)
    assert (strip.size, strip.mode) == ((96, 32), "RGB")
    views = render_views(small_splat, azimuths_deg=[0, 90, 180, 270], size=40)
    assert np.array_equal(np.asarray(grid)[:40, 40:], views[1])
    assert np.array_equal(np.asarray(grid)[40:, :40], views[2])


def test_views_rendered_in_parallel_equal_views_rendered_one_by_one(small_splat: Splat) -> None:
    calls: list[tuple[int, int]] = []
    azimuths = [0, 72, 144, 216, 288]
    parallel = render_views(
        small_splat, azimuths_deg=azimuths, size=32, workers=3, progress=lambda *a: calls.append(a)
    )
    serial = render_views(small_splat, azimuths_deg=azimuths, size=32)
    assert all(np.array_equal(p, s) for p, s in zip(parallel, serial, strict=True))
    assert sorted(calls) == [(i, 5) for i in range(1, 6)]


def test_save_png_atomic_writes_a_readable_png_and_leaves_no_temp_file(
    small_splat: Splat, tmp_path: Path
) -> None:
    target = tmp_path / "preview.png"
    target.write_bytes(b"old")
    save_png_atomic(render_strip(small_splat, 2, 24), target)
    with Image.open(target) as picture:
        assert (picture.format, picture.size) == ("PNG", (48, 24))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preview.png"]


def test_real_hamburger_grid_shows_an_object_in_each_view(real_ply_bytes: bytes) -> None:
    grid = np.asarray(render_grid(Splat.from_ply_bytes(real_ply_bytes), 64))
    for view in (grid[:64, :64], grid[:64, 64:], grid[64:, :64], grid[64:, 64:]):
        covered = (view < 240).any(axis=2)
        assert 0.15 < covered.mean() < 0.8
        rows, cols = np.nonzero(covered)
        assert abs(cols.mean() - 32) < 6 and abs(rows.mean() - 32) < 8
        assert view[0].min() > 240 and view[:, 0].min() > 240  # white border: the model fits in the frame


# --- command line ------------------------------------------------------------------------------------


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "diagnostics.cli_render", *map(str, args)]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_cli_writes_the_png_atomically(small_splat: Splat, tmp_path: Path) -> None:
    ply = tmp_path / "in.ply"
    ply.write_bytes(small_splat.to_ply_bytes())
    out = tmp_path / "out" / "grid.png"
    out.parent.mkdir()
    result = run_cli(ply, "-o", out, "--grid", "--size", "32")
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    with Image.open(out) as picture:
        assert (picture.format, picture.size, picture.mode) == ("PNG", (64, 64), "RGB")
    assert [p.name for p in out.parent.iterdir()] == ["grid.png"]


def test_cli_rejects_a_garbage_file_with_one_line_and_exit_code_2(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.ply"
    garbage.write_bytes(b"\x00\x01 definitely not a ply" * 50)
    out = tmp_path / "never.png"
    result = run_cli(garbage, "-o", out)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "garbage.ply" in result.stderr
    assert not out.exists()
