"""Conversation routes: read, list, update (status/assignee/inbox/tags/custom fields),
assignee, tags, comments, links, messages, per-conversation events (fact sheet §4).

Every ``/conversations/{id}…`` route answers 301 for a merged id (``FrontState.conversation``).
"""

from __future__ import annotations

from typing import Any

from emulators.front import _ops as ops
from emulators.front import _render as render
from emulators.front._context import Ctx, Reply, listing, validate_custom_fields
from emulators.front._errors import FrontError, bad_request, not_found
from emulators.front._query import paginate, paginate_sorted

__all__ = ["ROUTES"]

# Filter vocabulary (fact sheet §0.6): "trashed" here is "deleted" when read.
_FILTER_STATUSES = ("assigned", "unassigned", "archived", "trashed")


def _filter_status(conv: dict[str, Any]) -> str:
    status = render.read_status(conv)
    return "trashed" if status == "deleted" else status


def conversations_page(ctx: Ctx, convs: list[dict[str, Any]]) -> Reply:
    wanted = ctx.query.allow("statuses").q_list("statuses", _FILTER_STATUSES)
    # Without a filter Front lists the live conversations; trash stays out (unconfirmed).
    live = [c for c in convs if not c.get("merged_into")]
    live = [c for c in live if (_filter_status(c) in wanted if wanted
                                else _filter_status(c) != "trashed")]
    desc = ctx.query.descending(("date",))
    limit = ctx.query.limit(100)
    page, nxt = paginate(live, lambda c: (c["updated_at"], c["id"]), ctx.query, ctx.path,
                         limit, desc)
    return listing(ctx.path, [render.conversation(ctx.state, c) for c in page], nxt)


def list_conversations(ctx: Ctx) -> Reply:
    return conversations_page(ctx, list(ctx.state.conversations.values()))


def get_conversation(ctx: Ctx) -> Reply:
    conv = ctx.state.conversation(ctx.params["conversation_id"])
    return Reply(200, render.conversation(ctx.state, conv))


def update_conversation(ctx: Ctx) -> Reply:
    state, conv = ctx.state, ctx.state.conversation(ctx.params["conversation_id"])
    body = ctx.obj()
    if "status" in body and "status_id" in body:
        raise bad_request("Provide either status or status_id, not both")
    if "status_id" in body:
        raise bad_request("Ticketing is not enabled for this company")
    for key in ("description", "due_at"):
        if key in body and conv["type"] != "task":
            raise bad_request(f"{key} is only allowed on task conversations")
    # Validate everything first so that a 400 leaves the conversation untouched.
    status = ctx.field("status", str)
    if status is not None and status not in ops.WRITE_STATUSES:
        raise bad_request(f"status must be one of: {', '.join(ops.WRITE_STATUSES)}")
    assignee = ctx.field("assignee_id", (str, type(None)))
    if assignee:
        try:
            state.teammate(assignee)
        except FrontError:
            raise bad_request(f"Unknown teammate {assignee}") from None
    inbox_id = ctx.field("inbox_id", str)
    if inbox_id is not None and inbox_id not in state.inboxes:
        raise bad_request(f"Unknown inbox {inbox_id}")
    tag_ids = ctx.str_list("tag_ids")
    if tag_ids is not None:
        ops.check_ids(state, "tags", tag_ids, "tag")
    fields = (validate_custom_fields(state, "conversation", body["custom_fields"])
              if "custom_fields" in body else None)
    if "assignee_id" in body:
        ops.assign(state, conv, assignee, ctx.actor)
    if inbox_id is not None:
        ops.move(state, conv, inbox_id, ctx.actor)
    if tag_ids is not None:
        ops.replace_tags(state, conv, tag_ids, ctx.actor)
    if fields is not None:
        ops.set_custom_fields(state, conv, fields, ctx.actor)
    if status is not None:
        ops.set_status(state, conv, status, ctx.actor)
    return Reply(204)


def update_assignee(ctx: Ctx) -> Reply:
    conv = ctx.state.conversation(ctx.params["conversation_id"])
    body = ctx.obj()
    if "assignee_id" not in body:
        raise bad_request("assignee_id is required")
    # The spec types it as a string, yet null is how Front unassigns (fact sheet §4).
    ops.assign(ctx.state, conv, ctx.field("assignee_id", (str, type(None))), ctx.actor)
    return Reply(204)


def add_tags(ctx: Ctx) -> Reply:
    conv = ctx.state.conversation(ctx.params["conversation_id"])
    ops.add_tags(ctx.state, conv, ctx.field("tag_ids", list, required=True), ctx.actor)
    return Reply(204)


def remove_tags(ctx: Ctx) -> Reply:
    conv = ctx.state.conversation(ctx.params["conversation_id"])
    ops.remove_tags(ctx.state, conv, ctx.field("tag_ids", list, required=True), ctx.actor)
    return Reply(204)


