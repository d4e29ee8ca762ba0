"""Splat statistics in one vectorised scan: ``splat_stats(splat) -> SplatStats``.

Opacity statistics are taken over the *finite* logits only; gaussians whose opacity is +inf or -inf
(a saturated alpha, normal after an SPZ round trip) are counted separately, so every number stays
finite and JSON-safe. NaN anywhere, or inf in any column but opacity, is corruption and is counted.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from diagnostics.ply_io import float_dtype
from diagnostics.splat import Splat

# sigmoid(x) < 1e-3  <=>  x < logit(1e-3): the validator's "transparent" test, on the stored logit.
TRANSPARENT_ALPHA = 1e-3
TRANSPARENT_LOGIT = math.log(TRANSPARENT_ALPHA / (1.0 - TRANSPARENT_ALPHA))

OPACITY_PERCENTILES: tuple[float, ...] = (1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0)

# The validator compares normalised rotations with torch.allclose(q, [1, 0, 0, 0]) at its defaults.
_ALLCLOSE_RTOL = 1e-5
_ALLCLOSE_ATOL = 1e-8

# Rows per block when gathering columns: a block of a 17-column splat is ~1 MiB and stays in cache,
# so the strided reads cost one pass over memory instead of one pass per column.
_BLOCK_ROWS = 16384

OPACITY_COUNTING = (
    "mean/std/min/max/percentiles are over finite logits only; +inf and -inf logits (saturated alpha) "
    "are counted in pos_inf/neg_inf and NaN in nan; transparent_fraction counts -inf as transparent "
    "over all gaussians, as the validator does"
)


@dataclass(frozen=True)
class OpacityStats:
    """Opacity logit statistics; see ``counting`` for how saturated values are treated."""

    finite: int
    pos_inf: int
    neg_inf: int
    nan: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    percentiles: dict[str, float | None]
    transparent_count: int
    transparent_fraction: float | None
    counting: str = OPACITY_COUNTING


@dataclass(frozen=True)
class SplatStats:
    """Everything the diagnostics need to know about a splat; ``None`` marks an undefined value."""

    count: int
    columns: list[str]
    opacity: OpacityStats
    log_scale_mean: list[float | None]
    log_scale_std: list[float | None]
    bbox_min: list[float | None]
    bbox_max: list[float | None]
    nonfinite_per_column: dict[str, int]
    # Gaussians with NaN in any column or inf outside opacity.
    corrupted_count: int
    all_rotations_identity: bool | None
    notes: list[str] = field(default_factory=list)
    # The opacity column sorted (NaN last), kept on request so that restat_opacity can follow a constant
    # shift without sorting again. Not part of the statistics: to_dict leaves it out.
    sorted_opacity: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(replace(self, sorted_opacity=None))
        del data["sorted_opacity"]
        return data

    def to_json(self, indent: int | None = None) -> str:
        """JSON text; never contains NaN or Infinity (undefined values are null)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def float_matrix(data: np.ndarray) -> np.ndarray:
    """The records as an (N, columns) float32 matrix: a view when the layout is packed float32, else a copy."""
    names = data.dtype.names or ()
    canonical = float_dtype(names)
    if data.dtype != canonical or not data.flags.c_contiguous:
        data = np.ascontiguousarray(data.astype(canonical))
    return data.view(np.float32).reshape(len(data), len(names))


@dataclass(frozen=True)
class NonFiniteScan:
    """Where the non-finite values are: per-column counts and, when any, the corrupted rows."""

    per_column: np.ndarray
    corrupted_rows: np.ndarray | None

    @property
    def corrupted_count(self) -> int:
        return 0 if self.corrupted_rows is None else int(np.count_nonzero(self.corrupted_rows))


