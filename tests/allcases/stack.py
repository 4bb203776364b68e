"""A pipeline with every use case on, the way a customer would run it both ways.

On top of the local stack's config (use cases 1-7 on by default, tag rules "Renewal Risk"
and "Upsell"), one more tag rule, on the tag frontforce itself writes: "New Lead" makes a
follow-up Task. A teammate tagging a conversation "New Lead" is a person's change and gets
its Task; frontforce's own "New Lead" tag (use case 2) comes back from Front as a ``tag``
event made by the API, and only the loop guard keeps it from making one too.

The receiver is subscribed to the Front emulator's application webhooks, so every event
there reaches the pipeline, the echoes of frontforce's own Front writes included. Front's
rate limit is raised (what is under test is who writes, not the pacing), and the emulator's
dispatcher repeats 3 % of its deliveries, as Front does.

The world (``World``): Users Pam and Jim (Account owners, also Front teammates), Pat (a
sales rep who changes things in Salesforce) and the teammate Tom (who works in Front);
``accounts`` Accounts with a web domain, two Contacts and one open Opportunity each, the
first half the ones Pat edits, the second half the ones "Upsell" tags move; conversations
in Front linked to Cases (``Front_Conversation_Id__c``), some for Tom to archive, some for
Pat to change the status of.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from frontforce.localstack import REPO, LocalStack
from streams._app import EXIT_STALLED
from tests.allcases.ledger import Emulators, quiesce
from tests.allcases.people import FrontTeammate, SalesforcePerson
from tests.conftest import new_pipeline

NEW_LEAD_RULE = "Qualify the new lead"
PAT = "pat.person@acme.example"
TOM = "tom@acme.example"
OWNERS = ("pam@acme.example", "jim@acme.example")


@dataclass
class Account:
    id: str
    name: str
    domain: str
    owner_email: str
    contacts: dict[str, str]  # email -> Contact id
    opportunity: str
    stage: str = "Qualification"


@dataclass
class World:
    stack: LocalStack
    tag: str
    accounts: list[Account]
    archive_cases: dict[str, str]  # conversation id -> Case id (Tom archives these)
    status_cases: dict[str, str]  # conversation id -> Case id (Pat changes their status)
    users: dict[str, str]  # email -> User id
    emulators: Emulators
    person: SalesforcePerson
    teammate: FrontTeammate
    worker_module: str = "frontforce"
    extra_workers: list[str] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def human_accounts(self) -> list[Account]:
        """The Accounts Pat edits (ARR, tier, Opportunity amounts)."""
        return self.accounts[: len(self.accounts) // 2]

    @property
    def upsell_accounts(self) -> list[Account]:
        """The Accounts whose Opportunity an "Upsell" tag moves (nobody edits them in
        Salesforce during a run)."""
        return self.accounts[len(self.accounts) // 2:]

    def groups(self) -> dict[str, list[str]]:
        """Every consumer group of the pipeline and every topic it reads."""
        s = self.stack.settings()
        t = s.topics
        lane = {s.worker_topics["seen"]}  # the fast lane's dedupe log: written, not read
        return {s.worker.app_id: [t.salesforce_changes, *(v for v in s.worker_topics.values() if v not in lane)],
                s.fast_lane_group: [t.front_events],
                s.sink.group_id: [t.commands_salesforce],
                s.front_sink.group_id: [t.commands_front]}

    def quiesce(self, timeout_s: float = 240) -> float:
        return quiesce(self.emulators, self.stack.bootstrap, self.groups(), timeout_s,
                       quiet_s=self.stack.settings().worker.unmatched_wait_s + 6)

    def restart_stalled(self, stop: threading.Event) -> None:
        """Until ``stop``: start the worker again when it exits 75."""
        while not stop.wait(0.5):
            with self.lock:
                proc = self.stack.procs.get("worker")
                if proc is not None and proc.poll() == EXIT_STALLED:
                    print(f"[allcases] worker exited {EXIT_STALLED}; started again", flush=True)
                    self.stack.spawn("worker", "worker", module=self.worker_module)

    def replace_worker(self, module: str, kill: bool = False, fresh_state: bool = False) -> None:
        """Stop the worker (SIGTERM: it leaves the group at once; ``kill``: SIGKILL) and
        start ``module``'s in its place, from the same config."""
        with self.lock:
            self._replace_worker(module, kill, fresh_state)

    def _replace_worker(self, module: str, kill: bool, fresh_state: bool) -> None:
        import signal

        proc = self.stack.procs.get("worker")
        if proc is not None and proc.poll() is None:
            if kill:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                self.stack.procs.pop("worker")
            else:
                self.stack.stop_process("worker")
        if fresh_state:
            shutil.rmtree(self.stack.state_dir / "worker", ignore_errors=True)
        self.stack.spawn("worker", "worker", module=module)
        self.worker_module = module

    def start_second_worker(self, name: str = "worker2", module: str = "frontforce") -> None:
        """Another worker in the group, with its own state directory (another machine)."""
        stack = self.stack
        config = stack.state_dir / "frontforce.yaml"
        second = stack.state_dir / f"frontforce-{name}.yaml"
        text = config.read_text()
        moved = text.replace(f'data_dir: "{stack.state_dir / "worker"}"',
                             f'data_dir: "{stack.state_dir / name}"')
        assert moved != text, "the worker's data_dir is not where the config had it"
        second.write_text(moved)
        log = (stack.logs / f"{name}.log").open("ab")
        stack.procs[name] = subprocess.Popen(
            [sys.executable, "-m", module, "worker", "--config", str(second)],
            stdout=log, stderr=subprocess.STDOUT, env=stack.env(), cwd=REPO)
        if name not in self.extra_workers:
            self.extra_workers.append(name)

    def close(self) -> None:
        self.person.close()
        self.teammate.close()
        self.emulators.close()