def list_comments(ctx: Ctx) -> Reply:
    conv = ctx.state.conversation(ctx.params["conversation_id"])
    comments = sorted((c for c in ctx.state.comments.values()
                       if c["conversation_id"] == conv["id"]),
                      key=lambda c: (c["posted_at"], c["id"]), reverse=True)
    # Not paginated in the spec: no _pagination block.
    return listing(ctx.path, [render.comment(ctx.state, c) for c in comments], paginated=False)


def add_comment(ctx: Ctx) -> Reply:
    """No idempotency key exists: every call creates a comment (fact sheet §0.1)."""
    conv = ctx.state.conversation(ctx.params["conversation_id"])
    body = ctx.field("body", str, required=True)
    if not body.strip():
        raise bad_request("body must not be empty")
    author_ref = ctx.field("author_id", str)
    author_id = ctx.state.teammate(author_ref)["id"] if author_ref else ctx.actor.id
    pinned = ctx.field("is_pinned", bool, default=False)
    com, _ = ops.add_comment(ctx.state, conv, body, author_id, ctx.actor, is_pinned=pinned)
    return Reply(201, render.comment(ctx.state, com))


def add_links(ctx: Ctx) -> Reply:
    conv = ctx.state.conversation(ctx.params["conversation_id"])
    ids = ctx.str_list("link_ids", max_items=10)
    urls = ctx.str_list("link_external_urls", max_items=10)
    if (ids is None) == (urls is None):
        raise bad_request("Either link_ids or link_external_urls must be specified, not both")
    if urls is not None:
        # The idempotent way to attach a record URL: missing links are created (type web).
        ids = [ops.link_for_url(ctx.state, url)["id"] for url in urls]
    ops.add_links(ctx.state, conv, ids or [], ctx.actor)
    return Reply(204)


def remove_links(ctx: Ctx) -> Reply:
    conv = ctx.state.conversation(ctx.params["conversation_id"])
    ids = ctx.str_list("link_ids", max_items=10)
    if ids is None:
        raise bad_request("link_ids is required")
    ops.remove_links(ctx.state, conv, ids, ctx.actor)
    return Reply(204)


def list_messages(ctx: Ctx) -> Reply:
    conv = ctx.state.conversation(ctx.params["conversation_id"])
    msgs = [m for m in ctx.state.messages.values() if m["conversation_id"] == conv["id"]]
    desc = ctx.query.descending(("created_at",))
    page, nxt = paginate(msgs, lambda m: (m["created_at"], m["id"]), ctx.query, ctx.path,
                         ctx.query.limit(100), desc)
    return listing(ctx.path, [render.message(ctx.state, m) for m in page], nxt)


def list_conversation_events(ctx: Ctx) -> Reply:
    conv = ctx.state.conversation(ctx.params["conversation_id"])
    events = ctx.state.events
    page, nxt = paginate_sorted(ctx.state.event_keys, lambda k: events[k[1]],
                                lambda e: e["conversation_id"] == conv["id"], ctx.query,
                                ctx.path, ctx.query.limit(100), True)
    return listing(ctx.path, [e["payload"] for e in page], nxt)


def list_custom_fields(resource: str) -> Any:
    def handler(ctx: Ctx) -> Reply:
        defs = ctx.state.custom_fields.get(resource, [])
        return listing(ctx.path, [render.custom_field(d) for d in defs],
                       paginated=False)
    return handler


def get_message(ctx: Ctx) -> Reply:
    return Reply(200, render.message(ctx.state, ctx.state.message(ctx.params["message_id"])))


def get_comment(ctx: Ctx) -> Reply:
    com = ctx.state.comments.get(ctx.params["comment_id"])
    if com is None:
        raise not_found("comment")
    return Reply(200, render.comment(ctx.state, com))


_C = "/conversations/{conversation_id}"
# (method, path template, handler, operationId in the spec, tier-2 guarded write)
ROUTES: list[tuple[str, str, Any, str, bool]] = [
    ("GET", "/conversations", list_conversations, "list-conversations", False),
    ("GET", "/conversations/custom_fields", list_custom_fields("conversation"),
     "list-conversation-custom-fields", False),
    ("GET", _C, get_conversation, "get-conversation-by-id", False),
    ("PATCH", _C, update_conversation, "update-conversation", True),
    ("PUT", f"{_C}/assignee", update_assignee, "update-conversation-assignee", True),
    ("POST", f"{_C}/tags", add_tags, "add-conversation-tag", True),
    ("DELETE", f"{_C}/tags", remove_tags, "remove-conversation-tag", True),
    ("GET", f"{_C}/comments", list_comments, "list-conversation-comments", False),
    ("POST", f"{_C}/comments", add_comment, "add-comment", True),
    ("POST", f"{_C}/links", add_links, "add-conversation-link", True),
    ("DELETE", f"{_C}/links", remove_links, "remove-conversation-links", True),
    ("GET", f"{_C}/messages", list_messages, "list-conversation-messages", False),
    ("GET", f"{_C}/events", list_conversation_events, "list-conversation-events", False),
    ("GET", "/messages/{message_id}", get_message, "get-message", False),
    ("GET", "/comments/{comment_id}", get_comment, "get-comment", False),
]
