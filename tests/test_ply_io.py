"""PLY reading and writing: bit-exact round trips, the SPZ header, foreign encodings, malformed input."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plyfile import PlyData, PlyElement

from diagnostics.ply_io import (
    MAX_SPZ_VERTICES,
    REQUIRED_PROPERTIES,
    PlyFormatError,
    float_dtype,
    ply_header_bytes,
    read_ply,
    write_ply,
)
from diagnostics.splat import Splat

OPTIONAL_COLUMNS = ("nx", "ny", "nz", *(f"f_rest_{i}" for i in range(9)), "confidence")

# Bit patterns a float32 column can hold that arithmetic would not preserve: NaN payloads (quiet,
# signalling, negative), infinities, negative zero, subnormals.
SPECIAL_BITS = np.array(
    [
        0x7FC00000,
        0x7FC00001,
        0x7F800001,
        0xFFBFFFFF,
        0x7FFFFFFF,
        0x7F800000,
        0xFF800000,
        0x80000000,
        0x00000001,
    ],
    dtype=np.uint32,
)


@st.composite
def records(draw: st.DrawFn) -> np.ndarray:
    """A structured float32 array: required + random optional columns, random order, random bits."""
    extras = draw(st.lists(st.sampled_from(OPTIONAL_COLUMNS), unique=True, max_size=len(OPTIONAL_COLUMNS)))
    names = draw(st.permutations([*REQUIRED_PROPERTIES, *extras]))
    count = draw(st.integers(0, 60))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, size=(count, len(names)), dtype=np.uint32)
    if count:
        spots = rng.integers(0, bits.size, size=min(bits.size, len(SPECIAL_BITS) * 2))
        bits.reshape(-1)[spots] = rng.choice(SPECIAL_BITS, size=spots.size)
    return bits.view(np.float32).view(float_dtype(names)).reshape(count)


def header_lines(data: bytes) -> list[str]:
    end = data.index(b"end_header\n") + len(b"end_header\n")
    return data[:end].decode("ascii").splitlines()


@settings(max_examples=150, deadline=None)
@given(records())
def test_write_read_round_trip_is_bit_exact(arr: np.ndarray) -> None:
    data = write_ply(arr)
    back = read_ply(data)
    assert back.dtype.names == arr.dtype.names
    assert back.view(np.uint8).tobytes() == arr.view(np.uint8).tobytes()
    # And once more through the Splat container: the bytes themselves survive.
    assert Splat.from_ply_bytes(data).to_ply_bytes() == data


@settings(max_examples=80, deadline=None)
@given(records())
def test_written_header_is_exactly_what_spz_accepts(arr: np.ndarray) -> None:
    data = write_ply(arr)
    lines = header_lines(data)
    assert lines[0] == "ply"
    assert lines[1] == "format binary_little_endian 1.0"
    assert lines[2] == f"element vertex {len(arr)}"
    assert lines[3:-1] == [f"property float {name}" for name in arr.dtype.names]
    assert lines[-1] == "end_header"
    assert not any(line.startswith(("comment", "obj_info")) for line in lines)
    assert len(data) == len(ply_header_bytes(arr.dtype.names, len(arr))) + arr.nbytes


def test_writer_normalises_byte_order_and_padding() -> None:
    names = list(REQUIRED_PROPERTIES)
    big = np.zeros(3, dtype=[(n, ">f4") for n in names])
    big["opacity"] = [1.5, -np.inf, np.nan]
    back = read_ply(write_ply(big))
    assert back.dtype == float_dtype(names)
    assert back["opacity"][0] == 1.5 and back["opacity"][1] == -np.inf and np.isnan(back["opacity"][2])
    # A field subset is a padded, non-packed view; the writer packs it.
    subset = back[names[:3] + names[3:]][::2]
    assert read_ply(write_ply(subset)).tobytes() == np.ascontiguousarray(back[::2]).tobytes()


def test_writer_rejects_plain_arrays() -> None:
    with pytest.raises(TypeError):
        write_ply(np.zeros(4, dtype=np.float32))


def _foreign_ply(columns: dict[str, np.ndarray], *, text: bool = False, byte_order: str = "<") -> bytes:
    dtype = [(name, values.dtype.str.lstrip("<>=|")) for name, values in columns.items()]
    count = len(next(iter(columns.values())))
    arr = np.empty(count, dtype=dtype)
    for name, values in columns.items():
        arr[name] = values
    buffer = io.BytesIO()
    PlyData([PlyElement.describe(arr, "vertex")], text=text, byte_order=byte_order).write(buffer)
    return buffer.getvalue()


def _random_columns(rng: np.random.Generator, count: int, dtype: str) -> dict[str, np.ndarray]:
    return {name: (rng.normal(0, 3, count)).astype(dtype) for name in REQUIRED_PROPERTIES}


@pytest.mark.parametrize(
    ("text", "byte_order", "dtype"),
    [
        (True, "=", "f4"),
        (False, ">", "f4"),
        (False, "<", "f8"),
        (False, ">", "f8"),
        (True, "=", "f8"),
    ],
)
def test_foreign_encodings_convert_to_float32(text: bool, byte_order: str, dtype: str) -> None:
    rng = np.random.default_rng(7)
    columns = _random_columns(rng, 40, dtype)
    columns["opacity"][:3] = [np.inf, -np.inf, np.nan]
    data = _foreign_ply(columns, text=text, byte_order=byte_order)
    back = read_ply(data)
    assert back.dtype == float_dtype(list(REQUIRED_PROPERTIES))
    for name, values in columns.items():
        np.testing.assert_array_equal(back[name], values.astype(np.float32))


def test_uchar_and_mixed_types_convert() -> None:
    rng = np.random.default_rng(3)
    columns: dict[str, np.ndarray] = _random_columns(rng, 25, "f4")
    columns["f_dc_0"] = rng.integers(0, 256, 25).astype(np.uint8)
    columns["x"] = rng.normal(0, 1, 25).astype(np.float64)
    columns["rot_0"] = rng.integers(-30000, 30000, 25).astype(np.int16)
    back = read_ply(_foreign_ply(columns, byte_order=">"))
    for name, values in columns.items():
        np.testing.assert_array_equal(back[name], values.astype(np.float32))
    assert back["f_dc_0"].max() <= 255.0 and back["f_dc_0"].min() >= 0.0


def test_foreign_binary_layouts_are_read_without_per_vertex_python_work(
    python_calls: Callable[[Callable[[], object]], int],
) -> None:
    rng = np.random.default_rng(5)
    small = _foreign_ply(_random_columns(rng, 10, "f8"), byte_order=">")
    large = _foreign_ply(_random_columns(rng, 20_000, "f8"), byte_order=">")
    assert python_calls(lambda: read_ply(large)) <= python_calls(lambda: read_ply(small)) + 5


def test_elements_before_the_vertices_are_skipped_in_any_byte_order() -> None:
    rng = np.random.default_rng(6)
    columns = _random_columns(rng, 30, "f4")
    arr = np.empty(30, dtype=[(name, ">f4") for name in columns])
    for name, values in columns.items():
        arr[name] = values
    camera = np.zeros(3, dtype=[("fx", ">f8"), ("id", ">u1")])
    buffer = io.BytesIO()
    PlyData(
        [PlyElement.describe(camera, "camera"), PlyElement.describe(arr, "vertex")], byte_order=">"
    ).write(buffer)
    back = read_ply(buffer.getvalue())
    for name, values in columns.items():
        np.testing.assert_array_equal(back[name], values)


def test_extra_elements_are_ignored() -> None:
    arr = np.zeros(4, dtype=float_dtype(list(REQUIRED_PROPERTIES)))
    arr["x"] = [1, 2, 3, 4]
    extra = np.zeros(2, dtype=[("a", "f4")])
    buffer = io.BytesIO()
    PlyData([PlyElement.describe(extra, "camera"), PlyElement.describe(arr, "vertex")]).write(buffer)
    np.testing.assert_array_equal(read_ply(buffer.getvalue())["x"], [1, 2, 3, 4])


@settings(max_examples=60, deadline=None)
@given(
    records(),
    st.lists(
        st.tuples(
            st.integers(0, 40),
            st.sampled_from(["comment", "obj_info"]),
            st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
        ),
        max_size=4,
    ),
)
def test_comment_lines_are_accepted_anywhere_in_the_header(
    arr: np.ndarray, comments: list[tuple[int, str, str]]
) -> None:
    lines = header_lines(write_ply(arr))
    for position, keyword, text in comments:
        lines.insert(1 + position % (len(lines) - 1), f"{keyword} {text}".rstrip())
    data = ("\n".join(lines) + "\n").encode("ascii") + arr.tobytes()
    assert read_ply(data).tobytes() == arr.tobytes()


def test_comment_mentioning_end_header_does_not_end_the_header() -> None:
    arr = np.arange(2 * len(REQUIRED_PROPERTIES), dtype=np.float32).view(
        float_dtype(list(REQUIRED_PROPERTIES))
    )
    lines = header_lines(write_ply(arr))
    lines.insert(2, "comment written before end_header was known")
    data = ("\n".join(lines) + "\n").encode("ascii") + arr.tobytes()
    assert read_ply(data).tobytes() == arr.tobytes()


def test_crlf_header_is_read() -> None:
    arr = np.arange(3 * len(REQUIRED_PROPERTIES), dtype=np.float32).view(
        float_dtype(list(REQUIRED_PROPERTIES))
    )
    header = ply_header_bytes(arr.dtype.names, len(arr)).replace(b"\n", b"\r\n")
    assert read_ply(header + arr.tobytes()).tobytes() == arr.tobytes()


def _valid_binary(count: int = 3) -> bytes:
    arr = np.ones(count, dtype=float_dtype(list(REQUIRED_PROPERTIES)))
    return write_ply(arr)


def _header(*lines: str) -> bytes:
    return ("\n".join(["ply", *lines, "end_header"]) + "\n").encode("ascii")


REQUIRED_LINES = [f"property float {name}" for name in REQUIRED_PROPERTIES]

MALFORMED = {
    "empty bytes": (b"", "not a PLY file"),
    "non-PLY bytes": (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a PLY file"),
    "json": (b'{"ply": true}', "not a PLY file"),
    "truncated body": (_valid_binary(3)[:-5], "truncated body"),
    "header only": (
        _header("format binary_little_endian 1.0", "element vertex 2", *REQUIRED_LINES),
        "truncated",
    ),
    "no end_header": (b"ply\nformat binary_little_endian 1.0\nelement vertex 1\n", "end_header"),
    "missing field": (
        _header("format binary_little_endian 1.0", "element vertex 0", *REQUIRED_LINES[:-1]),
        "rot_3",
    ),
    "no vertex element": (_header("format binary_little_endian 1.0", "element face 0"), "vertex"),
    "no format line": (_header("element vertex 0", *REQUIRED_LINES), "format"),
    "unknown format": (
        _header("format binary_middle_endian 1.0", "element vertex 0", *REQUIRED_LINES),
        "format",
    ),
    "garbage header line": (_header("format ascii 1.0", "hello world", "element vertex 0"), "unexpected"),
    "property before element": (_header("format ascii 1.0", "property float x"), "before any element"),
    "unknown property type": (
        _header("format binary_little_endian 1.0", "element vertex 0", "property float128 x"),
        "malformed property",
    ),
    "list property": (
        _header(
            "format binary_little_endian 1.0",
            "element vertex 1",
            *REQUIRED_LINES,
            "property list uchar int vertex_indices",
        ),
        "list property",
    ),
    "negative count": (
        _header("format binary_little_endian 1.0", "element vertex -4", *REQUIRED_LINES),
        "negative",
    ),
    "count not a number": (
        _header("format ascii 1.0", "element vertex many", *REQUIRED_LINES),
        "not an integer",
    ),
    "duplicate property": (
        _header("format binary_little_endian 1.0", "element vertex 0", *REQUIRED_LINES, "property float x"),
        "twice",
    ),
    "non-ascii header": (b"ply\nformat ascii 1.0\ncomment \xff\xfe\nend_header\n", "ASCII"),
    "ascii body too short": (
        _header("format ascii 1.0", "element vertex 2", *REQUIRED_LINES)
        + b"1 " * len(REQUIRED_PROPERTIES)
        + b"\n",
        "truncated body: 2 ASCII vertices",
    ),
    "ascii body not numbers": (
        _header("format ascii 1.0", "element vertex 1", *REQUIRED_LINES)
        + b"a " * len(REQUIRED_PROPERTIES)
        + b"\n",
        "unreadable PLY body",
    ),
    "big-endian truncated": (
        _header("format binary_big_endian 1.0", "element vertex 5", *REQUIRED_LINES) + bytes(56),
        "truncated body: 5 vertices",
    ),
    "ascii absurd count": (
        _header("format ascii 1.0", "element vertex 1000000000000", *REQUIRED_LINES) + b"1 " * 14 + b"\n",
        "truncated body: 1000000000000 ASCII vertices",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_input_raises_ply_format_error_with_a_reason(case: str) -> None:
    data, fragment = MALFORMED[case]
    with pytest.raises(PlyFormatError) as caught:
        read_ply(data)
    message = str(caught.value)
    assert fragment in message
    assert len(message) > 10


def test_vertex_limit_matches_spz() -> None:
    assert MAX_SPZ_VERTICES == 10 * 1024 * 1024


@pytest.mark.parametrize("fmt", ["binary_little_endian", "binary_big_endian"])
def test_every_strict_prefix_of_a_binary_file_is_rejected(fmt: str) -> None:
    columns = _random_columns(np.random.default_rng(1), 2, "f4")
    data = _foreign_ply(columns, byte_order="<" if fmt.endswith("little_endian") else ">")
    assert read_ply(data).shape == (2,)
    for cut in range(len(data)):
        with pytest.raises(PlyFormatError):
            read_ply(data[:cut])


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_corrupted_bytes_raise_only_ply_format_error(data: st.DataObject) -> None:
    base = data.draw(
        st.sampled_from(
            [_valid_binary(2), _foreign_ply(_random_columns(np.random.default_rng(2), 2, "f4"), text=True)]
        )
    )
    mutated = bytearray(base)
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        mutated[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(mutated)))
    with contextlib.suppress(PlyFormatError):
        read_ply(bytes(mutated[:cut]))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_after_ply_magic_raise_only_ply_format_error(tail: bytes) -> None:
    with contextlib.suppress(PlyFormatError):
        read_ply(b"ply\n" + tail)


def test_real_file_reads_as_a_zero_copy_view(real_ply_bytes: bytes) -> None:
    arr = read_ply(real_ply_bytes)
    assert len(arr) == 52_709
    assert arr.dtype.names == REQUIRED_PROPERTIES
    assert not arr.flags.writeable
    assert np.shares_memory(arr, np.frombuffer(real_ply_bytes, dtype=np.uint8))
    assert write_ply(arr) == real_ply_bytes
