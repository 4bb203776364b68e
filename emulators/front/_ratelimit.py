"""Front's rate limits (fact sheet §6).

* A company-wide budget per window (plan rpm, shared by every API token; partner OAuth tokens
  have their own bucket). Fixed windows: ``x-ratelimit-reset`` is the epoch second at which
  the current window ends and the budget refills.
* Per-resource guards (tier 2: N requests per second on one conversation's write routes;
  ``POST /links``: 60 per minute) that refuse with 429 while the company budget still has
  room — the case naive clients mishandle.

Refused requests are not charged: a 429 does not consume budget.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

__all__ = ["Decision", "RateLimiter"]


@dataclass
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: float
    retry_after_s: float = 0.0
    tier: str | None = None

    def headers(self, omit_retry_after: bool) -> dict[str, str]:
        out = {"x-ratelimit-limit": str(self.limit),
               "x-ratelimit-remaining": str(max(0, self.remaining)),
               "x-ratelimit-reset": str(math.ceil(self.reset))}
        if not self.allowed:
            if not omit_retry_after:
                out["retry-after"] = str(max(1, math.ceil(self.retry_after_s)))
            if self.tier:
                out["x-front-tier"] = self.tier
        return out


class RateLimiter:
    def __init__(self) -> None:
        self._windows: dict[str, tuple[float, int]] = {}  # bucket -> (window start, used)
        self._guards: dict[str, deque[float]] = {}

    def reset(self) -> None:
        self._windows.clear()
        self._guards.clear()

    def _window(self, bucket: str, window_s: float, now: float) -> tuple[float, int]:
        start, used = self._windows.get(bucket, (now, 0))
        if now >= start + window_s:
            start, used = now, 0
        self._windows[bucket] = (start, used)
        return start, used

    def peek(self, bucket: str, limit: int, window_s: float, now: float) -> Decision:
        start, used = self._window(bucket, window_s, now)
        return Decision(True, limit, limit - used, start + window_s)

    def charge(self, bucket: str, limit: int, window_s: float, now: float) -> Decision:
        """Check the company budget; consume one unit if allowed."""
        start, used = self._window(bucket, window_s, now)
        reset = start + window_s
        if used >= limit:
            return Decision(False, limit, 0, reset, retry_after_s=reset - now)
        self._windows[bucket] = (start, used + 1)
        return Decision(True, limit, limit - used - 1, reset)

    def refund(self, bucket: str) -> None:
        start, used = self._windows.get(bucket, (0.0, 0))
        if used > 0:
            self._windows[bucket] = (start, used - 1)

    def guard(self, key: str, limit: int, period_s: float, now: float) -> float | None:
        """Sliding-window guard. None if allowed (and recorded), else seconds to wait."""
        hits = self._guards.setdefault(key, deque())
        while hits and hits[0] <= now - period_s:
            hits.popleft()
        if len(hits) >= limit:
            return hits[0] + period_s - now
        hits.append(now)
        return None
