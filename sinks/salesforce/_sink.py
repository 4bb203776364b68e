"""The Salesforce sink loop.

One commit path, in this order (STYLE habit 2):
  1. take up to ``batch_size`` commands (or what arrived within ``batch_wait_ms``);
  2. write them with one sObject Collections upsert per external-id field (200 records,
     one API call), retrying retriable records with backoff, unrolling a rejected batch,
     dead-lettering only records that are permanently wrong;
  3. produce audit and dead-letter records and wait until the broker acknowledged all;
  4. commit the consumed offsets.
A crash anywhere before 4 replays the batch; upserts on the external id make the replay
harmless (same Task, no duplicate).
"""

from __future__ import annotations

import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import date
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from frontforce.config import Settings
from frontforce.errors import BackPressure, FatalError, InvalidRecordError, RetriableError
from frontforce.kafka import consumer_config, producer_config
from frontforce.logs import coords
from frontforce.salesforce import SalesforceConnection, connect
from frontforce.serialization import Serde
from sinks.salesforce._errors import (
    BatchRejected,
    SessionExpired,
    classify_call_error,
    classify_item_error,
)

log = structlog.get_logger("sinks.salesforce")

_TASK_FIELDS = {
    "who_id": "WhoId",
    "what_id": "WhatId",
    "owner_id": "OwnerId",
    "subject": "Subject",
    "description": "Description",
    "status": "Status",
    "task_subtype": "TaskSubtype",
    "front_conversation_id": "Front_Conversation_Id__c",
}


# Createable but not updateable: an upsert that hits an existing Task must leave them out.
INSERT_ONLY_TASK_FIELDS = frozenset({"TaskSubtype"})


def task_record(op: dict[str, Any], for_update: bool = False) -> dict[str, Any]:
    rec: dict[str, Any] = {"attributes": {"type": "Task"}, op["external_id_field"]: op["external_id"]}
    for key, field in _TASK_FIELDS.items():
        if for_update and field in INSERT_ONLY_TASK_FIELDS:
            continue
        if op.get(key) is not None:  # never blank a field someone else filled in
            rec[field] = op[key]
    activity = op["activity_date"]
    rec["ActivityDate"] = activity.isoformat() if isinstance(activity, date) else str(activity)
    return rec


def _where(m: Message) -> tuple[str, int, int]:
    """topic, partition, offset of a consumed message (never None once consumed)."""
    topic, partition, offset = m.topic(), m.partition(), m.offset()
    assert topic is not None and partition is not None and offset is not None
    return topic, partition, offset


class _Item:
    __slots__ = ("msg", "command", "op_name", "op", "attempts", "for_update")

    def __init__(self, msg: Message, command: dict[str, Any]) -> None:
        self.msg = msg
        self.command = command
        # Commands are read with return_record_name: (full record name, fields).
        name, fields = command["operation"]
        self.op_name: str = name.rsplit(".", 1)[-1]
        self.op: dict[str, Any] = fields
        self.attempts = 0
        self.for_update = False  # set once Salesforce told us the record already exists


def _insert_only_refused(errors: list[dict[str, Any]]) -> bool:
    return bool(errors) and all(
        e.get("statusCode") == "INVALID_FIELD_FOR_INSERT_UPDATE"
        and set(e.get("fields") or []) <= INSERT_ONLY_TASK_FIELDS
        for e in errors
    )


