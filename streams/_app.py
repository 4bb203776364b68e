"""The stream worker, built from configuration: Faust agents with their RocksDB tables, and
the fast lane (``streams/_fastlane.py``), a confluent-kafka consumer in a thread of the same
process that reads ``front.events``.

Flow (every arrow is a Kafka topic, so every step is replayable and any worker can take
over any partition):

    salesforce.changes ──route_changes──► <app>-match-keys ──index──► record-match table
                                                                      (global, like reference)
    front.events ──fast lane──► commands.salesforce, commands.front, audit (matched messages)
                   │  dedupe by event id (<app>-front-events-seen), privacy, masking, loop guard
                   ├──► <app>-front-by-handle ──match──► (a handle nobody matches yet: the wait,
                   │                                     the Front contact's other handles, Lead)
                   └──► <app>-front-case-events ──case-status──► CloseCase / reopen

The record-match table (email and phone keys -> Contacts and Leads) and the reference table
(Users, Accounts by domain) are global: every worker holds all of them, written only by the
index agent from the key's match-keys partition, so the fast lane matches a message from
any partition without a repartition hop. What needs a partitioned table (the messages
waiting for a key, the conversation's case state) goes on re-keyed by it, to the agent that
holds that partition. Values stay Confluent wire-format Avro end to end; topics here use
the raw codec and ``frontforce.serialization.Serde`` does the Avro.

Delivery (STYLE habits 2, 3, 17). Faust acks an event when the body of ``async for``
finishes *or raises* (the stream generator acks in a ``finally``), and it commits acked
offsets every second whatever became of the records sent on the way. So the agents read
with ``noack()`` and ack by hand, once per event, only after:

1. every record the event produced (commands, audit, dead letters, repartitioned keys,
   table changelog entries) was acknowledged by the broker (``acks=all``);
2. or the event was found permanently wrong and its dead letter was acknowledged.

A transient failure (registry unreachable, broker not acknowledging) is retried in place,
with jittered backoff, without acking; an event that still fails after
``worker.max_stall_s`` stops the worker (exit code 75) instead of being skipped, so a
restarted worker reads it again. Nothing is ever acked that was not handled.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import faust
import mode
import structlog
from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError
from faust.events import Event
from faust.serializers.codecs import Codec
from faust.streams import _current_event
from faust.types import EventT, FutureMessage, StreamT, TopicT
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_delay, wait_random_exponential

from frontforce import metrics
from frontforce.config import Settings
from frontforce.errors import InvalidRecordError, RetriableError
from frontforce.kafka import consumer_config, ensure_topics
from frontforce.logs import bind_correlation
from frontforce.masking import masker
from frontforce.salesforce import is_our_change
from frontforce.serialization import Serde
from streams._context import account_command, apply_change, contact_command, contact_emails, digest, render
from streams._fastlane import FastLane, Item, Src
from streams._locks import KeyLocks
from streams._matching import (
    FREE_MAIL,
    PEOPLE,
    choose_account,
    choose_match,
    choose_user,
    counterpart_handles,
    email_domain,
    handle_key,
    is_reference_key,
    merge_entry,
    normalize_email,
    record_update,
    web_domain,
)
from streams._offsets import OffsetGuard
from streams._privacy import context_fields_shown, excluded, masked, without_excluded
from streams._rules import (
    CASE_LINK_FIELD,
    _ms,
    assign_command,
    case_comment_command,
    case_status_command,
    handle_command,
    lead_command,
    lead_task_command,
    new_lead_tag_command,
    stage_command,
    tag_commands,
    task_command,
)
from streams._take import take_batches

# Front event kinds the Front sink makes by API call: their echoes are dropped.
OUR_WRITES = frozenset({"TAG", "UNTAG", "ASSIGN", "UNASSIGN", "COMMENT"})

log = structlog.get_logger("streams")

_RAW: dict[str, Any] = {"key_type": bytes, "value_type": bytes,
                        "key_serializer": "raw", "value_serializer": "raw"}


class AvroCodec(Codec):
    """Faust codec for a table's values: Confluent wire format through ``Serde``, under the
    changelog topic's subject, so the changelog reads like any other topic."""

    def __init__(self, serde: Serde, topic: str) -> None:
        super().__init__()
        self.serde = serde
        self.topic = topic

    def _dumps(self, obj: Any) -> bytes:
        return self.serde.encode(self.topic, obj)

    def _loads(self, s: bytes) -> Any:
        return self.serde.decode(self.topic, s)


def _key(event: EventT) -> str:
    key = event.key
    if not isinstance(key, bytes):
        raise InvalidRecordError(f"record without a key ({type(key).__name__})")
    return key.decode()


# Messages one key may hold waiting for its record; more are matched at once (bounded state).
MAX_WAITING = 1000
# Front contacts whose record this process remembers having noted (use case 2).
NOTED_MAX = 100_000
# The by-account marker of a Contact's Front contact seen writing in for the first time
# (use case 3): its Account's context may have been pushed before Front had that contact.
FRONT_CONTACT = "FrontContact"

# How long a removed stage tag's entry is kept (use case 4): longer than any topic keeps the
# events a replay could read again (Kafka's default retention is 7 days).
TOMBSTONE_MS = 30 * 24 * 3600 * 1000


def removal_undoes(removed_at: int, added_at: int) -> bool:
    """Whether a stage tag's removal at ``removed_at`` (Front's time) undoes the add held,
    made at ``added_at``: not when it is older, i.e. an earlier removal read again (a replay,
    a rebalance) after the tag was added anew. It would revert the new add's move, and the
    tag's real removal later would find it removed already and revert nothing."""
    return removed_at >= added_at


def takes_back(held: dict[str, Any] | None, state: dict[str, Any] | None,
               entries: list[tuple[str, dict[str, Any]]]) -> bool:
    """Whether a Salesforce change retracts match keys or moves its record to another Account
    (rare: most changes only add or refresh keys, and handling those again sends the same
    entries again). Such a change is sent and acknowledged before the record-keys table
    stores it: what it takes back is known only against the state held before it."""
    if any(entry.get("deleted") for _, entry in entries):
        return True
    old_account = (held or {}).get("entry", {}).get("account_id")
    return old_account is not None and old_account != (state or {}).get("entry", {}).get("account_id")


def note_outranks(held: dict[str, Any], note: dict[str, Any], rank: Mapping[Any, int]) -> bool:
    """Whether the record a Front contact's held note names keeps its place against ``note``
    (both name different records): it outranks the note's by ``worker.match_priority``, or
    ranks the same and was noted later. An older note read again (a replay, a rebalance)
    never takes the Front contact back from a newer match of equal rank."""
    return ((rank.get(held["kind"], 9), -int(held["at"]))
            < (rank.get(note["kind"], 9), -int(note["at"])))

# EX_TEMPFAIL: the worker stopped because an event kept failing transiently; restart it.
EXIT_STALLED = 75


class ChangelogTable(faust.Table):
    """A table whose changelog writes can be awaited. Faust sends them in the background and
    only logs a failed one, then commits the source offset anyway: a worker elsewhere would
    restore the table without that entry. ``take_sent()`` hands over the futures of every
    changelog record written since the last call, for the event's ``Outbox``."""

    def send_changelog(self, *args: Any, **kwargs: Any) -> FutureMessage:
        fut = super().send_changelog(*args, **kwargs)
        self.__dict__.setdefault("_sent", []).append(fut)
        return fut

    def take_sent(self) -> list[asyncio.Future[Any]]:
        sent: list[asyncio.Future[Any]] = self.__dict__.get("_sent") or []
        self.__dict__["_sent"] = []
        return sent


