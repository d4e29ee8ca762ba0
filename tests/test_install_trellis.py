"""scripts/install_trellis.sh: each step of the portable recipe and its version checks, through --dry-run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from generation.worker.backends.trellis_pinned_files import TRELLIS_COMMIT

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install_trellis.sh"


def dry_run(*args: str, venv: Path, trellis_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), "--dry-run", "--venv", str(venv), "--dir", str(trellis_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("cuda", "index"),
    [("13.0", "cu128"), ("12.8", "cu128"), ("12.6", "cu126"), ("12.4", "cu118"), ("11.8", "cu118")],
)
def test_portable_dry_run_picks_torch_for_the_driver(tmp_path: Path, cuda: str, index: str) -> None:
    done = dry_run("--cuda", cuda, venv=tmp_path / "no-venv", trellis_dir=tmp_path / "TRELLIS")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"[install_trellis] check: driver CUDA {cuda}" in lines
    assert "the venv's torch is missing" in done.stdout
    [torch_step] = [line for line in lines if line.startswith("+") and "torch>=" in line]
    assert f"--index-url https://download.pytorch.org/whl/{index}" in torch_step
    assert any("spconv-triton==1.0.0" in line and "[trellis]" in line for line in lines)
    assert f"+ git -C {tmp_path / 'TRELLIS'} checkout --quiet --detach {TRELLIS_COMMIT}" in lines
    assert not any("submodule" in line for line in lines if line.startswith("+"))
    assert lines[-1] == "[install_trellis] dry run done"
    assert not (tmp_path / "TRELLIS").exists()


def test_portable_keeps_a_cuda_torch_the_driver_runs(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.version.cuda:
        pytest.skip("this venv's torch is a CPU-only build")
    venv = Path(sys.prefix)
    driver = f"{int(torch.version.cuda.split('.')[0]) + 1}.0"
    kept = dry_run("--cuda", driver, venv=venv, trellis_dir=tmp_path / "TRELLIS")
    assert kept.returncode == 0, kept.stderr
    assert f"keeping the venv's torch {torch.__version__.split('+')[0]}" in kept.stdout
    assert not any(line.startswith("+") and "torch>=" in line for line in kept.stdout.splitlines())
    too_old = dry_run("--cuda", "12.0", venv=venv, trellis_dir=tmp_path / "TRELLIS")
    assert "not a CUDA build >= 2.4 this CUDA 12.0 driver runs" in too_old.stdout


def test_a_driver_older_than_any_torch_build_is_refused(tmp_path: Path) -> None:
    done = dry_run("--cuda", "11.4", venv=tmp_path / "v", trellis_dir=tmp_path / "T")
    assert done.returncode == 1
    assert "the driver's CUDA 11.4 is older than any current torch build" in done.stderr


def test_reference_dry_run_describes_trellis_own_recipe(tmp_path: Path) -> None:
    done = dry_run("--runtime", "reference", venv=tmp_path / "v", trellis_dir=tmp_path / "T")
    assert done.returncode == 0, done.stderr
    assert "torch 2.4.0 + torchvision 0.19.0" in done.stdout and "flash-attn 2.6.3" in done.stdout
    assert f"clone TRELLIS at {TRELLIS_COMMIT} with submodules" in done.stdout


def test_unknown_runtime_is_refused(tmp_path: Path) -> None:
    done = dry_run("--runtime", "fast", venv=tmp_path / "v", trellis_dir=tmp_path / "T")
    assert done.returncode == 1
    assert "--runtime must be portable or reference, not fast" in done.stderr
