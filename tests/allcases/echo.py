"""Every write frontforce made in a run, explained by the change that caused it.

Definitions (counted at the emulators, ``tests.allcases.ledger``):

- A *person's change*: in Front, an event whose ``source._meta.type`` is ``teammate``,
  ``rule`` or ``inboxes`` (a customer's message); in Salesforce, a write whose change event
  does not carry frontforce's client id in ``changeOrigin`` (here: Pat's, whose
  ``commitUser`` is Pat's User).
- A *frontforce write*: in Salesforce, a change event whose ``changeOrigin`` names
  ``client=frontforce`` (Task, Lead, Case, Opportunity, Contact writes), and a FeedItem
  created by the integration user; in Front, a public API write request (POST, PUT, PATCH,
  DELETE answered 2xx; the Front sink is the only API client that writes), and the events
  those requests leave (``source._meta.type`` ``api``).
- The *cause* of a frontforce write is the change it was made for, found from what the
  write carries: a Task's ``Front_Message_Id__c`` (the message, or ``tag:<conversation>/<tag>``
  for a tag rule's follow-up), a Lead's ``Front_Handle__c`` (the sender), a Case's
  ``Front_Conversation_Id__c`` (the archive or reopen), an Opportunity's Account (the
  "Upsell" tag on one of its Contacts' conversations), a note's text (the tag, or the
  archive), a Front tag or assignment's conversation (its customer's message), a Front
  comment's "Salesforce Case <Id> ... is now <Status>." (the Case status change).
- An *echo write* is a frontforce write whose cause is itself a frontforce write: a
  Salesforce write made for a Front event made by the API (frontforce's own tag, comment
  or assignment coming back from Front), or a Front write made for a Salesforce change
  event carrying frontforce's client id (its own Case, Opportunity, Lead or Task write
  coming back through Change Data Capture).
- An *unexplained* write has no cause among the run's changes.

Not echoes, counted apart (``mirror``): the Salesforce context frontforce keeps on Front
accounts and contacts (use case 3, ``/accounts``, ``/contacts``). It copies Salesforce's
current state one way into fields nothing reads back (Front emits no event for an account
or contact change, and the worker reads none), so it cannot loop; and after frontforce
moved an Opportunity's stage, Front must show the new stage or it shows a wrong one. A
mirror write on an Account no person changed during the run (``reflections``) shows
frontforce's own Salesforce write, and is reported, not refused. The Front tag definition
frontforce creates once ("New Lead", ``POST /company/tags``) belongs with its first tag.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from tests.allcases.ledger import Change, Writes
from tests.allcases.stack import World

PEOPLE_SOURCES = frozenset({"teammate", "rule", "inboxes", "recipient", "imap", "gmail"})
API_SOURCES = frozenset({"api", "oauth_client"})
_COMMENT_LINE = re.compile(r"Salesforce Case (\w+)(?: \([^)]*\))? is now ([^.\n]+)\.")
_NOTE_TAG = re.compile(r"\(Front tag '([^']+)' on (cnv_\w+)\)")
_AUDIT = frozenset({"LastModifiedDate", "LastModifiedById", "SystemModstamp"})


def _source(event: dict[str, Any]) -> str:
    return str(((event.get("source") or {}).get("_meta") or {}).get("type") or "")


def _conversation(event: dict[str, Any]) -> str:
    return str((event.get("conversation") or {}).get("id") or "")


@dataclass
class Verdict:
    explained: list[tuple[str, str]] = field(default_factory=list)  # (write, cause)
    echoes: list[tuple[str, str]] = field(default_factory=list)  # (write, the write it echoes)
    unexplained: list[str] = field(default_factory=list)
    mirror: int = 0  # Front account/contact writes (use case 3)
    reflections: list[str] = field(default_factory=list)  # mirror writes no person's change explains

    def counts(self) -> dict[str, int]:
        return {"explained": len(self.explained), "echo": len(self.echoes),
                "unexplained": len(self.unexplained), "mirror": self.mirror,
                "mirror_reflecting_frontforce": len(self.reflections)}


class _Front:
    """The run's Front events, indexed by what causes look up."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.messages: dict[str, str] = {}  # message id -> source type
        self.inbound: dict[str, list[str]] = defaultdict(list)  # conversation -> senders
        self.handles: set[str] = set()  # customers' handles of people's messages
        self.tags: dict[tuple[str, str], set[str]] = defaultdict(set)  # (conv, tag) -> sources
        self.status: dict[str, set[str]] = defaultdict(set)  # conv -> sources of archive/reopen
        self.recipients: dict[str, str] = {}  # conv -> customer handle
        for e in events:
            src, conv, kind = _source(e), _conversation(e), e["type"]
            target = (e.get("target") or {}).get("data") or {}
            recipient = ((e.get("conversation") or {}).get("recipient") or {}).get("handle")
            if recipient:
                self.recipients[conv] = str(recipient).lower()
            if kind in ("inbound", "outbound", "out_reply") and isinstance(target, dict):
                self.messages[str(target.get("id"))] = src
                if src in PEOPLE_SOURCES:
                    for r in target.get("recipients") or []:
                        self.handles.add(str(r.get("handle") or "").lower())
                        if kind == "inbound" and r.get("role") == "from":
                            self.inbound[conv].append(str(r["handle"]).lower())
            elif kind in ("tag", "untag") and isinstance(target, dict):
                self.tags[(conv, str(target.get("name") or "").lower())].add(src)
            elif kind in ("archive", "reopen"):
                self.status[conv].add(src)


