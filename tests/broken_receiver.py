"""``python -m tests.broken_receiver receiver -c FILE``: the webhook receiver with the mistake
its refusal test must catch: webhooks it answered 503 are never read back from the Events
API (``RefusalRecovery.stored`` does nothing), so what Front gave up on stays lost.

Guards test_front_backfill's refused-webhooks test against proving nothing: run against this
variant, it must find events missing.
"""

from __future__ import annotations

from frontforce.cli import main
from sources.front import _gapfill


def _never(self: _gapfill.RefusalRecovery) -> None:
    return None


_gapfill.RefusalRecovery.stored = _never  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
