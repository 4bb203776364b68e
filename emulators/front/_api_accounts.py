"""Account routes (spec tag "Accounts"): list, create, fetch, update and delete accounts, the
contacts of an account (list, add, remove by id or contact alias) and the account custom
field definitions.

What the spec says, and what the emulator does with it:
- ``{account_id}`` takes the id or an alias: ``alt:domain:<domain>``, ``alt:ext_id:<id>``
  (the spec names "the account domain or external ID"; the alias names are Front's docs);
- create answers 201 with the account, update answers **200 with the account** (contacts
  answer 204), delete and the contacts writes answer 204;
- ``custom_fields`` must name account custom fields (``GET /accounts/custom_fields``) with
  values of their type, else 400; PATCH replaces the whole set (fields left out are erased,
  as the spec's AccountPatch says);
- ``GET /accounts`` takes ``limit``/``page_token``/``sort_by``/``sort_order`` only: the spec
  declares no ``q`` for it, so a ``q[...]`` is refused (400) rather than ignored;
- ``contact_ids`` may be ids or contact aliases (``alt:email:…``); one unknown contact
  refuses the whole call (404) and changes nothing (upstream behaviour unconfirmed).

Unconfirmed upstream, chosen here: an external id or a domain belongs to one account (409
naming the owner, like contact handles), because the aliases could not name one account
otherwise; a contact may be in several accounts; adding a contact that is already in the
account, or removing one that is not, is accepted and changes nothing; accounts emit no
events (Front's event types are conversation-scoped).
"""

from __future__ import annotations

from typing import Any

from emulators.front import _render as render
from emulators.front._context import Ctx, Reply, listing, validate_custom_fields
from emulators.front._errors import bad_request, conflict
from emulators.front._query import paginate
from emulators.front._store import FrontState

__all__ = ["ROUTES"]


def _domains(ctx: Ctx) -> list[str] | None:
    raw = ctx.str_list("domains")
    if raw is None:
        return None
    out: list[str] = []
    for n, d in enumerate(raw):
        if not d.strip():
            raise bad_request(f"domains[{n}] must not be empty")
        if d.strip().lower() not in (x.lower() for x in out):
            out.append(d.strip())
    return out


def _conflicts(state: FrontState, account_id: str | None, external_id: str | None,
               domains: list[str] | None) -> None:
    owners: list[str] = []
    wanted = {d.lower() for d in domains or []}
    for other in state.accounts.values():
        if other["id"] == account_id:
            continue
        if (external_id is not None and other["external_id"] == external_id) \
                or wanted & {d.lower() for d in other["domains"]}:
            owners.append(other["id"])
    if owners:
        raise conflict("Your request contains a conflict with the account(s): "
                       + ", ".join(owners))


def _apply(ctx: Ctx, account: dict[str, Any]) -> None:
    """Fields shared by create and PATCH; each one present replaces the whole value."""
    body = ctx.obj()
    name = ctx.field("name", str)
    if name is not None and not name.strip():
        raise bad_request("name must not be empty")
    description = ctx.field("description", str)
    domains = _domains(ctx)
    fields = (validate_custom_fields(ctx.state, "account", body["custom_fields"])
              if "custom_fields" in body else None)
    _conflicts(ctx.state, account["id"], None, domains)
    if name is not None:
        account["name"] = name.strip()
    if description is not None:
        account["description"] = description
    if domains is not None:
        account["domains"] = domains
    if fields is not None:
        account["custom_fields"] = fields  # omitted fields are erased (AccountPatch)


def create_account(ctx: Ctx) -> Reply:
    state = ctx.state
    ctx.field("name", str, required=True)
    external_id = ctx.field("external_id", str)
    if external_id is not None and not external_id.strip():
        raise bad_request("external_id must not be empty")
    now = state.now()
    account: dict[str, Any] = {"id": None, "name": "", "description": None, "domains": [],
                               "external_id": external_id, "custom_fields": {},
                               "contact_ids": [], "created_at": now, "updated_at": now}
    _apply(ctx, account)
    _conflicts(state, None, external_id, None)
    account["id"] = aid = state.new_id("account")
    state.accounts[aid] = account
    return Reply(201, render.account(account))