class SalesforceSink:
    def __init__(self, settings: Settings,
                 connector: Callable[[], SalesforceConnection] | None = None) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.serde = Serde(settings)
        self._connector = connector or (lambda: connect(settings.salesforce))
        self._conn: SalesforceConnection | None = None
        self.consumer = Consumer(consumer_config(settings, settings.sink.group_id))
        self.producer = Producer(producer_config(settings))
        self.stop_event = threading.Event()
        self._delivery_errors: list[str] = []
        self.stats = {"created": 0, "updated": 0, "dead_lettered": 0, "api_calls": 0}

    # -- connection and budget -------------------------------------------------------
    @property
    def conn(self) -> SalesforceConnection:
        if self._conn is None:
            self._conn = self._connector()
        return self._conn

    def _check_budget(self) -> None:
        usage = self.conn.client.api_usage.get("api-usage")
        if usage is None:
            return
        allowed = usage.total * self.settings.sink.salesforce_quota_share
        if usage.used >= allowed:
            raise BackPressure(
                f"salesforce budget: {usage.used}/{usage.total} used, share allows {allowed:.0f}",
                60.0,
            )

    # -- main loop -------------------------------------------------------------------
    def run(self) -> None:
        self.consumer.subscribe([self.topics.commands_salesforce])
        wait_s = self.settings.sink.batch_wait_ms / 1000.0
        log.info("sink started", topic=self.topics.commands_salesforce)
        try:
            while not self.stop_event.is_set():
                msgs = self.consumer.consume(self.settings.sink.batch_size, timeout=max(wait_s, 0.05))
                msgs = [m for m in msgs if self._usable(m)]
                if msgs:
                    self.process(msgs)
        finally:
            self.producer.flush(10)
            self.consumer.close()

    def _usable(self, m: Message) -> bool:
        err = m.error()
        if err is None:
            return True
        if err.code() == KafkaError._PARTITION_EOF:
            return False
        if err.fatal():
            raise FatalError(f"kafka consumer: {err.str()}")
        log.warning("consumer error", error=err.str())
        return False

    def process(self, msgs: list[Message]) -> None:
        items: list[_Item] = []
        for m in msgs:
            try:
                items.append(_Item(m, self.serde.decode(_where(m)[0], m.value())))
            except InvalidRecordError as exc:
                self._dead_letter(m, "decode", exc, attempts=1)
        self._write(items)
        self._commit(msgs)

    # -- writing ---------------------------------------------------------------------
    def _write(self, items: list[_Item]) -> None:
        pending = [i for i in items if self._validate(i)]
        max_attempts = self.settings.sink.max_attempts
        while pending and not self.stop_event.is_set():
            try:
                self._check_budget()
                pending = self._upsert_tasks(pending)
            except BackPressure as exc:
                # Quota: wait and retry everything; never dead-letter for quota.
                log.warning("back-pressure", reason=str(exc))
                self.stop_event.wait(exc.wait_seconds)
                continue
            if pending:
                attempt = max(i.attempts for i in pending)
                if attempt >= max_attempts:
                    raise FatalError(
                        f"{len(pending)} records still failing after {attempt} attempts; stopping"
                        " without committing so they are retried on restart"
                    )
                delay = min(30.0, 0.5 * 2 ** attempt)
                log.warning("retrying records", count=len(pending), attempt=attempt, delay_s=delay)
                self.stop_event.wait(delay)
        if pending:
            # Stopping: leave them uncommitted; they are redelivered after restart.
            raise InterruptedError("sink stopped with records pending")

    def _validate(self, item: _Item) -> bool:
        if item.op_name != "UpsertTask":
            # Not yet executable by this sink version: keep it, with the reason, rather than
            # pretend it was applied.
            why = f"operation {item.op_name} is not supported by this sink version"
            self._dead_letter(item.msg, "sink.salesforce", InvalidRecordError(why), 1)
            self._audit(item, "DEAD_LETTERED", None, why, 0.0)
            return False
        if not item.op.get("external_id"):
            why = "UpsertTask without an external id"
            self._dead_letter(item.msg, "sink.salesforce", InvalidRecordError(why), 1)
            self._audit(item, "DEAD_LETTERED", None, why, 0.0)
            return False
        return True

    def _call(self, fn: Callable[[], Any]) -> Any:
        """One REST call with bounded, jittered backoff for transient failures; a 401
        logs in again once. Returns the parsed body or raises a frontforce error."""

        def attempt() -> Any:
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - classified right below
                mapped = classify_call_error(exc)
                if isinstance(mapped, SessionExpired):
                    self._conn = None
                raise mapped from exc

        retrying = Retrying(
            retry=retry_if_exception_type(RetriableError),
            wait=wait_random_exponential(multiplier=0.5, max=20),
            stop=stop_after_attempt(self.settings.sink.max_attempts),
            reraise=True,
        )
        result = retrying(attempt)
        self.stats["api_calls"] += 1
        return result

    def _upsert_tasks(self, items: list[_Item]) -> list[_Item]:
        """Upsert one batch; return the items to retry."""
        by_field: OrderedDict[str, OrderedDict[str, list[_Item]]] = OrderedDict()
        for it in items:
            op = it.op
            by_field.setdefault(op["external_id_field"], OrderedDict()).setdefault(
                op["external_id"], []).append(it)
        retry: list[_Item] = []
        as_update: list[_Item] = []
        for field, groups in by_field.items():
            # Same external id twice in one batch: write it once (the newest command),
            # report the outcome to every command that asked for it.
            keys = list(groups)
            records = [task_record(groups[k][-1].op, groups[k][-1].for_update) for k in keys]
            path = f"composite/sobjects/Task/{field}"
            body = {"allOrNone": False, "records": records}

            def call(p: str = path, b: dict[str, Any] = body) -> Any:
                return self.conn.client.restful(p, method="PATCH", json=b)

            try:
                results = self._call(call)
            except BatchRejected as exc:
                if len(keys) == 1:
                    for it in groups[keys[0]]:
                        self._fail(it, str(exc), 1.0)
                    continue
                # Unroll: find the bad record(s) one by one; the rest go through.
                log.warning("batch rejected, unrolling", size=len(keys), error=str(exc))
                for k in keys:
                    retry.extend(self._upsert_tasks(groups[k]))
                continue
            share = 1.0 / len(keys)
            for k, res in zip(keys, results, strict=True):
                for n, it in enumerate(groups[k]):
                    it.attempts += 1
                    if res.get("success"):
                        # Later commands for the same record found it existing: updates.
                        outcome = "CREATED" if res.get("created") and n == 0 else "UPDATED"
                        self.stats[outcome.lower()] += 1
                        self._audit(it, outcome, res.get("id"), None, share)
                    elif _insert_only_refused(res.get("errors") or []) and not it.for_update:
                        # The Task exists (a re-delivery): write it again without the
                        # insert-only fields, right away, as an update.
                        it.for_update = True
                        as_update.append(it)
                    else:
                        retriable, reason = classify_item_error(res.get("errors") or [])
                        if retriable:
                            retry.append(it)
                        else:
                            self._fail(it, reason, share)
        if as_update:
            retry.extend(self._upsert_tasks(as_update))
        return retry

    def _fail(self, item: _Item, reason: str, share: float) -> None:
        self._dead_letter(item.msg, "sink.salesforce", InvalidRecordError(reason),
                          max(1, item.attempts))
        self._audit(item, "DEAD_LETTERED", None, reason, share)
        self.stats["dead_lettered"] += 1

    # -- audit, dead letters, commit -------------------------------------------------
    def _produce(self, topic: str, key: bytes | None, record: dict[str, Any]) -> None:
        value = self.serde.encode(topic, record)
        while True:
            try:
                self.producer.produce(topic, key=key, value=value, on_delivery=self._on_delivery)
                break
            except BufferError:
                self.producer.poll(0.1)
        self.producer.poll(0)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._delivery_errors.append(err.str())

    def _audit(self, item: _Item, outcome: str, record_id: str | None, error: str | None,
               api_share: float) -> None:
        cmd = item.command
        topic, partition, offset = _where(item.msg)
        self._produce(self.topics.audit, cmd["command_id"].encode(), {
            "command_id": cmd["command_id"],
            "correlation_id": cmd["origin"]["correlation_id"],
            "target": "salesforce",
            "operation": item.op_name,
            "outcome": outcome,
            "record_id": record_id,
            "api_calls": {"salesforce.rest": api_share} if api_share else {},
            "error": error,
            "source_topic": topic,
            "source_partition": partition,
            "source_offset": offset,
            "at": int(time.time() * 1000),
        })
        log.info("command applied" if error is None else "command failed", outcome=outcome,
                 record_id=record_id, correlation_id=cmd["origin"]["correlation_id"],
                 at=coords(topic, partition, offset), error=error)

    def _dead_letter(self, m: Message, stage: str, exc: BaseException, attempts: int) -> None:
        topic, partition, offset = _where(m)
        self._produce(self.topics.deadletter, m.key(), {
            "original_topic": topic,
            "original_partition": partition,
            "original_offset": offset,
            "original_key": m.key(),
            "original_value": m.value(),
            "stage": stage,
            "error_class": type(exc).__name__,
            "error_message": str(exc)[:4000],
            "attempts": attempts,
            "at": int(time.time() * 1000),
        })

    def _commit(self, msgs: list[Message]) -> None:
        remaining = self.producer.flush(self.settings.kafka.delivery_timeout_s * 3)
        if remaining or self._delivery_errors:
            errors, self._delivery_errors = self._delivery_errors[:3], []
            raise RetriableError(f"audit/dead-letter not acknowledged: {remaining} pending {errors}")
        last: dict[tuple[str, int], int] = {}
        for m in msgs:
            topic, partition, offset = _where(m)
            last[(topic, partition)] = max(last.get((topic, partition), -1), offset)
        self.consumer.commit(
            offsets=[TopicPartition(t, p, o + 1) for (t, p), o in last.items()],
            asynchronous=False,
        )


def run_sink(settings: Settings) -> None:
    sink = SalesforceSink(settings)

    def stop(signum: int, frame: Any) -> None:
        sink.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        sink.run()
    except InterruptedError:
        log.info("sink stopped with uncommitted records; they will be redelivered")
