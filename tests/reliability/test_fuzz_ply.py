"""Fuzz the PLY reader with malformed bytes: only PlyFormatError, never another exception, never a hang.

Inputs are mutations of valid PLYs (the fast binary layout, the plyfile paths: ASCII and big-endian, and
the real hamburger.ply's header when present): truncation, byte flips in the header and the body, header
lines replaced or inserted, huge / negative / non-numeric counts, and headers built from random tokens.
Every example runs under a SIGALRM bound, so a hang fails the example instead of stalling the suite.
The front end's own entry point (``check_result``, documented as never raising on bad bytes) gets the
same inputs.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from plyfile import PlyData, PlyElement

from diagnostics import PlyFormatError, Splat
from diagnostics.ply_io import float_dtype, read_ply
from generation.front.result_check import check_result
from generation.settings import FrontSettings

LONG = os.environ.get("SPLATGEN_LONG_TESTS") == "1"
EXAMPLES = 3000 if LONG else 250
# Generous: a well-behaved rejection takes microseconds; only a hang or a runaway allocation gets near it.
PER_EXAMPLE_S = 5
HAMBURGER = Path(__file__).resolve().parents[3] / "shared" / "data" / "real" / "hamburger.ply"
SETTINGS = FrontSettings(workers=["http://127.0.0.1:9"])
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

COLUMNS = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
           "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")  # fmt: skip
HEADER_TOKENS = (
    "ply", "format", "binary_little_endian", "binary_big_endian", "ascii", "1.0", "element", "vertex", "face",
    "property", "float", "double", "uchar", "int", "list", "comment", "obj_info", "end_header", "x", "opacity",
    "-1", "0", "7", "4294967296", "99999999999999999999", "1e9", "nan", "\t", "\r", "\x00", "\xff", "é",
)  # fmt: skip


class ExampleTimeout(Exception):
    pass


@contextlib.contextmanager
def bounded(seconds: int) -> Iterator[None]:
    """Fail the example (not the whole run) when it takes longer than ``seconds``."""

    def on_alarm(signum: int, frame: object) -> None:
        raise ExampleTimeout(f"a single example ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _records(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = np.zeros(n, dtype=float_dtype(COLUMNS))
    for name in COLUMNS:
        arr[name] = rng.normal(0, 1, n)
    return arr


def _plyfile_bytes(arr: np.ndarray, text: bool, byte_order: str) -> bytes:
    buf = io.BytesIO()
    PlyData([PlyElement.describe(arr, "vertex")], text=text, byte_order=byte_order).write(buf)
    return buf.getvalue()


def _seeds() -> list[bytes]:
    arr = _records(40, 0)
    seeds = [
        Splat(arr).to_ply_bytes(),
        _plyfile_bytes(arr[:12], text=True, byte_order="="),
        _plyfile_bytes(arr[:20], text=False, byte_order=">"),
        Splat(_records(30, 1)[list(COLUMNS[:3] + COLUMNS[6:])]).to_ply_bytes(),
    ]
    if HAMBURGER.is_file():
        # The real file's header over its first rows: the layout a real miner output has.
        real = HAMBURGER.read_bytes()
        end = real.index(b"end_header\n") + len(b"end_header\n")
        records = read_ply(real)
        rows = 25
        header = real[:end].replace(
            f"element vertex {len(records)}\n".encode(), f"element vertex {rows}\n".encode()
        )
        seeds.append(header + real[end : end + rows * records.dtype.itemsize])
    return seeds


SEEDS = _seeds()


def must_only_raise_ply_format_error(data: bytes) -> None:
    """The property under test, for the reader and for the front end's result check."""
    with bounded(PER_EXAMPLE_S):
        try:
            records = read_ply(data)
        except PlyFormatError as exc:
            assert str(exc), "a PlyFormatError must say why"
            event(f"rejected: {' '.join(str(exc).split()[:2])}")
        else:
            event("accepted")
            assert records.dtype.names is not None
            Splat(records)  # the required columns are there when the reader accepted the bytes
        result = check_result(data, SETTINGS)
    if result.ok:
        # Whatever the front end would serve parses back, with the count it reports.
        assert len(Splat.from_ply_bytes(result.ply)) == result.gaussians


def _header_end(data: bytes) -> int:
    at = data.find(b"end_header")
    return at if at > 0 else len(data) // 2


@FUZZ
@given(st.sampled_from(SEEDS), st.data())
def test_truncated_plys(seed: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(seed) - 1))
    must_only_raise_ply_format_error(seed[:cut])


@FUZZ
@given(st.sampled_from(SEEDS), st.data(), st.booleans())
def test_byte_flips(seed: bytes, data: st.DataObject, in_header: bool) -> None:
    end = _header_end(seed)
    lo, hi = (0, end + 11) if in_header else (min(end + 11, len(seed) - 1), len(seed) - 1)
    mutated = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(lo, hi))
        mutated[at] ^= data.draw(st.integers(1, 255))
    must_only_raise_ply_format_error(bytes(mutated))


@FUZZ
@given(st.sampled_from(SEEDS), st.data())
def test_header_lines_replaced_or_inserted(seed: bytes, data: st.DataObject) -> None:
    end = _header_end(seed)
    lines = seed[:end].split(b"\n")
    junk = data.draw(st.lists(st.sampled_from(HEADER_TOKENS), min_size=0, max_size=6)).copy()
    line = " ".join(junk).encode("utf-8", "surrogatepass")
    at = data.draw(st.integers(0, len(lines)))
    if data.draw(st.booleans()) and at < len(lines):
        lines[at] = line
    else:
        lines.insert(at, line)
    must_only_raise_ply_format_error(b"\n".join(lines) + seed[end:])


@FUZZ
@given(
    st.sampled_from(SEEDS),
    st.one_of(
        st.integers(-(2**70), 2**70).map(str),
        st.sampled_from(
            ["10485761", "4294967295", "18446744073709551616", "-0", "0x10", "1e6", "", "nan", "٣"]
        ),
    ),
)
def test_huge_and_odd_vertex_counts(seed: bytes, count: str) -> None:
    head, sep, rest = seed.partition(b"element vertex ")
    _, newline, tail = rest.partition(b"\n")
    must_only_raise_ply_format_error(head + sep + count.encode() + newline + tail)


@FUZZ
@given(
    st.lists(st.lists(st.sampled_from(HEADER_TOKENS), max_size=5), max_size=25),
    st.binary(max_size=512),
)
def test_random_headers(lines: list[list[str]], body: bytes) -> None:
    header = "\n".join(["ply", *(" ".join(words) for words in lines), "end_header", ""])
    must_only_raise_ply_format_error(header.encode("utf-8", "surrogatepass") + body)


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    must_only_raise_ply_format_error(data)


@pytest.mark.parametrize("seed_index", range(len(SEEDS)))
def test_every_seed_is_a_valid_ply(seed_index: int) -> None:
    """The mutations start from PLYs the reader accepts, so a rejection is the mutation's doing."""
    assert len(read_ply(SEEDS[seed_index])) > 0