def scan_columns(
    matrix: np.ndarray, opacity_index: int, gather: list[int]
) -> tuple[np.ndarray, NonFiniteScan]:
    """One pass over the records: copy the ``gather`` columns out as rows and find the non-finite values.

    Returns the gathered (len(gather), N) float32 array and where NaN / inf sit (per column, and the
    rows with NaN anywhere or inf outside opacity).
    """
    rows, cols = matrix.shape
    out = np.empty((len(gather), rows), dtype=np.float32)
    runs = _column_runs(gather)
    per_column = np.zeros(cols, dtype=np.int64)
    corrupted: np.ndarray | None = None
    # Block by block so each block is read from memory once and everything else hits the cache.
    for start in range(0, rows, _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, rows)
        block = matrix[start:stop]
        for first, column, width in runs:
            out[first : first + width, start:stop] = block[:, column : column + width].T
        finite = np.isfinite(block)
        if finite.all():
            continue
        opacity = block[:, opacity_index]
        finite[:, opacity_index] = True
        if finite.all() and not np.isnan(opacity).any():
            # Only saturated opacities: common after SPZ, and not corruption.
            per_column[opacity_index] += opacity.size - np.count_nonzero(np.isfinite(opacity))
            continue
        counts, bad_rows = _nonfinite_in_block(block, opacity_index)
        per_column += counts
        if bad_rows.size:
            if corrupted is None:
                corrupted = np.zeros(rows, dtype=bool)
            corrupted[start + bad_rows] = True
    return out, NonFiniteScan(per_column, corrupted)


def _nonfinite_in_block(block: np.ndarray, opacity_index: int) -> tuple[np.ndarray, np.ndarray]:
    cols = block.shape[1]
    flat = np.flatnonzero(~np.isfinite(block))
    row_of, col_of = np.divmod(flat, cols)
    counts = np.bincount(col_of, minlength=cols)
    # A saturated opacity alone does not corrupt a row; a NaN opacity does.
    saturated = (col_of == opacity_index) & ~np.isnan(block[row_of, col_of])
    return counts, np.unique(row_of[~saturated])


def _column_runs(indices: list[int]) -> list[tuple[int, int, int]]:
    """Group adjacent column indices into (first output row, first column, width) runs, copied as slices."""
    runs: list[tuple[int, int, int]] = []
    for position, column in enumerate(indices):
        if runs and runs[-1][1] + runs[-1][2] == column:
            first, start, width = runs[-1]
            runs[-1] = (first, start, width + 1)
        else:
            runs.append((position, column, 1))
    return runs


def rotations_all_identity(splat: Splat) -> bool | None:
    """True when every normalised rotation is allclose to [1, 0, 0, 0] (the validator's rule); None if empty."""
    if len(splat) == 0:
        return None
    if not _rows_identity(splat.data[:1]).all():
        return False  # the usual answer, decided from the first gaussian without a full pass
    return bool(_rows_identity(splat.data).all())


def _rows_identity(records: np.ndarray) -> np.ndarray:
    w, x, y, z = (records[f"rot_{i}"].astype(np.float64) for i in range(4))
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.sqrt(w * w + x * x + y * y + z * z)
        ok = np.abs(w / norm - 1.0) <= _ALLCLOSE_ATOL + _ALLCLOSE_RTOL
        for v in (x, y, z):
            ok &= np.abs(v / norm) <= _ALLCLOSE_ATOL
    return ok


def _opacity_stats(ordered: np.ndarray, count: int) -> OpacityStats:
    # One sort (by the caller) gives the saturated counts, min/max, the percentiles and the transparent
    # count at once.
    nan = _trailing_nan_count(ordered)
    numeric = ordered[: ordered.size - nan]
    neg_inf = int(np.searchsorted(numeric, -np.inf, side="right"))
    pos_inf = int(numeric.size - np.searchsorted(numeric, np.inf, side="left"))
    finite = numeric[neg_inf : numeric.size - pos_inf]
    transparent = int(np.searchsorted(numeric, TRANSPARENT_LOGIT, side="left"))
    percentiles = {_percentile_key(q): _sorted_percentile(finite, q) for q in OPACITY_PERCENTILES}
    mean, std = mean_std(finite)
    return OpacityStats(
        finite=int(finite.size),
        pos_inf=pos_inf,
        neg_inf=neg_inf,
        nan=nan,
        mean=mean,
        std=std,
        min=float(finite[0]) if finite.size else None,
        max=float(finite[-1]) if finite.size else None,
        percentiles=percentiles,
        transparent_count=transparent,
        transparent_fraction=transparent / count if count else None,
    )


def _trailing_nan_count(ordered: np.ndarray) -> int:
    # np.sort puts NaN last; searchsorted agrees with that order, so this is the NaN tail length.
    return int(ordered.size - np.searchsorted(ordered, np.nan, side="left"))


def _percentile_key(q: float) -> str:
    return f"p{q:g}"


def _sorted_percentile(ordered: np.ndarray, q: float) -> float | None:
    """Percentile with numpy's default linear interpolation, read from an already sorted array."""
    if ordered.size == 0:
        return None
    position = (ordered.size - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, ordered.size - 1)
    a, b = float(ordered[low]), float(ordered[high])
    return a + (b - a) * (position - low)


