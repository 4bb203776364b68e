"""``python -m tests.allcases.loopless_worker worker -c FILE``: the stream worker with its
loop guard off, the mistake ``tests/test_echo.py`` must catch.

The guard is two checks in ``streams/_app.py``: a Front tag, untag, assignment or comment
made through the API (``source._meta.type`` ``api``/``oauth_client``: the Front sink's own
writes coming back as events) is dropped (``OUR_WRITES``), and a Case status change whose
``changeOrigin`` names frontforce's client id (its own CloseCase coming back through Change
Data Capture) makes no comment (``is_our_change``). Here both let everything through;
everything else is the product's ``frontforce worker``.
"""

from __future__ import annotations

import sys

import streams._app as worker_app
from frontforce.cli import main

BANNER = "loopless worker: loop guard OFF (tests.allcases.loopless_worker)"


def disable_loop_guard() -> None:
    missing = [n for n in ("OUR_WRITES", "is_our_change") if not hasattr(worker_app, n)]
    if missing:
        raise RuntimeError(f"streams._app has no {missing}: the loop guard moved; update "
                           "tests/allcases/loopless_worker.py")
    worker_app.OUR_WRITES = frozenset()  # type: ignore[attr-defined]
    worker_app.is_our_change = lambda *args: False  # type: ignore[attr-defined]


if __name__ == "__main__":
    disable_loop_guard()
    print(BANNER, file=sys.stderr, flush=True)
    main()
