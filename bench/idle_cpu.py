"""CPU each process of a running deployment uses while nothing happens.

    .venv/bin/python bench/idle_cpu.py --settle 40 --duration 30

Starts its own stack (free ports, throw-away state): Kafka, the registry, both emulators,
then ``setup`` and the whole pipeline (worker, Salesforce sink, Salesforce change
subscription, Front sink, receiver), as ``make demo`` does. After ``--settle`` seconds
(start-up, first assignments) it reads from /proc the CPU seconds of each process (children
with their parent; the JVMs by the pid files and marks of ``deploy/stack.sh``, as
``frontforce up`` finds them) over ``--duration`` seconds with no traffic, and prints
cores used per process as one JSON line.

A process that spins while idle takes CPU from everything else on a small machine: on the
2-core machine of BENCHMARKS.md that is CPU the pipeline does not have under load either.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from frontforce.localstack import LocalStack, Ports, free_port  # noqa: E402
from frontforce.ops.up import _stack_pids  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from webhook_ingest import cpu_s, descendants  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settle", type=float, default=40.0, help="seconds after start-up before measuring")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds measured")
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="ff-bench-idle-"))
    stack = LocalStack(state_dir=state, ports=Ports(
        kafka=free_port(), controller=free_port(), registry=free_port(),
        salesforce=free_port(), receiver=free_port()), persist=False)
    try:
        stack.start_infra()
        stack.start_salesforce()
        stack.start_front()
        stack.write_config()
        stack.frontforce("setup")
        stack.start_pipeline()
        time.sleep(args.settle)
        groups = {name: descendants(p.pid) for name, p in stack.procs.items()}
        groups.update({role: [pid] for role, pid in _stack_pids(stack.state_dir).items()})
        before = {name: cpu_s(pids) for name, pids in groups.items()}
        time.sleep(args.duration)
        cores = {name: round((cpu_s(pids) - before[name]) / args.duration, 3)
                 for name, pids in sorted(groups.items())}
    finally:
        stack.stop_all()
    print(json.dumps({"at": datetime.now(UTC).isoformat(timespec="seconds"),
                      "settle_s": args.settle, "duration_s": args.duration,
                      "cores_idle": cores, "total": round(sum(cores.values()), 3)}))


if __name__ == "__main__":
    main()
