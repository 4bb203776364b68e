"""The chaos scenario: SIGKILL each stage of the pipeline at the moment that matters for it,
detected rather than guessed, restart it, wait until it owns its partitions again, and
finally check Salesforce and the audit trail with ``check``.

The moments, in order:
  receiver  while a webhook is on the wire (Front retries until it gets a 2xx);
  worker    right after a command appeared on ``commands.salesforce``, before Faust's
            next offset commit (every 1 s): the restarted worker must replay the event;
  sink      while its Collections upsert is held open before Salesforce wrote anything
            (the emulator drops a held request whose client went away);
  sink      after Salesforce applied the upsert, while the answer is held: the write is
            done but its offsets are not committed; the restart must re-apply it.
After each kill the process is restarted and the next kill waits until the group
coordinator shows it owning partitions (Stable, the killed member gone). Before each sink
kill the pipeline drains, so the held call carries only messages sent for that moment.
Uniqueness of ``Task.Front_Message_Id__c`` is off in the emulator for the run, so a sink
that wrote twice would leave two rows instead of being saved by the org.
"""

from __future__ import annotations

import signal
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx

from frontforce.lag import describe_lag, wait_settled
from tests.chaos._probes import TASK_UPSERT, Front, Groups, Org, Tail, poll
from tests.test_pipeline import Pipeline

# Sink commands (``python -m <first> <rest> --config FILE``).
SINK = ("frontforce", "sink", "salesforce")
BROKEN_SINK = ("tests.chaos.broken_sink",)

HOLD_MS = 2500  # how long the emulator holds the sink's upsert at the moment of a kill


@dataclass
class Kill:
    process: str
    moment: str
    at_s: float  # since the scenario started
    back_after_s: float = 0.0  # until the restarted process owned partitions (served)


@dataclass
class ChaosRun:
    """What happened and what was left behind, for ``check``."""

    tag: str
    contact_ids: dict[str, str]  # sender email -> Contact id
    delivered: dict[str, str] = field(default_factory=dict)  # message id -> sender (2xx)
    undelivered: dict[str, str] = field(default_factory=dict)
    retried_posts: int = 0
    kills: list[Kill] = field(default_factory=list)
    dropped_upserts: int = 0  # held upserts the emulator dropped because the sink died
    sent_for_held_upsert: set[str] = field(default_factory=set)  # all it can have carried
    written_then_killed: set[str] = field(default_factory=set)  # message ids
    tasks: list[dict[str, Any]] = field(default_factory=list)
    audits: list[dict[str, Any]] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)
    front_events: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _event_id(message_id: str) -> str:
    return "evt_" + message_id.removeprefix("msg_")  # tests.test_pipeline.event's naming


