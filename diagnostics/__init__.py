"""Splat diagnostics: PLY I/O, statistics, the opacity fixer, quality gates, previews (numpy only)."""

from diagnostics.gates import GateFailure, check_splat
from diagnostics.ply_fixer import FixReport, fix_opacity
from diagnostics.ply_io import PlyFormatError, read_ply, write_ply
from diagnostics.splat import STANDARD_COLUMNS, Splat
from diagnostics.stats import SplatStats, splat_stats

__all__ = [
    "STANDARD_COLUMNS",
    "FixReport",
    "GateFailure",
    "PlyFormatError",
    "Splat",
    "SplatStats",
    "check_splat",
    "fix_opacity",
    "read_ply",
    "splat_stats",
    "write_ply",
]
