"""`python -m emulators` starts both emulators with one command and keeps their state across
a restart when asked to (the demo's mode); without --persist every start is clean."""

from __future__ import annotations

import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from frontforce.localstack import free_port


def _start(state: Path, sf: int, fr: int, persist: bool) -> tuple[subprocess.Popen[str], Path]:
    args = [sys.executable, "-m", "emulators", "--state-dir", str(state),
            "--salesforce-port", str(sf), "--salesforce-pubsub-port", "0", "--front-port", str(fr)]
    proc = subprocess.Popen([*args, *(["--persist"] if persist else [])],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, ca = set(), None
    deadline = time.monotonic() + 60
    while len(ready) < 2 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "salesforce emulator ready" in line:
            ready.add("sf")
            ca = Path(re.search(r"\(ca: ([^)]+)\)", line).group(1))  # type: ignore[union-attr]
        if "front emulator ready" in line:
            ready.add("front")
    assert ready == {"sf", "front"} and ca is not None
    return proc, ca


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def test_one_command_starts_both_and_persist_keeps_state(tmp_path: Path) -> None:
    sf, fr = free_port(), free_port()
    proc, ca = _start(tmp_path, sf, fr, persist=True)
    try:
        verify = ssl.create_default_context(cafile=str(ca))
        r = httpx.post(f"https://127.0.0.1:{sf}/__admin/seed", verify=verify,
                       json={"records": {"Contact": [{"LastName": "Kept", "Email": "kept@x.io"}]}})
        assert r.status_code == 200
        r = httpx.post(f"http://127.0.0.1:{fr}/__admin/simulate/inbound",
                       json={"from": "kept@x.io", "subject": "Hello", "text": "hi"})
        assert r.status_code in (200, 201), r.text
    finally:
        _stop(proc)
    proc, ca = _start(tmp_path, sf, fr, persist=True)
    try:
        verify = ssl.create_default_context(cafile=str(ca))
        rows = httpx.get(f"https://127.0.0.1:{sf}/__admin/records/Contact", verify=verify).json()
        assert [c["Email"] for c in rows["records"]] == ["kept@x.io"]
        state = httpx.get(f"http://127.0.0.1:{fr}/__admin/state").json()
        assert "kept@x.io" in str(state)
    finally:
        _stop(proc)
    proc, ca = _start(tmp_path, sf, fr, persist=False)
    try:
        verify = ssl.create_default_context(cafile=str(ca))
        rows = httpx.get(f"https://127.0.0.1:{sf}/__admin/records/Contact", verify=verify).json()
        assert rows["totalSize"] == 0
    finally:
        _stop(proc)
