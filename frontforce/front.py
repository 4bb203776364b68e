"""The Front Core API client every Front call of a deployment goes through.

Front's budget is per company, shared by every token (reference/front-api.md §6): one
``FrontPacer`` per process spends it, fed by Front's own ``x-ratelimit-*`` headers. Those
headers count the whole company, so several frontforce processes (a backfill, the gap-fill,
the Front sink) see each other's spending and stop together at ``rate_share`` of the window
instead of drawing a storm of 429s. When a 429 comes anyway (another integration, a
per-resource guard) the wait is, in this order: ``retry-after``, ``x-ratelimit-reset``, the
milliseconds quoted in the body, jittered exponential backoff (fact sheet §6.3, note 9).
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

from frontforce import metrics
from frontforce.config import FrontConfig
from frontforce.errors import FatalError, InvalidRecordError, RetriableError

log = structlog.get_logger("frontforce.front")

_RETRY_MS = re.compile(r"retry in (\d+) millisecond", re.I)
# How long one call may keep failing transiently (5xx, no answer) before we give up on it.
_MAX_TRANSIENT_S = 300.0


@dataclass
class FrontPacer:
    """Spends the company's per-window budget up to ``share`` of it, from the headers."""

    share: float = 1.0
    limit: int | None = None
    remaining: int | None = None
    reset_at: float = 0.0
    waited_s: float = 0.0
    throttled: int = 0  # 429 answers seen
    calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def wait_time(self, now: float) -> float:
        """Seconds to wait before the next call; reserves the call when it is 0."""
        with self._lock:
            if self.limit is None or self.remaining is None or now >= self.reset_at:
                return 0.0  # first call, or the window rolled: the next answer tells
            spent = self.limit - self.remaining
            if spent >= math.floor(self.limit * self.share):
                return self.reset_at - now + 0.05
            self.remaining -= 1  # reserved: other threads of this process see it at once
            return 0.0

    def before_call(self, sleep: Callable[[float], None] = time.sleep) -> None:
        while True:
            wait = self.wait_time(time.time())
            if wait <= 0:
                return
            self.waited_s += wait
            sleep(wait)

    def observe(self, headers: httpx.Headers) -> None:
        try:
            limit = int(headers["x-ratelimit-limit"])
            remaining = int(headers["x-ratelimit-remaining"])
            reset = float(headers["x-ratelimit-reset"])
        except (KeyError, ValueError):
            return
        with self._lock:
            self.calls += 1
            self.limit, self.remaining, self.reset_at = limit, remaining, reset
        metrics.FRONT_RATELIMIT_REMAINING.set(remaining)
        metrics.FRONT_RATELIMIT_LIMIT.set(limit)

    def wait_after_429(self, resp: httpx.Response, attempt: int) -> float:
        with self._lock:
            self.throttled += 1
        metrics.THROTTLED.labels("front").inc()
        now = time.time()
        try:
            if "retry-after" in resp.headers:
                return max(0.0, float(resp.headers["retry-after"]))
            if "x-ratelimit-reset" in resp.headers and int(resp.headers.get("x-ratelimit-remaining", "1")) == 0:
                return max(0.0, float(resp.headers["x-ratelimit-reset"]) - now + 0.05)
        except ValueError:
            pass
        m = _RETRY_MS.search(resp.text)
        if m:
            return int(m.group(1)) / 1000.0 + 0.01
        return min(60.0, 0.5 * 2 ** attempt) * random.uniform(0.5, 1.0)


_PACERS: dict[str, FrontPacer] = {}
_PACERS_LOCK = threading.Lock()


def shared_pacer(api_url: str, share: float) -> FrontPacer:
    """One pacer per Front company (API base URL) per process."""
    with _PACERS_LOCK:
        pacer = _PACERS.get(api_url)
        if pacer is None:
            pacer = _PACERS[api_url] = FrontPacer(share=share)
        return pacer


