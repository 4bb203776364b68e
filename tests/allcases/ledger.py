"""What the emulators recorded: every write, who made it, and when the pipeline is quiet.

Salesforce. Every committed write of Account, Contact, Lead, Opportunity, Case, User and
Task is a change event in the org's event stream, read here through the emulator's public
Pub/Sub API (``/data/ChangeEvents`` from EARLIEST, as any subscriber would): its header
names ``commitUser`` (the User whose session wrote) and ``changeOrigin``
(``com/salesforce/api/rest/59.0;client=frontforce`` for frontforce's sinks, which send
``Sforce-Call-Options: client=frontforce``; no ``client=`` for a person's REST call; empty
for an admin seed). FeedItems (Chatter notes) have no change events: they are read as rows
(``CreatedById``, ``CreatedDate``); only frontforce posts them here.

Front. The emulator logs every public API request (method, path, status, time) and keeps
every event with its ``source._meta.type``: ``api`` for a write made with an API token (the
Front sink's), ``teammate`` for Tom's, ``inboxes`` for a customer's message. Only the Front
sink writes through the public API with a token here (the tests read through ``/__admin``),
so every public write request is frontforce's.
"""

from __future__ import annotations

import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx

from eventbus import pubsub_api_pb2 as pb
from eventbus import pubsub_api_pb2_grpc as pb_grpc
from frontforce.lag import describe_lag, wait_settled
from frontforce.localstack import LocalStack
from frontforce.salesforce import CALL_CLIENT
from sources.salesforce._pubsub import PubSubClient, Subscription

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Change:
    """One change event: one write of one or more records (one transaction, same change)."""

    replay_id: int
    entity: str
    change_type: str
    record_ids: tuple[str, ...]
    commit_user: str
    change_origin: str
    changed_fields: tuple[str, ...]
    commit_ms: int
    body: dict[str, Any]

    @property
    def ours(self) -> bool:
        """Written by frontforce: its client id in changeOrigin."""
        return f"client={CALL_CLIENT}" in self.change_origin.replace(" ", "")

    def value(self, name: str) -> Any:
        return self.body.get(name)


class Emulators:
    """Read-only views of both emulators (admin API and Salesforce's Pub/Sub API)."""

    def __init__(self, stack: LocalStack) -> None:
        assert stack.ca_file is not None
        self.stack = stack
        self.sf = httpx.Client(base_url=stack.salesforce_url, timeout=60,
                               verify=ssl.create_default_context(cafile=str(stack.ca_file)))
        self.front = httpx.Client(base_url=stack.front_url, timeout=60)
        self._pubsub: PubSubClient | None = None
        self._channel: grpc.Channel | None = None
        self.changes: list[Change] = []  # everything read so far, in replay order
        self._last = 0

    # -- Salesforce --------------------------------------------------------------------
    def cdc_tip(self) -> int:
        r = self.sf.get("/__admin/cdc")
        r.raise_for_status()
        return int(r.json()["latest_replay_id"])

    def sf_api_calls(self) -> int:
        r = self.sf.get("/__admin/stats")
        r.raise_for_status()
        return int(r.json()["api_calls"])

    def rows(self, sobject: str) -> list[dict[str, Any]]:
        r = self.sf.get(f"/__admin/records/{sobject}")
        r.raise_for_status()
        return [row for row in r.json()["records"] if not row.get("IsDeleted")]

    def integration_user(self) -> str:
        r = self.sf.get("/__admin/config")
        r.raise_for_status()
        return str(r.json()["integration_user_id"])

    def read_changes(self, timeout_s: float = 60) -> list[Change]:
        """Every change event up to the current tip (earlier reads are kept: only the new
        ones are fetched, resuming after the last replay id read)."""
        tip = self.cdc_tip()
        if self._last >= tip:
            return self.changes
        if self._pubsub is None:
            settings = self.stack.settings()
            self._pubsub = PubSubClient(settings)
            ca = settings.salesforce.ca_bundle
            self._channel = grpc.secure_channel(
                settings.salesforce_source.pubsub_url,
                grpc.ssl_channel_credentials(ca.read_bytes() if ca else None))
        client = self._pubsub
        stub = pb_grpc.PubSubStub(self._channel)
        first = (pb.FetchRequest(topic_name="/data/ChangeEvents", replay_preset=pb.CUSTOM,
                                 replay_id=self._last.to_bytes(8, "big"), num_requested=100)
                 if self._last else
                 pb.FetchRequest(topic_name="/data/ChangeEvents", replay_preset=pb.EARLIEST,
                                 num_requested=100))
        sub = Subscription(stub, client.metadata(), first)
        deadline = time.monotonic() + timeout_s
        try:
            for response in sub:
                for consumer_event in response.events:
                    ev = client.decode(consumer_event)
                    h = ev.header
                    self._last = int.from_bytes(ev.replay_id, "big")
                    self.changes.append(Change(
                        self._last, str(h["entityName"]), str(h["changeType"]),
                        tuple(h["recordIds"]), str(h.get("commitUser") or ""),
                        str(h.get("changeOrigin") or ""), tuple(h.get("changedFields") or ()),
                        int(h.get("commitTimestamp") or 0), ev.body))
                if self._last >= tip:
                    break
                if response.events:
                    sub.request(len(response.events))
                if time.monotonic() > deadline:
                    raise AssertionError(f"read change events up to {self._last}, not {tip}")
        finally:
            sub.close()
        return self.changes

    # -- Front -------------------------------------------------------------------------
    def front_state(self, events: bool = True) -> dict[str, Any]:
        r = self.front.get("/__admin/state", params={"events": 1} if events else None)
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def front_requests(self) -> list[dict[str, Any]]:
        r = self.front.get("/__admin/requests")
        r.raise_for_status()
        return list(r.json()["requests"])

    def drain_webhooks(self, timeout_s: float = 120) -> None:
        r = self.front.post("/__admin/webhooks/drain", json={"timeout": timeout_s})
        r.raise_for_status()
        assert r.json()["drained"], "Front's webhook deliveries did not drain"

    def close(self) -> None:
        self.sf.close()
        self.front.close()
        if self._channel is not None:
            self._channel.close()
        if self._pubsub is not None:
            self._pubsub.close()


