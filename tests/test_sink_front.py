"""The Front sink against the real broker, the real registry and the Front emulator (one
emulator process for the module; every test has its own topics, group and conversations).

Guards: Front writes that have no idempotency key done twice (a replay, a restart after a
SIGKILL inside a call), Front's ~100 calls a minute spent one command at a time, custom
fields of others erased by PATCH's whole-object replacement, a 429 storm that loses or
doubles commands, and a permanent refusal retried forever instead of dead-lettered. The
ledger checks are run against ``tests/broken_front_sink.py`` too, which must be caught."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from emulators.front import DEFAULT_TOKEN
from frontforce.config import Settings, load_settings
from frontforce.contracts import Contracts
from frontforce.demo import read_topic
from frontforce.kafka import ensure_topics
from frontforce.localstack import REPO, LocalStack, free_port
from frontforce.logs import setup as setup_logs
from frontforce.serialization import Serde
from sinks.front import FrontSink
from sinks.front._plan import (
    account_changes,
    account_create_body,
    fold_accounts,
    fold_tags,
    join_comments,
    marker_for,
    merge_contact,
)
from tests.broken_front_sink import LedgerlessFrontSink

CONTACT_FIELDS = [{"name": "Tier", "type": "string"}, {"name": "ARR", "type": "number"},
                  {"name": "Owner Note", "type": "string"}]
ACCOUNT_FIELDS = [{"name": "ARR", "type": "number"}, {"name": "Tier", "type": "string"},
                  {"name": "Account Owner", "type": "string"},
                  {"name": "Open Opportunities", "type": "string"},
                  {"name": "Health", "type": "string"}]


@dataclasses.dataclass
class Front:
    stack: LocalStack
    admin: httpx.Client

    def seed(self, body: dict[str, Any]) -> dict[str, list[str]]:
        r = self.admin.post("/__admin/seed", json=body)
        r.raise_for_status()
        return dict(r.json()["ids"])

    def state(self) -> dict[str, Any]:
        r = self.admin.get("/__admin/state")
        r.raise_for_status()
        return dict(r.json())

    def requests(self) -> list[dict[str, Any]]:
        r = self.admin.get("/__admin/requests")
        r.raise_for_status()
        return list(r.json()["requests"])


@pytest.fixture(scope="module")
def front(infra: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    setup_logs("INFO")
    state = tmp_path_factory.mktemp("front-sink")
    stack = dataclasses.replace(infra, state_dir=state, persist=False, procs={},
                                ports=dataclasses.replace(infra.ports, front=free_port()))
    stack.start_front()
    try:
        f = Front(stack, httpx.Client(base_url=stack.front_url, timeout=30))
        f.admin.post("/__admin/config", json={"rpm": 100000}).raise_for_status()
        f.seed({"defaults": True, "custom_fields": {"contact": CONTACT_FIELDS,
                                                    "account": ACCOUNT_FIELDS}})
        yield f
    finally:
        stack.stop_all(infra=False)


class Env:
    """Fresh topics, group and Front records for one test; the sink's settings file."""

    def __init__(self, front: Front, tmp: Path, n_conversations: int = 3, n_contacts: int = 2,
                 **sink: Any) -> None:
        self.front = front
        stack = front.stack
        self.tag = uuid.uuid4().hex[:8]
        self.config = tmp / f"front-{self.tag}.yaml"
        opts = {"group_id": f"fs-{self.tag}", "flush_window_ms": 300, "max_poll_interval_ms": 10000,
                "session_timeout_ms": 6000, "retry_max_s": 60, **sink}
        sink_yaml = ", ".join(f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}" for k, v in opts.items())
        self.config.write_text(f"""
kafka: {{bootstrap_servers: "{stack.bootstrap}", schema_registry_url: "{stack.registry_url}",
         topic_prefix: "f{self.tag}."}}
front: {{app_secret: "unused", api_url: "{stack.front_url}", api_token: "{DEFAULT_TOKEN}", timeout_s: 4}}
salesforce: {{login_url: "https://127.0.0.1:1", client_id: "unused", client_secret: "unused"}}
front_sink: {{{sink_yaml}}}
""")
        self.settings = load_settings(self.config)
        self.topics = self.settings.topics
        ensure_topics(self.settings, [self.topics.commands_front, self.topics.audit,
                                      self.topics.deadletter, self.topics.front_ledger])
        Contracts(self.settings).register()
        self.serde = Serde(self.settings)
        self.producer = Producer({"bootstrap.servers": stack.bootstrap})
        ids = front.seed({
            "contacts": [{"handles": [{"handle": f"p{i}-{self.tag}@corp.example", "source": "email"},
                                      {"handle": self.phone(i), "source": "phone"}],
                          "custom_fields": {"Owner Note": f"set by a human {i}"}}
                         for i in range(n_contacts)],
            "conversations": [{"subject": f"{self.tag} {i}"} for i in range(n_conversations)]})
        self.conversations = ids["conversations"]
        self.contacts = [f"p{i}-{self.tag}@corp.example" for i in range(n_contacts)]
        self.n = 0

    def phone(self, i: int) -> str:
        return f"+1{int(self.tag, 16) % 10**8:08d}{i:02d}"

    # -- commands ------------------------------------------------------------------------
    def cmd(self, op_name: str, key: str | None = None, **fields: Any) -> dict[str, Any]:
        self.n += 1
        cid = f"{self.tag}-{self.n}"
        return {"command_id": cid, "idempotency_key": key or f"key-{cid}",
                "created_at": int(time.time() * 1000),
                "origin": {"system": "frontforce", "source_event_id": f"evt-{cid}",
                           "correlation_id": f"corr-{cid}"},
                "operation": (f"frontforce.commands.front.{op_name}", fields)}

    def send(self, commands: list[dict[str, Any]]) -> None:
        for c in commands:
            _, op = c["operation"]
            key = op.get("conversation_id") or op.get("contact_handle") or op.get("external_id")
            self.producer.produce(self.topics.commands_front, key=key.encode(),
                                  value=self.serde.encode(self.topics.commands_front, c))
        assert self.producer.flush(10) == 0

    # -- outcomes ------------------------------------------------------------------------
    def audit(self) -> list[dict[str, Any]]:
        return read_topic(self.front.stack.bootstrap, self.front.stack.registry_url, self.topics.audit)

    def deadletters(self) -> list[dict[str, Any]]:
        return read_topic(self.front.stack.bootstrap, self.front.stack.registry_url, self.topics.deadletter)

    def committed_all(self, group: str | None = None, timeout: float = 30) -> bool:
        group = group or self.settings.front_sink.group_id
        admin = AdminClient({"bootstrap.servers": self.front.stack.bootstrap})
        topic = self.topics.commands_front
        c = Consumer({"bootstrap.servers": self.front.stack.bootstrap, "group.id": f"probe-{uuid.uuid4()}"})
        try:
            parts = list(admin.list_topics(topic, timeout=10).topics[topic].partitions)
            ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                fut = admin.list_consumer_group_offsets(
                    [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in parts])])
                done = {tp.partition: tp.offset for tp in fut[group].result().topic_partitions}
                if all(ends[p] == 0 or done.get(p) == ends[p] for p in parts):
                    return True
                time.sleep(0.3)
            return False
        finally:
            c.close()

    def comments_by_marker(self, commands: list[dict[str, Any]]) -> Counter[str]:
        """How many comments at the emulator carry each command's marker."""
        bodies = [c["body"] for c in self.front.state()["comments"].values()]
        return Counter({c["idempotency_key"]: sum(marker_for(c["idempotency_key"]) in b for b in bodies)
                        for c in commands if c["operation"][0].endswith("AddComment")})

    def writes(self, since: int) -> list[dict[str, Any]]:
        return [r for r in self.front.requests()[since:] if r["method"] != "GET"]

    def account_writes(self, since: int) -> list[dict[str, Any]]:
        """Writes to accounts and contacts only: a conversation write still being retried
        by an earlier test's sink (a comment answered 503) is not this test's."""
        return [r for r in self.writes(since) if not r["path"].startswith("/conversations/")]


