"""The Salesforce sink's ledger: what makes a Chatter note happen once, and a record update
never happen again on a replay.

A FeedItem has no external id, so Salesforce cannot refuse a second one the way it refuses a
second Task. The sink keeps, on the compacted ``salesforce.ledger`` topic keyed by the
command's ``idempotency_key`` (``schemas/sink_ledger.avsc``):

  INTENT   written, and acknowledged by the broker, before the create call;
  APPLIED  written after Salesforce answered with the FeedItem's Id.

A key at APPLIED is never posted again: a replay or a re-delivery is audited SKIPPED with
the Id the ledger holds, at no API cost.

The window: between Salesforce creating the FeedItem and the broker acknowledging APPLIED
(the call in flight, a timeout that hides a success, a SIGKILL right after the answer). A
key found at INTENT when the sink starts, or after a call whose outcome it did not learn, is
in that window. Only for those keys, before posting again, the sink reads the parents'
FeedItems created since the INTENT (one SOQL query for the batch) and takes one with the
same parent and the same body that no APPLIED entry claims as the one it made: APPLIED with
that Id, audited SKIPPED. None found: the call never took effect and it is posted. Nothing
visible is added to the note for this (no marker in the body): a note posted twice on
purpose by two commands is two keys, and the claimed-Ids rule keeps them apart.

Record updates (``UpdateRecord``: a tag's stage move, a handle added to a Contact) go in
the same ledger, APPLIED only, once Salesforce answered: an update is not a duplicate the
way a second note is (writing the same value twice changes nothing), but a replay that
writes it again after a person changed the record undoes that person's change. A key at
APPLIED is skipped like a note's. The window (a crash between the answer and APPLIED)
re-applies that one update, as before.

Every sink instance reads the whole ledger at start (all partitions): a command may move
to another member after a rebalance. The ledger holds one small entry per note ever posted
and per record update ever applied.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from frontforce.kafka import read_to_end
from frontforce.serialization import Serde

INTENT, APPLIED = "INTENT", "APPLIED"


@dataclass
class Entry:
    key: str
    state: str
    target_id: str | None
    result_id: str | None
    at_ms: int


class Ledger:
    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        # Keys whose INTENT this process wrote and whose call answered "not created" for
        # the record: known not applied, posted again without a check.
        self.known_absent: set[str] = set()

    def load(self, bootstrap: str, topic: str, serde: Serde, timeout_s: float = 60.0) -> int:
        n = 0
        for m in read_to_end(bootstrap, topic, timeout_s):
            if m.value() is None:
                self.entries.pop((m.key() or b"").decode(), None)
                continue
            self.observe(serde.decode(topic, m.value()))
            n += 1
        return n

    def observe(self, rec: dict[str, Any]) -> None:
        at = rec["at"]
        at_ms = int(at.timestamp() * 1000) if isinstance(at, datetime) else int(at)
        state = rec["state"]
        old = self.entries.get(rec["idempotency_key"])
        if old is not None and old.state == APPLIED and state != APPLIED:
            return  # APPLIED is final
        self.entries[rec["idempotency_key"]] = Entry(rec["idempotency_key"], state,
                                                     rec.get("target_id"), rec.get("result_id"),
                                                     at_ms)

    def get(self, key: str) -> Entry | None:
        return self.entries.get(key)

    def claimed(self) -> set[str]:
        return {e.result_id for e in self.entries.values() if e.state == APPLIED and e.result_id}

    @staticmethod
    def record(key: str, command_id: str, operation: str, state: str, target_id: str | None,
               result_id: str | None) -> dict[str, Any]:
        return {"idempotency_key": key, "command_id": command_id, "operation": operation,
                "state": state, "target_id": target_id, "result_id": result_id, "marker": None,
                "at": int(time.time() * 1000)}