def _configure(stack: LocalStack) -> None:
    """The local stack's config, plus the "New Lead" rule, a shorter unmatched wait and
    flush window (the test's clock, not the product's)."""
    path = stack.state_dir / "frontforce.yaml"
    text = path.read_text()
    edits = [
        ("  tag_rules:\n",
         f'  tag_rules:\n    "New Lead":\n      follow_up_task: "{NEW_LEAD_RULE}"\n'),
        (re.compile(r"unmatched_wait_s: \d+"), "unmatched_wait_s: 3"),
        (re.compile(r"(front_sink:\n  group_id: [^\n]+\n)"), r"\1  flush_window_ms: 1000\n"),
    ]
    for old, new in edits:
        if isinstance(old, str):
            assert old in text, f"config has no {old!r}"
            text = text.replace(old, new, 1)
        else:
            text, n = old.subn(new, text, count=1)
            assert n == 1, f"config has no {old.pattern!r}"
    path.write_text(text)


def _seed(stack: LocalStack, tag: str, n_accounts: int, archive_cases: int,
          status_cases: int) -> tuple[list[Account], dict[str, str], dict[str, str], dict[str, str]]:
    assert stack.ca_file is not None
    sf = httpx.Client(base_url=stack.salesforce_url, timeout=60,
                      verify=ssl.create_default_context(cafile=str(stack.ca_file)))
    front = httpx.Client(base_url=stack.front_url, timeout=60)
    try:
        users = [{"Email": e, "Username": e, "FirstName": e.split("@")[0].title(),
                  "LastName": "Owner"} for e in OWNERS]
        users.append({"Email": PAT, "Username": PAT, "FirstName": "Pat", "LastName": "Person"})
        accounts = [{"Name": f"Acct{i} {tag}", "Website": f"https://www.a{i}-{tag}.example/",
                     "OwnerId": f"@User[{i % 2}]", "AnnualRevenue": 100000 * (i + 1),
                     "Type": "Customer - Direct"} for i in range(n_accounts)]
        contacts = [{"FirstName": f"C{j}", "LastName": f"A{i}",
                     "Email": f"c{j}@a{i}-{tag}.example", "AccountId": f"@Account[{i}]"}
                    for i in range(n_accounts) for j in range(2)]
        opps = [{"Name": f"Deal {i}", "StageName": "Qualification", "CloseDate": "2027-03-31",
                 "Amount": 10000 * (i + 1), "AccountId": f"@Account[{i}]"}
                for i in range(n_accounts)]
        conv_ids = [f"cnv_{tag}c{k}" for k in range(archive_cases)] + [
            f"cnv_{tag}s{k}" for k in range(status_cases)]
        cases = [{"Subject": f"Case {cid}", "Front_Conversation_Id__c": cid, "Status": "New"}
                 for cid in conv_ids]
        r = sf.post("/__admin/seed", json={"records": {
            "User": users, "Account": accounts, "Contact": contacts, "Opportunity": opps,
            **({"Case": cases} if cases else {})}})
        r.raise_for_status()
        ids = r.json()["ids"]
        user_ids = dict(zip([u["Email"] for u in users], ids["User"], strict=True))
        out = []
        for i in range(n_accounts):
            cids = ids["Contact"][2 * i: 2 * i + 2]
            out.append(Account(ids["Account"][i], accounts[i]["Name"], f"a{i}-{tag}.example",
                               OWNERS[i % 2], dict(zip([contacts[2 * i + j]["Email"] for j in range(2)],
                                                       cids, strict=True)),
                               ids["Opportunity"][i]))
        case_ids = dict(zip(conv_ids, ids.get("Case", []), strict=True))
        # Front: the teammates (Pam and Jim own Accounts: routing; Tom works the inbox), an
        # inbox, and the conversations the Cases are linked to, each from a Contact.
        emails = [e for a in out for e in a.contacts]
        r = front.post("/__admin/seed", json={
            "teammates": [{"email": e, "first_name": e.split("@")[0].title(), "last_name": "T"}
                          for e in [*OWNERS, TOM]],
            "inboxes": [{"name": "Support", "address": "support@acme.example"}],
            "conversations": [{"id": cid, "subject": f"Case {cid}", "status": "open",
                               "recipient": {"handle": emails[k % len(emails)], "role": "from"}}
                              for k, cid in enumerate(conv_ids)]})
        assert r.status_code == 200, r.text
        r = front.post("/__admin/config", json={"rpm": 100000, "burst_rps": 1000})
        assert r.status_code == 200, r.text
        r = sf.post("/__admin/config", json={"cdc_delivery_limit": 10_000_000,
                                              "daily_limit": 10_000_000})
        r.raise_for_status()
        archive = {c: case_ids[c] for c in conv_ids[:archive_cases]}
        status = {c: case_ids[c] for c in conv_ids[archive_cases:]}
        return out, archive, status, user_ids
    finally:
        sf.close()
        front.close()