class Running:
    def __init__(self, sink: FrontSink) -> None:
        self.sink = sink
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.sink.run()
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            self.error = exc

    def stop(self) -> None:
        self.sink.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def run_until(env: Env, sink: FrontSink, n_commands: int, group: str | None = None,
              timeout: float = 40) -> Running:
    """Run ``sink`` until every command has an audit record and its offsets are committed."""
    run = Running(sink)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and run.thread.is_alive():
            if sink.stats["applied"] + sink.stats["skipped"] + sink.stats["dead_lettered"] >= n_commands:
                break
            time.sleep(0.2)
        assert run.error is None, repr(run.error)
        assert env.committed_all(group), "offsets not committed"
    finally:
        run.stop()
    return run


def teammates_of(state: dict[str, Any]) -> dict[str, str]:
    return {t["id"]: t["email"] for t in state["teammates"].values() if t.get("email")}


def with_group(env: Env, group: str) -> Settings:
    return env.settings.model_copy(update={
        "front_sink": env.settings.front_sink.model_copy(update={"group_id": group})})


def test_every_operation_is_applied_coalesced_per_conversation_and_contact(
        front: Front, tmp_path: Path) -> None:
    """Each operation reaches Front; one window's commands cost at most one write per
    conversation per kind (comments joined, tags in one call, a tag added then removed costs
    nothing) and one GET + one PATCH per contact, which keeps the fields others set."""
    env = Env(front, tmp_path, n_conversations=3, n_contacts=2, flush_window_ms=1500)
    c0, c1, c2 = env.conversations
    p0, p1 = env.contacts
    cmds = [
        env.cmd("AddComment", conversation_id=c0, body="Opportunity won", author_email=None),
        env.cmd("AddComment", conversation_id=c0, body="Amount 12k", author_email=None),
        env.cmd("AddComment", conversation_id=c0, body="Owner changed", author_email="Pam@acme.example"),
        env.cmd("AddTags", conversation_id=c0, tag_names=["sf:synced", f"new-{env.tag}"]),
        env.cmd("AddTags", conversation_id=c0, tag_names=[f"gone-{env.tag}"]),
        env.cmd("RemoveTags", conversation_id=c0, tag_names=[f"gone-{env.tag}"]),
        env.cmd("AssignConversation", conversation_id=c1, teammate_email="jim@acme.example"),
        env.cmd("AssignConversation", conversation_id=c1, teammate_email="pam@acme.example"),
        env.cmd("AddLink", conversation_id=c1, name="Acme", external_url=f"https://sf.example/{env.tag}/1"),
        env.cmd("AddLink", conversation_id=c1, name="Acme", external_url=f"https://sf.example/{env.tag}/2"),
        env.cmd("AddTags", conversation_id=c2, tag_names=["sf:opportunity"]),
        env.cmd("RemoveTags", conversation_id=c2, tag_names=["sf:synced"]),
        env.cmd("UpdateContactFields", contact_handle=p0, custom_fields={"Tier": "Gold", "ARR": "1000"}, links=[]),
        env.cmd("UpdateContactFields", contact_handle=p0, custom_fields={"ARR": "2500"},
                links=[f"https://sf.example/{env.tag}/c0"]),
        env.cmd("UpdateContactFields", contact_handle=env.phone(1), custom_fields={"Tier": "Silver"}, links=[]),
    ]
    before = len(front.requests())
    env.send(cmds)
    sink = FrontSink(env.settings)
    run_until(env, sink, len(cmds))
    assert sink.stats["batches"] == 1, sink.stats  # one flush window
    st = front.state()
    tags = {t["id"]: t["name"] for t in st["tags"].values()}
    conv = st["conversations"]
    assert sorted(tags[t] for t in conv[c0]["tag_ids"]) == sorted(["sf:synced", f"new-{env.tag}"])
    assert f"gone-{env.tag}" not in {tags[t] for t in conv[c0]["tag_ids"]}
    teammates = {t["id"]: t["email"] for t in st["teammates"].values()}
    assert teammates[conv[c1]["assignee_id"]] == "pam@acme.example"
    links = {lk["id"]: lk["external_url"] for lk in st["links"].values()}
    assert sorted(links[x] for x in conv[c1]["link_ids"]) == [f"https://sf.example/{env.tag}/1",
                                                              f"https://sf.example/{env.tag}/2"]
    assert [tags[t] for t in conv[c2]["tag_ids"]] == ["sf:opportunity"]
    assert env.comments_by_marker(cmds) == Counter({cmds[n]["idempotency_key"]: 1 for n in range(3)})
    people = teammates_of(st)
    by_author = Counter(people[c["author_id"]] for c in st["comments"].values()
                        if c["conversation_id"] == c0)
    assert by_author == Counter({"api-bot@front.emulator": 1, "pam@acme.example": 1})  # one per author
    contacts = {c["handles"][0]["handle"]: c for c in st["contacts"].values()}
    assert contacts[p0]["custom_fields"] == {"Owner Note": "set by a human 0", "Tier": "Gold", "ARR": 2500}
    assert contacts[p0]["links"] == [f"https://sf.example/{env.tag}/c0"]
    assert contacts[p1]["custom_fields"] == {"Owner Note": "set by a human 1", "Tier": "Silver"}
    # Cost at the emulator: writes per target, and nothing for the tag added then removed.
    writes = Counter((r["method"], r["path"]) for r in env.writes(before))
    assert writes == Counter({
        ("POST", f"/conversations/{c0}/comments"): 2,  # two authors
        ("POST", f"/conversations/{c0}/tags"): 1,
        ("PUT", f"/conversations/{c1}/assignee"): 1,
        ("POST", f"/conversations/{c1}/links"): 1,
        ("PATCH", f"/conversations/{c2}"): 1,  # add + remove: one PATCH of the full set
        ("PATCH", f"/contacts/{contacts[p0]['id']}"): 1,
        ("PATCH", f"/contacts/{contacts[p1]['id']}"): 1,
        ("POST", "/company/tags"): 2,  # new-… and gone-… did not exist: created once each
    }), writes
    audit = {a["command_id"]: a for a in env.audit()}
    assert audit[cmds[5]["command_id"]]["outcome"] == "SKIPPED"  # the remove of the added tag
    assert audit[cmds[4]["command_id"]]["outcome"] == "SKIPPED"  # ...and the add
    assert audit[cmds[0]["command_id"]]["outcome"] == "CREATED"
    assert all(a["target"] == "front" for a in audit.values()) and len(audit) == len(cmds)
    assert env.deadletters() == []


