"""The ``ply`` commands, run in-process through typer's runner and as ``python -m diagnostics.cli``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from diagnostics.atomic import write_bytes_atomic
from diagnostics.cli import ply_app
from diagnostics.ply_fixer import DEFAULT_TARGET
from diagnostics.splat import Splat

MakeSplat = Callable[..., Splat]
REPO_ROOT = Path(__file__).resolve().parents[1]

runner = CliRunner()


def run(*args: str, columns: int = 200) -> tuple[int, str, str]:
    result = runner.invoke(ply_app, list(args), env={"COLUMNS": str(columns)})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def opacity_logits(ply: bytes) -> np.ndarray:
    """The raw opacity column in float64: a reference independent of the stats the CLI reports."""
    return Splat.from_ply_bytes(ply)["opacity"].astype(np.float64)


@pytest.fixture
def plys(tmp_path: Path, make_splat: MakeSplat) -> dict[str, Path]:
    """A folder tree: a healthy splat, a faint one in a subfolder, a tiny one, and garbage."""
    nested = tmp_path / "set" / "nested"
    nested.mkdir(parents=True)
    files = {
        "healthy": tmp_path / "set" / "healthy.ply",
        "faint": nested / "faint.PLY",
        "tiny": tmp_path / "tiny.ply",
        "garbage": tmp_path / "garbage.ply",
    }
    files["healthy"].write_bytes(make_splat(8_000, seed=1).to_ply_bytes())
    files["faint"].write_bytes(make_splat(8_000, seed=2, opacity_mean=-11.0, opacity_std=2.0).to_ply_bytes())
    files["tiny"].write_bytes(make_splat(50, seed=3).to_ply_bytes())
    files["garbage"].write_bytes(b"ply\nthis is not a header\n\x00\x01")
    (tmp_path / "set" / "notes.txt").write_text("not a ply")
    return files


def test_analyze_a_folder_recursively_as_json(plys: dict[str, Path]) -> None:
    code, out, _ = run("analyze", str(plys["healthy"].parent), "--json")
    assert code == 0
    document = json.loads(out)
    paths = [Path(f["path"]).name for f in document["files"]]
    assert paths == ["healthy.ply", "faint.PLY"]
    assert document["errors"] == []
    summary = document["summary"]
    assert summary["files"] == 2 and summary["count"] == 16_000
    # Independently of the stats module: the float64 mean of the raw opacity column.
    faint = opacity_logits(plys["faint"].read_bytes())
    assert document["files"][1]["stats"]["opacity"]["mean"] == pytest.approx(faint.mean(), rel=1e-9)
    assert summary["opacity_mean"] < 0


def test_analyze_prints_a_table_with_a_summary_row(plys: dict[str, Path]) -> None:
    code, out, _ = run("analyze", str(plys["healthy"]), str(plys["tiny"]))
    assert code == 0
    assert "healthy.ply" in out and "tiny.ply" in out
    assert "total: 2 files" in out and "8,050" in out


def test_analyze_reports_unreadable_files_with_exit_2(plys: dict[str, Path], tmp_path: Path) -> None:
    code, out, err = run("analyze", str(plys["healthy"]), str(plys["garbage"]), str(tmp_path / "missing.ply"))
    assert code == 2
    assert "healthy.ply" in out
    assert "garbage.ply" in err and "missing.ply" in err
    assert "Traceback" not in out + err
    code, out, _ = run("analyze", str(plys["garbage"]), "--json")
    assert code == 2
    assert json.loads(out)["errors"][0]["error"].startswith("not a readable splat PLY")


def test_check_exit_codes(plys: dict[str, Path]) -> None:
    assert run("check", str(plys["healthy"]))[0] == 0
    code, out, _ = run("check", str(plys["healthy"]), str(plys["tiny"]))
    assert code == 1
    failures = [line for line in out.splitlines() if line.startswith("fail")]
    assert failures == [line for line in out.splitlines() if "tiny.ply" in line]
    assert len(failures) == 1 and "too_few_gaussians" in failures[0]
    code, out, err = run("check", str(plys["tiny"]), str(plys["garbage"]))
    assert code == 2
    assert "Traceback" not in out + err
    assert "garbage.ply" in err


def test_check_prints_one_line_per_failure(tmp_path: Path) -> None:
    data = np.zeros(10, dtype=Splat.empty(0).data.dtype)
    data["rot_0"] = 1.0
    data["opacity"] = -20.0
    data["x"][0] = np.nan
    path = tmp_path / "broken.ply"
    path.write_bytes(Splat(data).to_ply_bytes())
    code, out, _ = run("check", str(path), columns=40)  # long lines are not wrapped, even when narrow
    assert code == 1
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 4
    assert {line.split(": ")[1] for line in lines} == {
        "non_finite",
        "too_few_gaussians",
        "mostly_transparent",
        "identity_rotations",
    }


def test_check_json_and_options(plys: dict[str, Path]) -> None:
    code, out, _ = run("check", str(plys["tiny"]), "--json", "--min-gaussians", "50")
    assert code == 0
    document = json.loads(out)
    assert document["passed"] is True and document["files"][0]["failures"] == []
    code, out, _ = run("check", str(plys["healthy"]), "--json", "--degenerate-min", "9000")
    assert code == 1
    assert [f["code"] for f in json.loads(out)["files"][0]["failures"]] == ["degenerate_count"]
    code, out, _ = run("check", str(plys["garbage"]), "--json")
    assert code == 2
    assert json.loads(out)["passed"] is False


def test_fix_to_a_new_file_leaves_the_input_identical(plys: dict[str, Path], tmp_path: Path) -> None:
    source = plys["faint"]
    original = source.read_bytes()
    out_path = tmp_path / "fixed.ply"
    code, out, _ = run("fix", str(source), "-o", str(out_path), "--json")
    assert code == 0
    assert source.read_bytes() == original
    document = json.loads(out)
    assert document["written"] is True and document["report"]["faint"] is True
    fixed, raw = opacity_logits(out_path.read_bytes()), opacity_logits(original)
    assert fixed.mean() == pytest.approx(DEFAULT_TARGET, abs=1e-5)
    assert fixed.std() == pytest.approx(raw.std(), abs=1e-5)
    assert document["report"]["std_before"] == pytest.approx(raw.std(), rel=1e-9)
    assert run("check", str(out_path))[0] == 0


def test_fix_options_and_table(plys: dict[str, Path], tmp_path: Path) -> None:
    out_path = tmp_path / "fixed.ply"
    code, out, _ = run("fix", str(plys["faint"]), "-o", str(out_path), "--trigger", "-12", "--target", "-11")
    assert code == 0
    assert "opacity healthy" in out and "written" in out
    code, _, err = run("fix", str(plys["faint"]), "-o", str(out_path), "--trigger", "-1", "--target", "-2")
    assert code == 2 and "below trigger" in err


def test_fix_in_place(plys: dict[str, Path]) -> None:
    healthy = plys["healthy"]
    before = healthy.read_bytes()
    stamp = healthy.stat().st_mtime_ns
    code, out, _ = run("fix", str(healthy), "--in-place")
    assert code == 0 and "not rewritten" in out
    assert healthy.read_bytes() == before and healthy.stat().st_mtime_ns == stamp

    faint = plys["faint"]
    os.chmod(faint, 0o640)
    code, _, _ = run("fix", str(faint), "--in-place")
    assert code == 0
    assert opacity_logits(faint.read_bytes()).mean() == pytest.approx(DEFAULT_TARGET, abs=1e-5)
    assert faint.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in faint.parent.iterdir()) == ["faint.PLY"]


def test_fix_needs_exactly_one_destination(plys: dict[str, Path], tmp_path: Path) -> None:
    source = plys["faint"]
    code, _, err = run("fix", str(source))
    assert code == 2 and "exactly one" in err
    code, _, err = run("fix", str(source), "--in-place", "-o", str(tmp_path / "x.ply"))
    assert code == 2
    code, _, err = run("fix", str(source), "-o", str(source))
    assert code == 2 and "--in-place" in err


def test_failing_fix_leaves_no_output_file(plys: dict[str, Path], tmp_path: Path) -> None:
    out_path = tmp_path / "out.ply"
    code, out, err = run("fix", str(plys["garbage"]), "-o", str(out_path))
    assert code == 2 and not out_path.exists()
    assert "garbage.ply" in err and "Traceback" not in out + err
    code, _, err = run("fix", str(plys["faint"]), "-o", str(tmp_path / "no" / "such" / "dir.ply"))
    assert code == 2 and "cannot write" in err
    assert not (tmp_path / "no").exists()


def test_fix_of_an_all_corrupted_splat_writes_nothing(tmp_path: Path, make_splat: MakeSplat) -> None:
    splat = make_splat(20, seed=4)
    source = tmp_path / "nan.ply"
    source.write_bytes(splat.with_column("z", np.full(20, np.nan, dtype=np.float32)).to_ply_bytes())
    out_path = tmp_path / "out.ply"
    code, _, err = run("fix", str(source), "-o", str(out_path))
    assert code == 1 and "every gaussian is corrupted" in err
    assert not out_path.exists()


def test_failed_rename_leaves_no_output_and_no_temp_file(
    plys: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    code, _, err = run("fix", str(plys["faint"]), "-o", str(out_dir / "fixed.ply"))
    assert code == 2 and "No space left" in err
    assert list(out_dir.iterdir()) == []


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    write_bytes_atomic(target, b"first")
    assert target.read_bytes() == b"first" and target.stat().st_mode & 0o777 == 0o644
    os.chmod(target, 0o600)
    write_bytes_atomic(target, memoryview(b"second version"))
    assert target.read_bytes() == b"second version" and target.stat().st_mode & 0o777 == 0o600
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    write_bytes_atomic(link, b"through the link")
    assert link.is_symlink() and target.read_bytes() == b"through the link"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "link.bin"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def crash(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_real_file_through_the_cli(real_ply_path: Path, tmp_path: Path) -> None:
    assert run("check", str(real_ply_path))[0] == 0
    out_path = tmp_path / "hamburger.ply"
    code, out, _ = run("fix", str(real_ply_path), "-o", str(out_path), "--json")
    assert code == 0 and json.loads(out)["report"]["fixed"] is False
    assert out_path.read_bytes() == real_ply_path.read_bytes()


def _module(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "diagnostics.cli", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "120"},
    )


def test_module_entry_point_exit_codes_and_clean_errors(plys: dict[str, Path]) -> None:
    garbage = _module("check", str(plys["garbage"]))
    assert garbage.returncode == 2
    assert "Traceback" not in garbage.stdout + garbage.stderr
    assert "garbage.ply" in garbage.stderr
    passing = _module("check", "--json", str(plys["healthy"]))
    assert passing.returncode == 0 and json.loads(passing.stdout)["passed"] is True
    failing = _module("check", str(plys["tiny"]))
    assert failing.returncode == 1 and "too_few_gaussians" in failing.stdout


@pytest.mark.parametrize("command", [[], ["analyze"], ["fix"], ["check"]])
def test_every_command_has_help(command: list[str]) -> None:
    code, out, _ = run(*command, "--help")
    assert code == 0
    assert "Usage" in out and len(out.splitlines()) > 5
