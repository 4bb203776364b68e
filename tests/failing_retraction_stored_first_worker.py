"""``python -m tests.failing_retraction_stored_first_worker worker -c FILE``: the refused
retraction of ``tests.failing_retraction_worker``, in the worker as it was before a change
that takes keys back was sent before being stored (streams/_app.py ``takes_back``): the
record-keys table stores the change first, so the change handled again finds its own new
state and sends no retraction. The variant that must leave the old email matching."""

from __future__ import annotations

from frontforce.cli import main
from streams import _app
from tests import failing_retraction_worker  # noqa: F401 - the refused retraction

_app.takes_back = lambda held, state, entries: False

if __name__ == "__main__":
    main()