def test_a_replay_from_the_beginning_writes_nothing_and_the_ledgerless_variant_is_caught(
        front: Front, tmp_path: Path) -> None:
    """Replaying commands.front (a new consumer group) must not post a comment twice: the
    ledger says APPLIED. The variant that ignores the ledger doubles the comments, and this
    check must see it."""
    env = Env(front, tmp_path, n_conversations=2, n_contacts=1)
    c0, c1 = env.conversations
    cmds = [env.cmd("AddComment", conversation_id=c, body=f"note {i}", author_email=None)
            for i, c in enumerate([c0, c1, c0])]
    cmds.append(env.cmd("AddTags", conversation_id=c1, tag_names=["sf:synced"]))
    env.send(cmds)
    run_until(env, FrontSink(env.settings), len(cmds))
    assert set(env.comments_by_marker(cmds).values()) == {1}
    before = len(front.requests())
    replay = FrontSink(with_group(env, f"replay-{env.tag}"))
    run_until(env, replay, len(cmds), group=f"replay-{env.tag}")
    assert env.writes(before) == []
    assert replay.stats["skipped"] == len(cmds)
    outcomes = Counter(a["outcome"] for a in env.audit())
    assert outcomes["SKIPPED"] == len(cmds)
    # The same replay with the ledger ignored: doubled comments, and the count says so.
    broken = LedgerlessFrontSink(with_group(env, f"broken-{env.tag}"))
    run_until(env, broken, len(cmds), group=f"broken-{env.tag}")
    assert set(env.comments_by_marker(cmds).values()) == {2}


