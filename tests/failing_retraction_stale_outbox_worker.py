"""``python -m tests.failing_retraction_stale_outbox_worker worker -c FILE``: the refused
retraction of ``tests.failing_retraction_worker``, in the worker as it was before a try again
started with an empty outbox (streams/_app.py ``Outbox.fresh``): the refused send stays in
it and fails every later try, so the agent never gets past the change. The variant that must
leave the change-routing agent stuck."""

from __future__ import annotations

from frontforce.cli import main
from streams import _app
from tests import failing_retraction_worker  # noqa: F401 - the refused retraction

_app.Outbox.fresh = lambda self: None  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
