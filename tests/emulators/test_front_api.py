"""Behaviour of the Front emulator's public API that naive clients get wrong (fact sheet §0):
aliases, whole-set replacement, handle conflicts, 301 for merged conversations, our own
writes coming back as events, status vocabularies, no idempotency. Every response is also
validated against the spec by the harness client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.emulators.test_front_harness import Front, running_front


@pytest.fixture
def front() -> Iterator[Front]:
    with running_front() as emu:
        emu.seed(defaults=True, custom_fields={
            "contact": [{"name": "SF Contact Id"}, {"name": "Tier", "type": "enum",
                                                    "values": ["Gold", "Silver"]},
                        {"name": "Score", "type": "number"}],
            "conversation": [{"name": "SF Case"}, {"name": "Priority", "type": "number"}]})
        yield emu


def _contact(front: Front, **body: Any) -> dict[str, Any]:
    resp = front.api.post("/contacts", json=body)
    assert resp.status_code == 201, resp.text
    out: dict[str, Any] = resp.json()
    return out


def _inbound(front: Front, sender: str = "bob@corp.example", **extra: Any) -> dict[str, Any]:
    return front.simulate("inbound", **{"from": sender, "subject": "Quote", "text": "hi",
                                        **extra})


def _events(front: Front, **params: Any) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = front.api.get("/events", params=params).json()["_results"]
    return results


# ---- aliases ----------------------------------------------------------------------------

def test_contact_aliases_raw_and_percent_encoded(front: Front) -> None:
    bob = _contact(front, name="Bob", handles=[{"handle": "bob@corp.example", "source": "email"},
                                               {"handle": "+14155550100", "source": "phone"}])
    for path in ("/contacts/alt:email:bob@corp.example",
                 "/contacts/alt:email:bob%40corp.example",
                 "/contacts/alt%3Aemail%3Abob%40corp.example",
                 "/contacts/alt:email:BOB@Corp.Example",  # email handles compare case-blind
                 "/contacts/alt:phone:+14155550100",
                 "/contacts/alt:phone:%2B14155550100"):
        resp = front.api.get(path)
        assert resp.status_code == 200, path
        assert resp.json()["id"] == bob["id"]
    assert front.api.get("/contacts/alt:email:nobody@corp.example").status_code == 404
    assert front.api.get("/contacts/alt:phone:+14155550199").status_code == 404
    # Aliases work for writes and sub-resources too.
    assert front.api.patch("/contacts/alt:email:bob%40corp.example",
                           json={"name": "Robert"}).status_code == 204
    assert front.api.get(f"/contacts/{bob['id']}").json()["name"] == "Robert"
    assert front.api.post("/contacts/alt:phone:+14155550100/handles",
                          json={"handle": "bobby", "source": "twitter"}).status_code == 204
    assert front.api.get("/contacts/alt:twitter:bobby").json()["id"] == bob["id"]


def test_teammate_lookup_by_id_and_email_alias(front: Front) -> None:
    listed = front.api.get("/teammates").json()
    assert "_pagination" not in listed  # GET /teammates is not paginated
    pam = next(t for t in listed["_results"] if t["email"] == "pam@acme.example")
    assert front.api.get(f"/teammates/{pam['id']}").json()["email"] == "pam@acme.example"
    for ref in ("alt:email:pam@acme.example", "alt:email:pam%40acme.example",
                "alt:email:PAM@acme.example"):
        assert front.api.get(f"/teammates/{ref}").json()["id"] == pam["id"], ref
    assert front.api.get("/teammates/alt:email:ghost@acme.example").status_code == 404
    # Teammate aliases are valid authors too.
    cnv = _inbound(front)["conversation_id"]
    com = front.api.post(f"/conversations/{cnv}/comments",
                         json={"body": "hi", "author_id": "alt:email:pam@acme.example"})
    assert com.json()["author"]["id"] == pam["id"]


# ---- contacts ----------------------------------------------------------------------------

def test_patch_replaces_the_whole_custom_fields_set(front: Front) -> None:
    c = _contact(front, handles=[{"handle": "ann@corp.example", "source": "email"}],
                 custom_fields={"SF Contact Id": "003A", "Tier": "Gold"})
    assert c["custom_fields"] == {"SF Contact Id": "003A", "Tier": "Gold"}
    # Sending only the field to change erases the others (fact sheet §0.4).
    assert front.api.patch(f"/contacts/{c['id']}", json={"custom_fields": {"Tier": "Silver"}}
                           ).status_code == 204
    assert front.api.get(f"/contacts/{c['id']}").json()["custom_fields"] == {"Tier": "Silver"}
    # A PATCH without custom_fields leaves them alone.
    front.api.patch(f"/contacts/{c['id']}", json={"description": "x"})
    got = front.api.get(f"/contacts/{c['id']}").json()
    assert got["custom_fields"] == {"Tier": "Silver"} and got["description"] == "x"
    # links and list_names are whole-set too; list_names creates missing lists.
    front.api.patch(f"/contacts/{c['id']}", json={"links": ["https://a"], "list_names": ["A"]})
    front.api.patch(f"/contacts/{c['id']}", json={"links": ["https://b"], "list_names": ["B"]})
    got = front.api.get(f"/contacts/{c['id']}").json()
    assert got["links"] == ["https://b"] and [g["name"] for g in got["lists"]] == ["B"]


def test_custom_fields_are_validated_against_definitions(front: Front) -> None:
    c = _contact(front, handles=[{"handle": "x@corp.example", "source": "email"}],
                 custom_fields={"Tier": "Gold"})
    for bad in ({"Unknown": "x"}, {"Tier": "Platinum"}, {"Score": "high"}, {"Score": True}):
        resp = front.api.patch(f"/contacts/{c['id']}", json={"custom_fields": bad})
        assert resp.status_code == 400, bad
        assert resp.json()["_error"]["details"]
    # A refused PATCH changes nothing.
    assert front.api.get(f"/contacts/{c['id']}").json()["custom_fields"] == {"Tier": "Gold"}
    cnv = _inbound(front)["conversation_id"]
    resp = front.api.patch(f"/conversations/{cnv}", json={"custom_fields": {"Nope": 1},
                                                          "status": "archived"})
    assert resp.status_code == 400
    assert front.api.get(f"/conversations/{cnv}").json()["status"] == "unassigned"


def test_handles_are_unique_across_contacts(front: Front) -> None:
    ann = _contact(front, handles=[{"handle": "ann@corp.example", "source": "email"}])
    resp = front.api.post("/contacts", json={"handles": [{"handle": "ANN@corp.example",
                                                          "source": "email"}]})
    assert resp.status_code == 409
    assert resp.json()["_error"]["message"] == (
        f"Your request contains a conflict with the contact(s): {ann['id']}")
    other = _contact(front, handles=[{"handle": "other@corp.example", "source": "email"}])
    resp = front.api.post(f"/contacts/{other['id']}/handles",
                          json={"handle": "ann@corp.example", "source": "email"})
    assert resp.status_code == 409
    # Moving a handle = delete from one, add to the other.
    assert front.api.request("DELETE", f"/contacts/{ann['id']}/handles",
                             json={"handle": "ann@corp.example", "source": "email"}
                             ).status_code == 400  # the last handle needs force
    front.api.post(f"/contacts/{ann['id']}/handles", json={"handle": "+15550001",
                                                           "source": "phone"})
    assert front.api.request("DELETE", f"/contacts/{ann['id']}/handles",
                             json={"handle": "ann@corp.example", "source": "email"}
                             ).status_code == 204
    assert front.api.post(f"/contacts/{other['id']}/handles",
                          json={"handle": "ann@corp.example", "source": "email"}
                          ).status_code == 204
    assert front.api.get("/contacts/alt:email:ann@corp.example").json()["id"] == other["id"]
    # force deletes the contact with its last handle.
    assert front.api.request("DELETE", f"/contacts/{ann['id']}/handles",
                             json={"handle": "+15550001", "source": "phone", "force": True}
                             ).status_code == 204
    assert front.api.get(f"/contacts/{ann['id']}").status_code == 404


def test_contact_merge_deletes_the_merged_ids(front: Front) -> None:
    a = _contact(front, handles=[{"handle": "a@corp.example", "source": "email"}],
                 custom_fields={"Tier": "Gold"})
    b = _contact(front, handles=[{"handle": "+15550002", "source": "phone"}],
                 custom_fields={"Tier": "Silver", "SF Contact Id": "003B"})
    merged = front.api.post("/contacts/merge", json={"target_contact_id": a["id"],
                                                     "contact_ids": [b["id"]]}).json()
    assert merged["id"] == a["id"]
    assert {h["handle"] for h in merged["handles"]} == {"a@corp.example", "+15550002"}
    assert merged["custom_fields"] == {"Tier": "Gold", "SF Contact Id": "003B"}
    assert front.api.get(f"/contacts/{b['id']}").status_code == 404
    assert front.api.get("/contacts/alt:phone:+15550002").json()["id"] == a["id"]


def test_contact_list_filters_and_pages(front: Front) -> None:
    made = [_contact(front, handles=[{"handle": f"c{i}@corp.example", "source": "email"}])
            for i in range(5)]
    first = front.api.get("/contacts", params={"limit": 2}).json()
    assert len(first["_results"]) == 2 and first["_pagination"]["next"]
    ids, page = [], first
    while True:
        ids += [c["id"] for c in page["_results"]]
        if not page["_pagination"]["next"]:
            break
        page = front.api.get(page["_pagination"]["next"]).json()
    assert ids == [c["id"] for c in reversed(made)]  # newest first
    cutoff = front.state.contacts[made[2]["id"]]["updated_at"]
    newer = front.api.get("/contacts", params={"q[updated_after]": cutoff}).json()["_results"]
    assert {c["id"] for c in newer} == {made[3]["id"], made[4]["id"]}


# ---- conversations ----------------------------------------------------------------------

def test_our_writes_come_back_as_api_events(front: Front) -> None:
    """The loop-guard key: API writes emit events whose source is the API identity, while
    teammates' actions are sourced 'teammate' (fact sheet §0.11)."""
    cnv = _inbound(front)["conversation_id"]
    tag = front.api.get("/company/tags").json()["_results"][0]["id"]
    front.api.post(f"/conversations/{cnv}/tags", json={"tag_ids": [tag]})
    front.api.post(f"/conversations/{cnv}/comments", json={"body": "[frontforce] synced"})
    front.simulate("comment", conversation_id=cnv, body="Thanks!")
    front.simulate("untag", conversation_id=cnv, tag_id=tag, teammate="jim@acme.example")
    events = _events(front, **{"q[types]": ["tag", "untag", "comment"], "sort_order": "asc"})
    sources = [(e["type"], e["source"]["_meta"]["type"]) for e in events]
    assert sources == [("tag", "api"), ("comment", "api"), ("comment", "teammate"),
                       ("untag", "teammate")]
    api_comment = events[1]
    assert api_comment["source"]["data"]["type"] == "api"  # authored by the API bot
    assert api_comment["target"]["data"]["body"] == "[frontforce] synced"
    assert events[3]["source"]["data"]["email"] == "jim@acme.example"
    # Rules are a third kind of source.
    front.simulate("tag", conversation_id=cnv, tag="auto", rule="Tag VIPs")
    rule_event = _events(front, **{"q[types]": "tag", "limit": 1})[0]
    assert rule_event["source"]["_meta"]["type"] == "rule"
    assert rule_event["source"]["data"]["name"] == "Tag VIPs"