def mean_std(values: np.ndarray) -> tuple[float | None, float | None]:
    """Mean and population std in float64 of a 1-D float array; (None, None) when empty."""
    if values.size == 0:
        return None, None
    # One float64 buffer, squared in place and pairwise-summed: float64-exact, no temporaries like
    # np.std's, and no BLAS call (its worker threads stall badly on a busy machine).
    centred = values.astype(np.float64)
    mean = float(centred.sum()) / centred.size
    centred -= mean
    np.multiply(centred, centred, out=centred)
    return mean, math.sqrt(float(centred.sum()) / centred.size)


def _finite_only(values: np.ndarray, nonfinite: int) -> np.ndarray:
    return values[np.isfinite(values)] if nonfinite else values


def splat_stats(splat: Splat, *, keep_sorted_opacity: bool = False) -> SplatStats:
    """Compute every statistic of ``splat`` in one vectorised scan (no Python loop over gaussians).

    ``keep_sorted_opacity`` keeps the sorted opacity column (4 bytes a gaussian) in the result for a
    following ``restat_opacity(..., shift)``; off by default so that stats held in bulk stay small.
    """
    names = list(splat.names)
    count = len(splat)
    matrix = float_matrix(splat.data)
    index = {name: i for i, name in enumerate(names)}
    wanted = ["x", "y", "z", "opacity", "scale_0", "scale_1", "scale_2"]
    columns, scan = scan_columns(matrix, index["opacity"], [index[n] for n in wanted])
    bad = {n: int(scan.per_column[index[n]]) for n in wanted}

    bbox_min: list[float | None] = []
    bbox_max: list[float | None] = []
    for row, name in zip(columns[:3], ("x", "y", "z"), strict=True):
        values = _finite_only(row, bad[name])
        bbox_min.append(float(values.min()) if values.size else None)
        bbox_max.append(float(values.max()) if values.size else None)

    scale_mean: list[float | None] = []
    scale_std: list[float | None] = []
    for row, name in zip(columns[4:], ("scale_0", "scale_1", "scale_2"), strict=True):
        mean, std = mean_std(_finite_only(row, bad[name]))
        scale_mean.append(mean)
        scale_std.append(std)

    ordered_opacity = np.sort(columns[3])
    notes = []
    if scan.corrupted_count:
        notes.append(f"{scan.corrupted_count} gaussians have NaN, or inf outside opacity")
    return SplatStats(
        count=count,
        columns=names,
        opacity=_opacity_stats(ordered_opacity, count),
        log_scale_mean=scale_mean,
        log_scale_std=scale_std,
        bbox_min=bbox_min,
        bbox_max=bbox_max,
        nonfinite_per_column={n: int(c) for n, c in zip(names, scan.per_column, strict=True)},
        corrupted_count=scan.corrupted_count,
        all_rotations_identity=rotations_all_identity(splat),
        notes=notes,
        sorted_opacity=ordered_opacity if keep_sorted_opacity else None,
    )


def restat_opacity(stats: SplatStats, splat: Splat, shift: float | None = None) -> SplatStats:
    """Stats of ``splat`` when it differs from the splat ``stats`` describes only in its opacity column.

    What the fixer's constant shift produces: only the opacity column is read again. Anything else
    (other columns, count, corruption) falls back to a full ``splat_stats``. ``shift``, when given, must be
    the fixer's shift (each logit became ``float32(float64(logit) + shift)``): that rounding never
    reorders, so the sorted column ``stats`` kept (``keep_sorted_opacity``) is shifted in order instead of
    sorting again.
    """
    if stats.count != len(splat) or stats.columns != list(splat.names) or stats.corrupted_count:
        return splat_stats(splat)
    before = stats.sorted_opacity
    if shift is not None and before is not None and stats.opacity.nan == 0:
        ordered = (before.astype(np.float64) + shift).astype(np.float32)
    else:
        ordered = np.sort(splat["opacity"])
    opacity = _opacity_stats(ordered, stats.count)
    if opacity.nan:
        return splat_stats(splat)
    per_column = dict(stats.nonfinite_per_column)
    per_column["opacity"] = opacity.pos_inf + opacity.neg_inf
    kept = ordered if stats.sorted_opacity is not None else None
    return replace(stats, opacity=opacity, nonfinite_per_column=per_column, sorted_opacity=kept)
