"""The Salesforce sink loop.

Before it joins its group the sink checks, with Task's describe, that the configured
external id field is a unique external id (else ``FatalError``), and reads ``/limits`` so it
knows its API budget before the first write.

One commit path, in this order (STYLE habit 2):
  1. take up to ``batch_size`` commands (or what arrived within ``batch_wait_ms`` of the
     last flush's start: a write that took the whole window is followed at once by the
     next flush of what waited meanwhile);
  2. decode them; a registry that does not answer is retried in place, only a record that
     can never decode is dead-lettered;
  3. write them: sObject Collections requests (up to 200 records each: Leads, then Tasks,
     then updates, then FeedItems), several of them sent as the subrequests of one
     /composite call (up to five, one API call: ``_send``); retrying retriable records with
     backoff, unrolling a rejected request, dead-lettering only records that are
     permanently wrong;
  4. emit its audit records (outcome, record, cost of each command), wait until the broker
     acknowledged them and every dead-letter record, producing again the ones it refused;
  5. commit the consumed offsets of the partitions this member still owns.
Steps 4 and 5 of a flush run during the next flush's first Salesforce call (the audits are
produced while that call is in flight, in a thread; the acks awaited and the offsets
committed after the next flush's write) or, when nothing follows, as soon as the consumer
has nothing new. The audits were most of the sink's CPU between two calls (BENCHMARKS.md);
a command's latency is the time until its flush starts, which was the whole previous
flush, audits included. A crash anywhere before 5 replays the batch (and the one after it);
the Unique external id makes the replay harmless: a Task that exists answers
DUPLICATE_VALUE and is audited SKIPPED, never written again (a logged message is a fact;
what a user edited in Salesforce since stays). While creates mostly answer that (a replay),
the records to create are looked up by external id first and only the missing created
(``_look_up``).

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import structlog
from confluent_kafka import Consumer
from prometheus_client import Counter
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from frontforce import metrics
from frontforce.config import Settings
from frontforce.errors import (
    BackPressure,
    FatalError,
    FrontforceError,
    InvalidRecordError,
    RetriableError,
)
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
    subrequest_error,
    unknown_field_item_error,
)
from sinks.salesforce._ledger import APPLIED, INTENT, Ledger
from sinks.salesforce._mapping import mapping_problems, objects_to_describe
from sinks.salesforce._member import GroupMember, Received
from sinks.salesforce._retry import RetryPolicy
from sinks.salesforce._task import parent_refs, task_record

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
# sObject Collections subrequests one /composite call may carry (of its 25 subrequests at
# most 5 may be collections or queries; fact sheet §4.1).
COMPOSITE_COLLECTIONS = 5
# The encoded SOQL of one look-up query at most (``_look_up``): a GET's URI and headers
# must stay under 16,384 bytes (fact sheet §3; about 400 Task external ids).
_LOOKUP_URI_BYTES = 12_000
# Records a flush must ask to create before the sink switches between looking up first and
# creating at once (more than half found existing, or not): a small flush's Lead that exists
# (a known unknown sender) must not cost the next flush a query.
_LOOKUP_MIN = 50


def _chunks(groups: OrderedDict[str, list[_Item]]) -> list[OrderedDict[str, list[_Item]]]:
    keys = list(groups)
    return [OrderedDict((k, groups[k]) for k in keys[n:n + COLLECTION_SIZE])
            for n in range(0, len(keys), COLLECTION_SIZE)]


class _Stopping(Exception):
    """The stop flag was set while a batch was in flight: leave it uncommitted."""


class _Item:
    __slots__ = ("rec", "command", "op_name", "op", "attempts", "done", "last_error", "write",
                 "read_calls", "record_id", "calls", "again", "looked_up", "closed_before")

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
        self.again = False  # to be written in the next round of this attempt
        self.looked_up = False  # its external id was looked up in this process (``_look_up``)
        self.closed_before = False  # a CloseCase whose status the ledger shows applied

    @property
    def key(self) -> str:
        return str(self.command["idempotency_key"] or self.command["command_id"])

    @property
    def ledger_key(self) -> str:
        """The key of what the ledger keeps for this command: an UpdateRecord's write, a
        FeedItem; a CloseCase's note (its status: ``key``)."""
        return f"{self.key}:note" if self.op_name == "CloseCase" else self.key


@dataclass(frozen=True)
class _Outcome:
    """A command's audit record, to be emitted (``SalesforceSink._emit``)."""

    item: _Item
    outcome: str
    record_id: str | None
    error: str | None
    api_share: float


