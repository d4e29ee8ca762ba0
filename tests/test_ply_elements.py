"""PLYs as other tools write them, through the real ``splatgen ply`` command (a subprocess):
MeshLab's extra ``element face 0``, SuperSplat's compressed PLY, and files with no usable gaussians.
"""

from __future__ import annotations

import json
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from diagnostics.splat import Splat
from generation.testing import REPO, SPLATGEN

FACE_LIST = b"element face 0\nproperty list uchar int vertex_indices\n"


def ply(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    return subprocess.run([*SPLATGEN, "ply", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def with_header_lines(data: bytes, before_end: bytes = b"", before_vertex: bytes = b"") -> bytes:
    head, body = data.split(b"end_header\n", 1)
    if before_vertex:
        head = head.replace(b"element vertex", before_vertex + b"element vertex", 1)
    return head + before_end + b"end_header\n" + body


@pytest.fixture
def splat(make_splat: Callable[..., Splat]) -> Splat:
    return make_splat(9000, seed=4)


def test_meshlab_resave_is_read_and_its_face_element_named(tmp_path: Path, splat: Splat) -> None:
    source = tmp_path / "meshlab.ply"
    source.write_bytes(with_header_lines(splat.to_ply_bytes(), before_end=FACE_LIST))

    analyzed = ply("analyze", str(source), "--json")
    assert analyzed.returncode == 0, analyzed.stderr
    document = json.loads(analyzed.stdout)
    assert document["files"][0]["stats"]["count"] == 9000
    assert document["files"][0]["skipped_elements"] == {"face": 0}
    table = ply("analyze", str(source))
    assert table.returncode == 0
    assert "skipped 'element face' (0 items): not part of a splat" in table.stderr

    fixed = tmp_path / "fixed.ply"
    result = ply("fix", str(source), "-o", str(fixed))
    assert result.returncode == 0, result.stderr
    assert "dropped elements" in result.stdout and "'element face' (0 items)" in result.stdout
    out = Splat.from_ply_bytes(fixed.read_bytes())
    assert len(out) == 9000
    assert b"element face" not in fixed.read_bytes()[:2048]
    assert np.array_equal(out["x"], splat["x"])

    assert ply("check", str(source)).returncode == 0
    png = tmp_path / "meshlab.png"
    assert ply("render", str(source), "-o", str(png), "--size", "32").returncode == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_faces_with_content_before_the_vertices_are_skipped(tmp_path: Path, splat: Splat) -> None:
    faces = b"element face 2\nproperty list uchar int vertex_indices\nproperty uchar flags\n"
    data = with_header_lines(splat.to_ply_bytes(), before_vertex=faces)
    head, body = data.split(b"end_header\n", 1)
    face_bytes = struct.pack("<B3iB", 3, 0, 1, 2, 7) + struct.pack("<B4iB", 4, 1, 2, 3, 4, 9)
    source = tmp_path / "faces.ply"
    source.write_bytes(head + b"end_header\n" + face_bytes + body)
    analyzed = ply("analyze", str(source), "--json")
    assert analyzed.returncode == 0, analyzed.stderr
    document = json.loads(analyzed.stdout)["files"][0]
    assert document["skipped_elements"] == {"face": 2}
    assert document["stats"]["count"] == 9000


def compressed_ply() -> bytes:
    """The layout SuperSplat writes: a chunk element with bounds, then vertices packed into uint words."""
    chunk_props = [f"property float {n}\n" for n in (
        "min_x", "min_y", "min_z", "max_x", "max_y", "max_z",
        "min_scale_x", "min_scale_y", "min_scale_z", "max_scale_x", "max_scale_y", "max_scale_z",
    )]  # fmt: skip
    header = (
        b"ply\nformat binary_little_endian 1.0\nelement chunk 1\n"
        + "".join(chunk_props).encode()
        + b"element vertex 256\nproperty uint packed_position\nproperty uint packed_rotation\n"
        + b"property uint packed_scale\nproperty uint packed_color\nend_header\n"
    )
    return header + bytes(12 * 4) + bytes(256 * 16)


def test_supersplat_compressed_ply_says_what_it_is_and_how_to_decompress(tmp_path: Path) -> None:
    source = tmp_path / "scene.compressed.ply"
    source.write_bytes(compressed_ply())
    for args in (["analyze", str(source)], ["check", str(source)], ["fix", str(source), "-o", str(tmp_path / "o.ply")],
                 ["render", str(source), "-o", str(tmp_path / "o.png")]):  # fmt: skip
        result = ply(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "compressed PLY (SuperSplat" in result.stderr, result.stderr
        assert "splat-transform" in result.stderr
        assert "missing required properties" not in result.stderr
    assert not (tmp_path / "o.ply").exists() and not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("kind", ["zero vertices", "all corrupted"])
def test_no_usable_gaussians_fails_every_command_that_would_write(
    tmp_path: Path, kind: str, make_splat: Callable[..., Splat]
) -> None:
    if kind == "zero vertices":
        data = make_splat(1, seed=1).to_ply_bytes().replace(b"element vertex 1\n", b"element vertex 0\n")
        data = data[: data.index(b"end_header\n") + len(b"end_header\n")]
        reason = "0 vertices"
    else:
        broken = make_splat(50, seed=2)
        columns = {name: np.array(broken[name]) for name in broken.names}
        columns["x"][:] = np.nan
        data = Splat.from_columns(columns).to_ply_bytes()
        reason = "every gaussian is corrupted (all 50 have NaN or inf values)"
    source = tmp_path / "empty.ply"
    source.write_bytes(data)

    out = tmp_path / "out.ply"
    fixed = ply("fix", str(source), "-o", str(out))
    assert fixed.returncode == 1, (fixed.stdout, fixed.stderr)
    assert "no usable gaussians" in fixed.stderr and reason in fixed.stderr
    assert not out.exists()

    png = tmp_path / "out.png"
    rendered = ply("render", str(source), "-o", str(png))
    assert rendered.returncode == 1, (rendered.stdout, rendered.stderr)
    assert "no usable gaussians" in rendered.stderr and "no PNG written" in rendered.stderr
    assert not png.exists()

    analyzed = ply("analyze", str(source))
    assert analyzed.returncode == 1
    assert (
        f"no usable gaussians: {'the file has ' if kind == 'zero vertices' else ''}{reason}"
        in analyzed.stderr
    )
    document = json.loads(ply("analyze", str(source), "--json").stdout)
    assert document["files"][0]["usable_gaussians"] == 0
