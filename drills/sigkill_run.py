"""SIGKILL the stream worker at random moments, at least five times, during a run with every
use case on, starting a new one each time: lost 0, written twice 0, counted at the emulators.

    .venv/bin/python -m drills.sigkill_run --size 20000 [--kills 5] [--seed N]

``--size`` changes made by people (half in Front: messages, tags, untags, archives,
reopens; half in Salesforce: revenue, tier, amounts, Case statuses, titles), with every use
case on (``tests/allcases``). The people go as fast as the emulators let them, so the
pipeline runs behind them and drains a backlog after them. The kills land at random
moments of that run (people making changes, or the worker group still behind): each
after a random pause of ``--kill-every`` seconds (uniform between the two bounds), a
SIGKILL of the worker (no commit, no leave-group) and a new one started at once; every
second replacement starts with no local state (another machine), the others keep the
RocksDB state of the killed one (the same machine restarted). Kills still due once the
pipeline has caught up land then (the report says which). The report says, for each
kill, how many commands the killed worker had sent that a worker sent again (the kill
mattered), and the count at the emulators. ``tests/test_sigkill_every_use_case.py`` runs one targeted kill at
56 changes in ``make test``; this is the long, random version.
"""

from __future__ import annotations

import random
import signal
import sys
import time

from drills._harness import Drill, arguments, replays_at, run
from tests.allcases.kill import Group


def kill_worker(drill: Drill, fresh_state: bool) -> int:
    """SIGKILL the worker, start another; -> the kill's wall-clock time in ms."""
    world = drill.world
    with drill.lock:
        proc = world.stack.procs["worker"]
        pid = proc.pid
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_ms = int(time.time() * 1000)
        world.stack.procs.pop("worker")
        world.replace_worker(world.worker_module, fresh_state=fresh_state)
    drill.note("worker SIGKILLed, replacement started", pid=pid, fresh_state=fresh_state,
               progress=round(drill.progress, 3))
    return killed_ms


def kills(drill: Drill) -> None:
    n = int(drill.args.kills)
    rng = random.Random(drill.args.seed)
    s = drill.world.stack.settings()
    group = Group(drill.world.stack.bootstrap, s.worker.app_id)
    killed_ms: list[int] = []
    back_after: list[float | None] = []
    low, high = (float(x) for x in str(drill.args.kill_every).split(":"))
    behind: list[bool] = []
    groups = drill.world.groups()
    for i in range(n):
        time.sleep(rng.uniform(low, high))
        lag = sum(drill.lag(g, topics) or 0 for g, topics in groups.items())
        behind.append(drill.driver.running or lag > 0)
        at = time.monotonic()
        killed_ms.append(kill_worker(drill, fresh_state=i % 2 == 1))
        drill.note("  (people still making changes)" if drill.driver.running
                   else f"  (pipeline {lag} records behind)")
        try:
            group.wait("a worker in the group again", lambda m: bool(m), timeout=120)
            back_after.append(round(time.monotonic() - at, 1))
        except AssertionError:
            back_after.append(None)
    drill.extra["kills"] = len(killed_ms)
    drill.extra["kills_while_people_or_pipeline_busy"] = sum(behind)
    drill.extra["group_stable_again_after_s"] = back_after
    drill.extra["_killed_ms"] = killed_ms


def main(argv: list[str] | None = None) -> int:
    ap = arguments("drills.sigkill_run", __doc__ or "", size=20000)
    ap.add_argument("--kills", type=int, default=5, help="SIGKILLs of the worker (at least)")
    ap.add_argument("--kill-every", default="20:60", help="LOW:HIGH seconds between two kills")
    args = ap.parse_args(argv)

    def fault(drill: Drill) -> None:
        kills(drill)

    return run("sigkill_run", args, fault, after=_replays)


def _replays(drill: Drill) -> list[str]:
    killed = drill.extra.pop("_killed_ms", [])
    again = replays_at(drill.world, killed)
    drill.extra["commands_sent_again_per_kill"] = again
    if len(killed) < drill.args.kills:
        return [f"{len(killed)} kills, not {drill.args.kills}"]
    return []


if __name__ == "__main__":
    sys.exit(main())