def test_status_vocabularies_and_events(front: Front) -> None:
    cnv = _inbound(front)["conversation_id"]
    pam = front.api.get("/teammates/alt:email:pam@acme.example").json()["id"]

    def read() -> str:
        status: str = front.api.get(f"/conversations/{cnv}").json()["status"]
        return status

    assert read() == "unassigned"
    front.api.put(f"/conversations/{cnv}/assignee", json={"assignee_id": pam})
    assert read() == "assigned"
    for write, expected in (("archived", "archived"), ("open", "assigned"),
                            ("deleted", "deleted"), ("open", "assigned"), ("spam", "deleted")):
        assert front.api.patch(f"/conversations/{cnv}", json={"status": write}
                               ).status_code == 204
        assert read() == expected, write
    # Filter vocabulary: "trashed" finds what reads as "deleted".
    trashed = front.api.get("/conversations", params={"q[statuses]": "trashed"}).json()
    assert [c["id"] for c in trashed["_results"]] == [cnv]
    assert front.api.get("/conversations").json()["_results"] == []  # trash not listed
    assert front.api.patch(f"/conversations/{cnv}", json={"status": "unassigned"}
                           ).status_code == 400  # read vocabulary is not writable
    # assignee_id null unassigns, though the spec types it as a string.
    front.api.patch(f"/conversations/{cnv}", json={"status": "open"})
    assert front.api.put(f"/conversations/{cnv}/assignee", json={"assignee_id": None}
                         ).status_code == 204
    assert read() == "unassigned"
    types = [e["type"] for e in _events(front, sort_order="asc")]
    assert types == ["inbound", "assign", "archive", "reopen", "trash", "restore", "trash",
                     "restore", "unassign"]


