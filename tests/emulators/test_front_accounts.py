"""Front's Accounts API in the emulator, as a client generated from the spec sees it (every
response below is validated against the spec by the harness's client): aliases by domain and
external id, custom fields refused unless defined for accounts, PATCH answering the account
and replacing the whole custom field set, contacts added by id or alias, pagination, and the
admin view (state, request log, rate limit) like every other route.

Guards: a sink that finds its account by ``alt:ext_id:`` and would create a second one if
the alias were not served; a custom field set erased by a partial PATCH; a contact alias
that silently links nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from emulators.front import FrontState
from tests.emulators.test_front_harness import Front, running_front

ACCOUNT_FIELDS = [{"name": "ARR", "type": "number"},
                  {"name": "Tier", "type": "enum", "values": ["Gold", "Silver"]},
                  {"name": "Owner", "type": "string"}]


@pytest.fixture
def front() -> Iterator[Front]:
    with running_front() as emu:
        emu.seed(defaults=True, custom_fields={"account": ACCOUNT_FIELDS,
                                               "contact": [{"name": "Title"}]})
        yield emu


def _account(front: Front, **body: Any) -> dict[str, Any]:
    resp = front.api.post("/accounts", json=body)
    assert resp.status_code == 201, resp.text
    out: dict[str, Any] = resp.json()
    return out


def _contact(front: Front, email: str) -> str:
    resp = front.api.post("/contacts", json={"handles": [{"handle": email, "source": "email"}]})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def test_account_is_found_by_id_domain_and_external_id_aliases(front: Front) -> None:
    acc = _account(front, name="Vance Refrigeration", external_id="001A",
                   domains=["vance.example", "vance-hvac.example"])
    assert acc["id"].startswith("acc_")
    assert acc["external_id"] == "001A" and acc["description"] is None
    assert acc["_links"]["related"]["contacts"] == f"{front.base_url}/accounts/{acc['id']}/contacts"
    for path in (f"/accounts/{acc['id']}", "/accounts/alt:ext_id:001A",
                 "/accounts/alt%3Aext_id%3A001A", "/accounts/alt:domain:vance-hvac.example",
                 "/accounts/alt:domain:VANCE.example"):
        resp = front.api.get(path)
        assert resp.status_code == 200, path
        assert resp.json()["id"] == acc["id"]
    # Only the aliases Front documents for accounts; anything else is "not found".
    for path in ("/accounts/alt:ext_id:001B", "/accounts/alt:external_id:001A",
                 "/accounts/alt:email:bob@vance.example", "/accounts/alt:domain:other.example"):
        assert front.api.get(path).status_code == 404, path
    # The aliases work for writes and the contacts sub-resource too.
    assert front.api.patch("/accounts/alt:ext_id:001A", json={"name": "Vance"}).status_code == 200
    assert front.api.get("/accounts/alt:ext_id:001A/contacts").json()["_results"] == []
    assert front.api.delete("/accounts/alt:domain:vance.example").status_code == 204
    assert front.api.get(f"/accounts/{acc['id']}").status_code == 404


def test_external_id_and_domains_belong_to_one_account(front: Front) -> None:
    a = _account(front, name="A", external_id="001A", domains=["a.example"])
    b = _account(front, name="B", external_id="001B")
    dup = front.api.post("/accounts", json={"name": "A2", "external_id": "001A"})
    assert dup.status_code == 409 and a["id"] in dup.json()["_error"]["message"]
    taken = front.api.patch(f"/accounts/{b['id']}", json={"domains": ["A.example"]})
    assert taken.status_code == 409 and a["id"] in taken.json()["_error"]["message"]
    assert front.api.get(f"/accounts/{b['id']}").json()["domains"] == []  # refused: unchanged
    assert front.api.post("/accounts", json={"name": "C", "external_id": ""}).status_code == 400
    assert front.api.post("/accounts", json={"name": " "}).status_code == 400
    assert front.api.post("/accounts", json={"name": "C", "domains": "c.example"}
                          ).status_code == 400


def test_custom_fields_must_be_account_fields_of_their_type(front: Front) -> None:
    ok = _account(front, name="Corp", custom_fields={"ARR": 1200.5, "Tier": "Gold"})
    assert ok["custom_fields"] == {"ARR": 1200.5, "Tier": "Gold"}
    for fields, detail in (({"Nope": "x"}, "custom_fields.Nope: unknown custom field"),
                           ({"Title": "CEO"}, "custom_fields.Title: unknown custom field"),
                           ({"ARR": "lots"}, "custom_fields.ARR: expected a number value"),
                           ({"Tier": "Bronze"}, "custom_fields.Tier: expected a enum value")):
        resp = front.api.post("/accounts", json={"name": "Bad", "custom_fields": fields})
        assert resp.status_code == 400, fields
        assert detail in resp.json()["_error"]["details"], resp.json()
        patched = front.api.patch(f"/accounts/{ok['id']}", json={"custom_fields": fields})
        assert patched.status_code == 400, fields
    assert front.api.get(f"/accounts/{ok['id']}").json()["custom_fields"] == {
        "ARR": 1200.5, "Tier": "Gold"}  # every refusal changed nothing
    assert len(front.api.get("/accounts").json()["_results"]) == 1


def test_patch_answers_the_account_and_replaces_the_whole_custom_field_set(front: Front) -> None:
    acc = _account(front, name="Corp", description="old", domains=["corp.example"],
                   custom_fields={"ARR": 1000, "Tier": "Gold", "Owner": "pam"})
    resp = front.api.patch(f"/accounts/{acc['id']}", json={"custom_fields": {"ARR": 2000}})
    assert resp.status_code == 200
    body = resp.json()
    assert body["custom_fields"] == {"ARR": 2000}  # Tier and Owner erased (AccountPatch)
    assert (body["name"], body["description"], body["domains"]) == ("Corp", "old",
                                                                    ["corp.example"])
    assert body["updated_at"] >= acc["updated_at"] and body["created_at"] == acc["created_at"]
    cleared = front.api.patch(f"/accounts/{acc['id']}",
                              json={"custom_fields": {"ARR": None, "Owner": "jim"},
                                    "description": "", "domains": []}).json()
    assert cleared["custom_fields"] == {"Owner": "jim"}
    assert (cleared["description"], cleared["domains"]) == ("", [])
    # Fields left out of the body are kept; external_id is not a PATCH field.
    kept = front.api.patch(f"/accounts/{acc['id']}", json={"name": "Corp Inc"}).json()
    assert kept["custom_fields"] == {"Owner": "jim"} and kept["external_id"] is None


def test_contacts_are_added_by_id_or_alias_and_removed(front: Front) -> None:
    acc = _account(front, name="Corp", external_id="001C")
    bob = _contact(front, "bob@corp.example")
    ann = _contact(front, "ann@corp.example")
    path = f"/accounts/{acc['id']}/contacts"
    assert front.api.post(path, json={"contact_ids": ["alt:email:BOB@corp.example", ann]}
                          ).status_code == 204
    assert front.api.post(path, json={"contact_ids": [bob]}).status_code == 204  # already in
    listed = front.api.get(path).json()["_results"]
    assert sorted(c["id"] for c in listed) == sorted([bob, ann])
    # One unknown contact refuses the whole call.
    resp = front.api.post(path, json={"contact_ids": ["alt:email:nobody@corp.example", bob]})
    assert resp.status_code == 404
    for body in ({}, {"contact_ids": []}, {"contact_ids": "bob"}):
        assert front.api.post(path, json=body).status_code == 400, body
    assert front.api.post("/accounts/acc_nope/contacts", json={"contact_ids": [bob]}
                          ).status_code == 404
    assert front.api.request("DELETE", path, json={"contact_ids": ["alt:email:bob@corp.example"]}
                             ).status_code == 204
    assert [c["id"] for c in front.api.get(path).json()["_results"]] == [ann]
    # A deleted contact leaves the account; a merged one is replaced by the survivor.
    carl = _contact(front, "carl@corp.example")
    assert front.api.post(path, json={"contact_ids": [carl]}).status_code == 204
    assert front.api.post("/contacts/merge", json={"target_contact_id": bob,
                                                   "contact_ids": [carl]}).status_code == 200
    assert sorted(c["id"] for c in front.api.get(path).json()["_results"]) == sorted([ann, bob])
    assert front.api.delete(f"/contacts/{ann}").status_code == 204
    assert [c["id"] for c in front.api.get(path).json()["_results"]] == [bob]


def test_lists_page_with_absolute_next_links_and_sort(front: Front) -> None:
    made = [_account(front, name=f"Acc {i}") for i in range(5)]
    first = front.api.get("/accounts", params={"limit": 2}).json()
    assert first["_pagination"]["next"].startswith(f"{front.base_url}/accounts?")
    ids, page = [], first
    while True:
        ids += [a["id"] for a in page["_results"]]
        if not page["_pagination"]["next"]:
            break
        page = front.api.get(page["_pagination"]["next"]).json()
    assert ids == [a["id"] for a in reversed(made)]  # newest first, as contacts
    asc = front.api.get("/accounts", params={"sort_by": "created_at", "sort_order": "asc"})
    assert [a["id"] for a in asc.json()["_results"]] == [a["id"] for a in made]
    assert front.api.get("/accounts", params={"limit": 101}).status_code == 400
    assert front.api.get("/accounts", params={"sort_by": "name"}).status_code == 400
    # The spec declares no q for /accounts: a filter is refused, not silently dropped.
    assert front.api.get("/accounts", params={"q[updated_after]": "1"}).status_code == 400
    members = [_contact(front, f"m{i}@corp.example") for i in range(3)]
    path = f"/accounts/{made[0]['id']}/contacts"
    assert front.api.post(path, json={"contact_ids": members}).status_code == 204
    got, page = [], front.api.get(path, params={"limit": 2}).json()
    while True:
        got += [c["id"] for c in page["_results"]]
        if not page["_pagination"]["next"]:
            break
        page = front.api.get(page["_pagination"]["next"]).json()
    assert got == list(reversed(members))


def test_account_custom_field_definitions_are_listed_and_seeded(front: Front) -> None:
    listed = front.api.get("/accounts/custom_fields").json()
    assert "_pagination" not in listed
    assert [(d["name"], d["type"]) for d in listed["_results"]] == [
        ("ARR", "number"), ("Tier", "enum"), ("Owner", "string")]
    assert [v["value"] for v in listed["_results"][1]["values"]] == ["Gold", "Silver"]
    front.seed(custom_fields={"account": [{"id": "fld_sfacct1", "name": "SF Account Id"}]})
    assert front.api.get("/accounts/custom_fields").json()["_results"][-1]["id"] == "fld_sfacct1"
    assert _account(front, name="X", custom_fields={"SF Account Id": "001X"})["custom_fields"] \
        == {"SF Account Id": "001X"}
    # A refused seed adds no definition.
    front.admin("POST", "seed", {"custom_fields": {"account": [{"name": "ARR"}]}}, expect=400)
    assert len(front.api.get("/accounts/custom_fields").json()["_results"]) == 4


def test_accounts_in_admin_state_request_log_and_rate_limit(front: Front) -> None:
    front.admin("DELETE", "requests")
    acc = _account(front, name="Corp", external_id="001D")
    front.api.get("/accounts/alt:ext_id:001D")
    state = front.admin("GET", "state")
    assert state["accounts"][acc["id"]]["external_id"] == "001D"
    assert [(r["method"], r["path"], r["status"]) for r in front.admin("GET", "requests")["requests"]] \
        == [("POST", "/accounts", 201), ("GET", "/accounts/alt:ext_id:001D", 200)]
    front.config(rpm=3)
    statuses = [front.api.get(f"/accounts/{acc['id']}").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    refused = front.api.patch(f"/accounts/{acc['id']}", json={"name": "no"})
    assert refused.status_code == 429 and refused.headers["x-ratelimit-remaining"] == "0"
    front.config(rpm=100_000)
    assert front.api.get(f"/accounts/{acc['id']}").json()["name"] == "Corp"
    # A reset empties the accounts like every other collection.
    front.admin("POST", "reset")
    assert front.api.get("/accounts").json()["_results"] == []


def test_accounts_survive_save_and_load_and_older_state_files_load(tmp_path: Path) -> None:
    with running_front() as emu:
        emu.seed(custom_fields={"account": ACCOUNT_FIELDS})
        acc = _account(emu, name="Corp", external_id="001E", custom_fields={"ARR": 5})
        with emu.state.lock:
            emu.state.save(tmp_path / "front.json")
    state = FrontState.load(tmp_path / "front.json")
    assert state.account("alt:ext_id:001E")["id"] == acc["id"]
    raw = json.loads((tmp_path / "front.json").read_text())
    del raw["accounts"]  # a file written before the emulator served accounts
    (tmp_path / "old.json").write_text(json.dumps(raw))
    assert FrontState.load(tmp_path / "old.json").accounts == {}
