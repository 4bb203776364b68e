"""Gap-fill: what Front emitted while the receiver was down is read back from the Events API
when the receiver starts, by itself.

Two cursors on ``source.cursors``:

- ``front.webhooks``: the newest ``emitted_at`` among the events this receiver stored, written
  every few seconds, only for events the broker already acknowledged;
- ``front.gapfill``: the window being filled. It is written before the fill starts and marked
  done after, so a receiver that dies mid-fill widens the next window to cover the unfinished
  one instead of forgetting it.

On start the window is ``[newest stored − front.gapfill_overlap_s, now]`` (Front documents no
ordering of events, hence the overlap; the duplicates it brings are dropped downstream by event
id), read by the same backfill as ``frontforce backfill front``.

While it runs, a receiver that had to refuse webhooks (503: the broker or the registry away)
reads them back the same way once it stores webhooks again (``RefusalRecovery``): Front drops
an app webhook after three failed retries, a few seconds, much less than a broker restart.
"""

from __future__ import annotations

import threading
import time

import structlog
from confluent_kafka import Producer

from frontforce.config import Settings
from frontforce.cursors import read_cursor, write_cursor
from frontforce.errors import FrontforceError
from frontforce.kafka import producer_config
from frontforce.serialization import Serde
from sources.front._backfill import backfill

log = structlog.get_logger("sources.front.gapfill")

WATERMARK = "front.webhooks"
JOB = "front.gapfill"


class WebhookWatermark:
    """The newest ``emitted_at`` (epoch ms) stored, flushed to ``source.cursors`` by a
    background thread every ``interval_s``."""

    def __init__(self, settings: Settings, serde: Serde, interval_s: float = 5.0) -> None:
        self.settings, self.serde, self.interval_s = settings, serde, interval_s
        self.latest_ms: int | None = None
        self._written_ms: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._producer: Producer | None = None
        self._thread = threading.Thread(target=self._loop, name="front-watermark", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def saw(self, occurred_at_ms: int) -> None:
        """Call only after the event was acknowledged by the broker."""
        with self._lock:
            if self.latest_ms is None or occurred_at_ms > self.latest_ms:
                self.latest_ms = occurred_at_ms

    def flush(self) -> None:
        with self._lock:
            latest = self.latest_ms
        if latest is None or latest == self._written_ms:
            return
        if self._producer is None:
            self._producer = Producer(producer_config(self.settings))
        write_cursor(self.settings, self.serde, self._producer, WATERMARK,
                     {"latest_emitted_at": latest / 1000.0}, covered_until_ms=latest)
        self._written_ms = latest

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.flush()
            except FrontforceError as exc:
                log.warning("webhook watermark not stored; will retry", error=str(exc))

    def stop(self) -> None:
        self._stop.set()
        try:
            self.flush()
        except FrontforceError as exc:
            log.warning("webhook watermark not stored at shutdown", error=str(exc))


def gap_fill(settings: Settings, serde: Serde, now: float | None = None) -> str | None:
    """Fill the gap since the last stored webhook; returns the backfill's name, or None when
    there is nothing to fill (first start, or no Front API token)."""
    if settings.front.api_token is None:
        log.info("gap-fill off: front.api_token is not configured")
        return None
    wm = read_cursor(settings, serde, WATERMARK)
    job = read_cursor(settings, serde, JOB)
    since: float | None = None
    if wm is not None:
        since = float(wm["position"]["latest_emitted_at"]) - settings.front.gapfill_overlap_s
    if job is not None and not job["position"].get("done"):
        unfinished = float(job["position"]["since"])
        since = unfinished if since is None else min(since, unfinished)
    if since is None:
        log.info("gap-fill: no webhook stored yet, nothing to fill")
        return None
    return fill_window(settings, serde, since, time.time() if now is None else now)


def fill_window(settings: Settings, serde: Serde, since: float, until: float) -> str:
    """Read ``[since, until]`` back from the Events API onto ``front.events``, with the
    ``front.gapfill`` cursor marking the window open, then done."""
    producer = Producer(producer_config(settings))
    write_cursor(settings, serde, producer, JOB, {"since": since, "until": until, "done": False},
                 covered_until_ms=int(since * 1000))
    log.info("gap-fill from the Events API", since=since, until=until)
    result = backfill(settings, since, until, name=f"front.gapfill:{int(since)}-{int(until)}")
    write_cursor(settings, serde, producer, JOB, {"since": since, "until": until, "done": True},
                 covered_until_ms=int(until * 1000))
    log.info("gap-fill complete", events=result.events, pages=result.pages)
    return result.name


class RefusalRecovery:
    """Webhooks this receiver answered 503 (the broker or the registry away) are read back
    from the Events API once it stores webhooks again: Front gives an app webhook up after
    three retries (fact sheet 7.3), well within an outage of the broker, and the gap-fill at
    start does not see a receiver that stayed up. The window runs from the oldest refused
    event's ``emitted_at`` (less ``front.gapfill_overlap_s``) to the first webhook stored
    after it; one fill at a time, a failed one is tried again after the next stored webhook."""

    def __init__(self, settings: Settings, serde: Serde) -> None:
        self.settings = settings
        self.serde = serde
        self._lock = threading.Lock()
        self._since: float | None = None  # oldest refused event, epoch seconds
        self._filling = False

    def refused(self, occurred_at_ms: int) -> None:
        with self._lock:
            at = occurred_at_ms / 1000.0
            self._since = at if self._since is None else min(self._since, at)

    def stored(self) -> None:
        """A webhook was stored: start filling what was refused before, if anything."""
        if self._since is None or self.settings.front.api_token is None:
            return
        with self._lock:
            if self._since is None or self._filling:
                return
            since, self._since, self._filling = self._since, None, True
        threading.Thread(target=self._fill, args=(since,), name="front-refusal-fill",
                         daemon=True).start()

    def _fill(self, since: float) -> None:
        start = since - self.settings.front.gapfill_overlap_s
        try:
            log.warning("webhooks were refused; reading them back from the Events API",
                        since=start)
            fill_window(self.settings, self.serde, start, time.time())
        except Exception as exc:  # noqa: BLE001 - tried again after the next stored webhook
            log.error("refused webhooks not read back yet; will try again", error=str(exc))
            self.refused(int(since * 1000))
        finally:
            with self._lock:
                self._filling = False


def start_gap_fill(settings: Settings, serde: Serde) -> threading.Thread:
    """Run ``gap_fill`` in the background so the receiver serves webhooks meanwhile."""

    def run() -> None:
        try:
            gap_fill(settings, serde)
        except Exception as exc:  # noqa: BLE001 - a failed fill is retried at the next start
            log.error("gap-fill failed; the next start covers this window again", error=str(exc))

    thread = threading.Thread(target=run, name="front-gapfill", daemon=True)
    thread.start()
    return thread
