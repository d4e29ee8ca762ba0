"""The one view of the front end's state that ``/status`` and the dashboard's summary both answer with."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from generation.memory import rss_bytes

if TYPE_CHECKING:
    from generation.front.pipeline import FrontState


def status_view(state: FrontState, limit: int | None = None) -> dict[str, Any]:
    """Workers, queue, thresholds, the front end's own memory, outcomes by code, the last generations."""
    return {
        "workers": [w.snapshot() for w in state.pool.workers],
        "queue_depth": state.pool.waiting,
        "max_queue": state.settings.max_queue,
        "queue_timeout_s": state.settings.queue_timeout_s,
        "thresholds": state.guard.thresholds(),
        "front": {"pid": os.getpid(), "rss_bytes": rss_bytes()},
        "outcomes": dict(state.history.outcomes),
        "generations": state.history.recent(limit),
    }
