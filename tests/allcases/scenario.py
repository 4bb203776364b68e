"""A bidirectional run: people change things on both sides at once, every use case in play.

Front (Tom and the customers, ``FrontTeammate``), in a repeating pattern of 20 changes:
    K  a known Contact writes in (new conversation): a Task on the Contact; the
       conversation routed to the Account owner's teammate
    S  a stranger (free mail) writes in, each stranger twice, in two conversations: one
       Lead, a Task per message on it, "New Lead" on both conversations
    C  an unknown colleague at a customer's domain writes in: a Task on the Account
    RR Tom tags a K conversation "Renewal Risk": a follow-up Task and a Chatter note
    NL Tom tags a K conversation "New Lead": a follow-up Task (the extra rule)
    UP Tom tags a K conversation of an Upsell Account "Upsell": its Opportunity's stage
       moves; UN removes a tag UP put on: the stage goes back
    OT Tom tags a K conversation "Other" (no rule): nothing
    AR Tom archives a conversation linked to a Case: the Case is closed with a note;
       RO reopens one AR archived: the Case is reopened
    AN Tom archives a K conversation no Case is linked to: nothing
Salesforce (Pat, ``SalesforcePerson``), in a repeating pattern of 20 changes, only on the
Accounts Pat edits (``World.human_accounts``):
    ARR an Account's AnnualRevenue, TIER its Type, AMT its Opportunity's Amount: the
        context in Front changes (the Front account, its contacts)
    CS  a Case linked to a conversation changes status: a comment on the conversation
    TTL a Contact's Title: nothing in Front
A change whose precondition is not met (nothing left to tag or archive) is a K instead.

Both sides run on their own thread at once; ``pace_s`` spaces each side's changes.
``Run`` records what was done, with the ids the emulators gave, for the checks.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.allcases.stack import Account, World

FRONT_PATTERN = "K S K RR AR K S C NL UP K S RR AR OT K S AN UN RO".split()
SF_PATTERN = "ARR AMT ARR CS TIER ARR AMT TTL ARR CS AMT ARR TIER ARR AMT CS TTL ARR AMT TIER".split()
TIERS = ("Customer - Direct", "Customer - Channel")
CASE_STATUSES = ("Working", "Escalated", "New")


@dataclass
class Message:
    id: str
    conversation: str
    sender: str
    kind: str  # K, S, C
    account: Account | None


@dataclass
class Run:
    label: str
    messages: dict[str, Message] = field(default_factory=dict)
    strangers: dict[str, list[str]] = field(default_factory=dict)  # email -> conversations
    known_conversations: dict[str, Account] = field(default_factory=dict)  # K convs -> Account
    tags: list[tuple[str, str, str]] = field(default_factory=list)  # (conversation, tag, tag|untag)
    upsell: dict[str, list[str]] = field(default_factory=dict)  # Account id -> [tag|untag]
    archives: dict[str, list[str]] = field(default_factory=dict)  # conversation -> [archive|reopen]
    not_linked_archives: list[str] = field(default_factory=list)
    case_statuses: list[tuple[str, str]] = field(default_factory=list)  # (Case id, status)
    arr: dict[str, int] = field(default_factory=dict)  # Account id -> its last AnnualRevenue
    tiers: dict[str, str] = field(default_factory=dict)
    amounts: dict[str, int] = field(default_factory=dict)  # Opportunity id -> last Amount
    front_changes: Counter[str] = field(default_factory=Counter)
    sf_changes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def n_front(self) -> int:
        return sum(self.front_changes.values())

    @property
    def n_sf(self) -> int:
        return sum(self.sf_changes.values())


@dataclass
class _Cursor:
    """Which of the world's resources earlier runs used up (each run archives its own
    Cases and moves Opportunities of Upsell Accounts no earlier run tagged)."""

    archive: int = 0
    upsell: set[str] = field(default_factory=set)
    case_status: dict[str, str] = field(default_factory=dict)
    arr: dict[str, int] = field(default_factory=dict)
    tier: dict[str, str] = field(default_factory=dict)
    amount: dict[str, int] = field(default_factory=dict)


_cursors: dict[int, _Cursor] = {}


def _cursor(world: World) -> _Cursor:
    return _cursors.setdefault(id(world), _Cursor())


def claim_upsell_account(world: World) -> Account:
    """An Upsell Account no run has tagged, kept out of later runs."""
    cur = _cursor(world)
    account = next((a for a in world.upsell_accounts if a.id not in cur.upsell), None)
    assert account is not None, "every Upsell Account was used: seed more Accounts"
    cur.upsell.add(account.id)
    return account


class _Side:
    """One side's people: ``n`` changes in ``pattern``'s order, ``pace_s`` apart, on a thread."""

    name = ""
    pattern: list[str] = []

    def __init__(self, world: World, run: Run, n: int, pace_s: float) -> None:
        self.world, self.run, self.n, self.pace_s = world, run, n, pace_s
        self.cur = _cursor(world)

    def step(self, kind: str) -> None:
        raise NotImplementedError

    def __call__(self) -> None:
        try:
            for i in range(self.n):
                self.step(self.pattern[i % len(self.pattern)])
                time.sleep(self.pace_s)
        except Exception as exc:  # noqa: BLE001 - reported by the run
            self.run.errors.append(f"{self.name}: {type(exc).__name__}: {exc}")


class _Front(_Side):
    name, pattern = "front", FRONT_PATTERN

    def __init__(self, world: World, run: Run, n: int, pace_s: float) -> None:
        super().__init__(world, run, n, pace_s)
        # Round robin over the Contacts, an Account Pat edits and an Upsell one in turn.
        half = len(world.accounts) // 2
        pairs = zip(world.human_accounts, world.upsell_accounts, strict=False)
        order = [a for pair in pairs for a in pair] + world.accounts[2 * half:]
        self.contacts = [(email, a) for j in range(2) for a in order
                         for email in list(a.contacts)[j:j + 1]]
        self.k = 0
        self.strangers = 0
        self.taggable: list[str] = []  # K conversations, oldest first, not tagged yet
        self.upsell_on: dict[str, str] = {}  # Account id -> the conversation tagged Upsell
        self.archived: list[str] = []  # linked conversations archived in this run
        self.archivable = list(world.archive_cases)

    def inbound(self, sender: str, kind: str, account: Account | None) -> Message:
        label = self.run.label
        got = self.world.teammate.inbound(sender, f"{label} {kind} {self.k}",
                                          f"Hello from {sender} ({label})",
                                          name=f"{kind} {sender.split('@')[0]}")
        msg = Message(got["message_id"], got["conversation_id"], sender, kind, account)
        self.run.messages[msg.id] = msg
        return msg

    def known(self) -> None:
        email, account = self.contacts[self.k % len(self.contacts)]
        self.k += 1
        msg = self.inbound(email, "K", account)
        self.run.known_conversations[msg.conversation] = account
        self.taggable.append(msg.conversation)
        self.run.front_changes["K"] += 1

    def step(self, kind: str) -> None:
        run, world, tm = self.run, self.world, self.world.teammate
        if kind == "S":
            i = self.strangers
            self.strangers += 1
            email = f"s{i // 2}.{run.label}.{world.tag}@gmail.com"
            msg = self.inbound(email, "S", None)
            run.strangers.setdefault(email, []).append(msg.conversation)
        elif kind == "C":
            account = world.accounts[self.k % len(world.accounts)]
            self.inbound(f"new{self.k}.{run.label}@{account.domain}", "C", account)
        elif kind in ("RR", "NL", "OT") and self.taggable:
            name = {"RR": "Renewal Risk", "NL": "New Lead", "OT": "Other"}[kind]
            conv = self.taggable.pop(0)
            tm.tag(conv, name)
            run.tags.append((conv, name, "tag"))
        elif kind == "UP" and (conv := next(
                (c for c in self.taggable if (a := run.known_conversations[c]) in world.upsell_accounts
                 and a.id not in self.cur.upsell), None)):
            account = run.known_conversations[conv]
            self.taggable.remove(conv)
            self.cur.upsell.add(account.id)
            tm.tag(conv, "Upsell")
            run.tags.append((conv, "Upsell", "tag"))
            run.upsell.setdefault(account.id, []).append("tag")
            self.upsell_on[account.id] = conv
        elif kind == "UN" and self.upsell_on:
            account_id, conv = next(iter(self.upsell_on.items()))
            del self.upsell_on[account_id]
            tm.untag(conv, "Upsell")
            run.tags.append((conv, "Upsell", "untag"))
            run.upsell[account_id].append("untag")
        elif kind == "AR" and self.cur.archive < len(self.archivable):
            conv = self.archivable[self.cur.archive]
            self.cur.archive += 1
            tm.archive(conv)
            run.archives.setdefault(conv, []).append("archive")
            self.archived.append(conv)
        elif kind == "RO" and self.archived:
            conv = self.archived.pop(0)
            tm.reopen(conv)
            run.archives[conv].append("reopen")
        elif kind == "AN" and self.taggable:
            conv = self.taggable.pop()
            tm.archive(conv)
            run.not_linked_archives.append(conv)
        else:
            self.known()
            return
        run.front_changes[kind] += 1


class _Salesforce(_Side):
    name, pattern = "salesforce", SF_PATTERN

    def __init__(self, world: World, run: Run, n: int, pace_s: float) -> None:
        super().__init__(world, run, n, pace_s)
        self.i = 0

    def step(self, kind: str) -> None:
        world, run, pat, cur = self.world, self.run, self.world.person, self.cur
        accounts = world.human_accounts
        account = accounts[self.i % len(accounts)]
        self.i += 1
        if kind == "ARR":
            value = cur.arr.get(account.id, 0) + 1000 * self.i + 100000
            pat.update("Account", account.id, AnnualRevenue=value)
            cur.arr[account.id] = run.arr[account.id] = value
        elif kind == "TIER":
            value = TIERS[(TIERS.index(cur.tier.get(account.id, TIERS[0])) + 1) % 2]
            pat.update("Account", account.id, Type=value)
            cur.tier[account.id] = run.tiers[account.id] = value
        elif kind == "AMT":
            value = cur.amount.get(account.opportunity, 0) + 500 * self.i + 20000
            pat.update("Opportunity", account.opportunity, Amount=value)
            cur.amount[account.opportunity] = run.amounts[account.opportunity] = value
        elif kind == "CS" and world.status_cases:
            cases = list(world.status_cases.values())
            case = cases[self.i % len(cases)]
            now = cur.case_status.get(case, "New")
            value = CASE_STATUSES[(CASE_STATUSES.index(now) + 1) % len(CASE_STATUSES)]
            pat.update("Case", case, Status=value)
            cur.case_status[case] = value
            run.case_statuses.append((case, value))
        else:
            kind = "TTL"
            contact = list(account.contacts.values())[self.i % 2]
            pat.update("Contact", contact, Title=f"Title {run.label} {self.i}")
        run.sf_changes[kind] += 1


class Driver:
    """Both sides' changes on two threads; ``start()``, then ``join()``."""

    def __init__(self, world: World, label: str, front: int, salesforce: int,
                 pace_s: float = 0.0) -> None:
        self.run = Run(label)
        self.threads = [
            threading.Thread(target=_Front(world, self.run, front, pace_s), name="front", daemon=True),
            threading.Thread(target=_Salesforce(world, self.run, salesforce, pace_s),
                             name="salesforce", daemon=True)]
        self._started = 0.0

    def start(self) -> Driver:
        self._started = time.monotonic()
        for t in self.threads:
            t.start()
        return self

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def join(self, timeout_s: float = 600) -> Run:
        for t in self.threads:
            t.join(timeout_s)
        self.run.seconds = time.monotonic() - self._started
        assert not self.running, "the people did not finish their changes"
        assert not self.run.errors, self.run.errors
        return self.run


def drive(world: World, label: str, front: int, salesforce: int, pace_s: float = 0.0) -> Run:
    return Driver(world, label, front, salesforce, pace_s).start().join()


def describe(run: Run) -> dict[str, Any]:
    return {"front": dict(run.front_changes), "salesforce": dict(run.sf_changes),
            "seconds": round(run.seconds, 1)}