def test_a_permanent_refusal_is_dead_lettered_with_fronts_error_and_the_rest_applied(
        front: Front, tmp_path: Path) -> None:
    """A 404 conversation and a 400 custom field go to the dead-letter topic with Front's own
    message; a good command merged into the same contact PATCH is still applied."""
    env = Env(front, tmp_path, n_conversations=1, n_contacts=1)
    p0 = env.contacts[0]
    cmds = [
        env.cmd("AddComment", conversation_id="cnv_nosuch1", body="lost", author_email=None),
        env.cmd("UpdateContactFields", contact_handle=p0, custom_fields={"Tier": "Gold"}, links=[]),
        env.cmd("UpdateContactFields", contact_handle=p0, custom_fields={"Nope": "x"}, links=[]),
        env.cmd("AddComment", conversation_id=env.conversations[0], body="kept", author_email=None),
    ]
    env.send(cmds)
    run_until(env, FrontSink(env.settings), len(cmds))
    dead = {d["original_value"]: d for d in env.deadletters()}
    assert len(dead) == 2
    messages = sorted(d["error_message"] for d in dead.values())
    assert "front HTTP 400" in messages[0] and "custom_fields.Nope" in messages[0], messages
    assert "front HTTP 404" in messages[1], messages
    audit = {a["command_id"]: a for a in env.audit()}
    assert [audit[c["command_id"]]["outcome"] for c in cmds] == ["DEAD_LETTERED", "UPDATED",
                                                                   "DEAD_LETTERED", "CREATED"]
    contact = next(c for c in front.state()["contacts"].values() if c["handles"][0]["handle"] == p0)
    assert contact["custom_fields"] == {"Owner Note": "set by a human 0", "Tier": "Gold"}


