"""The GPU self-check: TRELLIS's real code, random weights, the real worker and front end, timed per stage.

``python -m generation.gpu_check`` (or ``scripts/gpu_check.sh``):
1. builds random-weight models of the released architectures (``--size full``; ``tiny`` for a CPU run) with the
   sparse-structure decoder calibrated to ~12,500 occupied voxels (``trellis_models``), in offline caches;
2. starts ``splatgen worker`` (TRELLIS, portable runtime) and ``splatgen front`` on free loopback ports;
3. sends miner-style generations (text through ``/generate/``, an image as base64) at each step setting
   (default 60/50 and 25/25) through ``/v1/generate``, reading after each the worker's seconds per stage
   (``/health``), GPU memory (``/memory``: allocated, reserved, peak) and RSS, and the PLY's gaussian count;
4. writes ``report.json`` and prints a table. Every wait has a deadline (``--deadline``, default 450 s in all):
   past it the services are stopped and the report says what did not finish. Nothing needs the network when
   the models are built offline; ``--dinov2-hub DIR`` uses the real facebookresearch/dinov2 hub code (a local
   copy) with random weights instead of the stand-in ViT of the same width and depth.

Long because it is one operator script, read top to bottom: building, starting, timing and reporting.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

DEFAULT_STEPS = ((60, 50), (25, 25))
DEFAULT_DEADLINE_S = 450.0
TEXT_PROMPT = "a red ceramic teapot with a curved spout"


@dataclass
class CheckReport:
    """What one run measured; ``finished`` is False when the deadline stopped it."""

    device: str
    size: str
    build_seconds: float = 0.0
    calibrated_voxels: float = 0.0
    worker_start_seconds: float = 0.0
    runtime: dict[str, Any] = field(default_factory=dict)
    gpu_after_load: dict[str, int] | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    error: str | None = None

    def table(self) -> str:
        header = (
            "| prompt | ss/slat steps | seconds | gaussians | "
            + " | ".join(_STAGE_COLUMNS)
            + " | peak VRAM GiB | RSS GiB |"
        )
        lines = [header, "|" + "---|" * (header.count("|") - 1)]
        for run in self.runs:
            stages = run.get("stages", {})
            cells = [
                run["prompt"],
                f"{run['ss_steps']}/{run['slat_steps']}",
                f"{run['seconds']:.2f}",
                f"{run['gaussians']:,}",
                *(f"{stages[s]:.2f}" if s in stages else "-" for s in _STAGE_COLUMNS),
                _gib(run.get("gpu_peak_bytes")),
                _gib(run.get("worker_rss_bytes")),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


_STAGE_COLUMNS = (
    "conditioning",
    "ss_sampling",
    "ss_decoding",
    "slat_sampling",
    "gaussian_decoding",
    "conversion",
)


def _gib(value: Any) -> str:
    return "-" if value is None else f"{value / 1024**3:.2f}"


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("the check's deadline passed")
        return left


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _service(kind: str, env: dict[str, str], log_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = _free_port()
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "generation.cli", kind, "--port", str(port)],
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(15)
        log.close()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], deadline: Deadline, log_path: Path) -> None:
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{url} exited with {proc.returncode}: {tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=min(5.0, deadline.left())).status_code == 200:
                return
        time.sleep(min(0.5, deadline.left()))


def _image_prompt() -> str:
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (512, 512), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((96, 96, 416, 416), fill=(200, 120, 60, 255))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def _vertex_count(ply: bytes) -> int:
    header = ply[: ply.find(b"end_header")].decode("ascii", errors="replace")
    for line in header.splitlines():
        if line.startswith("element vertex"):
            return int(line.split()[2])
    raise ValueError("the PLY has no vertex element")


def run_check(
    work: Path,
    *,
    size: str,
    device: str,
    steps: tuple[tuple[int, int], ...] = DEFAULT_STEPS,
    deadline_s: float = DEFAULT_DEADLINE_S,
    dinov2_hub: Path | None = None,
    text: bool = True,
    warmup_steps: int = 4,
) -> CheckReport:
    """Build, serve, generate and measure; never raises past the deadline, the report says what happened."""
    report = CheckReport(device=device, size=size)
    deadline = Deadline(deadline_s)
    try:
        _run(report, work, size, device, steps, deadline, dinov2_hub, text, warmup_steps)
        report.finished = True
    except Exception as exc:
        report.error = f"{type(exc).__name__}: {exc}"
    (work / "report.json").write_text(json.dumps(report.__dict__, indent=2))
    return report


def _build(work: Path, size: str, device: str, dinov2_hub: Path | None, text: bool) -> Any:
    from generation.settings import WorkerSettings
    from generation.worker.backends.trellis_models import build_model_caches, write_dinov2_from_hub_code
    from generation.worker.backends.trellis_runtime import import_trellis, prepare

    import_trellis(prepare(WorkerSettings(backend="trellis", trellis_device=device)))
    caches = build_model_caches(work / "models", size, device=device, text=text)  # type: ignore[arg-type]
    if dinov2_hub is not None:
        write_dinov2_from_hub_code(caches.torch_home, dinov2_hub)
    return caches


def build_models(
    work: Path, size: str, device: str, deadline: Deadline, dinov2_hub: Path | None = None, text: bool = True
) -> dict[str, Any]:
    """Random-weight models under ``work/models``; returns their environment and calibrated voxel count."""
    # In a child process: building imports TRELLIS with its choices fixed, and holds memory the check must not.
    build = subprocess.run(
        [sys.executable, "-m", "generation.gpu_check", "--build-only", "--size", size, "--device", device,
         "--work", str(work), *(["--dinov2-hub", str(dinov2_hub)] if dinov2_hub else []),
         *([] if text else ["--image-only"])],
        capture_output=True, text=True, timeout=deadline.left(),
    )  # fmt: skip
    if build.returncode != 0:
        raise RuntimeError(f"building the models failed: {build.stderr[-2000:]}")
    return dict(json.loads((work / "models" / "built.json").read_text()))


def worker_environment(built: dict[str, Any], device: str, warmup_steps: int, text: bool) -> dict[str, str]:
    """The worker's environment for built models: TRELLIS on ``device``, warmed up before it reports healthy."""
    env = {
        **built["environment"],
        "SPLATGEN_BACKEND": "trellis",
        "SPLATGEN_TRELLIS_DEVICE": device,
        "SPLATGEN_TRELLIS_WARMUP": "true",
        "SPLATGEN_TRELLIS_WARMUP_STEPS": str(warmup_steps),
    }
    if not text:
        env["SPLATGEN_TRELLIS_TEXT_MODEL"] = "none"
    return env


