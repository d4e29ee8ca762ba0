"""The run's outputs: report.json, report.md, report.png and the console summary."""

from __future__ import annotations

import io
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diagnostics.atomic import write_bytes_atomic
from smoke.generations import Generation
from smoke.verdict import GB, Criterion, Limits, fmt


def clean(value: Any) -> Any:
    """JSON without NaN/Infinity: non-finite floats become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def write_json(path: Path, payload: dict[str, Any]) -> None:
    write_bytes_atomic(path, json.dumps(clean(payload), indent=2, allow_nan=False).encode())


def render_markdown(report: dict[str, Any]) -> str:
    verdict = "PASS" if report["passed"] else "FAIL"
    memory = report["memory"]
    lines = [
        f"# splatgen phase-1 smoke test: {verdict}",
        "",
        f"- when: {report['started_at']}",
        f"- command: `{report['command']}`",
        f"- front end: {report['url']} (backend: {report['backend']})",
        f"- generations: {len(report['generations'])}",
        "",
        "## Criteria",
        "",
        "| criterion | result | threshold | measured |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {c['name']} | {'pass' if c['passed'] else '**FAIL**'} | {c['threshold']} | {c['measured']} |"
        for c in report["criteria"]
    ]
    lines += [
        "",
        "## Generations",
        "",
        "| # | kind | prompt | status | seconds | gaussians | opacity mean | opacity std | fixed | gates | preview |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in report["generations"]:
        gates = "pass" if g["gates_passed"] else ("/".join(f["code"] for f in g["gate_failures"]) or "n/a")
        status = g["status"] if g["ok"] else f"{g['status']} {g['error']}"
        preview = f"![]({g['preview']})" if g.get("preview") else ""
        count = f"{g['gaussians']:,}" if g["gaussians"] is not None else "n/a"
        prompt = g["prompt"].replace("|", "/")
        lines.append(
            f"| {g['index']} | {g['kind']} | {prompt} | {status} | {fmt(g['seconds'])} | {count} | "
            f"{fmt(g['opacity_mean'])} | {fmt(g['opacity_std'])} | {g['fixed']} | {gates} | {preview} |"
        )
    peaks = ", ".join(f"{n} {v / GB:.2f} GB" for n, v in memory["peak_rss_bytes"].items()) or "none"
    gpu = memory["peak_gpu_used_bytes"]
    lines += [
        "",
        "## Memory",
        "",
        f"- {memory['samples']} samples every {memory['interval_s']} s (largest gap {memory['max_gap_s']} s)",
        f"- peak RSS per process: {peaks}",
        f"- peak RSS of all processes together: {memory['peak_total_rss_bytes'] / GB:.2f} GB",
        f"- peak GPU memory in use: {'n/a' if gpu is None else f'{gpu / GB:.2f} GB'}",
        f"- restarts: {'; '.join(report['restarts']) or 'none'}",
        "",
        "![memory, time and gaussian count per generation](report.png)",
        "",
    ]
    return "\n".join(lines)


def plot_report(
    path: Path,
    samples: list[dict[str, Any]],
    generations: Sequence[Generation],
    memory_lines: dict[str, float],
    limits: Limits,
) -> None:
    """Memory over time with the thresholds; time and gaussian count per generation."""
    import matplotlib.pyplot as plt

    fig = build_figure(samples, generations, memory_lines, limits)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


# A limit line further above the tallest bar than this many times its height would flatten the bars.
_LIMIT_SCALE_FACTOR = 3.0


def build_figure(
    samples: list[dict[str, Any]],
    generations: Sequence[Generation],
    memory_lines: dict[str, float],
    limits: Limits,
) -> Any:
    """The report's three charts; every legend sits outside its plot, so it covers no bar and no line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_mem, ax_time, ax_count) = plt.subplots(3, 1, figsize=(12, 11), constrained_layout=True)
    times = [s["t"] for s in samples]
    names = sorted({n for s in samples for n in s["rss"]})
    for name in names:
        ax_mem.plot(times, [s["rss"].get(name, math.nan) / GB for s in samples], label=f"{name} RSS")
    if any(s["gpu_used_bytes"] is not None for s in samples):
        gpu = [math.nan if s["gpu_used_bytes"] is None else s["gpu_used_bytes"] / GB for s in samples]
        ax_mem.plot(times, gpu, label="GPU memory used", linestyle="--")
    for (label, value), colour in zip(memory_lines.items(), ("black", "darkred", "darkviolet"), strict=False):
        ax_mem.axhline(value, color=colour, linestyle=":", label=f"{label} ({value:g} GB)")
    for g in generations:
        ax_mem.axvspan(g.started_s, g.ended_s, color="tab:green" if g.ok else "tab:red", alpha=0.08)
    # Log scale: a few hundred MB of RSS and 12-14 GB thresholds stay readable on one axis.
    ax_mem.set_yscale("log")
    ax_mem.set(title="Memory during the run (shaded: generations)", xlabel="seconds", ylabel="GB (log scale)")
    _legend_outside(ax_mem)

    labels = [f"{g.index}" for g in generations]
    seconds = [g.seconds or 0.0 for g in generations]
    bars = ax_time.bar(labels, seconds, color=["tab:blue" if g.ok else "tab:red" for g in generations],
                       label="served (red: refused or failed)")  # fmt: skip
    ax_time.bar_label(bars, fmt="%.2f", fontsize="x-small", padding=2)
    slowest = max(seconds, default=0.0)
    title = "Seconds per generation"
    if slowest > 0 and limits.max_seconds > _LIMIT_SCALE_FACTOR * slowest:
        # The axis follows the bars; the limit, far above them, is stated instead of drawn.
        ax_time.set_ylim(0, slowest * 1.25)
        title += f" (limit {limits.max_seconds:g} s, far above: slowest {slowest:.2f} s)"
    else:
        ax_time.axhline(
            limits.max_seconds, color="tab:red", linestyle=":", label=f"limit {limits.max_seconds:g} s"
        )
    ax_time.set(title=title, xlabel="generation", ylabel="seconds")
    _legend_outside(ax_time)

    ax_count.bar(
        labels, [(g.gaussians or 0) / 1000 for g in generations], color="tab:gray", label="gaussians"
    )
    ax_count.axhline(
        limits.min_mean_gaussians / 1000,
        color="tab:red",
        linestyle=":",
        label=f"mean must exceed {limits.min_mean_gaussians / 1000:g}K",
    )
    ax_count.set(title="Gaussians per generation", xlabel="generation", ylabel="thousands")
    _legend_outside(ax_count)
    return fig


