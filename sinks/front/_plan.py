"""Coalescing: what the pending commands of one flush window come to, per conversation and
per contact. Pure functions, no I/O.

Per conversation, in command order:
- tags: per tag, the last command wins; a tag whose first command in the window adds it and
  whose last removes it comes to nothing (it was brought and taken away inside the window:
  no call at all). Several tags go in one call.
- assignment: the last AssignConversation wins; earlier ones come to nothing.
- links: the distinct external URLs, up to 10 a call.
- comments: the bodies of one author, joined into one comment (each keeps its marker).
Per contact: custom fields merged in command order (a later value wins, null clears the
field), links added to the contact's own.
Per account (UpsertAccount, by external id): the last name, the last non-empty domains and
the last non-null description win; custom fields merged in command order as for contacts;
contact handles of every command, once each. What Front already holds is not written again.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

MARKER_PREFIX = "frontforce:"


def marker_for(idempotency_key: str) -> str:
    """Short text an AddComment body carries: the ledger check after a crash looks for it
    in the conversation's comments, and the loop guard sees our origin (frontforce) in it."""
    return f"[{MARKER_PREFIX}{hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]}]"


def comment_body(body: str, marker: str) -> str:
    return f"{body.rstrip()}\n\n{marker}"


@dataclass
class TagPlan:
    add: list[str] = field(default_factory=list)  # tag ids
    remove: list[str] = field(default_factory=list)
    # index of every command that has an effect (others came to nothing)
    effective: set[int] = field(default_factory=set)


def fold_tags(ops: list[tuple[int, str, list[str]]]) -> TagPlan:
    """``ops``: (command index, "add"|"remove", tag ids) in command order."""
    first: dict[str, str] = {}
    last: dict[str, tuple[str, list[int]]] = {}
    for idx, kind, tag_ids in ops:
        for t in dict.fromkeys(tag_ids):
            first.setdefault(t, kind)
            prev = last.get(t)
            # commands that set the tag's final state: the run of equal last commands
            last[t] = (kind, (prev[1] if prev and prev[0] == kind else []) + [idx])
    plan = TagPlan()
    for t, (kind, idxs) in last.items():
        if kind == "add":
            plan.add.append(t)
        elif first[t] == "add":
            continue  # added then removed inside the window: nothing to do
        else:
            plan.remove.append(t)
        plan.effective.update(idxs)
    return plan


def chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[n:n + size] for n in range(0, len(items), size)]


def join_comments(bodies: list[tuple[int, str]], max_chars: int) -> list[list[tuple[int, str]]]:
    """Group (command index, body) into comments of at most ``max_chars`` (a body longer
    than that stays alone: Front decides)."""
    groups: list[list[tuple[int, str]]] = []
    size = 0
    for idx, body in bodies:
        if groups and size + len(body) + 2 <= max_chars:
            groups[-1].append((idx, body))
            size += len(body) + 2
        else:
            groups.append([(idx, body)])
            size = len(body)
    return groups


def contact_ref(handle: str) -> str:
    """Front's alias for a contact handle: ``alt:email:`` or ``alt:phone:`` (fact sheet §1.4)."""
    h = handle.strip()
    return f"alt:email:{h.lower()}" if "@" in h else f"alt:phone:{h}"


def coerce(value: str, kind: str | None) -> Any:
    """A command's custom field value (a string) as the field's type wants it; unchanged when
    it does not convert (Front then refuses it and says why)."""
    try:
        if kind == "number":
            n = float(value)
            return int(n) if n.is_integer() and math.isfinite(n) else n
        if kind == "boolean":
            low = value.strip().lower()
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
        if kind == "datetime":
            try:
                return float(value)
            except ValueError:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        pass
    return value


def merge_contact(current_fields: dict[str, Any], current_links: list[str],
                  updates: list[tuple[dict[str, str | None], list[str]]],
                  types: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The contact's full custom_fields and links after ``updates`` (in order): what PATCH
    must send, since it replaces both wholesale (fact sheet §0.4)."""
    fields = dict(current_fields)
    links = list(current_links)
    for values, new_links in updates:
        for name, v in values.items():
            if v is None:
                fields.pop(name, None)
            else:
                fields[name] = coerce(v, types.get(name))
        for url in new_links:
            if url not in links:
                links.append(url)
    return fields, links


def handle_key(handle: str) -> str:
    """A handle as Front's aliases compare it: emails case-blind, phones as given."""
    h = handle.strip()
    return h.lower() if "@" in h else h


def merge_fields(current: dict[str, Any], updates: list[dict[str, str | None]],
                 types: dict[str, str]) -> dict[str, Any]:
    """The full custom_fields after ``updates`` (in order; null clears a field)."""
    fields = dict(current)
    for values in updates:
        for name, v in values.items():
            if v is None:
                fields.pop(name, None)
            else:
                fields[name] = coerce(v, types.get(name))
    return fields


@dataclass
class AccountPlan:
    """What the UpsertAccount commands of one account in one window come to."""

    external_id: str
    name: str
    domains: list[str] | None  # None: leave Front's as they are
    description: str | None  # None: leave Front's as it is
    updates: list[dict[str, str | None]]  # custom field values, in command order
    handles: list[str]  # contact handles to link, distinct, in command order


def fold_accounts(ops: list[dict[str, Any]]) -> AccountPlan:
    """``ops``: the UpsertAccount fields of one external id, in command order."""
    domains: list[str] | None = None
    description: str | None = None
    handles: dict[str, str] = {}
    for op in ops:
        given = [d.strip() for d in op.get("domains") or [] if d.strip()]
        if given:
            domains = list({d.lower(): d for d in given}.values())
        if op.get("description") is not None:
            description = op["description"]
        for h in op.get("contact_handles") or []:
            if h.strip():
                handles.setdefault(handle_key(h), h.strip())
    return AccountPlan(external_id=ops[-1]["external_id"].strip(), name=ops[-1]["name"].strip(),
                       domains=domains, description=description,
                       updates=[dict(op.get("custom_fields") or {}) for op in ops],
                       handles=list(handles.values()))


def account_create_body(plan: AccountPlan, types: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = {"name": plan.name, "external_id": plan.external_id,
                            "custom_fields": merge_fields({}, plan.updates, types)}
    if plan.domains is not None:
        body["domains"] = plan.domains
    if plan.description is not None:
        body["description"] = plan.description
    return body


def account_changes(current: dict[str, Any], plan: AccountPlan,
                    types: dict[str, str]) -> dict[str, Any]:
    """The PATCH body that brings the Front account ``current`` to ``plan``: only what
    differs, custom_fields whole (PATCH replaces the set; others' fields are sent back).
    Empty: Front holds it all already, no call."""
    body: dict[str, Any] = {}
    if plan.name != current.get("name"):
        body["name"] = plan.name
    if plan.description is not None and plan.description != (current.get("description") or ""):
        body["description"] = plan.description
    if plan.domains is not None and {d.lower() for d in plan.domains} \
            != {d.lower() for d in current.get("domains") or []}:
        body["domains"] = plan.domains
    have = dict(current.get("custom_fields") or {})
    fields = merge_fields(have, plan.updates, types)
    if fields != have:
        body["custom_fields"] = fields
    return body
