"""The Salesforce sink loop.

Before it joins its group the sink checks, with Task's describe, that the configured
external id field is a unique external id (else ``FatalError``), and reads ``/limits`` so it
knows its API budget before the first write.

One commit path, in this order (STYLE habit 2):
  1. take up to ``batch_size`` commands (or what arrived within ``batch_wait_ms``);
  2. decode them; a registry that does not answer is retried in place, only a record that
     can never decode is dead-lettered;
  3. write them with one sObject Collections create per external-id field (200 records,
     one API call), retrying retriable records with backoff, unrolling a rejected batch,
     dead-lettering only records that are permanently wrong;
  4. wait until the broker acknowledged every audit and dead-letter record, producing again
     the ones it refused;
  5. commit the consumed offsets of the partitions this member still owns.
A crash anywhere before 5 replays the batch; the Unique external id makes the replay
harmless: a Task that exists answers DUPLICATE_VALUE and is audited SKIPPED, never written
again (a logged message is a fact; what a user edited in Salesforce since stays).

Whatever waits (backoff, the API budget, acknowledgements) waits with the partitions paused
while the consumer keeps polling, so the member stays in its group. Before each Salesforce
call (bounded by ``salesforce.timeout_s``), each decode and while it waits for the broker,
the sink polls (partitions paused) if the next step could end more than half of
``max.poll.interval.ms`` after its last poll. Transient failures are retried
in place for at most ``sink.retry_max_s``; then the process stops (``FatalError``) without
committing, never skipping a record. Quota never dead-letters anything and never stops the
sink: it pauses (audit outcome PAUSED) until ``/limits`` shows room again (RESUMED).
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import structlog
from confluent_kafka import Consumer
from prometheus_client import Counter
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from frontforce.config import Settings
from frontforce.errors import BackPressure, FatalError, InvalidRecordError, RetriableError
from frontforce.kafka import consumer_config
from frontforce.logs import coords
from frontforce.salesforce import SalesforceConnection, connect
from frontforce.serialization import Serde
from sinks._producer import AckedProducer
from sinks.salesforce._budget import Budget
from sinks.salesforce._commands import (
    FEED_BODY_MAX,
    NotExecutable,
    Write,
    duplicate_match_id,
    keep_blank_only,
    merged,
    soql_literal,
    write_for,
)
from sinks.salesforce._errors import (
    BatchRejected,
    QuotaExceeded,
    SessionExpired,
    classify_call_error,
    classify_item_error,
    duplicate_record_id,
    duplicates_detected,
    external_id_duplicate,
    unknown_field_item_error,
)
from sinks.salesforce._ledger import APPLIED, INTENT, Ledger
from sinks.salesforce._mapping import mapping_problems, objects_to_describe
from sinks.salesforce._member import GroupMember, Received
from sinks.salesforce._retry import RetryPolicy
from sinks.salesforce._task import task_record

log = structlog.get_logger("sinks.salesforce")
MAPPING_PROBLEMS = Counter("frontforce_mapping_problems",
                           "Mapping problems found by a describe re-check after the sink started")

# Share of max.poll.interval.ms the sink may spend between two polls: the other half is
# headroom for a call that ends right at its timeout and for a slow broker.
GAP_SHARE = 0.5
# How long one idle step polls before the sink looks at its stop flag again.
_IDLE_STEP_S = 0.5


# Id prefixes of the sObjects a duplicate rule may match.
_KEY_PREFIX = {"Lead": "00Q", "Contact": "003", "Account": "001"}

# Records per sObject Collections call (Salesforce's limit).
COLLECTION_SIZE = 200


def _chunks(groups: OrderedDict[str, list[_Item]]) -> list[OrderedDict[str, list[_Item]]]:
    keys = list(groups)
    return [OrderedDict((k, groups[k]) for k in keys[n:n + COLLECTION_SIZE])
            for n in range(0, len(keys), COLLECTION_SIZE)]


class _Stopping(Exception):
    """The stop flag was set while a batch was in flight: leave it uncommitted."""


class _Item:
    __slots__ = ("rec", "command", "op_name", "op", "attempts", "done", "last_error", "write",
                 "read_calls", "record_id", "calls")

    def __init__(self, rec: Received, command: dict[str, Any]) -> None:
        self.rec = rec
        self.command = command
        # Commands are read with return_record_name: (full record name, fields).
        name, fields = command["operation"]
        self.op_name: str = name.rsplit(".", 1)[-1]
        self.op: dict[str, Any] = fields
        self.attempts = 0
        self.done = False  # audited (applied or dead-lettered): nothing left to do
        self.last_error: str | None = None
        self.write: Write | None = None  # set for every command but UpsertTask
        self.read_calls = 0.0  # its share of the reads made for it (only_if_blank)
        self.record_id: str | None = None  # a CloseCase's Case, once closed (then its note)
        self.calls = 0.0  # its share of the writes made before its last step

    @property
    def ledger_key(self) -> str:
        key = str(self.command["idempotency_key"] or self.command["command_id"])
        return f"{key}:note" if self.op_name == "CloseCase" else key



class SalesforceSink:
    def __init__(self, settings: Settings,
                 connector: Callable[[], SalesforceConnection] | None = None) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.serde = Serde(settings)
        self._connector = connector or (lambda: connect(settings.salesforce))
        self._conn: SalesforceConnection | None = None
        sink = settings.sink
        self.timeout_s = settings.salesforce.timeout_s
        self.external_id_field = settings.salesforce.task_external_id_field
        consumer = Consumer(consumer_config(settings, sink.group_id,
                                            **{"max.poll.interval.ms": sink.max_poll_interval_ms}))
        self.member = GroupMember(consumer, self.topics.commands_salesforce,
                                  gap_budget_s=sink.max_poll_interval_ms / 1000 * GAP_SHARE)
        self.stop_event = threading.Event()
        self.budget = Budget(sink.salesforce_quota_share)
        self.retry = RetryPolicy(sink.retry_max_s, self._idle)
        self.out = AckedProducer(settings, self.serde, self.member, self.retry)
        self._pause: tuple[str, Received, float] | None = None  # (pause id, where, since)
        self._mapping_checked = time.monotonic()
        self._mapping_known: set[str] = set()
        self.ledger = Ledger()
        # Records a duplicate rule matched, by the external id a command gave them: a Task
        # naming that external id as its Who/What is pointed at the record instead.
        self._attached: dict[tuple[str, str, str], str] = {}
        self.stats = {"created": 0, "updated": 0, "skipped": 0, "dead_lettered": 0, "api_calls": 0, "pauses": 0}

    # -- waiting without leaving the group -----------------------------------------------
    def _idle(self, seconds: float) -> None:
        """Sleep ``seconds`` while polling the consumer (partitions paused); ``_Stopping``
        when the stop flag is set."""
        end = time.monotonic() + seconds
        while True:
            if self.stop_event.is_set():
                raise _Stopping()
            left = end - time.monotonic()
            if left <= 0:
                return
            self.member.keepalive(min(left, _IDLE_STEP_S))

    # -- start -------------------------------------------------------------------------
    def preflight(self) -> None:
        """Refuse to start on a configuration that would fail every record."""
        if self.timeout_s > self.member.gap_budget_s:
            raise FatalError(
                f"salesforce.timeout_s ({self.timeout_s:g}s) must be at most half of "
                f"sink.max_poll_interval_ms ({self.settings.sink.max_poll_interval_ms} ms): one "
                "Salesforce call must end well before the consumer is evicted from its group")
        problems = self._mapping_problems()
        if problems:
            raise FatalError("the configuration does not fit the Salesforce org (describe):\n  "
                             + "\n  ".join(problems))
        self._mapping_checked, self._mapping_known = time.monotonic(), set(problems)
        self.retry.run(self._refresh_budget, what="reading salesforce /limits")
        loaded = self.retry.run(
            lambda: self.ledger.load(self.settings.kafka.bootstrap_servers,
                                     self.topics.salesforce_ledger, self.serde),
            what="reading the salesforce ledger")
        log.info("ledger read", entries=loaded, topic=self.topics.salesforce_ledger)
        log.info("salesforce checked", external_id_field=self.external_id_field,
                 api_used=self.budget.used, api_total=self.budget.total)

    # -- main loop -------------------------------------------------------------------
    def run(self) -> None:
        wait_s = self.settings.sink.batch_wait_ms / 1000.0
        try:
            self.preflight()
            self.member.subscribe()
            self.member.resume()
            log.info("sink started", topic=self.topics.commands_salesforce)
            while not self.stop_event.is_set():
                batch = self.member.next_batch(self.settings.sink.batch_size, max(wait_s, 0.05))
                if batch:
                    self.process(batch)
                if time.monotonic() - self._mapping_checked >= self.settings.sink.mapping_recheck_s:
                    self._recheck_mapping()
        except _Stopping:
            log.info("sink stopped mid-batch; its uncommitted records are redelivered")
        finally:
            self.out.flush(10)
            self.member.close()

    def process(self, batch: list[Received]) -> None:
        items: list[_Item] = []
        for r in batch:
            if not self.member.owns(r):
                continue
            self.member.checkpoint()
            try:
                command = self._decode(r)
            except InvalidRecordError as exc:
                self._dead_letter(r, "decode", exc, attempts=1)
                continue
            items.append(_Item(r, command))
        self._write(items)
        self.retry.run(self.out.await_acks, what="waiting for the broker to acknowledge audit and "
                       "dead-letter records")
        self.retry.run(lambda: self.member.commit(batch), what="committing offsets")
        self.member.resume()

    def _decode(self, r: Received) -> dict[str, Any]:
        return self.retry.run(lambda: self.serde.decode(r.topic, r.msg.value()),
                              what=f"decoding {coords(r.topic, r.partition, r.offset)}")

    # -- writing ---------------------------------------------------------------------
    def _write(self, items: list[_Item]) -> None:
        pending = [i for i in items if self._validate(i)]
        while True:
            pending = [i for i in pending if not i.done and self.member.owns(i.rec)]
            if not pending:
                return
            try:
                self.retry.run(lambda todo=pending: self._attempt(todo),  # type: ignore[misc]
                               what=f"writing {len(pending)} command(s) to salesforce",
                               max_attempts=self.settings.sink.max_attempts)
            except BackPressure as exc:
                self._wait_out(exc, pending)

    def _attempt(self, items: list[_Item]) -> None:
        """One attempt at every item not yet done; ``RetriableError`` while some remain.

        In this order, so a Task can name, by external id, a Lead created in the same batch,
        and a CloseCase's note goes on a Case that is closed: Leads and record updates, then
        Tasks, then FeedItems."""
        def live() -> list[_Item]:
            return [i for i in items if not i.done and self.member.owns(i.rec)]

        self._resolve([i for i in live() if i.write is not None and i.write.kind != "feed"])
        self._read_blanks(live())
        by_group: OrderedDict[tuple[str, str, str | None], OrderedDict[str, list[_Item]]] = OrderedDict()
        for it in live():
            if it.write is not None and it.write.kind != "feed":
                by_group.setdefault(it.write.group, OrderedDict()).setdefault(
                    it.write.key, []).append(it)
        for group, records in by_group.items():
            for chunk in _chunks(records):
                if group[0] == "create":
                    self._create_once(group[1], group[2] or "", chunk)
                else:
                    self._write_records(group, chunk)
        by_field: OrderedDict[str, OrderedDict[str, list[_Item]]] = OrderedDict()
        for it in live():
            if it.write is None:
                by_field.setdefault(it.op["external_id_field"], OrderedDict()).setdefault(
                    it.op["external_id"], []).append(it)
        for field, groups in by_field.items():
            for chunk in _chunks(groups):
                self._create_once("Task", field, chunk)
        feed = [i for i in live() if i.write is not None and i.write.kind == "feed"]
        if feed:
            self._post_feed(feed)
        left = live()
        if left:
            raise RetriableError(f"{len(left)} record(s) not written yet: {left[0].last_error}")

    def _validate(self, item: _Item) -> bool:
        if item.op_name != "UpsertTask":
            try:
                item.write = write_for(item.op_name, item.op)
            except NotExecutable as exc:
                # Keep it, with the reason, rather than pretend it was applied.
                self._fail(item, str(exc), 0.0)
                return False
            return True
        if not item.op.get("external_id"):
            self._fail(item, "UpsertTask without an external id", 0.0)
            return False
        return True

    def _call(self, fn: Callable[[Salesforce], Any], gate: bool = True,
              external_id_field: str | None = None) -> Any:
        """One Salesforce call, no retry (the caller's policy retries). With ``gate``, none
        is made while the API budget is closed (``QuotaExceeded``)."""
        if gate:
            closed = self.budget.closed()
            if closed is not None:
                raise QuotaExceeded(closed, self.settings.sink.budget_recheck_s)
            if self._pause is not None:
                self._resumed()
        self.member.checkpoint(self.timeout_s)
        if self._conn is None:
            self._conn = self._connector()  # login: its own timeout; RetriableError or FatalError
            self.member.checkpoint(self.timeout_s)
        client = self._conn.client
        self.stats["api_calls"] += 1
        try:
            result = fn(client)
        except Exception as exc:  # noqa: BLE001 - classified right below
            mapped = classify_call_error(exc, external_id_field)
            if isinstance(mapped, SessionExpired):
                self._conn = None
            if isinstance(mapped, QuotaExceeded):
                self.budget.refuse(str(mapped))
            raise mapped from exc
        self.budget.observe_header(client.api_usage)
        return result

    def _create_once(self, sobject: str, field: str, groups: OrderedDict[str, list[_Item]]) -> None:
        """Create one sObject's records, keyed by one Unique external id field, in one sObject
        Collections create call; mark what is done. A record whose external id exists (a
        re-delivery, a replay, a second writer, a retry after a call that committed but timed
        out) answers DUPLICATE_VALUE on the external id and is audited SKIPPED with that
        record's Id, never written again: a logged message is a fact, and a Lead made for an
        unknown sender keeps what a user edited on it since. For Task this relies on the field
        being Unique, which ``preflight`` checks; for Lead on ``Front_Handle__c`` being Unique
        (README: the fields a user must create). A Lead that a duplicate rule refuses is
        attached to the record the rule names (``_attach_to_duplicate``)."""
        groups = OrderedDict((k, live) for k, its in groups.items()
                             if (live := [i for i in its if not i.done and self.member.owns(i.rec)]))
        if not groups:
            return
        # Same external id twice in one batch: create it once (the first command: the fact
        # as first logged), report the outcome to every command that asked for it.
        keys = list(groups)
        records = [self._create_record(groups[k][0]) for k in keys]
        body = {"allOrNone": False, "records": records}
        try:
            results = self._call(
                lambda c: c.restful("composite/sobjects", method="POST", json=body,
                                    timeout=self.timeout_s),
                external_id_field=field)
        except BatchRejected as exc:
            if len(keys) == 1:
                for it in groups[keys[0]]:
                    it.attempts += 1
                    self._fail(it, str(exc), 1.0)
                return
            # Unroll: find the bad record(s) one by one; the rest go through.
            log.warning("batch rejected, unrolling", size=len(keys), error=str(exc))
            for k in keys:
                self._create_once(sobject, field, OrderedDict([(k, groups[k])]))
            return
        if not isinstance(results, list) or len(results) != len(keys):
            raise RetriableError(f"salesforce answered {len(keys)} records with {str(results)[:200]}")
        for res in results:
            if unknown_field_item_error(res.get("errors") or [], field):
                # Configuration, not data: every record would fail alike. Stop, name it.
                raise FatalError(f"salesforce refused the {sobject} external id field {field!r}: "
                                 f"{classify_item_error(res['errors'])[1]}; it must be a field of "
                                 f"{sobject} marked External ID and Unique")
        share = 1.0 / len(keys)
        for k, res in zip(keys, results, strict=True):
            errors = res.get("errors") or []
            if not res.get("success") and duplicates_detected(errors):
                self._attach_to_duplicate(groups[k][0].write or Write(
                    "create", sobject, field, k, {}), groups[k], share)
                continue
            if res.get("success") or external_id_duplicate(errors, field):
                # The record with this external id exists now: Tasks naming it land on it,
                # not on what a duplicate rule matched before.
                self._attached.pop((sobject, field, k), None)
            for n, it in enumerate(groups[k]):
                it.attempts += 1
                if res.get("success"):
                    outcome = "CREATED" if n == 0 else "SKIPPED"
                    self.stats[outcome.lower()] += 1
                    self._audit(it, outcome, res.get("id"), None, share)
                    it.done = True
                elif external_id_duplicate(errors, field):
                    # The record exists: made before (or by another writer just now).
                    existing = duplicate_record_id(errors)
                    log.info("already created; not written again", sobject=sobject,
                             external_id=k, record_id=existing,
                             at=coords(it.rec.topic, it.rec.partition, it.rec.offset))
                    self.stats["skipped"] += 1
                    self._audit(it, "SKIPPED", existing, None, share)
                    it.done = True
                else:
                    retriable, reason = classify_item_error(errors)
                    if retriable:
                        it.last_error = reason
                    else:
                        self._fail(it, reason, share)

    def _create_record(self, item: _Item) -> dict[str, Any]:
        if item.write is not None:
            return item.write.record()
        rec = task_record(item.op)
        # A parent a duplicate rule attached to an existing record: point at that record.
        for rel, id_field in (("Who", "WhoId"), ("What", "WhatId")):
            ref = rec.get(rel)
            if isinstance(ref, dict):
                attached = self._attached.get((ref["attributes"]["type"],
                                               *[(f, str(v)) for f, v in ref.items()
                                                 if f != "attributes"][0]))
                if attached is not None:
                    del rec[rel]
                    rec[id_field] = attached
        return rec

    def _resolve(self, items: list[_Item]) -> None:
        """CloseCase by conversation: find the Cases by their external id, one SOQL query
        for the batch, and turn each into an update by Id. A conversation with no Case is
        audited SKIPPED with the reason (never a new Case)."""
        its = [i for i in items if i.write is not None and i.write.kind == "resolve"]
        if not its:
            return
        writes = [i.write for i in its if i.write is not None]
        field, sobject = writes[0].key_field, writes[0].sobject
        values = sorted({w.key for w in writes})
        soql = (f"SELECT Id, {field} FROM {sobject} WHERE {field} IN "
                f"({', '.join(soql_literal(v) for v in values)})")
        res = self._call(lambda c: c.restful("query", params={"q": soql}, timeout=self.timeout_s))
        found = {str(r.get(field)).lower(): r["Id"] for r in (res or {}).get("records") or []}
        for it in its:
            assert it.write is not None
            it.read_calls += 1.0 / len(its)
            rid = found.get(it.write.key.lower())
            if rid is None:
                # Most conversations have no Case: nothing to close is an outcome, not a
                # record that can never be written. Audited SKIPPED with the reason.
                it.attempts += 1
                self.stats["skipped"] += 1
                self._audit(it, "SKIPPED", None, f"no {sobject} with {field} = {it.write.key!r}",
                            0.0)
                it.done = True
                continue
            it.write = Write("update", sobject, None, rid, it.write.fields)

    def _read_blanks(self, items: list[_Item]) -> None:
        """For updates with ``only_if_blank`` fields: read those fields (one sObject
        Collections retrieve per sObject) and drop the ones Salesforce already has a value
        for. A command left with nothing to write is audited SKIPPED. A user may fill a
        field between the read and the write: the write then overwrites it (a window of one
        batch, not closed)."""
        by_type: dict[str, list[_Item]] = {}
        for it in items:
            if it.write is not None and it.write.only_if_blank:
                by_type.setdefault(it.write.sobject, []).append(it)
        for sobject, its in by_type.items():
            self._read_blanks_of(sobject, its)

    def _read_blanks_of(self, sobject: str, items: list[_Item]) -> None:
        writes = [i.write for i in items if i.write is not None]
        ids = list(dict.fromkeys(w.key for w in writes))
        fields = sorted({f for w in writes for f in w.only_if_blank})
        body = {"ids": ids, "fields": fields}
        try:
            rows = self._call(lambda c: c.restful(f"composite/sobjects/{sobject}", method="POST",
                                                  json=body, timeout=self.timeout_s))
        except (BatchRejected, FatalError) as exc:
            if isinstance(exc, FatalError) and not isinstance(exc.__cause__, SalesforceMalformedRequest):
                raise
            # A field or id the commands name is refused: find the command(s) at fault.
            if len(items) > 1:
                for it in items:
                    self._read_blanks_of(sobject, [it])
                return
            items[0].attempts += 1
            self._fail(items[0], f"reading only_if_blank fields: {exc}", 1.0)
            return
        if not isinstance(rows, list) or len(rows) != len(ids):
            raise RetriableError(f"salesforce answered {len(ids)} ids with {str(rows)[:200]}")
        current = dict(zip(ids, rows, strict=True))
        for it in items:
            assert it.write is not None
            it.read_calls += 1.0 / len(items)
            row = current.get(it.write.key)
            # A record that is gone: the update itself says so (and is dead-lettered).
            it.write = keep_blank_only(it.write, row if isinstance(row, dict) else {})
            if not it.write.fields:
                self.stats["skipped"] += 1
                self._audit(it, "SKIPPED", it.write.key, None, 0.0)
                it.done = True

    def _write_records(self, group: tuple[str, str, str | None],
                       groups: OrderedDict[str, list[_Item]]) -> None:
        """One sObject Collections update (by Id) or upsert (by external id) of one sObject's
        records; mark what is done. Several commands for one record in the batch are merged
        into one record (later fields win) and each is audited."""
        kind, sobject, key_field = group
        groups = OrderedDict((k, live) for k, its in groups.items()
                             if (live := [i for i in its if not i.done and self.member.owns(i.rec)]))
        if not groups:
            return
        writes = {k: merged([i.write for i in its if i.write is not None]) for k, its in groups.items()}
        # One sObject after the other: Salesforce processes a mixed call in runs of one type
        # (at most 10 runs a call).
        keys = sorted(groups, key=lambda k: writes[k].sobject)
        body = {"allOrNone": False, "records": [writes[k].record() for k in keys]}
        path = "composite/sobjects" if kind == "update" else f"composite/sobjects/{sobject}/{key_field}"
        try:
            results = self._call(lambda c: c.restful(path, method="PATCH", json=body,
                                                     timeout=self.timeout_s))
        except BatchRejected as exc:
            if len(keys) == 1:
                for it in groups[keys[0]]:
                    it.attempts += 1
                    self._fail(it, str(exc), 1.0)
                return
            log.warning("batch rejected, unrolling", size=len(keys), error=str(exc))
            for k in keys:
                self._write_records(group, OrderedDict([(k, groups[k])]))
            return
        if not isinstance(results, list) or len(results) != len(keys):
            raise RetriableError(f"salesforce answered {len(keys)} records with {str(results)[:200]}")
        share = 1.0 / len(keys)
        for k, res in zip(keys, results, strict=True):
            errors = res.get("errors") or []
            if not res.get("success") and kind == "upsert" and duplicates_detected(errors):
                self._attach_to_duplicate(writes[k], groups[k], share)
                continue
            if not res.get("success") and len(groups[k]) > 1 and not classify_item_error(errors)[0]:
                # Merged commands refused together: one of them may be wrong. Write each alone,
                # in order, so the others are applied and only the wrong one dead-lettered.
                for it in groups[k]:
                    self._write_records(group, OrderedDict([(k, [it])]))
                continue
            for n, it in enumerate(groups[k]):
                it.attempts += 1
                if res.get("success") and it.op_name == "CloseCase" and (
                        it.op.get("resolution_note") or "").strip():
                    # Closed; its resolution note goes on the Case next (the feed step of
                    # this attempt), and the command is audited once both are done.
                    it.record_id = res.get("id") or writes[k].key
                    it.calls += share
                    it.write = Write("feed", "FeedItem", None, it.record_id,
                                     {"Body": it.op["resolution_note"].strip()[:FEED_BODY_MAX]})
                    continue
                if res.get("success"):
                    created = kind == "upsert" and bool(res.get("created")) and n == 0
                    outcome = "CREATED" if created else "UPDATED"
                    self.stats[outcome.lower()] += 1
                    self._audit(it, outcome, res.get("id"), None, share)
                    it.done = True
                else:
                    retriable, reason = classify_item_error(errors)
                    if retriable:
                        it.last_error = reason
                    else:
                        self._fail(it, reason, share)

    def _attach_to_duplicate(self, write: Write, items: list[_Item], share: float) -> None:
        """A duplicate rule refused the record (``DUPLICATES_DETECTED``): someone already
        has a Lead or Contact with this email, made outside frontforce. Collections results
        do not say which record matched; the same write as a single-record call answers with
        ``duplicateResut`` (Salesforce's spelling), one extra API call, only on a duplicate.
        The command is attached to the record it names: audited SKIPPED with that Id, nothing
        created, nothing dead-lettered. When the match is of the same sObject, the sink also
        writes the command's external id on it (a field frontforce owns, blank there: no
        record holds that value, or the create would have answered DUPLICATE_VALUE), so the
        next Task naming that external id lands on it; any match is remembered for this
        process's Tasks too. The rule may also have stopped matching since: the call then
        creates the record."""
        assert write.key_field is not None
        one = 1.0 / len(items)
        record = {k: v for k, v in write.record().items() if k != "attributes"}
        if write.kind == "create":
            path, method = f"sobjects/{write.sobject}", "POST"
        else:
            path, method = f"sobjects/{write.sobject}/{write.key_field}/{quote(write.key, safe='@+')}", "PATCH"
            record = dict(write.fields)
        try:
            res = self._call(lambda c: c.restful(path, method=method, json=record,
                                                 timeout=self.timeout_s))
        except BatchRejected as exc:
            content = getattr(exc.__cause__, "content", None)
            matched = duplicate_match_id(content)
            calls = share + one
            if matched is not None and matched.startswith(_KEY_PREFIX.get(write.sobject, "\0")):
                stamp = f"sobjects/{write.sobject}/{matched}"
                try:
                    self._call(lambda c: c.restful(stamp, method="PATCH",
                                                   json={write.key_field: write.key},
                                                   timeout=self.timeout_s))
                    calls += one
                except BatchRejected as err:
                    log.warning("could not write the external id on the matched record",
                                record_id=matched, error=str(err))
            for it in items:
                it.attempts += 1
                if matched is None:
                    self._fail(it, str(exc), calls)
                    continue
                log.info("duplicate rule matched; attached to the existing record",
                         sobject=write.sobject, external_id=write.key, record_id=matched)
                self._attached[(write.sobject, write.key_field, write.key)] = matched
                self.stats["skipped"] += 1
                self._audit(it, "SKIPPED", matched, None, calls)
                it.done = True
            return
        created = write.kind == "create" or (isinstance(res, dict) and bool(res.get("created")))
        for n, it in enumerate(items):
            it.attempts += 1
            outcome = "CREATED" if created and n == 0 else ("SKIPPED" if write.kind == "create" else "UPDATED")
            self.stats[outcome.lower()] += 1
            self._audit(it, outcome, res.get("id") if isinstance(res, dict) else None, None,
                        share + one)
            it.done = True

    # -- FeedItems, once, through the ledger --------------------------------------------
    def _post_feed(self, items: list[_Item]) -> None:
        """Post FeedItems (``PostFeedItem``, a closed Case's note) once each; see
        ``_ledger.py`` for the protocol and its window."""
        fresh: list[_Item] = []
        unsure: list[_Item] = []
        for it in items:
            entry = self.ledger.get(it.ledger_key)
            if entry is not None and entry.state == APPLIED:
                self.stats["skipped"] += 1
                self._finish_feed(it, "SKIPPED", entry.result_id, 0.0)
            elif entry is not None and it.ledger_key not in self.ledger.known_absent:
                unsure.append(it)
            else:
                fresh.append(it)
        if unsure:
            fresh += self._recover_feed(unsure)
        # The same key twice in one batch (a re-delivery next to its original): post it
        # once; the others follow its outcome below.
        firsts: dict[str, _Item] = {}
        later: list[_Item] = []
        for it in fresh:
            if it.ledger_key in firsts:
                later.append(it)
            else:
                firsts[it.ledger_key] = it
        fresh = list(firsts.values())
        self._post_fresh_feed(fresh)
        for it in later:
            entry = self.ledger.get(it.ledger_key)
            if entry is not None and entry.state == APPLIED:
                self.stats["skipped"] += 1
                self._finish_feed(it, "SKIPPED", entry.result_id, 0.0)
            # else: its twin failed; it is tried again with the rest of the batch

    def _post_fresh_feed(self, fresh: list[_Item]) -> None:
        if not fresh:
            return
        for it in fresh:
            self._produce_ledger(it, INTENT, None)
        self.retry.run(self.out.await_acks, what="waiting for the broker to acknowledge ledger intents")
        for chunk in [fresh[n:n + COLLECTION_SIZE] for n in range(0, len(fresh), COLLECTION_SIZE)]:
            for it in chunk:
                self.ledger.known_absent.discard(it.ledger_key)  # outcome unknown until answered
            body = {"allOrNone": False, "records": [it.write.record() for it in chunk if it.write]}
            try:
                results = self._call(lambda c, b=body: c.restful(  # type: ignore[misc]
                    "composite/sobjects", method="POST", json=b, timeout=self.timeout_s))
            except BatchRejected as exc:
                for it in chunk:
                    self.ledger.known_absent.add(it.ledger_key)
                if len(chunk) == 1:
                    chunk[0].attempts += 1
                    self._fail(chunk[0], str(exc), 1.0)
                else:
                    for it in chunk:
                        self._post_feed([it])
                continue
            if not isinstance(results, list) or len(results) != len(chunk):
                raise RetriableError(f"salesforce answered {len(chunk)} FeedItems with {str(results)[:200]}")
            share = 1.0 / len(chunk)
            for it, res in zip(chunk, results, strict=True):
                it.attempts += 1
                if res.get("success"):
                    self._produce_ledger(it, APPLIED, res.get("id"))
                    self.stats["created"] += 1
                    self._finish_feed(it, "CREATED", res.get("id"), share)
                    continue
                self.ledger.known_absent.add(it.ledger_key)
                retriable, reason = classify_item_error(res.get("errors") or [])
                if retriable:
                    it.last_error = reason
                else:
                    self._fail(it, reason, share)

    def _recover_feed(self, items: list[_Item]) -> list[_Item]:
        """Keys left at INTENT by a crash (or a call whose answer was lost): find the
        FeedItem the call may have made, and return the items that still need posting."""
        entries = {it.ledger_key: self.ledger.get(it.ledger_key) for it in items}
        since_ms = min(e.at_ms for e in entries.values() if e is not None) - 60_000
        since = datetime.fromtimestamp(since_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        parents = sorted({it.write.key for it in items if it.write is not None})
        soql = (f"SELECT Id, ParentId, Body, CreatedDate FROM FeedItem WHERE ParentId IN "
                f"({', '.join(soql_literal(p) for p in parents)}) AND CreatedDate >= {since} "
                "ORDER BY CreatedDate, Id")
        res = self._call(lambda c: c.restful("query", params={"q": soql}, timeout=self.timeout_s))
        rows = list((res or {}).get("records") or [])
        claimed = self.ledger.claimed()
        left: list[_Item] = []
        for it in items:
            assert it.write is not None
            it.read_calls += 1.0 / len(items)
            found = next((r for r in rows if r.get("Id") not in claimed
                          and str(r.get("ParentId", ""))[:15] == it.write.key[:15]
                          and r.get("Body") == it.write.fields.get("Body")), None)
            if found is None:
                log.info("feed item in the crash window was not posted; posting it",
                         key=it.ledger_key)
                left.append(it)
                continue
            claimed.add(found["Id"])
            log.info("feed item in the crash window was posted; not posting again",
                     key=it.ledger_key, record_id=found["Id"])
            self._produce_ledger(it, APPLIED, found["Id"])
            self.stats["skipped"] += 1
            self._finish_feed(it, "SKIPPED", found["Id"], 0.0)
        return left

    def _finish_feed(self, it: _Item, outcome: str, feed_id: str | None, share: float) -> None:
        if it.op_name == "CloseCase":
            # The command's outcome is the Case's: closed (its note posted or found posted).
            self._audit(it, "UPDATED", it.record_id, None, share + it.calls)
        else:
            self._audit(it, outcome, feed_id, None, share)
        it.done = True

    def _produce_ledger(self, it: _Item, state: str, result_id: str | None) -> None:
        assert it.write is not None
        rec = Ledger.record(it.ledger_key, it.command["command_id"], it.op_name, state,
                            it.write.key, result_id)
        self.ledger.observe(rec)
        self.out.produce(self.topics.salesforce_ledger, it.ledger_key.encode(), rec)

    def _fail(self, item: _Item, reason: str, share: float) -> None:
        self._dead_letter(item.rec, "sink.salesforce", InvalidRecordError(reason),
                          max(1, item.attempts))
        self._audit(item, "DEAD_LETTERED", None, reason, share)
        self.stats["dead_lettered"] += 1
        item.done = True

    # -- API budget --------------------------------------------------------------------
    def _refresh_budget(self) -> None:
        """Read usage from ``/limits``. An org that does not let the integration user read
        it (View Setup and Configuration) leaves the budget open: the next write's header
        tells."""
        try:
            limits = self._call(lambda c: c.restful("limits/", timeout=self.timeout_s), gate=False)
            self.budget.observe_limits(limits)
        except QuotaExceeded:
            return
        except FatalError as exc:
            if not isinstance(exc.__cause__, SalesforceRefusedRequest | SalesforceResourceNotFound):
                raise
            log.warning("cannot read salesforce /limits; the next call's header tells the usage",
                        error=str(exc))
            self.budget.refused = self.budget.used = None
        except ValueError as exc:
            log.warning("unexpected /limits answer", error=str(exc))
            self.budget.refused = self.budget.used = None

    def _wait_out(self, exc: BackPressure, pending: list[_Item]) -> None:
        """Stand back, partitions paused, still polling: for the daily allocation until
        ``/limits`` shows room under our share again; for the org's concurrency limit for the
        wait it carries. Nothing is dead-lettered and nothing is committed meanwhile."""
        if self._pause is None:
            self._paused(str(exc), pending[0].rec)
        if not isinstance(exc, QuotaExceeded):
            self._idle(exc.wait_seconds)
            return
        while any(not i.done and self.member.owns(i.rec) for i in pending):
            self._idle(self.settings.sink.budget_recheck_s)
            try:
                self._refresh_budget()
            except RetriableError as err:
                log.warning("cannot read salesforce /limits yet", error=str(err))
                continue
            reason = self.budget.closed()
            if reason is None:
                return
            log.info("sink still paused", reason=reason)

    def _paused(self, reason: str, at: Received) -> None:
        pause_id = f"pause-{uuid.uuid4().hex[:12]}"
        self._pause = (pause_id, at, time.monotonic())
        self.stats["pauses"] += 1
        log.warning("sink paused: salesforce refuses or budget spent", reason=reason, pause_id=pause_id,
                    at=coords(at.topic, at.partition, at.offset),
                    recheck_s=self.settings.sink.budget_recheck_s)
        self._audit_pause("PAUSED", reason)

    def _resumed(self) -> None:
        assert self._pause is not None
        pause_id, _, since = self._pause
        log.info("sink resumed", pause_id=pause_id,
                 paused_s=round(time.monotonic() - since, 1), api_used=self.budget.used,
                 api_total=self.budget.total)
        self._audit_pause("RESUMED", None)
        self._pause = None

    def _mapping_problems(self) -> list[str]:
        describes: dict[str, dict[str, Any]] = {}
        for sobject in objects_to_describe(self.settings):
            try:
                describes[sobject] = self.retry.run(
                    lambda o=sobject: self._call(  # type: ignore[misc]
                        lambda c: c.restful(f"sobjects/{o}/describe", timeout=self.timeout_s), gate=False),
                    what=f"reading {sobject}'s describe")
            except InvalidRecordError as exc:  # 404: the object is not visible
                log.warning("describe refused", sobject=sobject, error=str(exc))
        return mapping_problems(self.settings, describes)

    def _recheck_mapping(self) -> None:
        """A describe change after the start (a mapped field deleted, a stage deactivated):
        an alert — logged, counted, audited once per new problem — not a stop: commands that
        do not touch it go on; those that do are dead-lettered with Salesforce's reason."""
        self._mapping_checked = time.monotonic()
        try:
            problems = set(self._mapping_problems())
        except (RetriableError, BackPressure) as exc:
            log.warning("mapping re-check postponed", error=str(exc))
            return
        for problem in sorted(problems - self._mapping_known):
            log.error("mapping problem: the configuration no longer fits Salesforce", problem=problem)
            MAPPING_PROBLEMS.inc()
            alert = f"mapping-{uuid.uuid4().hex[:12]}"
            self.out.produce(self.topics.audit, alert.encode(), {
                "command_id": alert, "correlation_id": alert, "target": "salesforce",
                "operation": "MappingCheck", "outcome": "ALERT", "record_id": None,
                "api_calls": {}, "error": problem, "source_topic": "",
                "source_partition": -1, "source_offset": -1, "at": int(time.time() * 1000)})
        if problems != self._mapping_known:
            self.retry.run(self.out.await_acks, what="storing the mapping alert")
        self._mapping_known = problems

    def _audit_pause(self, outcome: str, reason: str | None) -> None:
        assert self._pause is not None
        pause_id, at, _ = self._pause
        self.out.produce(self.topics.audit, pause_id.encode(), {
            "command_id": pause_id,
            "correlation_id": pause_id,
            "target": "salesforce",
            "operation": "SinkPause",
            "outcome": outcome,
            "record_id": None,
            "api_calls": {},
            "error": reason,
            "source_topic": at.topic,
            "source_partition": at.partition,
            "source_offset": at.offset,
            "at": int(time.time() * 1000),
        })

    # -- audit, dead letters, acknowledgements -----------------------------------------
    def _audit(self, item: _Item, outcome: str, record_id: str | None, error: str | None,
               api_share: float) -> None:
        cmd = item.command
        r = item.rec
        self.out.produce(self.topics.audit, cmd["command_id"].encode(), {
            "command_id": cmd["command_id"],
            "correlation_id": cmd["origin"]["correlation_id"],
            "target": "salesforce",
            "operation": item.op_name,
            "outcome": outcome,
            "record_id": record_id,
            "api_calls": ({"salesforce.rest": api_share + item.read_calls}
                          if api_share + item.read_calls else {}),
            "error": error,
            "source_topic": r.topic,
            "source_partition": r.partition,
            "source_offset": r.offset,
            "at": int(time.time() * 1000),
        })
        log.info("command applied" if error is None else "command failed", outcome=outcome,
                 record_id=record_id, correlation_id=cmd["origin"]["correlation_id"],
                 at=coords(r.topic, r.partition, r.offset), error=error)

    def _dead_letter(self, r: Received, stage: str, exc: BaseException, attempts: int) -> None:
        m = r.msg
        self.out.produce(self.topics.deadletter, m.key(), {
            "original_topic": r.topic,
            "original_partition": r.partition,
            "original_offset": r.offset,
            "original_key": m.key(),
            "original_value": m.value(),
            "stage": stage,
            "error_class": type(exc).__name__,
            "error_message": str(exc)[:4000],
            "attempts": attempts,
            "at": int(time.time() * 1000),
        })


def run_sink(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; ``FatalError`` (the CLI exits 1 with it) when continuing
    would skip records or fail every one of them."""
    sink = SalesforceSink(settings)

    def stop(signum: int, frame: Any) -> None:
        sink.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sink.run()
