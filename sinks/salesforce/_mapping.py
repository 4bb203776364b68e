"""The mapping config against Salesforce's describe: every field and picklist value the
configuration names must exist in the org, checked when the sink starts (a problem stops
it, naming the config field) and again every ``sink.mapping_recheck_s`` (a problem that
appears later, a field deleted or a picklist value deactivated, is an alert: logged, counted
in ``frontforce_mapping_problems`` and written to the audit topic, instead of records
failing one by one).

What is checked, by object (one describe each):

- Task: ``salesforce.task_external_id_field`` (a unique external id, see ``_task``).
- Lead: ``Front_Handle__c`` (unique external id: one Lead per handle).
- Case: ``Front_Conversation_Id__c``; ``worker.case_closed_status`` and
  ``worker.case_reopened_status`` among Status's active values.
- Opportunity: every ``worker.tag_rules.*.opportunity_stage`` among StageName's values.
- Account: every Account field ``worker.context_fields`` shows.
- Every object of ``salesforce_source.custom_fields``: those fields.
- Task: every field ``worker.task_fields_from_front`` writes (it must be createable).
"""

from __future__ import annotations

from typing import Any

from frontforce.config import Settings
from frontforce.errors import FatalError
from sinks.salesforce._task import check_external_id_field
from streams._context import TRACKED

LEAD_HANDLE = "Front_Handle__c"
CASE_LINK = "Front_Conversation_Id__c"
_COMPUTED_CONTEXT = frozenset({"owner", "open_opportunities"})


def objects_to_describe(settings: Settings) -> list[str]:
    wanted = {"Task", "Lead", "Case", "Opportunity", "Account",
              *settings.salesforce_source.custom_fields}
    return sorted(wanted)


def _fields(describe: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(f.get("name", "")).lower(): f for f in describe.get("fields") or []
            if isinstance(f, dict)}


def _picklist(field: dict[str, Any]) -> set[str]:
    return {str(v.get("value")) for v in field.get("picklistValues") or []
            if isinstance(v, dict) and v.get("active", True)}


def mapping_problems(settings: Settings, describes: dict[str, dict[str, Any]]) -> list[str]:
    """Every way the configuration does not fit the org, as ``config field: problem``."""
    out: list[str] = []
    w = settings.worker

    def field(sobject: str, name: str, where: str) -> dict[str, Any] | None:
        describe = describes.get(sobject)
        if describe is None:
            out.append(f"{where}: object {sobject} is not visible to the integration user")
            return None
        found = _fields(describe).get(name.lower())
        if found is None:
            out.append(f"{where}: field {sobject}.{name} does not exist (or is not visible)")
        return found

    if "Task" in describes:
        try:
            check_external_id_field(describes["Task"], settings.salesforce.task_external_id_field)
        except FatalError as exc:
            out.append(str(exc))
    else:
        out.append("salesforce.task_external_id_field: object Task is not visible")
    if w.unknown_sender_leads:
        handle = field("Lead", LEAD_HANDLE, "worker.unknown_sender_leads")
        if handle is not None and not (handle.get("externalId") and handle.get("unique")):
            out.append(f"worker.unknown_sender_leads: Lead.{LEAD_HANDLE} is not a unique external id")
    if w.close_cases or w.case_status_comments:
        field("Case", CASE_LINK, "worker.close_cases")
        status = field("Case", "Status", "worker.case_closed_status")
        if status is not None and w.close_cases:
            values = _picklist(status)
            for name in ("case_closed_status", "case_reopened_status"):
                if getattr(w, name) not in values:
                    out.append(f"worker.{name}: {getattr(w, name)!r} is not an active Case Status "
                               f"({', '.join(sorted(values))})")
    stages = {tag: r.opportunity_stage for tag, r in w.tag_rules.items() if r.opportunity_stage}
    if stages:
        stage = field("Opportunity", "StageName", "worker.tag_rules")
        values = _picklist(stage) if stage is not None else set()
        for tag, want in stages.items():
            if stage is not None and want not in values:
                out.append(f"worker.tag_rules.{tag}.opportunity_stage: {want!r} is not an active "
                           f"Opportunity stage ({', '.join(sorted(values))})")
    if w.salesforce_context:
        carried = {*TRACKED["Account"].values(),
                   *settings.salesforce_source.custom_fields.get("Account", [])}
        for front_name, source in w.context_fields.items():
            if source in _COMPUTED_CONTEXT:
                continue
            where = f"worker.context_fields.{front_name}"
            if field("Account", source, where) is not None and source not in carried:
                out.append(f"{where}: Account.{source} is not in change events; add it to "
                           "salesforce_source.custom_fields.Account")
    for sobject, names in settings.salesforce_source.custom_fields.items():
        for name in names:
            field(sobject, name, f"salesforce_source.custom_fields.{sobject}")
    for front_name, name in w.task_fields_from_front.items():
        where = f"worker.task_fields_from_front.{front_name}"
        found = field("Task", name, where)
        if found is not None and not found.get("createable", True):
            out.append(f"{where}: Task.{name} is not createable")
    return out
