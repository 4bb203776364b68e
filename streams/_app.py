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

No exception leaves an agent (Faust would ack and skip the event): each event is handled in
a try block, a record that can never be processed goes to the dead-letter topic with its
original bytes, and the agent goes on. Sends made while handling an event are attached to
it; Faust flushes the producer before it commits the event's offset.
"""

from __future__ import annotations

import time
from typing import Any

import faust
import structlog
from faust.serializers.codecs import Codec

from frontforce.config import Settings
from frontforce.errors import InvalidRecordError
from frontforce.serialization import Serde
from streams._matching import choose_match, counterpart_handles, match_entries, merge_entry
from streams._rules import task_command

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

    front_events = app.topic(topics.front_events, **_RAW)
    changes = app.topic(topics.salesforce_changes, **_RAW)
    commands = app.topic(topics.commands_salesforce, **_RAW)
    audit = app.topic(topics.audit, **_RAW)
    deadletter = app.topic(topics.deadletter, **_RAW)
    internal = settings.worker_topics
    match_keys = app.topic(internal["match_keys"], partitions=n, internal=True, **_RAW)
    by_handle = app.topic(internal["by_handle"], partitions=n, internal=True, **_RAW)
    # Values {"candidates": {record id: MatchCandidate}}, stored (RocksDB) and logged
    # (changelog topic) through an Avro codec over the same serializers as every topic.
    table = app.Table("record-match", default=None, partitions=n, key_type=str)
    table.value_serializer = AvroCodec(  # type: ignore[attr-defined]  # read lazily by Faust
        serde, settings.worker_table_topics["match_table"])

    async def dead_letter(event: faust.types.EventT, stage: str, exc: BaseException) -> None:
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
        await deadletter.send(key=msg.key, value=serde.encode(topics.deadletter, record))
        log.warning("dead-lettered", stage=stage, error=str(exc),
                    at=f"{msg.topic}[{msg.partition}]@{msg.offset}")

    @app.agent(changes, name="route-changes")
    async def route_changes(stream: faust.StreamT) -> None:
        async for event in stream.events():
            try:
                change = serde.decode(topics.salesforce_changes, event.value)
                for key, entry in match_entries(change):
                    await match_keys.send(key=key.encode(),
                                          value=serde.encode(internal["match_keys"], entry))
            except InvalidRecordError as exc:
                await dead_letter(event, "decode", exc)
            except Exception as exc:  # noqa: BLE001 - poison must not stop the agent
                await dead_letter(event, "route-changes", exc)

    @app.agent(match_keys, name="index-match-keys")
    async def index_match_keys(stream: faust.StreamT) -> None:
        async for event in stream.events():
            try:
                key = event.key.decode()
                entry = serde.decode(internal["match_keys"], event.value)
                held = table.get(key)
                table[key] = {"candidates": merge_entry(held and held["candidates"], entry)}
            except InvalidRecordError as exc:
                await dead_letter(event, "decode", exc)
            except Exception as exc:  # noqa: BLE001
                await dead_letter(event, "index-match-keys", exc)

    @app.agent(front_events, name="route-front-events")
    async def route_front(stream: faust.StreamT) -> None:
        async for event in stream.events():
            try:
                fe = serde.decode(topics.front_events, event.value)
                if fe["event_type"] not in ("INBOUND_MESSAGE", "OUTBOUND_MESSAGE"):
                    continue  # other event kinds get their rules in later steps
                handles = counterpart_handles(fe)
                # One Task per message: the first customer-side handle is the person.
                if handles:
                    await by_handle.send(key=handles[0].encode(), value=event.value)
                else:
                    await emit_audit(event, fe, "SKIPPED", "message has no customer email handle")
            except InvalidRecordError as exc:
                await dead_letter(event, "decode", exc)
            except Exception as exc:  # noqa: BLE001
                await dead_letter(event, "route-front-events", exc)

    async def emit_audit(event: faust.types.EventT, fe: dict[str, Any], outcome: str,
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
        await audit.send(key=record["command_id"].encode(), value=serde.encode(topics.audit, record))

    @app.agent(by_handle, name="match-front-events")
    async def match(stream: faust.StreamT) -> None:
        async for event in stream.events():
            try:
                fe = serde.decode(topics.front_events, event.value)
                key = event.key.decode()
                held = table.get(key)
                found = choose_match(held and held["candidates"])
                if found is None:
                    await emit_audit(event, fe, "SKIPPED", f"no Contact matches {key}")
                    log.info("unmatched", handle=key, event_id=fe["event_id"])
                    continue
                cmd = task_command(fe, found, settings.salesforce.task_external_id_field)
                await commands.send(
                    key=fe["message"]["id"].encode(),
                    value=serde.encode(topics.commands_salesforce, cmd),
                )
            except InvalidRecordError as exc:
                await dead_letter(event, "decode", exc)
            except Exception as exc:  # noqa: BLE001
                await dead_letter(event, "match-front-events", exc)

    return app


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
