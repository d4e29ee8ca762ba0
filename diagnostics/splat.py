"""The Splat container: one numpy structured array with the 3DGS column names."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

from diagnostics.ply_io import REQUIRED_PROPERTIES, PlyFormatError, float_dtype, read_ply, write_ply

# The column order TRELLIS's save_ply writes (normals included, SH degree 0).
STANDARD_COLUMNS: tuple[str, ...] = (
    "x", "y", "z", "nx", "ny", "nz",
    "f_dc_0", "f_dc_1", "f_dc_2",
    "opacity",
    "scale_0", "scale_1", "scale_2",
    "rot_0", "rot_1", "rot_2", "rot_3",
)  # fmt: skip

SH_C0 = 0.28209479177387814


class Splat:
    """Gaussians stored pre-activation, exactly as in a 3DGS PLY (logit opacity, log scale, wxyz rotation)."""

    __slots__ = ("data",)

    def __init__(self, data: np.ndarray) -> None:
        names = data.dtype.names
        if names is None or data.ndim != 1:
            raise TypeError("Splat needs a one-dimensional structured array")
        missing = [p for p in REQUIRED_PROPERTIES if p not in names]
        if missing:
            raise PlyFormatError(f"missing required properties: {', '.join(missing)}")
        self.data = data

    @classmethod
    def from_ply_bytes(cls, data: bytes | bytearray | memoryview) -> Splat:
        """Parse PLY bytes; the binary float32 layout is a zero-copy view of ``data`` (writable if ``data`` is)."""
        return cls(read_ply(data))

    def to_ply_bytes(self) -> bytes:
        return write_ply(self.data)

    @classmethod
    def from_columns(cls, columns: Mapping[str, ArrayLike]) -> Splat:
        """Build a splat from named 1-D columns (missing normals become zeros)."""
        if not columns:
            raise ValueError("no columns given")
        names = list(columns)
        if "nx" not in columns and "x" in columns:
            names = [n for n in STANDARD_COLUMNS if n in columns or n in ("nx", "ny", "nz")]
            names += [n for n in columns if n not in names]
        arrays = {n: np.asarray(columns[n], dtype=np.float32) for n in columns}
        count = len(next(iter(arrays.values())))
        out = np.zeros(count, dtype=float_dtype(names))
        for name, values in arrays.items():
            if values.shape != (count,):
                raise ValueError(f"column {name!r} has shape {values.shape}, expected ({count},)")
            out[name] = values
        return cls(out)

    @classmethod
    def empty(cls, count: int, names: tuple[str, ...] = STANDARD_COLUMNS) -> Splat:
        return cls(np.zeros(count, dtype=float_dtype(names)))

    @property
    def names(self) -> tuple[str, ...]:
        return self.data.dtype.names or ()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.data[name]

    def with_column(self, name: str, values: ArrayLike) -> Splat:
        """A copy with one column replaced; the original (possibly a read-only view) is untouched."""
        out = _copy_records(self.data)
        out[name] = values
        return Splat(out)

    def select(self, mask: np.ndarray) -> Splat:
        data = self.data
        if not data.flags.c_contiguous or np.asarray(mask).dtype != bool:
            return Splat(data[mask])
        # Whole records as byte rows: numpy copies structured records field by field, ~10x slower.
        rows = data.view(np.uint8).reshape(len(data), data.dtype.itemsize)[mask]
        return Splat(rows.view(data.dtype).reshape(len(rows)))

    def stack(self, names: tuple[str, ...]) -> np.ndarray:
        """Columns side by side as an (N, len(names)) float32 array (a copy)."""
        out = np.empty((len(self.data), len(names)), dtype=np.float32)
        for i, name in enumerate(names):
            out[:, i] = self.data[name]
        return out

    @property
    def positions(self) -> np.ndarray:
        return self.stack(("x", "y", "z"))

    @property
    def colors(self) -> np.ndarray:
        """Base colour in [0, 1]: 0.5 + C0 * f_dc, clipped, as the validator's loader does."""
        return np.clip(0.5 + SH_C0 * self.stack(("f_dc_0", "f_dc_1", "f_dc_2")), 0.0, 1.0)

    def __repr__(self) -> str:
        return f"Splat({len(self)} gaussians, {len(self.names)} columns)"


def _copy_records(data: np.ndarray) -> np.ndarray:
    """A writable copy; contiguous records are copied as raw bytes (numpy copies structured arrays per field)."""
    if not data.flags.c_contiguous:
        return data.copy()
    return data.view(np.uint8).copy().view(data.dtype).reshape(len(data))
