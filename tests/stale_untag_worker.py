"""``python -m tests.stale_untag_worker worker -c FILE``: the stream worker as it was before a
stage tag's removal was compared with the add it undoes (streams/_app.py
``removal_undoes``): any removal undoes the add held, even one older than it. The variant
that must lose the revert of a tag's real removal when an earlier removal is read again
after the tag was added anew, which keeps test_replayed_records' stale-removal test from proving
nothing."""

from __future__ import annotations

from frontforce.cli import main
from streams import _app

_app.removal_undoes = lambda removed_at, added_at: True

if __name__ == "__main__":
    main()
