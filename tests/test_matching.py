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


def test_case_commands_are_keyed_by_the_fact_and_our_own_writes_are_recognised() -> None:
    from datetime import UTC, datetime

    from frontforce.salesforce import is_our_change
    from streams._rules import case_comment_command, case_status_command

    fe = {"event_id": "evt_9", "conversation_id": "cnv_9", "conversation_subject": "Login",
          "actor_email": "ann@acme.example", "occurred_at": datetime(2026, 12, 1, 9, 30, tzinfo=UTC)}
    close = case_status_command(fe, "Closed", closing=True)["operation"][1]
    assert close["front_conversation_id"] == "cnv_9" and close["status"] == "Closed"
    assert "archived by ann@acme.example at 2026-12-01 09:30 UTC" in close["resolution_note"]
    assert case_status_command(fe, "Working", closing=False)["operation"][1]["resolution_note"] is None
    change = {"record_id": "500A", "commit_timestamp": 1_700_000_000_000, "status": "Escalated",
              "subject": "Login", "transaction_key": "tx-1"}
    c1, c2 = case_comment_command(change, "cnv_9"), case_comment_command(dict(change), "cnv_9")
    assert c1["idempotency_key"] == c2["idempotency_key"]  # a re-read asks for the same comment
    assert c1["operation"][1]["body"] == "Salesforce Case 500A (Login) is now Escalated."
    later = case_comment_command({**change, "commit_timestamp": 1_700_000_000_001}, "cnv_9")
    assert later["idempotency_key"] != c1["idempotency_key"]
    assert is_our_change("com/salesforce/api/rest/59.0;client=frontforce")
    assert not is_our_change("com/salesforce/api/rest/59.0;client=zapier")
    assert not is_our_change(None) and not is_our_change("")


def test_record_keys_converge_whatever_the_change_events_carry() -> None:
    """A change event carries only what changed: the record-keys state is what lets an
    email change retract the old key, a delete (no email in it) retract every key, a late
    older change be ignored after a delete, an undelete restore the key, and a converted
    Lead give its key up."""
    from streams._matching import record_update

    def ev(kind: str, ts: int, **f: object) -> dict:
        return {"record_id": "003A", "sobject": f.pop("sobject", "Contact"), "change_type": kind,
                "commit_timestamp": ts, "changed_fields": f.pop("changed", []), **f}

    state, out = record_update(None, ev("CREATE", 1, email="Ann@Corp.example", account_id="001X"))
    assert [(k, e["deleted"], e["account_id"]) for k, e in out] == [("email:ann@corp.example", False, "001X")]
    # An owner change: no Email in the event; the key stays, with the new owner.
    state, out = record_update(state, ev("UPDATE", 2, owner_id="005B", changed=["OwnerId"]))
    assert [(k, e["deleted"], e["owner_id"], e["account_id"]) for k, e in out] == [
        ("email:ann@corp.example", False, "005B", "001X")]
    # The email changes: the old key is retracted, the new one held.
    state, out = record_update(state, ev("UPDATE", 3, email="ann@new.example", changed=["Email"]))
    assert [(k, e["deleted"]) for k, e in out] == [("email:ann@corp.example", True),
                                                    ("email:ann@new.example", False)]
    # A delete carries no email: every held key is retracted; a tombstone stays.
    state, out = record_update(state, ev("DELETE", 5))
    assert [(k, e["deleted"]) for k, e in out] == [("email:ann@new.example", True)]
    assert state is not None and state["deleted"] and state["keys"] == []
    # A late, older update changes nothing.
    late, out = record_update(state, ev("UPDATE", 4, email="ann@late.example", changed=["Email"]))
    assert late is state and out == []
    # Undelete carries the whole record: the key is back.
    state, out = record_update(state, ev("UNDELETE", 6, email="ann@new.example"))
    assert [(k, e["deleted"]) for k, e in out] == [("email:ann@new.example", False)]
    # A converted Lead gives up its key (its Contact holds it now).
    lead, _ = record_update(None, ev("CREATE", 1, sobject="Lead", email="lee@x.example"))
    lead, out = record_update(lead, ev("UPDATE", 2, sobject="Lead", is_converted=True,
                                       changed=["IsConverted", "ConvertedContactId"]))
    assert [(k, e["deleted"]) for k, e in out] == [("email:lee@x.example", True)]
