"""``python -m tests.rank_only_notes_worker worker -c FILE``: the stream worker as it was before
a Front contact's notes of equal rank were ordered by time (streams/_app.py ``note_outranks``):
a note replaces the one held unless the held record outranks it, so an older note read again
takes the Front contact back to the record it named. The variant that must land a new handle
on the older match, which keeps test_replayed_records' note-order test from proving nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from frontforce.cli import main
from streams import _app


def _rank_only(held: dict[str, Any], note: dict[str, Any], rank: Mapping[Any, int]) -> bool:
    return rank.get(held["kind"], 9) < rank.get(note["kind"], 9)


_app.note_outranks = _rank_only

if __name__ == "__main__":
    main()
