"""Splat diagnostics: PLY I/O, statistics, the opacity fixer, quality gates, previews (numpy only)."""

from diagnostics.ply_io import PlyFormatError, read_ply, write_ply
from diagnostics.splat import STANDARD_COLUMNS, Splat

__all__ = ["STANDARD_COLUMNS", "PlyFormatError", "Splat", "read_ply", "write_ply"]
