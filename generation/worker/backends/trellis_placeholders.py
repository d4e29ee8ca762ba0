"""Stand-ins for modules TRELLIS imports on the Gaussian path but only mesh output ever calls.

``import trellis.pipelines`` imports ``open3d`` (the text pipeline's voxelisation helpers, evaluated in an
annotation), ``utils3d`` (the Gaussian model's PLY save/load, which splatgen replaces) and FlexiCubes (a git
submodule the PyPI packaging lacks, built only by the mesh decoder). None of them runs for Gaussian output, so
where one is missing a placeholder module takes its place: attribute lookups succeed, and any call raises one
clear line instead of a bare ``ImportError`` at start-up.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

MESSAGE = "mesh output is not part of this runtime"

# Module name -> the submodules TRELLIS imports from it.
MESH_ONLY_MODULES: dict[str, tuple[str, ...]] = {
    "open3d": (),
    "utils3d": ("torch", "numpy"),
    "trellis.representations.mesh.flexicubes": ("flexicubes",),
}


class MeshOnlyError(RuntimeError):
    """Raised when anything calls into a placeholder."""


class Placeholder:
    """Any attribute is another placeholder; calling one raises ``MeshOnlyError`` naming what was called."""

    def __init__(self, path: str) -> None:
        self._path = path

    def __getattr__(self, name: str) -> Placeholder:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return Placeholder(f"{self._path}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise MeshOnlyError(f"{MESSAGE}: {self._path} was called (only Gaussian output is served)")

    def __repr__(self) -> str:
        return f"<placeholder {self._path}>"


class PlaceholderModule(types.ModuleType):
    def __getattr__(self, name: str) -> Placeholder:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return Placeholder(f"{self.__name__}.{name}")


def is_placeholder(module: Any) -> bool:
    return isinstance(module, PlaceholderModule)


def _importable(name: str) -> bool:
    if name in sys.modules:
        return sys.modules[name] is not None
    top, _, rest = name.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    if spec is None or not rest:
        return spec is not None
    # Looked up on disk: find_spec of a submodule would run the parent packages' __init__ (TRELLIS's
    # imports everything, before its choices are made).
    for root in spec.submodule_search_locations or ():
        base = Path(root, *rest.split("."))
        if (base / "__init__.py").is_file() or base.with_suffix(".py").is_file():
            return True
    return False


def install_placeholders(names: tuple[str, ...] | None = None) -> list[str]:
    """Register a placeholder for each mesh-only module that cannot be imported; returns those registered."""
    installed: list[str] = []
    for name in names or tuple(MESH_ONLY_MODULES):
        if _importable(name):
            continue
        module = PlaceholderModule(name, f"placeholder: {MESSAGE}")
        module.__path__ = []  # a package, so `from name.sub import x` resolves to the registered submodules
        sys.modules[name] = module
        for sub in MESH_ONLY_MODULES.get(name, ()):
            child = PlaceholderModule(f"{name}.{sub}", f"placeholder: {MESSAGE}")
            sys.modules[child.__name__] = child
            setattr(module, sub, child)
        installed.append(name)
    return installed
