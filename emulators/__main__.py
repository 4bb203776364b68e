"""Both emulators from one command:

    python -m emulators --state-dir .run/emulators [--persist]
        [--salesforce-port 8443] [--salesforce-pubsub-port 7443] [--front-port 8095]

Each runs as its own process (exactly as ``python -m emulators.salesforce`` /
``python -m emulators.front`` would), state in ``STATE_DIR/salesforce`` and
``STATE_DIR/front``; their ready lines are passed through; Ctrl-C or SIGTERM stops both
(with ``--persist`` each saves its state on the way out).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emulators",
                                 description="Run the Salesforce and Front emulators together.")
    ap.add_argument("--state-dir", type=Path, required=True)
    ap.add_argument("--persist", action="store_true", help="keep state across restarts")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--salesforce-port", type=int, default=8443)
    ap.add_argument("--salesforce-pubsub-port", type=int, default=7443,
                    help="Salesforce Pub/Sub API (gRPC) port; 0 picks a free one")
    ap.add_argument("--front-port", type=int, default=8095)
    args = ap.parse_args(argv)
    persist = ["--persist"] if args.persist else []
    commands = {
        "salesforce": [sys.executable, "-m", "emulators.salesforce", "--host", args.host,
                       "--port", str(args.salesforce_port),
                       "--pubsub-port", str(args.salesforce_pubsub_port),
                       "--state-dir", str(args.state_dir / "salesforce"), *persist],
        "front": [sys.executable, "-m", "emulators.front", "--host", args.host,
                  "--port", str(args.front_port),
                  "--state-dir", str(args.state_dir / "front"), *persist],
    }
    procs = {name: subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
             for name, cmd in commands.items()}

    def relay(proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()

    for p in procs.values():
        threading.Thread(target=relay, args=(p,), daemon=True).start()

    def stop(signum: int, frame: Any) -> None:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # If one dies, stop the other: half an environment is worse than none.
    while all(p.poll() is None for p in procs.values()):
        try:
            next(iter(procs.values())).wait(0.5)
        except subprocess.TimeoutExpired:
            pass
    stop(0, None)
    codes = [p.wait(15) for p in procs.values()]
    return 0 if all(c in (0, -signal.SIGTERM) for c in codes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
