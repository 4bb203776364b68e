"""The Salesforce change source: Change Data Capture over the Pub/Sub API onto
``salesforce.changes``, its replay id onto ``source.cursors``.

One ``TopicSource`` per configured channel (``/data/ChangeEvents`` by default), each on its
own thread with its own cursor. The order, which is the guarantee:

1. **Resume** after the stored replay id (CUSTOM replay).
2. **Hand over** when there is nothing to resume from: no cursor yet (initial load), or the
   stored id is refused as expired (a WARNING, then a SOQL re-read of every record modified
   since the cursor's ``covered_until`` minus ``reread_overlap_s``, deleted ones included).
   The subscription is opened from LATEST *first*, and the read starts only after the
   server's first answer (events, or a keepalive carrying ``latest_replay_id``): from then
   on the subscription holds every later change, so nothing committed between the read and
   the subscription can fall through. That answer's events are produced, then the SOQL rows;
   once the broker acknowledged all of them the cursor is written, and the same subscription
   goes on.
3. **Each FetchResponse**: every event decoded (schema from GetSchema, cached by id; bitmaps
   expanded), fanned out to one record per record id and produced; a gap event is produced
   as a GAP record followed by the SOQL re-read of the records it names (GAP_OVERFLOW: of its
   object, since its commit minus the overlap), in place. Then ``flush`` waits until the
   broker acknowledged every one (idempotent producer, acks=all), and only then the cursor
   (the batch's last replay id) is produced, and acknowledged, before the events handled
   are asked for again (``num_requested``). A keepalive moves the cursor to its
   ``latest_replay_id``.

A process killed at any point re-reads at most the batch whose cursor was not written yet:
consumers see duplicates, never a hole. Transient failures (Pub/Sub, Kafka, the registry,
SOQL) resubscribe from the last written cursor after a jittered backoff; UNAUTHENTICATED
logs in again first; the event delivery allocation pauses ``limit_wait_s``.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import structlog
from confluent_kafka import KafkaError, Message, Producer
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_random_exponential

from frontforce import metrics
from frontforce.config import Settings
from frontforce.errors import BackPressure, FatalError, RetriableError
from frontforce.kafka import producer_config
from frontforce.serialization import Serde
from sources.salesforce._changes import from_event, position_of
from sources.salesforce._cursor import Cursor, load_cursor, store_cursor
from sources.salesforce._pubsub import AuthExpired, PubSubClient, ReplayExpired, Subscription
from sources.salesforce._soql import read_all, read_ids, read_since

__all__ = ["TopicSource", "cursor_key", "run_source", "topic_objects"]

log = structlog.get_logger("sources.salesforce")

ALL_CHANNEL = "/data/ChangeEvents"


def cursor_key(settings: Settings, topic: str) -> str:
    return f"{settings.salesforce_source.cursor_prefix}:{topic}"


def topic_objects(topic: str, objects: list[str]) -> list[str]:
    """The configured objects a channel carries: all of them on ``/data/ChangeEvents``, the
    channel's own on ``/data/{Object}ChangeEvent``."""
    if topic == ALL_CHANNEL:
        return list(objects)
    name = topic.removeprefix("/data/").removesuffix("ChangeEvent")
    return [o for o in objects if o.lower() == name.lower()]


