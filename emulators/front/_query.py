"""Query-string conventions of Front lists (fact sheet §2): the ``q`` object in bracket syntax,
``limit`` caps, newest-first ordering and opaque ``page_token`` cursors.

Pagination is keyset-based: the token carries the sort key of the last item served, so pages
stay stable while new items arrive at the head (a live ``/events`` walk must not skip or
repeat). ``_pagination.next`` repeats the original query verbatim plus the token, so a client
must follow it as is (fact sheet §2.1).
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

from emulators.front._errors import bad_request

__all__ = ["Query", "cursor", "paginate", "paginate_sorted"]

# q[types]=a&q[types]=b (the spec's deepObject form) and q[types][]=a (what many clients
# send; accepted by Front per the fact sheet, §2.3). Other shapes (q[types][0]=…, a JSON q)
# are refused rather than ignored, so a client never silently loses its filter.
_Q_KEY = re.compile(r"^q\[(\w+)\](?:\[\])?$")
DEFAULT_LIMIT = 50


class Query:
    def __init__(self, pairs: Sequence[tuple[str, str]], config: dict[str, Any]) -> None:
        self.pairs = list(pairs)
        self.config = config
        self.q: dict[str, list[str]] = {}
        for key, value in self.pairs:
            match = _Q_KEY.match(key)
            if match:
                self.q.setdefault(match.group(1), []).append(value)
            elif key == "q" or key.startswith("q["):
                raise bad_request(f"Unsupported query parameter {key}; use q[name]=value")

    def allow(self, *names: str) -> Query:
        """Refuse q keys the route does not know (a typo must not drop a filter)."""
        unknown = sorted(set(self.q) - set(names))
        if unknown:
            raise bad_request(f"Unknown q properties: {', '.join(unknown)}")
        return self

    def get(self, name: str) -> str | None:
        values = [v for k, v in self.pairs if k == name]
        return values[-1] if values else None

    def q_list(self, name: str, allowed: Sequence[str] | None = None) -> list[str]:
        values = [v for v in self.q.get(name, []) if v]
        if allowed is not None:
            unknown = sorted(set(values) - set(allowed))
            if unknown:
                raise bad_request(f"Invalid value(s) for q[{name}]: {', '.join(unknown)}")
        return values

    def q_time(self, name: str) -> float | None:
        values = self.q.get(name)
        if not values:
            return None
        raw = values[-1]
        try:
            value = float(raw)
        except ValueError:
            raise bad_request(f"q[{name}] must be a timestamp in seconds") from None
        if not math.isfinite(value):
            raise bad_request(f"q[{name}] must be a timestamp in seconds")
        if self.config["reject_fractional_q_time"] and value != int(value):
            raise bad_request(f"q[{name}] must be an integer timestamp")
        return value

    def limit(self, maximum: int, default: int = DEFAULT_LIMIT) -> int:
        raw = self.get("limit")
        if raw is None or raw == "":
            return min(default, maximum)
        try:
            value = int(raw)
        except ValueError:
            raise bad_request("limit must be an integer") from None
        if value < 1:
            raise bad_request("limit must be positive")
        if value > maximum:
            if self.config["clamp_limit"]:
                return maximum
            raise bad_request(f"limit must be less than or equal to {maximum}")
        return value

    def descending(self, sort_fields: Sequence[str], default_desc: bool = True) -> bool:
        sort_by = self.get("sort_by")
        if sort_by and sort_by not in sort_fields:
            raise bad_request(f"sort_by must be one of: {', '.join(sort_fields)}")
        order = self.get("sort_order")
        if order is None or order == "":
            return default_desc
        if order not in ("asc", "desc"):
            raise bad_request("sort_order must be asc or desc")
        return order == "desc"


def _encode(key: tuple[Any, ...]) -> str:
    return json.dumps(list(key), separators=(",", ":")).encode().hex()


def _decode(token: str) -> tuple[Any, ...]:
    try:
        value = json.loads(bytes.fromhex(token).decode())
    except (ValueError, UnicodeDecodeError):
        raise bad_request("Invalid page_token") from None
    if not isinstance(value, list):
        raise bad_request("Invalid page_token")
    return tuple(value)


def _next_url(query: Query, path: str, last_key: tuple[Any, ...]) -> str:
    kept = [(k, v) for k, v in query.pairs if k != "page_token"]
    kept.append(("page_token", _encode(last_key)))
    return f"{path}?{urlencode(kept, safe='[]:,')}"


def cursor(query: Query) -> tuple[Any, ...] | None:
    token = query.get("page_token")
    return _decode(token) if token else None


def paginate(items: Sequence[Any], key: Callable[[Any], tuple[Any, ...]], query: Query,
             path: str, limit: int, descending: bool) -> tuple[list[Any], str | None]:
    """Sort ``items`` by ``key``, skip past the token's cursor, cut one page.
    Returns the page and the relative ``next`` URL (None on the last page)."""
    ordered = sorted(items, key=key, reverse=descending)
    after = cursor(query)
    if after is not None:
        try:
            ordered = [it for it in ordered
                       if (key(it) < after if descending else key(it) > after)]
        except TypeError:
            raise bad_request("Invalid page_token") from None
    page = ordered[:limit]
    if len(ordered) <= limit:
        return page, None
    return page, _next_url(query, path, key(page[-1]))


def paginate_sorted(keys: Sequence[tuple[Any, ...]], fetch: Callable[[tuple[Any, ...]], Any],
                    keep: Callable[[Any], bool], query: Query, path: str, limit: int,
                    descending: bool, lo: int = 0, hi: int | None = None
                    ) -> tuple[list[Any], str | None]:
    """Like ``paginate`` over ``keys`` already sorted ascending (restricted to [lo, hi)):
    bisect to the cursor and scan only until the page is full."""
    hi = len(keys) if hi is None else hi
    after = cursor(query)
    if after is not None:
        try:
            if descending:
                hi = min(hi, bisect.bisect_left(keys, after))
            else:
                lo = max(lo, bisect.bisect_right(keys, after))
        except TypeError:
            raise bad_request("Invalid page_token") from None
    page: list[tuple[tuple[Any, ...], Any]] = []
    for i in (range(hi - 1, lo - 1, -1) if descending else range(lo, hi)):
        item = fetch(keys[i])
        if keep(item):
            page.append((keys[i], item))
            if len(page) > limit:
                break
    if len(page) <= limit:
        return [item for _, item in page], None
    page = page[:limit]
    return [item for _, item in page], _next_url(query, path, page[-1][0])