def run_chaos(p: Pipeline, sink: tuple[str, ...] = SINK,
              phases: tuple[str, ...] = ("receiver", "worker", "sink")) -> ChaosRun:
    """Run the kills of ``phases`` against ``p`` with ``sink`` as the Salesforce sink's
    command; return what ``check`` needs. Raises AssertionError when a moment never came."""
    stack = p.stack
    settings = stack.settings()
    org, groups = Org(p), Groups(stack.bootstrap)
    worker_group, sink_group = settings.worker.app_id, settings.sink.group_id
    started = time.monotonic()
    # Uniqueness of the Task external id stays on: the sink creates each Task once and relies
    # on it (checked at start, as a real org's Unique flag); a replay shows as SKIPPED.
    org.configure(enforce_unique=True)
    if sink != SINK:
        stack.stop_process("sink-salesforce")  # SIGTERM: leaves the group at once
        stack.spawn("sink-salesforce", *sink[1:], module=sink[0])
    groups.wait_owned(worker_group, set())
    groups.wait_owned(sink_group, set())

    front = Front(p)
    run = ChaosRun(front.tag, p.contact_ids)

    def kill(process: str, moment: str) -> Kill:
        proc = stack.procs[process]
        proc.send_signal(signal.SIGKILL)  # no goodbye: no flush, no commit, no leave-group
        proc.wait(10)
        k = Kill(process, moment, time.monotonic() - started)
        run.kills.append(k)
        return k

    def restart_consumer(k: Kill, group: str, gone: set[str], *command: str) -> None:
        stack.spawn(k.process, *command[1:], module=command[0])
        groups.wait_owned(group, gone)
        k.back_after_s = time.monotonic() - started - k.at_s

    def more() -> None:
        front.send(1)

    def settle() -> None:
        front.wait_idle()
        assert wait_settled(stack.bootstrap, stack.worker_groups, 60, quiet_s=1.0), (
            describe_lag(stack.bootstrap, stack.worker_groups))

    try:
        # Receiver: killed with a webhook on the wire; Front keeps retrying meanwhile.
        front.send(10)
        if "receiver" in phases:
            assert front.emitter.in_flight.wait(30), "no webhook went out"
            k = kill("receiver", "webhook in flight")
            stack.spawn("receiver", "receiver")
            poll("the receiver to answer", _healthy(stack.ports.receiver), 30)
            k.back_after_s = time.monotonic() - started - k.at_s
        front.wait_idle()

        # Worker: killed right after it sent a command, before its next offset commit
        # (Faust commits every 1 s). A kill that happened to land just after a commit
        # replays nothing; that shows once the restarted worker has drained, and then the
        # moment is taken again.
        for attempt in range(1, 4 if "worker" in phases else 1):
            _, members = groups.members(worker_group)
            tail = Tail(stack.bootstrap, settings.topics.commands_salesforce)
            try:
                front.send(4)
                tail.next(60, feed=more)
                k = kill("worker", f"command sent, offset not committed (try {attempt})")
            finally:
                tail.close()
            restart_consumer(k, worker_group, set(members), "frontforce", "worker")
            settle()
            _collect(p, run, audits=False, tasks=False)
            if worker_replays(run):
                break

        # Sink: killed while its upsert is held before Salesforce wrote anything. Settled,
        # so the held call carries only messages sent from here on.
        if "worker" not in phases:
            settle()
        _, members = groups.members(sink_group)
        rule = org.add_fault(match=TASK_UPSERT, fault="latency", ms=HOLD_MS, times=1)
        first = front.requested
        front.send(3)
        poll("the sink's upsert to arrive", lambda: org.fault(rule)["matched"] >= 1, 60,
             feed=more)
        k = kill("sink-salesforce", "upsert held open, nothing written")
        run.sent_for_held_upsert = front.message_ids(first, front.requested)
        run.dropped_upserts = poll("the held upsert to be dropped",
                                   lambda: org.fault(rule)["dropped"], HOLD_MS / 1000 + 10)
        org.remove_fault(rule)
        restart_consumer(k, sink_group, set(members), *sink)

        # Sink: killed after Salesforce applied the upsert, before the answer (and so the
        # offset commit). The 1 s hold before serving lets us note the rows as they were.
        settle()
        _, members = groups.members(sink_group)
        hold = org.add_fault(match=TASK_UPSERT, fault="latency", ms=1000, times=1)
        late = org.add_fault(match=TASK_UPSERT, fault="latency", ms=HOLD_MS, phase="after",
                             times=1)
        front.send(3)
        poll("the sink's upsert to arrive", lambda: org.fault(hold)["matched"] >= 1, 60,
             feed=more)
        before = org.task_stamps()
        run.written_then_killed = poll(
            "the held upsert's rows", lambda: {m for m, s in org.task_stamps().items()
                                               if before.get(m) != s}, 10)
        k = kill("sink-salesforce", "upsert applied, answer held, offsets not committed")
        assert org.fault(late)["applied"] == 1
        org.remove_fault(hold)
        org.remove_fault(late)
        restart_consumer(k, sink_group, set(members), *sink)

        # Everyone is back: more traffic, then let every group drain.
        front.send(8)
        front.wait_idle()
        p.settle()
    finally:
        front.close()
    run.delivered, run.undelivered = dict(front.delivered), dict(front.undelivered)
    run.retried_posts = front.retried
    _collect(p, run)
    run.seconds = time.monotonic() - started
    return run


def _collect(p: Pipeline, run: ChaosRun, audits: bool = True, tasks: bool = True) -> None:
    """This run's records as they are now: Tasks in Salesforce, audit, commands, events."""
    prefix = f"evt_{run.tag}"
    if tasks:
        run.tasks = [t for t in Org(p).tasks()
                     if str(t.get("Front_Message_Id__c") or "").startswith(f"msg_{run.tag}")]
    if audits:
        run.audits = [a for a in p.topic("audit") if a["correlation_id"].startswith(prefix)]
    run.commands = [c for c in p.topic("commands.salesforce")
                    if c["origin"]["correlation_id"].startswith(prefix)]
    run.front_events = [e for e in p.topic("front.events") if e["event_id"].startswith(prefix)]


def worker_replays(run: ChaosRun) -> list[str]:
    """Event ids turned into more commands than there are stored Front events for them:
    the worker processed them again after a restart."""
    sent_per_event = Counter(c["origin"]["correlation_id"] for c in run.commands)
    stored_per_event = Counter(e["event_id"] for e in run.front_events)
    return sorted(e for e, n in sent_per_event.items() if n > stored_per_event[e])


