"""The last N generations: records for /status and the dashboard, their PLYs within a byte budget, previews.

Records (small JSON dicts) are kept for the last ``size`` generations. The heavy parts, the PLY and its
preview grid, are kept within ``max_bytes``: the oldest go first, and a record whose PLY went stays listed
with ``"ply": false``. Prompt images are kept only as a small PNG thumbnail.

With a ``directory`` every part is also written there, atomically, by one background thread (never on the
request path), and read back at start-up, so the history outlives a restart; without one it lives in RAM.
Preview grids are rendered on the same thread after the response has gone; when renders are already
waiting a new one is skipped (``"preview": "skipped"``).

Long because the ring of records, the byte budget, the disk store and its reload at start-up share one
lock and one entry type: split apart, each half would have to reach into the other's state.
"""

from __future__ import annotations

import collections
import contextlib
import io
import itertools
import json
import logging
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diagnostics import PlyFormatError
from diagnostics.atomic import write_bytes_atomic
from generation.front.background_jobs import BackgroundJobs
from generation.front.history_preview import preview_png, thumbnail_png
from generation.memory import malloc_trim
from generation.settings import FrontSettings

log = logging.getLogger("splatgen.history")

_MB = 1024 * 1024
_NAME = re.compile(r"^(\d{8})\.(json|ply|preview\.png|thumb\.png)$")
# Renders waiting behind the one in progress; more than this and new generations get no preview.
_MAX_WAITING_PREVIEWS = 2


@dataclass
class _Entry:
    record: dict[str, Any]
    # In RAM: always without a directory; with one, only until the background thread has written it.
    ply: bytes | memoryview | None = None
    ply_size: int = 0
    ply_on_disk: bool = False
    image: bytes | None = None
    thumbnail: bytes | None = None
    preview: bytes | None = None
    preview_state: str = "none"
    # Why the PLY was not kept at all (None when it was, even if evicted later).
    not_kept: str | None = None

    @property
    def heavy_bytes(self) -> int:
        return self.ply_size + len(self.preview or b"")

    @property
    def has_ply(self) -> bool:
        return self.ply is not None or self.ply_on_disk


