"""``python -m tests.allcases.replay_unsafe_worker worker -c FILE``: a stream worker whose
commands are not the same when an event is handled again, the mistake
``tests/test_sigkill_every_use_case.py`` must catch.

Every command's ``idempotency_key`` and ``command_id`` get this process's start stamp, as
if they were made from the time of handling (``created_at``) rather than from the event:
a worker that replays what its SIGKILLed predecessor had not committed sends commands the
sinks have never seen, so the writes that have no natural key of their own (a Chatter
note, a Front comment, a resolution note: the sinks' ledgers are keyed by the command)
happen twice. Everything else is the product's ``frontforce worker``.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any

import streams._app as worker_app
from frontforce.cli import main

STAMP = f"{os.getpid()}.{time.time_ns()}"
BANNER = f"replay-unsafe worker: commands keyed by process {STAMP} (tests.allcases.replay_unsafe_worker)"


def _restamp(cmd: Any) -> Any:
    if isinstance(cmd, list):
        return [_restamp(c) for c in cmd]
    if isinstance(cmd, dict) and "idempotency_key" in cmd:
        return {**cmd, "idempotency_key": f"{cmd['idempotency_key']}@{STAMP}",
                "command_id": f"{cmd['command_id'][:16]}{abs(hash(STAMP)) % 10**16:016d}"}
    return cmd


def make_replays_new() -> list[str]:
    builders = [name for name, fn in vars(worker_app).items()
                if callable(fn) and name.endswith(("_command", "_commands"))
                and getattr(fn, "__module__", "").startswith("streams.")]
    if not builders:
        raise RuntimeError("streams._app imports no *_command builders any more; update "
                           "tests/allcases/replay_unsafe_worker.py")
    for name in builders:
        fn = getattr(worker_app, name)

        @functools.wraps(fn)
        def stamped(*args: Any, _fn: Any = fn, **kwargs: Any) -> Any:
            return _restamp(_fn(*args, **kwargs))

        setattr(worker_app, name, stamped)
    return builders


if __name__ == "__main__":
    patched = make_replays_new()
    print(f"{BANNER}; {', '.join(patched)}", file=sys.stderr, flush=True)
    main()
