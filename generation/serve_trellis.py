"""trellis-microservice, the worker that owns one GPU: ``splatgen worker`` builds it from here.

The app lives in ``generation.worker``; this entry module keeps the name operators and PM2 know.
"""

from __future__ import annotations

from generation.worker.app import create_app, request_exit

__all__ = ["create_app", "request_exit"]
