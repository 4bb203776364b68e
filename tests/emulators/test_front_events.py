"""The Events API the gap-filler relies on (fact sheet §2.4): pages of at most 15, newest
first, q[types|after|before|inboxes] in every bracket form clients send, absolute
``_pagination.next`` URLs on the emulator that carry the query and an opaque page_token,
and stable pages while new events arrive."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.emulators.test_front_harness import Front, running_front

T0 = 1_700_000_000.0


@pytest.fixture
def front() -> Iterator[Front]:
    with running_front() as emu:
        emu.seed(defaults=True)
        yield emu


def _walk(front: Front, first: str, params: dict[str, Any] | None = None
          ) -> tuple[list[dict[str, Any]], list[str]]:
    """Follow _pagination.next verbatim; return the events and the URLs followed."""
    page = front.api.get(first, params=params).json()
    events, urls = list(page["_results"]), []
    while page["_pagination"]["next"]:
        urls.append(page["_pagination"]["next"])
        page = front.api.get(urls[-1]).json()
        assert len(page["_results"]) <= 15
        events += page["_results"]
    return events, urls


def _backdated(front: Front, count: int, step: float = 10.0) -> list[str]:
    """`count` inbound events at T0, T0+step, …"""
    ids = []
    for i in range(count):
        out = front.simulate("inbound", **{"from": f"c{i}@corp.example", "text": str(i),
                                           "at": T0 + i * step})
        ids.append(out["event_ids"][0])
    return ids


def test_pages_hold_15_newest_first_and_next_is_absolute(front: Front) -> None:
    ids = _backdated(front, 40)
    first = front.api.get("/events").json()
    assert len(first["_results"]) == 15  # default = max = 15
    assert first["_links"]["self"] == f"{front.base_url}/events"
    events, urls = _walk(front, "/events")
    assert [e["id"] for e in events] == list(reversed(ids))
    assert all(a["emitted_at"] > b["emitted_at"] for a, b in zip(events, events[1:],
                                                                  strict=False))
    assert len(urls) == 2
    for url in urls:
        assert url.startswith(f"{front.base_url}/events?")
        assert "page_token" in parse_qs(urlsplit(url).query)
    assert len({e["id"] for e in events}) == 40


def test_limit_above_15_is_refused_unless_clamping(front: Front) -> None:
    assert front.api.get("/events", params={"limit": 15}).status_code == 200
    resp = front.api.get("/events", params={"limit": 100})
    assert resp.status_code == 400 and "15" in resp.json()["_error"]["message"]
    assert front.api.get("/contacts", params={"limit": 101}).status_code == 400
    front.config(clamp_limit=True)
    _backdated(front, 20)
    assert len(front.api.get("/events", params={"limit": 100}).json()["_results"]) == 15


@pytest.mark.parametrize("style", ["repeat", "brackets"])
def test_type_filter_accepts_both_bracket_forms(front: Front, style: str) -> None:
    cnv = front.simulate("inbound", **{"from": "a@corp.example"})["conversation_id"]
    front.simulate("tag", conversation_id=cnv, tag="x")
    front.simulate("archive", conversation_id=cnv)
    front.simulate("comment", conversation_id=cnv, body="note")
    query = {"repeat": "q[types]=inbound&q[types]=archive",
             "brackets": "q[types][]=inbound&q[types][]=archive"}[style]
    events = front.api.get(f"/events?{query}").json()["_results"]
    assert [e["type"] for e in events] == ["archive", "inbound"]
    encoded = query.replace("[", "%5B").replace("]", "%5D")
    assert front.api.get(f"/events?{encoded}").json()["_results"] == events


def test_malformed_filters_are_refused_not_ignored(front: Front) -> None:
    for query in ("q[types]=tagged", "q[types]=inbound,archive", "q[types][0]=inbound",
                  "q[type]=inbound", 'q={"types":["inbound"]}'):
        assert front.api.get(f"/events?{query}").status_code == 400, query
    assert front.api.get("/conversations?q[statuses]=open").status_code == 400
    assert front.api.get("/contacts?q[updated]=1").status_code == 400


def test_time_window_and_gap_fill_walk(front: Front) -> None:
    ids = _backdated(front, 30)  # T0 … T0+290
    window = {"q[after]": int(T0 + 45), "q[before]": int(T0 + 205)}  # events 5 … 20
    events, urls = _walk(front, "/events", window)
    assert [e["id"] for e in events] == list(reversed(ids[5:21]))
    # next carries the original query: following it needs no re-sent parameters.
    assert parse_qs(urlsplit(urls[0]).query)["q[after]"] == [str(int(T0 + 45))]
    # Bounds are exclusive; fractional bounds are accepted (spec: up to 3 decimals)…
    edge = front.api.get("/events", params={"q[after]": T0 + 50, "q[before]": T0 + 60.5})
    assert [e["id"] for e in edge.json()["_results"]] == [ids[6]]
    # …unless the observed live behaviour is switched on.
    front.config(reject_fractional_q_time=True)
    assert front.api.get("/events", params={"q[after]": T0 + 0.5}).status_code == 400
    assert front.api.get("/events", params={"q[after]": "yesterday"}).status_code == 400


def test_ascending_order_and_inbox_filter(front: Front) -> None:
    sales = front.seed(inboxes=[{"name": "Sales", "address": "sales@acme.example"}])
    ids = _backdated(front, 3)
    other = front.simulate("inbound", **{"from": "s@corp.example", "to": "sales@acme.example",
                                         "at": T0 + 100})
    asc = front.api.get("/events", params={"sort_order": "asc", "sort_by": "created_at"})
    assert [e["id"] for e in asc.json()["_results"]] == [*ids, other["event_ids"][0]]
    only_sales = front.api.get("/events", params={"q[inboxes]": sales["inboxes"][0]})
    assert [e["id"] for e in only_sales.json()["_results"]] == other["event_ids"]
    assert front.api.get("/events", params={"sort_by": "id"}).status_code == 400


def test_pages_are_stable_while_events_arrive(front: Front) -> None:
    ids = _backdated(front, 30)
    page = front.api.get("/events").json()
    seen = [e["id"] for e in page["_results"]]
    # New activity lands at the head mid-walk; the cursor must not skip or repeat.
    for i in range(5):
        front.simulate("inbound", **{"from": f"late{i}@corp.example"})
    while page["_pagination"]["next"]:
        page = front.api.get(page["_pagination"]["next"]).json()
        seen += [e["id"] for e in page["_results"]]
    assert seen == list(reversed(ids))
    assert front.api.get("/events", params={"page_token": "zz"}).status_code == 400


def test_single_event_and_conversation_history(front: Front) -> None:
    sim = front.simulate("inbound", **{"from": "a@corp.example", "subject": "Hi"})
    cnv = sim["conversation_id"]
    front.simulate("assign", conversation_id=cnv, assignee="pam@acme.example")
    front.simulate("archive", conversation_id=cnv)
    event = front.api.get(f"/events/{sim['event_ids'][0]}").json()
    assert event["type"] == "inbound" and event["source"]["_meta"]["type"] == "inboxes"
    assert event["target"]["data"]["id"] == sim["message_id"]
    assert event["target"]["data"]["author"] is None
    assert event["conversation"]["id"] == cnv
    # The embedded conversation is a snapshot at emission time.
    assert event["conversation"]["status"] == "unassigned"
    history = front.api.get(f"/conversations/{cnv}/events").json()["_results"]
    assert [e["type"] for e in history] == ["archive", "assign", "inbound"]
    assert history[0]["target"] is None
    assert history[1]["target"]["data"]["email"] == "pam@acme.example"
    assert front.api.get("/events/evt_missing").status_code == 404
