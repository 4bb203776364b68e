"""The emulator as a program (``python -m emulators.salesforce``), persistence, admin API."""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceResourceNotFound

from emulators.salesforce import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, OrgState
from emulators.salesforce._writes import Ctx, create
from tests.emulators.conftest import (
    Emulator,
    EmulatorProcesses,
    PubSubSubscriber,
    close_sessions,
    pinned_session,
)

READY = re.compile(r"^salesforce emulator ready on (https://127\.0\.0\.1:(\d+)) \(ca: (.+)\)$")
PUBSUB_READY = re.compile(r"^salesforce pubsub api ready on (127\.0\.0\.1:(\d+))$")


class Running:
    def __init__(self, proc: subprocess.Popen[str], base_url: str, ca: Path, pubsub: str) -> None:
        self.proc, self.base_url, self.ca, self.pubsub = proc, base_url, ca, pubsub
        self.token: dict[str, Any] = {}

    def client(self) -> Salesforce:
        session = pinned_session(self.ca)
        self.token = session.post(f"{self.base_url}/services/oauth2/token",
                                  data={"grant_type": "client_credentials"},
                                  auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)).json()
        return Salesforce(session_id=self.token["access_token"],
                          instance_url=self.token["instance_url"], session=session, version="59.0")

    def subscriber(self, sf: Salesforce) -> PubSubSubscriber:
        assert sf.session_id == self.token["access_token"]
        return PubSubSubscriber(self.pubsub, self.ca, self.token)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture
def launch(tmp_path: Path, emulator_processes: EmulatorProcesses) -> Iterator[Any]:
    def start(*extra: str) -> Running:
        # --pubsub-port 0: the Pub/Sub API on a free port, announced on the next line.
        proc, match = emulator_processes.start("emulators.salesforce", tmp_path / "sf", READY,
                                               "--pubsub-port", "0", "--pubsub-keepalive", "0.2",
                                               *extra)
        assert proc.stdout is not None
        pubsub = PUBSUB_READY.match(proc.stdout.readline().strip())
        assert pubsub, "no pubsub ready line"
        return Running(proc, match.group(1), Path(match.group(3)), pubsub.group(1))

    yield start
    close_sessions()


def test_persist_survives_restart(launch: Any, tmp_path: Path) -> None:
    first = launch("--persist", "--daily-limit", "500")
    assert first.ca == tmp_path / "sf" / "ca.pem"
    sf = first.client()
    contact_id = sf.Contact.create({"LastName": "Durable", "Email": "d@acme.com"})["id"]
    assert sf.Task.upsert("Front_Message_Id__c/msg_1", {"WhoId": contact_id}) == 201
    sf.query("SELECT Id FROM Contact")
    used_before = sf.api_usage["api-usage"].used
    assert used_before == 3
    stored = first.subscriber(sf).poll(replay_id=-2)["latest_replay_id"]
    assert stored > 0
    assert first.terminate() == -signal.SIGTERM  # uvicorn re-raises the signal after saving
    assert (tmp_path / "sf" / "salesforce-state.json").exists()

    second = launch("--persist")
    sf2 = second.client()
    assert sf2.Contact.get(contact_id)["Email"] == "d@acme.com"
    # Upsert now updates: the external-id index was rebuilt from the saved rows.
    assert sf2.Task.upsert("Front_Message_Id__c/msg_1", {"Subject": "again"}) == 200
    # Usage and the configured allocation persist too (rolling 24 h window).
    sf2.query("SELECT Id FROM Task")
    usage = sf2.api_usage["api-usage"]
    assert (usage.used, usage.total) == (used_before + 3, 500)
    # Change events persist with the org: replay continues from a position stored earlier.
    events = second.subscriber(sf2).events(replay_id=stored)
    assert [e["payload"]["ChangeEventHeader"]["changeType"] for e in events] == ["UPDATE"]
    assert events[0]["replayId"] > stored
    # Sessions are org state as well: the first instance's token still works.
    old = pinned_session(second.ca).get(
        f"{second.base_url}/services/data/v59.0/sobjects/Contact/{contact_id}",
        headers={"Authorization": f"Bearer {sf.session_id}"})
    assert old.status_code == 200 and old.json()["LastName"] == "Durable"
    second.terminate()

    clean = launch()  # without --persist: a fresh org, same CA
    assert clean.ca == first.ca
    with pytest.raises(SalesforceResourceNotFound):
        clean.client().Contact.get(contact_id)
    clean.terminate()


