"""``frontforce page`` in a real browser (headless Chromium, Debian's ``chromium`` and
``chromium-driver``, installed by ``make tools``), on the real broker, registry and
Salesforce emulator with the Salesforce sink running in-process.

What it guards: a status page that shows a stale snapshot (figures that never move while
the pipeline does), and a re-drive button that does not re-drive, or re-drives twice. The
browser is driven through chromedriver's W3C WebDriver protocol over HTTP: a dozen lines of
httpx, no browser download, no client library whose version must follow the driver's."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import httpx
import pytest
import uvicorn
from confluent_kafka import Producer

from frontforce.contracts import Contracts
from frontforce.kafka import ensure_topics
from frontforce.localstack import LocalStack, free_port
from frontforce.logs import setup as setup_logs
from frontforce.ops.page import Sampler, create_page_app
from frontforce.serialization import Serde
from sinks.salesforce import SalesforceSink
from tests.conftest import new_pipeline

EXT = "Front_Message_Id__c"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless Chromium is not installed (Debian packages chromium and chromium-driver: `make tools`)")


class Browser:
    """Headless Chromium through chromedriver (W3C WebDriver over HTTP)."""

    def __init__(self) -> None:
        port = free_port()
        self.proc = subprocess.Popen([str(CHROMEDRIVER), f"--port={port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.http.get("/status").json()["value"]["ready"]:
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.1)
        caps = {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM, "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                         "--disable-dev-shm-usage", "--window-size=1200,900"]}}
        r = self.http.post("/session", json={"capabilities": {"alwaysMatch": caps}})
        r.raise_for_status()
        self.session = r.json()["value"]["sessionId"]

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        r = self.http.request(method, f"/session/{self.session}{path}", json=body)
        value = r.json().get("value")
        if r.status_code >= 400:
            raise RuntimeError(f"webdriver {method} {path}: {value}")
        return value

    def open(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def script(self, source: str, *args: Any) -> Any:
        return self._call("POST", "/execute/sync", {"script": source, "args": list(args)})

    def text(self, element_id: str) -> str:
        return str(self.script("const e = document.getElementById(arguments[0]);"
                               " return e ? e.textContent : null;", element_id))

    def click(self, css: str, tries: int = 5) -> None:
        """Find and click; found again when the page re-rendered the element in between
        (its figures refresh every few seconds: a "stale element reference"). A page that
        re-rendered every time gets the click inside one script, found and clicked at once."""
        for _ in range(tries):
            found = self._call("POST", "/element", {"using": "css selector", "value": css})
            element = next(iter(found.values()))
            try:
                self._call("POST", f"/element/{element}/click", {})
                return
            except RuntimeError as exc:
                if "stale element" not in str(exc):
                    raise
                time.sleep(0.2)
        assert self.script("const e = document.querySelector(arguments[0]);"
                           " if (!e) return false; e.click(); return true;", css), f"no {css} to click"

    def close(self) -> None:
        try:
            self.http.delete(f"/session/{self.session}")
        finally:
            self.proc.terminate()
            self.proc.wait(10)
            self.http.close()


@pytest.fixture(scope="module")
def stack(infra: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    setup_logs("INFO")
    s = new_pipeline(infra, tmp_path_factory.mktemp("page"))
    try:
        s.start_salesforce()
        s.write_config()
        settings = s.settings()
        ensure_topics(settings)
        Contracts(settings).register()
        yield s
    finally:
        s.stop_all(infra=False)


def command(mid: str, conversation: str | None) -> dict[str, Any]:
    return {
        "command_id": f"cmd-{mid}", "idempotency_key": f"Task/{EXT}/{mid}",
        "created_at": int(time.time() * 1000),
        "origin": {"system": "frontforce", "source_event_id": f"evt-{mid}", "correlation_id": f"evt-{mid}"},
        "operation": ("frontforce.commands.UpsertTask", {
            "external_id_field": EXT, "external_id": mid, "who_id": None, "what_id": None,
            "owner_id": None, "subject": f"Inbound email: {mid}", "description": None,
            "activity_date": date(2026, 1, 5), "status": "Completed", "task_subtype": "Email",
            "front_conversation_id": conversation,
            "what_ref": ({"sobject": "Case", "field": "Front_Conversation_Id__c", "value": conversation}
                         if conversation else None)}),
    }


def wait_until(what: str, fn: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def test_the_page_shows_live_figures_and_its_button_redrives_once(stack: LocalStack) -> None:
    """Lag rises when commands arrive and no sink reads them, falls when the sink runs; the
    dead-letter depth goes from 0 to 2; the re-drive button of one dead letter (after the
    fix: its Case linked) writes its Task at Salesforce once, a second click nothing, and
    leaves the other dead letter alone."""
    base = stack.settings()
    settings = base.model_copy(update={"sink": base.sink.model_copy(update={"batch_wait_ms": 200})})
    topics = settings.topics
    serde = Serde(settings)
    assert stack.ca_file is not None
    org = httpx.Client(base_url=stack.salesforce_url, verify=ssl.create_default_context(cafile=str(stack.ca_file)))

    def tasks(ids: list[str]) -> list[dict[str, Any]]:
        rows = org.get("/__admin/records/Task").raise_for_status().json()["records"]
        return [t for t in rows if t.get(EXT) in ids and not t.get("IsDeleted")]

    sampler = Sampler(settings, refresh_s=0.5).start()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_page_app(settings, sampler, poll_ms=500),
                                           host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    browser = Browser()
    sink: SalesforceSink | None = None
    sink_thread: threading.Thread | None = None
    try:
        assert sampler.wait_ready(30)
        wait_until("the page server", lambda: server.started)
        browser.open(f"http://127.0.0.1:{port}/")
        wait_until("a first sample on the page", lambda: browser.text("lag-total") == "0")
        assert browser.text("dl-depth") == "0"

        tag = uuid.uuid4().hex[:6]
        conv = f"cnv_{tag}"
        bad = [f"m-{tag}-{i}" for i in range(2)]
        good = f"m-{tag}-ok"
        producer = Producer({"bootstrap.servers": stack.bootstrap})
        for mid, c in [(bad[0], conv), (bad[1], conv), (good, None)]:
            producer.produce(topics.commands_salesforce, key=mid.encode(),
                             value=serde.encode(topics.commands_salesforce, command(mid, c)))
        assert producer.flush(10) == 0
        # No sink yet: the page's lag follows the commands waiting.
        wait_until("lag 3 on the page", lambda: browser.text("lag-total") == "3")

        sink = SalesforceSink(settings)
        sink_thread = threading.Thread(target=sink.run, daemon=True)
        sink_thread.start()
        wait_until("2 dead letters on the page", lambda: browser.text("dl-depth") == "2", timeout=30)
        wait_until("lag back to 0", lambda: browser.text("lag-total") == "0", timeout=30)
        rows = browser.script("return [...document.querySelectorAll('#dead-letters tr[data-id]')]"
                              ".map(r => [r.dataset.id, r.textContent]);")
        assert len(rows) == 2 and all("Foreign key external ID" in text for _, text in rows), rows
        assert len(tasks([good])) == 1 and tasks(bad) == []

        # The fix, then one click on the first dead letter's button.
        org.post("/__admin/seed", json={"records": {"Case": [
            {"Subject": "Billing", "Status": "New", "Front_Conversation_Id__c": conv}]}}).raise_for_status()
        first = rows[0][0]
        browser.click(f'button.redrive[data-id="{first}"]')
        wait_until("the re-drive's answer", lambda: "1 re-driven" in browser.text("redrive-result"))
        written = wait_until("the re-driven Task", lambda: tasks(bad))
        assert len(written) == 1
        wait_until("the row marked re-driven", lambda: browser.script(
            "const r = document.querySelector(`#dead-letters tr[data-id='${arguments[0]}']`);"
            " return r && r.textContent.includes('re-driven to') && !r.querySelector('button');", first))
        # The same dead letter again, as a second click would (the button is gone): nothing.
        again = httpx.post(f"http://127.0.0.1:{port}/api/deadletters/{first}/redrive",
                           headers={"X-Frontforce": "redrive"}, timeout=30)
        assert again.status_code == 200 and again.json()["sent"] == {} and first in again.json()["already"]
        refused = httpx.post(f"http://127.0.0.1:{port}/api/deadletters/{first}/redrive", timeout=30)
        assert refused.status_code == 403  # no header: not from the page
        time.sleep(1.0)  # a flush window and more
        assert len(tasks(bad)) == 1  # the other dead letter stays where it is
        assert browser.text("dl-pending") == "1"
    finally:
        browser.close()
        server.should_exit = True
        sampler.stop()
        if sink is not None and sink_thread is not None:
            sink.stop_event.set()
            sink_thread.join(30)
        org.close()
