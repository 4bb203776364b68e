"""The record-match rules: normalization, and a deterministic choice among duplicates."""

from __future__ import annotations

from streams import choose_match
from streams._matching import (
    choose_account,
    choose_user,
    counterpart_handles,
    merge_entry,
    normalize_phone,
    record_update,
    web_domain,
)


def change(rid: str, email: str | None, ts: int, sobject: str = "Contact", kind: str = "SNAPSHOT",
           **more: object):
    return {"record_id": rid, "sobject": sobject, "email": email, "commit_timestamp": ts,
            "change_type": kind, "account_id": None, "owner_id": None, **more}


def entries(c: dict, held: dict | None = None) -> list:
    return record_update(held, c)[1]


def test_email_key_is_case_and_space_insensitive() -> None:
    [(key, _)] = entries(change("003A", "  Bob@Corp.COM ", 1))
    assert key == "email:bob@corp.com"
    assert entries(change("003B", None, 1)) == []
    # An Account is held by Id (and by domain when it has a Website), never by an email.
    assert [k for k, _ in entries(change("001A", "x@y.com", 1, sobject="Account"))] == ["id:001A"]


def test_duplicates_newest_contact_wins_and_contact_beats_lead() -> None:
    table = None
    for c in [change("003OLD", "a@b.com", 1), change("003NEW", "a@b.com", 5),
              change("00QLEAD", "a@b.com", 9, sobject="Lead")]:
        table = merge_entry(table, entries(c)[0][1])
    assert choose_match(table)["id"] == "003NEW"
    assert choose_match(table, ("Lead", "Contact"))["id"] == "00QLEAD"


def test_stale_change_does_not_override_and_delete_removes() -> None:
    [(_, e)] = entries(change("003A", "a@b.com", 10))
    t = merge_entry(None, e)
    t = merge_entry(t, {**e, "ts": 5, "deleted": True})
    assert choose_match(t)["id"] == "003A"  # older delete replayed late: ignored
    t = merge_entry(t, {**e, "ts": 11, "deleted": True})
    assert choose_match(t) is None


def test_phones_match_as_e164_whatever_the_format_salesforce_holds() -> None:
    """Salesforce keeps Phone as typed; Front's SMS and call handles are E.164. Both sides
    become the same key, and a Phone change retracts the old number only."""
    assert normalize_phone("(415) 555-0100") == "+14155550100"
    assert normalize_phone("+1 415-555-0100") == normalize_phone("tel:+14155550100") == "+14155550100"
    assert normalize_phone("020 7946 0958", "GB") == "+442079460958"
    assert normalize_phone("n/a") is None and normalize_phone("12") is None
    state, out = record_update(None, change("003P", None, 1, phone="(415) 555-0100",
                                            mobile_phone="415.555.0199"))
    assert [k for k, _ in out] == ["phone:+14155550100", "phone:+14155550199"]
    state, out = record_update(state, change("003P", None, 2, kind="UPDATE", phone="415 555 0111",
                                             changed_fields=["Phone"]))
    assert [(k, e["deleted"]) for k, e in out] == [
        ("phone:+14155550100", True), ("phone:+14155550111", False), ("phone:+14155550199", False)]
    sms = {"message": {"is_inbound": True, "recipients": [
        {"handle": "+14155550111", "role": "from"}, {"handle": "+14155550000", "role": "to"}]}}
    assert counterpart_handles(sms) == ["phone:+14155550111"]


def test_accounts_by_domain_never_free_mail_and_the_oldest_wins() -> None:
    assert web_domain("https://www.Acme.example/about") == "acme.example"
    assert web_domain("acme.example") == web_domain("http://acme.example:8080") == "acme.example"
    assert web_domain("n/a") is None and web_domain("") is None
    state, out = record_update(None, change("001B", None, 1, sobject="Account", website="acme.example",
                                            owner_id="005O", name="Acme"))
    assert [k for k, _ in out] == ["domain:acme.example", "id:001B", "owns:005O:001B"]
    assert out[1][1]["owner_id"] == "005O" and out[1][1]["name"] == "Acme"
    # An owner change keeps the domain held (and moves the owns: key); a Website on a
    # free-mail domain is no key.
    state, out = record_update(state, change("001B", None, 2, sobject="Account", kind="UPDATE",
                                             owner_id="005P", changed_fields=["OwnerId"]))
    assert [(k, e["owner_id"], e["deleted"]) for k, e in out] == [
        ("owns:005O:001B", "005P", True), ("domain:acme.example", "005P", False),
        ("id:001B", "005P", False), ("owns:005P:001B", "005P", False)]
    _, out = record_update(None, change("001C", None, 1, sobject="Account", website="gmail.com"))
    assert [k for k, _ in out] == ["id:001C"]
    table = None
    for rid, ts in (("001Z", 1), ("001B", 9)):
        [(_, e), _id] = entries(change(rid, None, ts, sobject="Account", website="acme.example"))  # no owner
        table = merge_entry(table, e)
    assert choose_account(table)["id"] == "001B"