def _by(sources: set[str], what: str, ours: str) -> tuple[str | None, str | None]:
    """(cause if a person's, echo if only frontforce's) of a Front change."""
    if sources & PEOPLE_SOURCES:
        return f"{what} by {sorted(sources & PEOPLE_SOURCES)[0]}", None
    if sources & API_SOURCES:
        return None, f"{what} by frontforce ({ours})"
    return None, None


def explain(world: World, w: Writes, contact_emails: set[str]) -> Verdict:
    """``contact_emails``: every Contact's email (senders who are not strangers)."""
    v = Verdict()
    front = _Front(w.front_events)
    case_conv = {case: conv for conv, case in {**world.archive_cases, **world.status_cases}.items()}
    opp_account = {a.opportunity: a for a in world.accounts}
    people_case_status = {(rid, c.value("Status")) for c in w.sf_people
                          if c.entity == "Case" and "Status" in c.changed_fields for rid in c.record_ids}
    our_case_status = {(rid, c.value("Status")) for c in w.sf_ours
                       if c.entity == "Case" and "Status" in c.changed_fields for rid in c.record_ids}

    def settle(write: str, cause: str | None, echo: str | None) -> None:
        if cause:
            v.explained.append((write, cause))
        elif echo:
            v.echoes.append((write, echo))
        else:
            v.unexplained.append(write)

    def tag_cause(conv: str, tag: str) -> tuple[str | None, str | None]:
        return _by(front.tags.get((conv, tag.lower()), set()), f"tag {tag!r} on {conv}", "its tag")

    # -- Salesforce writes ------------------------------------------------------------
    for c in w.sf_ours:
        for rid in c.record_ids:
            write = f"Salesforce {c.entity} {c.change_type} {rid}"
            cause: str | None = None
            echo: str | None = None
            if c.entity == "Task" and c.change_type == "CREATE":
                ext = str(c.value("Front_Message_Id__c") or "")
                write += f" ({ext})"
                if ext.startswith("tag:"):
                    conv, _, tag = ext.removeprefix("tag:").rpartition("/")
                    cause, echo = tag_cause(conv, tag)
                else:
                    src = front.messages.get(ext.split("/", 1)[0])
                    cause = f"message {ext} from {src}" if src in PEOPLE_SOURCES else None
                    echo = f"message {ext} sent by frontforce" if src in API_SOURCES else None
            elif c.entity == "Lead" and c.change_type == "CREATE":
                handle = str(c.value("Front_Handle__c") or "").lower()
                write += f" ({handle})"
                cause = f"messages from {handle}" if handle in front.handles else None
            elif c.entity in ("Lead", "Contact") and c.change_type == "UPDATE":
                fields = set(c.changed_fields) - _AUDIT
                values = {str(c.value(f) or "").lower() for f in fields}
                write += f" ({sorted(fields)})"
                if fields <= {"Phone", "MobilePhone", "Email", "Front_Handle__c"} and (
                        values & front.handles):
                    cause = f"a message from the new handle {sorted(values & front.handles)[0]}"
            elif c.entity == "Case" and c.change_type == "UPDATE":
                conv = case_conv.get(rid, "")
                write += f" (Status {c.value('Status')}, {conv})"
                cause, echo = _by(front.status.get(conv, set()), f"archive/reopen of {conv}",
                                  "its own status change")
            elif c.entity == "Opportunity" and c.change_type == "UPDATE":
                account = opp_account.get(rid)
                write += f" (StageName {c.value('StageName')})"
                convs = [conv for (conv, tag) in front.tags if tag == "upsell" and account
                         and front.recipients.get(conv) in account.contacts]
                for conv in convs:
                    cause, echo = tag_cause(conv, "Upsell")
                    if cause:
                        break
            settle(write, cause, echo)
    for f in w.feed_items:
        body = str(f.get("Body") or "")
        write = f"Salesforce FeedItem on {f.get('ParentId')} ({body[:60]!r})"
        m = _NOTE_TAG.search(body)
        if m:
            settle(write, *tag_cause(m.group(2), m.group(1)))
        elif body.startswith("Resolved in Front") and f.get("ParentId") in case_conv:
            conv = case_conv[f["ParentId"]]
            settle(write, *_by(front.status.get(conv, set()), f"archive of {conv}", "its archive"))
        else:
            settle(write, None, None)

    # -- Front writes -----------------------------------------------------------------
    for e in w.front_api_events():
        conv, kind = _conversation(e), e["type"]
        target = (e.get("target") or {}).get("data") or {}
        write = f"Front {kind} on {conv}"
        people_messages = [s for s in front.inbound.get(conv, [])]
        if kind == "tag" and str(target.get("name")) == "New Lead":
            strangers = [s for s in people_messages if s not in contact_emails]
            settle(write + " 'New Lead'", f"message from {strangers[0]}" if strangers else None, None)
        elif kind == "assign":
            settle(write, f"message from {people_messages[0]}" if people_messages else None, None)
        elif kind == "comment":
            lines = _COMMENT_LINE.findall(str(target.get("body") or ""))
            if not lines:
                settle(write, None, None)
            for case, status in lines:
                what = f"{write}: Case {case} is now {status}"
                settle(what, f"Pat set Case {case} to {status}"
                       if (case, status) in people_case_status else None,
                       f"frontforce set Case {case} to {status}"
                       if (case, status) in our_case_status else None)
        else:
            settle(f"{write} {target.get('name') or ''}".strip(), None, None)
    touched = _accounts_people_changed(world, w.sf_people)
    front_accounts = {a["id"]: a.get("external_id") for a in (w.front.get("accounts") or {}).values()}
    contact_account = _front_contact_accounts(world, w.front)
    tag_events = {e["type"] for e in w.front_api_events()}
    for r in w.front_writes:
        parts = r["path"].strip("/").split("/")
        if parts[0] in ("accounts", "contacts"):
            v.mirror += 1
            rid = front_accounts.get(parts[1]) if parts[0] == "accounts" and len(parts) > 1 else (
                contact_account.get(parts[1]) if len(parts) > 1 else None)
            if rid is not None and rid not in touched:
                v.reflections.append(f"Front {r['method']} {r['path']} (Account {rid})")
        elif parts[:2] == ["company", "tags"]:
            settle("Front tag definition", "its first tag" if "tag" in tag_events else None, None)
    return v


def _accounts_people_changed(world: World, changes: list[Change]) -> set[str]:
    opp = {a.opportunity: a.id for a in world.accounts}
    contact = {cid: a.id for a in world.accounts for cid in a.contacts.values()}
    out: set[str] = set()
    for c in changes:
        for rid in c.record_ids:
            out.add({"Opportunity": opp, "Contact": contact}.get(c.entity, {}).get(rid, rid))
    return out


def _front_contact_accounts(world: World, state: dict[str, Any]) -> dict[str, str]:
    """Front contact id -> the Salesforce Account of its email (by the world's Contacts)."""
    by_email = {email: a.id for a in world.accounts for email in a.contacts}
    out: dict[str, str] = {}
    for crd, contact in (state.get("contacts") or {}).items():
        for h in contact.get("handles") or []:
            account = by_email.get(str(h.get("handle") or "").lower())
            if account:
                out[crd] = account
                out[f"alt:email:{h['handle']}"] = account
    return out