class TableView:
    """Reads of a global table from any thread (the fast lane's, the agents'): straight from
    its RocksDB stores, every partition of which this worker holds, without Faust's key index
    (not safe across threads); each distinct stored value decoded once. Faust writes the
    store as it applies a change (the index agent here, the changelog for other workers'
    writes), so a read sees what the table holds. Values are shared: never mutate one."""

    __slots__ = ("table", "decoded", "keys", "where")

    LIMIT = 100_000

    def __init__(self, table: faust.Table) -> None:
        self.table = table
        self.decoded: dict[bytes, Any] = {}
        self.keys: dict[str, bytes] = {}  # key -> its stored bytes (Faust's JSON key encoding)
        self.where: dict[bytes, int] = {}  # stored key -> the partition it was last found in

    def scan(self, prefix: str) -> list[Any]:
        """The values of every key that starts with ``prefix``, in every partition's store
        (a seek per store; keys are stored as JSON strings, so the prefix is the encoded key
        without its closing quote)."""
        store: Any = self.table.data
        start = bytes(store._encode_key(prefix))[:-1]
        found = []
        for db in list(store._dbs.values()):
            it = db.iter()
            it.seek(start)
            while it.valid():
                kb = it.key()
                if not kb.startswith(start):
                    break
                found.append(store._decode_value(it.value()))
                it.next()
        return found

    def get(self, key: str) -> Any:
        store: Any = self.table.data
        kb = self.keys.get(key)
        if kb is None:
            if len(self.keys) >= self.LIMIT:
                self.keys.clear()
            kb = self.keys[key] = store._encode_key(key)
        dbs = store._dbs
        hint = self.where.get(kb)
        raw = None
        if hint is not None and (db := dbs.get(hint)) is not None:
            raw = db.get(kb)
        if raw is None:
            for partition, db in list(dbs.items()):
                raw = db.get(kb)
                if raw is not None:
                    if len(self.where) >= self.LIMIT:
                        self.where.clear()
                    self.where[kb] = partition
                    break
        if raw is None:
            return None
        hit = self.decoded.get(raw)
        if hit is None:
            if len(self.decoded) >= self.LIMIT:
                self.decoded.clear()
            hit = self.decoded[raw] = store._decode_value(raw)
        return hit


def _send_failure(where: str, exc: BaseException) -> Exception:
    if isinstance(exc, MessageSizeTooLargeError | RecordTooLargeError):
        # The broker will never take it: the event that produced it is poison.
        return InvalidRecordError(f"{where}: record refused as too large: {exc}")
    return RetriableError(f"{where}: not acknowledged: {type(exc).__name__}: {exc}")


class Outbox:
    """What handling one event produced: every record is handed to the producer at once
    (``force``: not deferred to Faust's attachments, which would publish it after the ack),
    and ``delivered()`` waits until the broker acknowledged all of them. The agent goes on
    with the next event meanwhile; the acker acks events in order as their outboxes are
    delivered, so the broker's round trips overlap instead of adding up."""

    __slots__ = ("futures", "then")

    def __init__(self) -> None:
        self.futures: list[tuple[str, asyncio.Future[Any]]] = []
        self.then: list[Callable[[], None]] = []  # run once all of it is delivered

    def fresh(self) -> None:
        """Empty, for a try again after a transient failure: a send that failed in the last
        try would fail every ``delivered()`` after it (its records are sent again anyway)."""
        self.futures.clear()
        self.then.clear()

    async def send(self, topic: TopicT, key: bytes | None, value: bytes) -> None:
        await self.send_to(topic.app.producer, topic.get_topic_name(), key, value)

    async def put(self, producer: Any, items: list[Item]) -> None:
        """Records (and callbacks for once they are stored) built by the routing functions
        that the fast lane shares with the agents."""
        for item in items:
            if callable(item):
                self.then.append(item)
            else:
                partition = item[3] if len(item) > 3 and item[3] >= 0 else None
                await self.send_to(producer, item[0], item[1], item[2], partition,
                                   item[4] if len(item) > 4 else None)

    async def send_to(self, producer: Any, where: str, key: bytes | None, value: bytes,
                      partition: int | None = None,
                      headers: list[tuple[str, bytes]] | None = None) -> None:
        try:
            # Straight to the producer (not deferred to Faust's attachments, which would
            # publish after the ack; no FutureMessage wrapping): the same partitioner.
            fut = await producer.send(where, key, value, partition, None, headers)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified: too large, or transient
            raise _send_failure(where, exc) from exc
        self.futures.append((where, cast("asyncio.Future[Any]", fut)))

    def changelog(self, table: ChangelogTable) -> None:
        self.futures.extend((f"{table.name} changelog", f) for f in table.take_sent())

    async def delivered(self) -> None:
        for where, fut in self.futures:
            try:
                await fut
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified: too large, or transient
                raise _send_failure(where, exc) from exc
        for fn in self.then:
            fn()
        self.then.clear()


