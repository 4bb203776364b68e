"""The Front emulator as a program (``python -m emulators.front``): ready line, persistence
across SIGTERM + restart with --persist, a clean company without it, optional TLS."""

from __future__ import annotations

import re
import signal
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from emulators.front import DEFAULT_TOKEN
from tests.emulators.conftest import EmulatorProcesses

READY = re.compile(r"^front emulator ready on (https?://127\.0\.0\.1:(\d+))(?: \(ca: (.+)\))?$")


class Running:
    def __init__(self, proc: subprocess.Popen[str], base_url: str, ca: str | None) -> None:
        self.proc, self.base_url, self.ca = proc, base_url, ca

    def client(self, token: str = DEFAULT_TOKEN) -> httpx.Client:
        verify: Any = ssl.create_default_context(cafile=self.ca) if self.ca else True
        return httpx.Client(base_url=self.base_url, verify=verify, timeout=10, trust_env=False,
                            headers={"Authorization": f"Bearer {token}"})

    def admin(self, method: str, path: str, json: Any = None) -> Any:
        with self.client() as c:
            resp = c.request(method, f"/__admin/{path}", json=json)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture
def launch(tmp_path: Path, emulator_processes: EmulatorProcesses) -> Iterator[Any]:
    def start(*extra: str) -> Running:
        proc, match = emulator_processes.start("emulators.front", tmp_path / "front", READY, *extra)
        return Running(proc, match.group(1), match.group(3))

    yield start


def test_persist_survives_restart(launch: Any, tmp_path: Path) -> None:
    first = launch("--persist", "--token", "tok-1", "--rpm", "50")
    first.admin("POST", "seed", {"defaults": True,
                                 "custom_fields": {"contact": [{"name": "SF Contact Id"}]}})
    with first.client("tok-1") as api:
        contact = api.post("/contacts", json={
            "handles": [{"handle": "durable@corp.example", "source": "email"}],
            "custom_fields": {"SF Contact Id": "003D"}}).json()
        assert api.get("/me").headers["x-ratelimit-limit"] == "50"
    sim = first.admin("POST", "simulate/inbound", {"from": "durable@corp.example",
                                                   "subject": "Kept"})
    first.admin("POST", "webhooks", {"url": "http://127.0.0.1:9/hook", "kind": "rule",
                                     "secret": "s"})
    # uvicorn re-raises the signal after the lifespan shutdown that saves the state.
    assert first.terminate() == -signal.SIGTERM
    assert (tmp_path / "front" / "front-state.json").exists()

    second = launch("--persist")
    with second.client("tok-1") as api:  # the token is company state, kept across restarts
        got = api.get("/contacts/alt:email:durable@corp.example").json()
        assert got["id"] == contact["id"]
        assert got["custom_fields"] == {"SF Contact Id": "003D"}
        conv = api.get(f"/conversations/{sim['conversation_id']}").json()
        assert conv["subject"] == "Kept" and conv["_links"]["self"].startswith(second.base_url)
        event = api.get(f"/events/{sim['event_ids'][0]}").json()
        assert event["_links"]["self"] == f"{second.base_url}/events/{sim['event_ids'][0]}"
        assert api.get("/me").headers["x-ratelimit-limit"] == "50"
        again = api.post("/contacts", json={"handles": [{"handle": "new@corp.example",
                                                         "source": "email"}]}).json()
        assert again["id"] != contact["id"]  # ids keep increasing after a reload
    assert len(second.admin("GET", "webhooks")["subscriptions"]) == 1
    assert second.admin("POST", "save")["saved"].endswith("front-state.json")
    second.terminate()

    clean = launch()  # without --persist: a fresh company, the default token
    with clean.client() as api:
        assert api.get(f"/contacts/{contact['id']}").status_code == 404
        assert api.get("/events").json()["_results"] == []
    with clean.client("tok-1") as api:
        assert api.get("/me").status_code == 401
    clean.terminate()


def test_tls_and_seed_defaults(launch: Any) -> None:
    running = launch("--tls", "--seed-defaults")
    assert running.base_url.startswith("https://") and running.ca
    with running.client() as api:
        emails = {t["email"] for t in api.get("/teammates").json()["_results"]}
    assert emails == {"pam@acme.example", "jim@acme.example"}
    running.terminate()
