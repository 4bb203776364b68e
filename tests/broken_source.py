"""``python -m tests.broken_source source salesforce -c FILE``: the Salesforce source with the
mistake its kill test must catch: the cursor is written when a batch arrives, before the
changes it covers are on Kafka (then it dawdles, so a kill lands in between).

Guards test_source_salesforce's SIGKILL test against proving nothing: run against this
variant, its checker must find changes missing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from frontforce.cli import main
from sources.salesforce import _source
from sources.salesforce._cursor import Cursor

_publish = _source.TopicSource._publish_events
DAWDLE_S = 2.0


def _cursor_first(self: _source.TopicSource, events: Iterable[Any], covered: int) -> int:
    events = list(events)
    if events and self.cursor is not None:
        self._write_cursor(Cursor(self.key, bytes(events[-1].replay_id), covered))
        time.sleep(DAWDLE_S)
    return _publish(self, events, covered)


_source.TopicSource._publish_events = _cursor_first  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