class FrontRequestError(InvalidRecordError):
    """Front refused the request itself (4xx other than 401/429): retrying will not help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"front HTTP {status}: {message}")
        self.status = status


class FrontClient:
    """Every call paced by the company's shared ``FrontPacer``; a 429 waits what Front says
    and tries again (quota is never an error). ``sleep`` is how the client waits (a sink
    passes one that keeps its consumer polling). Reads are retried in place on 5xx and
    transport errors for ``max_transient_s``; writes are not (Front has no idempotency
    key: a write that timed out may have happened, and only the caller can check), they
    raise ``RetriableError`` at once."""

    def __init__(self, cfg: FrontConfig, pacer: FrontPacer | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 max_transient_s: float = _MAX_TRANSIENT_S) -> None:
        if cfg.api_token is None:
            raise FatalError("front.api_token is not configured")
        self.base = cfg.api_url.rstrip("/")
        self.pacer = pacer or shared_pacer(self.base, cfg.rate_share)
        self.sleep = sleep
        self.max_transient_s = max_transient_s
        self.calls = 0  # requests this client sent (429s included)
        self.http = httpx.Client(
            timeout=cfg.timeout_s, trust_env=False,
            headers={"Authorization": f"Bearer {cfg.api_token.get_secret_value()}",
                     "Accept": "application/json"})

    def close(self) -> None:
        self.http.close()

    def get(self, path_or_url: str, params: Any = None) -> dict[str, Any]:
        """GET a path (or an absolute ``_pagination.next`` URL, followed verbatim)."""
        body = self.request("GET", path_or_url, params=params)
        assert body is not None
        return body

    def post(self, path: str, json: Any) -> dict[str, Any] | None:
        return self.request("POST", path, json=json)

    def patch(self, path: str, json: Any) -> dict[str, Any] | None:
        return self.request("PATCH", path, json=json)

    def put(self, path: str, json: Any) -> dict[str, Any] | None:
        return self.request("PUT", path, json=json)

    def delete(self, path: str, json: Any = None) -> dict[str, Any] | None:
        return self.request("DELETE", path, json=json)

    def request(self, method: str, path_or_url: str, params: Any = None,
                json: Any = None) -> dict[str, Any] | None:
        """One Front call: the JSON body of its answer (None for 204). A 301 (merged
        conversation) is followed once to the survivor."""
        url = path_or_url if path_or_url.startswith("http") else self.base + path_or_url
        started = time.monotonic()
        attempt = 0
        redirected = False
        while True:
            attempt += 1
            self.pacer.before_call(self.sleep)
            self.calls += 1
            metrics.API_CALLS.labels("front").inc()
            try:
                resp = self.http.request(method, url, params=params, json=json)
            except httpx.TransportError as exc:
                self._transient(method, started, attempt, f"{type(exc).__name__}: {exc}")
                continue
            self.pacer.observe(resp.headers)
            if resp.status_code == 429:
                wait = self.pacer.wait_after_429(resp, attempt)
                log.warning("front rate limit: waiting", wait_s=round(wait, 2),
                            tier=resp.headers.get("x-front-tier"))
                self.sleep(wait)
                continue
            if resp.status_code == 301 and "location" in resp.headers and not redirected:
                url, redirected = resp.headers["location"], True
                continue
            if resp.status_code >= 500:
                self._transient(method, started, attempt, f"HTTP {resp.status_code}")
                continue
            if resp.status_code == 401:
                raise FatalError("front refused the API token (401)")
            if resp.status_code >= 400:
                raise FrontRequestError(resp.status_code, _error_message(resp))
            if resp.status_code == 204 or not resp.content:
                return None
            body: dict[str, Any] = resp.json()
            return body

    def _transient(self, method: str, started: float, attempt: int, why: str) -> None:
        if method != "GET":
            raise RetriableError(f"front {method}: {why} (may have been applied)")
        if time.monotonic() - started > self.max_transient_s:
            raise RetriableError(f"front unavailable for {self.max_transient_s:.0f} s: {why}")
        delay = min(30.0, 0.5 * 2 ** attempt) * random.uniform(0.5, 1.0)
        log.warning("front call failed, retrying", error=why, delay_s=round(delay, 2))
        self.sleep(delay)

    def event_pages(self, after: float | None, before: float | None,
                    start_url: str | None = None) -> Iterator[tuple[list[dict[str, Any]], str | None]]:
        """Pages of ``GET /events`` (newest first, 15 a page) in the window, each with the
        ``_pagination.next`` URL that follows it (None on the last page)."""
        url: str | None
        if start_url:
            url, params = start_url, None
        else:
            url = "/events"
            params = [("limit", "15")]
            if after is not None:
                params.append(("q[after]", str(math.floor(after))))
            if before is not None:
                params.append(("q[before]", str(math.ceil(before))))
        while url:
            page = self.get(url, params)
            params = None  # `next` already carries the query
            nxt = (page.get("_pagination") or {}).get("next")
            yield list(page.get("_results") or []), nxt
            url = nxt


def _error_message(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("_error") or {}
        text = str(err.get("message") or err.get("title") or resp.text[:200])
        details = err.get("details")
        if isinstance(details, list) and details:
            text += " (" + "; ".join(map(str, details[:10])) + ")"
        return text
    except ValueError:
        return resp.text[:200]
