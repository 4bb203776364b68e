"""Commands as sObject Collections writes (issue 9).

Each executable command becomes one ``Write``:
  - ``create``: create once on a Unique external id (``POST composite/sobjects``). A record
    whose external id exists answers ``DUPLICATE_VALUE`` and is left as it is (audited
    SKIPPED with its Id): ``UpsertTask`` (a logged message is a fact) and ``UpsertLead``
    (the Lead of an unknown sender is made once; what a user edits on it afterwards stays).
  - ``update``: by record Id (``PATCH composite/sobjects``, mixed sObjects): ``UpdateRecord``
    and ``CloseCase`` with a ``case_id``. Only the fields a command carries are sent.
  - ``resolve``: a ``CloseCase`` that knows only the conversation: one SOQL query per batch
    finds the Cases by ``Front_Conversation_Id__c`` (an upsert would create a closed Case
    where there is none), then it is an update.
  - ``feed``: a FeedItem (``PostFeedItem``, and a ``CloseCase``'s resolution note, posted on
    the Case once it is closed). FeedItem has no external id: the sink's ledger
    (``salesforce.ledger``) makes the create happen once (see ``_ledger.py``).

The sink batches writes of the same kind, sObject and key field into one sObject
Collections request of at most 200 records, and sends a flush's requests (up to five) as
one /composite call, one API call. ``UpdateRecord`` values travel as the strings the schema carries: Salesforce's
JSON reader takes numbers and checkboxes given as strings ("12.5", "true"), and a value it
cannot read is refused for that record alone (dead-lettered with Salesforce's error).

Parents by external id: an ``UpsertTask`` may name its Who or What by an external id
(``who_ref`` / ``what_ref``, e.g. the Lead an ``UpsertLead`` of the same batch creates):
the Task carries ``"Who": {"attributes": {"type": "Lead"}, "Front_Handle__c": "..."}`` and
Salesforce resolves it inside the create, so an unknown sender's Lead and its first Task
cost no query. The sink writes Leads before Tasks in every flush (in order, inside one
/composite call).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CASE_EXTERNAL_ID = "Front_Conversation_Id__c"
FEED_BODY_MAX = 10_000
UPDATABLE_SOBJECTS = frozenset({"Contact", "Lead", "Account", "Opportunity", "Case"})

# The Lead fields an UpsertLead command owns, by command field.
_LEAD_FIELDS = {
    "first_name": "FirstName",
    "last_name": "LastName",
    "company": "Company",
    "email": "Email",
    "phone": "Phone",
    "lead_source": "LeadSource",
    "owner_id": "OwnerId",
}


class NotExecutable(Exception):
    """The command cannot be executed (by this sink version, or ever): dead-letter it."""


@dataclass(frozen=True)
class Write:
    kind: str  # "create" (once, on an external id), "update" (by record Id), "upsert" (by
    # external id), "resolve" (Id looked up, then update), "feed" (a FeedItem, via the ledger)
    sobject: str
    key_field: str | None  # the external id field of an upsert; None for an update
    key: str  # the record Id, or the external id value
    fields: dict[str, Any] = field(default_factory=dict)
    # Of ``fields``, those written only where Salesforce has no value yet: the sink reads
    # them first (one collections retrieve per sObject and batch) and drops the filled ones.
    only_if_blank: tuple[str, ...] = ()

    @property
    def group(self) -> tuple[str, str, str | None]:
        """Writes one collections call can carry: updates of any sObjects (Salesforce
        takes mixed types, in runs of one type), upserts of one sObject on one field."""
        if self.kind == "update":
            return ("update", "", None)
        return (self.kind, self.sobject, self.key_field)

    def record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"attributes": {"type": self.sobject}}
        if self.kind == "feed":
            rec["ParentId"] = self.key
        elif self.kind == "update":
            rec["id"] = self.key
        else:
            assert self.key_field is not None
            rec[self.key_field] = self.key
        rec.update(self.fields)
        return rec


def write_for(op_name: str, op: dict[str, Any]) -> Write:
    """The write a command asks for; ``NotExecutable`` with the reason otherwise."""
    if op_name == "UpdateRecord":
        sobject = op.get("sobject") or ""
        if sobject not in UPDATABLE_SOBJECTS:
            raise NotExecutable(f"UpdateRecord on {sobject!r}: the sink updates only "
                                f"{', '.join(sorted(UPDATABLE_SOBJECTS))}")
        if not op.get("record_id"):
            raise NotExecutable("UpdateRecord without a record_id")
        if not op.get("fields"):
            raise NotExecutable("UpdateRecord without fields")
        named = {f.lower() for f in op["fields"]}
        blank = tuple(f for f in op.get("only_if_blank") or [] if f.lower() in named)
        return Write("update", sobject, None, op["record_id"], dict(op["fields"]), blank)
    if op_name == "PostFeedItem":
        if not op.get("parent_id") or not (op.get("body") or "").strip():
            raise NotExecutable("PostFeedItem without a parent_id or a body")
        if len(op["body"]) > FEED_BODY_MAX:
            raise NotExecutable(f"PostFeedItem body of {len(op['body'])} characters: Salesforce "
                                f"takes at most {FEED_BODY_MAX}")
        return Write("feed", "FeedItem", None, op["parent_id"], {"Body": op["body"]})
    if op_name == "CloseCase":
        fields: dict[str, Any] = {"Status": op.get("status") or "Closed"}
        if op.get("case_id"):
            return Write("update", "Case", None, op["case_id"], fields)
        if op.get("front_conversation_id"):
            return Write("resolve", "Case", CASE_EXTERNAL_ID, op["front_conversation_id"], fields)
        raise NotExecutable("CloseCase without case_id or front_conversation_id")
    if op_name == "UpsertLead":
        if not op.get("external_id_field") or not op.get("external_id"):
            raise NotExecutable("UpsertLead without an external id")
        lead = {sf: op[key] for key, sf in _LEAD_FIELDS.items() if op.get(key) is not None}
        return Write("create", "Lead", op["external_id_field"], op["external_id"], lead)
    raise NotExecutable(f"operation {op_name} is not supported by this sink version")


def keep_blank_only(write: Write, current: dict[str, Any]) -> Write:
    """``write`` without the only-if-blank fields ``current`` (the record as read) has a
    value for."""
    now = {k.lower(): v for k, v in current.items()}
    filled = {f.lower() for f in write.only_if_blank if now.get(f.lower()) not in (None, "")}
    fields = {k: v for k, v in write.fields.items() if k.lower() not in filled}
    return Write(write.kind, write.sobject, write.key_field, write.key, fields)


def soql_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def merged(writes: list[Write]) -> Write:
    """Several commands for one record in one batch: one write, later fields win."""
    fields: dict[str, Any] = {}
    for w in writes:
        fields.update(w.fields)
    first = writes[0]
    return Write(first.kind, first.sobject, first.key_field, first.key, fields)


def duplicate_match_id(content: Any) -> str | None:
    """The Id of the first record a duplicate rule matched, from a single-record error body
    (``duplicateResut``, Salesforce's spelling; ``duplicateResult`` accepted too)."""
    for err in content if isinstance(content, list) else [content]:
        if not isinstance(err, dict):
            continue
        result = err.get("duplicateResut") or err.get("duplicateResult") or {}
        for match in result.get("matchResults") or []:
            for row in match.get("matchRecords") or []:
                rid = (row.get("record") or {}).get("Id")
                if rid:
                    return str(rid)
    return None
