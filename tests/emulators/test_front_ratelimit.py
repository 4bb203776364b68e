"""Front's rate limits as clients observe them (fact sheet §6): a company-wide budget with
x-ratelimit-* on every response, 429 + retry-after (or, optionally, without it), and
per-resource guards that refuse while x-ratelimit-remaining is still > 0."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.emulators.test_front_harness import Front, running_front


@pytest.fixture
def front() -> Iterator[Front]:
    with running_front() as emu:
        emu.seed(defaults=True)
        # Front's defaults: 100 rpm plan, tier-2 guard of 5 rps per conversation.
        emu.config(rpm=100, burst_enabled=True, burst_rps=5)
        yield emu


def _remaining(resp: httpx.Response) -> int:
    return int(resp.headers["x-ratelimit-remaining"])


def test_headers_on_every_response(front: Front) -> None:
    before = time.time()
    first = front.api.get("/me")
    assert first.headers["x-ratelimit-limit"] == "100"
    assert _remaining(first) == 99
    reset = int(first.headers["x-ratelimit-reset"])
    assert before + 55 <= reset <= before + 61  # epoch seconds at which the window refills
    assert _remaining(front.api.get("/conversations/cnv_missing")) == 98  # errors count too
    assert _remaining(front.api.post("/contacts", json={})) == 97
    # The admin API is free.
    front.admin("GET", "state")
    assert _remaining(front.api.get("/me")) == 96


def test_budget_exhaustion_gives_429_with_retry_after(front: Front) -> None:
    front.config(rpm=50)  # Starter plan
    statuses = [front.api.get("/teammates").status_code for _ in range(50)]
    assert statuses == [200] * 50
    refused = front.api.get("/teammates")
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-limit"] == "50"
    assert _remaining(refused) == 0
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 60
    error = refused.json()["_error"]
    assert error["status"] == 429 and error["title"] == "Too many requests"
    assert "milliseconds" in error["message"]
    # Every token of the company shares the budget.
    front.admin("POST", "tokens", {"token": "second-token", "kind": "api"})
    with front.client(token="second-token") as other:
        assert other.get("/me").status_code == 429
    # Partner OAuth tokens have their own 120 rpm bucket.
    front.admin("POST", "tokens", {"token": "oauth-token", "kind": "oauth_client"})
    with front.client(token="oauth-token") as oauth:
        resp = oauth.get("/me")
    assert resp.status_code == 200 and resp.headers["x-ratelimit-limit"] == "120"


def test_retry_after_can_be_omitted_leaving_reset_as_the_fallback(front: Front) -> None:
    front.config(rpm=3, omit_retry_after=True)
    for _ in range(3):
        front.api.get("/me")
    refused = front.api.get("/me")
    assert refused.status_code == 429
    assert "retry-after" not in refused.headers
    assert int(refused.headers["x-ratelimit-reset"]) > time.time()


def test_budget_refills_when_the_window_ends(front: Front) -> None:
    front.config(rpm=2, window_seconds=1.0)
    assert [front.api.get("/me").status_code for _ in range(3)] == [200, 200, 429]
    reset = int(front.api.get("/me").headers["x-ratelimit-reset"])
    time.sleep(max(0.0, reset - time.time()) + 0.1)
    assert front.api.get("/me").status_code == 200


def test_tier2_guard_fires_while_budget_remains(front: Front) -> None:
    cnv = front.simulate("inbound", **{"from": "a@corp.example"})["conversation_id"]
    other = front.simulate("inbound", **{"from": "b@corp.example"})["conversation_id"]
    tag = front.api.get("/company/tags").json()["_results"][0]["id"]
    writes = [front.api.post(f"/conversations/{cnv}/comments", json={"body": str(i)})
              for i in range(5)]
    assert [r.status_code for r in writes] == [201] * 5
    refused = front.api.post(f"/conversations/{cnv}/tags", json={"tag_ids": [tag]})
    assert refused.status_code == 429
    assert _remaining(refused) > 0  # the company budget is not the reason
    assert _remaining(refused) == _remaining(writes[-1])  # a refusal costs nothing
    assert refused.headers["x-front-tier"] == "2"
    assert refused.headers["retry-after"] == "1"
    assert "tier-2" in refused.json()["_error"]["message"]
    # The guard is per resource and only on writes.
    assert front.api.post(f"/conversations/{other}/tags", json={"tag_ids": [tag]}
                          ).status_code == 204
    assert front.api.get(f"/conversations/{cnv}").status_code == 200
    time.sleep(1.05)
    assert front.api.post(f"/conversations/{cnv}/tags", json={"tag_ids": [tag]}
                          ).status_code == 204
    # Exactly five comments exist: the refused call wrote nothing.
    assert len(front.api.get(f"/conversations/{cnv}/comments").json()["_results"]) == 5


def test_link_creation_guard(front: Front) -> None:
    front.config(links_per_minute=3)
    codes = [front.api.post("/links", json={"external_url": f"https://x/{i}"}).status_code
             for i in range(4)]
    assert codes == [201, 201, 201, 429]
