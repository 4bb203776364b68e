"""Seeding a world (``POST /__admin/seed``) and replaying recorded webhooks
(``POST /__admin/webhooks/replay``).

A seed may give every record its id (a world recorded from a real Front account), or leave
ids out (the emulator makes them). Given ids are kept verbatim after two checks: the prefix
of the kind (fact sheet §1.3) and uniqueness, within the seed and against the company; the
generator never hands a given id out afterwards (``FrontState.reserved``). Records are
accepted in the emulator's compact form (``assignee_id``, ``tag_ids``, ``author_id``,
``contact_id``) or in Front's wire shapes as recorded (``assignee``/``tags``/``author``
objects, recipients' ``_links.related.contact``); wire-only keys (``_links``, ``blurb``,
``ticket_ids``…) are ignored, anything else unknown is refused. References must name records
of the world (seeded now or before), so that everything a response links to can be fetched.

Seeded events are stored with their given ``emitted_at`` and rendered like simulated ones:
``source``/``target`` data and ``conversation`` come from the seeded records (so ``_links``
are the emulator's and the shapes pass the spec), the conversation as seeded (its final
state, not a snapshot at the event's time). They are not delivered as webhooks unless the
event says ``"deliver": true`` (or is replayed later).

A seed is all or nothing: any refusal is a 400 naming the item (``conversations[3].id``) and
leaves the company as it was.
"""

from __future__ import annotations

import contextlib
import html
import math
import re
from collections.abc import Iterator
from typing import Any

from emulators.front import _api_contacts
from emulators.front import _render as render
from emulators.front._api_company import EVENT_TYPES
from emulators.front._context import Ctx, validate_custom_fields
from emulators.front._dispatch import Dispatcher
from emulators.front._errors import FrontError, bad_request
from emulators.front._ids import PREFIXES, message_uid
from emulators.front._ops import Actor, _pick_inbox
from emulators.front._query import Query
from emulators.front._store import FrontState

__all__ = ["DEFAULT_SEED", "replay", "seed"]

Body = dict[str, Any]

DEFAULT_SEED: Body = {
    "teammates": [{"email": "pam@acme.example", "first_name": "Pam", "last_name": "Beesly"},
                  {"email": "jim@acme.example", "first_name": "Jim", "last_name": "Halpert"}],
    "inboxes": [{"name": "Support", "address": "support@acme.example"}],
    "tags": [{"name": "sf:synced"}, {"name": "sf:opportunity"}],
}

_SEED_KEYS = {"defaults", "company", "custom_fields", "teammates", "inboxes", "tags", "links",
              "contacts", "conversations", "events"}
_ID_TEXT = re.compile(r"[a-z]+_[A-Za-z0-9]+")

# Spec enums (specs/front-core-api.json) that a seeded record must respect to render validly.
TEAMMATE_TYPES = ("user", "visitor", "ai", "api", "application", "bulk_reply", "csat",
                  "integration", "macro", "rule", "smart_csat")
MESSAGE_TYPES = ("call", "custom", "email", "facebook", "front_chat", "googleplay", "intercom",
                 "internal", "phone-call", "sms", "tweet", "tweet_dm", "whatsapp", "yalo_wha")
RECIPIENT_ROLES = ("from", "to", "cc", "bcc", "reply-to")
CONVERSATION_TYPES = ("conversation", "discussion", "task")
CUSTOM_FIELD_TYPES = ("string", "boolean", "datetime", "number", "teammate", "inbox", "enum")
SOURCE_TYPES = ("api", "oauth_client", "rule", "teammate", "imap", "gmail", "reminder",
                "inboxes", "recipient")
TARGET_TYPES = ("teammate", "inboxes", "message", "comment", "tag", "deleted_conversation_ids",
                "link", "custom_field")
# Seeded status: write vocabulary or the read vocabulary Front answers with (fact sheet §0.6).
_STATES = {"open": "open", "assigned": "open", "unassigned": "open", "archived": "archived",
           "deleted": "deleted", "trashed": "deleted", "spam": "spam"}
