"""``ply`` commands: analyze, fix and check Gaussian-splat PLY files (mounted as ``splatgen ply``)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from diagnostics.atomic import write_bytes_atomic
from diagnostics.gates import MIN_GAUSSIANS, GateFailure, gate_failures
from diagnostics.ply_fixer import DEFAULT_TARGET, DEFAULT_TRIGGER, FixReport, fix_opacity
from diagnostics.ply_io import PlyFormatError, parse_header
from diagnostics.splat import Splat
from diagnostics.stats import SplatStats, splat_stats

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNREADABLE = 2

ply_app = typer.Typer(
    name="ply",
    help="Inspect, repair and check Gaussian-splat PLY files.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)

PATHS_HELP = "PLY files, or folders searched recursively for *.ply."
JSON_HELP = "Print one JSON document on stdout instead of tables."


class Unreadable(Exception):
    """A path that cannot be read as a splat; the message is for the user."""


@dataclass(frozen=True)
class Loaded:
    path: Path
    splat: Splat
    # Elements other than the vertices (MeshLab's 'face', ...): read past, never part of the splat.
    skipped: tuple[tuple[str, int], ...] = ()


def describe_skipped(skipped: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"'element {name}' ({count:,} items)" for name, count in skipped)


def collect_ply_files(paths: Sequence[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand folders into their *.ply files (sorted); missing paths and empty folders become errors."""
    files: list[Path] = []
    errors: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() == ".ply" and p.is_file())
            if not found:
                errors.append((path, "folder holds no .ply file"))
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            errors.append((path, "no such file or folder"))
    return files, errors


def load_splat(path: Path) -> Splat:
    """Read and parse one PLY file; every failure becomes ``Unreadable`` with a one-line reason."""
    return load_splat_file(path).splat


def load_splat_file(path: Path) -> Loaded:
    """``load_splat`` plus the elements the file holds besides its vertices."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise Unreadable(f"cannot read: {exc.strerror or exc}") from None
    try:
        splat = Splat.from_ply_bytes(data)
        return Loaded(path, splat, tuple(parse_header(data).other_elements()))
    except (PlyFormatError, ValueError, TypeError) as exc:
        raise Unreadable(f"not a readable splat PLY: {exc}") from None
    except MemoryError:
        raise Unreadable("not enough memory to read this file") from None


@contextmanager
def _progress(console: Console, total: int, what: str) -> Iterator[Progress]:
    progress = Progress(
        TextColumn(f"[bold]{what}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=total < 2 or not console.is_terminal,
    )
    with progress:
        yield progress


def _load_all(paths: Sequence[Path], what: str) -> Iterator[tuple[Path, Loaded | None, str | None]]:
    """Yield (path, splat or None, error or None) for every input, with a progress bar on stderr."""
    files, errors = collect_ply_files(paths)
    for path, message in errors:
        yield path, None, message
    console = Console(stderr=True)
    with _progress(console, len(files), what) as progress:
        task = progress.add_task(what, total=len(files))
        for path in files:
            try:
                yield path, load_splat_file(path), None
            except Unreadable as exc:
                yield path, None, str(exc)
            progress.advance(task)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _print_json(document: dict[str, Any]) -> None:
    typer.echo(json.dumps(document, indent=2, allow_nan=False))


@ply_app.command()
def analyze(
    paths: list[Path] = typer.Argument(..., help=PATHS_HELP, show_default=False),
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Statistics per file (opacity logits, saturation, log-scales, non-finite values) and a summary row.

    Names elements other than the vertices (they are skipped). Exit code 0 when every file was read and
    has usable gaussians, 1 when a file has none (0 vertices, or every one corrupted), 2 when any file
    could not be read.
    """
    results: list[tuple[Path, SplatStats]] = []
    skipped: dict[Path, tuple[tuple[str, int], ...]] = {}
    errors: list[tuple[Path, str]] = []
    for path, loaded, error in _load_all(paths, "analyzing"):
        if loaded is None:
            errors.append((path, error or "unreadable"))
        else:
            results.append((path, splat_stats(loaded.splat)))
            skipped[path] = loaded.skipped
    empty = [(p, s) for p, s in results if s.count - s.corrupted_count <= 0]
    summary = summarize([stats for _, stats in results])
    if json_output:
        _print_json(
            {
                "files": [
                    {
                        "path": str(p),
                        "stats": s.to_dict(),
                        "usable_gaussians": s.count - s.corrupted_count,
                        "skipped_elements": dict(skipped[p]),
                    }
                    for p, s in results
                ],
                "errors": [{"path": str(p), "error": e} for p, e in errors],
                "summary": summary,
            }
        )
    else:
        console = Console()
        if results:
            console.print(_analyze_table(results, summary))
        notes = Console(stderr=True)
        for path, elements in skipped.items():
            if elements:
                notes.print(f"note {escape(str(path))}: skipped {escape(describe_skipped(elements))}: not part "
                            "of a splat", soft_wrap=True, highlight=False)  # fmt: skip
        for path, stats in empty:
            notes.print(f"[red]error[/red] {escape(str(path))}: {_no_usable(stats.count)}", soft_wrap=True,
                        highlight=False)  # fmt: skip
        _print_errors(errors)
    raise typer.Exit(EXIT_UNREADABLE if errors else EXIT_FAILED if empty else EXIT_OK)


