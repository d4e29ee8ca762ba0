"""After every generation: parse the PLY, fix faint opacities, run the quality gates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from diagnostics import PlyFormatError, Splat
from diagnostics.gates import GateFailure, check_splat
from diagnostics.ply_fixer import FixReport, fix_opacity
from diagnostics.stats import restat_opacity, splat_stats
from generation.settings import FrontSettings


@dataclass
class CheckedResult:
    """The bytes to serve (the worker's own when nothing was fixed) and what was found."""

    ply: bytes | memoryview
    gaussians: int
    stats: dict[str, Any] | None
    fix: FixReport | None
    failures: list[GateFailure]

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> dict[str, Any]:
        fix = self.fix.to_dict() if self.fix else None
        return {
            "gaussians": self.gaussians,
            "opacity_mean_before": fix.get("mean_before") if fix else None,
            "opacity_std_before": fix.get("std_before") if fix else None,
            "opacity_mean_after": fix.get("mean_after") if fix else None,
            "opacity_std_after": fix.get("std_after") if fix else None,
            "fixed": bool(self.fix and self.fix.fixed),
            "dropped_corrupted": fix.get("dropped_corrupted", 0) if fix else 0,
            "gates": [f.to_dict() for f in self.failures],
        }


def check_result(ply: bytes | memoryview, settings: FrontSettings) -> CheckedResult:
    """Never raises on bad bytes: an unreadable PLY is a gate failure like any other."""
    try:
        splat = Splat.from_ply_bytes(ply)
    except PlyFormatError as exc:
        return CheckedResult(b"", 0, None, None, [GateFailure("malformed_ply", str(exc))])
    stats = splat_stats(splat, keep_sorted_opacity=True)
    # The front end owns the buffer it read the worker's answer into: a faint splat is shifted there.
    owned = _is_view_of_writable(splat, ply)
    fixed, report = fix_opacity(
        splat,
        trigger=settings.opacity_fix_trigger,
        target=settings.opacity_fix_target,
        stats=stats,
        in_place=owned,
    )
    changed = report.fixed
    if changed:
        # A pure shift changed only the opacity column; dropped rows change everything.
        shift = report.shift if report.faint and not report.dropped_corrupted else None
        stats = restat_opacity(stats, fixed, shift)
    failures = check_splat(fixed, degenerate_min=settings.degenerate_min_gaussians, stats=stats)
    # A healthy splat, or one shifted inside ``ply``, is served as these bytes: no re-serialisation.
    shifted_in_buffer = owned and fixed is splat
    out = fixed.to_ply_bytes() if changed and not failures and not shifted_in_buffer else ply
    return CheckedResult(out, len(fixed), stats.to_dict(), report, failures)


def _is_view_of_writable(splat: Splat, ply: bytes | memoryview) -> bool:
    """Whether the parsed gaussians are the body of ``ply`` itself and may be written there."""
    if isinstance(ply, bytes) or ply.readonly:
        return False
    return bool(np.shares_memory(splat.data, np.frombuffer(ply, dtype=np.uint8)))
