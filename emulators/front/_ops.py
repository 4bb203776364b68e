"""Conversation mutations and the events they emit.

Shared by the public API (actor = the token's API identity, ``source._meta.type`` ``api`` or
``oauth_client``) and the admin "simulate" endpoints (actor = a teammate or a rule), so that
both paths produce identical event payloads — our own writes come back as events, and the
source type is what tells them apart (fact sheet §0.11).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from emulators.front import _render as render
from emulators.front._errors import FrontError, bad_request, not_found
from emulators.front._ids import message_uid
from emulators.front._store import FrontState

__all__ = ["Actor", "add_comment", "add_links", "add_tags", "assign", "check_ids", "emit", "inbound",
           "live_conversation", "merge", "move", "new_conversation", "outbound", "remove_links", "remove_tags",
           "replace_tags", "set_custom_fields", "set_status"]

CHANNEL_TYPES = {"email": ("email", "email"), "sms": ("sms", "phone"),
                 "whatsapp": ("whatsapp", "phone"), "custom": ("custom", "custom"),
                 "front_chat": ("front_chat", "front_chat")}


@dataclass(frozen=True)
class Actor:
    kind: str  # "api" | "oauth_client" | "teammate" | "rule"
    id: str  # teammate id (the bot teammate for API tokens) or rule id
    name: str = ""

    def source(self, state: FrontState) -> dict[str, Any]:
        if self.kind == "rule":
            return {"_meta": {"type": "rule"}, "data": render.rule(self.id, self.name)}
        return {"_meta": {"type": self.kind}, "data": render.teammate(state.teammates[self.id])}


def emit(state: FrontState, etype: str, conv: dict[str, Any], source: dict[str, Any],
         target: tuple[str, Any] | None = None, at: float | None = None) -> str:
    eid = state.new_id("event")
    payload = {
        "_links": {"self": f"/events/{eid}"}, "id": eid, "type": etype,
        "emitted_at": state.emitted_at(at), "source": source,
        # Events without a target (archive, reopen, unassign…) carry null (spec gap, allowlisted).
        "target": {"_meta": {"type": target[0]}, "data": target[1]} if target else None,
        "conversation": render.conversation(state, conv),
    }
    state.append_event(payload, conv["id"], conv["inbox_ids"])
    return eid


def live_conversation(state: FrontState, ref: str) -> dict[str, Any]:
    """For admin simulations: follow merges instead of answering 301."""
    conv = state.get("conversations", ref, "conversation")
    while conv.get("merged_into"):
        conv = state.conversations[conv["merged_into"]]
    return conv


def _touch(state: FrontState, conv: dict[str, Any]) -> None:
    conv["updated_at"] = state.now()


# ---- status, assignment, inbox ------------------------------------------------------------

WRITE_STATUSES = ("archived", "open", "deleted", "spam")


def set_status(state: FrontState, conv: dict[str, Any], status: str, actor: Actor,
               at: float | None = None) -> list[str]:
    if status not in WRITE_STATUSES:
        raise bad_request(f"status must be one of: {', '.join(WRITE_STATUSES)}")
    old = conv["state"]
    if status == old:
        return []
    if status == "archived":
        etype = "archive"
    elif status in ("deleted", "spam"):
        etype = "trash"  # spam has no event type of its own (unconfirmed)
    else:
        etype = "restore" if old in ("deleted", "spam") else "reopen"
    conv["state"] = status
    _touch(state, conv)
    return [emit(state, etype, conv, actor.source(state), at=at)]


def assign(state: FrontState, conv: dict[str, Any], teammate_ref: str | None, actor: Actor,
           at: float | None = None) -> list[str]:
    new_id = None
    if teammate_ref:
        try:
            new_id = state.teammate(teammate_ref)["id"]
        except FrontError:
            raise bad_request(f"Unknown teammate {teammate_ref}") from None
    if new_id == conv["assignee_id"]:
        return []
    conv["assignee_id"] = new_id
    _touch(state, conv)
    if new_id is None:
        return [emit(state, "unassign", conv, actor.source(state), at=at)]
    target = ("teammate", render.teammate(state.teammates[new_id]))
    return [emit(state, "assign", conv, actor.source(state), target, at=at)]


def move(state: FrontState, conv: dict[str, Any], inbox_id: str, actor: Actor) -> list[str]:
    if inbox_id not in state.inboxes:
        raise bad_request(f"Unknown inbox {inbox_id}")
    if conv["inbox_ids"] == [inbox_id]:
        return []
    conv["inbox_ids"] = [inbox_id]
    _touch(state, conv)
    target = ("inboxes", render.inbox(state.inboxes[inbox_id]))
    return [emit(state, "move", conv, actor.source(state), target)]


# ---- tags and links -------------------------------------------------------------------------

def check_ids(state: FrontState, collection: str, ids: Any, what: str) -> list[str]:
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise bad_request(f"{what}_ids must be an array of ids")
    unknown = [i for i in ids if i not in getattr(state, collection)]
    if unknown:
        raise not_found(f"{what} {', '.join(unknown)}")
    return list(dict.fromkeys(ids))


def add_tags(state: FrontState, conv: dict[str, Any], tag_ids: Any, actor: Actor,
             at: float | None = None) -> list[str]:
    events = []
    for tid in check_ids(state, "tags", tag_ids, "tag"):
        if tid not in conv["tag_ids"]:
            conv["tag_ids"].append(tid)
            _touch(state, conv)
            events.append(emit(state, "tag", conv, actor.source(state),
                               ("tag", render.tag(state.tags[tid])), at=at))
    return events


def remove_tags(state: FrontState, conv: dict[str, Any], tag_ids: Any, actor: Actor,
                at: float | None = None) -> list[str]:
    events = []
    for tid in check_ids(state, "tags", tag_ids, "tag"):
        if tid in conv["tag_ids"]:
            conv["tag_ids"].remove(tid)
            _touch(state, conv)
            events.append(emit(state, "untag", conv, actor.source(state),
                               ("tag", render.tag(state.tags[tid])), at=at))
    return events


def replace_tags(state: FrontState, conv: dict[str, Any], tag_ids: Any, actor: Actor
                 ) -> list[str]:
    """PATCH tag_ids: the list is the complete new set (fact sheet §0.4)."""
    wanted = check_ids(state, "tags", tag_ids, "tag")
    gone = [t for t in conv["tag_ids"] if t not in wanted]
    return remove_tags(state, conv, gone, actor) + add_tags(state, conv, wanted, actor)


def add_links(state: FrontState, conv: dict[str, Any], link_ids: list[str], actor: Actor,
              at: float | None = None) -> list[str]:
    events = []
    for lid in check_ids(state, "links", link_ids, "link"):
        if lid not in conv["link_ids"]:
            conv["link_ids"].append(lid)
            _touch(state, conv)
            events.append(emit(state, "link_added", conv, actor.source(state),
                               ("link", render.link(state.links[lid])), at=at))
    return events


def remove_links(state: FrontState, conv: dict[str, Any], link_ids: list[str], actor: Actor,
                 at: float | None = None) -> list[str]:
    events = []
    for lid in check_ids(state, "links", link_ids, "link"):
        if lid in conv["link_ids"]:
            conv["link_ids"].remove(lid)
            _touch(state, conv)
            events.append(emit(state, "link_removed", conv, actor.source(state),
                               ("link", render.link(state.links[lid])), at=at))
    return events


def link_for_url(state: FrontState, url: str, name: str | None = None) -> dict[str, Any]:
    """A link is identified by its external URL: reuse one, or create a ``web`` link."""
    for lk in state.links.values():
        if lk["external_url"] == url:
            return lk
    return state.links[state.add_link(external_url=url, name=name)]


# ---- custom fields ------------------------------------------------------------------------

def set_custom_fields(state: FrontState, conv: dict[str, Any], fields: dict[str, Any],
                      actor: Actor) -> list[str]:
    """Replace the whole set (omitted fields are erased), one event per changed field."""
    old = conv["custom_fields"]
    conv["custom_fields"] = dict(fields)
    changed = sorted(k for k in set(old) | set(fields) if old.get(k) != fields.get(k))
    if changed:
        _touch(state, conv)
    defs = {d["name"]: d for d in state.custom_fields.get("conversation", [])}
    return [emit(state, "custom_field_updated", conv, actor.source(state),
                 ("custom_field", render.custom_field(defs[name])))
            for name in changed if name in defs]


# ---- comments and messages ---------------------------------------------------------------

def add_comment(state: FrontState, conv: dict[str, Any], body: str, author_id: str,
                actor: Actor, is_pinned: bool = False, at: float | None = None
                ) -> tuple[dict[str, Any], str]:
    cid = state.new_id("comment")
    posted = state.emitted_at(at)
    com = {"id": cid, "conversation_id": conv["id"], "author_id": author_id, "body": body,
           "posted_at": posted, "is_pinned": is_pinned}
    state.comments[cid] = com
    _touch(state, conv)
    eid = emit(state, "comment", conv, actor.source(state),
               ("comment", render.comment(state, com)), at=posted)
    return com, eid


def _pick_inbox(state: FrontState, inbox_id: str | None, to: str | None) -> dict[str, Any]:
    if inbox_id:
        return state.get("inboxes", inbox_id, "inbox")
    for i in state.inboxes.values():
        if to and (i.get("address") or "").lower() == to.lower():
            return i
    if state.inboxes:
        return next(iter(state.inboxes.values()))
    return state.inboxes[state.add_inbox(name="Support", address=to or "support@acme.example")]


def _contact_for(state: FrontState, source: str, handle: str, name: str | None
                 ) -> str | None:
    found = state.find_contact_by_handle(source, handle)
    if found is not None:
        return str(found["id"])
    if not state.config["auto_create_contacts"]:
        return None
    cid = state.new_id("contact")
    now = state.now()
    state.contacts[cid] = {"id": cid, "name": name or handle, "description": "",
                           "links": [], "list_ids": [], "handles": [{"handle": handle,
                                                                     "source": source}],
                           "custom_fields": {}, "is_private": False, "created_at": now,
                           "updated_at": now}
    return cid


def _create_conversation(state: FrontState, box: dict[str, Any], ts: float, subject: str,
                         recipient: dict[str, Any]) -> dict[str, Any]:
    cid = state.new_id("conversation")
    conv = {"id": cid, "type": "conversation", "subject": subject, "state": "open",
            "assignee_id": None, "tag_ids": [], "link_ids": [], "custom_fields": {},
            "is_private": box["is_private"], "created_at": ts, "updated_at": ts,
            "inbox_ids": [box["id"]], "recipient": recipient}
    state.conversations[cid] = conv
    return conv


def new_conversation(state: FrontState, *, handle: str, name: str | None, role: str,
                     subject: str, inbox_id: str | None = None, at: float | None = None
                     ) -> dict[str, Any]:
    """An empty conversation with ``handle`` as main recipient (a teammate's new message)."""
    box = _pick_inbox(state, inbox_id, None)
    contact_id = _contact_for(state, "email", handle, name)
    return _create_conversation(state, box, state.emitted_at(at), subject, {
        "handle": handle, "name": name, "role": role, "contact_id": contact_id})


def _new_message(state: FrontState, conv: dict[str, Any], *, mtype: str, inbound: bool,
                 text: str, subject: str, author_id: str | None,
                 recipients: list[dict[str, Any]], at: float) -> dict[str, Any]:
    mid = state.new_id("message")
    msg = {"id": mid, "conversation_id": conv["id"], "message_uid": message_uid(mid),
           "type": mtype, "is_inbound": inbound, "created_at": at, "subject": subject,
           "text": text, "body": f"<p>{html.escape(text)}</p>", "author_id": author_id,
           "recipients": recipients, "version": f"{message_uid(mid)}-{int(at * 1000)}"}
    state.messages[mid] = msg
    conv["last_message_id"] = mid
    return msg


def inbound(state: FrontState, *, sender: str, name: str | None = None, to: str | None = None,
            inbox_id: str | None = None, subject: str = "", text: str = "",
            channel: str = "email", conversation_id: str | None = None,
            at: float | None = None) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A customer message arrives: new conversation (or a reply in ``conversation_id``),
    an inbound message, a contact link when the handle is known, and an ``inbound`` event."""
    if channel not in CHANNEL_TYPES:
        raise bad_request(f"channel must be one of: {', '.join(CHANNEL_TYPES)}")
    mtype, source = CHANNEL_TYPES[channel]
    box = _pick_inbox(state, inbox_id, to)
    contact_id = _contact_for(state, source, sender, name)
    ts = state.emitted_at(at)
    if conversation_id:
        conv = live_conversation(state, conversation_id)
        if conv["state"] != "open":
            conv["state"] = "open"  # a new inbound message brings a conversation back
        subject = subject or conv["subject"]
    else:
        conv = _create_conversation(state, box, ts, subject, {
            "handle": sender, "name": name, "role": "from", "contact_id": contact_id})
    recipients = [{"handle": sender, "name": name, "role": "from", "contact_id": contact_id},
                  {"handle": box.get("address") or box["name"], "name": box["name"],
                   "role": "to", "contact_id": None}]
    msg = _new_message(state, conv, mtype=mtype, inbound=True, text=text, subject=subject,
                       author_id=None, recipients=recipients, at=ts)
    conv["updated_at"] = ts
    if conv.get("waiting_since") is None:  # oldest unreplied message
        conv["waiting_since"] = ts
    source_data = [render.inbox(state.inboxes[i]) for i in conv["inbox_ids"]]
    eid = emit(state, "inbound", conv, {"_meta": {"type": "inboxes"}, "data": source_data},
               ("message", render.message(state, msg)), at=ts)
    return conv, msg, eid


def outbound(state: FrontState, conv: dict[str, Any], *, text: str, author_id: str,
             at: float | None = None) -> tuple[dict[str, Any], str]:
    """A teammate replies (``out_reply``) or starts the thread (``outbound``)."""
    replying = any(m["conversation_id"] == conv["id"] for m in state.messages.values())
    box = state.inboxes[conv["inbox_ids"][0]]
    ts = state.emitted_at(at)
    customer = conv["recipient"] or {"handle": "unknown", "name": None, "contact_id": None}
    recipients = [{"handle": box.get("address") or box["name"], "name": box["name"],
                   "role": "from", "contact_id": None},
                  {"handle": customer["handle"], "name": customer.get("name"), "role": "to",
                   "contact_id": customer.get("contact_id")}]
    msg = _new_message(state, conv, mtype="email", inbound=False, text=text,
                       subject=conv["subject"], author_id=author_id, recipients=recipients,
                       at=ts)
    conv["updated_at"] = ts
    conv["waiting_since"] = None
    source_data = [render.inbox(state.inboxes[i]) for i in conv["inbox_ids"]]
    eid = emit(state, "out_reply" if replying else "outbound", conv,
               {"_meta": {"type": "inboxes"}, "data": source_data},
               ("message", render.message(state, msg)), at=ts)
    return msg, eid


# ---- merge ------------------------------------------------------------------------------

def merge(state: FrontState, survivor: dict[str, Any], others: list[dict[str, Any]],
          actor: Actor) -> str:
    """Merge ``others`` into ``survivor``: their messages, comments, tags and links move over,
    their ids answer 301 from now on, and one ``conversations_merged`` event lists them."""
    if not others or any(o["id"] == survivor["id"] for o in others):
        raise bad_request("merge needs other conversations than the survivor")
    gone = []
    for other in others:
        for collection in (state.messages, state.comments):
            for item in collection.values():
                if item["conversation_id"] == other["id"]:
                    item["conversation_id"] = survivor["id"]
        survivor["tag_ids"] += [t for t in other["tag_ids"] if t not in survivor["tag_ids"]]
        survivor["link_ids"] += [lk for lk in other["link_ids"]
                                 if lk not in survivor["link_ids"]]
        other["merged_into"] = survivor["id"]
        gone.append(other["id"])
    _touch(state, survivor)
    return emit(state, "conversations_merged", survivor, actor.source(state),
                ("deleted_conversation_ids", gone))