@contextlib.contextmanager
def all_cases_pipeline(infra: LocalStack, state_dir: Path, accounts: int = 8,
                       archive_cases: int = 6, status_cases: int = 4,
                       worker_module: str = "frontforce",
                       restart_stalled: bool = False) -> Iterator[World]:
    """The pipeline with every use case on, its world seeded and loaded, the receiver
    subscribed to Front's webhooks, and everything settled (the Accounts' context is in
    Front) before it is handed over. Stops everything it started. ``restart_stalled``: a
    worker that exits 75 (it stopped rather than skip: streams/_offsets.py, max_stall_s) is
    started again, as systemd's ``Restart=always`` would (the drills have a supervisor of
    their own)."""
    stack = new_pipeline(infra, state_dir)
    world: World | None = None
    stop_watch = threading.Event()
    watch: threading.Thread | None = None
    try:
        stack.start_salesforce()
        stack.start_front(context_fields=True)
        stack.write_config()
        _configure(stack)
        stack.frontforce("setup")
        tag = uuid.uuid4().hex[:6]
        accts, archive, status, users = _seed(stack, tag, accounts, archive_cases, status_cases)
        stack.frontforce("load", "salesforce")
        stack.start_pipeline()
        if worker_module != "frontforce":
            stack.stop_process("worker")
            stack.spawn("worker", "worker", module=worker_module)
        assert stack.ca_file is not None
        emulators = Emulators(stack)
        person = SalesforcePerson(stack.salesforce_url, str(stack.ca_file), stack.sf_client_id, PAT)
        world = World(stack, tag, accts, archive, status, users, emulators, person,
                      FrontTeammate(stack.front_url, TOM), worker_module)
        r = emulators.front.post("/__admin/webhooks", json={
            "url": stack.receiver_url, "kind": "app", "secret": stack.app_secret,
            "duplicate_rate": 0.03})
        assert r.status_code == 200, r.text
        started = time.monotonic()
        world.quiesce()
        print(f"[allcases] world of {accounts} Accounts settled {time.monotonic() - started:.0f} s "
              "after the pipeline started", flush=True)
        if restart_stalled:
            watch = threading.Thread(target=world.restart_stalled, args=(stop_watch,), daemon=True)
            watch.start()
        yield world
    finally:
        stop_watch.set()
        if watch is not None:
            watch.join()
        if world is not None:
            world.close()
        stack.stop_all(infra=False)

