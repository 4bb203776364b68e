"""Seeding a world with given ids (a world recorded from a real Front account) and replaying
its recorded webhooks (issue 8): given ids kept verbatim and served by the public routes
(every response spec-validated by the harness client), wrong or duplicate ids refused with a
400 naming the item, seeded events in the Events API window, recorded webhooks delivered
signed."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import emulators.front
from emulators.front import FrontState
from emulators.front._ids import make_id
from tests.emulators.test_front_harness import Front, Receiver, receivers, running_front

T0 = 1_703_100_000.0
RECORDED = "https://acme.api.frontapp.com"


@pytest.fixture
def front() -> Iterator[Front]:
    with running_front() as emu:
        yield emu


@pytest.fixture
def receiver_factory() -> Iterator[Callable[..., Receiver]]:
    with receivers() as make:
        yield make


# A refused seed or replay changes nothing (each case checks), so the refusal cases share
# one emulator per module instead of starting one each.

@pytest.fixture(scope="module")
def empty_front() -> Iterator[Front]:
    with running_front() as emu:
        yield emu


@pytest.fixture(scope="module")
def world_front() -> Iterator[tuple[Front, Receiver]]:
    """The world seeded, and a subscribed receiver."""
    with running_front() as emu, receivers() as make:
        emu.seed(**_world())
        receiver = make(b"app-secret")
        _subscribe(emu, receiver)
        yield emu, receiver


def _world() -> dict[str, Any]:
    """A small company as a recorder would write it, every id given, mixing the compact
    form (``author_id``, ``tag_ids``) with recorded wire objects (``assignee``, ``tags``,
    recipients' ``_links``)."""
    pam = {"_links": {"self": f"{RECORDED}/teammates/tea_6r55a"}, "id": "tea_6r55a",
           "email": "pam@acme.example", "username": "pam", "first_name": "Pam",
           "last_name": "Beesly", "is_admin": False, "is_available": True,
           "is_blocked": False, "type": "user", "custom_fields": {},
           "license_type": "regular"}
    tag = {"id": "tag_2oxhvy", "name": "sf:opportunity", "description": None,
           "highlight": "blue", "is_private": False,
           "is_visible_in_conversation_lists": True, "created_at": T0 - 900.0,
           "updated_at": T0 - 800.0}
    return {
        "company": {"id": "cmp_k30", "name": "Acme"},
        "custom_fields": {"conversation": [{"id": "fld_co0e", "name": "Plan", "type": "enum",
                                            "description": "Billing plan",
                                            "values": ["Gold", "Silver"]}]},
        "teammates": [pam, {"id": "tea_jim1", "email": "jim@acme.example",
                            "first_name": "Jim", "last_name": "Halpert"}],
        "inboxes": [{"id": "inb_1ix6", "name": "Support", "address": "support@acme.example",
                     "is_private": False, "is_public": True, "custom_fields": {}}],
        "tags": [tag],
        "links": [{"id": "top_b2wpa", "name": "006Hs00001AbCdE", "type": "web",
                   "external_url": "https://acme.my.salesforce.com/006Hs00001AbCdE",
                   "custom_fields": {}}],
        "contacts": [{"id": "crd_2njtoem", "name": "Bob Vance",
                      "handles": [{"handle": "bob@vance.example", "source": "email"}],
                      "lists": [{"id": "grp_3j342", "name": "Customers",
                                 "is_private": False}]}],
        "conversations": [{
            "id": "cnv_yo1kg5q", "subject": "Quote for 40 reams", "status": "assigned",
            "assignee": pam, "tags": [tag], "link_ids": ["top_b2wpa"],
            "inbox_ids": ["inb_1ix6"], "custom_fields": {"Plan": "Gold"},
            "recipient": {"_links": {"related": {"contact":
                                                 f"{RECORDED}/contacts/crd_2njtoem"}},
                          "name": "Bob Vance", "handle": "bob@vance.example", "role": "from"},
            "created_at": T0, "updated_at": T0 + 300.0, "ticket_ids": [],
            "messages": [
                {"id": "msg_1q15qmtq", "type": "email", "is_inbound": True,
                 "created_at": T0, "subject": "Quote for 40 reams", "author": None,
                 "blurb": "Can you send", "body": "<p>Can you send a quote?</p>",
                 "text": "Can you send a quote?",
                 "recipients": [
                     {"_links": {"related": {"contact": f"{RECORDED}/contacts/crd_2njtoem"}},
                      "name": "Bob Vance", "handle": "bob@vance.example", "role": "from"},
                     {"_links": {"related": {"contact": None}}, "name": "Support",
                      "handle": "support@acme.example", "role": "to"}],
                 "attachments": [], "metadata": {}},
                {"id": "msg_1q15qn01", "is_inbound": False, "created_at": T0 + 200.0,
                 "author_id": "tea_6r55a", "text": "Attached <3",
                 "recipients": [{"handle": "support@acme.example", "role": "from"},
                                {"handle": "bob@vance.example", "role": "to",
                                 "contact_id": "crd_2njtoem"}]}],
            "comments": [{"id": "com_1ywg3f2", "author": pam, "body": "Gold customer",
                          "posted_at": T0 + 100.0, "is_pinned": True}],
            "events": [
                {"id": "evt_4ckcra8e", "type": "inbound", "emitted_at": T0,
                 "target": {"_meta": {"type": "message"}, "data": {"id": "msg_1q15qmtq"}}},
                {"id": "evt_4ckcra9f", "type": "comment", "emitted_at": T0 + 100.0,
                 "source": {"_meta": {"type": "teammate"}, "data": pam},
                 "target": "com_1ywg3f2"},
                {"id": "evt_4ckcrb0g", "type": "out_reply", "emitted_at": T0 + 200.0,
                 "target": "msg_1q15qn01"}],
        }],
        "events": [
            {"id": "evt_4ckcrb1h", "type": "tag", "emitted_at": T0 + 250.5,
             "conversation": {"id": "cnv_yo1kg5q"},
             "source": {"_meta": {"type": "rule"}, "data": {"id": "rul_58xhq",
                                                            "name": "Tag quotes"}},
             "target": {"_meta": {"type": "tag"}, "data": tag}},
            {"id": "evt_4ckcrb2i", "type": "assign", "emitted_at": T0 + 300.0,
             "conversation_id": "cnv_yo1kg5q", "source": "tea_jim1", "target": "tea_6r55a"}],
    }


def _get(front: Front, path: str) -> Any:
    resp = front.api.get(path)  # validated against the spec by the harness hook
    assert resp.status_code == 200, resp.text
    return resp.json()


# ---- a world with given ids round-trips -------------------------------------------------------

def test_given_ids_are_kept_and_served_by_the_public_routes(front: Front) -> None:
    ids = front.seed(**_world())
    assert ids["conversations"] == ["cnv_yo1kg5q"]
    assert ids["messages"] == ["msg_1q15qmtq", "msg_1q15qn01"]
    assert ids["comments"] == ["com_1ywg3f2"]
    assert ids["events"] == ["evt_4ckcra8e", "evt_4ckcra9f", "evt_4ckcrb0g", "evt_4ckcrb1h",
                             "evt_4ckcrb2i"]
    assert ids["teammates"] == ["tea_6r55a", "tea_jim1"] and ids["contacts"] == ["crd_2njtoem"]
    base = front.base_url

    assert _get(front, "/me") == {"_links": {"self": f"{base}/me"}, "id": "cmp_k30",
                                  "name": "Acme"}
    assert _get(front, "/teammates/tea_6r55a")["email"] == "pam@acme.example"
    assert _get(front, "/teammates/alt:email:jim@acme.example")["id"] == "tea_jim1"
    assert _get(front, "/inboxes/inb_1ix6")["_links"]["self"] == f"{base}/inboxes/inb_1ix6"
    tag = _get(front, "/tags/tag_2oxhvy")
    assert (tag["highlight"], tag["created_at"], tag["updated_at"]) == ("blue", T0 - 900.0,
                                                                        T0 - 800.0)
    assert _get(front, "/links/top_b2wpa")["external_url"].endswith("006Hs00001AbCdE")
    contact = _get(front, "/contacts/crd_2njtoem")
    assert [(g["id"], g["name"]) for g in contact["lists"]] == [("grp_3j342", "Customers")]
    assert _get(front, "/conversations/custom_fields")["_results"][0]["id"] == "fld_co0e"

    conv = _get(front, "/conversations/cnv_yo1kg5q")
    assert conv["_links"]["self"] == f"{base}/conversations/cnv_yo1kg5q"
    assert conv["_links"]["related"]["last_message"] == (
        f"{base}/messages/msg_1q15qn01?referer=conversation")
    assert (conv["status"], conv["assignee"]["id"]) == ("assigned", "tea_6r55a")
    assert [t["id"] for t in conv["tags"]] == ["tag_2oxhvy"]
    assert [lk["id"] for lk in conv["links"]] == ["top_b2wpa"]
    assert conv["custom_fields"] == {"Plan": "Gold"}
    assert conv["recipient"]["_links"]["related"]["contact"] == f"{base}/contacts/crd_2njtoem"
    assert (conv["created_at"], conv["updated_at"]) == (T0, T0 + 300.0)
    assert [c["id"] for c in _get(front, "/contacts/crd_2njtoem/conversations")["_results"]
            ] == ["cnv_yo1kg5q"]

    messages = _get(front, "/conversations/cnv_yo1kg5q/messages")["_results"]
    assert [m["id"] for m in messages] == ["msg_1q15qn01", "msg_1q15qmtq"]  # newest first
    inbound = _get(front, "/messages/msg_1q15qmtq")
    assert inbound == messages[1]
    assert (inbound["is_inbound"], inbound["author"], inbound["created_at"]) == (True, None, T0)
    assert inbound["body"] == "<p>Can you send a quote?</p>"
    assert inbound["text"] == "Can you send a quote?"
    assert inbound["recipients"][0]["_links"]["related"]["contact"] == (
        f"{base}/contacts/crd_2njtoem")
    assert _get(front, f"/messages/alt:uid:{inbound['message_uid']}")["id"] == "msg_1q15qmtq"
    reply = messages[0]
    assert (reply["is_inbound"], reply["author"]["id"]) == (False, "tea_6r55a")
    assert (reply["text"], reply["body"]) == ("Attached <3", "<p>Attached &lt;3</p>")
    assert reply["subject"] == "Quote for 40 reams"

    [comment] = _get(front, "/conversations/cnv_yo1kg5q/comments")["_results"]
    assert comment == _get(front, "/comments/com_1ywg3f2")
    assert (comment["author"]["id"], comment["posted_at"], comment["is_pinned"]) == (
        "tea_6r55a", T0 + 100.0, True)

    events = _get(front, "/conversations/cnv_yo1kg5q/events")["_results"]
    assert [e["id"] for e in events] == ["evt_4ckcrb2i", "evt_4ckcrb1h", "evt_4ckcrb0g",
                                         "evt_4ckcra9f", "evt_4ckcra8e"]
    tagged = _get(front, "/events/evt_4ckcrb1h")
    assert tagged == events[1]
    assert tagged["_links"]["self"] == f"{base}/events/evt_4ckcrb1h"
    assert tagged["emitted_at"] == T0 + 250.5
    assert tagged["source"]["data"]["id"] == "rul_58xhq"
    assert tagged["source"]["data"]["name"] == "Tag quotes"
    assert tagged["target"]["data"] == _get(front, "/tags/tag_2oxhvy")
    first = events[-1]
    assert first["source"]["_meta"]["type"] == "inboxes"
    assert [i["id"] for i in first["source"]["data"]] == ["inb_1ix6"]
    assert first["target"]["data"] == inbound
    assert first["conversation"]["id"] == "cnv_yo1kg5q"
    assert events[0]["target"]["data"]["id"] == "tea_6r55a"
    assert events[0]["source"]["data"]["id"] == "tea_jim1"


def _record(front: Front) -> dict[str, Any]:
    """What a recorder reads from an account through the public API, as a seed."""
    convs = _get(front, "/conversations")["_results"]
    world: dict[str, Any] = {
        "company": _get(front, "/me"),
        "teammates": _get(front, "/teammates")["_results"],
        "inboxes": _get(front, "/inboxes")["_results"],
        "tags": _get(front, "/tags")["_results"],
        "links": _get(front, "/links")["_results"],
        "contacts": _get(front, "/contacts")["_results"],
        "conversations": [], "events": [],
    }
    for conv in convs:
        world["conversations"].append({
            **conv,
            "messages": _get(front, f"/conversations/{conv['id']}/messages")["_results"],
            "comments": _get(front, f"/conversations/{conv['id']}/comments")["_results"]})
    page = _get(front, "/events")
    world["events"] += page["_results"]
    while page["_pagination"]["next"]:
        page = _get(front, page["_pagination"]["next"])
        world["events"] += page["_results"]
    world["events"].reverse()  # oldest first
    return world


def test_a_recorded_world_loads_into_a_fresh_emulator_unchanged(front: Front) -> None:
    """Record a company through the public API (wire shapes, absolute links), seed it into
    another emulator: the same ids answer the same bodies there."""
    front.seed(defaults=True)
    sim = front.simulate("inbound", **{"from": "bob@corp.example", "name": "Bob",
                                       "subject": "Quote", "text": "Price for 40 reams?"})
    cnv = sim["conversation_id"]
    front.simulate("tag", conversation_id=cnv, tag="sf:opportunity")
    front.simulate("comment", conversation_id=cnv, body="Gold customer")
    front.simulate("assign", conversation_id=cnv, teammate="jim@acme.example")
    front.simulate("link", conversation_id=cnv, external_url="https://sf.example/006A")
    front.simulate("outbound", conversation_id=cnv, teammate="jim@acme.example", text="Sent")
    front.simulate("archive", conversation_id=cnv, rule="Archive answered")
    world = _record(front)
    assert len(world["events"]) == 7

    with running_front() as other:
        ids = other.seed(**copy.deepcopy(world))
        assert ids["events"] == [e["id"] for e in world["events"]]

        def same(path: str, drop: str | None = None) -> None:
            served = json.loads(json.dumps(_get(other, path)).replace(other.base_url,
                                                                     front.base_url))
            recorded = _get(front, path)
            if drop:
                for body in (served, recorded):
                    for item in body.get("_results", [body]):
                        item.pop(drop)
            assert served == recorded, path

        for path in ("/me", "/teammates", "/inboxes", "/tags", "/links", "/contacts",
                     f"/conversations/{cnv}", f"/conversations/{cnv}/messages",
                     f"/conversations/{cnv}/comments", f"/messages/{sim['message_id']}",
                     f"/contacts/{sim['contact_id']}", "/conversations"):
            same(path)
        # An event carries its conversation as it is now (seeded state), not as it was.
        same(f"/conversations/{cnv}/events", drop="conversation")
        for event in world["events"]:
            same(f"/events/{event['id']}", drop="conversation")


# ---- refusals ---------------------------------------------------------------------------------

def _with(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    world = _world()
    change(world)
    return world


def _conv(world: dict[str, Any]) -> dict[str, Any]:
    conv: dict[str, Any] = world["conversations"][0]
    return conv


REFUSED: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("conversation prefix",
     lambda w: w["conversations"].extend([{"subject": f"c{i}"} for i in range(2)]
                                         + [{"id": "msg_abc"}]),
     "conversations[3].id: expected a cnv_… id (conversation), got 'msg_abc'"),
    ("teammate prefix", lambda w: w["teammates"][1].update(id="usr_1"),
     "teammates[1].id: expected a tea_… id (teammate), got 'usr_1'"),
    ("link is top_", lambda w: w["links"][0].update(id="lnk_b2wpa"),
     "links[0].id: expected a top_… id (link)"),
    ("not a string", lambda w: w["inboxes"][0].update(id=17),
     "inboxes[0].id: expected a inb_… id (inbox), got 17"),
    ("path in an id", lambda w: w["tags"][0].update(id="tag_a/b"),
     "tags[0].id: expected a tag_… id (tag)"),
    ("duplicate teammate",
     lambda w: w["teammates"][1].update(id="tea_6r55a"),
     "teammates[1].id: duplicate id tea_6r55a (also teammates[0].id)"),
    ("duplicate message",
     lambda w: _conv(w)["messages"][1].update(id="msg_1q15qmtq"),
     "conversations[0].messages[1].id: duplicate id msg_1q15qmtq "
     "(also conversations[0].messages[0].id)"),
    ("duplicate event across nesting",
     lambda w: w["events"][1].update(id="evt_4ckcra8e"),
     "events[1].id: duplicate id evt_4ckcra8e (also conversations[0].events[0].id)"),
    ("comment prefix", lambda w: _conv(w)["comments"][0].update(id="cmt_1"),
     "conversations[0].comments[0].id: expected a com_… id (comment)"),
    ("event prefix", lambda w: w["events"][0].update(id="ev_1"),
     "events[0].id: expected a evt_… id (event)"),
    ("custom field prefix",
     lambda w: w["custom_fields"]["conversation"][0].update(id="cf_1"),
     "custom_fields.conversation[0].id: expected a fld_… id (custom_field)"),
    ("unknown reference", lambda w: _conv(w).update(link_ids=["top_nope"]),
     "conversations[0].link_ids[0]: unknown link 'top_nope' (seed it first)"),
    ("unknown event target", lambda w: w["events"][1].update(target="tea_nope"),
     "events[1].target.data: unknown teammate 'tea_nope' (seed it first)"),
    ("unknown key", lambda w: _conv(w)["messages"][0].update(sender="bob"),
     "conversations[0].messages[0]: unknown keys ['sender']"),
    ("event type", lambda w: w["events"][0].update(type="snooze"),
     "events[0].type: must be one of"),
    ("emitted_at", lambda w: w["events"][0].update(emitted_at="yesterday"),
     "events[0].emitted_at: expected epoch seconds"),
    ("event without conversation", lambda w: w["events"][1].pop("conversation_id"),
     "events[1].conversation_id: required"),
    ("event in another conversation", lambda w: _conv(w)["events"][0].update(
        conversation_id="cnv_other"), "conversations[0].events[0].conversation_id: cnv_other "
                                      "inside conversation cnv_yo1kg5q"),
    ("recipient role", lambda w: _conv(w)["messages"][1]["recipients"][0].update(role="sender"),
     "conversations[0].messages[1].recipients[0].role: must be one of"),
    ("contact handle taken", lambda w: w["contacts"].append(
        {"handles": [{"handle": "BOB@vance.example", "source": "email"}]}),
     "contacts[1]: Your request contains a conflict with the contact(s): crd_2njtoem"),
]


@pytest.mark.parametrize(("change", "message"), [(c, m) for _, c, m in REFUSED],
                         ids=[name for name, _, _ in REFUSED])
def test_wrong_or_duplicate_ids_are_refused_naming_the_item(
        empty_front: Front, change: Callable[[dict[str, Any]], None], message: str) -> None:
    front = empty_front
    before = front.admin("GET", "state")
    resp = front.admin_client.post("/__admin/seed", json=_with(change))
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"].startswith(message), resp.json()["error"]
    assert resp.json()["_error"]["status"] == 400
    # All or nothing: the company is as it was (only the id serial moves on).
    after = front.admin("GET", "state")
    assert after.pop("serial") >= before.pop("serial")
    assert after == before


def test_an_id_already_in_the_emulator_is_refused(front: Front) -> None:
    front.seed(**_world())
    again = {"conversations": [{"id": "cnv_new1"}, {"id": "cnv_yo1kg5q"}]}
    resp = front.admin_client.post("/__admin/seed", json=again)
    assert resp.status_code == 400
    assert resp.json()["error"] == ("conversations[1].id: duplicate id cnv_yo1kg5q "
                                    "(already in the emulator)")
    assert front.api.get("/conversations/cnv_new1").status_code == 404
    # After a reset the same world loads again (a replay run per test).
    front.admin("POST", "reset")
    assert front.seed(**_world())["conversations"] == ["cnv_yo1kg5q"]


def test_generated_ids_never_collide_with_given_ones(front: Front, tmp_path: Path) -> None:
    front.seed(defaults=True)
    serial = front.state.serial
    # Given ids equal to those the generator would hand out next, for every kind that
    # simulate and the API make.
    given: set[str] = set()

    def next_id(kind: str, n: int) -> str:
        given.add(make_id(kind, serial + n))
        return make_id(kind, serial + n)

    world = {
        "contacts": [{"id": next_id("contact", n), "handles": [
            {"handle": f"c{n}@corp.example", "source": "email"}]} for n in range(1, 4)],
        "conversations": [{"id": next_id("conversation", n), "subject": f"s{n}",
                           "messages": [{"id": next_id("message", n + 1)}],
                           "comments": [{"id": next_id("comment", n + 2),
                                         "author": "pam@acme.example", "body": "x"}],
                           "events": [{"id": next_id("event", n + 3), "type": "inbound",
                                       "emitted_at": T0 + n,
                                       "target": make_id("message", serial + n + 1)}]}
                          for n in range(4, 40, 4)],
    }
    front.seed(**world)
    made: set[str] = set()
    for i in range(6):
        sim = front.simulate("inbound", **{"from": f"new{i}@corp.example", "text": "hi"})
        made |= {sim["conversation_id"], sim["message_id"], sim["contact_id"],
                 *sim["event_ids"]}
        made |= set(front.simulate("comment", conversation_id=sim["conversation_id"],
                                   body="x")["event_ids"])
    assert made.isdisjoint(given)
    # The reservation outlives a restart (--persist) and a reset.
    front.state.save(tmp_path / "state.json")
    loaded = FrontState.load(tmp_path / "state.json")
    assert given <= loaded.reserved
    loaded.reset()
    loaded.serial = serial
    assert {loaded.new_id(k) for k in ("conversation", "message", "event")
            for _ in range(40)}.isdisjoint(given)


# ---- the Events API over a seeded window ------------------------------------------------------

def test_events_api_serves_seeded_events_in_the_window_newest_first(front: Front) -> None:
    events: list[dict[str, Any]] = [
        {"id": f"evt_w{i:03d}", "type": "comment" if i % 3 else "inbound",
         "emitted_at": T0 + 10.0 * i + 0.125, "conversation_id": "cnv_w1",
         **({"target": "msg_m1"} if i % 3 == 0 else
            {"source": "tea_6r55a", "target": "com_c1"})} for i in range(50)]

    def window_world(world: dict[str, Any]) -> None:
        _conv(world).update(id="cnv_w1", messages=[{"id": "msg_m1", "created_at": T0}],
                            comments=[{"id": "com_c1", "author_id": "tea_6r55a",
                                       "body": "b", "posted_at": T0}], events=[])
        world["events"] = events

    front.seed(**_with(window_world))
    after, before = T0 + 50.0, T0 + 450.0  # exclusive bounds: i = 5 … 44
    window = [e["id"] for e in reversed(events) if after < e["emitted_at"] < before]
    assert len(window) == 40

    page = _get(front, f"/events?q[after]={after}&q[before]={before}")
    got, pages = list(page["_results"]), [len(page["_results"])]
    while page["_pagination"]["next"]:
        assert page["_pagination"]["next"].startswith(f"{front.base_url}/events?")
        page = _get(front, page["_pagination"]["next"])
        got += page["_results"]
        pages.append(len(page["_results"]))
    assert pages == [15, 15, 10]
    assert [e["id"] for e in got] == window
    assert [e["emitted_at"] for e in got] == sorted((e["emitted_at"] for e in got),
                                                    reverse=True)
    assert got[0]["emitted_at"] == T0 + 440.125  # kept as given
    assert all(e["_links"]["self"] == f"{front.base_url}/events/{e['id']}" for e in got)

    inbound = _get(front, f"/events?q[types]=inbound&q[after]={after}&q[before]={before}")
    assert [e["id"] for e in inbound["_results"]] == [i for i in window
                                                      if int(i[5:]) % 3 == 0]
    assert inbound["_pagination"]["next"] is None
    assert _get(front, "/events/evt_w007")["emitted_at"] == T0 + 70.125
    # Events simulated afterwards are newer than the recorded past and come first.
    live = front.simulate("comment", conversation_id="cnv_w1", body="now")["event_ids"][0]
    assert _get(front, "/events")["_results"][0]["id"] == live


# ---- replaying recorded webhooks --------------------------------------------------------------

def _subscribe(front: Front, receiver: Receiver, **extra: Any) -> str:
    sub: dict[str, Any] = front.admin("POST", "webhooks", {
        "url": receiver.url, "kind": receiver.kind, "secret": receiver.secret.decode(),
        "backoff_s": 0.01, **extra})
    return str(sub["id"])


def _drain(front: Front) -> None:
    assert front.admin("POST", "webhooks/drain", {"timeout": 20})["drained"]


def _recorded_event(event_id: str) -> dict[str, Any]:
    """An event as Front sent it (links on Front's host)."""
    return {"_links": {"self": f"{RECORDED}/events/{event_id}"}, "id": event_id,
            "type": "tag", "emitted_at": T0 + 250.5,
            "source": {"_meta": {"type": "rule"},
                       "data": {"_links": {"self": f"{RECORDED}/rules/rul_58xhq"},
                                "id": "rul_58xhq", "name": "Tag quotes"}},
            "target": {"_meta": {"type": "tag"},
                       "data": {"_links": {"self": f"{RECORDED}/tags/tag_2oxhvy"},
                                "id": "tag_2oxhvy", "name": "sf:opportunity"}},
            "conversation": {"_links": {"self": f"{RECORDED}/conversations/cnv_yo1kg5q"},
                             "id": "cnv_yo1kg5q", "status": "assigned"}}


def test_replayed_recorded_webhooks_are_delivered_signed(
        front: Front, receiver_factory: Callable[..., Receiver]) -> None:
    front.seed(**_world())
    app = receiver_factory(b"app-secret")
    rule = receiver_factory(b"rule-secret", kind="rule")
    app_sub, rule_sub = _subscribe(front, app), _subscribe(front, rule)
    envelope = {"type": "tag_added", "authorization": {"id": "cmp_k30"},
                "payload": _recorded_event("evt_4ckcrb1h")}
    out = front.admin("POST", "webhooks/replay", {"webhooks": [envelope, "evt_4ckcra8e"]})
    assert [(r["event_id"], r["in_world"], sorted(r["subscriptions"]))
            for r in out["replayed"]] == [("evt_4ckcrb1h", True, sorted([app_sub, rule_sub])),
                                          ("evt_4ckcra8e", True, sorted([app_sub, rule_sub]))]
    _drain(front)

    hooks = app.events()
    assert [h.verified for h in hooks] == ["app", "app"]  # sources.front._signature
    for hook in hooks:  # …and by hand, the way a receiver computes it (fact sheet §7.1)
        ts = hook.headers["x-front-request-timestamp"]
        mac = hmac.new(b"app-secret", ts.encode() + b":" + hook.body, hashlib.sha256)
        assert hook.headers["x-front-signature"] == base64.b64encode(mac.digest()).decode()
    recorded, stored = hooks[0].json, hooks[1].json
    assert recorded["type"] == "tag_added"  # the recorded envelope type is kept
    assert recorded["authorization"] == {"id": "cmp_k30"}  # the seeded company
    expected = json.loads(json.dumps(_recorded_event("evt_4ckcrb1h")).replace(
        RECORDED, front.base_url))  # links answer on the emulator
    assert recorded["payload"] == expected
    assert stored["type"] == "inbound_received"
    assert stored["payload"] == _get(front, "/events/evt_4ckcra8e")

    rule_hooks = rule.events()
    assert [h.verified for h in rule_hooks] == ["rule", "rule"]
    mac = hmac.new(b"rule-secret", rule_hooks[0].body, hashlib.sha1)
    assert rule_hooks[0].headers["x-front-signature"] == base64.b64encode(mac.digest()).decode()
    assert rule_hooks[0].json == expected  # bare event
    assert "x-front-request-timestamp" not in rule_hooks[0].headers
    deliveries = front.admin("GET", "webhooks")["deliveries"]
    assert all(d["replayed"] and d["status"] == 200 for d in deliveries)

    # A recorded rule body (the bare event), only to one subscription.
    bare = _recorded_event("evt_4ckcrb1h")
    front.admin("POST", "webhooks/replay", {"webhooks": [bare], "subscription": app_sub})
    _drain(front)
    assert len(rule.events()) == 2
    again = app.events()[2]
    assert again.verified == "app" and again.json["type"] == "tag_added"  # mapped type
    assert again.json["payload"] == expected


def test_seeded_events_are_delivered_only_when_asked(
        front: Front, receiver_factory: Callable[..., Receiver]) -> None:
    app = receiver_factory(b"app-secret")
    _subscribe(front, app)
    world = _world()
    world["events"][1]["deliver"] = True
    front.seed(**world)
    _drain(front)
    [hook] = app.events()
    assert hook.verified == "app"
    assert hook.json["type"] == "assignee_changed"
    assert hook.json["payload"] == _get(front, "/events/evt_4ckcrb2i")
    assert hook.json["payload"]["emitted_at"] == T0 + 300.0


@pytest.mark.parametrize(("body", "message"), [
    ({"webhooks": ["evt_nope"]}, "webhooks[0]: unknown event 'evt_nope'"),
    ({"webhooks": [{"type": "sync", "authorization": {"id": "cmp_k30"}, "payload": {}}]},
     "webhooks[0]: a sync body is the subscription handshake"),
    ({"webhooks": ["evt_4ckcra8e", {"type": "tag"}]}, "webhooks[1]: the event has no evt_ id"),
    ({"webhooks": []}, "webhooks: expected a non-empty array"),
    ({"webhooks": ["evt_4ckcra8e"], "subscription": "wh_nope"},
     "subscription: unknown subscription 'wh_nope'"),
])
def test_replay_refuses_what_it_cannot_deliver(world_front: tuple[Front, Receiver],
                                              body: dict[str, Any], message: str) -> None:
    front, app = world_front
    resp = front.admin_client.post("/__admin/webhooks/replay", json=body)
    assert resp.status_code == 400 and resp.json()["error"].startswith(message), resp.text
    _drain(front)
    assert app.events() == []  # nothing queued: validated before any delivery


def test_the_documented_seed_example_loads(front: Front) -> None:
    doc = emulators.front.__doc__ or ""
    start = doc.index('{"company"')
    example = json.loads(doc[start:doc.index("\n\nReplaying", start)])
    ids = front.seed(**example)
    assert ids["events"] == ["evt_4ckcra8e", "evt_4ckcra9f"]
    event = _get(front, "/events/evt_4ckcra9f")
    assert (event["emitted_at"], event["target"]["data"]["id"]) == (1703102616.412,
                                                                    "tag_2oxhvy")
    assert _get(front, "/conversations/cnv_yo1kg5q")["status"] == "assigned"


def test_a_recorded_preview_replays_to_a_preview_subscriber(
        front: Front, receiver_factory: Callable[..., Receiver]) -> None:
    front.seed(**_world())
    app = receiver_factory(b"app-secret")
    _subscribe(front, app, preview=True)
    full = _recorded_event("evt_4ckcrb1h")
    preview = {**full, "source": {"_meta": {"type": "rule"}, "id": "rul_58xhq",
                                  "_links": {"self": f"{RECORDED}/rules/rul_58xhq"}},
               "target": {"_meta": {"type": "tag"}, "id": "tag_2oxhvy",
                          "_links": {"self": f"{RECORDED}/tags/tag_2oxhvy"}},
               "conversation": {"_links": {"self": f"{RECORDED}/conversations/cnv_yo1kg5q"},
                                "id": "cnv_yo1kg5q"}}
    front.admin("POST", "webhooks/replay", [full, preview])  # a bare list works too
    _drain(front)
    first, second = (h.json["payload"] for h in app.events())
    assert first == second  # a full event is reduced, a preview stays as it was
    assert first["target"] == {"_meta": {"type": "tag"}, "id": "tag_2oxhvy",
                               "_links": {"self": f"{front.base_url}/tags/tag_2oxhvy"}}