def _run(
    report: CheckReport,
    work: Path,
    size: str,
    device: str,
    steps: tuple[tuple[int, int], ...],
    deadline: Deadline,
    dinov2_hub: Path | None,
    text: bool,
    warmup_steps: int,
) -> None:
    started = time.perf_counter()
    built = build_models(work, size, device, deadline, dinov2_hub, text)
    report.build_seconds = round(time.perf_counter() - started, 2)
    report.calibrated_voxels = built["calibrated_voxels"]
    env = worker_environment(built, device, warmup_steps, text)
    started = time.perf_counter()
    with _service("worker", env, work / "worker.log") as (worker, worker_proc):
        _wait_healthy(worker, worker_proc, deadline, work / "worker.log")
        report.worker_start_seconds = round(time.perf_counter() - started, 2)
        health = httpx.get(f"{worker}/health", timeout=10).json()
        report.runtime = health["backend"]["runtime"]
        report.gpu_after_load = httpx.get(f"{worker}/memory", timeout=10).json().get("gpu_after_load")
        front_env = {
            "SPLATGEN_WORKERS": worker,
            "SPLATGEN_HISTORY_SIZE": "0",
            "SPLATGEN_WORKER_TIMEOUT_S": "600",
        }
        with _service("front", front_env, work / "front.log") as (front, front_proc):
            _wait_healthy(front, front_proc, deadline, work / "front.log")
            prompts = [("image", {"image_b64": _image_prompt()})]
            if text:
                prompts.insert(0, ("text", {"prompt": TEXT_PROMPT}))
            for ss_steps, slat_steps in steps:
                for kind, body in prompts:
                    report.runs.append(_generate(front, worker, kind, body, ss_steps, slat_steps, deadline))


