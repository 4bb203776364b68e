"""Company-level routes: /me, teammates, tags, links, inboxes and the Events API."""

from __future__ import annotations

import bisect
import math
from typing import Any

from emulators.front import _ops as ops
from emulators.front import _render as render
from emulators.front._context import Ctx, Reply, listing
from emulators.front._errors import FrontError, bad_request, conflict, not_found
from emulators.front._query import paginate, paginate_sorted

__all__ = ["EVENT_TYPES", "ROUTES"]

# EventResponse.type enum of the spec (fact sheet §2.5).
EVENT_TYPES = (
    "assign", "unassign", "archive", "reopen", "trash", "restore", "reminder", "comment",
    "mention", "inbound", "outbound", "out_reply", "move", "forward", "tag", "untag",
    "sending_error", "message_bounce_error", "conversations_merged", "link_added",
    "link_removed", "custom_field_updated", "macro_triggered", "topic_identified",
    "ticket_status_update", "call_started", "call_abandoned", "call_queued", "call_on_hold",
    "call_parked", "call_resumed", "call_connected", "call_missed", "call_hangup",
    "call_transferred", "call_transcript_added", "call_voicemail_transcript_added",
)
HIGHLIGHTS = ("grey", "pink", "red", "orange", "yellow", "green", "light-blue", "blue", "purple")


def me(ctx: Ctx) -> Reply:
    company = ctx.state.company
    return Reply(200, {"_links": {"self": "/me"}, "id": company["id"], "name": company["name"]})


def list_teammates(ctx: Ctx) -> Reply:
    # Not paginated; bot identities are not teammates of the company list.
    people = [t for t in ctx.state.teammates.values() if t["type"] in ("user", "visitor")]
    return listing(ctx.path, [render.teammate(t) for t in people], paginated=False)


def get_teammate(ctx: Ctx) -> Reply:
    return Reply(200, render.teammate(ctx.state.teammate(ctx.params["teammate_id"])))


def list_tags(ctx: Ctx) -> Reply:
    q = ctx.query
    desc = q.descending(("id",), default_desc=False)
    page, nxt = paginate(list(ctx.state.tags.values()), lambda t: (t["id"],), q, ctx.path,
                         q.limit(100), desc)
    reply = listing(ctx.path, [render.tag(t) for t in page], nxt, paginated=False)
    if nxt:
        # listOfTags declares no _pagination, yet the route takes page_token; we add the block
        # only when a page is cut (fact sheet §2.1; allowlisted spec gap).
        reply.body = {"_pagination": {"next": nxt}, **reply.body}
    return reply


def create_tag(ctx: Ctx) -> Reply:
    name = ctx.field("name", str, required=True).strip()
    if not name or len(name) > 64:
        raise bad_request("name must be 1 to 64 characters")
    highlight = ctx.field("highlight", str)
    if highlight is not None and highlight not in HIGHLIGHTS:
        raise bad_request(f"highlight must be one of: {', '.join(HIGHLIGHTS)}")
    description = ctx.field("description", str)
    visible = ctx.field("is_visible_in_conversation_lists", bool, default=False)
    if any(t["name"].lower() == name.lower() for t in ctx.state.tags.values()):
        raise conflict(f"A tag named {name!r} already exists")  # unconfirmed upstream
    tid = ctx.state.add_tag(name=name, description=description, highlight=highlight,
                            is_visible_in_conversation_lists=visible)
    return Reply(201, render.tag(ctx.state.tags[tid]))


def get_tag(ctx: Ctx) -> Reply:
    return Reply(200, render.tag(ctx.state.get("tags", ctx.params["tag_id"], "tag")))


def list_links(ctx: Ctx) -> Reply:
    q = ctx.query.allow("types")
    types = q.q_list("types")
    items = [lk for lk in ctx.state.links.values() if not types or lk["type"] in types]
    desc = q.descending(("id",), default_desc=False)
    page, nxt = paginate(items, lambda lk: (lk["id"],), q, ctx.path, q.limit(100), desc)
    return listing(ctx.path, [render.link(lk) for lk in page], nxt)


