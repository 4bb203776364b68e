"""The hot path: ``front.events`` read by a plain confluent-kafka consumer, in batches, in a
thread of the worker process, beside the Faust agents.

Why not a Faust agent: Faust's own cost per record and hop (aiokafka's fetcher, an Event
object, stream iteration, acks) measured 130–180 µs with no work of ours at all, which caps
any Faust agent near 6,000 records/s on one core (BENCHMARKS.md). Here a batch costs one
``consume`` call, our work per event, one ``flush`` and one commit.

What it does per event (the routing itself is ``route``, given by ``streams._app``):
decode; drop a repeat of an event id seen within ``worker.dedupe_window_s`` (the loop
guard's dedupe); route it: a message whose handle matches a record in the global
record-match and reference tables becomes its commands right here; everything that needs a
partitioned table (a sender nobody matches yet, a tag, an archive) goes on to the Faust
agent that owns that table, on its internal topic.

The guarantee is the worker's: a batch's offsets are committed only after every record it
produced was acknowledged by the broker (acks=all, idempotent producer), so a kill at any
moment re-reads what was not committed and produces the same records again (every command
is idempotent at its sink). A record the broker will never take (too large) turns its event
into a dead letter; a transient failure retries the batch until ``worker.max_stall_s``, then
the process stops without committing (``EXIT_STALLED``), as the Faust agents do.

The dedupe state is this lane's own: event id -> (the record it was first seen in, its time),
per partition of ``front.events``, kept in memory and logged to a compacted topic (the same
partition number), which a member restores a partition's state from when it is assigned.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    stop_any,
    stop_when_event_set,
    wait_random_exponential,
)

from frontforce import metrics
from frontforce.config import Settings
from frontforce.errors import InvalidRecordError, RetriableError
from frontforce.masking import masked_bytes, masker
from frontforce.serialization import Serde
from streams._privacy import masked

log = structlog.get_logger("streams.fastlane")

# (topic, partition, offset, Kafka timestamp in ms) of the record being handled.
Src = tuple[str, int, int, int]
# A record to produce (topic, key, value[, partition (-1: by key)[, headers]]), or a
# callback to run once all of the batch is acknowledged.
Item = (tuple[str, bytes | None, bytes] | tuple[str, bytes | None, bytes, int]
        | tuple[str, bytes | None, bytes, int, list[tuple[str, bytes]]] | Callable[[], None])
# route(event, its raw bytes, where it came from, its first sighting if this is a repeat)
Route = Callable[[dict[str, Any], bytes, Src, dict[str, Any] | None], list[Item]]

EXIT_STALLED = 75
COMMIT_INTERVAL_S = 1.0
MAX_INFLIGHT_BATCHES = 4
STATS_S = 10.0


class SeenState:
    """Event ids seen in one partition of ``front.events`` within the dedupe window."""

    __slots__ = ("ids", "newest")

    def __init__(self) -> None:
        # event id -> (where it was first seen, its time, whether the dedupe log holds it
        # already: restored from it, so handling that very record again logs nothing new)
        self.ids: dict[str, tuple[str, int, bool]] = {}
        self.newest = 0

    def sweep(self, window_ms: int) -> None:
        cutoff = self.newest - 2 * window_ms
        if cutoff > 0:
            self.ids = {k: v for k, v in self.ids.items() if v[1] >= cutoff}


class Pending:
    """A batch whose records are on their way to the broker."""

    __slots__ = ("batch", "left", "failed", "thens", "since", "sent")

    def __init__(self, batch: list[Message]) -> None:
        self.batch = batch
        self.left = 0  # records not acknowledged yet
        self.failed: dict[int, KafkaError] = {}  # event index -> first delivery error
        self.thens: list[Callable[[], None]] = []
        self.since = time.monotonic()
        self.sent: dict[str, int] = {}  # records per topic (counted once acknowledged)

    def acked(self, err: KafkaError | None, _msg: Message) -> None:
        """The producer's delivery report for one of this batch's records (no closure per
        record: the pipelined path only needs to know that one failed, not which)."""
        self.left -= 1
        if err is not None and not self.failed:
            self.failed[-1] = err


class FastLane(threading.Thread):
    def __init__(self, settings: Settings, serde: Serde, route: Route,
                 ready: Callable[[], bool]) -> None:
        super().__init__(name="frontforce-fastlane", daemon=True)
        self.settings = settings
        self.serde = serde
        self.route = route
        self.ready = ready
        self.stopping = threading.Event()
        w = settings.worker
        self.topic = settings.topics.front_events
        self.seen_topic = settings.worker_topics["seen"]
        self.window_ms = int(w.dedupe_window_s * 1000)
        self.group = settings.fast_lane_group
        self.seen: dict[int, SeenState] = {}
        # A dead letter of a Front event carries it masked, as every topic after front.events.
        self.mask = masker(settings.privacy)
        self.mask_in_place = masker(settings.privacy, keep_length=True)
        # Ids first seen in the batch being handled, per partition: one dedupe log record each.
        self.fresh: dict[int, list[dict[str, Any]]] = {}
        self.batches = 0
        # Offsets handled and acknowledged, not committed yet: committed every second (as
        # Faust does), on a revoke and on the way out; a kill re-reads what is after them.
        self.done: dict[int, int] = {}
        self.committed_at = time.monotonic()
        # Batches handled whose records are not all acknowledged yet, oldest first: the next
        # batch is handled meanwhile (the broker's round trips overlap the work), offsets
        # are committed only up to the oldest batch not fully acknowledged.
        self.inflight: deque[Pending] = deque()
        # Events handled and this thread's CPU time doing it (logged every STATS_S; the
        # throughput bench reads them: CPU per event does not depend on what else runs).
        self.handled = 0
        self.cpu_s = 0.0
        self.stats_at = time.monotonic()
        boot = settings.kafka.bootstrap_servers
        self.consumer = Consumer({
            "bootstrap.servers": boot, "group.id": self.group,
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest", "isolation.level": "read_committed",
            # A killed worker's partitions move after 10 s, as the Faust agents' do.
            "session.timeout.ms": 10000, "heartbeat.interval.ms": 2000,
            "max.poll.interval.ms": max(300000, int(w.max_stall_s * 1000) + 60000),
        })
        self.producer = Producer({
            "bootstrap.servers": boot, "acks": "all", "enable.idempotence": True,
            "linger.ms": w.lane_linger_ms, "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
            # Java's murmur2, as Faust (aiokafka) and the receiver partition: a key lands on
            # the partition the Faust agents' tables hold it in.
            "partitioner": "murmur2_random",
            # A record not acknowledged in this time fails, and its batch is handled again.
            "message.timeout.ms": 60000,
        })

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        try:
            while not self.ready():
                if self.stopping.wait(0.2):
                    return
            self.consumer.subscribe([self.topic], on_assign=self._assigned, on_revoke=self._revoked,
                                    on_lost=self._revoked)
            log.info("fast lane started", group=self.group, topic=self.topic)
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - a dead lane would stall its partitions
            if not self.stopping.is_set():
                self._stalled("fast lane failed", exc)
            log.warning("fast lane stopped while failing", error=f"{type(exc).__name__}: {exc}")
        finally:
            try:
                self._settle(0)
                self._commit()
                self.consumer.close()  # leaves the group: the partitions move at once
            except Exception:  # noqa: BLE001, S110 - closing on the way out
                pass

    def _stalled(self, what: str, exc: BaseException) -> None:
        log.critical("cannot make progress; stopping without committing", what=what,
                     error=f"{type(exc).__name__}: {exc}")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_STALLED)

    def _loop(self) -> None:
        w = self.settings.worker
        size, wait = max(1, w.batch_size), max(0.001, w.lane_batch_wait_ms / 1000)
        while not self.stopping.is_set():
            msgs = self.consumer.consume(size, timeout=wait)
            batch = []
            for m in msgs:
                err = m.error()
                if err is None:
                    batch.append(m)
                elif err.fatal():
                    raise KafkaException(err)
                else:
                    log.warning("consumer error", error=str(err))
            if batch:
                cpu = time.thread_time()
                self._pipelined(batch)
                self.cpu_s += time.thread_time() - cpu
                self.handled += len(batch)
                metrics.RECORDS_IN.labels(self.topic).inc(len(batch))
            else:
                self._settle(0)
            if time.monotonic() - self.stats_at >= STATS_S:
                self.stats_at = time.monotonic()
                if self.handled:
                    log.info("fast lane", events=self.handled, cpu_s=round(self.cpu_s, 3),
                             cpu_us_per_event=round(1e6 * self.cpu_s / self.handled, 1))
            if self.done and time.monotonic() - self.committed_at >= COMMIT_INTERVAL_S:
                self._commit()
                self.batches += 1
                if self.batches % 200 == 0:
                    for state in self.seen.values():
                        state.sweep(self.window_ms)

    # ------------------------------------------------------------------ rebalance
    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.seen[tp.partition] = self._restore_retrying(tp.partition)

    def _restore_retrying(self, partition: int) -> SeenState:
        """``_restore``, tried again while the registry or the broker does not answer, for up
        to ``worker.max_stall_s`` like a batch; then the lane stops (exit 75) uncommitted."""
        w = self.settings.worker

        def again(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("dedupe state not restored yet; retrying", partition=partition,
                        attempt=state.attempt_number, error=f"{type(exc).__name__}: {exc}")

        retrying = Retrying(
            retry=retry_if_exception_type((RetriableError, KafkaException)),
            wait=wait_random_exponential(multiplier=0.2, max=w.retry_max_delay_s),
            stop=stop_any(stop_after_delay(w.max_stall_s), stop_when_event_set(self.stopping)),
            before_sleep=again, reraise=True)
        return retrying(self._restore, partition)

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Every batch handled so far is acknowledged (a batch is done before the next
        # consume, where this runs): its offsets go now, before another member reads on.
        try:
            self._settle(0)
            self._commit()
        except KafkaException as exc:
            log.warning("commit on revoke failed; the next owner re-reads", error=str(exc))
            self.done.clear()
        for tp in partitions:
            self.seen.pop(tp.partition, None)
            self.done.pop(tp.partition, None)

    def _commit(self) -> None:
        if self.done:
            self.consumer.commit(offsets=[TopicPartition(self.topic, p, o + 1)
                                          for p, o in self.done.items()], asynchronous=False)
            self.done.clear()
        self.committed_at = time.monotonic()

    def _restore(self, partition: int) -> SeenState:
        """The partition's dedupe state from its compacted topic (the window and the one
        before it, by record time)."""
        state = SeenState()
        t0, records = time.monotonic(), 0
        probe = Consumer({"bootstrap.servers": self.settings.kafka.bootstrap_servers,
                          "group.id": f"{self.group}-restore", "enable.auto.commit": False,
                          "isolation.level": "read_committed", "enable.partition.eof": True})
        try:
            tp = TopicPartition(self.seen_topic, partition)
            low, high = probe.get_watermark_offsets(tp, timeout=10)
            since = int(time.time() * 1000) - 2 * self.window_ms
            start = probe.offsets_for_times([TopicPartition(self.seen_topic, partition, since)],
                                            timeout=10)[0].offset
            if start < 0 or high <= max(low, start):
                return state
            probe.assign([TopicPartition(self.seen_topic, partition, max(low, start))])
            position = max(low, start) - 1  # the last one read (none yet)
            at_end = False
            while position < high - 1 and not at_end:
                # No more than the offsets left: consume(n) waits its whole timeout for n
                # records (a second per partition restored, each start of the worker).
                for m in probe.consume(min(1000, high - 1 - position), timeout=1.0):
                    err = m.error()
                    if err is not None:
                        at_end = at_end or err.code() == KafkaError._PARTITION_EOF
                        continue
                    position = int(m.offset() or 0)
                    records += 1
                    try:
                        events = self.serde.decode(self.seen_topic, m.value(), plain=True)["events"]
                    except InvalidRecordError as exc:
                        # Our own record, but unreadable for good: its ids are forgotten
                        # (a repeat of them is then handled again, which the sinks' ledgers
                        # absorb), rather than the lane stopped on every start.
                        log.warning("dedupe record unreadable; skipped", partition=partition,
                                    offset=position, error=str(exc))
                        continue
                    ids, newest = state.ids, state.newest
                    for e in events:
                        at = e["at"]
                        ids[e["event_id"]] = (f"{partition}@{e['offset']}", at, True)
                        if at > newest:
                            newest = at
                    state.newest = newest
            log.info("dedupe state restored", partition=partition, ids=len(state.ids),
                     records=records, seconds=round(time.monotonic() - t0, 3))
            return state
        finally:
            probe.close()

    # ------------------------------------------------------------------ one batch
    def _handle(self, m: Message) -> list[Item]:
        p, offset = int(m.partition() or 0), int(m.offset() or 0)
        ts_type, ts = m.timestamp()
        at = ts if ts_type and ts > 0 else int(time.time() * 1000)
        raw = m.value() or b""
        src: Src = (str(m.topic()), p, offset, at)
        try:
            fe = self.serde.decode(self.topic, raw, plain=True)
        except InvalidRecordError as exc:
            return [self._dead_letter(m, "decode", exc)]
        eid = str(fe["event_id"])
        state = self.seen.get(p)
        if state is None:
            state = self.seen[p] = SeenState()
        here = f"{p}@{offset}"
        held = state.ids.get(eid)
        first = None
        items: list[Item] = []
        if held is not None and held[0] != here and at - held[1] <= self.window_ms:
            first = {"value": held[0], "at": held[1], "event_id": eid}
        elif held is None or held[0] != here or not held[2]:
            # New, or this very record again (a batch handled again, a replay after a kill):
            # logged again too, in case the first log record was not stored. This very
            # record again with its id restored from the log (a replay, a restart) is there
            # already.
            state.ids[eid] = (here, at, False)
            state.newest = max(state.newest, at)
            self.fresh.setdefault(p, []).append({"event_id": eid, "offset": offset, "at": at})
        try:
            items.extend(self.route(fe, raw, src, first))
        except RetriableError:
            raise  # the batch again, later
        except InvalidRecordError as exc:
            return [self._dead_letter(m, "route-front-events", exc)]
        except Exception as exc:  # noqa: BLE001 - poison must not stop the lane
            return [self._dead_letter(m, "route-front-events", exc)]
        return items

    def _dead_letter(self, m: Message, stage: str, exc: BaseException) -> Item:
        error = self.mask(str(exc)[:4000]) or ""
        metrics.DEAD_LETTERS.labels(stage).inc()
        log.warning("dead-lettered", stage=stage, error=error,
                    at=f"{m.topic()}[{m.partition()}]@{m.offset()}")
        topics = self.settings.topics
        return (topics.deadletter, m.key(), self.serde.encode(topics.deadletter, {
            "original_topic": m.topic(), "original_partition": m.partition(),
            "original_offset": m.offset(), "original_key": m.key(),
            "original_value": self._masked_value(m.value() or b""),
            "stage": stage, "error_class": type(exc).__name__, "error_message": error,
            "attempts": 1, "at": int(time.time() * 1000)}))

    def _masked_value(self, raw: bytes) -> bytes:
        """A front.events record as its dead letter keeps it: decoded, masked and encoded
        again (re-driven, it is an ordinary event, masked as the worker would mask it); a
        record that does not decode, masked in place (the same length: as many ``*`` as the
        masked text had bytes)."""
        try:
            fe = self.serde.decode(self.topic, raw, plain=True)
            return self.serde.encode(self.topic, masked(fe, self.mask))
        except Exception:  # noqa: BLE001 - undecodable, or the registry away: in place
            return masked_bytes(raw, self.mask_in_place)

    def _seen_items(self) -> list[Item]:
        """The batch's new ids, one record per partition (to the same partition number)."""
        items: list[Item] = [
            (self.seen_topic, f"{p}@{fresh[0]['offset']}".encode(),
             self.serde.encode(self.seen_topic, {"events": fresh}), p)
            for p, fresh in self.fresh.items()]
        self.fresh = {}
        return items

    def _pipelined(self, batch: list[Message]) -> None:
        """Handle a batch and hand its records to the producer without waiting for them."""
        pend = Pending(batch)
        self.fresh = {}
        try:
            for m in batch:
                for item in self._handle(m):
                    if callable(item):
                        pend.thens.append(item)
                    else:
                        self._send(item, pend)
        except RetriableError as exc:
            # The registry did not answer: the slow path, which retries in place. What this
            # try produced is delivered anyway (the same records again, harmless).
            log.warning("transient failure; handling the batch again", error=str(exc))
            self._settle(0)
            self._process(batch)
            return
        for item in self._seen_items():
            self._send(cast("tuple[Any, ...]", item), pend)
        self.inflight.append(pend)
        self.producer.poll(0)
        self._settle(MAX_INFLIGHT_BATCHES - 1)

    def _settle(self, limit: int) -> None:
        """Retire acknowledged batches (oldest first); wait while more than ``limit`` are in
        flight. A batch with a failed record is handled again, with every batch after it."""
        stall = self.settings.worker.max_stall_s
        while self.inflight:
            head = self.inflight[0]
            if head.left > 0:
                if len(self.inflight) <= limit:
                    return
                self.producer.poll(0.05)
                if time.monotonic() - head.since > stall + 60:
                    self._stalled("batch not acknowledged", KafkaException(KafkaError(KafkaError._TIMED_OUT)))
                continue
            if head.failed:
                log.warning("batch not acknowledged; handling it again",
                            errors=len(head.failed), batches=len(self.inflight))
                self.producer.flush(60)
                redo = list(self.inflight)
                self.inflight.clear()
                for pend in redo:
                    self._process(pend.batch)
                return
            self.inflight.popleft()
            self._retire(head.batch, head.thens, head.sent)

    def _retire(self, batch: list[Message], thens: list[Callable[[], None]],
                sent: dict[str, int] | None = None) -> None:
        for fn in thens:
            fn()
        for topic, n in (sent or {}).items():
            metrics.RECORDS_OUT.labels(topic).inc(n)
        for m in batch:
            p, o = int(m.partition() or 0), int(m.offset() or 0)
            self.done[p] = max(self.done.get(p, -1), o)

    def _process(self, batch: list[Message]) -> None:
        """Handle, produce, wait for every acknowledgement, then commit. A record refused
        for good dead-letters its event; anything transient does the whole batch again."""
        w = self.settings.worker
        deadline = time.monotonic() + w.max_stall_s
        poison: dict[int, BaseException] = {}
        delay = 0.2
        while True:
            failed: dict[int, KafkaError] = {}
            thens: list[Callable[[], None]] = []
            self.fresh = {}
            transient: BaseException | None = None
            try:
                for i, m in enumerate(batch):
                    items = ([self._dead_letter(m, "route-front-events", poison[i])] if i in poison
                             else self._handle(m))
                    for item in items:
                        if callable(item):
                            thens.append(item)
                            continue
                        self._produce(item, i, failed)
                for item in self._seen_items():
                    self._produce(cast("tuple[Any, ...]", item), 0, failed)
            except RetriableError as exc:
                transient = exc
            left = self.producer.flush(max(1.0, deadline - time.monotonic()))
            if left == 0 and not failed and transient is None:
                break
            fatal = {i: e for i, e in failed.items() if e.code() in (
                KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD)}
            if fatal:
                for i, e in fatal.items():
                    poison[i] = InvalidRecordError(f"record refused for good: {e.str()}")
                continue
            if time.monotonic() >= deadline:
                self._stalled("batch not acknowledged", transient or KafkaException(
                    next(iter(failed.values()), KafkaError(KafkaError._TIMED_OUT))))
            metrics.RETRIES.labels("route-front-events").inc()
            log.warning("batch not acknowledged; handling it again", errors=len(failed),
                        unflushed=left, retry_in_s=delay)
            time.sleep(delay)
            delay = min(delay * 2, w.retry_max_delay_s)
        self._retire(batch, thens)

    def _produce_one(self, item: tuple[Any, ...],
                     on_delivery: Callable[[KafkaError | None, Message], None]) -> KafkaError | None:
        """Hand one record to the producer, waiting while its queue is full. The error of a
        record refused for good (too large), else None."""
        while True:
            try:
                if len(item) > 4:
                    self.producer.produce(item[0], item[2], item[1], item[3], on_delivery,
                                          headers=item[4])
                elif len(item) > 3:
                    self.producer.produce(item[0], item[2], item[1], item[3], on_delivery)
                else:
                    self.producer.produce(item[0], item[2], item[1], on_delivery=on_delivery)
                return None
            except BufferError:
                self.producer.poll(0.05)
            except KafkaException as exc:
                err = exc.args[0]
                if isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    return err
                raise

    def _send(self, item: tuple[Any, ...], pend: Pending) -> None:
        """The pipelined path's produce: the batch's own delivery report, counted per topic."""
        err = self._produce_one(item, pend.acked)
        if err is not None:
            # Refused for good: the slow path finds which event and dead-letters it.
            pend.failed.setdefault(-1, err)
            return
        pend.left += 1
        pend.sent[item[0]] = pend.sent.get(item[0], 0) + 1

    def _produce(self, item: tuple[Any, ...], i: int, failed: dict[int, KafkaError]) -> None:
        """The slow path's produce: a failure is remembered against event ``i``."""
        def done(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failed.setdefault(i, err)

        err = self._produce_one(item, done)
        if err is not None:
            failed.setdefault(i, err)