def test_a_429_storm_ends_with_every_command_applied_once(front: Front, tmp_path: Path) -> None:
    """A tiny company budget and injected 429s without retry-after: the sink waits (the
    body's milliseconds, x-ratelimit-reset), never dead-letters, applies each command once."""
    env = Env(front, tmp_path, n_conversations=6, n_contacts=0, flush_window_ms=200)
    cmds = []
    for i, c in enumerate(env.conversations):
        cmds += [env.cmd("AddComment", conversation_id=c, body=f"storm {i}", author_email=None),
                 env.cmd("AddTags", conversation_id=c, tag_names=["sf:synced"])]
    front.admin.post("/__admin/config", json={"rpm": 6, "window_seconds": 1.5,
                                              "omit_retry_after": True}).raise_for_status()
    front.admin.post("/__admin/faults", json={"method": "POST", "path": "/conversations/",
                                              "status": 429, "count": 2}).raise_for_status()
    before = len(front.requests())
    try:
        env.send(cmds)
        run_until(env, FrontSink(env.settings), len(cmds), timeout=45)
    finally:
        front.admin.delete("/__admin/faults").raise_for_status()
        front.admin.post("/__admin/config", json={"rpm": 100000, "window_seconds": 60,
                                                  "omit_retry_after": False}).raise_for_status()
    assert sum(r["status"] == 429 for r in front.requests()[before:]) >= 2
    assert set(env.comments_by_marker(cmds).values()) == {1}
    st = front.state()
    synced = next(t["id"] for t in st["tags"].values() if t["name"] == "sf:synced")
    assert all(st["conversations"][c]["tag_ids"] == [synced] for c in env.conversations)
    assert env.deadletters() == []
    assert Counter(a["outcome"] for a in env.audit()) == Counter({"CREATED": 6, "UPDATED": 6})


def _spawn(env: Env, module: str, name: str) -> subprocess.Popen[bytes]:
    log = (env.front.stack.logs / f"{name}-{env.tag}.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", module, *(["sink", "front"] if module == "frontforce" else []),
                             "--config", str(env.config)],
                            stdout=log, stderr=subprocess.STDOUT, env=env.front.stack.env(), cwd=REPO)


