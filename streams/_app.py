"""The Faust app, built from configuration.

Flow (every arrow is a Kafka topic, so every step is replayable and any worker can take
over any partition):

    salesforce.changes ──route_changes──► <app>-match-keys ──index──► record-match table
    front.events ──route_front──► <app>-front-by-handle ──match──► commands.salesforce
                                                                   └► audit (unmatched)

Both sides of the join are re-keyed by the match key (``email:<address>``) onto topics with
the same partition count, because a Faust table partition lives where its source partition
is consumed: looking up a key that hashes elsewhere would miss on a multi-worker group.
Values stay Confluent wire-format Avro end to end; topics here use the raw codec and
``frontforce.serialization.Serde`` does the Avro.

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
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import faust
import structlog
from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError
from faust.serializers.codecs import Codec
from faust.types import EventT, FutureMessage, StreamT, TopicT
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_delay, wait_random_exponential

from frontforce.config import Settings
from frontforce.errors import InvalidRecordError, RetriableError
from frontforce.salesforce import is_our_change
from frontforce.serialization import Serde
from streams._matching import (
    choose_match,
    counterpart_handles,
    merge_entry,
    normalize_email,
    record_update,
)
from streams._privacy import excluded, masked, masker
from streams._rules import (
    CASE_LINK_FIELD,
    _ms,
    case_comment_command,
    case_status_command,
    lead_command,
    lead_task_command,
    new_lead_tag_command,
    tag_commands,
    task_command,
)

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

    __slots__ = ("futures",)

    def __init__(self) -> None:
        self.futures: list[tuple[str, asyncio.Future[Any]]] = []

    async def send(self, topic: TopicT, key: bytes | None, value: bytes) -> None:
        where = topic.get_topic_name()
        try:
            fut = await topic.send(key=key, value=value, force=True)
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
        processing_guarantee="at_least_once",
    )
    serde = Serde(settings)
    mask = masker(settings.privacy)
    tag_rules = {name.lower(): rule for name, rule in w.tag_rules.items()}

    front_events = app.topic(topics.front_events, **_RAW)
    changes = app.topic(topics.salesforce_changes, **_RAW)
    commands = app.topic(topics.commands_salesforce, **_RAW)
    front_commands = app.topic(topics.commands_front, **_RAW)
    audit = app.topic(topics.audit, **_RAW)
    deadletter = app.topic(topics.deadletter, **_RAW)
    internal = settings.worker_topics
    match_keys = app.topic(internal["match_keys"], partitions=n, internal=True, **_RAW)
    by_handle = app.topic(internal["by_handle"], partitions=n, internal=True, **_RAW)
    # Values {"candidates": {record id: MatchCandidate}}, stored (RocksDB) and logged
    # (changelog topic) through an Avro codec over the same serializers as every topic.
    table = app.tables.add(ChangelogTable(app, name="record-match", default=None, partitions=n,
                                          key_type=str))
    assert isinstance(table, ChangelogTable)
    table.value_serializer = AvroCodec(  # type: ignore[attr-defined]  # read lazily by Faust
        serde, settings.worker_table_topics["match_table"])
    # Conversation id -> the newest archive/reopen acted on (front.events is keyed by
    # conversation: co-partitioned with route-front-events, the only agent that uses it).
    conversations = app.tables.add(ChangelogTable(app, name="conversation-state", default=None,
                                                  partitions=n, key_type=str))
    # Record id -> the match keys it holds and its newest state (salesforce.changes is keyed
    # by record id: co-partitioned with route-changes).
    records = app.tables.add(ChangelogTable(app, name="record-keys", default=None,
                                            partitions=n, key_type=str))
    # Case id -> its Front conversation (salesforce.changes is keyed by record id).
    case_links = app.tables.add(ChangelogTable(app, name="case-links", default=None,
                                               partitions=n, key_type=str))
    assert isinstance(conversations, ChangelogTable) and isinstance(case_links, ChangelogTable)
    assert isinstance(records, ChangelogTable)
    for small, logical in ((conversations, "conversation_table"), (case_links, "case_links_table"),
                           (records, "record_table")):
        small.value_serializer = AvroCodec(  # type: ignore[attr-defined]
            serde, settings.worker_table_topics[logical])

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
        out = Outbox()
        await out.send(deadletter, msg.key, serde.encode(topics.deadletter, record))
        await out.delivered()
        log.warning("dead-lettered", stage=stage, error=str(exc),
                    at=f"{msg.topic}[{msg.partition}]@{msg.offset}")

    def before_retry(state: RetryCallState) -> None:
        event = state.args[1]
        msg = event.message
        log.warning("transient failure, retrying in place (not acknowledged)",
                    stage=state.args[0], attempt=state.attempt_number,
                    error=str(state.outcome.exception()) if state.outcome else None,
                    at=f"{msg.topic}[{msg.partition}]@{msg.offset}")

    Body = Callable[[EventT, dict[str, Any], Outbox], Awaitable[None]]

    async def handle_once(stage: str, event: EventT, logical_topic: str, body: Body,
                          out: Outbox) -> None:
        try:
            value = serde.decode(logical_topic, event.value)
        except InvalidRecordError as exc:
            await dead_letter(event, "decode", exc)
            return
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
        for ``worker.max_stall_s`` ends here, with the event unacknowledged."""
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
        sys.stdout.flush()
        sys.stderr.flush()
        # Not an exception: Faust would ack the event on the way out, or restart the agent and
        # go on with the next one. The process ends here; what it acked is handled, what it
        # did not is read again by whoever takes the partition.
        os._exit(EXIT_STALLED)

    async def consume(stage: str, stream: Any, logical_topic: str, body: Body) -> None:
        """The one way every agent handles its events: decode, run ``body``, dead-letter
        the poison, retry the transient in place, ack only when all of it is stored.

        The agent hands each event's outbox to an acker task and goes on; the acker waits for
        the outboxes in order and acks. A send that failed is not skipped: the acker handles
        that event again, waiting for it this time, before it acks anything after it."""
        manual = stream.noack()
        in_flight: asyncio.Queue[tuple[EventT, Outbox]] = asyncio.Queue(maxsize=w.max_in_flight)

        async def acker() -> None:
            while True:
                event, out = await in_flight.get()
                try:
                    await out.delivered()
                except (RetriableError, InvalidRecordError):
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
            async for event in manual.events():
                out = Outbox()
                await reliably(stage, event, handle_once, logical_topic, body, out)
                await in_flight.put((event, out))
        finally:
            task.cancel()

    @app.agent(changes, name="route-changes")
    async def route_changes(stream: StreamT) -> None:
        async def body(event: EventT, change: dict[str, Any], out: Outbox) -> None:
            held = records.get(change["record_id"])
            state, entries = record_update(held, change)
            if state is not held:
                records[change["record_id"]] = state
                out.changelog(records)
            for key, entry in entries:
                await out.send(match_keys, key.encode(), serde.encode(internal["match_keys"], entry))
            if change["sobject"] == "Case":
                await case_changed(change, out)

        await consume("route-changes", stream, topics.salesforce_changes, body)

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
        if is_our_change(change.get("change_origin")):
            log.info("case status change is our own write; no comment", case=rid)
            return
        await out.send(front_commands, str(conversation).encode(), serde.encode(
            topics.commands_front, case_comment_command(change, str(conversation))))

    async def case_status(event: EventT, fe: dict[str, Any], out: Outbox) -> None:
        """Use case 6: archive closes, reopen reopens the linked Case. The newest event by
        Front's time wins: one older than what the conversation-state table holds changes
        nothing (a late or swapped delivery); the same event again is sent again (the
        command is the same, the sink makes it harmless), so a crash between the table and
        the command loses nothing."""
        conversation, etype = fe["conversation_id"], fe["event_type"]
        at = _ms(fe["occurred_at"])
        held = conversations.get(conversation)
        if held is not None and (held["at"], held["event_id"] or "") > (at, fe["event_id"]):
            await emit_audit(out, event, fe, "SKIPPED",
                             f"{etype} at {at} is older than {held['value']} at {held['at']}")
            return
        conversations[conversation] = {"value": etype, "at": at, "event_id": fe["event_id"]}
        out.changelog(conversations)
        closing = etype == "ARCHIVE"
        cmd = case_status_command(fe, w.case_closed_status if closing else w.case_reopened_status,
                                  closing)
        await out.send(commands, conversation.encode(), serde.encode(topics.commands_salesforce, cmd))

    @app.agent(match_keys, name="index-match-keys")
    async def index_match_keys(stream: StreamT) -> None:
        async def body(event: EventT, entry: dict[str, Any], out: Outbox) -> None:
            key = _key(event)
            held = table.get(key)
            table[key] = {"candidates": merge_entry(held and held["candidates"], entry)}
            out.changelog(table)

        await consume("index-match-keys", stream, internal["match_keys"], body)

    @app.agent(front_events, name="route-front-events")
    async def route_front(stream: StreamT) -> None:
        async def body(event: EventT, fe: dict[str, Any], out: Outbox) -> None:
            why = excluded(settings.privacy, fe)
            if why is not None:
                await emit_audit(out, event, fe, "SKIPPED", why)
                return
            if fe["event_type"] in OUR_WRITES and fe.get("source_kind") in ("api", "oauth_client"):
                return  # loop guard: the echo of a tag, comment or assignment made by an API call
            fe = masked(fe, mask)
            if fe["event_type"] in ("ARCHIVE", "REOPEN") and w.close_cases and fe.get("conversation_id"):
                await case_status(event, fe, out)
                return
            if fe["event_type"] == "TAG" and fe.get("conversation_id"):
                rule = tag_rules.get(str(fe.get("tag_name") or "").lower())
                person = normalize_email(fe.get("conversation_recipient"))
                if rule is not None and person:
                    # To the match step, keyed like a message from that person.
                    await out.send(by_handle, f"email:{person}".encode(),
                                   serde.encode(topics.front_events, fe))
                return
            if fe["event_type"] not in ("INBOUND_MESSAGE", "OUTBOUND_MESSAGE"):
                return  # other event kinds get their rules in later steps
            handles = counterpart_handles(fe)
            # One Task per message: the first customer-side handle is the person. What goes on
            # is the masked event: nothing masked reaches a topic after front.events.
            if handles:
                await out.send(by_handle, handles[0].encode(), serde.encode(topics.front_events, fe))
            else:
                await emit_audit(out, event, fe, "SKIPPED", "message has no customer email handle")

        await consume("route-front-events", stream, topics.front_events, body)

    async def emit_audit(out: Outbox, event: EventT, fe: dict[str, Any], outcome: str,
                         error: str | None) -> None:
        msg = event.message
        msg_id = (fe.get("message") or {}).get("id") or fe["event_id"]
        record = {
            "command_id": f"match:{msg_id}",
            "correlation_id": fe["event_id"],
            "target": "streams",
            "operation": "Match",
            "outcome": outcome,
            "record_id": None,
            "api_calls": {},
            "error": error,
            "source_topic": msg.topic,
            "source_partition": msg.partition,
            "source_offset": msg.offset,
            "at": int(time.time() * 1000),
        }
        await out.send(audit, record["command_id"].encode(), serde.encode(topics.audit, record))

    async def unknown_sender(out: Outbox, fe: dict[str, Any], email: str) -> None:
        """Use case 2: the sender's Lead (once per email), the message's Task on it by
        external id, and the tag ``New Lead`` on the conversation. The Lead and the Task
        are keyed by the handle, so they share a partition of commands.salesforce and the
        Lead comes first: the sink writes it in the same batch as the Task, or in an
        earlier one."""
        name = next((r.get("name") for r in fe["message"]["recipients"]
                     if r["role"] == "from" and r.get("name")), None)
        key = f"email:{email}".encode()
        sf_topic = topics.commands_salesforce
        await out.send(commands, key, serde.encode(sf_topic, lead_command(fe, email, name)))
        await out.send(commands, key, serde.encode(
            sf_topic, lead_task_command(fe, email, settings.salesforce.task_external_id_field)))
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
        for cmd in tag_commands(fe, found, rule, settings.salesforce.task_external_id_field):
            await out.send(commands, fe["conversation_id"].encode(),
                           serde.encode(topics.commands_salesforce, cmd))

    @app.agent(by_handle, name="match-front-events")
    async def match(stream: StreamT) -> None:
        async def body(event: EventT, fe: dict[str, Any], out: Outbox) -> None:
            key = _key(event)
            held = table.get(key)
            found = choose_match(held and held["candidates"])
            if fe["event_type"] == "TAG":
                await tagged(event, fe, found, out)
                return
            if found is None and key.startswith("email:") and w.unknown_sender_leads and (
                    fe["event_type"] == "INBOUND_MESSAGE" and fe.get("conversation_id")):
                await unknown_sender(out, fe, key.removeprefix("email:"))
                return
            if found is None:
                await emit_audit(out, event, fe, "SKIPPED", f"no Contact matches {key}")
                log.info("unmatched", handle=key, event_id=fe["event_id"])
                return
            cmd = task_command(fe, found, settings.salesforce.task_external_id_field)
            await out.send(commands, fe["message"]["id"].encode(),
                           serde.encode(topics.commands_salesforce, cmd))
            if (found["kind"] == "Lead" and w.unknown_sender_leads
                    and fe["event_type"] == "INBOUND_MESSAGE" and fe.get("conversation_id")):
                # The sender is a Lead (the one made for them a moment ago, or one that was
                # there): every conversation of theirs is tagged, whether the Lead's change
                # event reached the table before this message or not. Once per conversation
                # (the Front sink's ledger); a tag a person removes stays removed.
                await out.send(front_commands, fe["conversation_id"].encode(),
                               serde.encode(topics.commands_front, new_lead_tag_command(fe)))

        await consume("match-front-events", stream, topics.front_events, body)

    return app


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