@dataclass
class Mark:
    """A point in time of both emulators: what came before it is not this run's."""

    replay_id: int
    front_events: int
    front_requests: int
    feed_items: frozenset[str]


def mark(em: Emulators) -> Mark:
    return Mark(em.cdc_tip(), int(em.front_state(events=False)["event_count"]),
                len(em.front_requests()), frozenset(f["Id"] for f in em.rows("FeedItem")))


def quiesce(em: Emulators, bootstrap: str, groups: dict[str, list[str]], timeout_s: float,
            quiet_s: float) -> float:
    """Until the pipeline is quiet: Front's webhooks delivered, every consumer group caught
    up, and for ``quiet_s`` (longer than the worker's unmatched wait, whose messages wait in
    a table, not in a topic) no new change event, Salesforce call, Front event or Front
    request. Returns the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout_s
    last: tuple[int, int, int, int] | None = None
    since = time.monotonic()
    while True:
        em.drain_webhooks()
        left = max(5.0, deadline - time.monotonic())
        assert wait_settled(bootstrap, groups, left, quiet_s=1.0), describe_lag(bootstrap, groups)
        now = (em.cdc_tip(), em.sf_api_calls(), int(em.front_state(events=False)["event_count"]),
               len(em.front_requests()))
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return time.monotonic() - started
        assert time.monotonic() < deadline, f"the pipeline did not quiet down in {timeout_s:.0f} s"
        time.sleep(1.0)


@dataclass
class Writes:
    """This run's writes at both emulators (after ``since``)."""

    sf_ours: list[Change] = field(default_factory=list)  # change events of frontforce's writes
    sf_people: list[Change] = field(default_factory=list)  # of anyone else's
    feed_items: list[dict[str, Any]] = field(default_factory=list)  # frontforce's notes
    front_events: list[dict[str, Any]] = field(default_factory=list)  # payloads, all sources
    front_writes: list[dict[str, Any]] = field(default_factory=list)  # public write requests
    front: dict[str, Any] = field(default_factory=dict)  # the emulator's state now

    def front_api_events(self) -> list[dict[str, Any]]:
        return [e for e in self.front_events
                if (e.get("source") or {}).get("_meta", {}).get("type") in ("api", "oauth_client")]

    def summary(self) -> dict[str, Any]:
        return {
            # records written (a change event may carry several: Salesforce merges the
            # same change of several records in one transaction into one event)
            "salesforce_writes_by_frontforce": dict(Counter(
                f"{c.entity} {c.change_type}" for c in self.sf_ours for _ in c.record_ids)) | (
                {"FeedItem CREATE": len(self.feed_items)} if self.feed_items else {}),
            "salesforce_changes_by_people": dict(Counter(
                f"{c.entity} {c.change_type}" for c in self.sf_people for _ in c.record_ids)),
            "front_writes_by_frontforce": dict(Counter(
                f"{w['method']} {_route(w['path'])}" for w in self.front_writes)),
            "front_events": dict(Counter(
                f"{e['type']} by {(e.get('source') or {}).get('_meta', {}).get('type')}"
                for e in self.front_events)),
        }


def _route(path: str) -> str:
    parts = path.strip("/").split("/")
    return "/" + "/".join("{id}" if i % 2 == 1 else p for i, p in enumerate(parts))


def writes_since(em: Emulators, since: Mark, integration_user: str) -> Writes:
    changes = [c for c in em.read_changes() if c.replay_id > since.replay_id]
    state = em.front_state(events=True)
    w = Writes(
        sf_ours=[c for c in changes if c.ours],
        sf_people=[c for c in changes if not c.ours],
        feed_items=[f for f in em.rows("FeedItem") if f["Id"] not in since.feed_items
                    and f.get("CreatedById") == integration_user],
        front_events=list(state.get("events") or [])[since.front_events:],
        front_writes=[r for r in em.front_requests()[since.front_requests:]
                      if r["method"] in WRITE_METHODS and 200 <= int(r["status"]) < 300],
        front=state)
    return w

