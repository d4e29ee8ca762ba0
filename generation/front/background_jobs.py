"""One background thread for work that must stay off the request path (disk writes, preview renders).

Two lanes: ``must`` jobs (writes, deletes) all run, in order; ``may`` jobs (previews) wait in a bounded
queue and are refused when it is full, so a burst of generations never builds a backlog of renders.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger("splatgen.background")

Job = Callable[[], None]
# Renders compete with the event loop for the CPU; a nicer thread leaves the request path ahead.
_NICE_INCREMENT = 10


class BackgroundJobs:
    """A single lazily started daemon thread; ``close()`` finishes the ``must`` lane and stops it."""

    def __init__(self, name: str, max_optional: int) -> None:
        self.name = name
        self.max_optional = max(max_optional, 0)
        self._must: collections.deque[Job] = collections.deque()
        self._may: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._running = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self.failures = 0

    def submit(self, job: Job) -> None:
        """Queue a job that must run (in submission order, before any optional job)."""
        with self._cond:
            if self._closed:
                return
            self._must.append(job)
            self._start()
            self._cond.notify_all()

    def offer(self, job: Job) -> bool:
        """Queue an optional job unless ``max_optional`` already wait; False when refused."""
        with self._cond:
            if self._closed or len(self._may) >= self.max_optional:
                return False
            self._may.append(job)
            self._start()
            self._cond.notify_all()
            return True

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._must) + len(self._may) + self._running

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until every queued job has run; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._must or self._may or self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Drop optional jobs, run the remaining ``must`` jobs (up to ``timeout_s``), stop the thread."""
        with self._cond:
            self._may.clear()
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def _next(self) -> Job | None:
        with self._cond:
            while not self._must and not self._may:
                if self._closed:
                    return None
                self._cond.wait()
            job = self._must.popleft() if self._must else self._may.popleft()
            self._running += 1
            return job

    def _loop(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            # Linux gives each thread its own nice value.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _NICE_INCREMENT)
        while (job := self._next()) is not None:
            try:
                job()
            except Exception:
                self.failures += 1
                log.exception("%s: a background job failed", self.name)
            finally:
                with self._cond:
                    self._running -= 1
                    self._cond.notify_all()