# A bare id as an event's source/target: its kind follows from the prefix.
_PART_BY_PREFIX = {"tea_": "teammate", "inb_": "inboxes", "rul_": "rule", "msg_": "message",
                   "com_": "comment", "tag_": "tag", "top_": "link", "fld_": "custom_field"}
_MESSAGE_EVENTS = ("inbound", "outbound", "out_reply")


# ---- small validators ------------------------------------------------------------------------

@contextlib.contextmanager
def _item(where: str) -> Iterator[None]:
    """Errors raised while seeding one item become a 400 that names the item."""
    try:
        yield
    except FrontError as err:
        message = err.message or "invalid"
        if err.status == 400 and message.startswith(where):
            raise
        raise bad_request(f"{where}: {message}", err.details) from None
    except (TypeError, ValueError, KeyError) as exc:
        raise bad_request(f"{where}: {exc}") from None


def _obj(value: Any, where: str, allowed: set[str], ignored: frozenset[str] = frozenset()
         ) -> Body:
    if not isinstance(value, dict):
        raise bad_request(f"{where}: expected an object")
    unknown = sorted(set(value) - allowed - ignored)
    if unknown:
        raise bad_request(f"{where}: unknown keys {unknown}")
    return {k: v for k, v in value.items() if k not in ignored}


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad_request(f"{where}: expected an array")
    return value


def _str(value: Any, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise bad_request(f"{where}: expected a string")
    return value


def _text(value: Any, where: str) -> str:
    """A required, non-blank string."""
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"{where}: expected a non-empty string")
    return value


def _bool(value: Any, where: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"{where}: expected true or false")
    return value


def _time(value: Any, where: str) -> float | None:
    """Epoch seconds, kept as given (no rounding: a recorded emitted_at must match)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad_request(f"{where}: expected epoch seconds (a number)")
    return float(value)


def _choice(value: Any, where: str, allowed: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if value not in allowed:
        raise bad_request(f"{where}: must be one of {', '.join(allowed)}, not {value!r}")
    return str(value)


def _time_or(value: Any, where: str, default: float) -> float:
    given = _time(value, where)
    return default if given is None else given


def _values(value: Any, where: str) -> list[Any] | None:
    """Enum values: strings, or Front's ``{"value", "label"}`` objects."""
    values = _list(value, where)
    for n, v in enumerate(values):
        if not isinstance(v, str) and not (isinstance(v, dict)
                                           and isinstance(v.get("value"), str)):
            raise bad_request(f"{where}[{n}]: expected a string or {{\"value\", \"label\"}}")
    return values or None