def test_patch_tag_ids_replaces_and_post_adds(front: Front) -> None:
    cnv = _inbound(front)["conversation_id"]
    t1, t2 = (t["id"] for t in front.api.get("/company/tags").json()["_results"])
    t3 = front.api.post("/company/tags", json={"name": "third"}).json()["id"]
    front.api.post(f"/conversations/{cnv}/tags", json={"tag_ids": [t1, t2]})
    front.api.post(f"/conversations/{cnv}/tags", json={"tag_ids": [t1]})  # no-op, no event
    front.api.patch(f"/conversations/{cnv}", json={"tag_ids": [t3]})
    tags = [t["id"] for t in front.api.get(f"/conversations/{cnv}").json()["tags"]]
    assert tags == [t3]
    types = [e["type"] for e in _events(front, **{"q[types][]": ["tag", "untag"],
                                                  "sort_order": "asc"})]
    assert types == ["tag", "tag", "untag", "untag", "tag"]
    assert front.api.post(f"/conversations/{cnv}/tags", json={"tag_ids": ["tag_nope"]}
                          ).status_code == 404


def test_comments_have_no_idempotency(front: Front) -> None:
    cnv = _inbound(front)["conversation_id"]
    for _ in range(2):
        assert front.api.post(f"/conversations/{cnv}/comments", json={"body": "same"}
                              ).status_code == 201
    comments = front.api.get(f"/conversations/{cnv}/comments").json()
    assert "_pagination" not in comments
    assert [c["body"] for c in comments["_results"]] == ["same", "same"]


