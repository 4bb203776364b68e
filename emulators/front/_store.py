"""FrontState: one emulated Front company — its data, event log, configuration and tokens —
with JSON persistence.

Records are stored in a compact internal form (ids and references, epoch-second floats) and
rendered to Front's wire shapes by ``_render``. Everything here is JSON-serialisable so that
``save``/``load`` is a plain dump. All access goes through ``lock``: the server thread, the
webhook worker and in-process tests share one state.
"""

from __future__ import annotations

import bisect
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emulators.front._errors import FrontError, not_found
from emulators.front._ids import make_id

__all__ = ["DEFAULT_CONFIG", "DEFAULT_TOKEN", "FrontState"]

DEFAULT_TOKEN = "front-emulator-token"
_FORMAT_VERSION = 1

DEFAULT_CONFIG: dict[str, Any] = {
    # Company plan budget, requests per minute (50 Starter / 100 Professional / 200 Enterprise).
    "rpm": 100,
    # Partner OAuth tokens have their own bucket (fact sheet §6.1).
    "oauth_rpm": 120,
    # Length of a rate-limit window; tests shorten it to watch a reset without waiting 60 s.
    "window_seconds": 60.0,
    # Tier-2 per-resource guard: N requests per second per conversation on write routes.
    "burst_enabled": True,
    "burst_rps": 5,
    # POST /links guard (60 per 60 s, fact sheet §6.2).
    "links_per_minute": 60,
    # Some live 429s came without retry-after (fact sheet §0.9): let clients test the fallback.
    "omit_retry_after": False,
    # limit above the route maximum: 400 (default, surfaces client bugs) or silently capped.
    "clamp_limit": False,
    # One client saw 400 for fractional q[after]/q[before] (observed, §2.3); off by default
    # because the spec allows 3 decimals.
    "reject_fractional_q_time": False,
    # Inbound mail from an unknown handle creates a contact (unconfirmed upstream).
    "auto_create_contacts": True,
    # Shifts the company clock (emitted_at, created_at) for backfill/watermark tests.
    "clock_offset": 0.0,
}

_COLLECTIONS = ("teammates", "inboxes", "tags", "links", "contacts", "contact_lists",
                "accounts", "conversations", "messages", "comments", "subscriptions")


