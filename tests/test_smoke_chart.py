"""The smoke report's chart is readable: the seconds bars are not flattened against the 35 s limit, and no
legend covers a bar. Checked on the real figure the report saves, after matplotlib has laid it out."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from smoke.generations import Generation
from smoke.report import build_figure, plot_report
from smoke.verdict import Limits

GB = 1024**3
LIMITS = Limits(3.0, 9.0, 0.02, 14.0, 350_000, 35.0)


def run(seconds: list[float]) -> tuple[list[dict[str, object]], list[Generation]]:
    generations, t = [], 0.0
    for i, s in enumerate(seconds):
        ok = i != 3
        generations.append(Generation(index=i + 1, kind="text", prompt="p", started_s=t, ended_s=t + s, seconds=s,
                                      ok=ok, gaussians=400_000 if ok else None))  # fmt: skip
        t += s + 0.1
    samples = [{"t": k / 2, "rss": {"worker": 0.3 * GB, "front": 0.1 * GB}, "gpu_used_bytes": None}
               for k in range(int(t * 2) + 2)]  # fmt: skip
    return samples, generations


@pytest.mark.parametrize("seconds", [[0.3, 0.45, 0.6, 0.5] * 5, [12.0, 20.0, 31.0, 25.0] * 5])
def test_bars_are_visible_and_no_legend_covers_them(seconds: list[float]) -> None:
    samples, generations = run(seconds)
    fig = build_figure(samples, generations, {"front-end cleanup": 12.0, "front-end refuse": 14.0}, LIMITS)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax_mem, ax_time, ax_count = fig.axes
    # The tallest bar fills at least a third of the seconds axis.
    assert max(seconds) / ax_time.get_ylim()[1] > 1 / 3, ax_time.get_ylim()
    limit_drawn = any(line.get_ydata()[0] == LIMITS.max_seconds for line in ax_time.get_lines())
    if max(seconds) * 3 < LIMITS.max_seconds:
        assert "limit 35 s" in ax_time.get_title()
    else:
        assert limit_drawn
    for ax in (ax_mem, ax_time, ax_count):
        legend = ax.get_legend().get_window_extent(renderer)
        assert legend.x0 >= ax.get_window_extent(renderer).x1  # beside the plot, not on it
        for bar in ax.patches:
            assert not legend.overlaps(bar.get_window_extent(renderer))


def test_the_report_png_is_written(tmp_path: Path) -> None:
    samples, generations = run([0.3] * 20)
    plot_report(tmp_path / "report.png", samples, generations, {"front-end refuse": 14.0}, LIMITS)
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
