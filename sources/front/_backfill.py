"""Front's Events API as a source: backfill a time window, and fill the gap a downtime left.

``GET /events`` answers newest first, 15 a page (reference/front-api.md §2.4). Each page is
normalized exactly as the webhook receiver normalizes a webhook (``source`` EVENTS_API),
produced to ``front.events`` and acknowledged by the broker; only then does the cursor on
``source.cursors`` move to the page's ``_pagination.next``. A backfill killed at any moment
re-reads at most the page it was working on; the records of that page may then be on the
topic twice, which the event id makes harmless downstream (as it does for the overlap with
webhooks). Events are emitted per page, newest first: nothing downstream depends on the
order of Front events (Front documents none).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import KafkaError, Message, Producer

from frontforce.config import Settings
from frontforce.cursors import read_cursor, write_cursor
from frontforce.errors import RetriableError
from frontforce.front import FrontClient, FrontRequestError
from frontforce.kafka import producer_config
from frontforce.masking import masked_strings, masker
from frontforce.serialization import Serde
from sources.front._normalize import UnsupportedEvent, event_key, normalize_event

log = structlog.get_logger("sources.front.backfill")


@dataclass
class BackfillResult:
    name: str
    pages: int = 0
    events: int = 0
    dead_lettered: int = 0
    resumed: bool = False
    already_done: bool = False


class _Progress:
    """A progress bar over the window's time span (the walk goes from ``until`` back to
    ``since``), or nothing when not on a terminal."""

    def __init__(self, enabled: bool, since: float, until: float) -> None:
        self.since, self.until = since, until
        self.bar: Any = None
        if enabled:
            from rich.progress import Progress

            self.bar = Progress(transient=False)
            self.bar.start()
            self.task = self.bar.add_task("front events", total=max(1.0, until - since))

    def update(self, oldest: float | None, events: int) -> None:
        if self.bar is not None and oldest is not None:
            self.bar.update(self.task, completed=min(self.until, max(0.0, self.until - oldest)),
                            description=f"front events ({events})")

    def close(self, done: bool) -> None:
        if self.bar is not None:
            if done:
                self.bar.update(self.task, completed=self.until - self.since)
            self.bar.stop()


def backfill(settings: Settings, since: float, until: float, *, name: str | None = None,
             progress: bool = False, client: FrontClient | None = None) -> BackfillResult:
    """Read every Front event emitted in ``[since, until]`` (epoch seconds) onto
    ``front.events``; resumable: run it again with the same window after a crash."""
    name = name or f"front.events-api:{math.floor(since)}-{math.ceil(until)}"
    result = BackfillResult(name)
    serde = Serde(settings)
    producer = Producer(producer_config(settings))
    own_client = client is None
    front = client or FrontClient(settings.front)
    cursor = read_cursor(settings, serde, name)
    pos: dict[str, Any] = cursor["position"] if cursor else {}
    if pos.get("done"):
        result.already_done = result.resumed = True
        log.info("backfill already complete", source=name)
        return result
    result.resumed = bool(pos)
    oldest: float | None = pos.get("oldest")
    bar = _Progress(progress, since, until)
    done = False
    try:
        start_url = pos.get("next")
        pages = front.event_pages(since, until, start_url=start_url)
        while True:
            try:
                events, nxt = next(pages)
            except StopIteration:
                break
            except FrontRequestError as exc:
                if start_url is None or exc.status not in (400, 404, 410):
                    raise
                # A stored page token Front no longer honours: walk the rest of the window
                # again by time, from just above the oldest event already stored.
                log.warning("stored page token refused; resuming by time", source=name, error=str(exc))
                start_url = None
                upper = until if oldest is None else min(until, oldest + 1)
                pages = front.event_pages(since, upper)
                continue
            result.pages += 1
            oldest = _store_page(settings, serde, producer, events, result, oldest)
            done = nxt is None
            write_cursor(settings, serde, producer, name,
                         {"since": since, "until": until, "next": nxt, "oldest": oldest, "done": done},
                         covered_until_ms=int(until * 1000))
            bar.update(oldest, result.events)
            log.info("page stored", source=name, page=result.pages, events=result.events,
                     oldest=oldest, more=not done)
        if not done:  # an empty window answers one empty page with no next: also done
            write_cursor(settings, serde, producer, name,
                         {"since": since, "until": until, "next": None, "oldest": oldest, "done": True},
                         covered_until_ms=int(until * 1000))
            done = True
        log.info("backfill complete", source=name, pages=result.pages, events=result.events,
                 dead_lettered=result.dead_lettered, throttled=front.pacer.throttled)
        return result
    finally:
        bar.close(done)
        producer.flush(10)
        if own_client:
            front.close()


def _store_page(settings: Settings, serde: Serde, producer: Producer, events: list[dict[str, Any]],
                result: BackfillResult, oldest: float | None) -> float | None:
    """Produce one page and wait until the broker acknowledged all of it."""
    topics = settings.topics
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err.str())

    for raw in events:
        emitted = raw.get("emitted_at")
        if isinstance(emitted, int | float) and not isinstance(emitted, bool):
            oldest = emitted if oldest is None else min(oldest, float(emitted))
        try:
            record = normalize_event(raw, "EVENTS_API")
            value = serde.encode(topics.front_events, record)
        except RetriableError:
            raise
        except (UnsupportedEvent, ValueError, TypeError, OverflowError, AttributeError) as exc:
            # Front's own API gave us something we cannot store: keep it, with the reason.
            result.dead_lettered += 1
            producer.produce(topics.deadletter, key=str(raw.get("id", "")).encode(), value=serde.encode(
                topics.deadletter, _dead_letter(raw, exc, masker(settings.privacy))), on_delivery=on_delivery)
            continue
        producer.produce(topics.front_events, key=event_key(record), value=value, on_delivery=on_delivery)
        result.events += 1
    remaining = producer.flush(settings.kafka.delivery_timeout_s * 3)
    if remaining or errors:
        raise RetriableError(f"backfill page not acknowledged ({remaining} pending): {errors[:2]}")
    return oldest


def _dead_letter(raw: dict[str, Any], exc: BaseException,
                 mask: Callable[[str | None], str | None]) -> dict[str, Any]:
    """Front's event as the API gave it, every string in it masked by ``privacy`` (the
    dead-letter topic is after ``front.events``: what is masked never reaches it)."""
    import json

    return {
        "original_topic": "front:/events",
        "original_partition": -1,
        "original_offset": -1,
        "original_key": str(raw.get("id", "")).encode(),
        "original_value": json.dumps(masked_strings(raw, mask), default=str).encode(),
        "stage": "source.front.events-api",
        "error_class": type(exc).__name__,
        "error_message": mask(str(exc)[:4000]) or "",
        "attempts": 1,
        "at": int(time.time() * 1000),
    }