@dataclass(frozen=True)
class _Op:
    """One sObject Collections request of a flush, and what to do with its answer. A flush
    sends its requests alone or as the subrequests of /composite calls; either way each
    answer reaches the same handlers."""

    method: str
    path: str  # under services/data/vXX.X/
    body: dict[str, Any]
    size: int  # records it carries
    # The per-record results, and the API-call share of one record.
    answered: Callable[[Any, float], None]
    # The whole request refused as malformed (BatchRejected), and that share.
    rejected: Callable[[BatchRejected, float], None]
    external_id_field: str | None = None  # named when the call is refused for that field


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
        metrics.watch_salesforce_budget(self.budget)
        self.retry = RetryPolicy(sink.retry_max_s, self._idle)
        self.out = AckedProducer(settings, self.serde, self.member, self.retry)
        self._pause: tuple[str, Received, float] | None = None  # (pause id, where, since)
        self._mapping_checked = time.monotonic()
        self._mapping_known: set[str] = set()
        self.ledger = Ledger()
        # Records a duplicate rule matched, by the external id a command gave them: a Task
        # naming that external id as its Who/What is pointed at the record instead.
        self._attached: dict[tuple[str, str, str], str] = {}
        self._call_s = 0.0  # time spent in Salesforce calls (the flush line's call_ms)
        # Look up before creating (``_look_up``): on while creates mostly answer "exists".
        self._look_first = False
        self._existing = [0, 0]  # this flush: records found existing, of records asked about
        # Steps 4 and 5 of the last flush, done during the next one (module docstring): its
        # audits not yet emitted, and the batch to commit once they are acknowledged.
        self._outcomes: list[_Outcome] = []  # this flush's
        self._unemitted: list[_Outcome] = []  # the last flush's
        self._uncommitted: list[Received] = []  # the last flush's batch
        self._caller = ThreadPoolExecutor(max_workers=1, thread_name_prefix="salesforce-call")
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
            started = 0.0  # when the last flush began
            while not self.stop_event.is_set():
                batch = self._next_batch(wait_s, started)
                if batch:
                    started = time.monotonic()
                    self.process(batch)
                elif self._uncommitted or self._unemitted:
                    self.settle()  # nothing new: the last flush's audits and commit now
                if time.monotonic() - self._mapping_checked >= self.settings.sink.mapping_recheck_s:
                    self._recheck_mapping()
            self.settle()
        except _Stopping:
            log.info("sink stopped mid-batch; its uncommitted records are redelivered")
        finally:
            # Whatever was written is audited, even when the process stops mid-batch.
            try:
                self._emit(self._unemitted + self._outcomes)
            except Exception as exc:  # noqa: BLE001 - stopping anyway; the replay audits them
                log.warning("audit records not emitted on the way out", error=str(exc))
            self._unemitted, self._outcomes = [], []
            self.out.flush(10)
            self._caller.shutdown(wait=False)
            self.member.close()

    def settle(self) -> None:
        """Steps 4 and 5 of the last flush: its audits emitted and acknowledged, its batch
        committed."""
        self._emit_last()
        self.retry.run(self.out.await_acks, what="waiting for the broker to acknowledge audit and "
                       "dead-letter records")
        batch, self._uncommitted = self._uncommitted, []
        self.retry.run(lambda: self.member.commit(batch), what="committing offsets")
        # A wait above (a registry or broker hiccup) polled with the partitions paused.
        self.member.resume()

    def _next_batch(self, wait_s: float, started: float) -> list[Received]:
        """The next flush's commands. The flush window counts from the start of the last
        flush: what arrived while that one was being written has waited already, so when
        the write took the whole window the commands waiting are taken at once (a flush
        every ``batch_wait_ms`` at most, never a window added to each write). With nothing
        waiting, the next command opens a window of its own."""
        size = self.settings.sink.batch_size
        left = wait_s - (time.monotonic() - started)
        if left > 0.0:
            return self.member.next_batch(size, max(left, 0.05))
        batch = self.member.next_batch(size, 0.0)
        return batch or self.member.next_batch(size, max(wait_s, 0.05))

    def process(self, batch: list[Received]) -> None:
        metrics.RECORDS_IN.labels(self.topics.commands_salesforce).inc(len(batch))
        t0 = time.monotonic()
        calls, call_s = self.stats["api_calls"], self._call_s
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
        t1 = time.monotonic()
        self._existing = [0, 0]
        self._write(items)  # its first call emits the last flush's audits meanwhile
        t2 = time.monotonic()
        found, asked = self._existing
        if asked:
            # On after a large flush that mostly exists; off after any that mostly does not.
            mostly = found * 2 > asked
            look = mostly if self._look_first else mostly and asked >= _LOOKUP_MIN
            if look != self._look_first:
                self._look_first = look
                log.info("looking up before creating" if look else "creating at once",
                         existing=found, of=asked)
        self._emit_last()  # when it made no call
        self.retry.run(self.out.await_acks, what="waiting for the broker to acknowledge audit and "
                       "dead-letter records")
        t3 = time.monotonic()
        # The last flush's batch: its audits are acknowledged now. This one's wait for the
        # next flush (or ``settle``).
        last, self._uncommitted = self._uncommitted, batch
        self.retry.run(lambda: self.member.commit(last), what="committing offsets")
        self._unemitted, self._outcomes = self._outcomes, []
        self.member.resume()
        # One line per flush: where its time went (the Salesforce calls within the write).
        log.info("flush done", records=len(batch), api_calls=self.stats["api_calls"] - calls,
                 decode_ms=round((t1 - t0) * 1000), write_ms=round((t2 - t1) * 1000),
                 call_ms=round((self._call_s - call_s) * 1000), acks_ms=round((t3 - t2) * 1000),
                 commit_ms=round((time.monotonic() - t3) * 1000))

    def _decode(self, r: Received) -> dict[str, Any]:
        try:  # the retry policy only when the first try fails (a registry hiccup)
            return self.serde.decode(r.topic, r.msg.value())
        except RetriableError:
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

        A round writes what its items need in one flush (``_plan``, ``_send``): records
        created on an external id (Leads) first, then the Tasks, which may name such a
        record of the same flush by its external id, then record updates, then FeedItems;
        as one /composite call when they are several requests. A second round, in the same
        attempt, writes what the first one made possible: a closed Case's note, a Task whose
        Lead was attached to a duplicate rule's match, a FeedItem's twin."""
        def live() -> list[_Item]:
            return [i for i in items if not i.done and self.member.owns(i.rec)]

        parents = self._parents(items)
        todo = live()
        while todo:
            for it in todo:
                it.again = False
            self._closed_before(todo)
            self._resolve([i for i in todo if not i.done])
            if self._look_first:
                self._look_up([i for i in todo if not i.done and self.member.owns(i.rec)])
            self._read_blanks([i for i in todo if not i.done and self.member.owns(i.rec)])
            self._send(self._plan([i for i in todo if not i.done and self.member.owns(i.rec)],
                                  parents))
            todo = [i for i in live() if i.again]
        left = live()
        if left:
            raise RetriableError(f"{len(left)} record(s) not written yet: {left[0].last_error}")

    @staticmethod
    def _parents(items: list[_Item]) -> dict[tuple[str, str, str], list[_Item]]:
        """The records these commands write on an external id, by (sObject, field, value):
        the parents a Task of the same flush may name."""
        out: dict[tuple[str, str, str], list[_Item]] = {}
        for it in items:
            w = it.write
            if w is not None and w.kind in ("create", "upsert") and w.key_field:
                out.setdefault((w.sobject, w.key_field, w.key), []).append(it)
        return out

    def _plan(self, todo: list[_Item],
              parents: dict[tuple[str, str, str], list[_Item]]) -> list[_Op]:
        """The sObject Collections requests that write ``todo``, in the order they must run.
        A Task whose parent (by external id) is still to be written but not in this round
        waits for it."""
        in_round = {id(i) for i in todo}
        # The parents written in this round: a Task refused while one of them was not
        # written is tried again in the next round (``_created``), at most once.
        written_now = {ref: now for ref, its in parents.items()
                       if (now := [p for p in its if id(p) in in_round])}
        records: OrderedDict[tuple[str, str, str | None], OrderedDict[str, list[_Item]]] = OrderedDict()
        tasks: OrderedDict[str, OrderedDict[str, list[_Item]]] = OrderedDict()
        feed: list[_Item] = []
        twins: dict[str, _Item] = {}
        for it in todo:
            if it.write is None:
                waiting = self._waiting_parent(it, parents, in_round)
                if waiting is not None:
                    it.last_error = f"waiting for its {waiting}"
                    continue
                tasks.setdefault(it.op["external_id_field"], OrderedDict()).setdefault(
                    it.op["external_id"], []).append(it)
            elif it.write.kind == "feed":
                feed.append(it)
            elif it.op_name == "UpdateRecord" and (self._applied_before(it)
                                                   or self._twin_waits(it, twins)):
                continue
            else:
                records.setdefault(it.write.group, OrderedDict()).setdefault(
                    it.write.key, []).append(it)
        keyed = [g for g in records if g[0] in ("create", "upsert")]
        ops: list[_Op | None] = []
        for group in keyed:
            ops += [self._records_op(group, chunk, written_now) for chunk in _chunks(records[group])]
        for field, groups in tasks.items():
            ops += [self._create_op("Task", field, chunk, written_now)
                    for chunk in _chunks(groups)]
        for group in records:
            if group not in keyed:
                ops += [self._write_op(group, chunk) for chunk in _chunks(records[group])]
        fresh = self._feed_ready(feed)
        ops += [self._feed_op(fresh[n:n + COLLECTION_SIZE])
                for n in range(0, len(fresh), COLLECTION_SIZE)]
        return [op for op in ops if op is not None]

    def _waiting_parent(self, item: _Item, parents: dict[tuple[str, str, str], list[_Item]],
                        in_round: set[int]) -> str | None:
        """A parent the Task names by external id that a command of this flush is still to
        write, in a later round or attempt (its write failed and is retried)."""
        for ref in parent_refs(item.op).values():
            if ref not in self._attached and any(
                    not p.done and self.member.owns(p.rec) and id(p) not in in_round
                    for p in parents.get(ref, [])):
                return f"{ref[0]} {ref[2]!r}"
        return None

    def _send(self, ops: list[_Op]) -> None:
        """Send ``ops`` in order: one alone as it is; several as /composite calls of at most
        ``COMPOSITE_COLLECTIONS`` subrequests, each one API call. Each request's answer goes
        to its handlers, whichever way it went."""
        for n in range(0, len(ops), COMPOSITE_COLLECTIONS):
            pack = ops[n:n + COMPOSITE_COLLECTIONS]
            if len(pack) == 1:
                self._send_alone(pack[0])
            else:
                self._send_composite(pack)

    def _send_alone(self, op: _Op) -> None:
        share = 1.0 / op.size
        try:
            results = self._call(lambda c: c.restful(op.path, method=op.method, json=op.body,
                                                     timeout=self.timeout_s),
                                 external_id_field=op.external_id_field)
        except BatchRejected as exc:
            op.rejected(exc, share)
            return
        op.answered(results, share)

    def _send_composite(self, pack: list[_Op]) -> None:
        """One /composite call (fact sheet §4.1) whose subrequests are the collections
        requests of ``pack``: run in order (``collateSubrequests`` false), each committed on
        its own (outer ``allOrNone`` false, so each collection keeps its own
        ``allOrNone: false``: per-record results as when sent alone). Every subrequest
        carries our ``Sforce-Call-Options`` as well as the call: whether Salesforce hands
        the outer one on to subrequests is not documented, and the worker's loop guard tells
        our writes by the ``client=`` it puts in changeOrigin. Each record's share of the
        call is one over the records of the call."""
        share = 1.0 / sum(op.size for op in pack)

        def call(c: Salesforce) -> Any:
            base = urlsplit(c.base_url).path  # /services/data/vXX.X/
            options = c.headers.get("Sforce-Call-Options")
            return c.restful("composite", method="POST", timeout=self.timeout_s, json={
                "allOrNone": False, "collateSubrequests": False,
                "compositeRequest": [
                    {"method": op.method, "url": base + op.path, "referenceId": f"op{n}",
                     "body": op.body,
                     **({"httpHeaders": {"Sforce-Call-Options": options}} if options else {})}
                    for n, op in enumerate(pack)]})

        try:
            answer = self._call(call)
        except BatchRejected as exc:
            # The envelope refused (it should not be): the requests go alone, each with its
            # own handling of a refusal.
            log.warning("composite call rejected; sending its requests one by one",
                        requests=len(pack), error=str(exc))
            for op in pack:
                self._send_alone(op)
            return
        subs = answer.get("compositeResponse") if isinstance(answer, dict) else None
        if not isinstance(subs, list):
            raise RetriableError(f"salesforce answered a composite call with {str(answer)[:200]}")
        by_ref = {s.get("referenceId"): s for s in subs if isinstance(s, dict)}
        failure: FrontforceError | None = None
        for n, op in enumerate(pack):
            # A subrequest's failure is that request's alone: the others' records were
            # written and are handled before it is raised.
            try:
                sub = by_ref.get(f"op{n}")
                if sub is None:
                    raise RetriableError(f"salesforce's composite answer has no op{n}: {str(answer)[:200]}")
                status = int(sub.get("httpStatusCode") or 0)
                if 200 <= status < 300:
                    op.answered(sub.get("body"), share)
                    continue
                error = subrequest_error(status, sub.get("body"), op.path, op.external_id_field)
                if not isinstance(error, BatchRejected):
                    raise error
                op.rejected(error, share)
            except FrontforceError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

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
        metrics.API_CALLS.labels("salesforce").inc()
        started = time.monotonic()
        future = None
        if self._unemitted:
            # The call in a thread while this one emits the last flush's audits.
            future = self._caller.submit(fn, client)
            try:
                self._emit_last()
            except BaseException:
                future.exception()  # the call ends before the error goes on (its flush is redone)
                raise
        try:
            result = future.result() if future is not None else fn(client)
        except Exception as exc:  # noqa: BLE001 - classified right below
            self._call_s += time.monotonic() - started
            mapped = classify_call_error(exc, external_id_field)
            if isinstance(mapped, SessionExpired):
                self._conn = None
            if isinstance(mapped, QuotaExceeded):
                self.budget.refuse(str(mapped))
            raise mapped from exc
        self._call_s += time.monotonic() - started
        self.budget.observe_header(client.api_usage)
        return result

    def _records_op(self, group: tuple[str, str, str | None], groups: OrderedDict[str, list[_Item]],
                    parents: dict[tuple[str, str, str], list[_Item]]) -> _Op | None:
        if group[0] == "create":
            return self._create_op(group[1], group[2] or "", groups, parents)
        return self._write_op(group, groups)

    def _create_op(self, sobject: str, field: str, groups: OrderedDict[str, list[_Item]],
                   parents: dict[tuple[str, str, str], list[_Item]]) -> _Op | None:
        """One sObject's records, keyed by one Unique external id field, as one sObject
        Collections create (``_created`` reads the answer). The same external id twice in
        one batch is created once (the first command: the fact as first logged), and the
        outcome reported to every command that asked for it."""
        groups = OrderedDict((k, live) for k, its in groups.items()
                             if (live := [i for i in its if not i.done and self.member.owns(i.rec)]))
        if not groups:
            return None
        body = {"allOrNone": False, "records": [self._create_record(its[0]) for its in groups.values()]}
        return _Op("POST", "composite/sobjects", body, len(groups),
                   lambda results, share: self._created(sobject, field, groups, results, share, parents),
                   lambda exc, share: self._unroll(groups, exc, share, lambda one: self._create_op(
                       sobject, field, one, parents)),
                   field)

    def _created(self, sobject: str, field: str, groups: OrderedDict[str, list[_Item]],
                 results: Any, share: float,
                 parents: dict[tuple[str, str, str], list[_Item]]) -> None:
        """Mark what a create did. A record whose external id exists (a re-delivery, a
        replay, a second writer, a retry after a call that committed but timed out) answers
        DUPLICATE_VALUE on the external id and is audited SKIPPED with that record's Id,
        never written again: a logged message is a fact, and a Lead made for an unknown
        sender keeps what a user edited on it since. For Task this relies on the field being
        Unique, which ``preflight`` checks; for Lead on ``Front_Handle__c`` being Unique
        (README: the fields a user must create). A Lead that a duplicate rule refuses is
        attached to the record the rule names (``_attach_to_duplicate``). A Task refused
        while the parent it names, written in the same call, was not (attached elsewhere, or
        to be retried) is written again once its parent is settled."""
        keys = list(groups)
        if not isinstance(results, list) or len(results) != len(keys):
            raise RetriableError(f"salesforce answered {len(keys)} records with {str(results)[:200]}")
        for res in results:
            if unknown_field_item_error(res.get("errors") or [], field):
                # Configuration, not data: every record would fail alike. Stop, name it.
                raise FatalError(f"salesforce refused the {sobject} external id field {field!r}: "
                                 f"{classify_item_error(res['errors'])[1]}; it must be a field of "
                                 f"{sobject} marked External ID and Unique")
        already: list[str] = []
        for k, res in zip(keys, results, strict=True):
            errors = res.get("errors") or []
            exists = bool(res.get("success")) or external_id_duplicate(errors, field)
            if not exists and duplicates_detected(errors):
                self._attach_to_duplicate(groups[k][0].write or Write(
                    "create", sobject, field, k, {}), groups[k], share)
                continue
            if exists:
                # The record with this external id exists now: Tasks naming it land on it,
                # not on what a duplicate rule matched before.
                self._attached.pop((sobject, field, k), None)
            elif (parent := self._unsettled_parent(groups[k][0], parents)) is not None:
                for it in groups[k]:
                    it.again = True
                    it.last_error = (f"its {parent} was not written in the same call: "
                                     f"{classify_item_error(errors)[1]}")
                continue
            for n, it in enumerate(groups[k]):
                it.attempts += 1
                if res.get("success"):
                    outcome = "CREATED" if n == 0 else "SKIPPED"
                    self.stats[outcome.lower()] += 1
                    self._audit(it, outcome, res.get("id"), None, share)
                    it.done = True
                elif exists:
                    # The record exists: made before (or by another writer just now). Its
                    # "command applied" line says SKIPPED with the record; one line per call
                    # counts them (a replay skips a whole flush).
                    existing = duplicate_record_id(errors)
                    already.append(k)
                    self.stats["skipped"] += 1
                    self._audit(it, "SKIPPED", existing, None, share)
                    it.done = True
                else:
                    retriable, reason = classify_item_error(errors)
                    if retriable:
                        it.last_error = reason
                    else:
                        self._fail(it, reason, share)
        dups = len(set(already))
        self._existing[0] += dups
        self._existing[1] += dups + sum(1 for r in results if isinstance(r, dict) and r.get("success"))
        if already:
            log.info("already created; not written again", sobject=sobject, field=field,
                     records=len(already), first_external_ids=already[:5])

    def _unsettled_parent(self, item: _Item, parents: dict[tuple[str, str, str], list[_Item]]
                          ) -> str | None:
        """For a Task that names by external id a parent written in the same round
        (``parents``): that parent, when it does not exist under that external id after the
        round's call (a duplicate rule attached its command elsewhere, or its write is to be
        retried)."""
        if item.write is not None:
            return None
        for ref in parent_refs(item.op).values():
            its = parents.get(ref, [])
            if its and (ref in self._attached or any(not p.done for p in its)):
                return f"{ref[0]} {ref[2]!r}"
        return None

    def _unroll(self, groups: OrderedDict[str, list[_Item]], exc: BatchRejected, share: float,
                again: Callable[[OrderedDict[str, list[_Item]]], _Op | None]) -> None:
        """A request refused as a whole (malformed): alone, its record is dead-lettered with
        the reason; with others, each is sent again alone, so only the bad one is."""
        if len(groups) == 1:
            for it in next(iter(groups.values())):
                it.attempts += 1
                self._fail(it, str(exc), share)
            return
        log.warning("batch rejected, unrolling", size=len(groups), error=str(exc))
        for k, its in groups.items():
            op = again(OrderedDict([(k, its)]))
            if op is not None:
                self._send_alone(op)

    def _create_record(self, item: _Item) -> dict[str, Any]:
        if item.write is not None:
            return item.write.record()
        rec = task_record(item.op)
        # A parent a duplicate rule attached to an existing record: point at that record.
        for relationship, ref in parent_refs(item.op).items():
            attached = self._attached.get(ref)
            if attached is not None:
                del rec[relationship]
                rec[f"{relationship}Id"] = attached
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

    def _look_up(self, items: list[_Item]) -> None:
        """Records to create on an external id (Tasks, Leads) looked up first, by that id,
        in SOQL queries of the batch (``IN`` lists of at most ``_LOOKUP_URI_BYTES``, up to
        five as the subrequests of one /composite call: one API call for a flush of 1,000):
        each found is audited SKIPPED with its Id, as a create answered DUPLICATE_VALUE
        would be; the rest are created as usual.

        Only while the last flush of at least ``_LOOKUP_MIN`` creates mostly found their
        record already (``_look_first``): a replay, the re-delivery of a large batch. There
        a create call carries every record's fields to be refused one by one, after
        Salesforce validated each (its error order); a query carries only the ids and reads
        an index. The API calls are the same, one per flush; a new record costs one call
        more, so in normal running the sink creates at once. Salesforce is still asked: a
        Task deleted there since is found missing and written again (a replay recovers it)."""
        # (sObject, field) -> lower-cased external id -> (the id as given, its items)
        groups: dict[tuple[str, str], dict[str, tuple[str, list[_Item]]]] = {}
        for it in items:
            if it.looked_up:
                continue
            it.looked_up = True
            if it.write is None:
                on, key = ("Task", str(it.op["external_id_field"])), str(it.op["external_id"])
            elif it.write.kind == "create" and it.write.key_field:
                on, key = (it.write.sobject, it.write.key_field), it.write.key
            else:
                continue
            groups.setdefault(on, {}).setdefault(key.lower(), (key, []))[1].append(it)
        queries: list[tuple[str, str, str, list[str]]] = []  # (sobject, field, soql, keys)
        for (sobject, field), by_key in groups.items():
            head = f"SELECT Id, {field} FROM {sobject} WHERE {field} IN ("
            size = len(quote(head + ")", safe=""))
            keys: list[str] = []
            literals: list[str] = []
            for k, (given, _) in by_key.items():
                lit = soql_literal(given)
                more = len(quote(lit, safe="")) + (len(quote(", ", safe="")) if keys else 0)
                if keys and size + more > _LOOKUP_URI_BYTES:
                    queries.append((sobject, field, head + ", ".join(literals) + ")", keys))
                    size, keys, literals = len(quote(head + ")", safe="")), [], []
                    more = len(quote(lit, safe=""))
                size += more
                keys.append(k)
                literals.append(lit)
            if keys:
                queries.append((sobject, field, head + ", ".join(literals) + ")", keys))
        for n in range(0, len(queries), COMPOSITE_COLLECTIONS):
            pack = queries[n:n + COMPOSITE_COLLECTIONS]
            answers = self._queries([q[2] for q in pack])
            asked = sum(len(q[3]) for q in pack)
            for (sobject, field, _, keys), answer in zip(pack, answers, strict=True):
                if answer is None:
                    continue  # not answered: created as usual, the create decides
                found = {str(r.get(field)).lower(): r["Id"] for r in answer
                         if isinstance(r, dict) and r.get(field) is not None and r.get("Id")}
                self._existing[1] += len(keys)
                for k in keys:
                    rid = found.get(k)
                    if rid is None:
                        continue
                    self._existing[0] += 1
                    given, its = groups[(sobject, field)][k]
                    self._attached.pop((sobject, field, given), None)
                    for it in its:
                        it.attempts += 1
                        it.read_calls += 1.0 / asked
                        self.stats["skipped"] += 1
                        self._audit(it, "SKIPPED", rid, None, 0.0)
                        it.done = True

    def _queries(self, soqls: list[str]) -> list[list[Any] | None]:
        """The records each query answers (its first page: an ``IN`` list of one Unique
        field answers at most one row a value, under the 2,000 of a page); None for a query
        Salesforce refused (logged; its records are created as usual). One query alone, or
        several as one /composite call."""
        def rows(answer: Any) -> list[Any] | None:
            records = answer.get("records") if isinstance(answer, dict) else None
            return records if isinstance(records, list) else None

        if len(soqls) == 1:
            try:
                return [rows(self._call(lambda c: c.restful("query", params={"q": soqls[0]},
                                                            timeout=self.timeout_s)))]
            except BatchRejected as exc:
                log.warning("look-up query refused; creating as usual", error=str(exc))
                return [None]

        def call(c: Salesforce) -> Any:
            base = urlsplit(c.base_url).path
            return c.restful("composite", method="POST", timeout=self.timeout_s, json={
                "allOrNone": False, "collateSubrequests": False,
                "compositeRequest": [
                    {"method": "GET", "url": f"{base}query?q={quote(q, safe='')}",
                     "referenceId": f"q{n}"} for n, q in enumerate(soqls)]})

        try:
            answer = self._call(call)
        except BatchRejected as exc:
            log.warning("look-up queries refused; creating as usual", error=str(exc))
            return [None] * len(soqls)
        subs = answer.get("compositeResponse") if isinstance(answer, dict) else None
        by_ref = {s.get("referenceId"): s for s in subs or [] if isinstance(s, dict)}
        out: list[list[Any] | None] = []
        for n in range(len(soqls)):
            sub = by_ref.get(f"q{n}") or {}
            if 200 <= int(sub.get("httpStatusCode") or 0) < 300:
                out.append(rows(sub.get("body")))
            else:
                log.warning("look-up query refused; creating as usual",
                            status=sub.get("httpStatusCode"), error=str(sub.get("body"))[:300])
                out.append(None)
        return out

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

    def _write_op(self, group: tuple[str, str, str | None],
                  groups: OrderedDict[str, list[_Item]]) -> _Op | None:
        """One sObject Collections update (by Id) or upsert (by external id) of one sObject's
        records (``_written`` reads the answer). Several commands for one record in the
        batch are merged into one record (later fields win) and each is audited."""
        kind, sobject, key_field = group
        groups = OrderedDict((k, live) for k, its in groups.items()
                             if (live := [i for i in its if not i.done and self.member.owns(i.rec)]))
        if not groups:
            return None
        writes = {k: merged([i.write for i in its if i.write is not None]) for k, its in groups.items()}
        # One sObject after the other: Salesforce processes a mixed call in runs of one type
        # (at most 10 runs a call).
        groups = OrderedDict(sorted(groups.items(), key=lambda kv: writes[kv[0]].sobject))
        body = {"allOrNone": False, "records": [writes[k].record() for k in groups]}
        path = "composite/sobjects" if kind == "update" else f"composite/sobjects/{sobject}/{key_field}"
        return _Op("PATCH", path, body, len(groups),
                   lambda results, share: self._written(group, groups, writes, results, share),
                   lambda exc, share: self._unroll(groups, exc, share,
                                                   lambda one: self._write_op(group, one)))

    def _written(self, group: tuple[str, str, str | None], groups: OrderedDict[str, list[_Item]],
                 writes: dict[str, Write], results: Any, share: float) -> None:
        """Mark what an update or upsert did."""
        kind = group[0]
        keys = list(groups)
        if not isinstance(results, list) or len(results) != len(keys):
            raise RetriableError(f"salesforce answered {len(keys)} records with {str(results)[:200]}")
        for k, res in zip(keys, results, strict=True):
            errors = res.get("errors") or []
            if not res.get("success") and kind == "upsert" and duplicates_detected(errors):
                self._attach_to_duplicate(writes[k], groups[k], share)
                continue
            if not res.get("success") and len(groups[k]) > 1 and not classify_item_error(errors)[0]:
                # Merged commands refused together: one of them may be wrong. Write each alone,
                # in order, so the others are applied and only the wrong one dead-lettered.
                for it in groups[k]:
                    if (op := self._write_op(group, OrderedDict([(k, [it])]))) is not None:
                        self._send_alone(op)
                continue
            for n, it in enumerate(groups[k]):
                it.attempts += 1
                if res.get("success") and it.op_name == "CloseCase":
                    # Closed (or reopened): a replay must not set the status again over a
                    # person's change since (the ledger, as for UpdateRecord).
                    self._produce_ledger(it, APPLIED, res.get("id") or writes[k].key, key=it.key)
                if res.get("success") and it.op_name == "CloseCase" and (
                        it.op.get("resolution_note") or "").strip():
                    # Closed; its resolution note goes on the Case next (the next round of
                    # this attempt), and the command is audited once both are done.
                    it.record_id = res.get("id") or writes[k].key
                    it.calls += share
                    it.write = self._note_write(it)
                    it.again = True
                    continue
                if res.get("success"):
                    if it.op_name == "UpdateRecord":
                        # Applied: a replay of this command must not apply it again over
                        # what people changed since (the ledger, as for FeedItems).
                        self._produce_ledger(it, APPLIED, res.get("id") or writes[k].key)
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
    def _feed_ready(self, items: list[_Item]) -> list[_Item]:
        """Of ``items`` (``PostFeedItem``, a closed Case's note), the FeedItems to post now,
        their INTENT acknowledged by the broker; see ``_ledger.py`` for the protocol and its
        window. A key the ledger shows APPLIED is audited SKIPPED, no call; a key left at
        INTENT is looked for first (``_recover_feed``). The same key twice (a re-delivery
        next to its original) is posted once; the other follows its outcome in the next
        round."""
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
        firsts: dict[str, _Item] = {}
        for it in fresh:
            if it.ledger_key in firsts:
                it.again = True
            else:
                firsts[it.ledger_key] = it
        fresh = list(firsts.values())
        for it in fresh:
            self._produce_ledger(it, INTENT, None)
        if fresh:
            self.retry.run(self.out.await_acks,
                           what="waiting for the broker to acknowledge ledger intents")
        return fresh

    def _feed_op(self, chunk: list[_Item]) -> _Op:
        """FeedItems whose INTENT is acknowledged, as one sObject Collections create
        (``_fed`` reads the answer)."""
        for it in chunk:
            self.ledger.known_absent.discard(it.ledger_key)  # outcome unknown until answered
        groups = OrderedDict((it.ledger_key, [it]) for it in chunk)
        body = {"allOrNone": False, "records": [it.write.record() for it in chunk if it.write]}

        def rejected(exc: BatchRejected, share: float) -> None:
            for it in chunk:
                self.ledger.known_absent.add(it.ledger_key)
            self._unroll(groups, exc, share, lambda one: self._feed_op([its[0] for its in one.values()]))

        return _Op("POST", "composite/sobjects", body, len(chunk),
                   lambda results, share: self._fed(chunk, results, share), rejected)

    def _fed(self, chunk: list[_Item], results: Any, share: float) -> None:
        if not isinstance(results, list) or len(results) != len(chunk):
            raise RetriableError(f"salesforce answered {len(chunk)} FeedItems with {str(results)[:200]}")
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
            # The command's outcome is the Case's: closed (its note posted or found posted);
            # a replay that found both done changed nothing.
            done_before = it.closed_before and outcome == "SKIPPED"
            self._audit(it, "SKIPPED" if done_before else "UPDATED", it.record_id, None,
                        share + it.calls)
        else:
            self._audit(it, outcome, feed_id, None, share)
        it.done = True

    def _applied_before(self, it: _Item) -> bool:
        """An ``UpdateRecord`` the ledger shows APPLIED (a replay, a re-delivery after a
        crash past the answer): audited SKIPPED, no call. A stage move is keyed by the Front
        event that asked for it, a handle added by the handle: written once each, so a
        replay never moves an Opportunity back over a person's later change."""
        entry = self.ledger.get(it.ledger_key)
        if entry is None or entry.state != APPLIED:
            return False
        self.stats["skipped"] += 1
        self._audit(it, "SKIPPED", entry.result_id, None, 0.0)
        it.done = True
        return True

    @staticmethod
    def _twin_waits(it: _Item, firsts: dict[str, _Item]) -> bool:
        """An ``UpdateRecord`` whose idempotency key another one of this round carries (a
        re-delivery next to its original, or a re-emitted command): it waits for the next
        round, where the ledger shows the first one APPLIED and it is audited SKIPPED. Merged
        into one write, the later one's fields would win and the key be applied twice."""
        first = firsts.setdefault(it.ledger_key, it)
        if first is it:
            return False
        it.again = True
        it.last_error = f"waiting for command {first.command['command_id']} of the same key"
        return True

    def _closed_before(self, items: list[_Item]) -> None:
        """A ``CloseCase`` whose status the ledger shows applied (a replay, a re-delivery,
        the worker handling its archive again): the status is not written again, no query,
        no call (a person may have reopened the Case since). Its resolution note still goes
        through the note's own ledger entry (posted if a crash came between the two)."""
        for it in items:
            if it.op_name != "CloseCase" or it.record_id is not None or it.closed_before:
                continue
            entry = self.ledger.get(it.key)
            if entry is None or entry.state != APPLIED:
                continue
            it.closed_before = True
            it.record_id = entry.result_id
            if (it.op.get("resolution_note") or "").strip() and it.record_id:
                it.write = self._note_write(it)
                continue
            it.attempts += 1
            self.stats["skipped"] += 1
            self._audit(it, "SKIPPED", entry.result_id, None, 0.0)
            it.done = True

    @staticmethod
    def _note_write(it: _Item) -> Write:
        assert it.record_id is not None
        return Write("feed", "FeedItem", None, it.record_id,
                     {"Body": it.op["resolution_note"].strip()[:FEED_BODY_MAX]})

    def _produce_ledger(self, it: _Item, state: str, result_id: str | None,
                        key: str | None = None) -> None:
        assert it.write is not None
        key = key or it.ledger_key
        rec = Ledger.record(key, it.command["command_id"], it.op_name, state, it.write.key,
                            result_id)
        self.ledger.observe(rec)
        self.out.produce(self.topics.salesforce_ledger, key.encode(), rec)

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
        metrics.THROTTLED.labels("salesforce").inc()
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
        """A command's outcome, audited with its flush (``_emit``, module docstring)."""
        self._outcomes.append(_Outcome(item, outcome, record_id, error, api_share))
        if outcome in ("CREATED", "UPDATED"):
            metrics.observe_write("salesforce", item.command, item.rec.msg.headers())

    def _emit_last(self) -> None:
        """Emit the last flush's audit records (none left once this returns)."""
        self._emit(self._unemitted)
        self._unemitted = []

    def _emit(self, outcomes: list[_Outcome]) -> None:
        for o in outcomes:
            self._emit_one(o)

    def _emit_one(self, o: _Outcome) -> None:
        cmd, r, outcome, record_id, error = o.item.command, o.item.rec, o.outcome, o.record_id, o.error
        self.out.produce(self.topics.audit, cmd["command_id"].encode(), {
            "command_id": cmd["command_id"],
            "correlation_id": cmd["origin"]["correlation_id"],
            "target": "salesforce",
            "operation": o.item.op_name,
            "outcome": outcome,
            "record_id": record_id,
            "api_calls": ({"salesforce.rest": o.api_share + o.item.read_calls}
                          if o.api_share + o.item.read_calls else {}),
            "error": error,
            "source_topic": r.topic,
            "source_partition": r.partition,
            "source_offset": r.offset,
            "at": int(time.time() * 1000),
        })
        if outcome == "SKIPPED":
            # Nothing changed in Salesforce: a DEBUG line (the audit record has it). A replay
            # skips every command it re-reads, and an INFO line each was a third of the
            # sink's time; "already created" says once per call how many.
            log.debug("command skipped", outcome=outcome, record_id=record_id,
                      correlation_id=cmd["origin"]["correlation_id"],
                      at=coords(r.topic, r.partition, r.offset), reason=error)
            return
        log.info("command applied" if error is None else "command failed", outcome=outcome,
                 record_id=record_id, correlation_id=cmd["origin"]["correlation_id"],
                 at=coords(r.topic, r.partition, r.offset), error=error)

    def _dead_letter(self, r: Received, stage: str, exc: BaseException, attempts: int) -> None:
        m = r.msg
        metrics.DEAD_LETTERS.labels(stage).inc()
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
    metrics.serve(settings.metrics.sink_salesforce_port, settings.metrics.host, "sink-salesforce")
    sink.run()