def _healthy(port: int) -> Any:
    def probe() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
    return probe


@dataclass
class Replays:
    """The work the kills made the pipeline do twice, read from the audit and the topics."""

    reapplied: dict[str, list[str]]  # command id -> its write outcomes, in order (> 1)
    worker: list[str]  # event ids with more commands than stored Front events
    held_write: dict[str, list[str]]  # message id of the killed, applied upsert -> outcomes


def replays(run: ChaosRun) -> Replays:
    writes: dict[str, list[str]] = defaultdict(list)
    by_event: dict[str, list[str]] = defaultdict(list)
    for a in sorted(run.audits, key=lambda a: a["at"]):
        # A re-applied Task command is audited SKIPPED: it found its Task logged.
        if a["target"] == "salesforce" and a["outcome"] in ("CREATED", "UPDATED", "SKIPPED"):
            writes[a["command_id"]].append(a["outcome"])
            by_event[a["correlation_id"]].append(a["outcome"])
    return Replays(
        reapplied={c: o for c, o in writes.items() if len(o) > 1},
        worker=worker_replays(run),
        held_write={m: by_event.get(_event_id(m), []) for m in sorted(run.written_then_killed)})


def check(run: ChaosRun) -> list[str]:
    """Everything wrong with the end state and the replays, one line each; [] when the
    pipeline behaved as if nothing had died and the kills did make it work twice."""
    problems: list[str] = []
    if run.undelivered:
        problems.append(f"Front gave up on {len(run.undelivered)} webhooks: "
                        f"{sorted(run.undelivered)}")
    by_message: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in run.tasks:
        if not t.get("IsDeleted"):
            by_message[t["Front_Message_Id__c"]].append(t)
    missing = sorted(set(run.delivered) - set(by_message))
    if missing:
        problems.append(f"missing: {len(missing)} of {len(run.delivered)} delivered messages "
                        f"have no Task: {missing}")
    doubled = {m: len(ts) for m, ts in by_message.items() if len(ts) > 1}
    if doubled:
        problems.append(f"doubled: {len(doubled)} messages have more than one Task: {doubled}")
    wrong = sorted(m for m, ts in by_message.items() if m in run.delivered and any(
        t["WhoId"] != run.contact_ids[run.delivered[m]] for t in ts))
    if wrong:
        problems.append(f"wrong Contact: {wrong}")
    unasked = sorted(set(by_message) - set(run.delivered) - set(run.undelivered))
    if unasked:
        problems.append(f"Tasks for messages never sent: {unasked}")

    # The kills must have made the pipeline redo work, or they proved nothing.
    seen = replays(run)
    if not seen.reapplied:
        problems.append("no replay: no command was written to Salesforce more than once")
    not_again = {m: o for m, o in seen.held_write.items() if "SKIPPED" not in o}
    if not seen.held_write or not_again:
        problems.append("sink killed after its write, before its commit: the restarted sink "
                        f"did not re-apply {sorted(not_again) or 'anything'} "
                        f"(write outcomes per message: {not_again})")
    if not seen.worker:
        problems.append("worker killed after a send: no event was processed twice (every "
                        "command appears once per stored Front event)")
    if run.dropped_upserts != 1:
        problems.append("sink killed during a held upsert: the emulator dropped "
                        f"{run.dropped_upserts} requests, expected 1")
    if run.retried_posts == 0:
        problems.append("receiver killed mid-stream: no webhook had to be retried")
    return problems


def summary(run: ChaosRun) -> str:
    seen = replays(run)
    lines = [f"{len(run.delivered)} messages delivered, {len(run.tasks)} Tasks, "
             f"{run.seconds:.0f} s"]
    lines += [f"  kill {k.process:<16} at {k.at_s:5.1f} s ({k.moment}); back after "
              f"{k.back_after_s:.1f} s" for k in run.kills]
    lines += [f"  receiver: {run.retried_posts} webhook POSTs retried",
              f"  worker: {len(seen.worker)} events turned into commands twice",
              f"  sink, held upsert: {run.dropped_upserts} request dropped unwritten",
              f"  sink, applied upsert: {len(seen.held_write)} Tasks written then killed; "
              f"outcomes after restart {sorted({tuple(o) for o in seen.held_write.values()})}",
              f"  {len(seen.reapplied)} commands written more than once: "
              f"{sorted(Counter(tuple(o) for o in seen.reapplied.values()).items())}"]
    return "\n".join(lines)
