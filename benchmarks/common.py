"""What the service benchmarks share: starting the real processes, percentiles, and tables.

Every table is printed under the exact command that produced it and the machine it ran on, so a number
copied into RESULTS.md can be reproduced.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import psutil

from diagnostics.atomic import write_bytes_atomic
from generation.testing import Service, running

REPO = Path(__file__).resolve().parents[1]


def command_line() -> str:
    """The command that is running, as a user would type it from the repository root."""
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(REPO)
    return " ".join(["python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


def machine() -> str:
    """CPU model, core count, memory and Python version, one line."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gb = psutil.virtual_memory().total / 1024**3
    return (
        f"{model}, {os.cpu_count()} cores, {memory_gb:.0f} GB RAM, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as the machine line shows them."""
    return ", ".join(f"{v:.1f}" for v in os.getloadavg())


# What the service benchmarks print, kept so that ``--record`` can write the very same text to RESULTS.md.
_printed: list[str] = []


def say(text: str = "") -> None:
    """Print a line of the report (and keep it for ``record_printed``)."""
    print(text)
    _printed.append(text)


def print_header(title: str) -> None:
    say(f"\n### {title}")
    say(f"Command: `{command_line()}`")
    say(f"Machine: {machine()}; load average at the start: {load_average()}")
    say(f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    say()


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table, columns padded so it also reads well in a terminal."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    say("\n".join(lines))


def record_printed(section: str, record: bool) -> None:
    """End the report with the load at the end; with ``record``, write it all as ``section`` of RESULTS.md."""
    say(f"\nLoad average at the end: {load_average()}.")
    if record:
        record_section(section, "\n".join(_printed).strip("\n"))
        print(f"\nrecorded in {RESULTS}")


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95)) -> list[float]:
    """Linear-interpolated percentiles; NaN for an empty sample."""
    if not values:
        return [float("nan")] * len(qs)
    return [float(v) for v in np.percentile(np.asarray(values, dtype=np.float64), qs)]


def slope_per(xs: Sequence[float], ys: Sequence[float], per: float) -> tuple[float, float]:
    """Least-squares slope of ys over xs, scaled to ``per`` units of x, and its standard error."""
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if len(x) < 3 or np.ptp(x) == 0:
        return float("nan"), float("nan")
    (slope, _intercept), residuals, *_ = np.polyfit(x, y, 1, full=True)
    dof = len(x) - 2
    sigma2 = float(residuals[0]) / dof if len(residuals) else 0.0
    stderr = float(np.sqrt(sigma2 / np.sum((x - x.mean()) ** 2)))
    return float(slope) * per, stderr * per


@contextlib.contextmanager
def service(kind: str, env: dict[str, str] | None = None, log_dir: Path | None = None) -> Iterator[Service]:
    """Start ``splatgen <kind>`` on a free loopback port, wait for /health, stop it afterwards."""
    with running(kind, log_dir or Path(tempfile.gettempdir()), env) as svc:
        yield svc


def front_env(*workers: Service, **extra: str) -> dict[str, str]:
    return {
        "SPLATGEN_WORKERS": ",".join(w.url for w in workers),
        "SPLATGEN_WORKER_PROBE_INTERVAL_S": "0.5",
        **extra,
    }


RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def record_section(section: str, text: str) -> None:
    """Replace one ``## ...`` section of RESULTS.md (or append it), keeping every other section as it is."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    body = f"{section}\n\n{text}\n"
    if section in old:
        head, _, rest = old.partition(section)
        following = rest.find("\n## ")
        tail = rest[following + 1 :] if following >= 0 else ""
        new = head + body + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + body
    write_bytes_atomic(RESULTS, new.encode())
