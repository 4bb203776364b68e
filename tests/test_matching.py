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


def _front_message(sender: str, name: str | None) -> dict:
    from datetime import UTC, datetime
    return {"event_id": "evt_1", "conversation_id": "cnv_1", "conversation_subject": "Hi",
            "message": {"id": "msg_1", "is_inbound": True, "channel_type": "email",
                        "created_at": datetime(2026, 12, 1, tzinfo=UTC), "subject": "Hi",
                        "text": "Hello", "recipients": [{"handle": sender, "role": "from", "name": name}]}}


def test_an_unknown_senders_lead_is_one_per_email_and_names_a_company_only_from_a_work_domain() -> None:
    from streams._rules import lead_command, lead_task_command, new_lead_tag_command

    fe = _front_message("ana.silva@gmail.com", "Ana Maria Silva")
    lead = lead_command(fe, "ana.silva@gmail.com", "Ana Maria Silva")
    op = lead["operation"][1]
    assert (op["first_name"], op["last_name"], op["company"]) == ("Ana Maria", "Silva", "[not provided]")
    assert op["external_id_field"] == "Front_Handle__c" and op["external_id"] == "ana.silva@gmail.com"
    # Same handle from another event: the same command id and key (the sink makes it once).
    other = lead_command({**fe, "event_id": "evt_2"}, "ana.silva@gmail.com", None)
    assert other["command_id"] == lead["command_id"]
    assert other["idempotency_key"] == lead["idempotency_key"]
    work = lead_command(fe, "bo@initech.example", None)["operation"][1]
    assert (work["first_name"], work["last_name"], work["company"]) == (None, "bo", "initech.example")
    task = lead_task_command(fe, "ana.silva@gmail.com", "Front_Message_Id__c")["operation"][1]
    assert task["who_id"] is None and task["who_ref"] == {
        "sobject": "Lead", "field": "Front_Handle__c", "value": "ana.silva@gmail.com"}
    tag = new_lead_tag_command(fe)
    assert tag["operation"] == ("frontforce.commands.front.AddTags",
                                {"conversation_id": "cnv_1", "tag_names": ["New Lead"]})