def test_sigkill_inside_a_comment_call_then_restart_doubles_nothing_and_the_ledgerless_variant_is_caught(
        front: Front, tmp_path: Path) -> None:
    """The sink is killed (SIGKILL) while Front holds a comment POST it has already committed
    (the timeout-after-commit case): INTENT is on the ledger, the offset is not committed.
    After a restart the product finds its marker and posts nothing again, and applies the
    rest; the ledgerless variant, run the same way beside it, posts the comment twice."""
    envs = {"product": Env(front, tmp_path, n_conversations=4, n_contacts=0),
            "broken": Env(front, tmp_path, n_conversations=4, n_contacts=0)}
    modules = {"product": "frontforce", "broken": "tests.broken_front_sink"}
    sent: dict[str, list[dict[str, Any]]] = {}
    for name, env in envs.items():
        held = env.conversations[0]
        front.admin.post("/__admin/faults", json={
            "method": "POST", "path": f"/conversations/{held}/comments", "status": 503,
            "count": 1, "after_commit": True, "delay_s": 30}).raise_for_status()
        sent[name] = [env.cmd("AddComment", conversation_id=c, body=f"{name} {i}", author_email=None)
                      for i, c in enumerate(env.conversations)]
        env.send(sent[name])
    procs = {name: _spawn(env, modules[name], f"sink-front-{name}") for name, env in envs.items()}
    try:
        # Wait until each held comment exists at Front while its POST is still unanswered.
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            counts = {n: env.comments_by_marker(sent[n][:1])[sent[n][0]["idempotency_key"]]
                      for n, env in envs.items()}
            if all(counts.values()):
                break
            time.sleep(0.1)
        assert all(counts.values()), counts
        for p in procs.values():
            p.send_signal(signal.SIGKILL)
            p.wait(10)
        front.admin.delete("/__admin/faults").raise_for_status()
        for name, env in envs.items():
            assert not env.committed_all(timeout=0.5), f"{name}: committed before the held call ended"
        procs = {name: _spawn(env, modules[name], f"sink-front-{name}") for name, env in envs.items()}
        for name, env in envs.items():
            assert env.committed_all(timeout=40), f"{name}: not caught up after the restart"
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
    product = envs["product"].comments_by_marker(sent["product"])
    assert set(product.values()) == {1}, product  # nothing missing, nothing doubled
    broken = envs["broken"].comments_by_marker(sent["broken"])
    assert broken[sent["broken"][0]["idempotency_key"]] == 2, broken  # the check catches it
    log = (front.stack.logs / f"sink-front-broken-{envs['broken'].tag}.log").read_text()
    assert "broken front sink: the ledger is ignored" in log
    plog = (front.stack.logs / f"sink-front-product-{envs['product'].tag}.log").read_text()
    assert "found in front after a crash" in plog


def _wait_for(run: Running, n_commands: int, timeout: float = 40) -> None:
    """Until ``run``'s sink has an outcome for ``n_commands`` commands in all."""
    stats = run.sink.stats
    deadline = time.monotonic() + timeout
    while stats["applied"] + stats["skipped"] + stats["dead_lettered"] < n_commands:
        assert run.error is None, repr(run.error)
        assert time.monotonic() < deadline, f"timed out: {stats}"
        time.sleep(0.1)


def _account_of(front: Front, external_id: str) -> dict[str, Any]:
    return next(a for a in front.state()["accounts"].values() if a["external_id"] == external_id)


