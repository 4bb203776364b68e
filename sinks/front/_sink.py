"""The Front sink loop: ``commands.front`` -> Front's Core API.

Front allows about 100 calls a minute for a whole company, so the sink gathers commands for
``front_sink.flush_window_ms`` (or ``batch_size`` commands) and writes what they come to per
conversation and per contact (``_plan``): one call for the tags or the assignment of a
conversation (POST/DELETE ``…/tags`` or PUT ``…/assignee`` when only one of them changes,
else GET the conversation and one PATCH with the full ``tag_ids`` and ``assignee_id``), one
comment per author (bodies joined), one links call per 10 URLs, and per contact one GET and
one PATCH of the merged ``custom_fields`` and ``links`` (PATCH replaces both wholesale, so
what others set is read and sent back). Tag names are resolved from a cached ``GET /tags``
(pages followed); a missing tag is created once (``POST /company/tags``); teammates from a
cached ``GET /teammates``; contact custom field types from a cached
``GET /contacts/custom_fields``. Every call goes through ``frontforce.front.FrontClient``
and the process's one ``FrontPacer`` (x-ratelimit-*, retry-after, the wait in a 429 body).

Accounts (UpsertAccount, use case 3), per external id and window: the account is read by
``GET /accounts/alt:ext_id:<id>`` (then by its Front id, cached per process), created with
its ``external_id`` when Front has none (``POST /accounts``), else patched only with what
differs (custom fields merged as for contacts; nothing differs: no write). Contacts are
linked in one ``POST /accounts/{id}/contacts`` after each missing handle was resolved by
``GET /contacts/alt:email:…``; the account's linked handles are cached, so an account whose
contacts are all linked already costs no contact call at all. A handle with no Front contact
is skipped (not created: UpdateContactFields creates none either), named in the audit
record's ``error`` beside the command's outcome, and looked up again only after
``NO_CONTACT_RECHECK_S``. When such a person writes in, the worker sends their context
again marked ``if_missed``: applied (the 'no contact' memory ignored, the contact then linked
to the account's Front account, one link call per account and window) only if the last
context applied to that handle found no Front contact, as the ledger says; else SKIPPED
without a call. Unknown custom field names are sent as
given: Front's 400 dead-letters the command at fault (the merged write is unrolled).

One commit path, in this order (STYLE habit 2):
  1. gather a window of commands; decode them (registry retried in place; an undecodable
     record is dead-lettered);
  2. catch the ledger up to its end; a command whose key is APPLIED is audited SKIPPED;
  3. resolve tag names and teammates (reads, tag creation: idempotent);
  4. write an INTENT ledger record for every command about to be applied and WAIT FOR THE
     BROKER'S ACK of all of them;
  5. call Front, target after target; after each call its commands get an APPLIED ledger
     record and an audit record (or a dead letter + DEAD_LETTERED audit + ledger tombstone);
  6. wait until the broker acknowledged every ledger, audit and dead-letter record;
  7. commit the offsets of the partitions this member still owns.

The ledger window, and how it is recovered: between the ack of INTENT (4) and the ack of
APPLIED (6), a crash leaves Front changed (or not) with the key at INTENT and the offset
uncommitted. The command is redelivered; the sink sees INTENT and, only for those keys,
checks Front before it writes: an AddComment is looked for in the conversation's comments by
the marker its body carries (``_plan.marker_for``), tags / assignment / links in the
conversation's current state, contact fields by the merge itself (a PATCH that would change
nothing is not sent). What is there is audited SKIPPED and marked APPLIED; the rest is
applied. A crash before 4 leaves no INTENT: nothing was called. The same check guards a
comment POST that failed without an answer (timeout, 5xx) inside one run: the retry reads the
comments first. What stays open: a tag/link/assignment found absent may have been applied and
undone by someone else since; it is applied again (the command asked for it).

Known limits, on purpose or not yet solved:
- the PATCH of a conversation's full ``tag_ids`` (taken only when tags are added and removed,
  or tags and the assignee change, in one window) follows a GET; a tag someone else changes
  between the two (milliseconds, unless the pacer holds the PATCH) is overwritten;
- AddLink attaches by ``link_external_urls`` (idempotent, 10 a call); Front names such a
  link after its URL, the command's ``name`` is not sent (it would cost a ``POST /links``
  per link, which has its own 60-a-minute guard);
- a partition that moves to another member while this one is inside a Front call for it:
  the new owner sees the INTENT and checks Front, but a call still in flight may land after
  its check (the comment would then be doubled). Ownership is re-checked before each call;
- the ledger keeps one entry per key forever (compaction keeps the latest); a retention
  policy (tombstones after the command topic's retention) is not built.

Whatever waits (429, backoff, acks) waits with the partitions paused while the consumer keeps
polling, so the member stays in its group (``sinks.salesforce._member.GroupMember``).
Transient failures are retried in place for ``front_sink.retry_max_s``, then the process stops
(``FatalError``) without committing. Permanent Front refusals (404 conversation or contact,
400) are dead-lettered with Front's error; a merged call that Front refuses with a 400 is
unrolled so only the command at fault is dead-lettered.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import structlog
from confluent_kafka import Consumer

from frontforce import metrics
from frontforce.config import Settings
from frontforce.errors import FatalError, InvalidRecordError, RetriableError
from frontforce.front import FrontClient, FrontRequestError
from frontforce.kafka import consumer_config
from frontforce.logs import coords
from frontforce.serialization import Serde
from sinks._producer import AckedProducer
from sinks.front import _plan
from sinks.front._ledger import APPLIED, INTENT, Entry, Ledger
from sinks.salesforce._member import GroupMember, Received
from sinks.salesforce._retry import RetryPolicy

log = structlog.get_logger("sinks.front")

GAP_SHARE = 0.5
_IDLE_STEP_S = 0.5
LINKS_PER_CALL = 10  # Front: link_external_urls takes at most 10
# A handle Front had no contact for is not looked up again for this long: an Account's
# Contacts who never wrote in would otherwise cost one GET each on every update of it.
NO_CONTACT_RECHECK_S = 600.0
# An email without a Front teammate is asked about again after this long (routing skips it).
NO_TEAMMATE_TTL_S = 600.0
# The teammate list is read again (for an email not in it) at most this often; an email not
# in it is then asked about by its alias, which finds a teammate added since.
TEAMMATES_REFRESH_S = 60.0


class _Stopping(Exception):
    """The stop flag was set while a batch was in flight: leave it uncommitted."""


class _Item:
    __slots__ = ("rec", "command", "op_name", "op", "key", "done", "recover", "calls",
                 "tag_ids", "teammate_id", "author_id", "marker", "outcome", "error", "made")

    def __init__(self, rec: Received, command: dict[str, Any]) -> None:
        self.rec = rec
        self.command = command
        name, fields = command["operation"]
        self.op_name: str = name.rsplit(".", 1)[-1]
        self.op: dict[str, Any] = fields
        self.key: str = command["idempotency_key"]
        self.done = False
        self.recover = False  # its key was left at INTENT: check Front before writing
        self.calls = 0.0  # its share of the Front calls made for it
        self.tag_ids: list[str] = []
        self.teammate_id: str | None = None
        self.author_id: str | None = None  # AddComment's author, when it names one
        self.marker: str | None = None
        self.outcome: str | None = None
        self.error: str | None = None
        self.made = False  # UpsertAccount: its account was created for it in this window

    @property
    def target(self) -> tuple[str, str]:
        if self.op_name == "UpdateContactFields":
            return ("contact", self.op["contact_handle"].strip().lower())
        if self.op_name == "UpsertAccount":
            return ("account", self.op["external_id"].strip())
        return ("conversation", self.op["conversation_id"])



class FrontSink:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cfg = settings.front_sink
        self.topics = settings.topics
        self.serde = Serde(settings)
        consumer = Consumer(consumer_config(settings, self.cfg.group_id,
                                            **{"max.poll.interval.ms": self.cfg.max_poll_interval_ms,
                                               "session.timeout.ms": self.cfg.session_timeout_ms}))
        self.member = GroupMember(consumer, self.topics.commands_front,
                                  gap_budget_s=self.cfg.max_poll_interval_ms / 1000 * GAP_SHARE)
        self.stop_event = threading.Event()
        self.retry = RetryPolicy(self.cfg.retry_max_s, self._idle, stage="sink.front")
        self.out = AckedProducer(settings, self.serde, self.member, self.retry)
        self.front = FrontClient(settings.front, sleep=self._idle, max_transient_s=self.cfg.retry_max_s)
        self.ledger = Ledger(settings, self.serde)
        self._tags: dict[str, str] | None = None  # lower-cased name -> tag id
        self._teammates: dict[str, str] | None = None  # lower-cased email -> teammate id
        self._no_teammate: dict[str, float] = {}  # lower-cased email -> when found missing
        self._teammates_at = 0.0  # when the teammate list was read
        self._contact_types: dict[str, str] | None = None  # custom field name -> type
        self._account_types: dict[str, str] | None = None  # account custom field -> type
        self._account_ids: dict[str, str] = {}  # external id -> Front account id
        # Front account id -> handle keys (``_plan.handle_key``) known to be linked to it.
        self._account_links: dict[str, set[str]] = {}
        self._no_contact: dict[str, float] = {}  # handle key -> when Front had no contact
        self._first: dict[str, _Item] = {}  # idempotency key -> the command applied for it
        # Front account external id -> (command, outcome, contact) waiting to be linked.
        self._links_due: dict[str, list[tuple[_Item, str, dict[str, Any]]]] = {}
        self.stats = {"applied": 0, "skipped": 0, "dead_lettered": 0, "recovered": 0,
                      "front_calls": 0, "batches": 0}

    # -- waiting without leaving the group -----------------------------------------------
    def _idle(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            if self.stop_event.is_set():
                raise _Stopping()
            left = end - time.monotonic()
            if left <= 0:
                return
            self.member.keepalive(min(left, _IDLE_STEP_S))

    # -- main loop -----------------------------------------------------------------------
    def preflight(self) -> None:
        timeout = self.settings.front.timeout_s
        if timeout > self.member.gap_budget_s:
            raise FatalError(
                f"front.timeout_s ({timeout:g}s) must be at most half of "
                f"front_sink.max_poll_interval_ms ({self.cfg.max_poll_interval_ms} ms)")
        self.retry.run(lambda: self.ledger.catch_up(self.cfg.ledger_timeout_s),
                       what="reading the front ledger")
        log.info("front ledger read", keys=len(self.ledger.entries), records=self.ledger.read)

    def run(self) -> None:
        try:
            self.preflight()
            self.member.subscribe()
            self.member.resume()
            log.info("front sink started", topic=self.topics.commands_front,
                     flush_window_ms=self.cfg.flush_window_ms)
            while not self.stop_event.is_set():
                batch = self._gather()
                if batch:
                    self.process(batch)
        except _Stopping:
            log.info("front sink stopped mid-batch; its uncommitted records are redelivered")
        finally:
            self.out.flush(10)
            self.member.close()
            self.ledger.close()
            self.front.close()

    def _gather(self) -> list[Received]:
        """One flush window: the first record, then whatever arrives within the window."""
        batch = self.member.next_batch(self.cfg.batch_size, _IDLE_STEP_S)
        if not batch:
            return []
        end = time.monotonic() + self.cfg.flush_window_ms / 1000
        while len(batch) < self.cfg.batch_size and not self.stop_event.is_set():
            left = end - time.monotonic()
            if left <= 0:
                break
            batch += self.member.next_batch(self.cfg.batch_size - len(batch), min(left, _IDLE_STEP_S))
        return batch

    def process(self, batch: list[Received]) -> None:
        metrics.RECORDS_IN.labels(self.topics.commands_front).inc(len(batch))
        self.stats["batches"] += 1
        calls_before = self.stats["front_calls"]
        marks = [("start", time.monotonic())]
        items: list[_Item] = []
        for r in batch:
            if not self.member.owns(r):
                continue
            self.member.checkpoint()
            try:
                command = self.retry.run(_bind(self.serde.decode, r.topic, r.msg.value()),
                                         what=f"decoding {coords(r.topic, r.partition, r.offset)}")
            except InvalidRecordError as exc:
                self._dead_letter(r, "decode", str(exc), 1)
                continue
            items.append(_Item(r, command))
        marks.append(("decode", time.monotonic()))
        self.retry.run(lambda: self.ledger.catch_up(self.cfg.ledger_timeout_s),
                       what="catching up with the front ledger")
        marks.append(("ledger", time.monotonic()))
        live = self._triage(items)
        self._resolve(live)
        marks.append(("resolve", time.monotonic()))
        live = [i for i in live if not i.done]
        self._intend(live)
        marks.append(("intent", time.monotonic()))
        by_target: OrderedDict[tuple[str, str], list[_Item]] = OrderedDict()
        for it in live:
            by_target.setdefault(it.target, []).append(it)
        for (kind, target), its in by_target.items():
            its = [i for i in its if self.member.owns(i.rec)]
            if not its:
                continue
            if kind == "conversation":
                self._conversation(target, its)
            elif kind == "account":
                self._account(its)
            else:
                self._contact(its)
        self._link_due()
        for it in items:
            self._finish_duplicate(it)
        marks.append(("front", time.monotonic()))
        self.retry.run(self.out.await_acks, what="waiting for the broker to acknowledge ledger, "
                       "audit and dead-letter records")
        marks.append(("acks", time.monotonic()))
        self.retry.run(lambda: self.member.commit(batch), what="committing offsets")
        marks.append(("commit", time.monotonic()))
        self.member.resume()
        log.info("batch done", commands=len(batch), front_calls=self.stats["front_calls"] - calls_before,
                 ms={name: round((t - marks[n][1]) * 1000) for n, (name, t) in enumerate(marks[1:])})

    # -- ledger ----------------------------------------------------------------------------
    def _triage(self, items: list[_Item]) -> list[_Item]:
        """Applied keys are SKIPPED; a key twice in the window is applied once; INTENT keys
        are marked for the check."""
        first: dict[str, _Item] = {}
        live = []
        for it in items:
            entry = self.ledger.get(it.key)
            if entry is not None and entry.state == APPLIED:
                self._audit(it, "SKIPPED", entry.result_id, None)
                self.stats["skipped"] += 1
                it.outcome, it.done = "SKIPPED", True
                continue
            if it.key in first:
                it.outcome = f"duplicate:{id(first[it.key])}"
                continue
            first[it.key] = it
            it.recover = entry is not None and entry.state == INTENT
            if self._invalid(it):
                continue
            if it.op_name == "AddComment":
                it.marker = _plan.marker_for(it.key)
            live.append(it)
        self._first = first
        return live

    def _finish_duplicate(self, it: _Item) -> None:
        if it.done or it.outcome is None or not it.outcome.startswith("duplicate:"):
            return
        primary = self._first[it.key]
        if primary.outcome == "DEAD_LETTERED":
            self._fail(it, primary.error or "dead-lettered", 0)
        else:
            self._audit(it, "SKIPPED", None, None)
            self.stats["skipped"] += 1
        it.done = True

    def _intend(self, items: list[_Item]) -> None:
        """INTENT for every command about to be applied, acknowledged before any call."""
        fresh = [i for i in items if not i.recover]
        for it in fresh:
            self._ledger_write(it, INTENT, None)
        if fresh:
            self.retry.run(self.out.await_acks, what="waiting for the broker to acknowledge INTENT records")

    def _ledger_write(self, it: _Item, state: str, result_id: str | None) -> None:
        target = it.target[1]
        entry = Entry(state, it.command["command_id"], it.op_name, target, result_id, it.marker)
        self.ledger.note(it.key, entry)
        self.out.produce(self.topics.front_ledger, it.key.encode(), {
            "idempotency_key": it.key, "command_id": entry.command_id, "operation": it.op_name,
            "state": state, "target_id": target, "result_id": result_id, "marker": it.marker,
            "at": int(time.time() * 1000)})

    # -- validation and names ------------------------------------------------------------------
    def _invalid(self, it: _Item) -> bool:
        op = it.op
        why = None
        if it.op_name == "UpdateContactFields":
            if not op["contact_handle"].strip():
                why = "UpdateContactFields without a contact handle"
        elif it.op_name == "UpsertAccount":
            if not op["external_id"].strip():
                why = "UpsertAccount without an external_id"
            elif not op["name"].strip():
                why = "UpsertAccount without a name"
        elif not op["conversation_id"].strip():
            why = f"{it.op_name} without a conversation id"
        elif it.op_name == "AddComment" and not op["body"].strip():
            why = "AddComment with an empty body"
        elif it.op_name in ("AddTags", "RemoveTags") and not [t for t in op["tag_names"] if t.strip()]:
            why = f"{it.op_name} without a tag name"
        elif it.op_name == "AddLink" and not op["external_url"].strip():
            why = "AddLink without an external_url"
        if why is not None:
            self._fail(it, why, 0)
            return True
        return False

    def _call(self, method: str, path: str, json: Any = None, params: Any = None) -> Any:
        self.member.checkpoint(self.settings.front.timeout_s)
        before = self.front.calls
        try:
            return self.front.request(method, path, params=params, json=json)
        finally:
            self.stats["front_calls"] += self.front.calls - before

    def _read_all(self, path: str, params: Any = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        url: str | None = path
        while url:
            page = self.retry.run(_bind(self._call, "GET", url, params=params),
                                  what=f"reading front {path}")
            params = None
            out.extend(page.get("_results") or [])
            url = (page.get("_pagination") or {}).get("next")
        return out

    def _resolve(self, items: list[_Item]) -> None:
        """Tag names to ids (cached; missing tags created), teammate emails to ids (cached).
        The calls a command's names cost are counted in its audit record."""
        for it in items:
            before = self.stats["front_calls"]
            failed: FrontRequestError | None = None
            no_teammate = False
            try:
                if it.op_name in ("AddTags", "RemoveTags"):
                    it.tag_ids = [self._tag_id(n.strip(), create=it.op_name == "AddTags")
                                  for n in it.op["tag_names"] if n.strip()]
                    it.tag_ids = [t for t in it.tag_ids if t]
                elif it.op_name == "AssignConversation":
                    try:
                        it.teammate_id = self._teammate_id(it.op["teammate_email"])
                    except FrontRequestError as exc:
                        if exc.status != 404:
                            raise
                        no_teammate = True
                elif it.op_name == "AddComment" and (it.op.get("author_email") or "").strip():
                    # Resolved here: an unknown author would make the comment POST a 404,
                    # which must mean "no such conversation".
                    it.author_id = self._teammate_id(it.op["author_email"])
            except FrontRequestError as exc:
                failed = exc
            it.calls += self.stats["front_calls"] - before
            if failed is not None:
                self._fail(it, str(failed), 0)
            elif no_teammate:
                # Routing to a Salesforce owner without a Front seat (the integration user,
                # a manager): nothing to do, not an error.
                self._applied(it, "SKIPPED", None,
                              f"no Front teammate has the email {it.op['teammate_email']!r}")

    def _tag_id(self, name: str, create: bool) -> str:
        if self._tags is None or name.lower() not in self._tags:
            self._tags = {t["name"].lower(): t["id"] for t in self._read_all("/tags", {"limit": "100"})}
        found = self._tags.get(name.lower())
        if found is not None or not create:
            return found or ""  # removing a tag that does not exist: nothing to remove
        try:
            tag = self.retry.run(lambda: self._call("POST", "/company/tags", {"name": name}),
                                 what=f"creating front tag {name!r}")
        except FrontRequestError as exc:
            if exc.status != 409:
                raise
            self._tags = None  # someone created it meanwhile: read the list again
            found = self._tag_id(name, create=False)
            if not found:
                raise FrontRequestError(409, f"tag {name!r} exists but is not visible to this token: "
                                        f"{exc}") from exc
            return found
        log.info("front tag created", name=name, tag_id=tag["id"])
        self._tags[name.lower()] = tag["id"]
        return str(tag["id"])

    def _teammate_id(self, email: str) -> str:
        e = email.strip().lower()
        if self._teammates is not None and e in self._teammates:
            return self._teammates[e]
        # An email known to have no teammate is not asked about again for a while: every
        # conversation of an Account owned by someone without a Front seat (the integration
        # user, a manager) would cost reads otherwise; the list is read again at most every
        # TEAMMATES_REFRESH_S (it was read for every such conversation: 132 of the demo's
        # Front calls).
        missed = self._no_teammate.get(e)
        if missed is not None and time.monotonic() - missed < NO_TEAMMATE_TTL_S:
            raise FrontRequestError(404, f"no teammate alt:email:{e} (cached)")
        if self._teammates is None or time.monotonic() - self._teammates_at > TEAMMATES_REFRESH_S:
            people = self._read_all("/teammates")
            self._teammates = {t["email"].lower(): t["id"] for t in people if t.get("email")}
            self._teammates_at = time.monotonic()
        if e not in self._teammates:
            try:
                t = self.retry.run(lambda: self._call("GET", f"/teammates/{quote('alt:email:' + e, safe=':@+')}"),
                                   what="reading a front teammate")
            except FrontRequestError as exc:
                if exc.status == 404:
                    self._no_teammate[e] = time.monotonic()
                raise
            self._teammates[e] = t["id"]
        return self._teammates[e]

    # -- conversations -----------------------------------------------------------------------
    def _conversation(self, cid: str, items: list[_Item]) -> None:
        path = f"/conversations/{quote(cid, safe='')}"
        try:
            if any(i.recover for i in items):
                self._check_conversation(path, items)
            items = [i for i in items if not i.done]
            self._unrolled(path, [i for i in items if i.op_name == "AddComment"], self._comments)
            self._unrolled(path, [i for i in items if i.op_name in ("AddTags", "RemoveTags",
                                                                    "AssignConversation")],
                           self._tags_and_assignee)
            self._unrolled(path, [i for i in items if i.op_name == "AddLink"], self._links)
        except FrontRequestError as exc:  # the conversation itself is refused (404, 403)
            for it in items:
                if not it.done:
                    self._fail(it, str(exc), 0)

    def _unrolled(self, path: str, items: list[_Item],
                  apply: Callable[[str, list[_Item]], None]) -> None:
        """``apply`` the merged items; when Front refuses the merged call with a 400, apply
        them one by one so only the command at fault is dead-lettered."""
        # A partition revoked meanwhile: its new owner reads these records again.
        items = [i for i in items if not i.done and self.member.owns(i.rec)]
        if not items:
            return
        try:
            self.retry.run(lambda: apply(path, [i for i in items if not i.done]),
                           what=f"writing {len(items)} command(s) to front {path}")
        except FrontRequestError as exc:
            if exc.status in (403, 404):
                raise  # the conversation or contact itself: every command on it fails
            live = [i for i in items if not i.done]
            if len(live) == 1:
                self._fail(live[0], str(exc), 1)
                return
            log.warning("front refused a merged call; unrolling", path=path, size=len(live),
                        error=str(exc))
            for it in live:
                self._unrolled(path, [it], apply)

    def _check_conversation(self, path: str, items: list[_Item]) -> None:
        """Keys left at INTENT: is their effect already in Front?"""
        recover = [i for i in items if i.recover]
        conv = self.retry.run(lambda: self._call("GET", path), what=f"reading front {path}")
        reads = 1.0
        tags = {t["id"] for t in conv.get("tags") or []}
        links = {lk.get("external_url") for lk in conv.get("links") or []}
        assignee = (conv.get("assignee") or {}).get("id")
        comments: dict[str, str] = {}
        if any(i.op_name == "AddComment" for i in recover):
            for c in self._read_all(f"{path}/comments"):
                comments[c["id"]] = c.get("body") or ""
            reads += 1.0
        later_assign = [i for i in items if i.op_name == "AssignConversation"]
        for it in recover:
            it.calls += reads / len(recover)
            found: str | None = None
            there = False
            if it.op_name == "AddComment":
                assert it.marker is not None
                found = next((cid for cid, body in comments.items() if it.marker in body), None)
                there = found is not None
            elif it.op_name == "AddTags":
                there = set(it.tag_ids) <= tags
            elif it.op_name == "RemoveTags":
                there = not (set(it.tag_ids) & tags)
            elif it.op_name == "AssignConversation":
                there = assignee == it.teammate_id and it is later_assign[-1]
            elif it.op_name == "AddLink":
                there = it.op["external_url"] in links
            if there:
                self.stats["recovered"] += 1
                log.info("found in front after a crash; not applied again", key=it.key,
                         operation=it.op_name, conversation=path)
                self._applied(it, "SKIPPED", found)
            else:
                it.recover = False  # checked just now: absent, apply it

    def _comments(self, path: str, items: list[_Item]) -> None:
        by_author: OrderedDict[str | None, list[_Item]] = OrderedDict()
        for it in items:
            by_author.setdefault(it.author_id, []).append(it)
        for author, its in by_author.items():
            bodies = [(n, _plan.comment_body(it.op["body"], it.marker or "")) for n, it in enumerate(its)]
            for group in _plan.join_comments(bodies, self.cfg.max_comment_chars):
                members = [its[n] for n, _ in group]
                self._post_comment(path, members, "\n\n".join(b for _, b in group), author)

    def _post_comment(self, path: str, items: list[_Item], body: str, author: str | None) -> None:
        """POST one comment; if a previous attempt got no answer, look for its markers first
        (Front has no idempotency key: the comment may exist)."""
        items = [i for i in items if not i.done]
        if not items:
            return
        if any(i.recover for i in items):
            found = {}
            for c in self._read_all(f"{path}/comments"):
                for it in items:
                    if it.marker and it.marker in (c.get("body") or ""):
                        found[it.key] = c["id"]
            for it in items:
                it.calls += 1.0 / len(items)
                if it.key in found:
                    self.stats["recovered"] += 1
                    self._applied(it, "SKIPPED", found[it.key])
            items = [i for i in items if not i.done]
            if not items:
                return
            body = "\n\n".join(_plan.comment_body(i.op["body"], i.marker or "") for i in items)
        payload: dict[str, Any] = {"body": body}
        if author:
            payload["author_id"] = author
        for it in items:
            it.recover = True  # from here on, a retry must look before it posts again
        com = self._call("POST", f"{path}/comments", payload)
        for it in items:
            it.calls += 1.0 / len(items)
            self._applied(it, "CREATED", (com or {}).get("id"))

    def _tags_and_assignee(self, path: str, items: list[_Item]) -> None:
        tag_ops = [(n, "add" if it.op_name == "AddTags" else "remove", it.tag_ids)
                   for n, it in enumerate(items) if it.op_name != "AssignConversation"]
        plan = _plan.fold_tags(tag_ops)
        assigns = [n for n, it in enumerate(items) if it.op_name == "AssignConversation"]
        effective = set(plan.effective) | ({assigns[-1]} if assigns else set())
        assignee = items[assigns[-1]].teammate_id if assigns else None
        families = sum(bool(x) for x in (plan.add, plan.remove, assigns))
        calls = 0.0
        if families > 1:
            conv = self._call("GET", path)
            current = [t["id"] for t in conv.get("tags") or []]
            wanted = [t for t in current if t not in plan.remove] + [t for t in plan.add if t not in current]
            body: dict[str, Any] = {"tag_ids": wanted}
            if assigns:
                body["assignee_id"] = assignee
            self._call("PATCH", path, body)
            calls = 2.0
        elif plan.add:
            self._call("POST", f"{path}/tags", {"tag_ids": plan.add})
            calls = 1.0
        elif plan.remove:
            self._call("DELETE", f"{path}/tags", {"tag_ids": plan.remove})
            calls = 1.0
        elif assigns:
            self._call("PUT", f"{path}/assignee", {"assignee_id": assignee})
            calls = 1.0
        for n, it in enumerate(items):
            if n in effective:
                it.calls += calls / len(effective)
                self._applied(it, "UPDATED", None)
            else:
                # Came to nothing inside the window (added then removed, superseded).
                self._applied(it, "SKIPPED", None)

    def _links(self, path: str, items: list[_Item]) -> None:
        urls = list(dict.fromkeys(it.op["external_url"].strip() for it in items))
        for chunk in _plan.chunks(urls, LINKS_PER_CALL):
            self._call("POST", f"{path}/links", {"link_external_urls": chunk})
            mine = [it for it in items if it.op["external_url"].strip() in chunk]
            for it in mine:
                it.calls += 1.0 / len(mine)
                self._applied(it, "UPDATED", None)

    # -- contacts -----------------------------------------------------------------------------
    def _contact(self, items: list[_Item]) -> None:
        handle = items[0].op["contact_handle"]
        path = f"/contacts/{quote(_plan.contact_ref(handle), safe=':@+')}"
        key = _plan.handle_key(handle)
        no_contact = f"no Front contact has {handle!r} (Front makes one when they write in)"
        missed = [it for it in items if it.op.get("if_missed")]
        if missed:
            # Sent when the person first wrote in (use case 3): needed only if the context
            # pushed before found no Front contact for them.
            reached = self.ledger.contact_reached(items[0].target[1])
            if reached:
                for it in missed:
                    self._applied(it, "SKIPPED", reached, None)
                items = [it for it in items if not it.op.get("if_missed")]
                if not items:
                    return
            else:
                self._no_contact.pop(key, None)  # they wrote in: Front has a contact now
        if time.monotonic() - self._no_contact.get(key, -NO_CONTACT_RECHECK_S) < NO_CONTACT_RECHECK_S:
            for it in items:
                self._applied(it, "SKIPPED", None, no_contact)
            return
        try:
            self._unrolled(path, items, self._patch_contact)
        except FrontRequestError as exc:
            if exc.status == 404:
                # Salesforce context for a Contact who never wrote in: nothing to update,
                # not an error (use case 3 pushes every Contact of an Account).
                self._no_contact[key] = time.monotonic()
            for it in items:
                if not it.done:
                    if exc.status == 404:
                        self._applied(it, "SKIPPED", None, no_contact)
                    else:
                        self._fail(it, str(exc), 1.0 / len(items))

    def _patch_contact(self, path: str, items: list[_Item]) -> None:
        contact = self._call("GET", path)
        for x in contact.get("handles") or []:  # Front has this contact now
            self._no_contact.pop(_plan.handle_key(x["handle"]), None)
        if self._contact_types is None:
            self._contact_types = {d["name"]: d.get("type", "string")
                                   for d in self._read_all("/contacts/custom_fields")}
        current_fields = dict(contact.get("custom_fields") or {})
        current_links = list(contact.get("links") or [])
        fields, links = _plan.merge_contact(
            current_fields, current_links,
            [(it.op["custom_fields"], list(it.op.get("links") or [])) for it in items],
            self._contact_types)
        calls = 1.0
        if fields != current_fields or links != current_links:
            body: dict[str, Any] = {"custom_fields": fields}
            if links != current_links:
                body["links"] = links
            self._call("PATCH", f"/contacts/{quote(contact['id'], safe='')}", body)
            calls += 1.0
            outcome = "UPDATED"
        else:
            outcome = "SKIPPED"  # Front already holds these values (a replay, a recovery)
        for it in items:
            it.calls += calls / len(items)
            ext = str(it.op.get("account_external_id") or "").strip()
            if ext:
                # Applied once linked: the window's contacts of one account in one call.
                self._links_due.setdefault(ext, []).append((it, outcome, contact))
            else:
                self._applied(it, outcome, contact.get("id"))

    def _link_due(self) -> None:
        """The contacts of ``if_missed`` context commands (people who just wrote in) linked
        to their Front account, one call per account and window; then those commands are
        APPLIED."""
        due, self._links_due = self._links_due, {}
        for ext, pending in due.items():
            pending = [(it, outcome, c) for it, outcome, c in pending
                       if not it.done and self.member.owns(it.rec)]
            if not pending:
                continue
            contacts = list({c["id"]: c for _, _, c in pending}.values())
            before = self.stats["front_calls"]
            try:
                linked = self.retry.run(_bind(self._link_contacts_to, ext, contacts),
                                        what=f"linking {len(contacts)} contact(s) to front account {ext}")
            except FrontRequestError as exc:
                for it, _, _ in pending:
                    self._fail(it, str(exc), 0)
                continue
            calls = self.stats["front_calls"] - before
            for it, outcome, c in pending:
                it.calls += calls / len(pending)
                self._applied(it, "UPDATED" if linked else outcome, c.get("id"))

    def _link_contacts_to(self, external_id: str, contacts: list[dict[str, Any]]) -> bool:
        """Link Front contacts (just read) to the Front account of ``external_id``: by its
        cached id, else found by the alias; whether a link was written. No Front account:
        nothing to link to (its UpsertAccount links its contacts when it makes it)."""
        account_id = self._account_ids.get(external_id)
        if account_id is None:
            account = self._find_account(external_id)
            if account is None:
                return False
            account_id = account["id"]
        known = self._account_links.get(account_id)
        handles = {c["id"]: {_plan.handle_key(x["handle"]) for x in c.get("handles") or []}
                   for c in contacts}
        ids = [cid for cid, hs in handles.items() if known is None or not hs & known]
        if not ids:
            return False
        try:
            self._call("POST", f"/accounts/{quote(account_id, safe='')}/contacts", {"contact_ids": ids})
        except FrontRequestError as exc:
            if exc.status != 404:
                raise
            # The cached account (or a contact) went away: look the account up again.
            self._forget_account(external_id)
            raise RetriableError(f"front account {account_id}: gone, or a contact vanished "
                                 "while linking") from exc
        if known is not None:
            for cid in ids:
                known |= handles[cid]
        return True

    # -- accounts -----------------------------------------------------------------------------
    def _account(self, items: list[_Item]) -> None:
        ext = items[0].op["external_id"].strip()
        path = f"/accounts/{quote('alt:ext_id:' + ext, safe=':@+')}"
        try:
            self._unrolled(path, items, self._upsert_account)
        except FrontRequestError as exc:
            for it in items:
                if not it.done:
                    self._fail(it, str(exc), 1.0 / len(items))

    def _upsert_account(self, path: str, items: list[_Item]) -> None:
        """One account: found (or created), patched where it differs, contacts linked. Safe
        to run again after any failure (a retry, a crash at INTENT): it reads before it
        writes, and a create that may have happened is found by its external id."""
        before = self.stats["front_calls"]
        plan = _plan.fold_accounts([it.op for it in items])
        if self._account_types is None:
            self._account_types = {d["name"]: d.get("type", "string")
                                   for d in self._read_all("/accounts/custom_fields")}
        account = self._find_account(plan.external_id)
        wrote = False
        if account is None:
            for it in items:
                # Set before the call: a create that timed out is found by the retry, and
                # is still this window's creation.
                it.made = True
            try:
                account = self._call("POST", "/accounts",
                                     _plan.account_create_body(plan, self._account_types))
            except FrontRequestError:
                for it in items:
                    it.made = False  # refused: nothing was created
                raise
            assert account is not None
            self._account_ids[plan.external_id] = account["id"]
            self._account_links[account["id"]] = set()
            log.info("front account created", external_id=plan.external_id,
                     account_id=account["id"])
        else:
            body = _plan.account_changes(account, plan, self._account_types)
            if body:
                try:
                    self._call("PATCH", f"/accounts/{quote(account['id'], safe='')}", body)
                except FrontRequestError as exc:
                    if exc.status != 404:
                        raise
                    self._forget_account(plan.external_id)  # deleted meanwhile: look again
                    raise RetriableError(f"front account {account['id']} vanished") from exc
                wrote = True
        linked, skipped = self._link_contacts(account["id"], plan.handles)
        calls = self.stats["front_calls"] - before
        outcome = "CREATED" if items[0].made else ("UPDATED" if wrote or linked else "SKIPPED")
        for it in items:
            it.calls += calls / len(items)
            mine = [h for h in skipped
                    if _plan.handle_key(h) in {_plan.handle_key(x) for x in it.op["contact_handles"]}]
            note = f"not linked, no Front contact: {', '.join(mine)}" if mine else None
            self._applied(it, outcome, account["id"], note)

    def _find_account(self, external_id: str) -> dict[str, Any] | None:
        """The Front account of ``external_id``: by its cached id, else by the alias."""
        cached = self._account_ids.get(external_id)
        if cached is not None:
            try:
                found = self._call("GET", f"/accounts/{quote(cached, safe='')}")
                if found.get("external_id") == external_id:
                    return dict(found)
            except FrontRequestError as exc:
                if exc.status != 404:
                    raise
            self._forget_account(external_id)
        try:
            found = self._call("GET", f"/accounts/{quote('alt:ext_id:' + external_id, safe=':@+')}")
        except FrontRequestError as exc:
            if exc.status == 404:
                return None
            raise
        self._account_ids[external_id] = found["id"]
        return dict(found)

    def _forget_account(self, external_id: str) -> None:
        account_id = self._account_ids.pop(external_id, None)
        if account_id is not None:
            self._account_links.pop(account_id, None)

    def _link_contacts(self, account_id: str, handles: list[str]) -> tuple[bool, list[str]]:
        """Link ``handles`` to the account; (whether a link was written, the handles with
        no Front contact). The account's linked handles are read once per process (none for
        an account it created) and kept: a handle known linked costs nothing, one without a
        Front contact is looked up again after ``NO_CONTACT_RECHECK_S`` (the contact may
        exist by then), one someone unlinked in Front is linked again after a restart."""
        if not handles:
            return False, []
        now = time.monotonic()
        absent = [h for h in handles
                  if now - self._no_contact.get(_plan.handle_key(h), -NO_CONTACT_RECHECK_S)
                  < NO_CONTACT_RECHECK_S]
        handles = [h for h in handles if h not in absent]
        known = self._account_links.get(account_id)
        if known is not None and all(_plan.handle_key(h) in known for h in handles):
            return False, absent  # linked already, as this process last saw or made it
        if known is None:
            members = self._read_all(f"/accounts/{quote(account_id, safe='')}/contacts", {"limit": "100"})
            known = {_plan.handle_key(h["handle"]) for c in members for h in c.get("handles") or []}
            self._account_links[account_id] = known
        ids: list[str] = []
        skipped: list[str] = list(absent)
        for h in handles:
            if _plan.handle_key(h) in known:
                continue
            try:
                contact = self._call("GET", f"/contacts/{quote(_plan.contact_ref(h), safe=':@+')}")
            except FrontRequestError as exc:
                if exc.status != 404:
                    raise
                self._no_contact[_plan.handle_key(h)] = time.monotonic()
                skipped.append(h)
                continue
            ids.append(contact["id"])
            known |= {_plan.handle_key(x["handle"]) for x in contact.get("handles") or []}
            self._no_contact.pop(_plan.handle_key(h), None)
        if len(skipped) > len(absent):
            log.info("contacts not in front: not linked to the account", account_id=account_id,
                     handles=skipped[len(absent):])
        if ids:
            try:
                self._call("POST", f"/accounts/{quote(account_id, safe='')}/contacts",
                           {"contact_ids": list(dict.fromkeys(ids))})
            except FrontRequestError as exc:
                if exc.status != 404:
                    raise
                # A contact (or the account) went away between the reads and this call.
                self._account_links.pop(account_id, None)
                raise RetriableError(f"front account {account_id}: a contact vanished while "
                                     "linking") from exc
        self._account_links[account_id] = known
        return bool(ids), skipped

    # -- outcomes -----------------------------------------------------------------------------
    def _applied(self, it: _Item, outcome: str, result_id: str | None, note: str | None = None) -> None:
        """``note``: why part of the command had no effect (audited in ``error``, as the
        worker's SKIPPED reasons are); the command itself is not an error."""
        self._ledger_write(it, APPLIED, result_id)
        self._audit(it, outcome, result_id, note)
        self.stats["applied" if outcome != "SKIPPED" else "skipped"] += 1
        if outcome != "SKIPPED":
            metrics.observe_write("front", it.command)
        it.outcome = outcome
        it.done = True

    def _fail(self, it: _Item, reason: str, calls: float) -> None:
        it.calls += calls
        self._dead_letter(it.rec, "sink.front", reason, 1)
        self._audit(it, "DEAD_LETTERED", None, reason)
        # Forget the key: a replay tries it again (and is refused again, or not).
        self.ledger.note(it.key, None)
        self.out.send(self.topics.front_ledger, it.key.encode(), None)
        self.stats["dead_lettered"] += 1
        it.outcome, it.error, it.done = "DEAD_LETTERED", reason, True

    def _audit(self, it: _Item, outcome: str, record_id: str | None, error: str | None) -> None:
        cmd, r = it.command, it.rec
        self.out.produce(self.topics.audit, cmd["command_id"].encode(), {
            "command_id": cmd["command_id"],
            "correlation_id": cmd["origin"]["correlation_id"],
            "target": "front",
            "operation": it.op_name,
            "outcome": outcome,
            "record_id": record_id,
            "api_calls": {"front": it.calls} if it.calls else {},
            "error": error,
            "source_topic": r.topic,
            "source_partition": r.partition,
            "source_offset": r.offset,
            "at": int(time.time() * 1000),
        })
        log.info("command failed" if outcome == "DEAD_LETTERED" else "command applied", outcome=outcome,
                 operation=it.op_name, target=it.target[1], record_id=record_id,
                 correlation_id=cmd["origin"]["correlation_id"],
                 at=coords(r.topic, r.partition, r.offset), error=error)

    def _dead_letter(self, r: Received, stage: str, reason: str, attempts: int) -> None:
        m = r.msg
        metrics.DEAD_LETTERS.labels(stage).inc()
        self.out.produce(self.topics.deadletter, m.key(), {
            "original_topic": r.topic,
            "original_partition": r.partition,
            "original_offset": r.offset,
            "original_key": m.key(),
            "original_value": m.value(),
            "stage": stage,
            "error_class": "InvalidRecordError",
            "error_message": reason[:4000],
            "attempts": attempts,
            "at": int(time.time() * 1000),
        })

    # -- producing ----------------------------------------------------------------------------


def _bind(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], Any]:
    return lambda: fn(*args, **kwargs)


def run_sink(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; ``FatalError`` when continuing would skip records."""
    sink = FrontSink(settings)

    def stop(signum: int, frame: Any) -> None:
        sink.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    metrics.serve(settings.metrics.sink_front_port, settings.metrics.host, "sink-front")
    sink.run()