def _no_usable(count: int) -> str:
    if count == 0:
        return "no usable gaussians: the file has 0 vertices"
    return f"no usable gaussians: every gaussian is corrupted (all {count:,} have NaN or inf values)"


def summarize(all_stats: Sequence[SplatStats]) -> dict[str, Any]:
    """Totals over several splats; the opacity mean/std are pooled over all finite logits."""
    finite = sum(s.opacity.finite for s in all_stats)
    count = sum(s.count for s in all_stats)
    mean = std = None
    if finite:
        mean = sum(s.opacity.finite * (s.opacity.mean or 0.0) for s in all_stats) / finite
        spread = sum(
            s.opacity.finite * ((s.opacity.std or 0.0) ** 2 + ((s.opacity.mean or 0.0) - mean) ** 2)
            for s in all_stats
        )
        std = math.sqrt(spread / finite)
    transparent = sum(s.opacity.transparent_count for s in all_stats)
    return {
        "files": len(all_stats),
        "count": count,
        "opacity_mean": mean,
        "opacity_std": std,
        "opacity_pos_inf": sum(s.opacity.pos_inf for s in all_stats),
        "opacity_neg_inf": sum(s.opacity.neg_inf for s in all_stats),
        "transparent_fraction": transparent / count if count else None,
        "corrupted_count": sum(s.corrupted_count for s in all_stats),
        "files_all_identity_rotations": sum(1 for s in all_stats if s.all_rotations_identity),
    }


