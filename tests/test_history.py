"""History: the last N generations, PLYs within a byte budget, on disk or in RAM, previews off the request path."""

from __future__ import annotations

import io
import json
import math
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import generation.front.history as history_module
from diagnostics import Splat
from generation.front.history import History
from generation.front.history_preview import subsample, thumbnail_png
from generation.settings import FrontSettings

PREVIEW_PX = 32


@pytest.fixture
def plys(make_splat: Callable[..., Splat]) -> list[bytes]:
    """Six distinct small PLYs of the same size."""
    return [make_splat(1500, seed=i).to_ply_bytes() for i in range(6)]


@pytest.fixture
def histories() -> Iterator[Callable[..., History]]:
    made: list[History] = []

    def make(size: int = 10, **kwargs: object) -> History:
        kwargs.setdefault("preview_px", PREVIEW_PX)
        history = History(size, **kwargs)  # type: ignore[arg-type]
        made.append(history)
        return history

    yield make
    for history in made:
        history.close()


def record(prompt: str, **extra: object) -> dict[str, object]:
    return {"time": 1.0, "kind": "text", "prompt": prompt, "outcome": "ok", "gaussians": 1500, **extra}


def png_image(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(out, "PNG")
    return out.getvalue()


def test_records_ids_order_and_outcomes(histories: Callable[..., History]) -> None:
    history = histories(size=3, preview_px=0)
    ids = [history.add(record(f"p{i}"))["id"] for i in range(5)]
    history.count_outcome("overloaded")
    history.count_outcome("overloaded")
    assert ids == [1, 2, 3, 4, 5]
    assert [r["prompt"] for r in history.recent()] == ["p2", "p3", "p4"]
    assert [r["id"] for r in history.recent(2)] == [4, 5]
    assert history.outcomes == {"ok": 5, "overloaded": 2}
    assert history.record(1) is None
    assert history.record(5)["prompt"] == "p4"  # type: ignore[index]


def test_non_finite_numbers_become_null(histories: Callable[..., History]) -> None:
    history = histories(preview_px=0)
    stored = history.add(record("x", worker_seconds=float("nan"), stats={"max": math.inf, "ok": 1.5}))
    assert stored["worker_seconds"] is None
    assert stored["stats"] == {"max": None, "ok": 1.5}
    json.dumps(history.recent(), allow_nan=False)


def test_memory_budget_evicts_the_oldest_plys_but_keeps_their_records(
    histories: Callable[..., History], plys: list[bytes]
) -> None:
    size = len(plys[0])
    history = histories(size=10, max_bytes=int(2.5 * size), preview_px=0)
    for i, ply in enumerate(plys):
        history.add(record(f"p{i}"), ply)
    rows = history.recent()
    assert [r["ply"] for r in rows] == [False, False, False, False, True, True]
    assert history.ply(1) is None
    assert history.ply(6) == plys[5]
    assert history.usage()["bytes"] == 2 * size <= history.max_bytes
    assert rows[0]["preview"] == "evicted"


def test_a_ply_over_the_whole_budget_is_not_kept(
    histories: Callable[..., History], plys: list[bytes]
) -> None:
    history = histories(max_bytes=len(plys[0]) - 1)
    stored = history.add(record("big"), plys[0])
    assert history.ply(stored["id"]) is None
    assert history.recent()[0]["ply"] is False
    assert history.recent()[0]["preview"] == "evicted"


def test_directory_writes_atomically_and_reads_back_after_a_restart(
    tmp_path: Path, histories: Callable[..., History], plys: list[bytes]
) -> None:
    first = histories(size=4, directory=tmp_path)
    for i, ply in enumerate(plys[:3]):
        first.add(record(f"p{i}"), ply)
        # Generations come seconds apart; in a burst some previews would be skipped (tested below).
        assert first.wait_idle(60)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"{i:08d}.{part}" for i in (1, 2, 3) for part in ("json", "ply", "preview.png")], names
    assert (tmp_path / "00000002.ply").read_bytes() == plys[1]
    # Once on disk the PLY is served from the file, not held in RAM.
    assert first.ply(2) == plys[1]
    first.close()

    second = histories(size=4, directory=tmp_path)
    assert [r["prompt"] for r in second.recent()] == ["p0", "p1", "p2"]
    assert all(r["ply"] and r["preview"] == "ready" for r in second.recent())
    assert second.ply(3) == plys[2]
    assert second.add(record("p3"), plys[3])["id"] == 4


def test_directory_eviction_deletes_files_within_the_budget(
    tmp_path: Path, histories: Callable[..., History], plys: list[bytes]
) -> None:
    budget = int(3.5 * len(plys[0]))
    history = histories(size=4, directory=tmp_path, max_bytes=budget, preview_px=0)
    for i, ply in enumerate(plys):
        history.add(record(f"p{i}"), ply)
    assert history.wait_idle(60)
    on_disk = sorted(p.name for p in tmp_path.iterdir())
    # Records of the last 4 (ids 3..6); PLYs of the last 3 within the budget.
    assert [n for n in on_disk if n.endswith(".json")] == [f"{i:08d}.json" for i in (3, 4, 5, 6)]
    assert [n for n in on_disk if n.endswith(".ply")] == [f"{i:08d}.ply" for i in (4, 5, 6)]
    assert sum(p.stat().st_size for p in tmp_path.glob("*.ply")) <= budget


