"""A three-broker KRaft cluster on loopback (replication factor 3, min.insync.replicas=2),
started by ``deploy/stack.sh`` (``KAFKA_NODES=3``); one broker stopped mid-run with every
use case on: lost 0, written twice 0, and the pipeline keeps going with no configuration
change (its config differs from the single node's only by the bootstrap list and
``kafka.replication_factor: 3``).

    .venv/bin/python -m drills.cluster_run --size 4000 [--at 0.33] [--kill] [--node N]

The broker stopped is, by default, the group coordinator of the worker's consumer group
(the one whose loss moves the most: the group's coordinator and the leaders of its
partitions), else ``--node``. It stays down for the rest of the run and the drain: two
brokers of three are enough for every write (acks=all, min.insync.replicas=2). The drill
fails when a pipeline process had to be started again (it did not keep going), besides a
loss, a double write or an echo.
"""

from __future__ import annotations

import sys
import time

from confluent_kafka.admin import AdminClient

from drills._harness import Drill, arguments, run
from drills.broker_restart import stop_broker


def coordinator(drill: Drill) -> int | None:
    s = drill.world.stack.settings()
    admin = AdminClient({"bootstrap.servers": drill.world.stack.bootstrap})
    try:
        desc = admin.describe_consumer_groups([s.worker.app_id], request_timeout=10)[
            s.worker.app_id].result(timeout=15)
        return int(desc.coordinator.id)
    except Exception:  # noqa: BLE001 - fall back to --node
        return None


def replicas(drill: Drill) -> dict[str, list[int]]:
    """Replication factor and in-sync replicas of the pipeline's topics: topic -> [rf, min isr seen]."""
    prefix = drill.world.stack.topic_prefix
    md = AdminClient({"bootstrap.servers": drill.world.stack.bootstrap}).list_topics(timeout=15)
    out = {}
    for name, t in md.topics.items():
        if name.startswith(prefix) or name.startswith(drill.world.stack.app_id):
            parts = list(t.partitions.values())
            out[name] = [min(len(p.replicas) for p in parts), min(len(p.isrs) for p in parts)]
    return out


def stop_one(drill: Drill) -> None:
    args = drill.args
    drill.wait_progress(args.at)
    node = args.node or coordinator(drill) or 1
    drill.extra["replicas_before"] = replicas(drill)
    drill.note("stopping one broker of three", node=node,
               how="SIGKILL" if args.kill else "SIGTERM", progress=round(drill.progress, 3))
    t = time.monotonic()
    stop_broker(drill, node, args.kill)
    drill.note("broker stopped", took_s=round(time.monotonic() - t, 1))
    drill.extra["stopped_node"] = node
    running = AdminClient({"bootstrap.servers": drill.world.stack.bootstrap}).list_topics(timeout=15).brokers
    if node in running or len(running) != 2:
        raise RuntimeError(f"after stopping node {node}, the brokers up are {sorted(running)}")


def after(drill: Drill) -> list[str]:
    drill.extra["replicas_at_end"] = replicas(drill)
    rf = {v[0] for v in drill.extra.get("replicas_before", {}).values()}
    problems = [f"{len(drill.restarts)} pipeline processes had to be started again: "
                f"{drill.restarts}"] if drill.restarts else []
    if rf != {3}:
        problems.append(f"replication factors of the pipeline's topics: {sorted(rf)}, not 3")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = arguments("drills.cluster_run", __doc__ or "", size=4000)
    ap.set_defaults(pace=0.06)
    ap.add_argument("--at", type=float, default=0.33, help="share of the changes made before the stop")
    ap.add_argument("--kill", action="store_true", help="SIGKILL the broker (else SIGTERM)")
    ap.add_argument("--node", type=int, default=0, help="node to stop (default: the worker group's coordinator)")
    return run("cluster_run", ap.parse_args(argv), stop_one, nodes=3, after=after)


if __name__ == "__main__":
    sys.exit(main())
