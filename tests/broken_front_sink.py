"""A Front sink broken on purpose: it ignores its ledger. Every command is treated as never
seen, so a replay of ``commands.front`` (a new consumer group) or a restart after a SIGKILL
inside a Front call posts its comments again. ``tests/test_sink_front.py`` runs the same
scenarios against this variant and requires its checks to report the doubled comments: a
guarantee test that cannot fail proves nothing.

    python -m tests.broken_front_sink --config FILE

runs the product's own ``frontforce sink front`` command with ``FrontSink`` replaced by the
variant, so everything but the ledger lookup is the product's.
"""

from __future__ import annotations

import sys
from typing import Any

import sinks.front
import sinks.front._sink
from sinks.front import FrontSink

BANNER = "broken front sink: the ledger is ignored (tests.broken_front_sink)"


class LedgerlessFrontSink(FrontSink):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        print(BANNER, file=sys.stderr, flush=True)

    def _triage(self, items: list[Any]) -> list[Any]:
        # The bug: what the ledger says (APPLIED, INTENT) is forgotten before every batch.
        self.ledger.entries.clear()
        return super()._triage(items)


def main(argv: list[str] | None = None) -> None:
    sinks.front._sink.FrontSink = LedgerlessFrontSink  # type: ignore[misc]
    sinks.front.FrontSink = LedgerlessFrontSink  # type: ignore[misc]
    from frontforce.cli import app

    app(["sink", "front", *(sys.argv[1:] if argv is None else argv)],
        prog_name="python -m tests.broken_front_sink")


if __name__ == "__main__":
    main()