def test_start_up_drops_unfinished_writes_and_unreadable_records(
    tmp_path: Path, histories: Callable[..., History], plys: list[bytes]
) -> None:
    (tmp_path / "00000007.ply").write_bytes(plys[0])  # PLY written, record never was
    (tmp_path / ".00000008.ply.abc.tmp").write_bytes(b"partial")
    (tmp_path / "00000009.json").write_text("{not json")
    (tmp_path / "00000005.json").write_text(json.dumps({"id": 5, "prompt": "kept"}))
    (tmp_path / "notes.txt").write_text("not ours")
    history = histories(directory=tmp_path)
    assert [r["id"] for r in history.recent()] == [5]
    assert history.recent()[0]["ply"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000005.json", "notes.txt"]
    # Ids never go back, even past records that were dropped.
    assert history.add(record("next"))["id"] == 10


def test_close_finishes_pending_writes(tmp_path: Path, plys: list[bytes]) -> None:
    history = History(5, directory=tmp_path, preview_px=0)
    history.add(record("last words"), plys[0])
    history.close()
    assert (tmp_path / "00000001.ply").read_bytes() == plys[0]
    assert json.loads((tmp_path / "00000001.json").read_text())["prompt"] == "last words"


def test_preview_is_a_validator_style_grid(histories: Callable[..., History], plys: list[bytes]) -> None:
    history = histories()
    stored = history.add(record("grid"), plys[0])
    assert history.wait_idle(60)
    assert history.record(stored["id"])["preview"] == "ready"  # type: ignore[index]
    preview = Image.open(io.BytesIO(history.preview(stored["id"]) or b""))
    assert preview.size == (2 * PREVIEW_PX, 2 * PREVIEW_PX)
    pixels = np.asarray(preview.convert("RGB"))
    drawn = (pixels < 250).any(axis=2).mean()
    assert 0.01 < drawn < 0.9, drawn


def test_previews_are_skipped_while_renders_wait(
    histories: Callable[..., History], plys: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    started = threading.Event()
    real_render = history_module.preview_png

    def render_after_release(ply: bytes, view_px: int, max_gaussians: int) -> bytes:
        started.set()
        release.wait(30)
        return real_render(ply, view_px, max_gaussians)

    monkeypatch.setattr(history_module, "preview_png", render_after_release)
    history = histories()
    history.add(record("first"), plys[0])
    assert started.wait(30)
    for i in range(1, 6):
        history.add(record(f"p{i}"), plys[i % len(plys)])
    # One render running, two waiting, the rest skipped.
    states = [r["preview"] for r in history.recent()]
    assert states == ["pending", "pending", "pending", "skipped", "skipped", "skipped"]
    release.set()
    assert history.wait_idle(60)
    assert [r["preview"] for r in history.recent()] == ["ready"] * 3 + ["skipped"] * 3
    assert history.usage()["previews_skipped"] == 3


def test_a_broken_ply_gets_a_failed_preview_not_an_error(histories: Callable[..., History]) -> None:
    history = histories()
    stored = history.add(record("broken"), b"ply\nformat nonsense\n")
    assert history.wait_idle(30)
    assert history.record(stored["id"])["preview"] == "failed"  # type: ignore[index]


def test_image_prompts_keep_only_a_small_thumbnail(
    histories: Callable[..., History], plys: list[bytes]
) -> None:
    history = histories(preview_px=0, thumbnail_px=96)
    image = png_image(640, 320)
    stored = history.add(record(None, kind="image", image_format="PNG"), plys[0], image)
    bad = history.add(record(None, kind="image"), plys[1], b"\x89PNG not really")
    assert history.wait_idle(30)
    thumb = Image.open(io.BytesIO(history.thumbnail(stored["id"]) or b""))
    assert thumb.format == "PNG"
    assert thumb.size == (96, 48)
    assert history.record(stored["id"])["thumbnail"] is True  # type: ignore[index]
    assert history.thumbnail(bad["id"]) is None


def test_thumbnail_of_non_images_is_none() -> None:
    assert thumbnail_png(b"", 96) is None
    assert thumbnail_png(b"GIF89a" + b"\0" * 10, 96) is None


def test_subsample_is_deterministic_and_bounded(make_splat: Callable[..., Splat]) -> None:
    splat = make_splat(10_000, seed=3)
    a, b = subsample(splat, 2500), subsample(splat, 2500)
    assert len(a) == 2500
    assert np.array_equal(a.data, b.data)
    assert subsample(splat, 20_000) is splat
    # Evenly spread: both ends of the file are represented.
    assert a["x"][0] == splat["x"][0] and a["x"][-1] == splat["x"][-1]


def test_from_settings_caps_ram_but_not_disk(tmp_path: Path) -> None:
    in_ram = History.from_settings(FrontSettings(history_max_mb=2048, history_memory_max_mb=64))
    on_disk = History.from_settings(FrontSettings(history_max_mb=2048, history_dir=tmp_path / "h"))
    assert in_ram.max_bytes == 64 * 1024 * 1024 and in_ram.directory is None
    assert on_disk.max_bytes == 2048 * 1024 * 1024 and (tmp_path / "h").is_dir()