def _ref_id(value: Any, where: str) -> str | None:
    """A reference given as an id, or as a (recorded) object carrying one."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("id")
    if not isinstance(value, str) or not value:
        raise bad_request(f"{where}: expected an id or an object with an id")
    return value


def _strip_tags(body: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", body)).strip()


# ---- seeding ---------------------------------------------------------------------------------

class _Seeder:
    def __init__(self, state: FrontState) -> None:
        self.state = state
        self.seen: dict[str, str] = {}  # given id -> the item that gave it
        self.ids: dict[str, list[str]] = {}
        self.pending: list[tuple[str, Body, str | None]] = []  # (where, event, conversation)
        self.deliver: list[Body] = []

    def claim(self, kind: str, value: Any, where: str) -> str | None:
        """Validate a given id (prefix, shape, uniqueness) and reserve it; None if absent."""
        if value is None:
            return None
        prefix = PREFIXES[kind]
        if not isinstance(value, str) or not value.startswith(prefix) \
                or not _ID_TEXT.fullmatch(value):
            raise bad_request(f"{where}: expected a {prefix}… id ({kind}), got {value!r}")
        if value in self.seen:
            raise bad_request(f"{where}: duplicate id {value} (also {self.seen[value]})")
        if self.state.has_id(value):
            raise bad_request(f"{where}: duplicate id {value} (already in the emulator)")
        self.seen[value] = where
        self.state.reserved.add(value)
        return value

    def note(self, collection: str, ident: str) -> None:
        self.ids.setdefault(collection, []).append(ident)

    def lookup(self, collection: str, ref: str | None, what: str, where: str
               ) -> dict[str, Any]:
        found: dict[str, Any] | None = getattr(self.state, collection).get(ref or "")
        if found is None:
            raise bad_request(f"{where}: unknown {what} {ref!r} (seed it first)")
        return found

    def teammate(self, ref: Any, where: str) -> str | None:
        ident = _ref_id(ref, where)
        if ident is None:
            return None
        if "@" in ident and not ident.startswith("tea_"):
            ident = f"alt:email:{ident.removeprefix('alt:email:')}"
        try:
            return str(self.state.teammate(ident)["id"])
        except FrontError:
            raise bad_request(f"{where}: unknown teammate {ident!r} (seed it first)") from None

    # ---- company-level records -------------------------------------------------------

    def company(self, value: Any) -> None:
        obj = _obj(value, "company", {"id", "name"}, frozenset({"_links"}))
        if obj.get("id") is not None:
            ident = obj["id"]
            if not isinstance(ident, str) or not ident.startswith("cmp_") \
                    or not _ID_TEXT.fullmatch(ident):
                raise bad_request(f"company.id: expected a cmp_… id (company), got {ident!r}")
            self.state.company["id"] = ident
        if obj.get("name") is not None:
            self.state.company["name"] = _text(obj["name"], "company.name")

    def custom_fields(self, value: Any) -> None:
        if not isinstance(value, dict):
            raise bad_request("custom_fields: expected {resource: [definitions]}")
        for resource, defs in value.items():
            for i, d in enumerate(_list(defs, f"custom_fields.{resource}")):
                where = f"custom_fields.{resource}[{i}]"
                with _item(where):
                    obj = _obj(d, where, {"id", "name", "type", "description", "values"},
                               frozenset({"_links"}))
                    name = _text(obj.get("name"), f"{where}.name")
                    if any(f["name"] == name for f in self.state.custom_fields.get(resource, [])):
                        raise bad_request(f"{where}.name: {resource} field {name!r} exists")
                    fid = self.state.add_custom_field(
                        resource, name=name,
                        type=_choice(obj.get("type"), f"{where}.type", CUSTOM_FIELD_TYPES,
                                     "string"),
                        description=_str(obj.get("description"), f"{where}.description") or "",
                        values=_values(obj.get("values"), f"{where}.values"),
                        id=self.claim("custom_field", obj.get("id"), f"{where}.id"))
                    self.note("custom_fields", fid)

    def teammates(self, items: list[Any]) -> None:
        keys = {"id", "email", "username", "first_name", "last_name", "is_admin",
                "is_available", "is_blocked", "type", "custom_fields"}
        for i, t in enumerate(items):
            where = f"teammates[{i}]"
            with _item(where):
                obj = _obj(t, where, keys, frozenset({"_links", "license_type"}))
                _text(obj.get("email"), f"{where}.email")
                obj["type"] = _choice(obj.get("type"), f"{where}.type", TEAMMATE_TYPES, "user")
                obj["id"] = self.claim("teammate", obj.get("id"), f"{where}.id")
                self.note("teammates", self.state.add_teammate(**obj))

    def inboxes(self, items: list[Any]) -> None:
        keys = {"id", "name", "address", "is_private", "is_public", "custom_fields"}
        for i, box in enumerate(items):
            where = f"inboxes[{i}]"
            with _item(where):
                obj = _obj(box, where, keys, frozenset({"_links"}))
                _text(obj.get("name"), f"{where}.name")
                obj["id"] = self.claim("inbox", obj.get("id"), f"{where}.id")
                self.note("inboxes", self.state.add_inbox(**obj))

    def tags(self, items: list[Any]) -> None:
        keys = {"id", "name", "description", "highlight", "is_private",
                "is_visible_in_conversation_lists", "created_at", "updated_at"}
        for i, tag in enumerate(items):
            where = f"tags[{i}]"
            with _item(where):
                obj = _obj(tag, where, keys, frozenset({"_links"}))
                _text(obj.get("name"), f"{where}.name")
                for key in ("created_at", "updated_at"):
                    obj[key] = _time(obj.get(key), f"{where}.{key}")
                obj["id"] = self.claim("tag", obj.get("id"), f"{where}.id")
                self.note("tags", self.state.add_tag(**obj))

    def links(self, items: list[Any]) -> None:
        keys = {"id", "name", "type", "external_url", "custom_fields"}
        for i, lk in enumerate(items):
            where = f"links[{i}]"
            with _item(where):
                obj = _obj(lk, where, keys, frozenset({"_links"}))
                _text(obj.get("external_url"), f"{where}.external_url")
                obj["id"] = self.claim("link", obj.get("id"), f"{where}.id")
                self.note("links", self.state.add_link(**obj))

    def contacts(self, items: list[Any]) -> None:
        keys = {"id", "name", "description", "handles", "links", "list_names", "group_names",
                "lists", "groups", "custom_fields", "avatar_url", "is_private"}
        bot = Actor("api", self.state.bots["api"])
        for i, c in enumerate(items):
            where = f"contacts[{i}]"
            with _item(where):
                obj = _obj(c, where, keys | {"created_at", "updated_at"},
                           frozenset({"_links", "is_spammer"}))
                given = self.claim("contact", obj.pop("id", None), f"{where}.id")
                lists, groups = obj.pop("lists", None), obj.pop("groups", None)
                names = self._contact_lists(groups if lists is None else lists,
                                            f"{where}.lists")
                created = _time(obj.pop("created_at", None), f"{where}.created_at")
                updated = _time(obj.pop("updated_at", None), f"{where}.updated_at")
                if names is not None:
                    obj["list_names"] = names
                avatar, private = obj.pop("avatar_url", None), obj.pop("is_private", None)
                # Same validation as POST /contacts (handle uniqueness, custom field types).
                ctx = Ctx(self.state, bot, "POST", "/contacts", {},
                          Query([], self.state.config), obj)
                made = _api_contacts.create_contact(ctx).body["id"]
                contact = self.state.contacts[made]
                if given:
                    del self.state.contacts[made]
                    contact["id"] = given
                    self.state.contacts[given] = contact
                if avatar:
                    contact["avatar_url"] = _str(avatar, f"{where}.avatar_url")
                contact["is_private"] = _bool(private, f"{where}.is_private", False)
                if created is not None:
                    contact["created_at"] = contact["updated_at"] = created
                if updated is not None:
                    contact["updated_at"] = updated
                self.note("contacts", contact["id"])

    def _contact_lists(self, value: Any, where: str) -> list[str] | None:
        """Recorded ``lists`` ({id, name}): lists are shared by contacts, so a given ``grp_``
        id is created once and reused."""
        if value is None:
            return None
        names = []
        for i, g in enumerate(_list(value, where)):
            obj = _obj(g, f"{where}[{i}]", {"id", "name", "is_private"}, frozenset({"_links"}))
            name = _text(obj.get("name"), f"{where}[{i}].name")
            gid = obj.get("id")
            existing = self.state.contact_lists.get(gid) if isinstance(gid, str) else None
            if existing is not None and existing["name"] != name:
                raise bad_request(f"{where}[{i}].id: {gid} is the list {existing['name']!r}")
            if gid is not None and existing is None:
                self.claim("contact_list", gid, f"{where}[{i}].id")
                self.state.contact_lists[gid] = {
                    "id": gid, "name": name,
                    "is_private": _bool(obj.get("is_private"), f"{where}[{i}].is_private",
                                        False)}
            names.append(name)
        return names

    # ---- conversations, messages, comments ---------------------------------------------

    def conversations(self, items: list[Any]) -> None:
        keys = {"id", "type", "subject", "status", "assignee_id", "assignee", "inbox_ids",
                "tag_ids", "tags", "link_ids", "links", "custom_fields", "recipient",
                "created_at", "updated_at", "waiting_since", "is_private", "messages",
                "comments", "events"}
        # Ticketing and reminders are not emulated; recorded values are dropped.
        ignored = frozenset({"_links", "ticket_ids", "scheduled_reminders", "metadata",
                             "status_category", "status_id"})
        for i, c in enumerate(items):
            where = f"conversations[{i}]"
            with _item(where):
                self._conversation(_obj(c, where, keys, ignored), where)

    def _conversation(self, obj: Body, where: str) -> None:
        state = self.state
        cid = self.claim("conversation", obj.get("id"), f"{where}.id") \
            or state.new_id("conversation")
        assignee = self.teammate(obj.get("assignee_id", obj.get("assignee")),
                                 f"{where}.assignee")
        status = obj.get("status")
        if status is not None and status not in _STATES:
            raise bad_request(f"{where}.status: must be one of {', '.join(_STATES)}")
        if status == "assigned" and assignee is None:
            raise bad_request(f"{where}.status: assigned needs an assignee")
        if status == "unassigned" and assignee is not None:
            raise bad_request(f"{where}.status: unassigned with an assignee")
        inbox_ids = [self.lookup("inboxes", _ref_id(x, f"{where}.inbox_ids[{n}]"), "inbox",
                                 f"{where}.inbox_ids[{n}]")["id"]
                     for n, x in enumerate(_list(obj.get("inbox_ids"), f"{where}.inbox_ids"))]
        if not inbox_ids:
            inbox_ids = [_pick_inbox(state, None, None)["id"]]
        created = _time_or(obj.get("created_at"), f"{where}.created_at", state.now())
        conv: Body = {
            "id": cid,
            "type": _choice(obj.get("type"), f"{where}.type", CONVERSATION_TYPES,
                            "conversation"),
            "subject": _str(obj.get("subject"), f"{where}.subject") or "",
            "state": _STATES[status or "open"], "assignee_id": assignee,
            "tag_ids": self._refs(obj, "tag_ids", "tags", "tags", "tag", where),
            "link_ids": self._refs(obj, "link_ids", "links", "links", "link", where),
            "custom_fields": (validate_custom_fields(state, "conversation", obj["custom_fields"])
                              if obj.get("custom_fields") else {}),
            "is_private": _bool(obj.get("is_private"), f"{where}.is_private",
                                bool(state.inboxes[inbox_ids[0]]["is_private"])),
            "created_at": created,
            "updated_at": _time_or(obj.get("updated_at"), f"{where}.updated_at", created),
            "inbox_ids": inbox_ids,
            "recipient": (self._recipient(obj["recipient"], f"{where}.recipient")
                          if obj.get("recipient") is not None else None),
        }
        waiting = _time(obj.get("waiting_since"), f"{where}.waiting_since")
        if waiting is not None:
            conv["waiting_since"] = waiting
        state.conversations[cid] = conv
        self.note("conversations", cid)
        messages = [self._message(conv, m, f"{where}.messages[{n}]")
                    for n, m in enumerate(_list(obj.get("messages"), f"{where}.messages"))]
        if messages:
            conv["last_message_id"] = max(messages, key=lambda m: (m["created_at"], m["id"]))["id"]
        for n, com in enumerate(_list(obj.get("comments"), f"{where}.comments")):
            self._comment(conv, com, f"{where}.comments[{n}]")
        for n, event in enumerate(_list(obj.get("events"), f"{where}.events")):
            self.pending.append((f"{where}.events[{n}]", event, cid))

    def _refs(self, obj: Body, ids_key: str, wire_key: str, collection: str, what: str,
              where: str) -> list[str]:
        if obj.get(ids_key) is not None and obj.get(wire_key) is not None:
            raise bad_request(f"{where}: give {ids_key} or {wire_key}, not both")
        key = ids_key if obj.get(ids_key) is not None else wire_key
        out: list[str] = []
        for n, ref in enumerate(_list(obj.get(key), f"{where}.{key}")):
            ident = self.lookup(collection, _ref_id(ref, f"{where}.{key}[{n}]"), what,
                                f"{where}.{key}[{n}]")["id"]
            if ident not in out:
                out.append(ident)
        return out

    def _recipient(self, value: Any, where: str) -> Body:
        obj = _obj(value, where, {"handle", "name", "role", "contact_id", "_links"})
        contact = obj.get("contact_id")
        if contact is None and isinstance(obj.get("_links"), dict):
            url = (obj["_links"].get("related") or {}).get("contact")
            if isinstance(url, str) and "/contacts/" in url:
                contact = url.rsplit("/contacts/", 1)[1].split("?")[0]
        if contact is not None:
            contact = self.lookup("contacts", _ref_id(contact, f"{where}.contact_id"),
                                  "contact", f"{where}.contact_id")["id"]
        return {"handle": _text(obj.get("handle"), f"{where}.handle"),
                "name": _str(obj.get("name"), f"{where}.name"),
                "role": _choice(obj.get("role"), f"{where}.role", RECIPIENT_ROLES, "from"),
                "contact_id": contact}

    def _message(self, conv: Body, value: Any, where: str) -> Body:
        keys = {"id", "type", "is_inbound", "created_at", "subject", "body", "text",
                "author_id", "author", "recipients", "message_uid", "version"}
        ignored = frozenset({"_links", "blurb", "attachments", "metadata", "draft_mode",
                             "error_type", "signature"})
        with _item(where):
            obj = _obj(value, where, keys, ignored)
            mid = self.claim("message", obj.get("id"), f"{where}.id") \
                or self.state.new_id("message")
            author = self.teammate(obj.get("author_id", obj.get("author")), f"{where}.author")
            text, body = _str(obj.get("text"), f"{where}.text"), _str(obj.get("body"),
                                                                       f"{where}.body")
            if text is None:
                text = _strip_tags(body) if body is not None else ""
            if body is None:
                body = f"<p>{html.escape(text)}</p>"
            created = _time_or(obj.get("created_at"), f"{where}.created_at",
                               self.state.now())
            uid = _str(obj.get("message_uid"), f"{where}.message_uid") or message_uid(mid)
            msg = {"id": mid, "conversation_id": conv["id"], "message_uid": uid,
                   "type": _choice(obj.get("type"), f"{where}.type", MESSAGE_TYPES, "email"),
                   "is_inbound": _bool(obj.get("is_inbound"), f"{where}.is_inbound",
                                       author is None),
                   "created_at": created,
                   "subject": _str(obj.get("subject"), f"{where}.subject") or conv["subject"],
                   "text": text, "body": body, "author_id": author,
                   "recipients": [self._recipient(r, f"{where}.recipients[{n}]") for n, r in
                                  enumerate(_list(obj.get("recipients"), f"{where}.recipients"))],
                   "version": _str(obj.get("version"), f"{where}.version")
                   or f"{uid}-{int(created * 1000)}"}
            self.state.messages[mid] = msg
            self.note("messages", mid)
            return msg

    def _comment(self, conv: Body, value: Any, where: str) -> None:
        with _item(where):
            obj = _obj(value, where, {"id", "author_id", "author", "body", "posted_at",
                                      "is_pinned"}, frozenset({"_links", "attachments"}))
            author = self.teammate(obj.get("author_id", obj.get("author")), f"{where}.author")
            if author is None:
                raise bad_request(f"{where}.author: a comment needs its teammate author")
            com_id = self.claim("comment", obj.get("id"), f"{where}.id") \
                or self.state.new_id("comment")
            self.state.comments[com_id] = {
                "id": com_id, "conversation_id": conv["id"], "author_id": author,
                "body": _str(obj.get("body"), f"{where}.body") or "",
                "posted_at": _time_or(obj.get("posted_at"), f"{where}.posted_at",
                                      self.state.now()),
                "is_pinned": _bool(obj.get("is_pinned"), f"{where}.is_pinned", False)}
            self.note("comments", com_id)

    # ---- events --------------------------------------------------------------------------

    def events(self) -> None:
        for where, value, conversation_id in self.pending:
            with _item(where):
                self._event(value, where, conversation_id)

    def _event(self, value: Any, where: str, nested_in: str | None) -> None:
        state = self.state
        obj = _obj(value, where, {"id", "type", "emitted_at", "conversation_id",
                                  "conversation", "source", "target", "deliver"},
                   frozenset({"_links"}))
        eid = self.claim("event", obj.get("id"), f"{where}.id") or state.new_id("event")
        etype = _choice(obj.get("type"), f"{where}.type", EVENT_TYPES, "")
        if not etype:
            raise bad_request(f"{where}.type: required")
        ref = _ref_id(obj.get("conversation_id", obj.get("conversation")),
                      f"{where}.conversation_id")
        if ref is None and nested_in is None:
            raise bad_request(f"{where}.conversation_id: required (events are conversation "
                              "events)")
        if nested_in is not None and ref not in (None, nested_in):
            raise bad_request(f"{where}.conversation_id: {ref} inside conversation {nested_in}")
        conv = self.lookup("conversations", ref or nested_in, "conversation",
                           f"{where}.conversation_id")
        source = obj.get("source")
        if source is None and etype in _MESSAGE_EVENTS:
            source = {"_meta": {"type": "inboxes"}, "data": list(conv["inbox_ids"])}
        if source is None:
            raise bad_request(f"{where}.source: required for {etype} events")
        at = _time(obj.get("emitted_at"), f"{where}.emitted_at")
        payload = {
            "_links": {"self": f"/events/{eid}"}, "id": eid, "type": etype,
            "emitted_at": state.emitted_at() if at is None else at,
            "source": self._part(source, f"{where}.source", SOURCE_TYPES),
            "target": self._part(obj.get("target"), f"{where}.target", TARGET_TYPES),
            "conversation": render.conversation(state, conv),
        }
        state.append_event(payload, conv["id"], conv["inbox_ids"], publish=False)
        self.note("events", eid)
        if _bool(obj.get("deliver"), f"{where}.deliver", False):
            self.deliver.append(payload)

    def _part(self, value: Any, where: str, kinds: tuple[str, ...]) -> Body | None:
        """An event's source or target: ``{"_meta": {"type"}, "data"}`` (data: an id, or a
        recorded object with one) or a bare id; rendered from the seeded record."""
        if value is None:
            return None
        data: Any
        if isinstance(value, str):
            kind, data = _PART_BY_PREFIX.get(value[:4], ""), value
        elif isinstance(value, dict) and isinstance(value.get("_meta"), dict):
            _obj(value, where, {"_meta", "data"}, frozenset({"_links", "id"}))
            kind = str(value["_meta"].get("type"))
            data = value.get("data", value.get("id"))
        else:
            raise bad_request(f"{where}: expected {{\"_meta\": {{\"type\": …}}, \"data\": …}} "
                              "or an id")
        if kind not in kinds:
            raise bad_request(f"{where}._meta.type: must be one of {', '.join(kinds)}, "
                              f"not {kind!r}")
        return {"_meta": {"type": kind}, "data": self._data(kind, data, f"{where}.data")}

    def _data(self, kind: str, data: Any, where: str) -> Any:
        state = self.state
        if kind in ("api", "oauth_client") and data is None:
            return render.teammate(state.teammates[state.bots[kind]])
        if kind in ("teammate", "api", "oauth_client"):
            return render.teammate(state.teammates[str(self.teammate(data, where))])
        if kind == "rule":
            rid = _ref_id(data, where)
            if not rid or not rid.startswith("rul_"):
                raise bad_request(f"{where}: expected a rule id (rul_…)")
            name = data.get("name") if isinstance(data, dict) else None
            return render.rule(rid, _str(name, f"{where}.name") or "")
        if kind == "inboxes":
            refs = data if isinstance(data, list) else [data]
            boxes = [render.inbox(self.lookup("inboxes", _ref_id(r, f"{where}[{n}]"), "inbox",
                                              f"{where}[{n}]")) for n, r in enumerate(refs)]
            return boxes if isinstance(data, list) else boxes[0]
        simple = {"message": ("messages", render.message), "comment": ("comments",
                                                                      render.comment)}
        if kind in simple:
            collection, draw = simple[kind]
            return draw(state, self.lookup(collection, _ref_id(data, where), kind, where))
        if kind == "tag":
            return render.tag(self.lookup("tags", _ref_id(data, where), "tag", where))
        if kind == "link":
            return render.link(self.lookup("links", _ref_id(data, where), "link", where))
        if kind == "custom_field":
            ref = _ref_id(data, where)
            for defs in state.custom_fields.values():
                for d in defs:
                    if ref in (d["id"], d["name"]):
                        return render.custom_field(d)
            raise bad_request(f"{where}: unknown custom field {ref!r} (seed it first)")
        if kind == "deleted_conversation_ids":
            ids = _list(data, where)
            if not ids or not all(isinstance(x, str) and x.startswith("cnv_") for x in ids):
                raise bad_request(f"{where}: expected a non-empty array of cnv_ ids")
            return list(ids)
        # imap, gmail, reminder, recipient: nothing of the world to render; kept as recorded.
        return render.relativize(data)


def seed(state: FrontState, body: Any) -> dict[str, list[str]]:
    """Apply a seed (see the module docstring of ``emulators.front``); the ids it made or kept,
    by collection. Runs under the state lock; all or nothing."""
    if not isinstance(body, dict):
        raise bad_request("a seed is a JSON object")
    unknown = sorted(set(body) - _SEED_KEYS)
    if unknown:
        raise bad_request(f"unknown seed keys {unknown}; known: {sorted(_SEED_KEYS)}")
    if body.get("defaults"):
        body = {**DEFAULT_SEED, **{k: v for k, v in body.items() if k != "defaults"}}
    seeder = _Seeder(state)
    mark = state.mark()
    try:
        if body.get("company") is not None:
            seeder.company(body["company"])
        if body.get("custom_fields") is not None:
            seeder.custom_fields(body["custom_fields"])
        seeder.teammates(_list(body.get("teammates"), "teammates"))
        seeder.inboxes(_list(body.get("inboxes"), "inboxes"))
        seeder.tags(_list(body.get("tags"), "tags"))
        seeder.links(_list(body.get("links"), "links"))
        seeder.contacts(_list(body.get("contacts"), "contacts"))
        seeder.conversations(_list(body.get("conversations"), "conversations"))
        seeder.pending += [(f"events[{n}]", e, None)
                           for n, e in enumerate(_list(body.get("events"), "events"))]
        seeder.events()
    except BaseException:
        state.rollback(mark)
        raise
    if state.publish is not None:
        for payload in seeder.deliver:
            state.publish(payload)
    return seeder.ids


# ---- replaying recorded webhooks -------------------------------------------------------------

def replay(state: FrontState, dispatcher: Dispatcher, body: Any) -> Body:
    """Queue recorded webhooks (or stored events, by id) for delivery to the subscribers,
    signed afresh. Validates every item before queueing any. Runs under the state lock."""
    if isinstance(body, list):
        body = {"webhooks": body}
    obj = _obj(body, "replay", {"webhooks", "subscription"})
    items = obj.get("webhooks")
    if not isinstance(items, list) or not items:
        raise bad_request("webhooks: expected a non-empty array of recorded webhook bodies "
                          "or event ids")
    only = obj.get("subscription")
    if only is not None and only not in state.subscriptions:
        raise bad_request(f"subscription: unknown subscription {only!r}")
    prepared: list[tuple[Body, str | None]] = []
    for i, item in enumerate(items):
        where = f"webhooks[{i}]"
        kind: str | None = None
        if isinstance(item, str):
            if item not in state.event_index:
                raise bad_request(f"{where}: unknown event {item!r}")
            payload = state.event(item)["payload"]
        elif isinstance(item, dict):
            payload = item
            if isinstance(item.get("payload"), dict) and "emitted_at" not in item:
                # An application webhook as recorded: {"type", "authorization", "payload"}.
                kind = _text(item.get("type"), f"{where}.type")
                if kind == "sync":
                    raise bad_request(f"{where}: a sync body is the subscription handshake, "
                                      "not an event")
                payload = item["payload"]
            # Otherwise a rule webhook as recorded: the bare event.
            if not isinstance(payload.get("id"), str) or not payload["id"].startswith("evt_"):
                raise bad_request(f"{where}: the event has no evt_ id")
            if not isinstance(payload.get("type"), str):
                raise bad_request(f"{where}: the event has no type")
            payload = render.relativize(payload)
        else:
            raise bad_request(f"{where}: expected a recorded webhook body or an event id")
        prepared.append((payload, kind))
    out = [{"event_id": payload["id"], "type": payload["type"],
            "in_world": payload["id"] in state.event_index,
            "subscriptions": dispatcher.replay(payload, kind, only)}
           for payload, kind in prepared]
    return {"replayed": out}
