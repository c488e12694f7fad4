"""Instructure's published per-endpoint limits, enforced over a sliding window that tests can shrink."""

from __future__ import annotations

import math
import time
from collections import deque

# calls per minute, from the developer docs' limits page
PUBLISHED_LIMITS = {"data": 5, "list": 5, "job": 500, "schema": 500, "url": 200}


class RateLimiter:
    """Sliding-window limits per endpoint; ``time_scale=10`` turns "5 per minute" into "5 per 6 seconds"."""

    def __init__(self, limits: dict[str, int] | None = None, time_scale: float = 1.0) -> None:
        self.limits = dict(PUBLISHED_LIMITS if limits is None else limits)
        self.window = 60.0 / time_scale
        self.calls: dict[str, deque[float]] = {}

    def check(self, endpoint: str) -> int | None:
        """Record a call; None if allowed, else the whole seconds to wait (for ``Retry-After``)."""
        limit = self.limits.get(endpoint)
        if limit is None:
            return None
        now = time.monotonic()
        calls = self.calls.setdefault(endpoint, deque())
        while calls and calls[0] <= now - self.window:
            calls.popleft()
        if len(calls) >= limit:
            return max(1, math.ceil(calls[0] + self.window - now))
        calls.append(now)
        return None
