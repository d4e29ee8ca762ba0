"""The two rooms: the front end imports nothing from the worker, the worker nothing from the front end, and
the contract between them neither; the front end's process never loads the worker's modules or torch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "generation"
# Over this many lines a module must say at its top why it is that long.
MODULE_LINES = 300


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def room_files(room: str) -> list[Path]:
    return sorted((PACKAGE / room).rglob("*.py"))


@pytest.mark.parametrize(("room", "other"), [("front", "generation.worker"), ("worker", "generation.front")])
def test_a_room_imports_nothing_from_the_other(room: str, other: str) -> None:
    files = room_files(room)
    assert len(files) >= 5
    crossings = {
        f"{path.relative_to(PACKAGE)} -> {name}"
        for path in files
        for name in imported_modules(path)
        if name == other or name.startswith(other + ".")
    }
    assert crossings == set()


def test_the_shared_modules_import_neither_room() -> None:
    shared = [p for p in PACKAGE.glob("*.py") if p.stem not in {"cli", "gpu_check", "serve_competitive",
                                                                 "serve_trellis", "testing"}]  # fmt: skip
    assert {p.stem for p in shared} >= {"contract", "errors", "http_common", "prompts", "settings"}
    crossings = {
        f"{path.name} -> {name}"
        for path in shared
        for name in imported_modules(path)
        if name.startswith(("generation.front", "generation.worker"))
    }
    assert crossings == set()


def test_the_front_end_process_loads_no_worker_module_and_no_torch() -> None:
    code = (
        "import json, sys\n"
        "from generation.serve_competitive import create_app\n"
        "from generation.settings import FrontSettings\n"
        "create_app(FrontSettings())\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('generation.'))))\n"
        "print(json.dumps(sorted(m for m in ('torch', 'torchvision', 'trellis') if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    generation_modules, heavy = (json.loads(line) for line in done.stdout.splitlines()[-2:])
    assert "generation.front.app" in generation_modules
    assert [m for m in generation_modules if m.startswith("generation.worker")] == []
    assert heavy == []


def test_every_long_module_says_why_at_its_top() -> None:
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) <= MODULE_LINES:
            continue
        docstring = ast.get_docstring(ast.parse("\n".join(lines))) or ""
        if "long because" not in docstring.lower():
            unexplained.append(f"{path.relative_to(PACKAGE)} ({len(lines)} lines)")
    assert unexplained == []
