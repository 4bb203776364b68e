"""The record-match rules: normalization, and a deterministic choice among duplicates."""

from __future__ import annotations

from streams import choose_match, match_entries
from streams._matching import merge_entry


def change(rid: str, email: str | None, ts: int, sobject: str = "Contact", kind: str = "SNAPSHOT"):
    return {"record_id": rid, "sobject": sobject, "email": email, "commit_timestamp": ts,
            "change_type": kind, "account_id": None, "owner_id": None}


def test_email_key_is_case_and_space_insensitive() -> None:
    [(key, _)] = match_entries(change("003A", "  Bob@Corp.COM ", 1))
    assert key == "email:bob@corp.com"
    assert match_entries(change("003B", None, 1)) == []
    assert match_entries(change("001A", "x@y.com", 1, sobject="Account")) == []


def test_duplicates_newest_contact_wins_and_contact_beats_lead() -> None:
    table = None
    for c in [change("003OLD", "a@b.com", 1), change("003NEW", "a@b.com", 5),
              change("00QLEAD", "a@b.com", 9, sobject="Lead")]:
        table = merge_entry(table, match_entries(c)[0][1])
    assert choose_match(table)["id"] == "003NEW"


def test_stale_change_does_not_override_and_delete_removes() -> None:
    t = merge_entry(None, match_entries(change("003A", "a@b.com", 10))[0][1])
    t = merge_entry(t, match_entries(change("003A", "a@b.com", 5, kind="DELETE"))[0][1])
    assert choose_match(t)["id"] == "003A"  # older delete replayed late: ignored
    t = merge_entry(t, match_entries(change("003A", "a@b.com", 11, kind="DELETE"))[0][1])
    assert choose_match(t) is None
