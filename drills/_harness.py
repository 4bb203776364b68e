"""What the fault drills share: their own Kafka and registry (deploy/stack.sh on free ports,
a temporary state directory; ``nodes=3``: a KRaft cluster), the pipeline with every use case
on (``tests/allcases``), the people's changes on both sides, a fault played beside them,
a supervisor that restarts a pipeline process that exited (as systemd's ``Restart=always``
or Kubernetes would, counted and reported), and the count at the emulators: every effect
exactly once (``tests/allcases/once.py``), no echo, no write without a cause
(``tests/allcases/echo.py``).

A drill prints one JSON report and exits 1 when anything was lost, written twice, echoed
or wrong, 0 otherwise. ``Drill.progress`` (changes made / changes planned) lets a fault pick
its moment in the run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from frontforce.demo import read_topic
from frontforce.lag import group_lag
from frontforce.localstack import LocalStack, Ports, free_port
from tests.allcases.echo import explain
from tests.allcases.ledger import mark, writes_since
from tests.allcases.once import check
from tests.allcases.scenario import FRONT_PATTERN, Driver, describe
from tests.allcases.stack import World, all_cases_pipeline

# The pipeline's processes and how they are started again (LocalStack.start_pipeline).
PROCESSES: dict[str, tuple[str, ...]] = {
    "worker": ("worker",),
    "sink-salesforce": ("sink", "salesforce"),
    "sink-front": ("sink", "front"),
    "source-salesforce": ("source", "salesforce"),
    "receiver": ("receiver",),
}


def arguments(prog: str, doc: str, size: int, accounts: int = 40) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"python -m {prog}", description=doc.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=size,
                    help="changes made by people, half in Front, half in Salesforce")
    ap.add_argument("--accounts", type=int, default=accounts, help="Accounts in the world")
    ap.add_argument("--pace", type=float, default=0.0,
                    help="seconds between two changes of one side (0: as fast as they go)")
    ap.add_argument("--seed", type=int, default=None, help="random seed of the fault's moments")
    ap.add_argument("--keep", action="store_true", help="keep the state directory (logs)")
    ap.add_argument("--no-fault", action="store_true",
                    help="the same run without the fault: a baseline for the counts")
    return ap


@dataclass
class Drill:
    """One drill's run: its world, the people's driver, the supervisor, the report."""

    name: str
    args: argparse.Namespace
    world: World
    driver: Driver
    started: float = field(default_factory=time.monotonic)
    lock: threading.RLock = field(default_factory=threading.RLock)
    restarts: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # what the fault did, when
    extra: dict[str, Any] = field(default_factory=dict)  # the fault's own counts
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def planned(self) -> int:
        return int(self.args.size)

    @property
    def progress(self) -> float:
        run = self.driver.run
        return (run.n_front + run.n_sf) / max(1, self.planned)

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 1)

    def note(self, what: str, **more: Any) -> None:
        entry = {"at_s": self.elapsed(), "what": what, **more}
        self.events.append(entry)
        print(f"[{self.name}] {json.dumps(entry, default=str)}", flush=True)

    def wait_progress(self, share: float, timeout_s: float = 3600) -> None:
        deadline = time.monotonic() + timeout_s
        while self.progress < share and self.driver.running and time.monotonic() < deadline:
            time.sleep(0.2)

    def lag(self, group: str, topics: list[str]) -> int | None:
        try:
            return group_lag(self.world.stack.bootstrap, group, topics)
        except Exception:  # noqa: BLE001 - a probe during a fault may fail; reported as None
            return None

    # -- supervisor ----------------------------------------------------------------------
    def supervise(self) -> None:
        """Start again a pipeline process that exited (systemd ``Restart=always``)."""
        stack = self.world.stack
        while not self.stopping.wait(1.0):
            with self.lock:
                # A second worker (the scale-out drill) is another machine's: restarted
                # the same way, with its own config and state directory.
                for name in [*PROCESSES, *self.world.extra_workers]:
                    proc = stack.procs.get(name)
                    if proc is None or proc.poll() is None:
                        continue
                    self.note("process exited; restarted", process=name, rc=proc.returncode)
                    self.restarts.append({"process": name, "rc": proc.returncode, "at_s": self.elapsed()})
                    if name in self.world.extra_workers:
                        self.world.start_second_worker(name, module=self.world.worker_module)
                        continue
                    module = self.world.worker_module if name == "worker" else "frontforce"
                    stack.spawn(name, *PROCESSES[name], module=module)


def drain_front_webhooks(world: World, timeout_s: float) -> float:
    """Until Front's dispatcher has delivered every webhook (a big run queues thousands: each
    one waits for the receiver's Kafka ack), asked 50 s at a time. -> seconds it took."""
    started = time.monotonic()
    with httpx.Client(base_url=world.stack.front_url, timeout=90) as front:
        while True:
            r = front.post("/__admin/webhooks/drain", json={"timeout": 50})
            r.raise_for_status()
            if r.json()["drained"]:
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"Front's webhooks not delivered after {timeout_s:.0f} s")


def replays_at(world: World, kill_ms: list[int]) -> list[int]:
    """For each kill: commands sent before it and sent again after it for the same event
    (same correlation id, same operation): the work that kill made a worker redo."""
    s = world.stack.settings()
    sent: dict[str, list[float]] = {}
    for topic in (s.topics.commands_salesforce, s.topics.commands_front):
        for c in read_topic(world.stack.bootstrap, world.stack.registry_url, topic):
            made = c.get("created_at")
            at = made.timestamp() * 1000 if isinstance(made, datetime) else float(made or 0)
            op = json.dumps(c["operation"], sort_keys=True, default=str)
            sent.setdefault(f"{c['origin']['correlation_id']} {op}", []).append(at)
    return [sum(1 for ats in sent.values() if min(ats) < k < max(ats)) for k in kill_ms]


