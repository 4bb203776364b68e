"""``python -m tests.tombstoneless_worker worker -c FILE``: the stream worker as it was before
a removed stage tag's entry was kept (streams/_app.py ``TOMBSTONE_MS``): every removed
entry is dropped at once. The variant that must emit a second, different command under a
removal's idempotency key when the add and the removal are read again, which keeps
test_replayed_records' replayed-tag test from proving nothing."""

from __future__ import annotations

from frontforce.cli import main
from streams import _app

_app.TOMBSTONE_MS = -(10**15)  # "kept while removed_at > at + 10**15 ms": never

if __name__ == "__main__":
    main()
