"""``frontforce load salesforce``: the initial SOQL load of the synced objects (Contact,
Lead, Account, Opportunity, Case, User by default; ``query`` follows ``nextRecordsUrl``,
2,000 rows a page), each row a SNAPSHOT change keyed by record id, handed over to the
change subscription without a hole.

For a channel that has no cursor yet this is ``TopicSource.hand_over``: a Pub/Sub
subscription from LATEST is opened first and its first answer awaited (a keepalive at the
latest within Salesforce's 270 s), so its replay id is taken before the load starts; the
rows are produced, and once the broker acknowledged all of them the cursor is written.
``frontforce source salesforce`` then resumes right after that replay id: whatever changed
during the load arrives again as a change (consumers order by ``commit_timestamp``).
A channel that already has a cursor keeps it: the rows are produced as a refresh.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

import structlog

from frontforce.config import Settings
from frontforce.serialization import Serde
from sources.salesforce._cursor import load_cursor
from sources.salesforce._pubsub import PubSubClient
from sources.salesforce._source import TopicSource, cursor_key

__all__ = ["load_snapshot"]

log = structlog.get_logger("sources.salesforce")


def _reader(source: TopicSource, counted: Any) -> Any:
    return lambda: counted(source.load())


def load_snapshot(settings: Settings, objects: list[str] | None = None,
                  progress: bool = False) -> dict[str, int]:
    """Produce every row of the synced objects (or of ``objects``); return rows produced per
    object. Returns only after the broker acknowledged all of them (and the cursors).
    ``progress`` shows a live count per object on the terminal."""
    serde = Serde(settings)
    client = PubSubClient(settings)
    counts: dict[str, int] = {}
    bar = _Progress() if progress else None

    def counted(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for row in rows:
            counts[row["sobject"]] = counts.get(row["sobject"], 0) + 1
            if bar is not None:
                bar.advance(row["sobject"])
            yield row

    try:
        for topic in settings.salesforce_source.topics:
            cursor = load_cursor(settings, serde, cursor_key(settings, topic))
            source = TopicSource(settings, topic, client, serde, threading.Event(), cursor)
            if objects is not None:
                source.objects = [o for o in source.objects if o in objects]
            for sobject in source.objects:
                counts.setdefault(sobject, 0)
            if source.cursor is None:
                source.hand_over("initial load", _reader(source, counted), follow=False)
            else:
                log.info("channel has a cursor; loading without moving it", topic=topic,
                         position=source.cursor.position)
                for row in counted(source.load()):
                    source.publish(row)
            source.flush()
    finally:
        client.close()
        if bar is not None:
            bar.stop()
    return counts


class _Progress:
    """Rows read per object, live (the total is not known without a COUNT() call each)."""

    def __init__(self) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn

        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                            TextColumn("{task.completed} rows"))
        self.tasks: dict[str, Any] = {}
        self.bar.start()

    def advance(self, sobject: str) -> None:
        if sobject not in self.tasks:
            self.tasks[sobject] = self.bar.add_task(sobject, total=None)
        self.bar.advance(self.tasks[sobject])

    def stop(self) -> None:
        self.bar.stop()
