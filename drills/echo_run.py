"""The echo drill at full size: a bidirectional run with every use case on, 1,000 changes
made by people in Salesforce and 1,000 in Front, then every write frontforce made counted
at the emulators and explained by its cause. Prints the counts; exits 1 when any write is
an echo or has no cause (definitions: ``tests/test_echo.py``, ``tests/allcases/echo.py``).

    .venv/bin/python -m drills.echo_run [--changes 1000] [--accounts 50]
        [--worker tests.allcases.loopless_worker]   # the broken worker: must exit 1

Starts its own Kafka and registry (deploy/stack.sh, free ports, a temporary state
directory), the emulators and the pipeline, and stops them all at the end. Too slow for
``make test`` (tests/test_echo.py runs the same at 60 changes each way).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from frontforce.localstack import LocalStack, Ports, free_port
from tests.allcases.echo import explain
from tests.allcases.ledger import mark, writes_since
from tests.allcases.scenario import FRONT_PATTERN, describe, drive
from tests.allcases.stack import all_cases_pipeline


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m drills.echo_run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--changes", type=int, default=1000, help="changes made by people, each way")
    ap.add_argument("--accounts", type=int, default=50)
    ap.add_argument("--worker", default="frontforce", help="module of the worker's entry point")
    ap.add_argument("--keep", action="store_true", help="keep the state directory (logs)")
    args = ap.parse_args(argv)
    started = time.monotonic()
    state = Path(tempfile.mkdtemp(prefix="echo-drill-"))
    infra = LocalStack(state_dir=state / "infra", stack_state=state / "infra" / "stack",
                       ports=Ports(kafka=free_port(), controller=free_port(), registry=free_port()),
                       persist=False)
    archives = args.changes * FRONT_PATTERN.count("AR") // len(FRONT_PATTERN) + 1
    infra.start_infra()
    try:
        with all_cases_pipeline(infra, state / "pipeline", accounts=args.accounts,
                                archive_cases=archives, status_cases=10,
                                worker_module=args.worker) as world:
            ready = time.monotonic()
            before = mark(world.emulators)
            run = drive(world, "drill", front=args.changes, salesforce=args.changes)
            quiet = world.quiesce(timeout_s=1800)
            writes = writes_since(world.emulators, before, world.emulators.integration_user())
            verdict = explain(world, writes, {e for a in world.accounts for e in a.contacts})
            done = time.monotonic()
            report = {
                "changes_by_people": describe(run),
                **writes.summary(),
                "verdict": verdict.counts(),
                "seconds": {"setup": round(ready - started), "changes": round(run.seconds, 1),
                            "until_quiet": round(quiet), "run": round(done - ready),
                            "total": round(done - started)},
                "worker": args.worker,
            }
            print(json.dumps(report, indent=1))
            for w, cause in verdict.echoes:
                print(f"ECHO {w} <- {cause}")
            for w in verdict.unexplained:
                print(f"NO CAUSE {w}")
            for w in verdict.reflections[:20]:
                print(f"mirror of frontforce's own write: {w}")
            return 1 if verdict.echoes or verdict.unexplained else 0
    finally:
        infra.stop_infra()
        if args.keep:
            print(f"state kept in {state}", file=sys.stderr)
        else:
            shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
