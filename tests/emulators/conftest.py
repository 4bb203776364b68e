"""Fixtures for the emulator tests: a TLS Salesforce emulator in a background thread, and
clients built exactly as the product builds them (token POST, then unmodified
simple-salesforce with ``session_id=`` and a CA-pinned session)."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from simple_salesforce import Salesforce

from emulators._server import ServerThread
from emulators.salesforce import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, OrgState, create_app
from emulators.tls import TlsFiles, ensure_ca

_open_sessions: list[requests.Session] = []
_open_clients: list[httpx.Client] = []


def pinned_session(ca: Path) -> requests.Session:
    session = requests.Session()
    _open_sessions.append(session)
    # REQUESTS_CA_BUNDLE is set on these machines and would override session.verify
    # (fact sheet §0.13); ignore the environment and pin the emulator's CA.
    session.trust_env = False
    session.verify = str(ca)
    return session


def close_sessions() -> None:
    """Close every client session opened by these fixtures (frees server connections)."""
    while _open_sessions:
        _open_sessions.pop().close()
    while _open_clients:
        _open_clients.pop().close()


class CdcSubscriber:
    """Reads the emulator's change-event feed (``/__cdc/events``) with plain httpx, the way a
    frontforce CDC source under test would, authenticated with its own access token."""

    def __init__(self, base_url: str, ca: Path, access_token: str) -> None:
        self.access_token = access_token
        self.http = httpx.Client(base_url=base_url, trust_env=False, timeout=60.0,
                                 verify=ssl.create_default_context(cafile=str(ca)),
                                 headers={"Authorization": f"Bearer {access_token}"})
        _open_clients.append(self.http)

    def get(self, channel: str = "/data/ChangeEvents", replay_id: int = -2,
            **params: Any) -> httpx.Response:
        return self.http.get("/__cdc/events",
                             params={"channel": channel, "replay_id": replay_id, **params})

    def poll(self, channel: str = "/data/ChangeEvents", replay_id: int = -2,
             **params: Any) -> dict[str, Any]:
        resp = self.get(channel, replay_id, **params)
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    def events(self, channel: str = "/data/ChangeEvents", replay_id: int = -2,
               **params: Any) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.poll(channel, replay_id, **params)["events"]
        return events

    def tip(self, channel: str = "/data/ChangeEvents") -> int:
        """The current LATEST position: store it, then read only what happens next."""
        latest: int = self.poll(channel, -1)["latest_replay_id"]
        return latest


@dataclass
class Emulator:
    base_url: str
    ca: Path
    state: OrgState
    session: requests.Session
    _tokens: list[str] = field(default_factory=list)

    def token(self) -> dict[str, Any]:
        resp = self.session.post(f"{self.base_url}/services/oauth2/token",
                                 data={"grant_type": "client_credentials"},
                                 auth=(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET))
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    def client(self, version: str = "59.0", token: dict[str, Any] | None = None) -> Salesforce:
        tok = token or self.token()
        return Salesforce(session_id=tok["access_token"], instance_url=tok["instance_url"],
                          session=pinned_session(self.ca), version=version)

    def admin(self, method: str, path: str, json: Any = None) -> Any:
        resp = self.session.request(method, f"{self.base_url}/__admin/{path}", json=json)
        assert resp.status_code < 300, resp.text
        return resp.json()

    def seed(self, records: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
        ids: dict[str, list[str]] = self.admin("POST", "seed", {"records": records})["ids"]
        return ids

    def rows(self, type_name: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.admin("GET", f"records/{type_name}")["records"]
        return rows

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.admin("GET", "stats")
        return stats

    def subscriber(self) -> CdcSubscriber:
        return CdcSubscriber(self.base_url, self.ca, self.token()["access_token"])


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return ensure_ca(tmp_path_factory.mktemp("emulator-tls"))


@pytest.fixture
def make_emulator(tls_files: TlsFiles) -> Iterator[Callable[..., Emulator]]:
    servers: list[ServerThread] = []

    def start(state: OrgState | None = None, **settings: Any) -> Emulator:
        org = state or OrgState()
        server = ServerThread(create_app(org, **settings), "127.0.0.1", 0, tls_files).start()
        servers.append(server)
        return Emulator(server.base_url, tls_files.ca_cert, org, pinned_session(tls_files.ca_cert))

    yield start
    # Close client connections first: idle TLS keep-alives would otherwise hold the
    # server's graceful shutdown for its full grace period.
    close_sessions()
    for server in servers:
        server.stop()


@pytest.fixture
def emulator(make_emulator: Callable[..., Emulator]) -> Emulator:
    return make_emulator()


@pytest.fixture
def sf(emulator: Emulator) -> Salesforce:
    return emulator.client()


class EmulatorProcesses:
    """Start emulator CLIs as real subprocesses (``python -m emulators.<name>``) on a free
    port, read their ready line, and kill whatever is still running at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, module: str, state_dir: Path, ready: re.Pattern[str],
              *extra: str) -> tuple[subprocess.Popen[str], re.Match[str]]:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", "0",
             "--state-dir", str(state_dir), *extra],
            cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        match = ready.match(line)
        assert match, f"unexpected first line {line!r}"
        assert int(match.group(2)) > 0
        return proc, match

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def emulator_processes() -> Iterator[EmulatorProcesses]:
    procs = EmulatorProcesses()
    yield procs
    procs.close()
