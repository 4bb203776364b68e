"""Use case 3: Salesforce context in Front.

Each Salesforce Account becomes a Front account (found by its external id, the Account Id)
carrying ARR, tier, owner and open opportunities in custom fields, with its Contacts linked
to it; each of those Contacts' Front contact carries the same context in custom fields and a
link to the Contact in Salesforce. It is rebuilt from change events alone (no Salesforce
call): the account-context table (keyed by Account Id) keeps the fields of the Account, its
Opportunities and its Contacts, and the worker sends Front the new context when it differs
from the one sent last, within seconds of the change (Front's own sync runs daily).
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime
from typing import Any

from streams._rules import _ms

# Change-event fields kept per object (frontforce field -> Salesforce field name, as
# changed_fields names it).
TRACKED: dict[str, dict[str, str]] = {
    "Account": {"name": "Name", "website": "Website", "owner_id": "OwnerId",
                "annual_revenue": "AnnualRevenue", "type": "Type", "industry": "Industry"},
    "Opportunity": {"name": "Name", "stage_name": "StageName", "amount": "Amount",
                    "is_closed": "IsClosed", "close_date": "CloseDate", "account_id": "AccountId"},
    "Contact": {"email": "Email", "account_id": "AccountId", "first_name": "FirstName",
                "last_name": "LastName"},
}
_FULL = frozenset({"SNAPSHOT", "CREATE", "UNDELETE"})


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def apply_change(held: dict[str, Any] | None, change: dict[str, Any]) -> dict[str, Any] | None:
    """The context record of one Salesforce record after ``change``: the fields it carries
    (all of them for a full record, the changed ones for an UPDATE) over what was held.
    Custom fields named in ``salesforce_source.custom_fields`` are kept under their API
    names. None: the change is older than what is held (nothing to do)."""
    ts = _ms(change.get("commit_timestamp"))
    if held is not None and held["ts"] > ts:
        return None
    ctype = change["change_type"]
    if ctype == "DELETE":
        return {"fields": dict((held or {}).get("fields") or {}), "ts": ts, "deleted": True}
    if ctype not in (*_FULL, "UPDATE"):
        return None
    full = ctype in _FULL
    changed = set(change.get("changed_fields") or []) | set(change.get("nulled_fields") or [])
    fields = {} if full else dict((held or {}).get("fields") or {})
    for ours, sf in TRACKED.get(change["sobject"], {}).items():
        if full or sf in changed or any(c.startswith(f"{sf}.") for c in changed):
            fields[sf] = _text(change.get(ours))
    for name, value in (change.get("custom_fields") or {}).items():
        if full or name in changed:
            fields[name] = _text(value)
    return {"fields": fields, "ts": ts, "deleted": False}


def _money(amount: float) -> str:
    return f"{amount:,.0f}"


def render(ctx: dict[str, Any], owner_name: str | None, field_map: dict[str, str],
           ) -> dict[str, str | None]:
    """The Front custom fields of an account (and of its contacts), by ``field_map`` (Front
    field name -> what it shows: a Salesforce Account field such as ``AnnualRevenue`` or
    ``Tier__c``, ``owner`` for the owner's name, ``open_opportunities`` for "N open, total
    amount, stages")."""
    account = (ctx.get("account") or {}).get("fields") or {}
    opps = [o["fields"] for o in (ctx.get("opportunities") or {}).values()
            if not o.get("deleted") and o["fields"].get("IsClosed") != "true"]
    out: dict[str, str | None] = {}
    for front_name, source in field_map.items():
        if source == "owner":
            out[front_name] = owner_name
        elif source == "open_opportunities":
            total = sum(float(o.get("Amount") or 0) for o in opps)
            stages = sorted({o.get("StageName") or "?" for o in opps})
            out[front_name] = (f"{len(opps)} open, {_money(total)} ({', '.join(stages)})"
                               if opps else "none")
        else:
            out[front_name] = account.get(source)
    return out


def contact_emails(ctx: dict[str, Any]) -> list[str]:
    return sorted({str(c["fields"]["Email"]).strip().lower()
                   for c in (ctx.get("contacts") or {}).values()
                   if not c.get("deleted") and c["fields"].get("Email")})


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _origin(source_event_id: str) -> dict[str, str]:
    return {"system": "frontforce", "source_event_id": source_event_id,
            "correlation_id": source_event_id}


def account_command(account_id: str, ctx: dict[str, Any], fields: dict[str, str | None],
                    domain: str | None, source_event_id: str, version: str) -> dict[str, Any]:
    """UpsertAccount for the Front sink. ``version`` is the transition and the change that
    made it, ``<digest sent before>-><digest now>@<change>``: the same change handled again
    (a replay) is the same command, which the sink's ledger applies once; a context going
    back to an earlier one (A, B, A: an Opportunity's stage moved and reverted) is a new
    command, and so is the same transition made again by a later change (A, B, A, B: without
    the change in the key the second A->B was skipped as applied, drills/outage_run.py)."""
    account = (ctx.get("account") or {}).get("fields") or {}
    return {
        "command_id": digest("UpsertAccount", account_id, version),
        "idempotency_key": f"UpsertAccount/{account_id}/{version}",
        "created_at": int(time.time() * 1000),
        "origin": _origin(source_event_id),
        "operation": ("frontforce.commands.front.UpsertAccount", {
            "external_id": account_id,
            "name": account.get("Name") or account_id,
            "domains": [domain] if domain else [],
            "description": None,
            "custom_fields": fields,
            "contact_handles": contact_emails(ctx),
        }),
    }


def contact_command(email: str, fields: dict[str, str | None], links: list[str],
                    source_event_id: str, version: str,
                    missed_account: str | None = None) -> dict[str, Any]:
    """UpdateContactFields: the Account's context on one of its Contacts in Front; keyed by
    the transition like ``account_command``. ``missed_account``: the command sent when the
    Contact's Front contact first writes in (``if_missed``): the Front sink applies it, and
    links the contact to that Account's Front account, only if the context sent before
    found no Front contact for the handle."""
    return {
        "command_id": digest("UpdateContactFields", email, version),
        "idempotency_key": f"UpdateContactFields/{email}/{version}",
        "created_at": int(time.time() * 1000),
        "origin": _origin(source_event_id),
        "operation": ("frontforce.commands.front.UpdateContactFields", {
            "contact_handle": email, "custom_fields": fields, "links": links,
            "if_missed": missed_account is not None, "account_external_id": missed_account}),
    }
