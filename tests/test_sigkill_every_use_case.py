"""SIGKILL a worker during a run with every use case on, start a new one: nothing lost,
nothing written twice, counted at the emulators. Two workers in one group share the
partitions and give the same result as one. (The streams issue's requirement;
``tests/test_chaos.py`` covers messages to Tasks only.)

The run (``tests/allcases/scenario.py``): in Front, messages from known Contacts, from
strangers (each twice) and from unknown colleagues at a customer's domain; tags with each
kind of rule ("Renewal Risk": follow-up Task and Chatter note; "Upsell": the Opportunity's
stage, and its removal; "New Lead": a follow-up Task; a tag with no rule); archives and
reopens of conversations linked to Cases. In Salesforce, at the same time: Account
revenue and tier, Opportunity amounts, Case statuses. What it must leave, each exactly
once, is ``tests/allcases/once.py``.

The kill lands at a moment that matters, detected rather than guessed: right after the
worker sent the run's second Chatter note command (mid-run: a tag event with several
outputs, before Faust's next offset commit a second later). The replacement starts with no local state
(another machine), and the kill must have made it handle events again (a command sent
twice for the same event), else the moment is taken again. A worker whose commands are
not the same when it handles an event again (``tests/allcases/replay_unsafe_worker.py``)
must fail the same check: its replacement writes the note a second time.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from frontforce.localstack import LocalStack
from tests.allcases.echo import explain
from tests.allcases.kill import CommandTail, Group, is_feed_item, poll, replays
from tests.allcases.ledger import Mark, mark, writes_since
from tests.allcases.once import check
from tests.allcases.replay_unsafe_worker import BANNER
from tests.allcases.scenario import Driver, Run, describe
from tests.allcases.stack import World, all_cases_pipeline

FRONT, SALESFORCE, PACE_S = 40, 16, 0.12  # changes each run, and their spacing

results: dict[str, dict[str, str]] = {}  # run label -> check's result


@pytest.fixture(scope="module")
def world(infra: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with all_cases_pipeline(infra, tmp_path_factory.mktemp("sigkill"), accounts=8,
                            archive_cases=12, status_cases=3,
                            restart_stalled=True) as w:
        yield w


@dataclass
class Kills:
    at_s: list[float] = field(default_factory=list)  # since the run started
    back_after_s: list[float] = field(default_factory=list)
    replayed: dict[str, int] = field(default_factory=dict)  # "<event> <operation>" -> times sent


def run_with_kills(world: World, label: str, module: str = "frontforce") -> tuple[Run, Kills]:
    """The run, with the worker SIGKILLed right after it sent a Chatter note's command and
    replaced (no local state) until the replacement has handled events again (3 tries)."""
    stack = world.stack
    s = stack.settings()
    group = Group(stack.bootstrap, s.fast_lane_group)
    kills = Kills()
    killed_ms = 0
    tail = CommandTail(stack.bootstrap, stack.registry_url, s.topics.commands_salesforce)
    driver = Driver(world, label, FRONT, SALESFORCE, PACE_S).start()
    started = time.monotonic()
    commands = [s.topics.commands_salesforce, s.topics.commands_front]

    def replaced(gone: set[str]) -> Callable[[dict[str, dict[str, list[int]]]], bool]:
        return lambda members: not set(members) & gone and any(
            s.topics.front_events in owned for owned in members.values())

    def replayed() -> dict[str, int]:
        return replays(stack.bootstrap, stack.registry_url, commands, killed_ms)

    try:
        for attempt in range(3):
            gone = set(group.wait("the worker group", lambda m: len(m) == 1))
            for _ in range(2 if attempt == 0 else 1):  # mid-run: the second note, or the next
                tail.next_matching(is_feed_item, 60)
            proc = stack.procs["worker"]
            proc.send_signal(signal.SIGKILL)  # no goodbye: no commit, no leave-group
            proc.wait(10)
            killed_ms = int(time.time() * 1000)
            kills.at_s.append(time.monotonic() - started)
            world.replace_worker(module, fresh_state=True)
            group.wait("a new worker to own front.events", replaced(gone), timeout=90)
            kills.back_after_s.append(time.monotonic() - started - kills.at_s[-1])
            try:
                kills.replayed = poll("the replacement to handle events again", replayed, 20, every=1.0)
                break
            except AssertionError:
                continue  # the kill came after Faust's commit: take the moment again
    finally:
        tail.close()
    return driver.join(), kills


def settle_and_check(world: World, run: Run, before: Mark) -> tuple[dict[str, str], list[str]]:
    world.quiesce()
    writes = writes_since(world.emulators, before, world.emulators.integration_user())
    verdict = explain(world, writes, {e for a in world.accounts for e in a.contacts})
    result, problems = check(world, run, writes, verdict)
    print(json.dumps({"run": describe(run), "result": result,
                      "writes": writes.summary()["salesforce_writes_by_frontforce"]}, indent=1))
    return result, problems


def test_sigkill_a_worker_mid_run_with_every_use_case_on_loses_nothing_and_doubles_nothing(
        world: World) -> None:
    before = mark(world.emulators)
    run, kills = run_with_kills(world, "kill")
    print(f"\nkilled at {kills.at_s} s, replacement owned partitions after {kills.back_after_s} s; "
          f"{len(kills.replayed)} commands the killed worker had sent were sent again")
    assert kills.replayed, "no kill made the replacement handle an event again"
    result, problems = settle_and_check(world, run, before)
    assert not problems, "\n".join(problems)
    results["kill"] = result


def test_two_workers_in_one_group_share_the_partitions_and_give_the_same_result(
        world: World) -> None:
    s = world.stack.settings()
    front_events = s.topics.front_events
    world.start_second_worker()
    try:
        owners = Group(world.stack.bootstrap, s.fast_lane_group).wait(
            "two workers each owning partitions of front.events", lambda m: len(m) == 2 and all(
                owned.get(front_events) for owned in m.values()), timeout=120)
        print("\nfront.events partitions per worker:",
              sorted(sorted(owned[front_events]) for owned in owners.values()))
        before = mark(world.emulators)
        run = Driver(world, "two", FRONT, SALESFORCE, PACE_S).start().join()
        result, problems = settle_and_check(world, run, before)
        assert not problems, "\n".join(problems)
        assert world.stack.procs["worker2"].poll() is None, "the second worker died"
        if "kill" in results:
            assert result == results["kill"], (result, results["kill"])
    finally:
        world.stack.stop_process("worker2")


def test_the_check_catches_a_worker_whose_replayed_commands_are_new(world: World) -> None:
    """A test of the test: the same run and kill with a worker that keys its commands by
    its own process, not by the event; its replacement's replays reach the sinks as new
    commands, and the check must find a Chatter note written twice."""
    world.replace_worker("tests.allcases.replay_unsafe_worker")
    before = mark(world.emulators)
    run, kills = run_with_kills(world, "unsafe", module="tests.allcases.replay_unsafe_worker")
    assert kills.replayed, "no kill made the replacement handle an event again"
    _, problems = settle_and_check(world, run, before)
    print("\n".join(problems))
    assert BANNER.split(":")[0] in (world.stack.logs / "worker.log").read_text()
    assert any(p.startswith("Chatter notes:") and "2 Chatter notes" in p for p in problems), problems
