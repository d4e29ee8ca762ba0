"""Quality gates: the validators' structural rules plus our own checks, as a list of failures.

An empty list means the splat may be sent. Each failure has a stable ``code`` for programs and a
``message`` for people.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from diagnostics.ply_io import MAX_SPZ_VERTICES
from diagnostics.splat import Splat
from diagnostics.stats import TRANSPARENT_ALPHA, SplatStats, splat_stats

# The validator rejects fewer gaussians than this.
MIN_GAUSSIANS = 7000
# The validator rejects a splat when strictly more than 80% of sigmoid(opacity) values are under 1e-3.
MAX_TRANSPARENT_PERCENT = 80

# The "degenerate" floor is off by default: TRELLIS was seen to fall to ~50K gaussians under memory
# pressure, but honest small objects are that size too (hamburger.ply, a validator test asset, has
# 52,709), so a count alone cannot tell them apart. Set it where a backend's normal count is known.
DEFAULT_DEGENERATE_MIN: int | None = None


@dataclass(frozen=True)
class GateFailure:
    """One failed gate: a stable code and a message that says what is wrong, with the numbers."""

    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def check_splat(
    splat: Splat,
    *,
    min_gaussians: int = MIN_GAUSSIANS,
    degenerate_min: int | None = DEFAULT_DEGENERATE_MIN,
    stats: SplatStats | None = None,
) -> list[GateFailure]:
    """Run every gate on ``splat``; pass ``stats=splat_stats(splat)`` when already computed."""
    if stats is None or stats.count != len(splat):
        stats = splat_stats(splat)
    return gate_failures(stats, min_gaussians=min_gaussians, degenerate_min=degenerate_min)


def gate_failures(
    stats: SplatStats,
    *,
    min_gaussians: int = MIN_GAUSSIANS,
    degenerate_min: int | None = DEFAULT_DEGENERATE_MIN,
) -> list[GateFailure]:
    """The gates, decided from a splat's statistics alone."""
    failures: list[GateFailure] = []
    count = stats.count
    if stats.corrupted_count:
        failures.append(GateFailure("non_finite", _non_finite_message(stats)))
    if count < min_gaussians:
        failures.append(
            GateFailure(
                "too_few_gaussians", f"{count:,} gaussians; validators need at least {min_gaussians:,}"
            )
        )
    if count > MAX_SPZ_VERTICES:
        failures.append(
            GateFailure(
                "too_many_gaussians",
                f"{count:,} gaussians; the SPZ compressor accepts at most {MAX_SPZ_VERTICES:,}",
            )
        )
    if degenerate_min is not None and count < degenerate_min:
        failures.append(
            GateFailure(
                "degenerate_count",
                f"{count:,} gaussians, under the degenerate floor of {degenerate_min:,}: "
                "the generation likely degraded",
            )
        )
    transparent = stats.opacity.transparent_count
    # Integer form of the validator's 100 * transparent / count > 80, exact at the boundary.
    if count and transparent * 100 > MAX_TRANSPARENT_PERCENT * count:
        failures.append(
            GateFailure(
                "mostly_transparent",
                f"{transparent / count:.1%} of gaussians have sigmoid(opacity) < {TRANSPARENT_ALPHA:g}; "
                f"validators reject more than {MAX_TRANSPARENT_PERCENT}%",
            )
        )
    if stats.all_rotations_identity:
        failures.append(
            GateFailure(
                "identity_rotations", "every rotation is the identity [1, 0, 0, 0]; validators reject that"
            )
        )
    return failures


def _non_finite_message(stats: SplatStats) -> str:
    per_column = dict(stats.nonfinite_per_column)
    # Saturated opacities are valid; only NaN opacities are corruption.
    per_column["opacity"] = stats.opacity.nan
    where = ", ".join(f"{name}: {n:,}" for name, n in per_column.items() if n)
    return f"{stats.corrupted_count:,} gaussians have NaN, or inf outside opacity ({where})"
