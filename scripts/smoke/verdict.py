"""The PASS criteria, each a threshold from the command line with the plan's number as default."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from smoke.generations import Generation

GB = 1024**3


@dataclass(frozen=True)
class Limits:
    min_opacity_std: float
    max_opacity_std: float
    std_preserve_tolerance: float
    max_memory_gb: float
    min_mean_gaussians: float
    max_seconds: float


@dataclass(frozen=True)
class Criterion:
    name: str
    passed: bool
    threshold: str
    measured: str


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def evaluate(
    generations: Sequence[Generation], memory: dict[str, Any], restarts: list[str], limits: Limits
) -> list[Criterion]:
    """Every PASS criterion, each with what it demands and what was measured."""
    served = [g for g in generations if g.ok]
    failed = [f"#{g.index} {g.error}" for g in generations if not g.ok]
    criteria = [
        Criterion(
            "every generation served",
            not failed and bool(generations),
            "HTTP 200 and a readable PLY",
            ", ".join(failed) or f"{len(served)}/{len(generations)}",
        )
    ]

    stds = [(g.index, g.opacity_std) for g in served]
    off = [
        f"#{i} {fmt(s)}"
        for i, s in stds
        if s is None or not limits.min_opacity_std <= s <= limits.max_opacity_std
    ]
    known = [s for _, s in stds if s is not None]
    spread = f"{min(known):.2f}..{max(known):.2f}" if known else "n/a"
    criteria.append(
        Criterion(
            "opacity std in range",
            not off and bool(served),
            f"{limits.min_opacity_std:g}..{limits.max_opacity_std:g}",
            ", ".join(off) or spread,
        )
    )

    fixed = [g for g in served if g.fixed]
    broken = []
    for g in fixed:
        before = g.std_before_fix
        if before is None or g.opacity_std is None or before == 0:
            broken.append(f"#{g.index} before-fix std unknown")
        elif abs(g.opacity_std / before - 1) > limits.std_preserve_tolerance:
            broken.append(f"#{g.index} {before:.3f}->{g.opacity_std:.3f}")
    criteria.append(
        Criterion(
            "opacity std preserved by the fixer",
            not broken,
            f"within {limits.std_preserve_tolerance:.0%} where the fixer triggered",
            ", ".join(broken) or f"fixer triggered on {len(fixed)}",
        )
    )

    peak = memory.get("peak_process_rss_bytes") or 0
    criteria.append(
        Criterion(
            "peak memory",
            memory.get("samples", 0) > 0 and peak < limits.max_memory_gb * GB,
            f"< {limits.max_memory_gb:g} GB RSS per process",
            f"{peak / GB:.2f} GB ({memory.get('peak_process') or 'no samples'})",
        )
    )

    counts = [g.gaussians for g in served if g.gaussians is not None]
    mean_count = sum(counts) / len(counts) if counts else 0.0
    criteria.append(
        Criterion(
            "mean gaussian count",
            mean_count > limits.min_mean_gaussians,
            f"> {limits.min_mean_gaussians:,.0f}",
            f"{mean_count:,.0f}",
        )
    )

    slow = [
        f"#{g.index} {g.seconds:.1f}s"
        for g in generations
        if g.seconds is None or g.seconds >= limits.max_seconds
    ]
    slowest = max((g.seconds or 0.0 for g in generations), default=0.0)
    criteria.append(
        Criterion(
            "every generation fast enough",
            not slow and bool(generations),
            f"< {limits.max_seconds:g} s each",
            ", ".join(slow) or f"slowest {slowest:.2f} s",
        )
    )

    gated = [
        f"#{g.index} " + "/".join(f["code"] for f in g.gate_failures) for g in served if not g.gates_passed
    ]
    criteria.append(
        Criterion(
            "quality gates",
            not gated and bool(served),
            "every output passes",
            ", ".join(gated) or f"{len(served)} passed",
        )
    )

    criteria.append(
        Criterion(
            "no unexpected restarts",
            not restarts,
            "PM2 restart counters and pids unchanged",
            "; ".join(restarts) or "none",
        )
    )
    return criteria