def _generate(
    front: str,
    worker: str,
    kind: str,
    body: dict[str, Any],
    ss_steps: int,
    slat_steps: int,
    deadline: Deadline,
) -> dict[str, Any]:
    params = {"ss_steps": ss_steps, "slat_steps": slat_steps}
    started = time.perf_counter()
    response = httpx.post(
        f"{front}/v1/generate", json={**body, "seed": 0, "params": params}, timeout=deadline.left()
    )
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(
            f"{kind} {ss_steps}/{slat_steps}: HTTP {response.status_code}: {response.text[:500]}"
        )
    health = httpx.get(f"{worker}/health", timeout=10).json()
    memory = httpx.get(f"{worker}/memory", timeout=10).json()
    gpu = memory.get("gpu") or {}
    return {
        "prompt": kind,
        "ss_steps": ss_steps,
        "slat_steps": slat_steps,
        "seconds": round(seconds, 3),
        "gaussians": _vertex_count(response.content),
        "stages": health["backend"]["last_stage_seconds"],
        "gpu_peak_bytes": gpu.get("peak_allocated_bytes"),
        "gpu_reserved_bytes": gpu.get("reserved_bytes"),
        "worker_rss_bytes": memory.get("rss_bytes"),
    }


def _parse_steps(value: str) -> tuple[tuple[int, int], ...]:
    pairs = []
    for part in value.split(","):
        ss, slat = part.split("/")
        pairs.append((int(ss), int(slat)))
    return tuple(pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m generation.gpu_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--steps", default="60/50,25/25", help="ss/slat step pairs, comma-separated")
    parser.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE_S, help="seconds for everything")
    parser.add_argument("--work", type=Path, default=Path("gpu-check"), help="models, logs and report.json")
    parser.add_argument(
        "--dinov2-hub", type=Path, help="a local copy of facebookresearch/dinov2 (hubconf.py)"
    )
    parser.add_argument("--image-only", action="store_true", help="skip the text pipeline")
    parser.add_argument("--warmup-steps", type=int, default=4, help="sampler steps of the worker's warm-up")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.build_only:
        if (args.work / "models").exists():
            shutil.rmtree(args.work / "models")
        caches = _build(args.work, args.size, args.device, args.dinov2_hub, not args.image_only)
        (args.work / "models" / "built.json").write_text(
            json.dumps({"environment": caches.environment(), "calibrated_voxels": caches.calibrated_voxels})
        )
        return 0
    report = run_check(
        args.work,
        size=args.size,
        device=args.device,
        steps=_parse_steps(args.steps),
        deadline_s=args.deadline,
        dinov2_hub=args.dinov2_hub,
        text=not args.image_only,
        warmup_steps=args.warmup_steps,
    )
    command = " ".join(["python -m generation.gpu_check", *(argv if argv is not None else sys.argv[1:])])
    print(f"$ {command}")
    print(
        f"device {report.device}, size {report.size}: models built in {report.build_seconds:.1f} s "
        f"(~{report.calibrated_voxels:,.0f} voxels calibrated), worker ready in {report.worker_start_seconds:.1f} s"
    )
    print(f"runtime: {report.runtime.get('sparse_conv')} / {report.runtime.get('sparse_attention')}")
    print(f"GPU after load: {_gib((report.gpu_after_load or {}).get('allocated_bytes'))} GiB allocated")
    print(report.table())
    if not report.finished:
        print(f"NOT FINISHED: {report.error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