def test_upsert_account_creates_links_then_patches_only_what_changed(
        front: Front, tmp_path: Path) -> None:
    """Use case 3: a Salesforce Account becomes a Front account with its ARR, tier, owner and
    open opportunities, its Contacts linked (a handle with no Front contact skipped and
    audited). A changed ARR is one PATCH that keeps a field a human set in Front; the same
    values again write nothing, in the same process (cached account id and links) and in a
    new one (found by alt:ext_id:). Counted at the emulator."""
    env = Env(front, tmp_path, n_conversations=1, n_contacts=2)
    p0, p1 = env.contacts
    ext = f"001{env.tag}"
    nobody = f"nobody-{env.tag}@corp.example"
    fields: dict[str, str | None] = {"ARR": "120000", "Tier": "Gold",
                                     "Account Owner": "pam@acme.example",
                                     "Open Opportunities": "2: Renewal 2027, Upsell"}

    def upsert(**changes: Any) -> dict[str, Any]:
        return env.cmd("UpsertAccount", external_id=ext, name="Vance Refrigeration",
                       domains=[f"{env.tag}.example"], description=None,
                       contact_handles=[p0, p1.upper(), nobody],
                       custom_fields={**fields, **changes})

    run = Running(FrontSink(env.settings))
    try:
        # 1. Created with its fields; the two known contacts linked in one call.
        before = len(front.requests())
        first = upsert()
        env.send([first])
        _wait_for(run, 1)
        account = _account_of(front, ext)
        acc = account["id"]
        assert account["name"] == "Vance Refrigeration"
        assert account["domains"] == [f"{env.tag}.example"]
        assert account["custom_fields"] == {"ARR": 120000, "Tier": "Gold",
                                            "Account Owner": "pam@acme.example",
                                            "Open Opportunities": "2: Renewal 2027, Upsell"}
        st = front.state()
        by_email = {c["handles"][0]["handle"]: cid for cid, c in st["contacts"].items()}
        assert account["contact_ids"] == [by_email[p0], by_email[p1]]
        assert Counter((r["method"], r["path"]) for r in env.account_writes(before)) == Counter({
            ("POST", "/accounts"): 1, ("POST", f"/accounts/{acc}/contacts"): 1})

        # A human sets a field of their own in Front (PATCH sends the whole set).
        human = httpx.patch(f"{front.stack.front_url}/accounts/{acc}",
                            headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"},
                            json={"custom_fields": {**account["custom_fields"], "Health": "green"}})
        assert human.status_code == 200, human.text

        # 2. ARR changed: one PATCH, the human's field kept, no contact call.
        before = len(front.requests())
        second = upsert(ARR="150000")
        env.send([second])
        _wait_for(run, 2)
        assert _account_of(front, ext)["custom_fields"] == {
            "ARR": 150000, "Tier": "Gold", "Account Owner": "pam@acme.example",
            "Open Opportunities": "2: Renewal 2027, Upsell", "Health": "green"}
        assert [(r["method"], r["path"]) for r in env.account_writes(before)] == [("PATCH", f"/accounts/{acc}")]

        # 3. The same values again (a new command): no write; one read of the account.
        before = len(front.requests())
        third = upsert(ARR="150000")
        env.send([third])
        _wait_for(run, 3)
        assert [(r["method"], r["path"]) for r in front.requests()[before:]] == [("GET", f"/accounts/{acc}")]
        assert env.committed_all()
    finally:
        run.stop()

    # 4. A new process (nothing cached) finds the account by its external id: still no write.
    before = len(front.requests())
    fourth = upsert(ARR="150000")
    env.send([fourth])
    run_until(env, FrontSink(env.settings), 1)
    assert env.account_writes(before) == []
    reads = [r["path"] for r in front.requests()[before:]]
    assert f"/accounts/alt:ext_id:{ext}" in reads and f"/accounts/{acc}/contacts" in reads

    audit = {a["command_id"]: a for a in env.audit()}
    outcomes = [audit[c["command_id"]]["outcome"] for c in (first, second, third, fourth)]
    assert outcomes == ["CREATED", "UPDATED", "SKIPPED", "SKIPPED"]
    assert {audit[c["command_id"]]["record_id"] for c in (first, second, third, fourth)} == {acc}
    assert all(audit[c["command_id"]]["operation"] == "UpsertAccount" for c in (first, second))
    # The contact Front does not know is skipped, said in the audit, never an error.
    assert f"no Front contact: {nobody}" in (audit[first["command_id"]]["error"] or "")
    assert audit[first["command_id"]]["api_calls"]["front"] > 0
    assert env.deadletters() == []
    assert len([a for a in front.state()["accounts"].values() if a["external_id"] == ext]) == 1


