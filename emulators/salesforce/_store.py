"""OrgState: the emulated org's data, sessions, API-usage counters, with JSON persistence.

Records are plain dicts holding *every* field of their sObject in wire format (datetimes as
``…000+0000`` strings), so GET and persistence need no conversion. Records are replaced,
never mutated in place, which lets the undo journal (used for allOrNone rollbacks) keep the
previous dict by reference.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emulators.salesforce._cdc import (
    CDC_ENTITIES,
    DEFAULT_DELIVERY_LIMIT,
    DEFAULT_ENTITY_LIMIT,
    DEFAULT_RETENTION_HOURS,
    Change,
    ChangeLog,
)
from emulators.salesforce._faults import FaultInjector
from emulators.salesforce._ids import make_id
from emulators.salesforce._schema import SCHEMA
from emulators.salesforce._timefmt import format_datetime

__all__ = ["OrgState", "Locator", "DEFAULT_DAILY_LIMIT", "DEFAULT_PAGE_SIZE"]

DEFAULT_DAILY_LIMIT = 15_000  # Developer Edition allocation (fact sheet §6.1)
DEFAULT_PAGE_SIZE = 2_000
DEFAULT_SESSION_TIMEOUT = 7_200.0  # seconds of inactivity (Salesforce default 2 h)
_WINDOW_MINUTES = 24 * 60
_FORMAT_VERSION = 1
_MAX_LOCATORS = 50
_LOCATOR_IDLE = 15 * 60.0
# Serial numbers below this are reserved for the org's fixed records so that ids of the
# Organization and the integration user survive resets and restarts unchanged.
_ORG_SERIAL, _INTEGRATION_USER_SERIAL, _FIRST_RECORD_SERIAL = 1, 2, 1000
INTEGRATION_USERNAME = "integration@frontforce.emulator"


@dataclass
class Locator:
    """Server-side cursor for query pagination (``nextRecordsUrl``); memory-only."""

    records: list[dict[str, Any]]
    position: int
    total_size: int
    endpoint: str  # "query" or "queryAll"
    page_size: int
    last_used: float


class OrgState:
    """In-memory org. All access goes through ``lock`` (the server thread and tests share it)."""

    def __init__(
        self,
        *,
        daily_limit: int = DEFAULT_DAILY_LIMIT,
        page_size: int = DEFAULT_PAGE_SIZE,
        session_timeout: float = DEFAULT_SESSION_TIMEOUT,
        integration_username: str = INTEGRATION_USERNAME,
    ) -> None:
        self.lock = threading.RLock()
        self.config: dict[str, Any] = {
            "daily_limit": daily_limit,
            "page_size": page_size,
            "session_timeout": session_timeout,
            # Shifts the org's clock; lets tests age sessions or the 24 h usage window.
            "clock_offset": 0.0,
            # Standard Lead/Contact duplicate rules (alert rules: allowSave=true bypasses).
            "duplicate_rules": True,
            # Custom fields marked Unique (Task.Front_Message_Id__c, ...) refuse a second
            # record with the same value. False (a test switch): the org stops enforcing
            # it, so a client that writes twice leaves two rows instead of being saved by
            # the org (an upsert on the value then answers MULTIPLE_CHOICES). describe
            # still reports the field Unique; standard unique fields (User.Username) stay
            # enforced.
            "enforce_unique": True,
            # Change Data Capture: retention, delivered events per client id and rolling
            # 24 h, and the per-entity channel selection ceiling (0 = unlimited).
            "cdc_retention_hours": DEFAULT_RETENTION_HOURS,
            "cdc_delivery_limit": DEFAULT_DELIVERY_LIMIT,
            "cdc_entity_limit": DEFAULT_ENTITY_LIMIT,
        }
        self.org_id = make_id("00D", _ORG_SERIAL)
        self.integration_user_id = make_id("005", _INTEGRATION_USER_SERIAL)
        self.integration_username = integration_username
        self.serial = _FIRST_RECORD_SERIAL
        self.case_number = 1000
        self.sessions: dict[str, dict[str, Any]] = {}
        self.locators: OrderedDict[str, Locator] = OrderedDict()
        self._last_stamp = dt.datetime.min.replace(tzinfo=dt.UTC)
        self._journal: list[tuple[Any, ...]] | None = None
        self._depth = 0
        # Writes of the open transaction share one timestamp (as DML in Salesforce does),
        # which is also the commit timestamp of its change events.
        self._txn_now: dt.datetime | None = None
        # Changes of the open transaction, (sequence, change); turned into events on commit.
        self._pending: list[tuple[int, Change]] = []
        self._change_seq = 0
        self.cdc = ChangeLog()
        self.faults = FaultInjector()
        self._clear_data()

    # ----------------------------------------------------------------- lifecycle
    def _clear_data(self) -> None:
        self.tables: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in SCHEMA}
        self.deleted_log: dict[str, list[dict[str, str]]] = {name: [] for name in SCHEMA}
        self.usage: dict[int, int] = {}
        self.stats: dict[str, Any] = {"by_kind": {}, "refused": 0, "unauthorized": 0,
                                      "token_requests": 0, "faults": {}}
        self._ext_index: dict[tuple[str, str], dict[str, set[str]]] = {}
        self.locators.clear()
        self._pending = []
        self.cdc.clear()
        self.faults.clear()
        self._bootstrap()

    def _bootstrap(self) -> None:
        """The org always has its Organization row and the integration (Run-As) user."""
        stamp = format_datetime(self.now())
        system = {"IsDeleted": False, "CreatedDate": stamp, "LastModifiedDate": stamp,
                  "SystemModstamp": stamp, "CreatedById": self.integration_user_id,
                  "LastModifiedById": self.integration_user_id}
        org = self.blank("Organization") | system | {
            "Id": self.org_id, "Name": "Frontforce Emulator Org",
            "OrganizationType": "Developer Edition", "IsSandbox": False,
            "InstanceName": "EMU1"}
        user = self.blank("User") | system | {
            "Id": self.integration_user_id, "Username": self.integration_username,
            "Email": self.integration_username, "FirstName": "Frontforce",
            "LastName": "Integration", "Name": "Frontforce Integration", "Alias": "ffinteg",
            "IsActive": True, "UserType": "Standard"}
        self.put("Organization", org)
        self.put("User", user)

    def reset(self) -> None:
        """Drop all data, counters, change events and fault rules; keep config, sessions, the
        id serial and the replay-id counter (no id is ever reused)."""
        with self.lock:
            self._clear_data()

    # ----------------------------------------------------------------- clock & ids
    def now(self) -> dt.datetime:
        """Org time, millisecond precision, never going backwards between writes; fixed for
        the duration of a transaction. A transaction's time is after every earlier one's:
        two writes of one record never share a LastModifiedDate, so an update's change event
        always lists it (a Salesforce API call takes tens of milliseconds; the emulator can
        answer two within one)."""
        if self._depth > 0 and self._txn_now is not None:
            return self._txn_now
        raw = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.config["clock_offset"])
        raw = raw.replace(microsecond=raw.microsecond // 1000 * 1000)
        if self._depth > 0 and raw <= self._last_stamp:
            raw = self._last_stamp + dt.timedelta(milliseconds=1)
        elif raw < self._last_stamp:
            raw = self._last_stamp
        self._last_stamp = raw
        if self._depth > 0:
            self._txn_now = raw
        return raw

    def epoch(self) -> float:
        return time.time() + float(self.config["clock_offset"])

    def new_id(self, prefix: str) -> str:
        self.serial += 1
        return make_id(prefix, self.serial)

    def next_case_number(self) -> str:
        # Auto-numbers are not rolled back with the transaction, as in Salesforce.
        self.case_number += 1
        return f"{self.case_number:08d}"

    # ----------------------------------------------------------------- records
    @staticmethod
    def blank(type_: str) -> dict[str, Any]:
        return {f.name: None for f in SCHEMA[type_].fields}

    def get(self, type_: str, record_id: str) -> dict[str, Any] | None:
        return self.tables[type_].get(record_id)

    def put(self, type_: str, record: dict[str, Any]) -> None:
        table = self.tables[type_]
        old = table.get(record["Id"])
        if self._journal is not None:
            self._journal.append(("record", type_, record["Id"], old))
        if old is not None:
            self._unindex(type_, old)
        table[record["Id"]] = record
        self._index(type_, record)

    def log_delete(self, type_: str, record_id: str, when: str) -> None:
        if self._journal is not None:
            self._journal.append(("deleted_log", type_, len(self.deleted_log[type_])))
        self.deleted_log[type_].append({"id": record_id, "deletedDate": when})

    def live(self, type_: str) -> list[dict[str, Any]]:
        return [r for r in self.tables[type_].values() if not r["IsDeleted"]]

    # Unique/external-id index over live rows: (type, field) -> lower(value) -> ids.
    def _index(self, type_: str, record: dict[str, Any]) -> None:
        if record.get("IsDeleted"):
            return
        for f in SCHEMA[type_].fields:
            if (f.unique or f.external_id) and record.get(f.name) is not None:
                bucket = self._ext_index.setdefault((type_, f.name), {})
                bucket.setdefault(str(record[f.name]).lower(), set()).add(record["Id"])

    def _unindex(self, type_: str, record: dict[str, Any]) -> None:
        for f in SCHEMA[type_].fields:
            if (f.unique or f.external_id) and record.get(f.name) is not None:
                bucket = self._ext_index.get((type_, f.name), {})
                ids = bucket.get(str(record[f.name]).lower())
                if ids is not None:
                    ids.discard(record["Id"])
                    if not ids:
                        del bucket[str(record[f.name]).lower()]

    def find_by_field(self, type_: str, field: str, value: Any) -> list[str]:
        """Ids of live rows whose unique/external-id ``field`` equals ``value`` (case-insensitive)."""
        bucket = self._ext_index.get((type_, field), {})
        return sorted(bucket.get(str(value).lower(), set()))

    # ----------------------------------------------------------------- transactions
    def begin(self) -> int:
        """Open a (possibly nested) transaction; returns a savepoint for ``rollback``."""
        if self._journal is None:
            self._journal = []
        if self._depth == 0:
            self._txn_now = None
        self._depth += 1
        return len(self._journal)

    def rollback(self, savepoint: int) -> None:
        assert self._journal is not None
        while len(self._journal) > savepoint:
            entry = self._journal.pop()
            if entry[0] == "record":
                _, type_, record_id, old = entry
                current = self.tables[type_].get(record_id)
                if current is not None:
                    self._unindex(type_, current)
                if old is None:
                    self.tables[type_].pop(record_id, None)
                else:
                    self.tables[type_][record_id] = old
                    self._index(type_, old)
            elif entry[0] == "change":
                seq = entry[1]
                self._pending = [p for p in self._pending if p[0] < seq]
            else:
                _, type_, length = entry
                del self.deleted_log[type_][length:]

    def end(self) -> None:
        """Close a transaction level; leaving the outermost one commits it."""
        self._depth -= 1
        if self._depth == 0:
            self._journal = None
            self.commit_point()
            self._txn_now = None

    # ----------------------------------------------------------------- change data capture
    def capture(self, change: Change) -> None:
        """Record a row change of the open transaction (committed right away outside one)."""
        if change.entity not in CDC_ENTITIES:
            return
        self._change_seq += 1
        self._pending.append((self._change_seq, change))
        if self._journal is not None:
            self._journal.append(("change", self._change_seq))
        if self._depth == 0:
            self.commit_point()

    def commit_point(self) -> None:
        """Publish the pending changes as one transaction's change events.

        Called when the outermost transaction ends, and by /composite (allOrNone=false) and
        /composite/batch after each subrequest, whose subrequests commit independently.
        """
        if not self._pending:
            return
        changes = [change for _, change in self._pending]
        self._pending = []
        stamp = self._txn_now or self.now()
        self.cdc_purge()
        self.cdc.commit(changes, int(stamp.timestamp() * 1000))

    def epoch_ms(self) -> int:
        return int(self.epoch() * 1000)

    def cdc_purge(self) -> None:
        retention_ms = int(float(self.config["cdc_retention_hours"]) * 3_600_000)
        self.cdc.purge(self.epoch_ms(), retention_ms)

    # ----------------------------------------------------------------- API usage
    def _minute(self) -> int:
        return int(self.epoch() // 60)

    def api_used(self) -> int:
        """Calls in the rolling 24 h window (minute buckets)."""
        floor = self._minute() - _WINDOW_MINUTES
        for key in [k for k in self.usage if k <= floor]:
            del self.usage[key]
        return sum(self.usage.values())

    def count_call(self, kind: str, n: int = 1) -> None:
        minute = self._minute()
        self.usage[minute] = self.usage.get(minute, 0) + n
        by_kind = self.stats["by_kind"]
        by_kind[kind] = by_kind.get(kind, 0) + n

    def set_usage(self, used: int) -> None:
        """Admin: pretend ``used`` calls were made in the current minute."""
        self.usage = {self._minute(): used} if used > 0 else {}

    def limit_info(self) -> str:
        return f"api-usage={self.api_used()}/{self.config['daily_limit']}"

    # ----------------------------------------------------------------- locators
    def add_locator(self, locator: Locator) -> str:
        self._expire_locators()
        locator_id = self.new_id("01g")
        self.locators[locator_id] = locator
        while len(self.locators) > _MAX_LOCATORS:
            self.locators.popitem(last=False)
        return locator_id

    def take_locator(self, locator_id: str) -> Locator | None:
        self._expire_locators()
        locator = self.locators.get(locator_id)
        if locator is not None:
            locator.last_used = time.monotonic()
            self.locators.move_to_end(locator_id)
        return locator

    def _expire_locators(self) -> None:
        cutoff = time.monotonic() - _LOCATOR_IDLE
        for key in [k for k, v in self.locators.items() if v.last_used < cutoff]:
            del self.locators[key]

    # ----------------------------------------------------------------- persistence
    def to_json(self) -> dict[str, Any]:
        with self.lock:
            return {
                "format": _FORMAT_VERSION,
                "config": self.config,
                "org_id": self.org_id,
                "integration_user_id": self.integration_user_id,
                "integration_username": self.integration_username,
                "serial": self.serial,
                "case_number": self.case_number,
                "tables": self.tables,
                "deleted_log": self.deleted_log,
                "sessions": self.sessions,
                "usage": {str(k): v for k, v in self.usage.items()},
                "stats": self.stats,
                "cdc": self.cdc.to_json(),
            }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OrgState:
        if data.get("format") != _FORMAT_VERSION:
            raise ValueError(f"unsupported state format {data.get('format')!r}")
        state = cls(integration_username=data["integration_username"])
        state.config.update(data["config"])
        state.org_id = data["org_id"]
        state.integration_user_id = data["integration_user_id"]
        state.serial = data["serial"]
        state.case_number = data["case_number"]
        state.sessions = data["sessions"]
        state.usage = {int(k): v for k, v in data["usage"].items()}
        state.stats = data["stats"]
        state.stats.setdefault("faults", {})
        state.cdc = ChangeLog.from_json(data.get("cdc", {}))
        state.deleted_log = {name: list(data["deleted_log"].get(name, [])) for name in SCHEMA}
        state.tables = {name: {} for name in SCHEMA}
        state._ext_index = {}
        for name in SCHEMA:
            blank = cls.blank(name)
            for record in data["tables"].get(name, {}).values():
                # Fields added to the schema since the file was written read as null.
                state.put(name, blank | record)
        return state

    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json()), encoding="utf-8")
        os.replace(tmp, path)  # atomic: a crash mid-write leaves the previous file intact

    @classmethod
    def load(cls, path: Path) -> OrgState:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
