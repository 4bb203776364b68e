"""Admin "simulate" actions: what teammates, rules and customers do in Front's UI.

They go through the same ``_ops`` functions as the API, with a teammate (or rule) as the
actor, so their events carry ``source._meta.type`` ``teammate``/``rule`` — the events the
pipeline must act on, as opposed to echoes of its own API writes.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

from emulators.front import _ops as ops
from emulators.front._errors import FrontError, bad_request
from emulators.front._ids import base36
from emulators.front._store import FrontState

__all__ = ["ACTIONS", "simulate"]

Body = dict[str, Any]


def _actor(state: FrontState, body: Body) -> ops.Actor:
    if body.get("rule"):
        name = str(body["rule"])
        return ops.Actor("rule", f"rul_{base36(zlib.crc32(name.encode()))}", name)
    ref = body.get("teammate")
    teammate = state.teammate(_teammate_ref(ref)) if ref else state.default_teammate()
    return ops.Actor("teammate", teammate["id"])


def _teammate_ref(ref: Any) -> str:
    """Admin calls may name a teammate by id, alias or plain email."""
    text = str(ref)
    return f"alt:email:{text}" if "@" in text and not text.startswith("alt:") else text


def _conv(state: FrontState, body: Body, key: str = "conversation_id") -> dict[str, Any]:
    if not body.get(key):
        raise bad_request(f"{key} is required")
    return ops.live_conversation(state, str(body[key]))


def _at(body: Body) -> float | None:
    return float(body["at"]) if body.get("at") is not None else None


def _tag_id(state: FrontState, body: Body, create: bool) -> str:
    if body.get("tag_id"):
        return str(body["tag_id"])
    name = body.get("tag")
    if not name:
        raise bad_request("tag_id or tag (a name) is required")
    for t in state.tags.values():
        if t["name"] == name:
            return str(t["id"])
    if not create:
        raise bad_request(f"no tag named {name!r}")
    return state.add_tag(name=str(name))


def _link_id(state: FrontState, body: Body) -> str:
    if body.get("link_id"):
        return str(body["link_id"])
    if not body.get("external_url"):
        raise bad_request("link_id or external_url is required")
    return str(ops.link_for_url(state, str(body["external_url"]), body.get("name"))["id"])


def _inbound(state: FrontState, body: Body) -> Body:
    sender = body.get("from")
    if not sender:
        raise bad_request("from (the sender's handle) is required")
    conv, msg, eid = ops.inbound(
        state, sender=str(sender), name=body.get("name"), to=body.get("to"),
        inbox_id=body.get("inbox_id"), subject=str(body.get("subject", "")),
        text=str(body.get("text", "")), channel=str(body.get("channel", "email")),
        conversation_id=body.get("conversation_id"), at=_at(body))
    return {"conversation_id": conv["id"], "message_id": msg["id"], "event_ids": [eid],
            "contact_id": conv["recipient"]["contact_id"] if conv["recipient"] else None}


def _outbound(state: FrontState, body: Body) -> Body:
    actor = _actor(state, body)
    if actor.kind != "teammate":
        raise bad_request("outbound messages are written by a teammate")
    if body.get("conversation_id"):
        conv = _conv(state, body)
    elif body.get("to"):  # a teammate starts a new conversation
        conv = ops.new_conversation(state, handle=str(body["to"]), name=body.get("name"),
                                    role="to", subject=str(body.get("subject", "")),
                                    inbox_id=body.get("inbox_id"), at=_at(body))
    else:
        raise bad_request("conversation_id (a reply) or to (a new conversation) is required")
    msg, eid = ops.outbound(state, conv, text=str(body.get("text", "")), author_id=actor.id,
                            at=_at(body))
    return {"conversation_id": conv["id"], "message_id": msg["id"], "event_ids": [eid]}


def _comment(state: FrontState, body: Body) -> Body:
    actor = _actor(state, body)
    if actor.kind != "teammate":
        raise bad_request("comments are written by a teammate")
    com, eid = ops.add_comment(state, _conv(state, body), str(body.get("body", "")), actor.id,
                               actor, at=_at(body))
    return {"comment_id": com["id"], "event_ids": [eid]}


def _merge(state: FrontState, body: Body) -> Body:
    ids = body.get("conversation_ids")
    if not isinstance(ids, list) or not ids:
        raise bad_request("conversation_ids (to merge into 'into') is required")
    survivor = _conv(state, body, "into")
    eid = ops.merge(state, survivor, [ops.live_conversation(state, str(i)) for i in ids],
                    _actor(state, body))
    return {"conversation_id": survivor["id"], "event_ids": [eid]}


def _status(status: str) -> Callable[[FrontState, Body], Body]:
    def run(state: FrontState, body: Body) -> Body:
        return {"event_ids": ops.set_status(state, _conv(state, body), status,
                                            _actor(state, body), at=_at(body))}
    return run


def _tag(state: FrontState, body: Body) -> Body:
    conv, tag_id = _conv(state, body), _tag_id(state, body, create=True)
    return {"event_ids": ops.add_tags(state, conv, [tag_id], _actor(state, body), at=_at(body))}


def _untag(state: FrontState, body: Body) -> Body:
    conv, tag_id = _conv(state, body), _tag_id(state, body, create=False)
    return {"event_ids": ops.remove_tags(state, conv, [tag_id], _actor(state, body),
                                         at=_at(body))}


def _assign(state: FrontState, body: Body) -> Body:
    """``assignee`` (id, alias or email); without it the acting teammate takes it."""
    actor = _actor(state, body)
    assignee = _teammate_ref(body["assignee"]) if body.get("assignee") else actor.id
    return {"event_ids": ops.assign(state, _conv(state, body), assignee, actor, at=_at(body))}


def _unassign(state: FrontState, body: Body) -> Body:
    return {"event_ids": ops.assign(state, _conv(state, body), None, _actor(state, body),
                                    at=_at(body))}


def _link(state: FrontState, body: Body) -> Body:
    conv, link_id = _conv(state, body), _link_id(state, body)
    return {"event_ids": ops.add_links(state, conv, [link_id], _actor(state, body),
                                       at=_at(body))}


def _unlink(state: FrontState, body: Body) -> Body:
    conv, link_id = _conv(state, body), _link_id(state, body)
    return {"event_ids": ops.remove_links(state, conv, [link_id], _actor(state, body),
                                          at=_at(body))}


def _move(state: FrontState, body: Body) -> Body:
    return {"event_ids": ops.move(state, _conv(state, body), str(body.get("inbox_id")),
                                  _actor(state, body))}


ACTIONS: dict[str, Callable[[FrontState, Body], Body]] = {
    "inbound": _inbound,
    "outbound": _outbound,
    "comment": _comment,
    "merge": _merge,
    "archive": _status("archived"),
    "reopen": _status("open"),
    "trash": _status("deleted"),
    "restore": _status("open"),
    "tag": _tag,
    "untag": _untag,
    "assign": _assign,
    "unassign": _unassign,
    "link": _link,
    "unlink": _unlink,
    "move": _move,
}


def simulate(state: FrontState, action: str, body: Body) -> Body:
    run = ACTIONS.get(action)
    if run is None:
        raise FrontError(404, f"unknown simulation {action!r}; known: {sorted(ACTIONS)}")
    return run(state, body)