def test_upsert_accounts_of_one_window_are_one_write_and_an_unknown_field_is_dead_lettered(
        front: Front, tmp_path: Path) -> None:
    """Three UpsertAccount of one account inside one flush window are one POST (the last
    name wins, custom fields merged in order, a null clears one); an unknown custom field
    name is refused by Front (400) and only its command is dead-lettered with Front's
    message, as for contacts, while its account's good command is applied."""
    env = Env(front, tmp_path, n_conversations=1, n_contacts=2, flush_window_ms=1500)
    p0, p1 = env.contacts
    ext1, ext2 = f"001A{env.tag}", f"001B{env.tag}"

    def upsert(ext: str, name: str, handles: list[str], **fields: str | None) -> dict[str, Any]:
        return env.cmd("UpsertAccount", external_id=ext, name=name, domains=[],
                       description="From Salesforce", contact_handles=handles,
                       custom_fields=fields)

    cmds = [upsert(ext1, "Old name", [p0], ARR="1000", Tier="Silver"),
            upsert(ext1, "Dunder Mifflin", [p1], ARR="2000", **{"Open Opportunities": "1"}),
            upsert(ext1, "Dunder Mifflin Inc.", [p0], Tier=None),
            upsert(ext2, "Initech", [], ARR="5"),
            upsert(ext2, "Initech", [], Nope="x")]
    before = len(front.requests())
    env.send(cmds)
    sink = FrontSink(env.settings)
    run_until(env, sink, len(cmds))
    assert sink.stats["batches"] == 1, sink.stats
    a1, a2 = _account_of(front, ext1), _account_of(front, ext2)
    assert (a1["name"], a1["description"]) == ("Dunder Mifflin Inc.", "From Salesforce")
    assert a1["custom_fields"] == {"ARR": 2000, "Open Opportunities": "1"}
    by_email = {c["handles"][0]["handle"]: cid for cid, c in front.state()["contacts"].items()}
    assert sorted(a1["contact_ids"]) == sorted([by_email[p0], by_email[p1]])
    assert a2["custom_fields"] == {"ARR": 5}
    writes = Counter((r["method"], r["path"], r["status"]) for r in env.writes(before))
    assert writes == Counter({
        ("POST", "/accounts", 201): 2,  # one per account: ext1's three commands in one
        ("POST", f"/accounts/{a1['id']}/contacts", 204): 1,
        ("POST", "/accounts", 400): 1,  # ext2's two commands merged: refused, then unrolled
        ("PATCH", f"/accounts/{a2['id']}", 400): 1,  # the unknown field alone
    }), writes
    audit = {a["command_id"]: a for a in env.audit()}
    assert [audit[c["command_id"]]["outcome"] for c in cmds] == [
        "CREATED", "CREATED", "CREATED", "CREATED", "DEAD_LETTERED"]
    dead = env.deadletters()
    assert len(dead) == 1
    assert "front HTTP 400" in dead[0]["error_message"] and "custom_fields.Nope" in dead[0]["error_message"]


def test_coalescing_rules_of_one_window() -> None:
    """The rules the sink applies before any call (``sinks.front._plan``)."""
    plan = fold_tags([(0, "add", ["a", "b"]), (1, "remove", ["b"]), (2, "remove", ["c"]),
                      (3, "add", ["c"]), (4, "remove", ["d"])])
    assert (sorted(plan.add), plan.remove) == (["a", "c"], ["d"])  # b: added then removed
    assert plan.effective == {0, 3, 4}  # 1 only took away what 0 brought; 2 was undone by 3
    fields, links = merge_contact({"Owner Note": "theirs", "Tier": "Bronze"}, ["https://x"],
                                  [({"Tier": "Gold", "ARR": "10.5"}, ["https://y"]),
                                   ({"Tier": None, "ARR": "12"}, ["https://x"])],
                                  {"ARR": "number"})
    assert fields == {"Owner Note": "theirs", "ARR": 12} and links == ["https://x", "https://y"]
    account = fold_accounts([
        {"external_id": " 001A ", "name": "Old", "domains": ["a.example"], "description": "d",
         "custom_fields": {"ARR": "1", "Tier": "Gold"}, "contact_handles": ["Bob@a.example"]},
        {"external_id": "001A", "name": "New ", "domains": [], "description": None,
         "custom_fields": {"Tier": None, "ARR": "2.5"}, "contact_handles": ["bob@a.example", "ann@a.example"]}])
    assert (account.external_id, account.name, account.domains, account.description) == (
        "001A", "New", ["a.example"], "d")
    assert account.handles == ["Bob@a.example", "ann@a.example"]
    types = {"ARR": "number"}
    assert account_create_body(account, types)["custom_fields"] == {"ARR": 2.5}
    current = {"name": "New", "description": "d", "domains": ["A.example"],
               "custom_fields": {"ARR": 2.5, "Health": "green"}}
    assert account_changes(current, account, types) == {}  # Front holds it all: no PATCH
    assert account_changes({**current, "custom_fields": {"ARR": 1, "Tier": "Gold", "Health": "green"}},
                           account, types) == {"custom_fields": {"ARR": 2.5, "Health": "green"}}
    groups = join_comments([(0, "a" * 60), (1, "b" * 30), (2, "c" * 60)], max_chars=100)
    assert [[n for n, _ in g] for g in groups] == [[0, 1], [2]]
    assert marker_for("k1") != marker_for("k2") and marker_for("k1").startswith("[frontforce:")
