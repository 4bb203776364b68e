"""Contact routes (fact sheet §3.4, §4): get/patch/delete by id or alias, create with
handle-uniqueness 409s, whole-set replacement of custom_fields/links/lists on PATCH, handles,
merge, list, a contact's conversations.

Contacts emit no events: Front's event types are all conversation-scoped.
"""

from __future__ import annotations

from typing import Any

from emulators.front import _render as render
from emulators.front._api_conversations import conversations_page
from emulators.front._context import Ctx, Reply, listing, validate_custom_fields
from emulators.front._errors import FrontError, bad_request, conflict
from emulators.front._query import paginate
from emulators.front._store import FrontState, handle_key

__all__ = ["ROUTES"]

HANDLE_SOURCES = ("twitter", "email", "phone", "facebook", "intercom", "front_chat", "custom")


def _handle(value: Any, where: str = "handle") -> dict[str, str]:
    if not isinstance(value, dict):
        raise bad_request(f"{where} must be an object with handle and source")
    handle, source = value.get("handle"), value.get("source")
    if not isinstance(handle, str) or not handle.strip():
        raise bad_request(f"{where}.handle is required")
    if source not in HANDLE_SOURCES:
        raise bad_request(f"{where}.source must be one of: {', '.join(HANDLE_SOURCES)}")
    return {"handle": handle.strip(), "source": source}


def _conflict_for(state: FrontState, handles: list[dict[str, str]], owner: str | None) -> None:
    """Each (source, handle) belongs to at most one contact; the 409 names the owners
    (wording from an observed Front response, fact sheet §4)."""
    owners = []
    for h in handles:
        found = state.find_contact_by_handle(h["source"], h["handle"])
        if found is not None and found["id"] != owner and found["id"] not in owners:
            owners.append(found["id"])
    if owners:
        raise conflict("Your request contains a conflict with the contact(s): "
                       + ", ".join(owners))


def _list_ids(state: FrontState, names: list[str]) -> list[str]:
    """``list_names`` auto-creates missing contact lists."""
    ids = []
    for name in dict.fromkeys(names):
        found = next((g for g in state.contact_lists.values() if g["name"] == name), None)
        if found is None:
            gid = state.new_id("contact_list")
            found = state.contact_lists[gid] = {"id": gid, "name": name, "is_private": False}
        ids.append(found["id"])
    return ids


def _apply_common(ctx: Ctx, contact: dict[str, Any]) -> None:
    """Fields shared by create and PATCH; each one present replaces the whole value."""
    body = ctx.obj()
    name = ctx.field("name", str)
    description = ctx.field("description", str)
    links = ctx.str_list("links")
    list_names = ctx.str_list("list_names")
    if list_names is None:
        list_names = ctx.str_list("group_names")  # deprecated alias of list_names
    fields = (validate_custom_fields(ctx.state, "contact", body["custom_fields"])
              if "custom_fields" in body else None)
    if name is not None:
        contact["name"] = name
    if description is not None:
        contact["description"] = description
    if links is not None:
        contact["links"] = links
    if list_names is not None:
        contact["list_ids"] = _list_ids(ctx.state, list_names)
    if fields is not None:
        contact["custom_fields"] = fields  # omitted fields are erased (fact sheet §0.4)


def create_contact(ctx: Ctx) -> Reply:
    raw = ctx.field("handles", list, required=True)
    if not raw:
        raise bad_request("handles must not be empty")
    handles = [_handle(h, f"handles[{i}]") for i, h in enumerate(raw)]
    _conflict_for(ctx.state, handles, None)
    state = ctx.state
    cid = state.new_id("contact")
    now = state.now()
    contact: dict[str, Any] = {"id": cid, "name": handles[0]["handle"], "description": "", "links": [],
               "list_ids": [], "handles": [], "custom_fields": {}, "is_private": False,
               "created_at": now, "updated_at": now}
    for h in handles:
        if handle_key(h["source"], h["handle"]) not in _keys(contact):
            contact["handles"].append(h)
    _apply_common(ctx, contact)
    state.contacts[cid] = contact
    return Reply(201, render.contact(state, contact))


def _keys(contact: dict[str, Any]) -> set[tuple[str, str]]:
    return {handle_key(h["source"], h["handle"]) for h in contact["handles"]}


def get_contact(ctx: Ctx) -> Reply:
    return Reply(200, render.contact(ctx.state, ctx.state.contact(ctx.params["contact_id"])))


def update_contact(ctx: Ctx) -> Reply:
    contact = ctx.state.contact(ctx.params["contact_id"])
    updated = dict(contact)
    _apply_common(ctx, updated)  # all-or-nothing: validate on a copy
    updated["updated_at"] = ctx.state.now()
    contact.update(updated)
    return Reply(204)


def _drop_contact(state: FrontState, contact_id: str, replacement: str | None = None) -> None:
    state.contacts.pop(contact_id, None)
    for account in state.accounts.values():  # a merged-in contact's accounts go to the target
        if contact_id in account["contact_ids"]:
            kept = [c for c in account["contact_ids"] if c != contact_id]
            if replacement is not None and replacement not in kept:
                kept.append(replacement)
            account["contact_ids"] = kept
    for conv in state.conversations.values():
        if conv["recipient"] and conv["recipient"].get("contact_id") == contact_id:
            conv["recipient"]["contact_id"] = replacement
    for msg in state.messages.values():
        for r in msg["recipients"]:
            if r.get("contact_id") == contact_id:
                r["contact_id"] = replacement