_COUNT = re.compile(r"(\d+) (?:Tasks|Leads|Chatter notes|follow-up Tasks|resolution notes|times)\b")
_SAID = re.compile(r"said (\d+) times, asked (\d+)")


def classify(problems: list[str]) -> dict[str, list[str]]:
    """Each problem the check found as lost (an effect missing), doubled (written more than
    once), echo (a write caused by frontforce's own write), or wrong (anything else)."""
    out: dict[str, list[str]] = {"lost": [], "doubled": [], "echo": [], "wrong": []}
    for p in problems:
        if "ECHO " in p:
            out["echo"].append(p)
            continue
        if p.startswith("Front account context:"):
            out["lost"].append(p)  # a Salesforce change Front never shows
            continue
        said = _SAID.search(p)
        counts = [int(n) for n in _COUNT.findall(p)]
        if said:
            kind = "lost" if int(said.group(1)) < int(said.group(2)) else "doubled"
        elif any(n >= 2 for n in counts):
            kind = "doubled"
        elif counts and 0 in counts:
            kind = "lost"
        else:
            kind = "wrong"
        out[kind].append(p)
    return out


def run(name: str, args: argparse.Namespace, fault: Callable[[Drill], None], *, nodes: int = 1,
        quiesce_s: float = 3600, after: Callable[[Drill], list[str]] | None = None) -> int:
    """Start everything, make ``args.size`` changes with ``fault`` played on a thread beside
    them, wait until the pipeline is quiet, count, print, stop everything. ``after`` (the
    pipeline quiet) adds the fault's own counts and returns what it requires and did not
    see (the drill fails then). -> exit code."""
    t0 = time.monotonic()
    state = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    extra = tuple(free_port() for _ in range(nodes - 1))
    infra = LocalStack(state_dir=state / "infra", stack_state=state / "infra" / "stack",
                       ports=Ports(kafka=free_port(), controller=free_port(), registry=free_port()),
                       kafka_extra=extra, controller_extra=tuple(free_port() for _ in extra),
                       persist=False)
    front = args.size // 2
    salesforce = args.size - front
    archives = front * FRONT_PATTERN.count("AR") // len(FRONT_PATTERN) + 1
    code = 2
    infra.start_infra()
    try:
        with all_cases_pipeline(infra, state / "pipeline", accounts=args.accounts,
                                archive_cases=archives, status_cases=10) as world:
            ready = time.monotonic()
            before = mark(world.emulators)
            drill = Drill(name, args, world, Driver(world, name, front, salesforce, args.pace))
            supervisor = threading.Thread(target=drill.supervise, name="supervisor", daemon=True)
            failures: list[str] = []

            def play() -> None:
                if args.no_fault:
                    drill.note("no fault (--no-fault): a baseline run")
                    return
                try:
                    fault(drill)
                except Exception as exc:  # noqa: BLE001 - reported, fails the drill
                    failures.append(f"the fault itself failed: {type(exc).__name__}: {exc}")
                    drill.note("fault failed", error=str(exc))

            drill.started = time.monotonic()
            drill.driver.start()
            supervisor.start()
            player = threading.Thread(target=play, name="fault", daemon=True)
            player.start()
            changes = drill.driver.join(timeout_s=6 * 3600)
            drill.note("people done", changes=describe(changes))
            player.join()
            drill.note("fault done; waiting until Front's webhooks are delivered")
            drained = drain_front_webhooks(world, quiesce_s)
            drill.note("webhooks delivered; waiting until the pipeline is quiet", took_s=round(drained))
            quiet = world.quiesce(timeout_s=quiesce_s)
            drill.stopping.set()
            supervisor.join()
            if after is not None and not args.no_fault:
                failures.extend(after(drill))
            writes = writes_since(world.emulators, before, world.emulators.integration_user())
            verdict = explain(world, writes, {e for a in world.accounts for e in a.contacts})
            result, problems = check(world, changes, writes, verdict)
            kinds = classify(problems)
            lost, doubled = len(kinds["lost"]), len(kinds["doubled"])
            effects = [tuple(map(int, v.split("/"))) for v in result.values() if "/" in v]
            done = time.monotonic()
            report = {
                "drill": name,
                "command": "python -m drills." + name + " " + " ".join(sys.argv[1:]),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "size": args.size,
                "changes_by_people": describe(changes),
                "effects_expected": sum(e for _, e in effects),
                "effects_exactly_once": sum(ok for ok, _ in effects),
                "lost": lost, "written_twice": doubled, "echo": len(kinds["echo"]),
                "wrong": len(kinds["wrong"]) + len(verdict.unexplained),
                "result": result,
                "writes": writes.summary(),
                "verdict": verdict.counts(),
                "fault": drill.extra,
                "fault_events": drill.events,
                "restarts_by_supervisor": drill.restarts,
                "seconds": {"setup": round(ready - t0), "changes": round(changes.seconds, 1),
                            "until_quiet": round(quiet), "total": round(done - t0)},
            }
            print(json.dumps(report, indent=1, default=str), flush=True)
            for kind, items in kinds.items():
                for p in items[:30]:
                    print(f"{kind.upper()}: {p}")
            for f in failures:
                print(f"FAILED: {f}")
            code = 1 if problems or failures else 0
            print(f"[{name}] lost {lost}, written twice {doubled}, echo {len(kinds['echo'])}, "
                  f"other problems {len(kinds['wrong'])}: {'OK' if code == 0 else 'FAIL'}", flush=True)
    finally:
        infra.stop_infra()
        if args.keep or code != 0:
            print(f"state kept in {state}", file=sys.stderr)
        else:
            shutil.rmtree(state, ignore_errors=True)
    return code
