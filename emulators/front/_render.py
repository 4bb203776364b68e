"""Wire shapes of Front's resources (spec component schemas; fact sheet §3).

Renderers emit *relative* links ("/conversations/cnv_…"); ``absolutize`` turns them into
absolute URLs on the emulator's own base URL at the edge (HTTP response or webhook), because
Front's ``_links`` and ``_pagination.next`` are absolute (fact sheet §0.12) while our stored
events must survive a restart on another port.
"""

from __future__ import annotations

import re
from typing import Any

from emulators.front._store import FrontState

__all__ = [
    "absolutize", "account", "comment", "contact", "conversation", "custom_field", "inbox", "link",
    "message", "preview_event", "recipient", "relativize", "rule", "tag", "teammate",
]

# Not described by the spec, yet listed as required in TeammateResponse (value unconfirmed).
_LICENSE_TYPE = "regular"
_ABSOLUTE = re.compile(r"^https?://[^/?#]+(/[^#]*)$")


def absolutize(obj: Any, base: str, inside_links: bool = False) -> Any:
    if isinstance(obj, dict):
        return {k: absolutize(v, base, inside_links or k in ("_links", "_pagination"))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [absolutize(v, base, inside_links) for v in obj]
    if inside_links and isinstance(obj, str) and obj.startswith("/"):
        return base + obj
    return obj


def relativize(obj: Any, inside_links: bool = False) -> Any:
    """The inverse of ``absolutize`` for recorded payloads: absolute URLs inside ``_links``
    (``https://acme.api.frontapp.com/events/evt_…``) become paths, so that they are served
    and delivered on the emulator's base URL."""
    if isinstance(obj, dict):
        return {k: relativize(v, inside_links or k in ("_links", "_pagination"))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [relativize(v, inside_links) for v in obj]
    if inside_links and isinstance(obj, str):
        found = _ABSOLUTE.match(obj)
        if found:
            return found.group(1)
    return obj


def teammate(t: dict[str, Any]) -> dict[str, Any]:
    tid = t["id"]
    return {
        "_links": {"self": f"/teammates/{tid}",
                   "related": {"inboxes": f"/teammates/{tid}/inboxes",
                               "conversations": f"/teammates/{tid}/conversations"}},
        "id": tid, "email": t["email"], "username": t["username"],
        "first_name": t["first_name"], "last_name": t["last_name"],
        "is_admin": t["is_admin"], "is_available": t["is_available"],
        "is_blocked": t["is_blocked"], "type": t["type"],
        "custom_fields": dict(t["custom_fields"]), "license_type": _LICENSE_TYPE,
    }


def inbox(i: dict[str, Any]) -> dict[str, Any]:
    iid = i["id"]
    return {
        "_links": {"self": f"/inboxes/{iid}",
                   "related": {"teammates": f"/inboxes/{iid}/teammates",
                               "conversations": f"/inboxes/{iid}/conversations",
                               "channels": f"/inboxes/{iid}/channels"}},
        "id": iid, "name": i["name"], "is_private": i["is_private"],
        "is_public": i["is_public"], "custom_fields": dict(i["custom_fields"]),
    }


def tag(t: dict[str, Any]) -> dict[str, Any]:
    tid = t["id"]
    return {
        "_links": {"self": f"/tags/{tid}",
                   "related": {"conversations": f"/tags/{tid}/conversations", "owner": None,
                               "parent_tag": None, "children": None}},
        "id": tid, "name": t["name"], "description": t["description"],
        "highlight": t["highlight"], "is_private": t["is_private"],
        "is_visible_in_conversation_lists": t["is_visible_in_conversation_lists"],
        "created_at": t["created_at"], "updated_at": t["updated_at"],
    }


def link(lk: dict[str, Any]) -> dict[str, Any]:
    return {"_links": {"self": f"/links/{lk['id']}"}, "id": lk["id"], "name": lk["name"],
            "type": lk["type"], "external_url": lk["external_url"],
            "custom_fields": dict(lk["custom_fields"])}


def rule(rule_id: str, name: str) -> dict[str, Any]:
    return {"_links": {"self": f"/rules/{rule_id}", "related": {"owner": None}},
            "id": rule_id, "name": name, "actions": [], "is_private": False}


def custom_field(f: dict[str, Any]) -> dict[str, Any]:
    return {"_links": {"self": f"/custom_fields/{f['id']}"}, **f}


def contact_list(state: FrontState, gid: str) -> dict[str, Any]:
    g = state.contact_lists[gid]
    return {"_links": {"self": f"/contact_lists/{gid}",
                       "related": {"contacts": f"/contact_lists/{gid}/contacts"}},
            "id": gid, "name": g["name"], "is_private": g["is_private"]}


def contact(state: FrontState, c: dict[str, Any]) -> dict[str, Any]:
    cid = c["id"]
    lists = [contact_list(state, gid) for gid in c["list_ids"] if gid in state.contact_lists]
    out: dict[str, Any] = {
        "_links": {"self": f"/contacts/{cid}",
                   "related": {"notes": f"/contacts/{cid}/notes",
                               "conversations": f"/contacts/{cid}/conversations",
                               # Null when the contact has no owner (spec defect 5).
                               "owner": None}},
        "id": cid, "name": c["name"], "description": c["description"],
        "links": list(c["links"]), "groups": lists, "lists": lists,
        "handles": [{"handle": h["handle"], "source": h["source"]} for h in c["handles"]],
        "custom_fields": dict(c["custom_fields"]), "is_private": c["is_private"],
    }
    # avatar_url is a non-nullable string in the spec; we only emit it when there is one.
    if c.get("avatar_url"):
        out["avatar_url"] = c["avatar_url"]
    return out


def account(a: dict[str, Any]) -> dict[str, Any]:
    """AccountResponse: description, external_id and logo_url are null when not set."""
    aid = a["id"]
    return {
        "_links": {"self": f"/accounts/{aid}",
                   "related": {"contacts": f"/accounts/{aid}/contacts"}},
        "id": aid, "name": a["name"], "logo_url": None, "description": a["description"],
        "domains": list(a["domains"]), "external_id": a["external_id"],
        "custom_fields": dict(a["custom_fields"]), "created_at": a["created_at"],
        "updated_at": a["updated_at"],
    }


def recipient(r: dict[str, Any]) -> dict[str, Any]:
    contact_id = r.get("contact_id")
    return {"_links": {"related": {"contact": f"/contacts/{contact_id}" if contact_id else None}},
            "name": r.get("name"), "handle": r["handle"], "role": r["role"]}


def conversation(state: FrontState, c: dict[str, Any]) -> dict[str, Any]:
    cid = c["id"]
    assignee = state.teammates.get(c["assignee_id"]) if c["assignee_id"] else None
    last = c.get("last_message_id")
    related = {"events": f"/conversations/{cid}/events",
               "followers": f"/conversations/{cid}/followers",
               "messages": f"/conversations/{cid}/messages",
               "comments": f"/conversations/{cid}/comments",
               "inboxes": f"/conversations/{cid}/inboxes"}
    if last:
        related["last_message"] = f"/messages/{last}?referer=conversation"
    out: dict[str, Any] = {
        "_links": {"self": f"/conversations/{cid}", "related": related},
        "id": cid, "type": c["type"], "subject": c["subject"], "status": read_status(c),
        "ticket_ids": [], "assignee": teammate(assignee) if assignee else None,
        "recipient": recipient(c["recipient"]) if c["recipient"] else None,
        "tags": [tag(state.tags[t]) for t in c["tag_ids"] if t in state.tags],
        "links": [link(state.links[lk]) for lk in c["link_ids"] if lk in state.links],
        "custom_fields": dict(c["custom_fields"]), "created_at": c["created_at"],
        "updated_at": c["updated_at"], "is_private": c["is_private"],
        "scheduled_reminders": [], "metadata": {},
    }
    if c.get("waiting_since") is not None:
        out["waiting_since"] = c["waiting_since"]
    return out


def read_status(c: dict[str, Any]) -> str:
    """Read vocabulary (fact sheet §0.6): archived | unassigned | deleted | assigned.
    Spam has no read status of its own; Front files it away like trash (unconfirmed)."""
    if c["state"] in ("deleted", "spam"):
        return "deleted"
    if c["state"] == "archived":
        return "archived"
    return "assigned" if c["assignee_id"] else "unassigned"


def message(state: FrontState, m: dict[str, Any]) -> dict[str, Any]:
    mid = m["id"]
    author = state.teammates.get(m["author_id"]) if m.get("author_id") else None
    return {
        "_links": {"self": f"/messages/{mid}",
                   "related": {"conversation": f"/conversations/{m['conversation_id']}",
                               "message_seen": f"/messages/{mid}/seen"}},
        "id": mid, "message_uid": m["message_uid"], "type": m["type"],
        "is_inbound": m["is_inbound"],
        # Both null on ordinary messages (spec defects 4 and 5).
        "draft_mode": None, "error_type": None,
        "version": m["version"], "created_at": m["created_at"], "subject": m["subject"],
        "blurb": m["text"][:100],
        # Null for inbound messages (spec defect 3).
        "author": teammate(author) if author else None,
        "recipients": [recipient(r) for r in m["recipients"]],
        "body": m["body"], "text": m["text"], "attachments": [], "metadata": {},
    }


def comment(state: FrontState, c: dict[str, Any]) -> dict[str, Any]:
    cid = c["id"]
    return {
        "_links": {"self": f"/comments/{cid}",
                   "related": {"conversation": f"/conversations/{c['conversation_id']}",
                               "mentions": f"/comments/{cid}/mentions",
                               "comment_replied_to": None}},
        "id": cid, "author": teammate(state.teammates[c["author_id"]]), "body": c["body"],
        "posted_at": c["posted_at"], "attachments": [], "is_pinned": c["is_pinned"],
    }


def preview_event(event: dict[str, Any]) -> dict[str, Any]:
    """Preview form (fact sheet §3.1): source/target/conversation reduced to _meta, id, self."""

    def reduce(part: dict[str, Any] | None) -> dict[str, Any] | None:
        if not part:
            return None
        if "data" not in part and "id" in part:
            return dict(part)  # already a preview (a replayed recorded one)
        data = part.get("data")
        first = data[0] if isinstance(data, list) and data else data
        out: dict[str, Any] = {"_meta": part["_meta"]}
        if isinstance(first, dict) and "id" in first:
            out["_links"] = {"self": first.get("_links", {}).get("self")}
            out["id"] = first["id"]
        elif data is not None:
            out["data"] = data
        return out

    conv = event.get("conversation") or {}
    return {"_links": event["_links"], "id": event["id"], "type": event["type"],
            "emitted_at": event["emitted_at"], "source": reduce(event.get("source")),
            "target": reduce(event.get("target")),
            "conversation": {"_links": {"self": conv.get("_links", {}).get("self")},
                             "id": conv.get("id")}}