class _Publisher:
    """Produces change records and cursors; ``flush`` returns only once the broker
    acknowledged everything produced so far, or raises ``RetriableError``."""

    def __init__(self, settings: Settings, serde: Serde) -> None:
        self.settings = settings
        self.serde = serde
        self.changes_topic = settings.topics.salesforce_changes
        self._producer = Producer(producer_config(settings))
        self._timeout_s = settings.kafka.delivery_timeout_s * 3
        self._errors: list[str] = []
        self.broken = False

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(err.str())
        else:
            metrics.RECORDS_OUT.labels(self.changes_topic).inc()

    def _produce(self, topic: str, key: str, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(topic, key=key.encode(), value=value,
                                       on_delivery=self._on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain
                self._producer.poll(0.1)
        self._producer.poll(0)

    def change(self, record: dict[str, Any]) -> None:
        self._produce(self.changes_topic, str(record["record_id"]),
                      self.serde.encode(self.changes_topic, record))

    def cursor(self, cursor: Cursor) -> None:
        """Write ``cursor``; returns once the broker acknowledged it and everything before."""
        try:
            store_cursor(self.settings, self.serde, self._producer, cursor)
        except RetriableError:
            self.broken = True
            raise

    def flush(self) -> None:
        remaining = self._producer.flush(self._timeout_s)
        if remaining or self._errors:
            errors, self._errors = self._errors[:3], []
            self.broken = True
            raise RetriableError(f"kafka did not acknowledge: {remaining} pending, errors {errors}")


class TopicSource:
    """One channel: its subscription, its cursor, its hand-overs (see the module doc)."""

    def __init__(self, settings: Settings, topic: str, client: PubSubClient, serde: Serde,
                 stop: threading.Event, cursor: Cursor | None) -> None:
        self.settings = settings
        self.cfg = settings.salesforce_source
        self.topic = topic
        self.client = client
        self.serde = serde
        self.stop = stop
        self.cursor = cursor
        self.key = cursor_key(settings, topic)
        self.objects = topic_objects(topic, self.cfg.objects)
        self.custom = dict(self.cfg.custom_fields)
        self._overlap_ms = int(self.cfg.reread_overlap_s * 1000)
        self._publisher = _Publisher(settings, serde)
        self._reread_from: int | None = None  # set when the stored replay id was refused
        self._stale_login: Any = None
        self._sub: Subscription | None = None

    # ------------------------------------------------------------------ running
    def run(self) -> None:
        """Follow the channel until ``stop``; transient failures are retried forever (an
        always-on source), each logged, with jittered exponential backoff."""
        def before_sleep(state: RetryCallState) -> None:
            if self.stop.is_set():
                return  # the stop cancelled the call: nothing to report
            exc = state.outcome.exception() if state.outcome else None
            metrics.RETRIES.labels("source.salesforce").inc()
            log.warning("resubscribing", topic=self.topic, attempt=state.attempt_number,
                        wait_s=round(state.upcoming_sleep, 2), error=str(exc))

        while not self.stop.is_set():
            try:
                for attempt in Retrying(retry=retry_if_exception_type(RetriableError),
                                        wait=wait_random_exponential(
                                            multiplier=0.5, max=self.cfg.retry_max_delay_s),
                                        sleep=self._pause, before_sleep=before_sleep,
                                        reraise=True):
                    with attempt:
                        self._session()
                return
            except ReplayExpired as exc:
                assert self.cursor is not None
                self._reread_from = self.cursor.covered_until - self._overlap_ms
                log.warning("stored replay id refused (expired or reset); re-reading by SOQL "
                            "what changed since the last covered commit",
                            topic=self.topic, position=self.cursor.position,
                            covered_until=self.cursor.covered_until,
                            reread_from=self._reread_from, error=str(exc))

    def _pause(self, seconds: float) -> None:
        self.stop.wait(seconds)  # a stop cuts the backoff short

    def shutdown(self) -> None:
        """Unblock a subscription that waits for events (call after setting ``stop``)."""
        sub = self._sub
        if sub is not None:
            sub.close()

    def _session(self) -> None:
        if self.stop.is_set():
            return
        if self._publisher.broken:
            self._publisher = _Publisher(self.settings, self.serde)
        if self._stale_login is not None:
            self.client.reauthenticate(self._stale_login)
            self._stale_login = None
        login = self.client.conn
        try:
            if self.cursor is None:
                self.hand_over("initial load", self._load)
            elif self._reread_from is not None:
                since = self._reread_from
                self.hand_over("replay id expired",
                               lambda: self._read_each(lambda o: read_since(
                                   self.client.conn, o, since, self.custom)))
            else:
                self._follow(self._subscribe(self.cursor.replay_id))
        except AuthExpired:
            self._stale_login = login
            raise
        except BackPressure as exc:
            metrics.THROTTLED.labels("salesforce.pubsub").inc()
            log.warning("event delivery allocation exceeded; pausing", topic=self.topic,
                        wait_s=self.cfg.limit_wait_s, error=str(exc))
            self.stop.wait(self.cfg.limit_wait_s)
            raise RetriableError(str(exc)) from exc

    def _subscribe(self, replay_id: bytes | None) -> Subscription:
        sub = self.client.subscribe(self.topic, self.cfg.batch_size, replay_id)
        self._sub = sub
        if self.stop.is_set():  # stopped while subscribing: shutdown() saw no subscription
            sub.close()
        return sub

    # ------------------------------------------------------------------ hand-over
    def hand_over(self, reason: str, read: Callable[[], Iterable[dict[str, Any]]],
                  follow: bool = True) -> int:
        """Subscribe from LATEST, wait for the first answer, produce it and ``read()``, write
        the cursor once all is acknowledged; then (``follow``) go on with the subscription.
        Returns the number of rows ``read()`` produced."""
        started_ms = int(time.time() * 1000)
        sub = self._subscribe(None)
        following = False
        try:
            responses = iter(sub)
            first = next(responses, None)
            if first is None:
                raise RetriableError(f"{self.topic}: subscription ended before its first answer")
            covered = self._publish_events(first.events, started_ms - self._overlap_ms)
            rows = 0
            for record in read():
                self._publisher.change(record)
                rows += 1
            self._publisher.flush()
            position = bytes(first.events[-1].replay_id) if first.events else bytes(
                first.latest_replay_id)
            self._write_cursor(Cursor(self.key, position, covered))
            self._reread_from = None
            log.info("handed over to the subscription", reason=reason, topic=self.topic,
                     rows=rows, events=len(first.events), position=self.cursor_position)
            sub.request(len(first.events))
            if follow:
                following = True
                self._follow(sub, responses)
            return rows
        finally:
            if not following:  # _follow closes what it follows
                sub.close()

    def flush(self) -> None:
        """Wait until everything produced (the last cursor included) is acknowledged."""
        self._publisher.flush()

    def load(self) -> Iterator[dict[str, Any]]:
        """Every live row of this channel's objects, as SNAPSHOT changes."""
        return self._load()

    def publish(self, record: dict[str, Any]) -> None:
        self._publisher.change(record)

    def _load(self) -> Iterator[dict[str, Any]]:
        return self._read_each(lambda o: read_all(self.client.conn, o, self.custom))

    def _read_each(self, read: Callable[[str], Iterable[dict[str, Any]]]
                   ) -> Iterator[dict[str, Any]]:
        for sobject in self.objects:
            count = 0
            for record in read(sobject):
                count += 1
                yield record
            log.info("read by SOQL", topic=self.topic, sobject=sobject, rows=count)

    # ------------------------------------------------------------------ steady state
    def _follow(self, sub: Subscription, responses: Iterator[Any] | None = None) -> None:
        try:
            self._follow_responses(sub, responses if responses is not None else iter(sub))
        except RetriableError:
            if self.stop.is_set():  # shutdown() cancelled the call
                return
            raise
        finally:
            sub.close()
            if self._sub is sub:
                self._sub = None
        if not self.stop.is_set():
            raise RetriableError(f"{self.topic}: the server ended the subscription")

    def _follow_responses(self, sub: Subscription, responses: Iterator[Any]) -> None:
        for response in responses:
            if self.stop.is_set():
                return
            if response.events:
                covered = self._publish_events(response.events,
                                               self.cursor.covered_until if self.cursor else 0)
                self._publisher.flush()
                self._write_cursor(Cursor(self.key, bytes(response.events[-1].replay_id),
                                          covered))
                sub.request(len(response.events))
                log.info("changes published", topic=self.topic, events=len(response.events),
                         position=self.cursor_position)
            elif response.latest_replay_id and (
                    self.cursor is None or bytes(response.latest_replay_id) != self.cursor.replay_id):
                # A keepalive: nothing of ours is pending up to latest_replay_id.
                covered = self.cursor.covered_until if self.cursor else 0
                self._write_cursor(Cursor(self.key, bytes(response.latest_replay_id), covered))

    def _publish_events(self, events: Iterable[Any], covered: int) -> int:
        """Produce the changes of ``events`` (not waiting for acknowledgements); returns the
        newest commit time seen (``covered`` if none is newer)."""
        for consumer_event in events:
            metrics.RECORDS_IN.labels(self.topic).inc()
            event = self.client.decode(consumer_event)
            header = event.header
            commit_ms = int(header["commitTimestamp"])
            covered = max(covered, commit_ms)
            sobject = str(header["entityName"])
            if sobject not in self.objects:
                continue
            for record in from_event(header, event.body, event.replay_id, self.custom):
                self._publisher.change(record)
            kind = str(header["changeType"])
            if kind.startswith("GAP_"):
                self._reread_gap(sobject, kind, [str(i) for i in header.get("recordIds") or []],
                                 commit_ms, event.replay_id)
        return covered

    def _reread_gap(self, sobject: str, kind: str, ids: list[str], commit_ms: int,
                    replay_id: bytes) -> None:
        """A gap event stands for changes Salesforce could not send: read the records now."""
        if kind == "GAP_OVERFLOW" or not ids:
            rows = read_since(self.client.conn, sobject, commit_ms - self._overlap_ms, self.custom)
        else:
            rows = read_ids(self.client.conn, sobject, ids, self.custom, commit_ms)
        count = 0
        for record in rows:
            record["source_position"] = position_of(replay_id)
            self._publisher.change(record)
            count += 1
        log.warning("gap event: re-read by SOQL", topic=self.topic, sobject=sobject,
                    change_type=kind, record_ids=len(ids), rows=count)

    def _write_cursor(self, cursor: Cursor) -> None:
        """Only called once every change before ``cursor`` was acknowledged; waits for the
        cursor's own acknowledgement before more events are asked for, so a crash re-reads
        at most the one batch after the last cursor on Kafka."""
        self._publisher.cursor(cursor)
        self.cursor = cursor

    @property
    def cursor_position(self) -> str | None:
        return self.cursor.position if self.cursor else None


def run_source(settings: Settings) -> None:
    """``frontforce source salesforce``: follow every configured channel until SIGTERM."""
    serde = Serde(settings)
    client = PubSubClient(settings)
    stop = threading.Event()
    sources = [TopicSource(settings, topic, client, serde, stop,
                           load_cursor(settings, serde, cursor_key(settings, topic)))
               for topic in settings.salesforce_source.topics]
    failures: list[BaseException] = []

    def on_signal(signum: int, frame: Any) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()
        for source in sources:
            source.shutdown()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def run(source: TopicSource) -> None:
        try:
            source.run()
        except BaseException as exc:  # noqa: BLE001 - reported below; the others stop too
            log.error("source failed", topic=source.topic, error=f"{type(exc).__name__}: {exc}")
            failures.append(exc)
            on_signal(signal.SIGTERM, None)

    metrics.serve(settings.metrics.source_salesforce_port, settings.metrics.host, "source-salesforce")
    log.info("salesforce source starting", topics=[s.topic for s in sources],
             cursors={s.topic: s.cursor_position for s in sources})
    threads = [threading.Thread(target=run, args=(s,), name=f"source-{s.topic}", daemon=True)
               for s in sources]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        for thread in threads:
            thread.join(0.5)
    for source in sources:
        try:
            source.flush()
        except RetriableError as exc:
            log.warning("last cursor not acknowledged", topic=source.topic, error=str(exc))
    client.close()
    if failures:
        first = failures[0]
        raise first if isinstance(first, FatalError) else FatalError(str(first))