class FrontState:
    def __init__(self, *, token: str = DEFAULT_TOKEN, company_name: str = "Acme",
                 rpm: int | None = None) -> None:
        self.lock = threading.RLock()
        self.serial = 0
        # Ids given by a seed (a recorded world): the generator skips them. Kept across resets
        # and restarts, so that a generated id never equals one a seed used or will reuse.
        self.reserved: set[str] = set()
        self.company = {"id": make_id("company", self._next()), "name": company_name}
        self.config: dict[str, Any] = dict(DEFAULT_CONFIG)
        if rpm is not None:
            self.config["rpm"] = rpm
        self.tokens: dict[str, str] = {token: "api"}
        # Identities that author API writes without an author_id (fact sheet §3.5: bot teammates).
        self.bots: dict[str, str] = {}
        self._init_data()
        for kind in ("api", "oauth_client"):
            self.bots[kind] = self.add_teammate(
                email=f"{kind}-bot@front.emulator", username=f"{kind}_bot", first_name="API",
                last_name="Bot", type=kind)
        # Called with each new event payload (relative links); set by the webhook dispatcher.
        self.publish: Callable[[dict[str, Any]], None] | None = None

    def _init_data(self) -> None:
        self.teammates: dict[str, dict[str, Any]] = {}
        self.inboxes: dict[str, dict[str, Any]] = {}
        self.tags: dict[str, dict[str, Any]] = {}
        self.links: dict[str, dict[str, Any]] = {}
        self.contacts: dict[str, dict[str, Any]] = {}
        self.contact_lists: dict[str, dict[str, Any]] = {}
        # {id, name, description, domains, external_id, custom_fields, contact_ids,
        #  created_at, updated_at}
        self.accounts: dict[str, dict[str, Any]] = {}
        self.conversations: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, dict[str, Any]] = {}
        self.comments: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        # {"conversation": [{id, name, type, description, values?}], "contact": [...], ...}
        self.custom_fields: dict[str, list[dict[str, Any]]] = {}
        # Append-only: {"seq", "payload" (rendered, relative links), "conversation_id", "inbox_ids"}
        self.events: list[dict[str, Any]] = []
        self.event_index: dict[str, int] = {}
        # (emitted_at, seq) ascending: /events pages by bisection instead of sorting the log
        # on every request (a 10k-event backfill walks 667 pages).
        self.event_keys: list[tuple[float, int]] = []
        self.last_emitted = 0.0

    # ---- clock and ids -------------------------------------------------------------------

    def _next(self) -> int:
        self.serial += 1
        return self.serial

    def new_id(self, kind: str) -> str:
        while True:
            candidate = make_id(kind, self._next())
            if candidate not in self.reserved:
                return candidate

    def has_id(self, ident: str) -> bool:
        """Whether ``ident`` names anything in the company now (any kind: prefixes differ)."""
        if ident == self.company["id"] or ident in self.event_index:
            return True
        if any(ident in getattr(self, name) for name in _COLLECTIONS):
            return True
        return any(f["id"] == ident for defs in self.custom_fields.values() for f in defs)

    def now(self) -> float:
        return round(time.time() + float(self.config["clock_offset"]), 3)

    def emitted_at(self, at: float | None = None) -> float:
        """Event timestamps: epoch seconds with ms precision, strictly increasing unless a test
        back-dates an event explicitly, so that newest-first order is unambiguous."""
        if at is not None:
            return round(float(at), 3)
        value = max(self.now(), round(self.last_emitted + 0.001, 3))
        self.last_emitted = value
        return value

    # ---- creation helpers (used by seeding and by the API) -------------------------------

    # ``id``: keep a given id (a seeded world); the caller has checked it (``_world``).

    def add_teammate(self, *, email: str, username: str | None = None, first_name: str = "",
                     last_name: str = "", is_admin: bool = False, type: str = "user",
                     is_available: bool = True, is_blocked: bool = False,
                     custom_fields: dict[str, Any] | None = None, id: str | None = None
                     ) -> str:
        tid = id or self.new_id("teammate")
        self.teammates[tid] = {
            "id": tid, "email": email, "username": username or email.split("@")[0],
            "first_name": first_name, "last_name": last_name, "is_admin": is_admin,
            "is_available": is_available, "is_blocked": is_blocked, "type": type,
            "custom_fields": custom_fields or {},
        }
        return tid

    def add_inbox(self, *, name: str, address: str | None = None, is_private: bool = False,
                  is_public: bool | None = None, custom_fields: dict[str, Any] | None = None,
                  id: str | None = None) -> str:
        iid = id or self.new_id("inbox")
        self.inboxes[iid] = {"id": iid, "name": name, "address": address,
                             "is_private": is_private,
                             "is_public": not is_private if is_public is None else is_public,
                             "custom_fields": custom_fields or {}}
        return iid

    def add_tag(self, *, name: str, description: str | None = None,
                highlight: str | None = None, is_visible_in_conversation_lists: bool = False,
                is_private: bool = False, created_at: float | None = None,
                updated_at: float | None = None, id: str | None = None) -> str:
        tid = id or self.new_id("tag")
        created = self.now() if created_at is None else created_at
        self.tags[tid] = {"id": tid, "name": name, "description": description,
                          "highlight": highlight, "is_private": is_private,
                          "is_visible_in_conversation_lists": is_visible_in_conversation_lists,
                          "created_at": created,
                          "updated_at": created if updated_at is None else updated_at}
        return tid

    def add_link(self, *, external_url: str, name: str | None = None, type: str = "web",
                 custom_fields: dict[str, Any] | None = None, id: str | None = None) -> str:
        lid = id or self.new_id("link")
        self.links[lid] = {"id": lid, "name": name or external_url, "type": type,
                           "external_url": external_url, "custom_fields": custom_fields or {}}
        return lid

    def add_custom_field(self, resource: str, *, name: str, type: str = "string",
                         description: str = "", values: list[Any] | None = None,
                         id: str | None = None) -> str:
        """``values``: enum values as strings or as Front's ``{"value", "label"}`` objects."""
        fid = id or self.new_id("custom_field")
        entry: dict[str, Any] = {"id": fid, "name": name, "type": type, "description": description}
        if values is not None:
            entry["values"] = [v if isinstance(v, dict) else {"value": v, "label": v}
                               for v in values]
        self.custom_fields.setdefault(resource, []).append(entry)
        return fid

    # ---- lookups (ids and resource aliases, fact sheet §1.4) -----------------------------

    def teammate(self, ref: str) -> dict[str, Any]:
        if ref.startswith("alt:email:"):
            email = ref[len("alt:email:"):].strip().lower()
            for t in self.teammates.values():
                if t["email"].lower() == email:
                    return t
            raise not_found("teammate")
        found = self.teammates.get(ref)
        if found is None:
            raise not_found("teammate")
        return found

    def find_contact_by_handle(self, source: str, handle: str) -> dict[str, Any] | None:
        key = handle_key(source, handle)
        for c in self.contacts.values():
            if any(handle_key(h["source"], h["handle"]) == key for h in c["handles"]):
                return c
        return None

    def contact(self, ref: str) -> dict[str, Any]:
        if ref.startswith("alt:"):
            _, _, rest = ref.partition(":")
            source, sep, handle = rest.partition(":")
            found = self.find_contact_by_handle(source, handle) if sep else None
        else:
            found = self.contacts.get(ref)
        if found is None:
            raise not_found("contact")
        return found

    def account(self, ref: str) -> dict[str, Any]:
        """By id, or by the aliases Front documents for accounts: ``alt:domain:<domain>`` and
        ``alt:ext_id:<external id>`` (dev.frontapp.com resource aliases; the spec says "the
        account domain or external ID" without naming them). Other aliases: 404."""
        found: dict[str, Any] | None = None
        if ref.startswith("alt:domain:"):
            domain = ref[len("alt:domain:"):].strip().lower()
            found = next((a for a in self.accounts.values()
                          if domain in (d.lower() for d in a["domains"])), None)
        elif ref.startswith("alt:ext_id:"):
            ext = ref[len("alt:ext_id:"):]
            found = next((a for a in self.accounts.values() if a["external_id"] == ext), None)
        elif not ref.startswith("alt:"):
            found = self.accounts.get(ref)
        if found is None:
            raise not_found("account")
        return found

    def message(self, ref: str) -> dict[str, Any]:
        if ref.startswith("alt:uid:"):
            uid = ref[len("alt:uid:"):]
            for m in self.messages.values():
                if m["message_uid"] == uid:
                    return m
            raise not_found("message")
        found = self.messages.get(ref)
        if found is None:
            raise not_found("message")
        return found

    def get(self, collection: str, ref: str, what: str) -> dict[str, Any]:
        found: dict[str, Any] | None = getattr(self, collection).get(ref)
        if found is None:
            raise not_found(what)
        return found

    def conversation(self, ref: str) -> dict[str, Any]:
        """The conversation, or FrontError(301) pointing at the survivor when it was merged."""
        conv = self.get("conversations", ref, "conversation")
        if conv.get("merged_into"):
            survivor = conv
            while survivor.get("merged_into"):
                survivor = self.conversations[survivor["merged_into"]]
            raise FrontError(301, "Conversation was merged", headers={"x-merged-into": survivor["id"]})
        return conv

    def default_teammate(self) -> dict[str, Any]:
        for t in self.teammates.values():
            if t["type"] == "user":
                return t
        raise FrontError(400, "no teammate: seed one first")

    # ---- events --------------------------------------------------------------------------

    def append_event(self, payload: dict[str, Any], conversation_id: str | None,
                     inbox_ids: list[str], publish: bool = True) -> None:
        """``publish=False``: into the log (Events API) without a webhook (a seeded past)."""
        seq = len(self.events)
        self.event_index[payload["id"]] = seq
        self.events.append({"seq": seq, "payload": payload,
                            "conversation_id": conversation_id, "inbox_ids": list(inbox_ids)})
        bisect.insort(self.event_keys, (payload["emitted_at"], seq))
        if publish and self.publish is not None:
            self.publish(payload)

    def event(self, event_id: str) -> dict[str, Any]:
        index = self.event_index.get(event_id)
        if index is None:
            raise not_found("event")
        return self.events[index]

    # ---- lifecycle -----------------------------------------------------------------------

    def mark(self) -> dict[str, Any]:
        """A rollback point for an all-or-nothing admin write (a seed only adds records)."""
        return {"company": dict(self.company), "reserved": set(self.reserved),
                "keys": {name: set(getattr(self, name)) for name in _COLLECTIONS},
                "fields": {res: len(defs) for res, defs in self.custom_fields.items()},
                "events": len(self.events), "last_emitted": self.last_emitted}

    def rollback(self, mark: dict[str, Any]) -> None:
        """Forget what was added since ``mark`` (the serial stays: ids are never reused)."""
        self.company, self.reserved = mark["company"], mark["reserved"]
        self.last_emitted = mark["last_emitted"]
        for name, keys in mark["keys"].items():
            collection = getattr(self, name)
            for key in [k for k in collection if k not in keys]:
                del collection[key]
        for res in list(self.custom_fields):
            kept = mark["fields"].get(res, 0)
            if kept:
                del self.custom_fields[res][kept:]
            else:
                del self.custom_fields[res]
        count = mark["events"]
        for entry in self.events[count:]:
            self.event_index.pop(entry["payload"]["id"], None)
        del self.events[count:]
        self.event_keys = [k for k in self.event_keys if k[1] < count]

    def reset(self) -> None:
        """Clean company: data, events and webhook subscriptions go; identity, tokens, API bots,
        configuration, the id serial and the reserved (seeded) ids stay (ids are never handed out
        twice, and a recorded world can be seeded again)."""
        bots = {tid: self.teammates[tid] for tid in self.bots.values()}
        self._init_data()
        self.teammates.update(bots)

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in _COLLECTIONS}
        return {"version": _FORMAT_VERSION, "serial": self.serial, "company": self.company,
                "config": self.config, "tokens": self.tokens, "bots": self.bots,
                "custom_fields": self.custom_fields, "events": self.events,
                "last_emitted": self.last_emitted, "reserved": sorted(self.reserved), **data}

    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json()))
        os.replace(tmp, path)  # atomic: a crash mid-save never leaves half a file

    @classmethod
    def load(cls, path: Path) -> FrontState:
        raw = json.loads(Path(path).read_text())
        if raw.get("version") != _FORMAT_VERSION:
            raise ValueError(f"unsupported state file version {raw.get('version')}")
        state = cls.__new__(cls)
        state.lock = threading.RLock()
        state.publish = None
        state._init_data()
        state.serial = raw["serial"]
        state.reserved = set(raw.get("reserved", []))  # absent in files written before seeds
        state.company = raw["company"]
        state.config = {**DEFAULT_CONFIG, **raw["config"]}
        state.tokens = raw["tokens"]
        state.bots = raw["bots"]
        state.custom_fields = raw["custom_fields"]
        state.events = raw["events"]
        state.event_index = {e["payload"]["id"]: i for i, e in enumerate(state.events)}
        state.event_keys = sorted((e["payload"]["emitted_at"], i)
                                  for i, e in enumerate(state.events))
        state.last_emitted = raw["last_emitted"]
        for name in _COLLECTIONS:
            setattr(state, name, raw.get(name, {}))  # files written before accounts had none
        return state


def handle_key(source: str, handle: str) -> tuple[str, str]:
    """Handles are unique per (source, handle); emails compare case-insensitively (ours)."""
    value = handle.strip()
    return source, value.lower() if source == "email" else value

