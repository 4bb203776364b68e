"""Every public route of the Front emulator, driven over HTTP and validated against Front's
OpenAPI spec (status + body; see test_front_harness for the validator and the allowlist)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from emulators.front import ROUTES
from tests.emulators.test_front_harness import Front, load_spec, running_front


@pytest.fixture
def front() -> Iterator[Front]:
    with running_front() as emu:
        yield emu


def test_route_table_matches_spec_operations() -> None:
    spec = load_spec()
    for route in ROUTES:
        operation = spec["paths"].get(route.template, {}).get(route.method.lower())
        assert operation is not None, f"{route.method} {route.template} is not in the spec"
        assert operation["operationId"] == route.operation_id


def test_every_served_route_conforms_to_the_spec(front: Front) -> None:
    api = front.api
    ids = front.seed(
        defaults=True,
        custom_fields={"contact": [{"name": "SF Contact Id"},
                                   {"name": "Tier", "type": "enum", "values": ["Gold", "Silver"]}],
                       "conversation": [{"name": "SF Case", "type": "string"}],
                       "link": [{"name": "SF Type", "type": "string"}],
                       "account": [{"name": "ARR", "type": "number"},
                                   {"name": "Tier", "type": "enum", "values": ["Gold", "Silver"]},
                                   {"name": "Owner", "type": "string"}]})
    pam, jim = ids["teammates"]
    inbox = ids["inboxes"][0]

    # Company-level reads.
    assert api.get("/me").status_code == 200
    assert api.get("/teammates").status_code == 200
    assert api.get(f"/teammates/{pam}").status_code == 200
    assert api.get("/teammates/alt:email:jim@acme.example").json()["id"] == jim
    assert api.get("/inboxes").status_code == 200
    assert api.get(f"/inboxes/{inbox}").status_code == 200
    for path in ("/contacts/custom_fields", "/conversations/custom_fields",
                 "/links/custom_fields", "/accounts/custom_fields"):
        assert api.get(path).json()["_results"], path

    # Tags (company and legacy creation), links.
    vip = api.post("/company/tags", json={"name": "vip", "highlight": "red"})
    assert vip.status_code == 201
    legacy = api.post("/tags", json={"name": "legacy", "description": "old route"})
    assert legacy.status_code == 201
    assert api.get("/tags").status_code == 200
    assert api.get("/company/tags", params={"limit": 2}).json()["_pagination"]["next"]
    assert api.get(f"/tags/{vip.json()['id']}").status_code == 200
    link = api.post("/links", json={"external_url": "https://acme.my.salesforce.com/001A",
                                    "name": "001A"})
    assert link.status_code == 201
    assert api.get("/links", params={"q[types]": "web"}).json()["_results"]
    assert api.get(f"/links/{link.json()['id']}").status_code == 200

    # Contacts.
    bob = api.post("/contacts", json={
        "name": "Bob Vance", "handles": [{"handle": "bob@vance.example", "source": "email"}],
        "custom_fields": {"SF Contact Id": "003A", "Tier": "Gold"}, "list_names": ["VIP"],
        "links": ["https://acme.my.salesforce.com/003A"]})
    assert bob.status_code == 201
    bob_id = bob.json()["id"]
    bob2 = api.post("/contacts", json={"handles": [{"handle": "+14155550100",
                                                    "source": "phone"}]})
    assert bob2.status_code == 201
    assert api.get("/contacts", params={"limit": 1}).status_code == 200
    assert api.get(f"/contacts/{bob_id}").status_code == 200
    assert api.patch(f"/contacts/{bob_id}", json={"description": "Refrigeration"}
                     ).status_code == 204
    assert api.post(f"/contacts/{bob_id}/handles",
                    json={"handle": "bob@alt.example", "source": "email"}).status_code == 204
    assert api.request("DELETE", f"/contacts/{bob_id}/handles",
                       json={"handle": "bob@alt.example", "source": "email"}).status_code == 204
    merged = api.post("/contacts/merge", json={"contact_ids": [bob_id, bob2.json()["id"]]})
    assert merged.status_code == 200

    # Accounts: by id and by the aliases Front documents (domain, ext_id); contacts by alias.
    corp = api.post("/accounts", json={
        "name": "Vance Refrigeration", "external_id": "001A", "domains": ["vance.example"],
        "description": "HVAC", "custom_fields": {"ARR": 120000, "Tier": "Gold"}})
    assert corp.status_code == 201
    acc = corp.json()["id"]
    assert api.post("/accounts", json={"name": "Dunder Mifflin"}).status_code == 201
    assert api.get("/accounts", params={"limit": 1}).json()["_pagination"]["next"]
    assert api.get(f"/accounts/{acc}").status_code == 200
    assert api.get("/accounts/alt:ext_id:001A").json()["id"] == acc
    assert api.get("/accounts/alt:domain:vance.example").json()["id"] == acc
    patched = api.patch(f"/accounts/{acc}", json={"custom_fields": {"ARR": 130000,
                                                                    "Owner": "pam"}})
    assert patched.status_code == 200
    assert patched.json()["custom_fields"] == {"ARR": 130000, "Owner": "pam"}
    assert api.post(f"/accounts/{acc}/contacts",
                    json={"contact_ids": ["alt:email:bob@vance.example"]}).status_code == 204
    members = api.get("/accounts/alt:ext_id:001A/contacts", params={"limit": 10})
    assert [c["id"] for c in members.json()["_results"]] == [bob_id]
    assert api.request("DELETE", f"/accounts/{acc}/contacts",
                       json={"contact_ids": [bob_id]}).status_code == 204
    assert api.delete("/accounts/alt:domain:vance.example").status_code == 204

    # Conversations: inbound from a customer, then our writes.
    sim = front.simulate("inbound", **{"from": "bob@vance.example", "subject": "Quote",
                                       "text": "Can you resend the quote?"})
    cnv = sim["conversation_id"]
    assert api.get("/conversations", params={"q[statuses]": "unassigned"}).json()["_results"]
    assert api.get(f"/contacts/{bob_id}/conversations").json()["_results"]
    assert api.get(f"/conversations/{cnv}").status_code == 200
    assert api.patch(f"/conversations/{cnv}", json={"custom_fields": {"SF Case": "500A"}}
                     ).status_code == 204
    assert api.put(f"/conversations/{cnv}/assignee", json={"assignee_id": pam}
                   ).status_code == 204
    assert api.post(f"/conversations/{cnv}/tags", json={"tag_ids": [vip.json()["id"]]}
                    ).status_code == 204
    assert api.request("DELETE", f"/conversations/{cnv}/tags",
                       json={"tag_ids": [vip.json()["id"]]}).status_code == 204
    comment = api.post(f"/conversations/{cnv}/comments", json={"body": "Synced to SF"})
    assert comment.status_code == 201
    assert api.get(f"/conversations/{cnv}/comments").status_code == 200
    assert api.get(f"/comments/{comment.json()['id']}").status_code == 200
    assert api.post(f"/conversations/{cnv}/links",
                    json={"link_external_urls": ["https://acme.my.salesforce.com/500A"]}
                    ).status_code == 204
    attached = api.get(f"/conversations/{cnv}").json()["links"][0]["id"]
    assert api.request("DELETE", f"/conversations/{cnv}/links",
                       json={"link_ids": [attached]}).status_code == 204
    front.simulate("outbound", conversation_id=cnv, text="Here it is")
    messages = api.get(f"/conversations/{cnv}/messages")
    assert len(messages.json()["_results"]) == 2
    assert api.get(f"/messages/{sim['message_id']}").status_code == 200
    assert api.get(f"/conversations/{cnv}/events").json()["_results"]
    assert api.patch(f"/conversations/{cnv}", json={"status": "archived"}).status_code == 204

    # Events API, including every event type the emulator produces.
    for action in ("reopen", "unassign", "trash", "restore"):
        front.simulate(action, conversation_id=cnv)
    front.simulate("tag", conversation_id=cnv, tag="sf:synced", rule="Auto-tag")
    sales = front.seed(inboxes=[{"name": "Sales", "address": "sales@acme.example"}])
    front.simulate("move", conversation_id=cnv, inbox_id=sales["inboxes"][0])
    front.simulate("outbound", to="new@prospect.example", subject="Hello", text="Offer")
    other = front.simulate("inbound", **{"from": "+14155550100", "channel": "sms",
                                         "text": "ping"})
    front.simulate("merge", into=cnv, conversation_ids=[other["conversation_id"]])
    seen = set()
    page = api.get("/events").json()
    while True:
        seen |= {e["type"] for e in page["_results"]}
        if not page["_pagination"]["next"]:
            break
        page = api.get(page["_pagination"]["next"]).json()
    assert {"inbound", "outbound", "out_reply", "assign", "unassign", "archive", "reopen",
            "trash", "restore", "tag", "untag", "comment", "link_added", "link_removed",
            "custom_field_updated", "move", "conversations_merged"} <= seen
    event_id = api.get("/events", params={"limit": 1}).json()["_results"][0]["id"]
    assert api.get(f"/events/{event_id}").status_code == 200

    # 301 for the merged conversation on routes that declare it; deletions last.
    assert api.get(f"/conversations/{other['conversation_id']}").status_code == 301
    assert api.delete(f"/contacts/{bob_id}").status_code == 204

    served = {(r.method, r.template) for r in ROUTES}
    assert served - front.covered == set(), "routes never validated against the spec"


def test_error_responses_use_fronts_error_shape(front: Front) -> None:
    """Undeclared statuses are validated against the fact sheet's _error schema (harness)."""
    api = front.api
    assert api.get("/conversations/cnv_nope").status_code == 404
    assert api.get("/contacts/alt:email:nobody@nowhere.example").status_code == 404
    assert api.get("/no/such/route").status_code == 404
    assert api.request("PUT", "/me").status_code == 405
    assert api.post("/contacts", content=b"{nope", headers={"content-type": "application/json"}
                    ).status_code == 400
    assert api.post("/contacts", json={"handles": []}).status_code == 400
    assert api.get("/events", params={"limit": 16}).status_code == 400
    assert api.get("/accounts/acc_nope").status_code == 404
    assert api.get("/accounts/alt:email:bob@corp.example").status_code == 404
    assert api.post("/accounts", json={"description": "no name"}).status_code == 400
    assert api.post("/accounts", json={"name": "A", "custom_fields": {"Nope": 1}}
                    ).status_code == 400
    assert api.post("/accounts", json={"name": "A", "external_id": "x1"}).status_code == 201
    assert api.post("/accounts", json={"name": "B", "external_id": "x1"}).status_code == 409
    assert api.get("/accounts", params={"q[updated_after]": "1"}).status_code == 400
    with front.client(token="wrong") as bad:
        resp = bad.get("/me")
    assert resp.status_code == 401
    assert resp.json()["_error"]["title"] == "Unauthorized"
