"""Atomic file writes: readers see the old file or the complete new one, never a partial file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

DEFAULT_MODE = 0o644


def write_bytes_atomic(
    path: str | os.PathLike[str], data: bytes | bytearray | memoryview, *, mode: int | None = None
) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync and ``os.replace``.

    On any error the temp file is removed and ``path`` is left as it was. The new file keeps the mode
    of the file it replaces (``mode`` overrides; a new file gets 0o644). Returns the path written.
    """
    target = Path(path)
    if target.is_symlink():
        # Replace the file the link points at, not the link itself.
        target = target.resolve()
    if mode is None:
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = DEFAULT_MODE
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, mode)
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    _fsync_directory(target.parent)
    return target


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; some filesystems refuse to open a directory, which is fine.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
