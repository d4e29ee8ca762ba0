"""PLY reading and writing for Gaussian splats.

The fast path parses the one layout every 3DGS tool writes (binary little-endian, one ``vertex``
element, float properties only) straight into a numpy view of the input bytes. Other binary layouts
(big-endian, double or integer properties, extra elements) are read with numpy and converted to
float32; ASCII goes through plyfile.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np

REQUIRED_PROPERTIES: tuple[str, ...] = (
    "x", "y", "z",
    "f_dc_0", "f_dc_1", "f_dc_2",
    "opacity",
    "scale_0", "scale_1", "scale_2",
    "rot_0", "rot_1", "rot_2", "rot_3",
)  # fmt: skip

# SPZ's vertex limit (404's compressor refuses larger files).
MAX_SPZ_VERTICES = 10_485_760

# A PLY header is a few hundred bytes; bounding the search keeps non-PLY input cheap to reject.
_MAX_HEADER_BYTES = 64 * 1024
_FLOAT_TYPES = {"float", "float32"}
# PLY scalar types and their numpy codes (byte order added per file).
_NUMPY_CODES = {
    "char": "i1", "uchar": "u1", "short": "i2", "ushort": "u2",
    "int": "i4", "uint": "u4", "float": "f4", "double": "f8",
    "int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2",
    "int32": "i4", "uint32": "u4", "float32": "f4", "float64": "f8",
}  # fmt: skip
_NUMERIC_TYPES = set(_NUMPY_CODES)
_FORMATS = {"ascii", "binary_little_endian", "binary_big_endian"}
# The header ends at a line that is exactly 'end_header' (a comment may mention the word).
_END_HEADER_LINE = re.compile(rb"[\r\n]end_header[ \t\r]*(\n|\Z)")


class PlyFormatError(ValueError):
    """The bytes are not a PLY splat this project can read; the message says exactly why."""


@dataclass(frozen=True)
class PlyHeader:
    format: str
    elements: tuple[tuple[str, int, tuple[tuple[str, str], ...]], ...]
    body_offset: int

    def other_elements(self) -> list[tuple[str, int]]:
        """Elements other than ``vertex`` (MeshLab adds ``face``, SuperSplat ``chunk``): skipped on read."""
        return [(name, count) for name, count, _ in self.elements if name != "vertex"]

    def vertex(self) -> tuple[int, tuple[tuple[str, str], ...]]:
        for name, count, props in self.elements:
            if name == "vertex":
                return count, props
        raise PlyFormatError("no 'element vertex' in the header")


def parse_header(data: bytes | bytearray | memoryview) -> PlyHeader:
    """Parse and check a PLY header; raise PlyFormatError naming the first problem."""
    view = memoryview(data)
    if bytes(view[:4]) not in (b"ply\n", b"ply\r"):
        raise PlyFormatError("not a PLY file: the first line must be 'ply'")
    head = bytes(view[:_MAX_HEADER_BYTES])
    match = _END_HEADER_LINE.search(head)
    if match is None:
        raise PlyFormatError(f"no 'end_header' line in the first {_MAX_HEADER_BYTES} bytes")
    if not match.group(1):
        raise PlyFormatError("the header ends without a newline after 'end_header'")
    end = match.start() + 1
    try:
        text = head[:end].decode("ascii")
    except UnicodeDecodeError as exc:
        raise PlyFormatError(f"the header is not ASCII (byte {exc.start})") from None

    fmt: str | None = None
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    for lineno, raw in enumerate(text.splitlines()[1:], start=2):
        words = raw.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        keyword = words[0]
        if keyword == "format":
            if len(words) != 3 or words[1] not in _FORMATS:
                raise PlyFormatError(f"line {lineno}: unknown format {raw.strip()!r}")
            fmt = words[1]
        elif keyword == "element":
            if len(words) != 3:
                raise PlyFormatError(f"line {lineno}: malformed element line {raw.strip()!r}")
            try:
                count = int(words[2])
            except ValueError:
                raise PlyFormatError(f"line {lineno}: element count {words[2]!r} is not an integer") from None
            if count < 0:
                raise PlyFormatError(f"line {lineno}: negative element count {count}")
            elements.append((words[1], count, []))
        elif keyword == "property":
            if not elements:
                raise PlyFormatError(f"line {lineno}: property before any element")
            if len(words) >= 2 and words[1] == "list":
                if elements[-1][0] == "vertex":
                    raise PlyFormatError(f"line {lineno}: list property {words[-1]!r} is not part of a splat")
                # Faces and other mesh elements carry lists; they are skipped when reading a splat.
                if len(words) != 5 or words[2] not in _NUMERIC_TYPES or words[3] not in _NUMERIC_TYPES:
                    raise PlyFormatError(f"line {lineno}: malformed list property line {raw.strip()!r}")
                elements[-1][2].append((words[4], f"list {words[2]} {words[3]}"))
                continue
            if len(words) != 3 or words[1] not in _NUMERIC_TYPES:
                raise PlyFormatError(f"line {lineno}: malformed property line {raw.strip()!r}")
            elements[-1][2].append((words[2], words[1]))
        else:
            raise PlyFormatError(f"line {lineno}: unexpected header line {raw.strip()!r}")
    if fmt is None:
        raise PlyFormatError("the header has no 'format' line")
    return PlyHeader(
        format=fmt,
        elements=tuple((n, c, tuple(p)) for n, c, p in elements),
        body_offset=match.end(),
    )


# SuperSplat / PlayCanvas "compressed PLY": per-chunk bounds plus vertices packed into uint32 words.
_COMPRESSED_HINT = (
    "this is a compressed PLY (SuperSplat / PlayCanvas: a 'chunk' element and packed uint vertex "
    "properties), not a plain 3DGS PLY; decompress it first, e.g. `npx @playcanvas/splat-transform "
    "IN.compressed.ply OUT.ply`, or open it in SuperSplat and export an uncompressed PLY"
)


def _check_not_compressed(header: PlyHeader, names: list[str]) -> None:
    element_names = {name for name, _, _ in header.elements}
    if "chunk" in element_names or any(name.startswith("packed_") for name in names):
        raise PlyFormatError(_COMPRESSED_HINT)


def _check_properties(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise PlyFormatError(f"property {name!r} appears twice")
        seen.add(name)
    missing = [p for p in REQUIRED_PROPERTIES if p not in seen]
    if missing:
        raise PlyFormatError(f"missing required properties: {', '.join(missing)}")


def float_dtype(names: list[str] | tuple[str, ...]) -> np.dtype:
    """The packed little-endian float32 record layout for these column names."""
    return np.dtype([(n, "<f4") for n in names])


def read_ply(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Parse PLY bytes into a structured float32 array (a view of ``data`` on the fast path)."""
    header = parse_header(data)
    count, props = header.vertex()
    names = [name for name, _ in props]
    _check_not_compressed(header, names)
    _check_properties(names)
    # Elements after the vertices (MeshLab's 'element face 0') do not move them: still the fast path.
    fast = (
        header.format == "binary_little_endian"
        and header.elements[0][0] == "vertex"
        and all(kind in _FLOAT_TYPES for _, kind in props)
    )
    if header.format == "ascii":
        # Every ASCII value takes at least a digit and a separator: a count the body cannot hold is
        # refused before plyfile tries to allocate room for it.
        available = len(data) - header.body_offset
        needed = count * len(names) * 2
        if available < needed:
            raise PlyFormatError(
                f"truncated body: {count} ASCII vertices of {len(names)} values need at least {needed} "
                f"bytes, found {available}"
            )
        return _read_with_plyfile(data, names)
    if not fast:
        return _read_binary_any_layout(data, header, names)
    dtype = float_dtype(names)
    available = len(data) - header.body_offset
    needed = count * dtype.itemsize
    if available < needed:
        raise PlyFormatError(
            f"truncated body: {count} vertices of {dtype.itemsize} bytes need {needed} bytes, "
            f"found {available}"
        )
    return np.frombuffer(data, dtype=dtype, count=count, offset=header.body_offset)


