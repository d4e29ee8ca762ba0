"""The opacity fixer: drop corrupted gaussians, lift a faint splat by one constant logit shift.

Why a constant shift: it moves the mean and keeps the standard deviation, the order of every gaussian
and the shape of the distribution, so the result still looks like what the model made. Flattening the
distribution (clipping) or adding noise both produced splats that validators rejected as unnatural.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from diagnostics.ply_io import float_dtype
from diagnostics.splat import Splat
from diagnostics.stats import TRANSPARENT_LOGIT, SplatStats, float_matrix, mean_std, scan_columns

# TRELLIS adds logit(0.1) to its decoder's raw opacity: a neutral decoder output lands here.
TRELLIS_OPACITY_BIAS = math.log(0.1 / 0.9)

# Default target: TRELLIS's own neutral opacity, so a lifted splat sits where the model's prior puts
# it and is never brighter than the model would make a neutral output.
DEFAULT_TARGET = TRELLIS_OPACITY_BIAS

# Default trigger: halfway (in logit) between the validator's transparency threshold logit(1e-3)
# ~ -6.91 and TRELLIS's bias ~ -2.20, i.e. ~ -4.55. The validator rejects a splat when more than 80%
# of its gaussians sit below -6.91; for a roughly symmetric spread that needs a mean well below
# -6.91, so a mean under -4.55 is caught more than two logits before rejection is possible. With a
# typical spread (std ~2.8, hamburger.ply), a splat right at the trigger has ~20% under -6.91.
# Healthy TRELLIS outputs sit at or above the bias (real ones: mean 0.68 and 2.68) and are untouched.
DEFAULT_TRIGGER = (TRANSPARENT_LOGIT + TRELLIS_OPACITY_BIAS) / 2.0

_FLOAT32_EPS = float(np.finfo(np.float32).eps)
# Rows per block when copying: the block is still in cache when its opacity column is overwritten.
_BLOCK_ROWS = 16384


@dataclass(frozen=True)
class FixReport:
    """What the fixer did and why; logit statistics are over finite logits of the kept gaussians."""

    fixed: bool
    reason: str
    count_before: int
    count_after: int
    dropped_corrupted: int
    faint: bool
    shift: float
    trigger: float
    target: float
    mean_before: float | None
    std_before: float | None
    mean_after: float | None
    std_after: float | None
    saturated_pos: int
    saturated_neg: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fix_opacity(
    splat: Splat,
    trigger: float | None = None,
    target: float | None = None,
    *,
    stats: SplatStats | None = None,
    in_place: bool = False,
) -> tuple[Splat, FixReport]:
    """Drop corrupted gaussians and shift a faint splat's logits so their mean reaches ``target``.

    A healthy splat comes back as the same object (its bytes unchanged). ``None`` settings take the
    module defaults. ``stats``, when given, must be ``splat_stats(splat)``: it lets a healthy splat
    skip the scan. A mean within float32 rounding of the trigger counts as reaching it, so applying
    the fixer twice gives the same bytes as applying it once.

    ``in_place=True`` lets a faint splat with nothing to drop be shifted in ``splat``'s own writable
    buffer: the result is ``splat`` itself and no copy is made. It is for a caller that owns the bytes it
    parsed, such as the front end with a worker's response. Dropping rows, or a read-only or non-float32
    layout, still copies.
    """
    trigger = DEFAULT_TRIGGER if trigger is None else float(trigger)
    target = DEFAULT_TARGET if target is None else float(target)
    if not (math.isfinite(trigger) and math.isfinite(target)):
        raise ValueError(f"trigger and target must be finite, got {trigger} and {target}")
    if target < trigger:
        raise ValueError(f"target {target} is below trigger {trigger}: the result would still count as faint")

    count = len(splat)
    reusable = stats is not None and stats.count == count and stats.corrupted_count == 0
    if reusable and stats is not None and _healthy_by_stats(stats, trigger):
        return splat, _unchanged_report(stats, trigger, target)

    opacity_index = splat.names.index("opacity")
    matrix = float_matrix(splat.data)
    if reusable:
        # The stats already say no row is corrupted: only the opacity column is needed.
        logits, corrupted_rows = np.ascontiguousarray(matrix[:, opacity_index]), None
    else:
        columns, scan = scan_columns(matrix, opacity_index, [opacity_index])
        logits, corrupted_rows = columns[0], scan.corrupted_rows
    kept: np.ndarray | None = None  # the output rows as an (N, columns) float32 matrix, once copied
    if corrupted_rows is not None:
        keep = ~corrupted_rows
        kept = matrix[keep]  # row selection on the plain float matrix: a memcpy per row, no per-field work
        logits = logits[keep]
    count_after = count if kept is None else len(kept)

    # Trusted stats that count every logit finite spare the masking copies.
    all_finite = reusable and stats is not None and stats.opacity.finite == count
    finite = logits if all_finite else logits[np.isfinite(logits)]
    mean_before, std_before = mean_std(finite)
    faint = mean_before is not None and mean_before < trigger - _rounding_slack(finite)
    saturated_pos = int(np.count_nonzero(logits == np.inf))
    saturated_neg = int(np.count_nonzero(logits == -np.inf))

    shift = 0.0
    mean_after, std_after = mean_before, std_before
    if faint:
        assert mean_before is not None
        # The shift is exact in float64; each logit is rounded once, back to float32, so order is kept
        # (rounding is monotonic) and the spread changes only by float32 rounding. inf + shift stays inf.
        shift = target - mean_before
        shifted = (logits.astype(np.float64) + shift).astype(np.float32)
        if kept is not None:
            kept[:, opacity_index] = shifted
        elif in_place and matrix.flags.writeable and np.shares_memory(matrix, splat.data):
            matrix[:, opacity_index] = shifted  # only this column changes: no copy of the splat
        else:
            kept = _copy_with_column(matrix, opacity_index, shifted)
        mean_after, std_after = mean_std(shifted if all_finite else shifted[np.isfinite(shifted)])

    fixed = kept is not None or faint
    result = splat if kept is None else Splat(kept.view(float_dtype(splat.names)).reshape(count_after))
    report = FixReport(
        fixed=fixed,
        reason=_reason(count - count_after, faint, mean_before, trigger, target, shift),
        count_before=count,
        count_after=count_after,
        dropped_corrupted=count - count_after,
        faint=faint,
        shift=shift,
        trigger=trigger,
        target=target,
        mean_before=mean_before,
        std_before=std_before,
        mean_after=mean_after,
        std_after=std_after,
        saturated_pos=saturated_pos,
        saturated_neg=saturated_neg,
    )
    return result, report


def _copy_with_column(matrix: np.ndarray, index: int, values: np.ndarray) -> np.ndarray:
    """A copy of ``matrix`` with column ``index`` replaced by ``values``, written block by block."""
    out = np.empty_like(matrix)
    for start in range(0, len(matrix), _BLOCK_ROWS):
        stop = start + _BLOCK_ROWS
        out[start:stop] = matrix[start:stop]
        out[start:stop, index] = values[start:stop]
    return out


def _healthy_by_stats(stats: SplatStats, trigger: float) -> bool:
    opacity = stats.opacity
    if opacity.mean is None:
        return True
    assert opacity.min is not None and opacity.max is not None
    return opacity.mean >= trigger - _slack(opacity.min, opacity.max)


def _unchanged_report(stats: SplatStats, trigger: float, target: float) -> FixReport:
    opacity = stats.opacity
    return FixReport(
        fixed=False,
        reason=_reason(0, False, opacity.mean, trigger, target, 0.0),
        count_before=stats.count,
        count_after=stats.count,
        dropped_corrupted=0,
        faint=False,
        shift=0.0,
        trigger=trigger,
        target=target,
        mean_before=opacity.mean,
        std_before=opacity.std,
        mean_after=opacity.mean,
        std_after=opacity.std,
        saturated_pos=opacity.pos_inf,
        saturated_neg=opacity.neg_inf,
    )


def _rounding_slack(finite: np.ndarray) -> float:
    """How far float32 rounding of a shift can move the mean: the fixer's own output must not re-trigger."""
    return _slack(float(finite.min()), float(finite.max())) if finite.size else 0.0


def _slack(low: float, high: float) -> float:
    return _FLOAT32_EPS * max(1.0, abs(low), abs(high))


def _reason(
    dropped: int, faint: bool, mean: float | None, trigger: float, target: float, shift: float
) -> str:
    parts = []
    if dropped:
        parts.append(f"dropped {dropped} corrupted gaussians (NaN, or inf outside opacity)")
    if mean is None:
        parts.append("no finite opacity logit, nothing to shift")
    elif faint:
        parts.append(
            f"faint: mean logit {mean:.4f} < trigger {trigger:.4f}; "
            f"shifted every logit by {shift:+.4f} to reach {target:.4f}"
        )
    else:
        parts.append(f"opacity healthy: mean logit {mean:.4f} >= trigger {trigger:.4f}")
    if not dropped and not faint:
        parts.append("returned unchanged")
    return "; ".join(parts)
