"""Restart the Kafka broker mid-run (stop its JVM, start it again on the same state) with
every use case on: lost 0, written twice 0, counted at the emulators.

    .venv/bin/python -m drills.broker_restart --size 4000 [--down 20] [--kill] [--at 0.33]

The people make ``--size`` changes, ``--pace`` seconds apart on each side (the default
spreads them over a few minutes, so that the pipeline works while the broker is away).
Once ``--at`` of them are made, the broker is stopped (``deploy/stack.sh stop kafka``:
SIGTERM, a clean shutdown; ``--kill``: SIGKILL, the log recovered at start), left down
``--down`` seconds while the people go on (Front keeps sending webhooks, which the receiver
cannot acknowledge without Kafka; Salesforce keeps emitting change events), then started
again (``deploy/stack.sh start``, same data directory). The registry stays up. A pipeline
process that exits (the worker exits 75 when it cannot make progress) is started again
by the drill's supervisor, as systemd or Kubernetes would, and the report lists each.

Reported beside the count: Front's webhook deliveries refused for good (the emulator's
dispatcher retries a few times, as Front does, then gives up: those events reach Kafka
only through the receiver's gap-fill from the Events API), and the lag of the consumer
groups just before the restart and at its end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from drills._harness import Drill, arguments, run
from frontforce.localstack import STACK_SH


def stack_sh(drill: Drill, *args: str) -> None:
    subprocess.run(["bash", str(STACK_SH), *args], env=drill.world.stack.env(), check=True)


def stop_broker(drill: Drill, node: int, kill: bool) -> None:
    """Stop broker ``node`` (1: the single node's ``kafka``): SIGTERM through
    ``deploy/stack.sh stop kafkaN``, or SIGKILL by its pid file."""
    if not kill:
        stack_sh(drill, "stop", f"kafka{node}")
        return
    stack = drill.world.stack
    state = stack.stack_state or stack.state_dir / "stack"
    role = "kafka" if node == 1 else f"kafka{node}"
    pid = int((state / "run" / f"{role}.pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{role} pid {pid} still there 30 s after SIGKILL")


def failed_webhooks(drill: Drill) -> int:
    r = drill.world.emulators.front.get("/__admin/webhooks")
    r.raise_for_status()
    return sum(1 for d in r.json()["deliveries"] if not 200 <= int(d["status"] or 0) < 300)


def lag(drill: Drill) -> dict[str, int | None]:
    return {g: drill.lag(g, topics) for g, topics in drill.world.groups().items()}


def restart(drill: Drill) -> None:
    args = drill.args
    drill.wait_progress(args.at)
    drill.extra["lag_before_stop"] = lag(drill)
    drill.extra["webhooks_refused_for_good_before"] = failed_webhooks(drill)
    drill.note("stopping the broker", how="SIGKILL" if args.kill else "SIGTERM",
               progress=round(drill.progress, 3))
    t = time.monotonic()
    stop_broker(drill, 1, args.kill)
    drill.note("broker stopped", took_s=round(time.monotonic() - t, 1))
    time.sleep(args.down)
    t = time.monotonic()
    stack_sh(drill, "start")
    drill.note("broker started again", took_s=round(time.monotonic() - t, 1),
               progress=round(drill.progress, 3))
    drill.extra["broker_down_s"] = round(time.monotonic() - t + args.down, 1)
    drill.extra["lag_after_start"] = lag(drill)


def after(drill: Drill) -> list[str]:
    drill.extra["webhooks_refused_for_good"] = failed_webhooks(drill)
    return []


def main(argv: list[str] | None = None) -> int:
    ap = arguments("drills.broker_restart", __doc__ or "", size=4000)
    ap.set_defaults(pace=0.06)
    ap.add_argument("--down", type=float, default=20.0, help="seconds the broker stays down")
    ap.add_argument("--kill", action="store_true", help="SIGKILL the broker (else SIGTERM)")
    ap.add_argument("--at", type=float, default=0.33, help="share of the changes made before the stop")
    return run("broker_restart", ap.parse_args(argv), restart, after=after)


if __name__ == "__main__":
    sys.exit(main())
