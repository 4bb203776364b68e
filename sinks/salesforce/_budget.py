"""The sink's share of the org's daily API allocation.

Usage comes from two places: the ``Sforce-Limit-Info`` header of every answer (current, but
only seen when a call is made) and the ``/limits`` resource (``DailyApiRequests``), which
the sink reads while it makes no other call, so that a pause at the budget can end. A 403
REQUEST_LIMIT_EXCEEDED closes the budget until ``/limits`` is read again, whatever the last
header said.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Budget:
    def __init__(self, share: float) -> None:
        self.share = share
        self.used: int | None = None
        self.total: int | None = None
        self.refused: str | None = None

    def observe_header(self, api_usage: Mapping[str, Any]) -> None:
        """Read simple-salesforce's parsed ``Sforce-Limit-Info`` (``client.api_usage``)."""
        usage = api_usage.get("api-usage")
        if usage is not None:
            self.used, self.total = int(usage.used), int(usage.total)

    def observe_limits(self, limits: Mapping[str, Any]) -> None:
        """Read ``GET /limits``; clears a refusal, since this is the fresher verdict."""
        daily = limits.get("DailyApiRequests") if isinstance(limits, Mapping) else None
        if not isinstance(daily, Mapping) or "Max" not in daily or "Remaining" not in daily:
            raise ValueError(f"no DailyApiRequests in /limits: {str(limits)[:200]}")
        self.total = int(daily["Max"])
        self.used = self.total - int(daily["Remaining"])
        self.refused = None

    def refuse(self, reason: str) -> None:
        self.refused = reason

    @property
    def allowed(self) -> float | None:
        return None if self.total is None else self.total * self.share

    def closed(self) -> str | None:
        """Why no call may be made now, or None when the budget allows one."""
        if self.refused is not None:
            return self.refused
        if self.used is None or self.total is None:
            return None
        allowed = self.total * self.share
        if self.used >= allowed:
            return (f"salesforce API budget: {self.used}/{self.total} used, "
                    f"share {self.share:g} allows {allowed:.0f}")
        return None