def _json_safe(value: Any) -> Any:
    """Non-finite floats become None: JSON has no NaN, and the page must never fail to parse a record."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


class History:
    """A bounded, thread-safe history of generations, newest last."""

    def __init__(
        self,
        size: int,
        *,
        directory: Path | None = None,
        max_bytes: int = 256 * _MB,
        preview_px: int = 160,
        preview_max_gaussians: int = 100_000,
        thumbnail_px: int = 96,
    ) -> None:
        self.size = max(size, 1)
        self.directory = directory
        self.max_bytes = max(int(max_bytes), 0)
        self.preview_px = preview_px
        self.preview_max_gaussians = preview_max_gaussians
        self.thumbnail_px = thumbnail_px
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.previews_skipped = 0
        self._entries: collections.OrderedDict[int, _Entry] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._jobs = BackgroundJobs("history", max_optional=_MAX_WAITING_PREVIEWS)
        first_id = 1
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            first_id = self._load() + 1
        self._ids = itertools.count(first_id)

    @classmethod
    def from_settings(cls, settings: FrontSettings) -> History:
        """Build from FrontSettings: ``history_max_mb`` on disk, ``history_memory_max_mb`` in RAM."""
        budget_mb = settings.history_max_mb
        if settings.history_dir is None:
            budget_mb = min(budget_mb, settings.history_memory_max_mb)
        return cls(
            settings.history_size,
            directory=settings.history_dir,
            max_bytes=int(budget_mb * _MB),
            preview_px=settings.history_preview_px,
            preview_max_gaussians=settings.history_preview_max_gaussians,
            thumbnail_px=settings.history_thumbnail_px,
        )

    # The front end's calls: add, count_outcome, recent, outcomes.

    def add(
        self, record: dict[str, Any], ply: bytes | memoryview | None = None, image: bytes | None = None
    ) -> dict[str, Any]:
        """Store one served generation; returns its record with the id assigned. Never touches the disk."""
        with self._lock:
            gen_id = next(self._ids)
            size = len(ply or b"")
            # A PLY larger than the whole budget would evict every other one and then itself: keep its row only.
            fits = size <= self.max_bytes
            entry = _Entry(
                record={"id": gen_id, **_json_safe(record)},
                ply=ply if fits else None,
                ply_size=size if fits else 0,
            )
            if not fits:
                entry.preview_state = "evicted"  # no preview either: there is no PLY to render it from
                entry.not_kept = (
                    f"PLY of {size / _MB:.1f} MB not kept: larger than the whole history budget of "
                    f"{self.max_bytes / _MB:g} MB"
                )
            entry.image = image if image and self.thumbnail_px > 0 else None
            self._entries[gen_id] = entry
            self.outcomes[str(entry.record.get("outcome", "ok"))] += 1
            evicted = self._evict()
            # A PLY larger than the whole budget is gone already: nothing to preview.
            want_preview = entry.has_ply and self.preview_px > 0
            if want_preview:
                entry.preview_state = "pending"
        if self.directory is not None or entry.image is not None:
            self._jobs.submit(lambda: self._store(gen_id))
        self._delete_later(evicted)
        if want_preview and not self._jobs.offer(lambda: self._render_preview(gen_id)):
            with self._lock:
                entry.preview_state = "skipped"
                self.previews_skipped += 1
        return dict(entry.record)

    def count_outcome(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] += 1

    def recent(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Records, oldest first, each with ``ply``, ``preview`` and ``thumbnail`` telling what is kept."""
        with self._lock:
            entries = list(self._entries.values())
        if limit:
            entries = entries[-limit:]
        return [self._describe(e) for e in entries]

    # What the dashboard reads.

    def record(self, gen_id: int) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get(gen_id)
        return self._describe(entry) if entry else None

    def ply(self, gen_id: int) -> bytes | memoryview | None:
        """The PLY bytes, or None when unknown or evicted."""
        source = self.open_ply(gen_id)
        if isinstance(source, io.BufferedReader):
            with source:
                return source.read()
        return source

    def open_ply(self, gen_id: int) -> bytes | memoryview | io.BufferedReader | None:
        """The PLY as bytes when in RAM, else an open file (readable even if evicted meanwhile); None when gone."""
        with self._lock:
            entry = self._entries.get(gen_id)
            if entry is None:
                return None
            if entry.ply is not None:
                return entry.ply
            on_disk = entry.ply_on_disk
        if not on_disk:
            return None
        try:
            return self._path(gen_id, "ply").open("rb")
        except FileNotFoundError:  # evicted since
            return None

    def preview(self, gen_id: int) -> bytes | None:
        with self._lock:
            entry = self._entries.get(gen_id)
            return entry.preview if entry else None

    def thumbnail(self, gen_id: int) -> bytes | None:
        with self._lock:
            entry = self._entries.get(gen_id)
            return entry.thumbnail if entry else None

    def usage(self) -> dict[str, Any]:
        with self._lock:
            heavy = sum(e.heavy_bytes for e in self._entries.values())
            count = len(self._entries)
        return {
            "size": self.size,
            "count": count,
            "bytes": heavy,
            "max_bytes": self.max_bytes,
            "on_disk": self.directory is not None,
            "background_jobs": self._jobs.pending,
            "previews_skipped": self.previews_skipped,
        }

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Wait for pending writes and renders (tests, shutdown)."""
        return self._jobs.wait_idle(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Finish pending writes (renders are dropped) and stop the background thread."""
        self._jobs.close(timeout_s)

    # Internals.

    def _describe(self, entry: _Entry) -> dict[str, Any]:
        return {
            **entry.record,
            "ply": entry.has_ply,
            "ply_bytes": entry.ply_size if entry.has_ply else 0,
            "preview": entry.preview_state,
            "thumbnail": entry.thumbnail is not None,
            "not_kept": entry.not_kept,
        }

    def _evict(self) -> list[tuple[int, bool]]:
        """Under the lock: drop whole entries past ``size``, then the oldest PLYs and previews past the budget.

        Returns (id, whole) pairs: ``whole`` when the record went too, else only its heavy files.
        """
        gone: list[tuple[int, bool]] = []
        while len(self._entries) > self.size:
            gen_id, _ = self._entries.popitem(last=False)
            gone.append((gen_id, True))
        heavy = sum(e.heavy_bytes for e in self._entries.values())
        for gen_id, entry in self._entries.items():
            if heavy <= self.max_bytes:
                break
            if entry.heavy_bytes:
                heavy -= entry.heavy_bytes
                entry.ply, entry.ply_size, entry.ply_on_disk = None, 0, False
                entry.preview = None
                entry.preview_state = "evicted"
                gone.append((gen_id, False))
        return gone

    def _delete_later(self, evicted: list[tuple[int, bool]]) -> None:
        # Every file operation runs on the one background thread in order, so this delete always runs
        # after the writes queued for the same generation.
        if self.directory is not None and evicted:
            self._jobs.submit(lambda: self._delete_files(evicted))

    def _delete_files(self, evicted: list[tuple[int, bool]]) -> None:
        for gen_id, whole in evicted:
            parts = ("ply", "preview.png", "thumb.png", "json") if whole else ("ply", "preview.png")
            for part in parts:
                self._path(gen_id, part).unlink(missing_ok=True)

    def _path(self, gen_id: int, part: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{gen_id:08d}.{part}"

    def _store(self, gen_id: int) -> None:
        """Background: thumbnail the prompt image, then write the PLY, thumbnail and record (record last)."""
        with self._lock:
            entry = self._entries.get(gen_id)
            image = entry.image if entry else None
        thumb = thumbnail_png(image, self.thumbnail_px) if image else None
        with self._lock:
            entry = self._entries.get(gen_id)
            if entry is None:
                return
            entry.image = None
            entry.thumbnail = thumb
            ply = entry.ply
            record = entry.record
        if self.directory is None:
            return
        if ply is not None:
            write_bytes_atomic(self._path(gen_id, "ply"), ply)
        if thumb is not None:
            write_bytes_atomic(self._path(gen_id, "thumb.png"), thumb)
        write_bytes_atomic(self._path(gen_id, "json"), json.dumps(record).encode())
        with self._lock:
            entry = self._entries.get(gen_id)
            if entry is not None and entry.ply is not None:
                # From now on the PLY is read from disk; RAM holds only the small parts.
                entry.ply_on_disk, entry.ply = True, None

    def _render_preview(self, gen_id: int) -> None:
        ply = self.ply(gen_id)
        if ply is None:
            return
        try:
            png = preview_png(ply, self.preview_px, self.preview_max_gaussians)
        except (PlyFormatError, ValueError, MemoryError) as exc:
            log.warning("no preview for generation %d: %s", gen_id, exc)
            png = None
        finally:
            del ply
            # The render's temporaries sit in this thread's malloc arena: hand them back so RSS does not creep.
            malloc_trim()
        with self._lock:
            entry = self._entries.get(gen_id)
            if entry is None or not entry.has_ply:
                return
            if png is None:
                entry.preview_state = "failed"
                return
            entry.preview, entry.preview_state = png, "ready"
            evicted = self._evict()
        if self.directory is not None:
            write_bytes_atomic(self._path(gen_id, "preview.png"), png)
        self._delete_later(evicted)

    def _load(self) -> int:
        """Read back what an earlier run left in ``directory``; returns the highest id seen (0 when empty)."""
        assert self.directory is not None
        for leftover in self.directory.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
        files: dict[int, set[str]] = collections.defaultdict(set)
        for path in self.directory.iterdir():
            if match := _NAME.match(path.name):
                files[int(match.group(1))].add(match.group(2))
        highest = max(files, default=0)
        records: list[_Entry] = []
        for gen_id in sorted(files):
            parts = files[gen_id]
            entry = self._read_entry(gen_id, parts) if "json" in parts else None
            if entry is None:
                # No record means the write never finished: its other files are orphans.
                for part in parts:
                    self._path(gen_id, part).unlink(missing_ok=True)
                continue
            records.append(entry)
        for entry in records:
            self._entries[entry.record["id"]] = entry
        self._delete_files(self._evict())
        if self._entries:
            log.info("history: %d generations read back from %s", len(self._entries), self.directory)
        return highest

    def _read_entry(self, gen_id: int, parts: set[str]) -> _Entry | None:
        try:
            record = json.loads(self._path(gen_id, "json").read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("history: skipping unreadable record %d: %s", gen_id, exc)
            return None
        if not isinstance(record, dict) or record.get("id") != gen_id:
            return None
        entry = _Entry(record=record)
        if "ply" in parts:
            entry.ply_on_disk = True
            entry.ply_size = self._path(gen_id, "ply").stat().st_size
        for part, attr in (("preview.png", "preview"), ("thumb.png", "thumbnail")):
            if part in parts:
                with contextlib.suppress(OSError):
                    setattr(entry, attr, self._path(gen_id, part).read_bytes())
        if entry.preview is not None:
            entry.preview_state = "ready"
        elif not entry.ply_on_disk:
            entry.preview_state = "evicted"
        return entry
