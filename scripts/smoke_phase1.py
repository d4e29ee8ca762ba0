"""Phase-1 smoke test: (re)start splatgen under PM2, send real generations through the front end, judge them.

Every generation goes through ``POST /generate/`` exactly as the 404 miner sends it (text, or a base64
image in the ``prompt`` form field). Each output is parsed and measured (gaussian count, opacity logit
mean and std, whether the front end's fixer triggered, the quality gates); the RSS of every PM2 process
(and GPU memory when there is any) is sampled in the background throughout. Run through
``scripts/test_phase1_fixes.sh``; exit status 0 = PASS, 1 = FAIL, 2 = the test could not run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from smoke import SmokeError
from smoke.generations import Generation, run_generation
from smoke.pm2 import Pm2, Pm2App, restart_findings
from smoke.prompts import build_prompts, read_text_prompts
from smoke.report import clean, plot_report, print_summary, render_markdown, write_json
from smoke.sampler import MemorySampler, gpu_reader_for, pid_discovery
from smoke.verdict import GB, Limits, evaluate

from diagnostics import Splat
from diagnostics.atomic import write_bytes_atomic

try:  # previews need the CPU renderer, which a trimmed checkout may lack
    from diagnostics.render import render_grid, save_png_atomic
except ImportError:
    render_grid = None

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PROMPTS = REPO / "scripts" / "smoke_prompts.txt"
DEFAULT_PM2 = REPO / "node_modules" / ".bin" / "pm2"
START_SCRIPT = REPO / "scripts" / "start_service.sh"


def front_url_from_env() -> str:
    host = os.environ.get("SPLATGEN_FRONT_HOST") or os.environ.get("SPLATGEN_HOST") or "127.0.0.1"
    host = "127.0.0.1" if host == "0.0.0.0" else host
    return f"http://{host}:{os.environ.get('SPLATGEN_FRONT_PORT', '8093')}"


def restart_service(url: str, backend: str, timeout: int) -> None:
    parts = urlsplit(url)
    env = {**os.environ, "SPLATGEN_BACKEND": backend}
    if parts.port:
        env["SPLATGEN_FRONT_PORT"] = str(parts.port)
    command = [str(START_SCRIPT), "--backend", backend, "--timeout", str(timeout)]
    print(f"$ {shlex.join(command)}", file=sys.stderr, flush=True)
    done = subprocess.run(command, env=env, stdout=sys.stderr, check=False)
    if done.returncode != 0:
        raise SmokeError(f"the services did not start (scripts/start_service.sh exited {done.returncode})")


def wait_healthy(client: httpx.Client, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = client.get(f"{url}/health", timeout=5)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(1)
    raise SmokeError(f"{url}/health did not answer 200 within {timeout:g} s (last: {last})")


def memory_thresholds(client: httpx.Client, url: str, apps: Sequence[Pm2App]) -> dict[str, float]:
    lines: dict[str, float] = {}
    try:
        thresholds = client.get(f"{url}/status", timeout=5).json().get("thresholds") or {}
    except (httpx.HTTPError, ValueError, AttributeError):
        thresholds = {}
    if isinstance(thresholds.get("memory_cleanup_gb"), int | float):
        lines["front-end cleanup"] = float(thresholds["memory_cleanup_gb"])
    if isinstance(thresholds.get("memory_refuse_gb"), int | float):
        lines["front-end refuse"] = float(thresholds["memory_refuse_gb"])
    limits = {app.max_memory_bytes for app in apps if app.max_memory_bytes}
    if limits:
        lines["PM2 restart"] = round(min(limits) / GB, 3)
    return lines


def save_preview(splat: Splat, report_dir: Path, index: int, size: int) -> str:
    assert render_grid is not None
    folder = report_dir / "previews"
    folder.mkdir(exist_ok=True)
    name = f"previews/{index:02d}.png"
    save_png_atomic(render_grid(splat, size), report_dir / name)
    return name


def run(args: argparse.Namespace) -> int:
    limits = Limits(
        args.min_opacity_std,
        args.max_opacity_std,
        args.std_preserve_tolerance,
        args.max_memory_gb,
        args.min_mean_gaussians,
        args.max_seconds,
    )
    url = (args.url or front_url_from_env()).rstrip("/")
    prompts = build_prompts(read_text_prompts(args.prompts), args.generations, args.images)
    started_at = dt.datetime.now(dt.UTC)
    report_dir = args.report_dir or REPO / "reports" / f"smoke-{started_at:%Y%m%d-%H%M%S}"
    report_dir.mkdir(parents=True, exist_ok=True)
    previews = (render_grid is not None) if args.previews is None else args.previews
    if previews and render_grid is None:
        raise SmokeError("--previews needs diagnostics.render, which is not installed here")

    if not args.no_restart:
        restart_service(url, args.backend, args.start_timeout)
    pm2 = Pm2(args.pm2)
    with httpx.Client(trust_env=False) as client:
        wait_healthy(client, url, args.start_timeout)
        apps_before = pm2.apps()
        sampler = MemorySampler(
            pid_discovery(pm2, client, url), gpu_reader_for(client, url), args.sample_interval
        )
        sampler.start()
        generations: list[Generation] = []
        try:
            for index, prompt in enumerate(prompts, start=1):
                record, splat = run_generation(client, url, prompt, index, sampler.now, args.request_timeout)
                if splat is not None and previews:
                    record.preview = save_preview(splat, report_dir, index, args.preview_size)
                del splat
                generations.append(record)
                state = "ok" if record.ok else f"{record.error}: {record.error_message}"
                print(
                    f"[{index}/{len(prompts)}] {record.seconds:.2f}s {prompt.label[:50]} -> {state}",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(min(2.0, 2 * args.sample_interval))  # a last sample or two after the last generation
        finally:
            sampler.stop()
        apps_after = pm2.apps()
        memory = sampler.summary()
        restarts = restart_findings(apps_before, apps_after, memory["pid_changes"])
        criteria = evaluate(generations, memory, restarts, limits)
        memory_lines = memory_thresholds(client, url, apps_after)

    passed = all(c.passed for c in criteria)
    report = {
        "passed": passed,
        "failing": [c.name for c in criteria if not c.passed],
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": shlex.join([sys.argv[0], *sys.argv[1:]]),
        "url": url,
        "backend": args.backend,
        "limits": asdict(limits),
        "criteria": [asdict(c) for c in criteria],
        "generations": [asdict(g) for g in generations],
        "memory": memory,
        "memory_thresholds_gb": memory_lines,
        "pm2_apps": {"before": [asdict(a) for a in apps_before], "after": [asdict(a) for a in apps_after]},
        "restarts": restarts,
        "memory_samples": sampler.samples,
    }
    write_json(report_dir / "report.json", report)
    write_bytes_atomic(report_dir / "report.md", render_markdown(clean(report)).encode())
    plot_report(report_dir / "report.png", sampler.samples, generations, memory_lines, limits)
    print_summary(generations, criteria, report_dir)
    return 0 if passed else 1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="test_phase1_fixes.sh",
        description="Phase-1 smoke test: (re)start splatgen under PM2, run generations through the front end "
        "like the 404 miner, measure every output and the memory of every PM2 process, and judge.",
        epilog="Exit status: 0 PASS, 1 FAIL (the failing criteria are printed), 2 the test could not run.",
    )
    service = parser.add_argument_group("service")
    service.add_argument(
        "--url",
        help="front end URL (default: from SPLATGEN_FRONT_HOST/SPLATGEN_FRONT_PORT, "
        "else http://127.0.0.1:8093)",
    )
    service.add_argument(
        "--backend",
        choices=("procedural", "trellis"),
        default="procedural",
        help="worker backend to (re)start with (default: %(default)s)",
    )
    service.add_argument(
        "--no-restart",
        action="store_true",
        help="test the service already running at --url instead of (re)starting it",
    )
    service.add_argument(
        "--start-timeout",
        type=_positive_int,
        help="seconds to wait for /health (default: 120 procedural, 900 trellis)",
    )
    service.add_argument(
        "--pm2",
        type=Path,
        default=DEFAULT_PM2,
        help="the pm2 binary (PM2_HOME from the environment) (default: %(default)s)",
    )
    run_group = parser.add_argument_group("run")
    run_group.add_argument(
        "--prompts",
        type=Path,
        default=DEFAULT_PROMPTS,
        help="text prompts, one per line (default: %(default)s)",
    )
    run_group.add_argument(
        "--generations", type=_positive_int, default=20, help="generations in all (default: %(default)s)"
    )
    run_group.add_argument(
        "--images",
        type=_non_negative_int,
        default=2,
        help="how many of them are image prompts (a drawn PNG and JPEG, sent as base64) (default: %(default)s)",
    )
    run_group.add_argument(
        "--request-timeout",
        type=float,
        default=300.0,
        help="seconds per request (the miner's aiohttp default is 300) (default: %(default)s)",
    )
    run_group.add_argument(
        "--sample-interval",
        type=float,
        default=0.5,
        help="seconds between memory samples (default: %(default)s)",
    )
    run_group.add_argument(
        "--report-dir", type=Path, help="where the reports go (default: reports/smoke-<time>/)"
    )
    run_group.add_argument(
        "--previews",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="save a 2x2 preview grid PNG per generation (default: on when diagnostics.render is importable)",
    )
    run_group.add_argument(
        "--preview-size",
        type=_positive_int,
        default=64,
        help="pixels per preview view (default: %(default)s)",
    )
    crit = parser.add_argument_group("pass criteria")
    crit.add_argument(
        "--min-opacity-std",
        type=float,
        default=3.0,
        help="lowest opacity logit std allowed (default: %(default)s)",
    )
    crit.add_argument(
        "--max-opacity-std",
        type=float,
        default=9.0,
        help="highest opacity logit std allowed (default: %(default)s)",
    )
    crit.add_argument(
        "--std-preserve-tolerance",
        type=float,
        default=0.02,
        help="largest relative change of the opacity std where the fixer triggered (default: %(default)s)",
    )
    crit.add_argument(
        "--max-memory-gb",
        type=float,
        default=14.0,
        help="peak RSS of any one PM2 process must stay under this (default: %(default)s)",
    )
    crit.add_argument(
        "--min-mean-gaussians",
        type=float,
        default=350_000,
        help="mean gaussian count must exceed this (default: %(default)s)",
    )
    crit.add_argument(
        "--max-seconds",
        type=float,
        default=35.0,
        help="every generation must take less than this (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.sample_interval <= 1:
        parser.error("--sample-interval must be above 0 and at most 1 second")
    if args.start_timeout is None:
        # TRELLIS loads several GB of weights before /health turns green.
        args.start_timeout = 900 if args.backend == "trellis" else 120
    return args


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except SmokeError as exc:
        print(f"smoke test could not run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("smoke test interrupted", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