def _read_binary_any_layout(
    data: bytes | bytearray | memoryview, header: PlyHeader, names: list[str]
) -> np.ndarray:
    """Binary PLY of either byte order, any scalar types, other elements before the vertices."""
    order = "<" if header.format == "binary_little_endian" else ">"
    offset = header.body_offset
    available = len(data)
    for element, count, props in header.elements:
        if element != "vertex":
            offset = _skip_element(data, offset, count, props, order)
            continue
        # parse_header refuses list properties in the vertex element: every vertex has a fixed size.
        itemsize = sum(np.dtype(_NUMPY_CODES[kind]).itemsize for _, kind in props)
        needed = count * itemsize
        if available - offset < needed:
            raise PlyFormatError(
                f"truncated body: {count} vertices of {itemsize} bytes need {needed} bytes, "
                f"found {max(available - offset, 0)}"
            )
        raw = np.frombuffer(
            data,
            dtype=np.dtype([(name, order + _NUMPY_CODES[kind]) for name, kind in props]),
            count=count,
            offset=offset,
        )
        out = np.empty(count, dtype=float_dtype(names))
        for name in names:
            out[name] = raw[name]
        return out
    raise PlyFormatError("no 'element vertex' in the header")


def _skip_element(
    data: bytes | bytearray | memoryview,
    offset: int,
    count: int,
    props: tuple[tuple[str, str], ...],
    order: str,
) -> int:
    """The offset after ``count`` records of an element that precedes the vertices."""
    if not any(kind.startswith("list ") for _, kind in props):
        return offset + count * sum(np.dtype(_NUMPY_CODES[kind]).itemsize for _, kind in props)
    view = memoryview(data)
    for _ in range(count):  # list records vary in size: walk them (faces before vertices are rare)
        for _, kind in props:
            if not kind.startswith("list "):
                offset += np.dtype(_NUMPY_CODES[kind]).itemsize
                continue
            _, count_type, item_type = kind.split()
            count_dtype = np.dtype(order + _NUMPY_CODES[count_type])
            if offset + count_dtype.itemsize > len(view):
                raise PlyFormatError("truncated body inside a list property before the vertices")
            items = int(np.frombuffer(view, dtype=count_dtype, count=1, offset=offset)[0])
            offset += count_dtype.itemsize + items * np.dtype(_NUMPY_CODES[item_type]).itemsize
    return offset