def test_admin_api(emulator: Emulator) -> None:
    config = emulator.admin("GET", "config")
    assert config["daily_limit"] == 15000 and config["page_size"] == 2000
    seeded = emulator.seed({"Account": [{"Name": "Acme"}],
                            "Contact": [{"LastName": "Ng", "AccountId": "@Account[0]",
                                         "CreatedDate": "2020-01-01T00:00:00Z"}]})
    contact = emulator.rows("Contact")[0]
    assert contact["Id"] == seeded["Contact"][0]
    assert contact["AccountId"] == seeded["Account"][0]
    # Admin seeding may backdate system fields (for watermark tests) and costs no API calls.
    assert contact["CreatedDate"] == "2020-01-01T00:00:00.000+0000"
    assert emulator.stats()["api_calls"] == 0

    bad = emulator.session.post(f"{emulator.base_url}/__admin/seed",
                                json={"records": {"Contact": [{"FirstName": "x"}]}})
    assert bad.status_code == 400 and bad.json()[0]["errorCode"] == "REQUIRED_FIELD_MISSING"

    sf = emulator.client()
    sf.Contact.delete(seeded["Contact"][0])
    assert emulator.rows("Contact")[0]["IsDeleted"] is True  # deleted rows stay visible here
    stats = emulator.stats()
    assert stats["by_kind"] == {"sobject_delete": 1} and stats["api_usage"]["used"] == 1

    emulator.admin("POST", "config", {"api_usage": 14999})
    assert sf.limits()["DailyApiRequests"]["Remaining"] == 1

    emulator.admin("POST", "reset")
    assert emulator.rows("Contact") == [] and emulator.stats()["api_calls"] == 0
    # The org keeps its Organization row and integration user; sessions survive a reset.
    users = emulator.rows("User")
    assert [u["Username"] for u in users] == ["integration@frontforce.emulator"]
    org = sf.query("SELECT Id, Name FROM Organization")["records"][0]
    assert org["Id"] == config["org_id"] and org["Id"].startswith("00D")
    bad_config = emulator.session.post(f"{emulator.base_url}/__admin/config",
                                       json={"nope": 1})
    assert bad_config.status_code == 400


def test_orgstate_json_roundtrip(tmp_path: Path) -> None:
    state = OrgState(daily_limit=42)
    ctx = Ctx(state, state.integration_user_id)
    with state.lock:
        record_id = create(ctx, "Case", {"Front_Conversation_Id__c": "cnv_9", "Subject": "s"})
        state.count_call("sobject_create")
    state.save(tmp_path / "org.json")
    loaded = OrgState.load(tmp_path / "org.json")
    assert loaded.get("Case", record_id) == state.get("Case", record_id)
    assert loaded.find_by_field("Case", "Front_Conversation_Id__c", "CNV_9") == [record_id]
    assert loaded.config["daily_limit"] == 42 and loaded.api_used() == 1
    # Ids keep increasing after a reload: no id is ever handed out twice.
    with loaded.lock:
        again = create(Ctx(loaded, loaded.integration_user_id), "Case", {})
    assert again != record_id and loaded.serial == state.serial + 1


def test_cli_flags_for_duplicates_and_cdc(launch: Any) -> None:
    running = launch("--no-duplicate-rules", "--cdc-retention-hours", "12",
                     "--cdc-delivery-limit", "7", "--cdc-entity-limit", "0")
    session = pinned_session(running.ca)
    config = session.get(f"{running.base_url}/__admin/config").json()
    assert (config["duplicate_rules"], config["cdc_retention_hours"],
            config["cdc_delivery_limit"], config["cdc_entity_limit"]) == (False, 12.0, 7, 0)
    sf = running.client()
    sf.Contact.create({"LastName": "A", "Email": "same@acme.com"})
    assert sf.Contact.create({"LastName": "B", "Email": "same@acme.com"})["success"]
    running.terminate()