def delete_contact(ctx: Ctx) -> Reply:
    contact = ctx.state.contact(ctx.params["contact_id"])
    _drop_contact(ctx.state, contact["id"])
    return Reply(204)


def add_handle(ctx: Ctx) -> Reply:
    contact = ctx.state.contact(ctx.params["contact_id"])
    h = _handle(ctx.obj())
    _conflict_for(ctx.state, [h], contact["id"])
    if handle_key(h["source"], h["handle"]) not in _keys(contact):
        contact["handles"].append(h)
        contact["updated_at"] = ctx.state.now()
    return Reply(204)


def delete_handle(ctx: Ctx) -> Reply:
    contact = ctx.state.contact(ctx.params["contact_id"])
    h = _handle(ctx.obj())
    force = ctx.field("force", bool, default=False)
    key = handle_key(h["source"], h["handle"])
    remaining = [x for x in contact["handles"] if handle_key(x["source"], x["handle"]) != key]
    if len(remaining) == len(contact["handles"]):
        raise FrontError(404, "Unknown handle for this contact")
    if not remaining:
        if not force:
            raise bad_request("Cannot delete the last handle of a contact without force")
        _drop_contact(ctx.state, contact["id"])  # force deletes the contact itself
        return Reply(204)
    contact["handles"] = remaining
    contact["updated_at"] = ctx.state.now()
    return Reply(204)


def merge_contacts(ctx: Ctx) -> Reply:
    """Merged-in contacts are deleted; their handles, links and lists join the target, and
    the target's custom field values win (fact sheet §0.7: never rely on crd_ ids alone)."""
    state = ctx.state
    refs = ctx.str_list("contact_ids")
    if refs is None:
        raise bad_request("contact_ids is required")
    target_ref = ctx.field("target_contact_id", str)
    contacts = [state.contact(r) for r in refs]
    target = state.contact(target_ref) if target_ref else (contacts[0] if contacts else None)
    others = [c for c in {c["id"]: c for c in contacts}.values()
              if target is None or c["id"] != target["id"]]
    if target is None or not others:
        raise bad_request("contact_ids must name at least two distinct contacts")
    for other in others:
        keys = _keys(target)
        target["handles"] += [h for h in other["handles"]
                              if handle_key(h["source"], h["handle"]) not in keys]
        target["links"] += [lk for lk in other["links"] if lk not in target["links"]]
        target["list_ids"] += [g for g in other["list_ids"] if g not in target["list_ids"]]
        target["custom_fields"] = {**other["custom_fields"], **target["custom_fields"]}
        _drop_contact(state, other["id"], target["id"])
    target["updated_at"] = state.now()
    return Reply(200, render.contact(state, target))


def list_contacts(ctx: Ctx) -> Reply:
    q = ctx.query.allow("updated_after", "updated_before")
    after, before = q.q_time("updated_after"), q.q_time("updated_before")
    items = [c for c in ctx.state.contacts.values()
             if (after is None or c["updated_at"] > after)
             and (before is None or c["updated_at"] < before)]
    sort_key = q.get("sort_by") or "created_at"
    desc = q.descending(("created_at", "updated_at"))
    page, nxt = paginate(items, lambda c: (c[sort_key], c["id"]), q, ctx.path, q.limit(100),
                         desc)
    return listing(ctx.path, [render.contact(ctx.state, c) for c in page], nxt)


def contact_conversations(ctx: Ctx) -> Reply:
    contact = ctx.state.contact(ctx.params["contact_id"])
    keys = _keys(contact)
    convs = [c for c in ctx.state.conversations.values() if c["recipient"] and (
        c["recipient"].get("contact_id") == contact["id"]
        or any(k[1] == handle_key(k[0], c["recipient"]["handle"])[1] for k in keys))]
    return conversations_page(ctx, convs)


def list_contact_custom_fields(ctx: Ctx) -> Reply:
    defs = ctx.state.custom_fields.get("contact", [])
    return listing(ctx.path, [render.custom_field(d) for d in defs], paginated=False)


_K = "/contacts/{contact_id}"
ROUTES: list[tuple[str, str, Any, str, bool]] = [
    ("GET", "/contacts", list_contacts, "list-contacts", False),
    ("POST", "/contacts", create_contact, "create-contact", False),
    ("POST", "/contacts/merge", merge_contacts, "merge-contacts", False),
    ("GET", "/contacts/custom_fields", list_contact_custom_fields, "list-contact-custom-fields",
     False),
    ("GET", _K, get_contact, "get-contact", False),
    ("PATCH", _K, update_contact, "update-a-contact", False),
    ("DELETE", _K, delete_contact, "delete-a-contact", False),
    ("POST", f"{_K}/handles", add_handle, "add-contact-handle", False),
    ("DELETE", f"{_K}/handles", delete_handle, "delete-contact-handle", False),
    ("GET", f"{_K}/conversations", contact_conversations, "list-contact-conversations", False),
]
