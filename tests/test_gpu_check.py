"""The GPU self-check in its CPU-sized form: tiny models, the real worker and front end, a report; and its deadline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = {
    "preprocess",
    "conditioning",
    "ss_sampling",
    "ss_decoding",
    "slat_sampling",
    "gaussian_decoding",
    "conversion",
}

pytest.importorskip("torch")


def gpu_check(work: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "generation.gpu_check", "--work", str(work), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cpu_sized_check_reports_every_stage(tmp_path: Path) -> None:
    done = gpu_check(
        tmp_path,
        *("--size", "tiny", "--device", "cpu", "--steps", "2/2", "--image-only", "--warmup-steps", "1"),
        timeout=600,
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert done.returncode == 0, (done.stdout[-3000:], report.get("error"))
    assert report["finished"] is True and report["error"] is None
    assert report["runtime"]["sparse_conv"] == "spconv" and report["runtime"]["device"] == "cpu"
    [run] = report["runs"]
    assert (run["prompt"], run["ss_steps"], run["slat_steps"]) == ("image", 2, 2)
    assert run["gaussians"] >= 7000 and run["gaussians"] % 32 == 0
    assert set(run["stages"]) == STAGES
    assert run["worker_rss_bytes"] > 0
    assert run["gpu_peak_bytes"] is None  # no CUDA here
    assert "$ python -m generation.gpu_check" in done.stdout
    assert "| image | 2/2 |" in done.stdout


def test_a_run_past_its_deadline_stops_and_says_so(tmp_path: Path) -> None:
    done = gpu_check(tmp_path, "--size", "tiny", "--device", "cpu", "--deadline", "3", timeout=120)
    assert done.returncode == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["finished"] is False and "TimeoutExpired" in report["error"]
    assert "NOT FINISHED" in done.stdout