def create_link(ctx: Ctx) -> Reply:
    """Links are identified by external_url: the same URL returns the same link (Front
    "creates or updates"; exact upstream behaviour for repeats is unconfirmed)."""
    url = ctx.field("external_url", str)
    if ctx.field("pattern", str) is not None:
        if url is not None:
            raise bad_request("Provide either pattern or external_url, not both")
        raise bad_request("Application-object patterns are not emulated")
    if not url:
        raise bad_request("external_url is required")
    lk = ops.link_for_url(ctx.state, url, ctx.field("name", str))
    return Reply(201, render.link(lk))


def get_link(ctx: Ctx) -> Reply:
    return Reply(200, render.link(ctx.state.get("links", ctx.params["link_id"], "link")))


def list_inboxes(ctx: Ctx) -> Reply:
    return listing(ctx.path, [render.inbox(i) for i in ctx.state.inboxes.values()],
                   paginated=False)


def get_inbox(ctx: Ctx) -> Reply:
    return Reply(200, render.inbox(ctx.state.get("inboxes", ctx.params["inbox_id"], "inbox")))


def list_events(ctx: Ctx) -> Reply:
    """GET /events: at most 15 per page, newest first, q[types|after|before|inboxes]."""
    q = ctx.query.allow("types", "after", "before", "inboxes")
    types = set(q.q_list("types", EVENT_TYPES))
    inboxes = set(q.q_list("inboxes"))
    after, before = q.q_time("after"), q.q_time("before")
    desc = q.descending(("created_at",))
    limit = q.limit(15, default=15)

    def keep(e: dict[str, Any]) -> bool:
        return ((not types or e["payload"]["type"] in types)
                and (not inboxes or bool(inboxes & set(e["inbox_ids"]))))

    keys = ctx.state.event_keys
    # Both bounds are exclusive.
    lo = bisect.bisect_right(keys, (after, math.inf)) if after is not None else 0
    hi = bisect.bisect_left(keys, (before, -1)) if before is not None else len(keys)
    events = ctx.state.events
    page, nxt = paginate_sorted(keys, lambda k: events[k[1]], keep, q, ctx.path, limit, desc,
                                lo, hi)
    return listing(ctx.path, [e["payload"] for e in page], nxt)


def get_event(ctx: Ctx) -> Reply:
    try:
        return Reply(200, ctx.state.event(ctx.params["event_id"])["payload"])
    except FrontError:
        raise not_found("event") from None


def list_link_custom_fields(ctx: Ctx) -> Reply:
    defs = ctx.state.custom_fields.get("link", [])
    return listing(ctx.path, [render.custom_field(d) for d in defs], paginated=False)


ROUTES: list[tuple[str, str, Any, str, bool]] = [
    ("GET", "/me", me, "api-token-details", False),
    ("GET", "/teammates", list_teammates, "list-teammates", False),
    ("GET", "/teammates/{teammate_id}", get_teammate, "get-teammate", False),
    ("GET", "/tags", list_tags, "list-tags", False),
    ("POST", "/tags", create_tag, "create-tag", False),
    ("GET", "/company/tags", list_tags, "list-company-tags", False),
    ("POST", "/company/tags", create_tag, "create-company-tag", False),
    ("GET", "/tags/{tag_id}", get_tag, "get-tag", False),
    ("GET", "/links", list_links, "list-links", False),
    ("POST", "/links", create_link, "create-link", False),
    ("GET", "/links/custom_fields", list_link_custom_fields, "list-link-custom-fields", False),
    ("GET", "/links/{link_id}", get_link, "get-link", False),
    ("GET", "/inboxes", list_inboxes, "list-inboxes", False),
    ("GET", "/inboxes/{inbox_id}", get_inbox, "get-inbox", False),
    ("GET", "/events", list_events, "list-events", False),
    ("GET", "/events/{event_id}", get_event, "get-event", False),
]