def test_links_by_external_url_are_reused(front: Front) -> None:
    cnv = _inbound(front)["conversation_id"]
    url = "https://acme.my.salesforce.com/500Hs00001XyZ"
    for _ in range(2):
        assert front.api.post(f"/conversations/{cnv}/links",
                              json={"link_external_urls": [url]}).status_code == 204
    conv = front.api.get(f"/conversations/{cnv}").json()
    assert [(lk["external_url"], lk["type"]) for lk in conv["links"]] == [(url, "web")]
    assert conv["links"][0]["id"].startswith("top_")
    same = front.api.post("/links", json={"external_url": url})
    assert same.status_code == 201 and same.json()["id"] == conv["links"][0]["id"]
    assert front.api.post(f"/conversations/{cnv}/links",
                          json={"link_ids": [same.json()["id"]], "link_external_urls": [url]}
                          ).status_code == 400
    assert front.api.post(f"/conversations/{cnv}/links",
                          json={"link_external_urls": [f"{url}{i}" for i in range(11)]}
                          ).status_code == 400
    assert len(_events(front, **{"q[types]": "link_added"})) == 1


def test_merged_conversations_answer_301_everywhere(front: Front) -> None:
    keep = _inbound(front, "a@corp.example")["conversation_id"]
    gone = _inbound(front, "b@corp.example")
    merged = front.admin("POST", "merge", {"into": keep,
                                           "conversation_ids": [gone["conversation_id"]]})
    old = gone["conversation_id"]
    for method, suffix, body in (("GET", "", None), ("PATCH", "", {"status": "archived"}),
                                 ("PUT", "/assignee", {"assignee_id": None}),
                                 ("POST", "/tags", {"tag_ids": []}),
                                 ("GET", "/comments", None), ("GET", "/messages", None),
                                 ("GET", "/events", None),
                                 ("POST", "/comments", {"body": "x"})):
        resp = front.api.request(method, f"/conversations/{old}{suffix}?limit=5", json=body)
        assert resp.status_code == 301, (method, suffix)
        assert resp.headers["location"] == (
            f"{front.base_url}/conversations/{keep}{suffix}?limit=5")
    assert front.api.get(f"/conversations/{keep}/comments").json()["_results"] == []
    # The survivor holds both messages; the merge event lists the vanished id.
    msgs = front.api.get(f"/conversations/{keep}/messages").json()["_results"]
    assert gone["message_id"] in {m["id"] for m in msgs}
    event = front.api.get(f"/events/{merged['event_ids'][0]}").json()
    assert event["type"] == "conversations_merged"
    assert event["target"] == {"_meta": {"type": "deleted_conversation_ids"}, "data": [old]}
    # A redirect-following client lands on the survivor.
    followed = front.api.get(f"/conversations/{old}", follow_redirects=True)
    assert followed.status_code == 200 and followed.json()["id"] == keep


