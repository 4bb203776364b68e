"""Two workers in one group; SIGKILL one mid-run and start nothing in its place: the other
takes over its partitions and its table state (restored from the changelogs), with every
use case on: lost 0, written twice 0, counted at the emulators.

    .venv/bin/python -m drills.scaleout_run --size 4000 [--at 0.5] [--seed N]

A second worker (its own state directory: another machine) joins the group as the people
start. Once both own partitions of the worker group and of the fast lane's group, and
``--at`` of the changes are made, one of the two (chosen by ``--seed``) is SIGKILLed: no
commit, no leave-group, so its partitions move only when its session times out (10 s).
The report says which partitions each owned, how long the survivor took to own them all,
and how many commands the killed worker had sent that the survivor sent again (the kill
mattered). ``tests/test_sigkill_every_use_case.py`` checks in ``make test`` that two workers
give the same result as one; this is the drill where one of them dies.
"""

from __future__ import annotations

import random
import signal
import sys
import time

from drills._harness import Drill, arguments, replays_at, run
from tests.allcases.kill import Group

Members = dict[str, dict[str, list[int]]]


def owners(members: Members) -> list[dict[str, list[int]]]:
    return sorted(members.values(), key=lambda m: sorted(m.items()))


def each_owns(n: int) -> object:
    def ok(members: Members) -> bool:
        return len(members) == n and all(any(parts for parts in m.values()) for m in members.values())
    return ok


def scale_out(drill: Drill) -> None:
    world = drill.world
    s = world.stack.settings()
    bootstrap = world.stack.bootstrap
    groups = {"worker": Group(bootstrap, s.worker.app_id), "fast lane": Group(bootstrap, s.fast_lane_group)}
    rng = random.Random(drill.args.seed)
    t = time.monotonic()
    with drill.lock:
        world.start_second_worker("worker2")
    before = {name: g.wait(f"two {name} members owning partitions", each_owns(2), timeout=240)  # type: ignore[arg-type]
              for name, g in groups.items()}
    drill.extra["two_workers_own_partitions_after_s"] = round(time.monotonic() - t, 1)
    drill.extra["partitions_before"] = {name: owners(m) for name, m in before.items()}
    drill.note("two workers own partitions", progress=round(drill.progress, 3))
    drill.wait_progress(drill.args.at)
    victim = rng.choice(["worker", "worker2"])
    with drill.lock:
        # Out of the supervisor's sight: nothing replaces it.
        proc = world.stack.procs.pop(victim)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    killed_ms = int(time.time() * 1000)
    at = time.monotonic()
    drill.note("worker SIGKILLed, not replaced", process=victim, pid=proc.pid,
               progress=round(drill.progress, 3))
    drill.extra["killed"] = victim
    drill.extra["killed_at_progress"] = round(drill.progress, 3)
    after = {name: g.wait(f"one {name} member owning every partition", each_owns(1), timeout=240)  # type: ignore[arg-type]
             for name, g in groups.items()}
    drill.extra["survivor_owns_all_after_s"] = round(time.monotonic() - at, 1)
    drill.extra["partitions_after"] = {name: owners(m) for name, m in after.items()}
    drill.extra["_killed_ms"] = [killed_ms]


def _replays(drill: Drill) -> list[str]:
    killed = drill.extra.pop("_killed_ms", [])
    drill.extra["commands_sent_again_after_the_kill"] = replays_at(drill.world, killed)
    if not killed:
        return ["no worker was killed"]
    return []


def main(argv: list[str] | None = None) -> int:
    ap = arguments("drills.scaleout_run", __doc__ or "", size=4000)
    ap.add_argument("--at", type=float, default=0.5,
                    help="share of the people's changes made when one worker is killed")
    args = ap.parse_args(argv)
    return run("scaleout_run", args, scale_out, after=_replays)


if __name__ == "__main__":
    sys.exit(main())
