"""The operator scripts set themselves up: the smoke test creates .venv when it is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from generation.testing import REPO

FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python3.11 creating a venv (no download, no install): the new venv's python runs the
# test environment's interpreter, where splatgen is installed already.
set -euo pipefail
[[ "$1 $2" == "-m venv" ]] || exit 3
mkdir -p "$3/bin"
printf '#!/usr/bin/env bash\\nexec %s "$@"\\n' "{python}" > "$3/bin/python"
printf '#!/usr/bin/env bash\\nexec %s -m generation.cli "$@"\\n' "{python}" > "$3/bin/splatgen"
chmod +x "$3/bin/python" "$3/bin/splatgen"
echo "$@" >> "$(dirname "$0")/venv-calls"
"""


def test_smoke_script_sets_up_a_missing_venv_instead_of_stopping(tmp_path: Path) -> None:
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "scripts", root / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    tools = tmp_path / "tools"
    tools.mkdir()
    fake = tools / "python3.11"
    fake.write_text(FAKE_PYTHON.replace("{python}", sys.executable))
    fake.chmod(0o755)
    env = {"PATH": f"{tools}:/usr/bin:/bin", "HOME": str(tmp_path)}
    env.update({k: v for k, v in os.environ.items() if k == "LANG"})
    done = subprocess.run(["bash", str(root / "scripts" / "test_phase1_fixes.sh"), "--help"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Creating the virtual environment in .venv" in done.stdout
    assert (tools / "venv-calls").read_text().split() == ["-m", "venv", str(root / ".venv")]
    assert (root / ".venv" / "bin" / "python").is_file()
    assert "--report-dir" in done.stdout  # the smoke test itself ran and printed its help


def test_smoke_script_without_any_python_cannot_run(tmp_path: Path) -> None:
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "scripts", root / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PATH": "/usr/bin:/bin", "PYTHON": "python-missing-here"}
    done = subprocess.run(["/bin/bash", str(root / "scripts" / "test_phase1_fixes.sh")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert "test_phase1_fixes.sh: python-missing-here not found" in done.stderr