def get_account(ctx: Ctx) -> Reply:
    return Reply(200, render.account(ctx.state.account(ctx.params["account_id"])))


def update_account(ctx: Ctx) -> Reply:
    account = ctx.state.account(ctx.params["account_id"])
    updated = dict(account)
    _apply(ctx, updated)  # all-or-nothing: validate on a copy
    updated["updated_at"] = ctx.state.now()
    account.update(updated)
    return Reply(200, render.account(account))


def delete_account(ctx: Ctx) -> Reply:
    account = ctx.state.account(ctx.params["account_id"])
    ctx.state.accounts.pop(account["id"], None)  # its contacts stay
    return Reply(204)


def list_accounts(ctx: Ctx) -> Reply:
    q = ctx.query.allow()
    sort_key = q.get("sort_by") or "created_at"
    desc = q.descending(("created_at", "updated_at"))
    page, nxt = paginate(list(ctx.state.accounts.values()), lambda a: (a[sort_key], a["id"]),
                         q, ctx.path, q.limit(100), desc)
    return listing(ctx.path, [render.account(a) for a in page], nxt)


def list_account_contacts(ctx: Ctx) -> Reply:
    state = ctx.state
    account = state.account(ctx.params["account_id"])
    q = ctx.query.allow()
    sort_key = q.get("sort_by") or "created_at"
    desc = q.descending(("created_at", "updated_at"))
    members = [state.contacts[c] for c in account["contact_ids"] if c in state.contacts]
    page, nxt = paginate(members, lambda c: (c[sort_key], c["id"]), q, ctx.path, q.limit(100),
                         desc)
    return listing(ctx.path, [render.contact(state, c) for c in page], nxt)


def _contact_ids(ctx: Ctx) -> list[str]:
    refs = ctx.str_list("contact_ids")
    if refs is None:
        raise bad_request("contact_ids is required", ["contact_ids: required"])
    if not refs:
        raise bad_request("contact_ids must not be empty")
    # Every reference resolved before anything changes: one unknown contact is a 404.
    return list(dict.fromkeys(str(ctx.state.contact(r)["id"]) for r in refs))


def add_account_contacts(ctx: Ctx) -> Reply:
    account = ctx.state.account(ctx.params["account_id"])
    for cid in _contact_ids(ctx):
        if cid not in account["contact_ids"]:
            account["contact_ids"].append(cid)
    return Reply(204)


def remove_account_contacts(ctx: Ctx) -> Reply:
    account = ctx.state.account(ctx.params["account_id"])
    gone = set(_contact_ids(ctx))
    account["contact_ids"] = [c for c in account["contact_ids"] if c not in gone]
    return Reply(204)


def list_account_custom_fields(ctx: Ctx) -> Reply:
    defs = ctx.state.custom_fields.get("account", [])
    return listing(ctx.path, [render.custom_field(d) for d in defs], paginated=False)


_A = "/accounts/{account_id}"
ROUTES: list[tuple[str, str, Any, str, bool]] = [
    ("GET", "/accounts", list_accounts, "list-accounts", False),
    ("POST", "/accounts", create_account, "create-account", False),
    ("GET", "/accounts/custom_fields", list_account_custom_fields,
     "list-account-custom-fields", False),
    ("GET", _A, get_account, "fetch-an-account", False),
    ("PATCH", _A, update_account, "update-account", False),
    ("DELETE", _A, delete_account, "delete-an-account", False),
    ("GET", f"{_A}/contacts", list_account_contacts, "list-account-contacts", False),
    ("POST", f"{_A}/contacts", add_account_contacts, "add-contact-to-account", False),
    ("DELETE", f"{_A}/contacts", remove_account_contacts, "remove-contact-from-account",
     False),
]