def test_links_in_responses_are_absolute_on_the_emulator(front: Front) -> None:
    cnv = _inbound(front)["conversation_id"]
    conv = front.api.get(f"/conversations/{cnv}").json()
    assert conv["_links"]["self"] == f"{front.base_url}/conversations/{cnv}"
    contact_link = conv["recipient"]["_links"]["related"]["contact"]
    assert contact_link.startswith(f"{front.base_url}/contacts/crd_")
    assert httpx.get(contact_link, headers=front.api.headers).status_code == 200


def test_auth_and_error_shapes(front: Front) -> None:
    with front.client(token="nope") as bad, front.client(validate=False) as raw:
        unauth = bad.get("/me")
        no_header = httpx.get(f"{front.base_url}/me")
        assert raw.get("/me").status_code == 200
    for resp in (unauth, no_header):
        assert resp.status_code == 401
        assert resp.json()["_error"]["status"] == 401
        assert "x-ratelimit-limit" in resp.headers
    missing = front.api.get("/conversations/cnv_missing").json()
    assert missing == {"_error": {"status": 404, "title": "Not found",
                                  "message": "Unknown conversation"}}


def test_injected_faults_including_timeout_after_commit(front: Front) -> None:
    cnv = _inbound(front)["conversation_id"]
    front.admin("POST", "faults", {"method": "POST", "path": f"/conversations/{cnv}/comments",
                                   "status": 504, "after_commit": True})
    assert front.api.post(f"/conversations/{cnv}/comments", json={"body": "x"}
                          ).status_code == 504
    # The write happened: a blind retry would double the comment (fact sheet §0.1).
    assert len(front.api.get(f"/conversations/{cnv}/comments").json()["_results"]) == 1
    front.admin("POST", "faults", {"path": "/me", "status": 503, "count": 2})
    assert [front.api.get("/me").status_code for _ in range(3)] == [503, 503, 200]