def _analyze_table(results: Sequence[tuple[Path, SplatStats]], summary: dict[str, Any]) -> Table:
    table = Table(
        title="Splat statistics",
        caption="logits: finite values only, ±inf counted apart; log-scale: mean of the three axes",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    table.add_column("file", overflow="fold", min_width=10)
    headers = ("gaussians", "logit\nmean ± std", "saturated\n+inf/-inf", "α<1e-3", "log\nscale", "corrupt")
    for header in headers:
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("rot\nident.", justify="center", no_wrap=True)
    for path, s in results:
        table.add_row(
            escape(str(path)),
            f"{s.count:,}",
            f"{_fmt(s.opacity.mean, 2)} ± {_fmt(s.opacity.std, 2)}",
            f"{s.opacity.pos_inf:,}/{s.opacity.neg_inf:,}",
            _percent(s.opacity.transparent_fraction),
            _fmt(_average(s.log_scale_mean), 2),
            f"{s.corrupted_count:,}",
            {True: "yes", False: "no", None: "-"}[s.all_rotations_identity],
        )
    table.add_section()
    table.add_row(
        f"[bold]total: {summary['files']} files",
        f"{summary['count']:,}",
        f"{_fmt(summary['opacity_mean'], 2)} ± {_fmt(summary['opacity_std'], 2)}",
        f"{summary['opacity_pos_inf']:,}/{summary['opacity_neg_inf']:,}",
        _percent(summary["transparent_fraction"]),
        "",
        f"{summary['corrupted_count']:,}",
        f"{summary['files_all_identity_rotations']} files"
        if summary["files_all_identity_rotations"]
        else "none",
    )
    return table


def _average(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction:.1%}"


def _print_errors(errors: Sequence[tuple[Path, str]]) -> None:
    console = Console(stderr=True)
    for path, message in errors:
        console.print(
            f"[red]error[/red] {escape(str(path))}: {escape(message)}", soft_wrap=True, highlight=False
        )


@ply_app.command()
def check(
    paths: list[Path] = typer.Argument(..., help=PATHS_HELP, show_default=False),
    min_gaussians: int = typer.Option(
        MIN_GAUSSIANS, help="Fewest gaussians a splat may have (validator rule)."
    ),
    degenerate_min: int | None = typer.Option(
        None, help="Flag splats under this count as a degraded generation (off by default)."
    ),
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Run the quality gates (validator rules, NaN/inf, SPZ limit) on every file.

    Prints one line per failure. Exit code 0 when all pass, 1 when any gate fails, 2 when any file
    cannot be read.
    """
    checked: list[tuple[Path, int, list[GateFailure]]] = []
    errors: list[tuple[Path, str]] = []
    for path, loaded, error in _load_all(paths, "checking"):
        if loaded is None:
            errors.append((path, error or "unreadable"))
            continue
        failures = gate_failures(
            splat_stats(loaded.splat), min_gaussians=min_gaussians, degenerate_min=degenerate_min
        )
        checked.append((path, len(loaded.splat), failures))
    passed = not errors and all(not failures for _, _, failures in checked)
    if json_output:
        _print_json(
            {
                "passed": passed,
                "files": [
                    {
                        "path": str(p),
                        "count": n,
                        "passed": not failures,
                        "failures": [f.to_dict() for f in failures],
                    }
                    for p, n, failures in checked
                ],
                "errors": [{"path": str(p), "error": e} for p, e in errors],
            }
        )
    else:
        console = Console()
        for path, count, failures in checked:
            name = escape(str(path))
            if not failures:
                console.print(
                    f"[green]pass[/green] {name} ({count:,} gaussians)", soft_wrap=True, highlight=False
                )
            for failure in failures:
                console.print(
                    f"[red]fail[/red] {name}: {failure.code}: {escape(failure.message)}",
                    soft_wrap=True,
                    highlight=False,
                )
        _print_errors(errors)
    if errors:
        raise typer.Exit(EXIT_UNREADABLE)
    raise typer.Exit(EXIT_OK if passed else EXIT_FAILED)


@ply_app.command()
def fix(
    source: Path = typer.Argument(..., metavar="IN", help="The PLY file to repair.", show_default=False),
    output: Path | None = typer.Option(
        None, "--output", "-o", metavar="OUT", help="Where to write the result."
    ),
    in_place: bool = typer.Option(
        False, "--in-place", help="Replace IN itself (only when something changed)."
    ),
    trigger: float | None = typer.Option(
        None,
        help="Mean opacity logit under which a splat counts as faint.",
        show_default=f"{DEFAULT_TRIGGER:.3f}, halfway between logit(1e-3) and TRELLIS's opacity bias",
    ),
    target: float | None = typer.Option(
        None,
        help="Mean opacity logit a faint splat is shifted to.",
        show_default=f"{DEFAULT_TARGET:.3f}, TRELLIS's opacity bias logit(0.1)",
    ),
    json_output: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Drop corrupted gaussians and lift a faint splat's opacity by one constant logit shift.

    Writes atomically (temp file + rename): IN is never modified without --in-place, and on any error
    no output file is left. Elements other than the vertices (MeshLab's 'face') are dropped, and the
    output says so. Exit code 0 on success, 1 when nothing usable is left (0 vertices, or every one
    corrupted; no file is written), 2 on bad input, bad options or a failed write.
    """
    if (output is None) == (not in_place):
        _fail_usage("give exactly one of -o OUT or --in-place")
    destination = source if in_place else output
    assert destination is not None
    if not in_place and _same_file(source, destination):
        _fail_usage(f"-o {destination} is the input file itself; use --in-place to replace it")
    try:
        loaded = load_splat_file(source)
    except Unreadable as exc:
        _fail(f"{escape(str(source))}: {escape(str(exc))}", EXIT_UNREADABLE)
    try:
        fixed, report = fix_opacity(loaded.splat, trigger=trigger, target=target)
    except ValueError as exc:
        _fail_usage(str(exc))
    if not report.count_after:
        _fail(f"{escape(str(source))}: {_no_usable(report.count_before)}; no file written", EXIT_FAILED)
    dropped = describe_skipped(loaded.skipped) if loaded.skipped else None

    written = False
    if not in_place or report.fixed:
        try:
            write_bytes_atomic(destination, fixed.to_ply_bytes())
        except OSError as exc:
            _fail(
                f"cannot write {escape(str(destination))}: {escape(exc.strerror or str(exc))}",
                EXIT_UNREADABLE,
            )
        written = True
    if json_output:
        _print_json(
            {
                "input": str(source),
                "output": str(destination),
                "written": written,
                "dropped_elements": dict(loaded.skipped),
                "report": report.to_dict(),
            }
        )
    else:
        Console().print(_fix_table(report, destination, written, dropped))


def _fix_table(report: FixReport, destination: Path, written: bool, dropped: str | None) -> Table:
    table = Table(title="Opacity fix", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("result", escape(report.reason))
    table.add_row("gaussians", f"{report.count_before:,} -> {report.count_after:,}")
    table.add_row("dropped corrupted", f"{report.dropped_corrupted:,}")
    if dropped:
        table.add_row("dropped elements", f"{escape(dropped)}: not part of a splat, not written")
    table.add_row("logit mean", f"{_fmt(report.mean_before, 4)} -> {_fmt(report.mean_after, 4)}")
    table.add_row("logit std", f"{_fmt(report.std_before, 4)} -> {_fmt(report.std_after, 4)}")
    table.add_row("shift", f"{report.shift:+.4f}")
    table.add_row("saturated +inf / -inf", f"{report.saturated_pos:,} / {report.saturated_neg:,} (kept)")
    table.add_row(
        "output", f"{escape(str(destination))} ({'written' if written else 'unchanged, not rewritten'})"
    )
    return table


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and a.samefile(b))
    except OSError:
        return False


def _fail(message: str, code: int) -> NoReturn:
    Console(stderr=True).print(f"[red]error[/red] {message}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


def _fail_usage(message: str) -> NoReturn:
    _fail(escape(message), EXIT_UNREADABLE)


def _register_render() -> None:
    # Imported here: cli_render is a sibling command module and must not import this one back.
    from diagnostics.cli_render import render

    ply_app.command("render")(render)


_register_render()

if __name__ == "__main__":
    ply_app(prog_name="ply")