def _legend_outside(ax: Any) -> None:
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def print_summary(generations: Sequence[Generation], criteria: Sequence[Criterion], report_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    # Wide enough for the tables when the output goes to a file or a pipe.
    console = Console(width=max(shutil.get_terminal_size((160, 24)).columns, 120))
    table = Table(title="Generations", show_lines=False)
    numeric = {"#", "s", "gaussians", "op. mean", "op. std"}
    for column in (
        "#",
        "kind",
        "prompt",
        "status",
        "s",
        "gaussians",
        "op. mean",
        "op. std",
        "fixed",
        "gates",
    ):
        table.add_column(column, justify="right" if column in numeric else "left", no_wrap=column == "prompt")
    for g in generations:
        gates = "pass" if g.gates_passed else ("/".join(f["code"] for f in g.gate_failures) or "-")
        table.add_row(
            str(g.index),
            g.kind,
            g.prompt[:40],
            str(g.status) if g.ok else f"{g.status} {g.error}",
            fmt(g.seconds),
            f"{g.gaussians:,}" if g.gaussians is not None else "-",
            fmt(g.opacity_mean),
            fmt(g.opacity_std),
            str(g.fixed),
            gates,
        )
    console.print(table)
    verdicts = Table(title="Criteria")
    for column in ("criterion", "result", "threshold", "measured"):
        verdicts.add_column(column)
    for c in criteria:
        verdicts.add_row(
            c.name, "[green]pass[/]" if c.passed else "[bold red]FAIL[/]", c.threshold, c.measured
        )
    console.print(verdicts)
    failing = [c.name for c in criteria if not c.passed]
    if failing:
        console.print(f"[bold red]FAIL[/]: {', '.join(failing)}")
    else:
        console.print("[bold green]PASS[/]")
    console.print(f"report: {report_dir / 'report.md'}")
