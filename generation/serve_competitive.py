"""gen-worker-1, the front end the 404 miner talks to: ``splatgen front`` builds it from here.

The app lives in ``generation.front``; this entry module keeps the name operators and PM2 know.
"""

from __future__ import annotations

from generation.front.app import create_app

__all__ = ["create_app"]