def test_users_by_email_an_active_one_wins_and_a_deactivated_one_never_owns() -> None:
    old, out = record_update(None, change("005A", "Sam@Corp.example", 1, sobject="User",
                                          first_name="Sam", last_name="Lee", is_active=True))
    assert [k for k, _ in out] == ["id:005A", "user:sam@corp.example"]
    assert (out[0][1]["email"], out[0][1]["name"], out[0][1]["active"]) == ("sam@corp.example", "Sam Lee", True)
    table = merge_entry(None, out[1][1])
    _, out2 = record_update(None, change("005B", "sam@corp.example", 5, sobject="User", is_active=False))
    table = merge_entry(table, out2[1][1])
    assert choose_user(table)["id"] == "005A"  # the newer one is inactive
    _, out = record_update(old, change("005A", None, 6, sobject="User", kind="UPDATE", is_active=False,
                                       changed_fields=["IsActive"]))
    table = merge_entry(table, out[1][1])
    assert choose_user(table) is None


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
    # salesforce.integration_user_id set: its commits are ours whatever changeOrigin says
    # (15- and 18-character Ids alike); unset, commitUser alone proves nothing.
    assert is_our_change("com/salesforce/api/rest/59.0", "005Fe00000000AbCDE", "005Fe00000000Ab")
    assert not is_our_change("com/salesforce/api/rest/59.0", "005Fe00000000XyZAB", "005Fe00000000Ab")
    assert not is_our_change("com/salesforce/api/rest/59.0", "005Fe00000000AbCDE", None)


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


def test_account_context_is_rebuilt_from_change_events_alone() -> None:
    """Use case 3's state: an UPDATE carries only what changed, so the context keeps the
    rest; an older change changes nothing; closed Opportunities are not open ones; a
    deleted Contact leaves the account's contacts."""
    from streams._context import apply_change, contact_emails, render

    def ev(sobject: str, rid: str, kind: str, ts: int, changed: list[str] | None = None, **f: object):
        return {"record_id": rid, "sobject": sobject, "change_type": kind, "commit_timestamp": ts,
                "changed_fields": changed or [], **f}

    acc = apply_change(None, ev("Account", "001A", "SNAPSHOT", 1, name="Globex", annual_revenue=1.2e6,
                                type="Enterprise", owner_id="005P", website="globex.example"))
    acc2 = apply_change(acc, ev("Account", "001A", "UPDATE", 3, ["AnnualRevenue"], annual_revenue=2e6))
    assert acc2 is not None and acc2["fields"]["AnnualRevenue"] == "2000000"
    assert acc2["fields"]["Type"] == "Enterprise"  # not in the UPDATE: kept
    assert apply_change(acc2, ev("Account", "001A", "UPDATE", 2, ["Type"], type="SMB")) is None
    o1 = apply_change(None, ev("Opportunity", "006A", "CREATE", 1, name="Big", amount=50000.0,
                               stage_name="Negotiation", is_closed=False, account_id="001A"))
    o2 = apply_change(None, ev("Opportunity", "006B", "CREATE", 1, name="Old", amount=10.0,
                               stage_name="Closed Won", is_closed=True, account_id="001A"))
    c1 = apply_change(None, ev("Contact", "003A", "SNAPSHOT", 1, email="Carla@Globex.example"))
    c2 = apply_change(None, ev("Contact", "003B", "DELETE", 2))
    ctx = {"account": acc2, "opportunities": {"006A": o1, "006B": o2},
           "contacts": {"003A": c1, "003B": c2}}
    shown = render(ctx, "Pam Beesly", {"ARR": "AnnualRevenue", "Tier": "Type", "Owner": "owner",
                                       "Open": "open_opportunities"})
    assert shown == {"ARR": "2000000", "Tier": "Enterprise", "Owner": "Pam Beesly",
                     "Open": "1 open, 50,000 (Negotiation)"}
    assert contact_emails(ctx) == ["carla@globex.example"]


def test_a_users_name_follows_a_change_of_one_part_of_it() -> None:
    """A change event carries only the part of a compound Name that changed
    (changed_fields "Name.LastName"): the other part is the one held, so the owner shown on
    the Front accounts is the whole new name, not the last name alone."""
    held, _ = record_update(None, change("005A", "olga@corp.example", 1, sobject="User",
                                         first_name="Olga", last_name="Owner"))
    held, out = record_update(held, change("005A", None, 2, sobject="User", kind="UPDATE",
                                           last_name="Renamed", changed_fields=["Name.LastName"]))
    assert out[0][1]["name"] == "Olga Renamed" and held is not None and held["name"] == "Olga Renamed"
    held, out = record_update(held, change("005A", None, 3, sobject="User", kind="UPDATE",
                                           first_name="Olivia", changed_fields=["Name.FirstName"]))
    assert out[0][1]["name"] == "Olivia Renamed"
    # A change that does not touch the name keeps it.
    _, out = record_update(held, change("005A", None, 4, sobject="User", kind="UPDATE",
                                        is_active=True, changed_fields=["IsActive"]))
    assert out[0][1]["name"] == "Olivia Renamed"
