"""The last N generations, for /status and the dashboard."""

from __future__ import annotations

import collections
import itertools
import threading
from typing import Any


class History:
    """A bounded, thread-safe list of generation records (plain JSON-able dicts), newest last."""

    def __init__(self, size: int) -> None:
        self._records: collections.deque[dict[str, Any]] = collections.deque(maxlen=max(size, 1))
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.outcomes: collections.Counter[str] = collections.Counter()

    def add(self, record: dict[str, Any], ply: bytes | None = None) -> dict[str, Any]:
        with self._lock:
            record = {"id": next(self._ids), **record}
            self._records.append(record)
            self.outcomes[str(record.get("outcome", "ok"))] += 1
        return record

    def count_outcome(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] += 1

    def recent(self, limit: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._records)
        return items[-limit:] if limit else items