def create_app(settings: Settings) -> faust.App:
    topics = settings.topics
    w = settings.worker
    n = settings.kafka.partitions
    brokers = ";".join(settings.kafka.bootstrap_servers.split(","))
    app = faust.App(
        w.app_id,
        broker=f"kafka://{brokers}",
        store="rocksdb://",
        datadir=str(w.data_dir),
        topic_partitions=n,
        topic_replication_factor=settings.kafka.replication_factor,
        web_enabled=False,
        broker_commit_interval=1.0,
        # A killed worker's partitions move after 10 s, not aiokafka's default minute.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # Batch the records of many events into one produce request (aiokafka sends each
        # record on its own at linger 0: the socket writes were a sixth of the worker's CPU).
        # Nothing waits on it but the acker, which acks once the broker has them.
        producer_linger=0.0,
        producer_max_batch_size=256 * 1024,
        processing_guarantee="at_least_once",
    )
    serde = Serde(settings)
    mask = masker(settings.privacy)
    tag_rules = {name.lower(): rule for name, rule in w.tag_rules.items()}
    free_mail = FREE_MAIL | {d.strip().lower() for d in w.free_mail_domains}
    region = w.phone_region.upper()

    changes = app.topic(topics.salesforce_changes, **_RAW)
    front_commands = app.topic(topics.commands_front, **_RAW)
    deadletter = app.topic(topics.deadletter, **_RAW)
    internal = settings.worker_topics
    match_keys = app.topic(internal["match_keys"], partitions=n, internal=True, **_RAW)
    by_handle = app.topic(internal["by_handle"], partitions=n, internal=True, **_RAW)
    by_account = app.topic(internal["by_account"], partitions=n, internal=True, **_RAW)
    tags_by_account = app.topic(internal["tags_by_account"], partitions=n, internal=True, **_RAW)
    release = app.topic(internal["release"], partitions=n, internal=True, **_RAW)
    contact_notes = app.topic(internal["contact_notes"], partitions=n, internal=True, **_RAW)
    by_contact = app.topic(internal["by_contact"], partitions=n, internal=True, **_RAW)
    new_handles = app.topic(internal["new_handles"], partitions=n, internal=True, **_RAW)
    case_events = app.topic(internal["case_events"], partitions=n, internal=True, **_RAW)
    def add_table(name: str, logical: str, **kw: Any) -> ChangelogTable:
        """A table whose values are stored (RocksDB) and logged (changelog topic) through an
        Avro codec over the same serializers as every topic. The codec is set before the
        table is added: adding it creates its changelog topic, whose value serializer is
        what recovery (a worker taking over a partition, a standby) decodes with; a codec
        set afterwards only encodes, and recovery then fails on every record."""
        # A fresh dict for each table: Faust's store pops keys out of the one it is given.
        options = {"write_buffer_size": w.rocksdb_write_buffer_mb * 1024 * 1024,
                   "max_write_buffer_number": 2,
                   "block_cache_size": w.rocksdb_block_cache_mb * 1024 * 1024}
        t = ChangelogTable(app, name=name, default=None, partitions=n, key_type=str,
                           options=options, **kw)
        t.value_serializer = AvroCodec(  # type: ignore[attr-defined]  # read lazily by Faust
            serde, settings.worker_table_topics[logical])
        app.tables.add(t)
        return t

    # Match key -> {"candidates": {record id: MatchCandidate}} (Contacts and Leads). Global
    # like the reference table below (and written the same way: by index-match-keys only,
    # from the key's match-keys partition): the fast lane matches a message from any
    # partition of front.events without a repartition hop.
    table = add_table("record-match", "match_table", is_global=True,
                      standby_buffer_size=1, recovery_buffer_size=1)
    # Conversation id -> the newest archive/reopen acted on (keyed like the case-events topic,
    # which the fast lane fills by conversation; the case-status agent is its only user).
    conversations = add_table("conversation-state", "conversation_table")
    # Record id -> the match keys it holds and its newest state (salesforce.changes is keyed
    # by record id: co-partitioned with route-changes).
    records = add_table("record-keys", "record_table")
    # Case id -> its Front conversation (salesforce.changes is keyed by record id).
    case_links = add_table("case-links", "case_links_table")
    # The small global reference table: every worker holds all of it (Users by email and Id,
    # Accounts by domain and Id), so any partition's event can read a sender's Account by
    # domain, an Account's owner, a teammate's Salesforce User. Written by index-match-keys
    # only, key by key from the match-keys partition the key hashes to (one writer per key);
    # its changelog has that topic's partitions and each write goes to the partition of the
    # event that made it, so a key always lives in one changelog partition. Other workers'
    # writes are applied as they come (what faust.GlobalTable sets; recovery too, per its
    # warning about multi-instance recovery loops).
    reference = add_table("reference", "reference_table", is_global=True,
                          standby_buffer_size=1, recovery_buffer_size=1)
    match_view, ref_view = TableView(table), TableView(reference)
    # Account Id -> what Front shows of it (use case 3), keyed like the by-account topic.
    contexts = add_table("account-context", "context_table")
    # Two agents write each of these tables (streams/_locks.py): one read-modify-write of a
    # key at a time.
    context_locks, record_locks = KeyLocks(), KeyLocks()
    # Match key -> the messages waiting for a record with that key (keyed like by-handle,
    # match-keys and release-waiting: co-partitioned, so every agent that touches a key
    # finds it in its own partition).
    waiting = add_table("waiting-events", "waiting_table")
    # Front contact id -> the Contact or Lead one of its handles matched (use case 2: a new
    # handle of a known person), keyed like front-contact-notes and front-by-contact.
    front_contacts = add_table("front-contacts", "front_contact_table")
    # Front contact id -> the record this process last told that table (noted once delivered):
    # a note per new pairing, not per message.
    noted: OrderedDict[str, str] = OrderedDict()
    noted_lock = threading.Lock()
    rank = {kind: i for i, kind in enumerate(w.match_priority)}  # a Front contact's record
    wait_ms = int(w.unmatched_wait_s * 1000)
    # A released entry is kept this long (a replay of its release record finds it), then purged.
    purge_ms = int(w.waiting_purge_s * 1000)
    releasing: dict[str, float] = {}  # key -> when this process last asked to release it

    exclude = {o: frozenset(f) for o, f in settings.privacy.exclude_fields.items()}
    context_fields = context_fields_shown(w.context_fields, exclude)

    def sf_items(key: str, cmd: dict[str, Any], received_at: Any = None) -> list[Item]:
        """A command to the Salesforce sink, without what privacy.exclude_fields keeps out;
        ``received_at``: when the receiver took the Front webhook that caused it, carried in
        a header for the sink's webhook-to-write latency."""
        kept = without_excluded(cmd, exclude)
        if kept is None:
            return []
        value = serde.encode(topics.commands_salesforce, kept)
        if received_at is None:
            return [(topics.commands_salesforce, key.encode(), value)]
        return [(topics.commands_salesforce, key.encode(), value, -1,
                 [(metrics.RECEIVED_AT_HEADER, str(_ms(received_at)).encode())])]

    async def send_sf(out: Outbox, key: str, cmd: dict[str, Any]) -> None:
        await out.put(app.producer, sf_items(key, cmd))

    def src_of(event: EventT) -> Src:
        msg = event.message
        return (msg.topic, msg.partition, msg.offset, int(msg.timestamp * 1000))

    def with_front_fields(cmd: dict[str, Any], fe: dict[str, Any]) -> dict[str, Any]:
        """A message's Task with the Task fields the conversation's Front custom fields map
        to (worker.task_fields_from_front); a blank Front value writes nothing."""
        if w.task_fields_from_front:
            have = fe.get("conversation_custom_fields") or {}
            fields = {sf: have[name] for name, sf in w.task_fields_from_front.items()
                      if have.get(name) not in (None, "")}
            if fields:
                cmd["operation"][1]["fields"] = fields
        return cmd

    async def dead_letter(event: EventT, stage: str, exc: BaseException) -> None:
        msg = event.message
        record = {
            "original_topic": msg.topic,
            "original_partition": msg.partition,
            "original_offset": msg.offset,
            "original_key": msg.key,
            "original_value": msg.value,
            "stage": stage,
            "error_class": type(exc).__name__,
            "error_message": str(exc)[:4000],
            "attempts": 1,
            "at": int(time.time() * 1000),
        }
        # Waited for here (dead letters are rare): raises RetriableError if the dead letter is
        # not stored; then the event is not acked either, and the whole event is tried again.
        metrics.DEAD_LETTERS.labels(stage).inc()
        out = Outbox()
        await out.send(deadletter, msg.key, serde.encode(topics.deadletter, record))
        await out.delivered()
        log.warning("dead-lettered", stage=stage, error=str(exc),
                    at=f"{msg.topic}[{msg.partition}]@{msg.offset}")

    def before_retry(state: RetryCallState) -> None:
        metrics.RETRIES.labels(state.args[0]).inc()
        event = state.args[1]
        msg = event.message
        log.warning("transient failure, retrying in place (not acknowledged)",
                    stage=state.args[0], attempt=state.attempt_number,
                    error=str(state.outcome.exception()) if state.outcome else None,
                    at=f"{msg.topic}[{msg.partition}]@{msg.offset}")

    Body = Callable[[EventT, dict[str, Any], Outbox], Awaitable[None]]

    async def handle_once(stage: str, event: EventT, logical_topic: str, body: Body,
                          out: Outbox) -> None:
        out.fresh()
        try:
            value = serde.decode(logical_topic, event.value)
        except InvalidRecordError as exc:
            await dead_letter(event, "decode", exc)
            return
        # A Front event's lines carry its id as the correlation id, from the receiver's
        # "event stored" to the sink's "command applied" (frontforce/logs.py).
        with bind_correlation(str(value.get("event_id") or "") if logical_topic == topics.front_events else None):
            try:
                await body(event, value, out)
            except RetriableError:
                raise  # retried in place
            except Exception as exc:  # noqa: BLE001 - poison must not stop the agent
                await dead_letter(event, stage, exc)

    async def handle_and_wait(stage: str, event: EventT, logical_topic: str, body: Body) -> None:
        """The slow path, after a send of this event failed: do it again and wait for it."""
        out = Outbox()
        await handle_once(stage, event, logical_topic, body, out)
        try:
            await out.delivered()
        except InvalidRecordError as exc:
            await dead_letter(event, stage, exc)

    async def reliably(stage: str, event: EventT, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run ``fn`` until it stops failing transiently; a worker that cannot make progress
        for ``worker.max_stall_s`` ends here, with the event unacknowledged. The first try
        runs bare (the retry machinery per event cost a twentieth of the worker's CPU)."""
        try:
            await fn(stage, event, *args)
            return
        except RetriableError as exc:
            log.warning("transient failure, retrying in place (not acknowledged)", stage=stage,
                        attempt=1, error=str(exc),
                        at=f"{event.message.topic}[{event.message.partition}]@{event.message.offset}")
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RetriableError),
            wait=wait_random_exponential(multiplier=0.2, max=w.retry_max_delay_s),
            stop=stop_after_delay(w.max_stall_s),
            before_sleep=before_retry,
            reraise=True,
        )
        try:
            await retrying(fn, stage, event, *args)
        except RetriableError as exc:
            stop_stalled(stage, event, exc)

    def stop_stalled(stage: str, event: EventT | None, exc: BaseException) -> None:
        at = f"{event.message.topic}[{event.message.partition}]@{event.message.offset}" if event else None
        log.critical("cannot make progress; stopping without acknowledging the event",
                     stage=stage, error=f"{type(exc).__name__}: {exc}", stalled_s=w.max_stall_s, at=at)
        exit_stalled()

    def exit_stalled() -> None:
        """Not an exception: Faust would ack the event on the way out, or restart the agent
        and go on with the next one. The process ends here; what it acked is handled, what
        it did not is read again by whoever takes the partition."""
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_STALLED)

    def faust_skipped(message: Any, since: int) -> None:
        log.critical("Faust's consumer skipped records that could not be read back; stopping "
                     "without acknowledging anything after them (they are read again from the "
                     "committed offset)",
                     at=f"{message.topic}[{message.partition}]@{message.offset}", expected=since)
        exit_stalled()

    def faust_skipped_found(message: Any, offsets: list[int], since: int) -> None:
        metrics.FAUST_SKIPS.labels(message.topic).inc(len(offsets))
        log.warning("Faust's consumer skipped records; read back from the broker and handled "
                    "before the record after them",
                    at=f"{message.topic}[{message.partition}]@{message.offset}", expected=since,
                    skipped=len(offsets), first=offsets[0], last=offsets[-1])

    offsets = OffsetGuard(app, consumer_config(settings, f"{w.app_id}-offset-guard"),
                          faust_skipped, found=faust_skipped_found)

    async def handle_first(stage: str, event: EventT, logical_topic: str,
                           body: Body) -> tuple[EventT, Outbox]:
        """An event's first try; its outbox is waited for by the acker."""
        # A take batch is not stream iteration: make each event the current one, as
        # iteration would (table reads and writes, windows, partitions).
        _current_event.set(weakref.ref(event))
        out = Outbox()
        await reliably(stage, event, handle_once, logical_topic, body, out)
        return event, out

    async def consume(stage: str, stream: Any, logical_topic: str, body: Body) -> None:
        """The one way every agent handles its events: decode, run ``body``, dead-letter
        the poison, retry the transient in place, ack only when all of it is stored.

        Events come in batches (``take_batches``: up to ``worker.batch_size``, or what arrived
        within ``worker.batch_wait_ms`` of the first; an idle agent sleeps): nothing is acked
        by Faust, so a batch is not acked whole (STYLE habit 3). Each event is handled on its
        own, as the current event (tables find their partition through it), and its outbox
        queued; the agent goes on with the next batch while an acker waits for the outboxes
        in order and acks event by event. A send that failed is not skipped: the acker
        handles that event again, waiting for it this time, before it acks anything after it.
        Handing a whole batch to the producer before waiting lets it fill produce requests:
        the per-event cost of Faust's stream iteration and of the producer is what bounded
        the worker (BENCHMARKS.md)."""
        manual = stream.noack()
        batches = max(1, w.max_in_flight // w.batch_size)
        in_flight: asyncio.Queue[list[tuple[EventT, Outbox]]] = asyncio.Queue(maxsize=batches)

        async def acker() -> None:
            while True:
                items = await in_flight.get()
                for event, out in items:
                    try:
                        await out.delivered()
                    except (RetriableError, InvalidRecordError):
                        _current_event.set(weakref.ref(event))
                        await reliably(stage, event, handle_and_wait, logical_topic, body)
                    await manual.ack(event)

        async def acker_guarded() -> None:
            try:
                await acker()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - an acker that died would stall us
                stop_stalled(stage, None, exc)

        task = asyncio.ensure_future(acker_guarded())
        try:
            async for batch in take_batches(manual, w.batch_size, w.batch_wait_ms / 1000):
                if batch:
                    metrics.RECORDS_IN.labels(batch[0].message.topic).inc(len(batch))
                items: list[tuple[EventT, Outbox]] = []
                for event in batch:
                    # Records Faust's consumer skipped before this one come first, read back
                    # from the broker; nothing past them is acked before they are stored.
                    for missed in await offsets.check(event.message):
                        items.append(await handle_first(stage, Event(
                            app, missed.key, missed.value, missed.headers, missed),
                            logical_topic, body))
                    items.append(await handle_first(stage, event, logical_topic, body))
                await in_flight.put(items)
        finally:
            task.cancel()

    @app.agent(changes, name="route-changes")
    async def route_changes(stream: StreamT) -> None:
        async def body(event: EventT, change: dict[str, Any], out: Outbox) -> None:
            async with record_locks.hold(change["record_id"]):
                held = records.get(change["record_id"])
                state, entries = record_update(held, change, region, free_mail)
                if state is not held and takes_back(held, state, entries):
                    # What this change takes back (keys it drops, the Account it leaves) is
                    # known only against the state held before it: sent and stored first,
                    # so handling it again (a failed send, a crash before the table's
                    # changelog) still finds that state and sends the retractions again.
                    await route_change(change, held, state, entries, out)
                    await out.delivered()
                    records[change["record_id"]] = state
                    out.changelog(records)
                    return
                if state is not held:
                    records[change["record_id"]] = state
                    out.changelog(records)
            await route_change(change, held, state, entries, out)

        await consume("route-changes", stream, topics.salesforce_changes, body)

    async def route_change(change: dict[str, Any], held: dict[str, Any] | None,
                           state: dict[str, Any] | None, entries: list[tuple[str, dict[str, Any]]],
                           out: Outbox) -> None:
        for key, entry in entries:
            await out.send(match_keys, key.encode(), serde.encode(internal["match_keys"], entry))
        if change["sobject"] == "Case":
            await case_changed(change, out)
        if w.salesforce_context and change["sobject"] in ("Account", "Opportunity", "Contact") and (
                state is not held or change["sobject"] == "Account"):
            await to_accounts(change, held, state, out)

    async def owner_changed(user: dict[str, Any], out: Outbox) -> None:
        """A User's name or state changed (or arrived after their Accounts): the context of
        every Account they own is rendered again (a marker change on the by-account topic)."""
        owned = {rid for held in ref_view.scan(f"owns:{user['id']}:")
                 for rid in (held or {}).get("candidates") or {}}
        for account_id in sorted(owned):
            await out.send(by_account, account_id.encode(), serde.encode(internal["by_account"], {
                "record_id": user["id"], "sobject": "User", "change_type": "UPDATE",
                "commit_timestamp": user["ts"]}))

    async def to_accounts(change: dict[str, Any], held: dict[str, Any] | None,
                          state: dict[str, Any] | None, out: Outbox) -> None:
        """Use case 3, first step: a change of an Account, or of an Opportunity or Contact
        of one, re-keyed by the Account Id. An Opportunity's or Contact's UPDATE names its
        Account only when that changed: the record-keys state knows it. A Contact goes as
        its whole self (email and Account from that state) so the Account it moved to
        knows its email; the Account it left gets its DELETE."""
        logical = internal["by_account"]
        if change["sobject"] == "Account":
            await out.send(by_account, change["record_id"].encode(), serde.encode(logical, change))
            return
        new_account = (state or {}).get("entry", {}).get("account_id")
        old_account = (held or {}).get("entry", {}).get("account_id")
        if change["sobject"] == "Contact":
            gone = bool(state and state["deleted"])
            change = {**change, "change_type": "DELETE" if gone else "SNAPSHOT",
                      "email": (state or {}).get("email"), "account_id": new_account,
                      "changed_fields": [], "nulled_fields": []}
        if old_account and old_account != new_account:
            await out.send(by_account, old_account.encode(), serde.encode(
                logical, {**change, "change_type": "DELETE", "changed_fields": []}))
        if new_account:
            await out.send(by_account, new_account.encode(), serde.encode(logical, change))

    @app.agent(by_account, name="account-context")
    async def account_context(stream: StreamT) -> None:
        async def body(event: EventT, change: dict[str, Any], out: Outbox) -> None:
            await context_changed(_key(event), change, out)

        await consume("account-context", stream, internal["by_account"], body)

    async def context_changed(account_id: str, change: dict[str, Any], out: Outbox) -> None:
        async with context_locks.hold(account_id):  # the tag agent writes the context too
            await context_changed_locked(account_id, change, out)

    async def context_changed_locked(account_id: str, change: dict[str, Any], out: Outbox) -> None:
        """Use case 3: the Account's context table takes the change in; when what Front
        shows of it differs from what was sent last, the Front account (and the contacts of
        the Account, all of them when the shared fields changed, else the one that changed)
        get it. Owner names come from the reference table."""
        held = contexts.get(account_id) or {"account": None, "opportunities": {}, "contacts": {},
                                            "sent": None, "tag_stages": {}}
        kind, rid = change["sobject"], change["record_id"]
        if kind == FRONT_CONTACT:
            await front_contact_seen(account_id, held, rid, change, out)
            return
        if kind == "User":
            ctx = held  # the owner's name: nothing held changes, the rendering may
        else:
            group = {"Opportunity": "opportunities", "Contact": "contacts"}.get(kind)
            record = apply_change(held[group].get(rid) if group else held["account"], change)
            if record is None:
                return  # older than what is held
            ctx = ({**held, group: {**held[group], rid: record}} if group
                   else {**held, "account": record})
        account = ctx["account"]
        if account is not None and not account["deleted"]:
            fields = account["fields"]
            shown = shown_of(ctx)
            domain = web_domain(fields.get("Website"))
            emails = contact_emails(ctx)
            version = digest(fields.get("Name"), domain, emails, shown)
            shared = digest(shown, fields.get("Name"))
            sent_version, _, sent_shared = (ctx.get("sent") or "").partition("/")
            source = change.get("transaction_key") or f"{rid}@{change['commit_timestamp']}"
            if version != sent_version:
                await out.send(front_commands, account_id.encode(), serde.encode(
                    topics.commands_front,
                    account_command(account_id, ctx, shown, domain, str(source),
                                    f"{sent_version or '-'}->{version}@{source}")))
            contact_fields = {"Salesforce account": fields.get("Name"), **shown}
            for cid, contact in ctx["contacts"].items():
                email = contact["fields"].get("Email")
                if contact["deleted"] or not email or (shared == sent_shared and cid != rid):
                    continue
                links = contact_links(cid)
                await out.send(front_commands, str(email).lower().encode(), serde.encode(
                    topics.commands_front,
                    contact_command(str(email).lower(), contact_fields, links, str(source),
                                    f"{sent_shared or '-'}->{digest(shared, email, links)}@{source}")))
            ctx = {**ctx, "sent": f"{version}/{shared}"}
            # What was sent is stored before the table says so (a worker killed in between
            # sends it again rather than never).
            await out.delivered()
        contexts[account_id] = ctx
        out.changelog(contexts)

    def shown_of(ctx: dict[str, Any]) -> dict[str, str | None]:
        """What Front shows of an Account's context, its owner's name from the reference table."""
        owner = reference_record(ctx["account"]["fields"].get("OwnerId"))
        return render(ctx, owner.get("name") if owner else None, context_fields)

    def contact_links(contact_id: str) -> list[str]:
        return ([f"{w.salesforce_web_url.rstrip('/')}/lightning/r/Contact/{contact_id}/view"]
                if w.salesforce_web_url else [])

    async def front_contact_seen(account_id: str, held: dict[str, Any], contact_id: str,
                                 change: dict[str, Any], out: Outbox) -> None:
        """Use case 3 for a Contact who writes in after their Account's context was pushed:
        the Front sink skipped their handle then (Front had no contact for it), and nothing
        else would push it before the Account's next change. The context sent last goes to
        this one handle, marked ``if_missed``: the sink writes it (and links the contact to
        the Front account) only when the last push to that handle found no contact, so a
        person whose context is in Front already costs no Front call."""
        account = held["account"]
        contact = held["contacts"].get(contact_id)
        if (held.get("sent") is None or account is None or account["deleted"]
                or contact is None or contact["deleted"] or not contact["fields"].get("Email")):
            return  # nothing pushed for this Account yet (its first push reaches them), or not its Contact
        fields = account["fields"]
        shown = shown_of(held)
        email = str(contact["fields"]["Email"]).lower()
        links = contact_links(contact_id)
        crd = str(change["transaction_key"]).split(":", 1)[1]
        await out.send(front_commands, email.encode(), serde.encode(
            topics.commands_front,
            contact_command(email, {"Salesforce account": fields.get("Name"), **shown}, links,
                            str(change["transaction_key"]),
                            f"seen:{crd}:{digest(shown, fields.get('Name'), email, links)}",
                            missed_account=account_id)))

    async def case_changed(change: dict[str, Any], out: Outbox) -> None:
        """Keep the Case -> conversation link; use case 7: a Case status change made in
        Salesforce by someone else than frontforce (changeOrigin; our own CloseCase is an
        echo and is dropped) becomes an internal comment on the linked conversation."""
        rid, at = change["record_id"], _ms(change["commit_timestamp"])
        held = case_links.get(rid)
        custom = change.get("custom_fields") or {}
        if change["change_type"] == "DELETE" or CASE_LINK_FIELD in custom:
            if held is None or held["at"] <= at:
                value = None if change["change_type"] == "DELETE" else custom.get(CASE_LINK_FIELD)
                case_links[rid] = held = {"value": value, "at": at, "event_id": None}
                out.changelog(case_links)
        conversation = held and held["value"]
        if not (w.case_status_comments and conversation and change["change_type"] == "UPDATE"
                and "Status" in (change.get("changed_fields") or [])):
            return
        if is_our_change(change.get("change_origin"), change.get("commit_user"),
                         settings.salesforce.integration_user_id):
            log.info("case status change is our own write; no comment", case=rid)
            return
        await out.send(front_commands, str(conversation).encode(), serde.encode(
            topics.commands_front, case_comment_command(change, str(conversation))))

    async def case_status(event: EventT, fe: dict[str, Any], out: Outbox) -> None:
        """Use case 6: archive closes, reopen reopens the linked Case. The newest event by
        Front's time wins: a reopen older than what the conversation-state table holds
        changes nothing (a late or swapped delivery), an older archive posts its resolution
        note and leaves the newer status; the same event again is sent again (the
        command is the same, the sink makes it harmless), so a crash between the table and
        the command loses nothing."""
        conversation, etype = fe["conversation_id"], fe["event_type"]
        at = _ms(fe["occurred_at"])
        held = conversations.get(conversation)
        if held is not None and (held["at"], held["event_id"] or "") > (at, fe["event_id"]):
            if etype == "ARCHIVE":
                # Archived, then reopened (or archived again) later, delivered the other way
                # round (a webhook retried, a batch produced again after a broker outage):
                # the archive still resolved the conversation once, so its note is posted,
                # but the Case keeps the status of the newer event.
                newer = w.case_closed_status if held["value"] == "ARCHIVE" else w.case_reopened_status
                await send_sf(out, conversation, case_status_command(fe, newer, True))
                return
            await emit_audit(out, event, fe, "SKIPPED",
                             f"{etype} at {at} is older than {held['value']} at {held['at']}")
            return
        conversations[conversation] = {"value": etype, "at": at, "event_id": fe["event_id"]}
        out.changelog(conversations)
        closing = etype == "ARCHIVE"
        cmd = case_status_command(fe, w.case_closed_status if closing else w.case_reopened_status,
                                  closing)
        await send_sf(out, conversation, cmd)

    @app.agent(match_keys, name="index-match-keys")
    async def index_match_keys(stream: StreamT) -> None:
        async def body(event: EventT, entry: dict[str, Any], out: Outbox) -> None:
            key = _key(event)
            into = reference if is_reference_key(key) else table
            held = into.get(key)
            into[key] = {"candidates": merge_entry(held and held["candidates"], entry)}
            out.changelog(into)
            if into is reference and key.startswith("id:") and entry["kind"] == "User" and (
                    w.salesforce_context):
                await owner_changed(entry, out)
            if (into is reference and key.startswith("owns:") and w.salesforce_context
                    and not entry["deleted"] and entry["id"] not in ((held or {}).get("candidates") or {})):
                # A new owner of this Account: if the User is known already, it may have been
                # indexed after the Account's context was rendered (another partition) and
                # before this key, so the scan of its owns: keys missed the Account: render
                # it again (nothing is sent when Front shows it already).
                owner = reference_record(key.split(":", 2)[1])
                if owner is not None:
                    await out.send(by_account, entry["id"].encode(), serde.encode(internal["by_account"], {
                        "record_id": owner["id"], "sobject": "User", "change_type": "UPDATE",
                        "commit_timestamp": owner["ts"]}))
            if into is table and not entry["deleted"] and pending(key) is not None:
                # Messages are waiting for this very key: match them now.
                await out.send(release, key.encode(), serde.encode(internal["release"], {
                    "value": "matched", "at": int(time.time() * 1000), "event_id": entry["id"]}))

        await consume("index-match-keys", stream, internal["match_keys"], body)

    def route(fe: dict[str, Any], raw: bytes, src: Src, first: dict[str, Any] | None) -> list[Item]:
        """A Front event, in the fast lane (streams/_fastlane.py, which decoded it and looked
        its id up in the dedupe state): the loop guard, privacy, masking; a message whose
        handle matches a record lands on it here (its Task, audit, routing, tag); what needs
        a partitioned table goes on to the agent that holds it: a handle nobody matches (the
        wait, the Front contact's other handles, the unknown sender's Lead) and a tag to the
        match step by handle, an archive or reopen to case-status by conversation."""
        eid = fe["event_id"]
        if first is not None:
            return [audit_item(src, fe, "SKIPPED", f"repeat of event {eid} (first seen "
                               f"{first['at']} at {first['value']}, within worker.dedupe_window_s)")]
        why = excluded(settings.privacy, fe)
        if why is not None:
            return [audit_item(src, fe, "SKIPPED", why)]
        if fe["event_type"] in OUR_WRITES and fe.get("source_kind") in ("api", "oauth_client"):
            return []  # loop guard: the echo of a tag, comment or assignment made by an API call
        before = fe
        fe = masked(fe, mask)
        # Nothing masked: the record goes on as it came (one encode less per message).
        value = raw if fe == before else serde.encode(topics.front_events, fe)
        if fe["event_type"] in ("ARCHIVE", "REOPEN") and w.close_cases and fe.get("conversation_id"):
            return [(internal["case_events"], fe["conversation_id"].encode(), value)]
        if fe["event_type"] in ("TAG", "UNTAG") and fe.get("conversation_id"):
            rule = tag_rules.get(str(fe.get("tag_name") or "").lower())
            person = normalize_email(fe.get("conversation_recipient"))
            if rule is not None and person and (fe["event_type"] == "TAG" or rule.opportunity_stage):
                # To the match step, keyed like a message from that person.
                return [(internal["by_handle"], f"email:{person}".encode(), value)]
            return []
        if fe["event_type"] not in ("INBOUND_MESSAGE", "OUTBOUND_MESSAGE"):
            return []  # other event kinds have no rule
        handles = counterpart_handles(fe, region)
        # One Task per message on the first customer-side handle (Front's own rule), or one
        # per external participant (worker.all_participants). What goes on is the masked
        # event: nothing masked reaches a topic after front.events.
        if not handles:
            return [audit_item(src, fe, "SKIPPED", "message has no customer email or phone handle")]
        items: list[Item] = []
        for handle in handles if w.all_participants else handles[:1]:
            found, why = find_record(handle)
            if found is None:
                # The match step, in the handle's partition, holds the waits.
                items.append((internal["by_handle"], handle.encode(), value))
                continue
            items.extend(land_items(src, fe, handle, found, why))
            items.extend(note_items(fe, handle, found))
        return items

    def audit_item(src: Src, fe: dict[str, Any], outcome: str, error: str | None,
                   record_id: str | None = None, reason: str | None = None) -> Item:
        msg_id = (fe.get("message") or {}).get("id") or fe["event_id"]
        record = {
            "command_id": f"match:{msg_id}",
            "correlation_id": fe["event_id"],
            "target": "streams",
            "operation": "Match",
            "outcome": outcome,
            "record_id": record_id,
            "api_calls": {},
            "error": error,
            "reason": reason,
            "source_topic": src[0],
            "source_partition": src[1],
            "source_offset": src[2],
            "at": int(time.time() * 1000),
        }
        return (topics.audit, record["command_id"].encode(), serde.encode(topics.audit, record))

    async def emit_audit(out: Outbox, event: EventT, fe: dict[str, Any], outcome: str,
                         error: str | None, record_id: str | None = None,
                         reason: str | None = None) -> None:
        await out.put(app.producer, [audit_item(src_of(event), fe, outcome, error, record_id, reason)])

    @app.agent(case_events, name="case-status")
    async def case_events_agent(stream: StreamT) -> None:
        async def body(event: EventT, fe: dict[str, Any], out: Outbox) -> None:
            await case_status(event, fe, out)

        await consume("case-status", stream, topics.front_events, body)

    async def unknown_sender(out: Outbox, fe: dict[str, Any], email: str) -> None:
        """Use case 2: the sender's Lead (once per email), the message's Task on it by
        external id, and the tag ``New Lead`` on the conversation. The Lead and the Task
        are keyed by the handle, so they share a partition of commands.salesforce and the
        Lead comes first: the sink writes it in the same batch as the Task, or in an
        earlier one."""
        name = next((r.get("name") for r in fe["message"]["recipients"]
                     if r["role"] == "from" and r.get("name")), None)
        key = f"email:{email}"
        await send_sf(out, key, lead_command(fe, email, name, free_mail))
        await send_sf(out, key, with_front_fields(lead_task_command(
            fe, email, settings.salesforce.task_external_id_field, task_owner(fe)), fe))
        await out.send(front_commands, fe["conversation_id"].encode(),
                       serde.encode(topics.commands_front, new_lead_tag_command(fe)))
        log.info("unknown sender: lead", handle=email, event_id=fe["event_id"])

    async def tagged(event: EventT, fe: dict[str, Any], found: dict[str, Any] | None,
                     out: Outbox) -> None:
        """Use case 4: a mapped tag's follow-up Task and Chatter note on the person."""
        if found is None:
            await emit_audit(out, event, fe, "SKIPPED",
                             f"tag {fe.get('tag_name')!r}: the conversation's recipient matches no "
                             "Contact or Lead")
            return
        rule = tag_rules[str(fe.get("tag_name") or "").lower()]
        if fe["event_type"] == "TAG":
            for cmd in tag_commands(fe, found, rule, settings.salesforce.task_external_id_field):
                await send_sf(out, fe["conversation_id"], cmd)
        if rule.opportunity_stage and found.get("account_id"):
            # The stage lives with the Account's Opportunities: on to the account-context
            # partition, in order (front.events, then by person, then by Account).
            await out.send(tags_by_account, str(found["account_id"]).encode(),
                           serde.encode(internal["tags_by_account"], fe))

    @app.agent(tags_by_account, name="account-tags")
    async def account_tags(stream: StreamT) -> None:
        async def body(event: EventT, fe: dict[str, Any], out: Outbox) -> None:
            await tag_stage(event, _key(event), fe, out)

        await consume("account-tags", stream, internal["tags_by_account"], body)

    async def tag_stage(event: EventT, account_id: str, fe: dict[str, Any], out: Outbox) -> None:
        async with context_locks.hold(account_id):  # the account-context agent writes it too
            await tag_stage_locked(event, account_id, fe, out)

    async def tag_stage_locked(event: EventT, account_id: str, fe: dict[str, Any], out: Outbox) -> None:
        """Use case 4, the stage: a mapped tag moves the Account's open Opportunity (the one
        closing first) to the rule's stage, once while the tag is on (a second add, a replay,
        does nothing); removing it puts the stage back when the rule says revert."""
        tag = str(fe.get("tag_name") or "")
        rule = tag_rules[tag.lower()]
        key = f"{fe['conversation_id']}/{tag.lower()}"
        held = contexts.get(account_id) or {"account": None, "opportunities": {}, "contacts": {},
                                            "sent": None, "tag_stages": {}}
        at = _ms(fe["occurred_at"])
        # A removed tag's entry stays (with its removal's time) for TOMBSTONE_MS: a replay of
        # the add, after a rebalance or a crash re-read it with its removal, must not take it
        # for a new add (it would move the stage again, and the removal's replay would then
        # "revert" to that stage under the same idempotency key).
        stages = {k: v for k, v in (held.get("tag_stages") or {}).items()
                  if v.get("removed_at") is None or v["removed_at"] > at - TOMBSTONE_MS}
        on = stages.get(key)
        removed_at = on.get("removed_at") if on is not None else None
        if fe["event_type"] == "TAG":
            if on is not None and removed_at is None:
                await emit_audit(out, event, fe, "SKIPPED", f"tag {tag!r} already moved "
                                 f"Opportunity {on['opportunity_id']} for this conversation")
                return
            if on is not None and removed_at is not None and at <= removed_at:
                await emit_audit(out, event, fe, "SKIPPED", f"tag {tag!r} was removed after "
                                 f"this add (a replay): Opportunity {on['opportunity_id']} stays")
                return
            open_opps = sorted((o["fields"].get("CloseDate") or "9999", oid)
                               for oid, o in held["opportunities"].items()
                               if not o["deleted"] and o["fields"].get("IsClosed") != "true")
            if not open_opps:
                await emit_audit(out, event, fe, "SKIPPED",
                                 f"tag {tag!r}: Account {account_id} has no open Opportunity")
                return
            opp = open_opps[0][1]
            previous = held["opportunities"][opp]["fields"].get("StageName")
            stages[key] = {"opportunity_id": opp, "previous_stage": previous, "at": at,
                           "removed_at": None}
            cmd = stage_command(fe, opp, str(rule.opportunity_stage))
        else:
            if on is None or removed_at is not None:
                return  # the tag moved nothing (or its removal was handled already)
            if not removal_undoes(at, on["at"]):
                await emit_audit(out, event, fe, "SKIPPED", f"removal of tag {tag!r} is older than "
                                 f"its add at {on['at']} (a replay): Opportunity {on['opportunity_id']} stays")
                return
            stages[key] = {**on, "removed_at": max(at, on["at"])}
            cmd = None
            if rule.on_untag == "revert" and on["previous_stage"]:
                cmd = stage_command(fe, on["opportunity_id"], on["previous_stage"])
        if cmd is not None:
            await send_sf(out, cmd["operation"][1]["record_id"], cmd)
            # The command is stored before the table says it was sent: a worker killed in
            # between handles the tag again instead of skipping it as done.
            await out.delivered()
        contexts[account_id] = {**held, "tag_stages": stages}
        out.changelog(contexts)

    def find_record(key: str) -> tuple[dict[str, Any] | None, str]:
        """The record a handle lands on, by ``worker.match_priority``, and why (the audit's
        reason): Contact and Lead by the handle in the record-match table, Account by the
        email's domain in the reference table (never a free-mail domain)."""
        held = match_view.get(key)
        candidates = (held and held["candidates"]) or {}
        for kind in w.match_priority:
            if kind in PEOPLE:
                found = choose_match(candidates, (kind,))
                if found is not None:
                    n = sum(1 for c in candidates.values() if c["kind"] == kind)
                    others = sorted({c["kind"] for c in candidates.values()} - {kind})
                    return found, (f"{key}: {kind}"
                                   + (f" (newest of {n} {kind}s)" if n > 1 else "")
                                   + (f" over {', '.join(others)} by priority" if others else ""))
            elif kind == "Account" and key.startswith("email:"):
                domain = email_domain(key.removeprefix("email:"))
                if domain in free_mail:
                    continue
                ref = ref_view.get(f"domain:{domain}")
                account = choose_account(ref and ref["candidates"])
                if account is not None:
                    n = len(ref["candidates"]) if ref else 1
                    return ({**account, "account_id": account["id"]},
                            f"domain:{domain}: Account" + (f" (oldest of {n})" if n > 1 else ""))
        return None, f"no {', '.join(w.match_priority)} matches {key}"

    def reference_record(record_id: str | None) -> dict[str, Any] | None:
        if not record_id:
            return None
        held = ref_view.get(f"id:{record_id}")
        return (held and held["candidates"].get(record_id)) or None

    def task_owner(fe: dict[str, Any]) -> str | None:
        """Use case 1: the Salesforce User whose email is the Front teammate's: the author of
        an outbound message, the assignee of an inbound one."""
        if not w.task_owner_from_teammate or not fe.get("message"):
            return None
        msg = fe["message"]
        email = normalize_email(fe.get("assignee_email") if msg["is_inbound"] else msg.get("author_email"))
        if email is None:
            return None
        held = ref_view.get(f"user:{email}")
        user = choose_user(held and held["candidates"])
        return user["id"] if user else None

    def owner_items(fe: dict[str, Any], found: dict[str, Any]) -> list[Item]:
        """Use case 5: a conversation nobody is assigned to, from a person whose Account (or
        Lead) has an owner in Salesforce, goes to the Front teammate with that User's email."""
        if not (w.route_to_account_owner and fe["event_type"] == "INBOUND_MESSAGE"
                and fe.get("conversation_id") and not fe.get("assignee_email")):
            return []
        account = reference_record(found.get("account_id"))
        owner_id = account["owner_id"] if account else (
            found.get("owner_id") if found["kind"] == "Lead" else None)
        user = reference_record(owner_id)
        if user is None or not user.get("active", True) or not user.get("email"):
            return []
        return [(topics.commands_front, fe["conversation_id"].encode(),
                 serde.encode(topics.commands_front, assign_command(fe, user["email"])))]

    def park(key: str, raw: bytes, out: Outbox) -> None:
        """Keep a message for its key until a record with it is indexed or the wait is over."""
        now = int(time.time() * 1000)
        held = pending(key)
        if held is None:
            # A new wait (the last one for this key may have been released a moment ago):
            # its own deadline, not the timer's pause after asking for the last one.
            releasing.pop(key, None)
            held = {"events": [], "since": now, "deadline": now + wait_ms,
                    "released_by": None, "released_at": None}
        if raw in held["events"]:
            return  # the same record again (a worker replaying after a kill): held once
        waiting[key] = {**held, "events": [*held["events"], raw]}
        out.changelog(waiting)

    def pending(key: str) -> dict[str, Any] | None:
        """The messages still waiting for ``key`` (not an entry released already)."""
        held = waiting.get(key)
        return None if held is None or held.get("released_by") else cast("dict[str, Any]", held)

    @app.agent(by_handle, name="match-front-events")
    async def match(stream: StreamT) -> None:
        async def body(event: EventT, fe: dict[str, Any], out: Outbox) -> None:
            key = _key(event)
            if fe["event_type"] in ("TAG", "UNTAG"):
                held = table.get(key)
                await tagged(event, fe, choose_match(held and held["candidates"]), out)
                return
            queued = pending(key) if wait_ms else None
            if queued is not None and len(queued["events"]) < MAX_WAITING:
                park(key, bytes(event.value), out)  # behind the ones already waiting: in order
                return
            # No new wait over an entry that is still kept (full, or released less than
            # ``waiting_purge_s`` ago): a new entry would replace the released one, and a
            # worker that dies before the release's commands are stored replays its release
            # record against the new entry and loses the released messages. Released means
            # the wait was answered: the record is there, or the sender is unknown (their
            # Lead is an upsert on the handle, so asking again makes no second one).
            may_wait = bytes(event.value) if wait_ms and waiting.get(key) is None else None
            await matched(event, fe, key, out, may_wait)

        await consume("match-front-events", stream, topics.front_events, body)

    @app.agent(release, name="release-waiting")
    async def release_waiting(stream: StreamT) -> None:
        async def body(event: EventT, marker: dict[str, Any], out: Outbox) -> None:
            """The messages waiting for a key, matched again: a record with the key was
            indexed ("matched"), or the wait is over ("expired", from the timer below) and
            what still matches nothing is an unknown sender's. Released once: the entry goes."""
            key = _key(event)
            held = waiting.get(key)
            here = f"{event.message.partition}@{event.message.offset}"
            if held is None:
                return
            if marker["value"] == "purge":
                if held.get("released_by"):
                    del waiting[key]
                    out.changelog(waiting)
                return
            if held.get("released_by") not in (None, here):
                return  # released already by another record (the timer may ask twice)
            if held.get("released_by") is None:
                if marker["value"] == "expired" and held["deadline"] > int(time.time() * 1000):
                    return
                if marker["value"] == "matched" and find_record(key)[0] is None:
                    return  # the record came and went, or is not one a message lands on
                # Marked, not deleted: if the worker dies before the commands below are
                # stored, the replay of this very record finds them and matches them again.
                waiting[key] = {**held, "released_by": here, "released_at": int(time.time() * 1000)}
                out.changelog(waiting)
            for raw in held["events"]:
                fe = serde.decode(topics.front_events, raw)
                with bind_correlation(str(fe.get("event_id") or "")):
                    await matched(event, fe, key, out, None)

        await consume("release-waiting", stream, internal["release"], body)

    @app.timer(interval=1.0)
    async def expire_waiting() -> None:
        """Ask for the release of every key of this worker's partitions whose wait is over;
        the release agent (in the key's partition, in order with its messages) decides."""
        if not wait_ms:
            return
        now = int(time.time() * 1000)
        for key, held in list(waiting.items()):
            if not held or releasing.get(key, 0.0) >= time.monotonic() - 10:
                continue
            if held.get("released_at"):
                # Released a while ago (its release record long acknowledged): purge it.
                ask = "purge" if now - held["released_at"] > purge_ms else None
            else:
                ask = "expired" if held["deadline"] <= now else None
            if ask is not None:
                releasing[key] = time.monotonic()
                await release.send(key=key.encode(), value=serde.encode(internal["release"], {
                    "value": ask, "at": now, "event_id": None}))
        for key in [k for k, at in releasing.items() if at < time.monotonic() - 60]:
            releasing.pop(key, None)

    async def matched(event: EventT, fe: dict[str, Any], key: str, out: Outbox,
                      may_wait: bytes | None) -> None:
        """A message on the record its handle matches (use case 1), or, matching nothing:
        waiting for one (``may_wait``: its raw value), then the record of the Front contact
        the handle belongs to (use case 2, a known person's new handle), then an unknown
        sender's Lead (use case 2) or an audited SKIPPED."""
        found, why = find_record(key)
        if found is None and may_wait is not None:
            park(key, may_wait, out)
            return
        if found is None:
            crd = w.add_new_handles and front_contact_of(fe, key)
            if crd:
                # Asked in the Front contact's partition, which knows its other handles' record.
                await out.send(by_contact, crd.encode(), serde.encode(topics.front_events, fe))
                return
            await unmatched(event, fe, key, why, out)
            return
        await land(event, fe, key, found, why, out)
        await out.put(app.producer, note_items(fe, key, found))

    def note_items(fe: dict[str, Any], key: str, found: dict[str, Any]) -> list[Item]:
        """Use case 2, known people: which record this Front contact's handle matched, told
        to its Front contact's partition once per pairing (remembered once stored)."""
        crd = ((w.add_new_handles or w.salesforce_context) and found["kind"] in PEOPLE
               and front_contact_of(fe, key))
        if not crd or noted.get(crd) == found["id"]:
            return []
        note = {"record_id": found["id"], "kind": found["kind"],
                "account_id": found.get("account_id"), "owner_id": found.get("owner_id"),
                "handle": key, "at": int(time.time() * 1000)}
        record_id = found["id"]
        return [(internal["contact_notes"], crd.encode(), serde.encode(internal["contact_notes"], note)),
                lambda: remember(crd, record_id)]

    def remember(crd: str, record_id: str) -> None:
        with noted_lock:  # the fast lane's thread and the agents' loop both remember
            noted[crd] = record_id
            noted.move_to_end(crd)
            while len(noted) > NOTED_MAX:
                noted.popitem(last=False)

    def front_contact_of(fe: dict[str, Any], key: str) -> str | None:
        """The Front contact (crd_…) that the customer-side handle ``key`` belongs to."""
        roles = ("from",) if fe["message"]["is_inbound"] else ("to", "cc")
        for r in fe["message"]["recipients"]:
            if r["role"] in roles and r.get("contact_id") and handle_key(r["handle"], region) == key:
                return str(r["contact_id"])
        return None

    async def unmatched(event: EventT, fe: dict[str, Any], key: str, why: str, out: Outbox) -> None:
        """Nobody's message: an unknown sender's Lead (use case 2), or an audited SKIPPED."""
        if key.startswith("email:") and w.unknown_sender_leads and (
                fe["event_type"] == "INBOUND_MESSAGE" and fe.get("conversation_id")):
            await unknown_sender(out, fe, key.removeprefix("email:"))
            return
        await emit_audit(out, event, fe, "SKIPPED", why, reason=why)
        log.info("unmatched", handle=key, event_id=fe["event_id"])

    async def land(event: EventT, fe: dict[str, Any], key: str, found: dict[str, Any], why: str,
                   out: Outbox) -> None:
        await out.put(app.producer, land_items(src_of(event), fe, key, found, why))

    def land_items(src: Src, fe: dict[str, Any], key: str, found: dict[str, Any],
                   why: str) -> list[Item]:
        """The message's Task on ``found`` (use case 1), its audit, the conversation's routing
        (use case 5) and, for a Lead, the New Lead tag (use case 2)."""
        first = counterpart_handles(fe, region)[:1] == [key]
        msg_id = fe["message"]["id"]
        cmd = task_command(fe, found, settings.salesforce.task_external_id_field, task_owner(fe),
                           None if first else f"{msg_id}/{key}")
        items = sf_items(msg_id, with_front_fields(cmd, fe), fe.get("received_at"))
        items.append(audit_item(src, fe, "MATCHED", None, found["id"], why))
        if first:
            items.extend(owner_items(fe, found))
        if (found["kind"] == "Lead" and w.unknown_sender_leads
                and fe["event_type"] == "INBOUND_MESSAGE" and fe.get("conversation_id")):
            # The sender is a Lead (the one made for them a moment ago, or one that was
            # there): every conversation of theirs is tagged, whether the Lead's change
            # event reached the table before this message or not. Once per conversation
            # (the Front sink's ledger); a tag a person removes stays removed.
            items.append((topics.commands_front, fe["conversation_id"].encode(),
                          serde.encode(topics.commands_front, new_lead_tag_command(fe))))
        return items

    @app.agent(contact_notes, name="front-contact-notes")
    async def front_contact_notes(stream: StreamT) -> None:
        async def body(event: EventT, note: dict[str, Any], out: Outbox) -> None:
            """Which record a Front contact's handles matched. A Contact outranks a Lead (by
            worker.match_priority); among equals the newest note wins."""
            crd = _key(event)
            held = front_contacts.get(crd)
            if held is not None and held["record_id"] != note["record_id"] and note_outranks(held, note, rank):
                return  # the held record outranks it, or is as good and newer (a replay)
            if held != note:
                if (w.salesforce_context and note["kind"] == "Contact" and note.get("account_id")
                        and (held is None or held["record_id"] != note["record_id"])):
                    # Use case 3: this Front contact's first match to this Contact. Asked in
                    # the Account's partition, which holds the context (front_contact_seen).
                    await out.send(by_account, note["account_id"].encode(), serde.encode(
                        internal["by_account"], {
                            "record_id": note["record_id"], "sobject": FRONT_CONTACT,
                            "change_type": "UPDATE", "commit_timestamp": note["at"],
                            "transaction_key": f"{FRONT_CONTACT}:{crd}"}))
                    await out.delivered()  # sent before the table says so
                front_contacts[crd] = note
                out.changelog(front_contacts)

        await consume("front-contact-notes", stream, internal["contact_notes"], body)

    @app.agent(by_contact, name="match-by-front-contact")
    async def match_by_contact(stream: StreamT) -> None:
        async def body(event: EventT, fe: dict[str, Any], out: Outbox) -> None:
            """A message whose handle matched nothing, after its wait, in its Front contact's
            partition: if another handle of that Front contact matched a Contact or Lead, the
            message lands there and the handle is added to the record (use case 2, a known
            person); otherwise the sender is unknown."""
            crd = _key(event)
            key = next((k for k in counterpart_handles(fe, region)
                        if front_contact_of(fe, k) == crd), None)
            if key is None:
                await emit_audit(out, event, fe, "SKIPPED", f"no handle of Front contact {crd}")
                return
            direct, direct_why = find_record(key)
            if direct is not None:
                # The handle matches a record by itself now: this message read again after
                # its handle was added (a replay, a rebalance), or a record made meanwhile.
                # It lands there, and the handle is not added to another record (the Front
                # contact's note may name a different one by now).
                await land(event, fe, key, direct, direct_why, out)
                return
            held = front_contacts.get(crd)
            # The record the noted handle matches now (the same, or the one it moved to).
            now = find_record(held["handle"])[0] if held is not None else None
            if now is None or now["kind"] not in PEOPLE:
                if held is not None:
                    # That record is gone since (deleted, merged away, its email changed):
                    # the note is stale, the sender is not known through it.
                    log.info("front contact's record is gone", front_contact=crd,
                             record=held["record_id"], handle=held["handle"])
                why = f"no {', '.join(w.match_priority)} matches {key}, nor another handle of its Front contact {crd}"
                await unmatched(event, fe, key, why, out)
                return
            assert held is not None
            found = {"kind": now["kind"], "id": now["id"], "account_id": now.get("account_id"),
                     "owner_id": now.get("owner_id")}
            why = (f"{key}: no record; its Front contact {crd} is {now['kind']} {now['id']} "
                   f"(by {held['handle']}): the handle is added to it")
            await land(event, fe, key, found, why, out)
            await out.send(new_handles, now["id"].encode(), serde.encode(
                internal["new_handles"], {"value": key, "at": int(time.time() * 1000),
                                          "event_id": fe["event_id"]}))

        await consume("match-by-front-contact", stream, topics.front_events, body)

    @app.agent(new_handles, name="add-new-handles")
    async def add_new_handles(stream: StreamT) -> None:
        async def body(event: EventT, ask: dict[str, Any], out: Outbox) -> None:
            """A handle seen in Front added to a known Contact or Lead (use case 2), in the
            partition of the record's changes, which knows its fields now: into the first
            blank field of its kind, once (``asked`` until a change shows it), never over
            a value."""
            record_id, key = _key(event), str(ask["value"])
            async with record_locks.hold(record_id):  # the change router writes it too
                await add_handle(record_id, key, ask, out)

        await consume("add-new-handles", stream, internal["new_handles"], body)

    async def add_handle(record_id: str, key: str, ask: dict[str, Any], out: Outbox) -> None:
        """Under the record's lock (``add_new_handles``): the table is written after the
        command is stored, from the state read before it."""
        state = records.get(record_id)
        if state is None or state["deleted"] or key in state["keys"] or key in (state.get("asked") or []):
            return
        sobject = state["entry"]["kind"]
        kind, _, value = key.partition(":")
        if kind == "email":
            blank = [] if state["email"] else ["Email"]
        else:
            phones = [*(state.get("phones") or []), "", ""][:2]
            blank = [f for f, v in zip(("Phone", "MobilePhone"), phones, strict=True) if not v]
        blank = [f for f in blank if f not in exclude.get(sobject, ())]
        if not blank:
            log.info("new handle not added: no blank field", record=record_id, handle=key)
            return
        cmd = handle_command(str(ask.get("event_id") or ""), sobject, record_id, blank[0], value)
        await send_sf(out, record_id, cmd)
        # Stored before the table says it was asked: a worker killed in between asks again.
        await out.delivered()
        records[record_id] = {**state, "asked": [*(state.get("asked") or []), key]}
        out.changelog(records)
        log.info("new handle added", record=record_id, handle=key, field=blank[0])

    lane = FastLane(settings, serde, route,
                    ready=lambda: bool(app.tables.recovery.completed.is_set()))  # type: ignore[attr-defined]

    @app.service
    class FastLaneService(mode.Service):
        """front.events in the fast lane's thread, from the first table recovery on (a
        global table that is still loading would send every message the slow way)."""

        async def on_start(self) -> None:
            lane.start()

        async def on_stop(self) -> None:
            lane.stop()
            await asyncio.get_running_loop().run_in_executor(None, lane.join, 60.0)

    app.fast_lane = lane  # type: ignore[attr-defined]  # for tests and benches
    return app


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    # The topics the worker subscribes to must exist first: a Faust worker ignores one that
    # does not until the next rebalance, and never reads a missing global table's changelog.
    ensure_topics(settings)
    metrics.serve(settings.metrics.worker_port, settings.metrics.host, "worker")
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