def _read_with_plyfile(data: bytes | bytearray | memoryview, names: list[str]) -> np.ndarray:
    from plyfile import PlyData  # imported lazily: only the slow path needs it

    try:
        ply = PlyData.read(io.BytesIO(bytes(data)))
        vertex = ply["vertex"].data
    except PlyFormatError:
        raise
    except Exception as exc:  # plyfile raises many types (PlyParseError, ValueError, EOFError, ...)
        raise PlyFormatError(f"unreadable PLY body: {exc}") from None
    out = np.empty(len(vertex), dtype=float_dtype(names))
    for name in names:
        out[name] = vertex[name].astype(np.float32)
    return out


def ply_header_bytes(names: tuple[str, ...] | list[str], count: int) -> bytes:
    """The exact header 404's SPZ compressor accepts: no comments, float properties only."""
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {count}"]
    lines += [f"property float {n}" for n in names]
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


def write_ply(records: np.ndarray) -> bytes:
    """Serialise a structured float32 array; the body is copied exactly once."""
    names = records.dtype.names
    if names is None:
        raise TypeError("write_ply needs a structured array")
    canonical = float_dtype(names)
    if records.dtype != canonical or not records.flags.c_contiguous:
        records = np.ascontiguousarray(records.astype(canonical))
    header = ply_header_bytes(names, len(records))
    # bytes.join copies each buffer once into the result: header + body, no intermediate tobytes().
    return b"".join((header, records.view(np.uint8)))
