"""What a run must have left at the emulators, each effect exactly once, whatever died.

From what the people did (``scenario.Run``) and what the emulators hold now:

- every message logged once, as a Task (``Front_Message_Id__c`` = the message id) on the
  right record: a known sender's Contact, a stranger's Lead, a colleague's Account;
- one Lead per stranger (``Front_Handle__c``), "New Lead" on each of their conversations,
  put there once (one ``api`` tag event per conversation), on no other conversation;
- each conversation the routing gives an owner (a known sender's, a colleague's) assigned
  once, to the teammate who owns the Account;
- each "Renewal Risk" tag: one follow-up Task and one Chatter note; each "New Lead" tag
  Tom puts on: one follow-up Task; no follow-up for a tag frontforce put on;
- each "Upsell" tag: the Opportunity at "Proposal/Price Quote", moved there once (one
  change event of frontforce's changing StageName); a removed tag: the stage it had;
- each archived conversation's Case closed (reopened: "Working"), one resolution note per
  archive;
- each Case status Pat set commented on its conversation once (one line per change);
- the Accounts' context in Front: each ARR and tier Pat set, each Opportunity amount and
  each stage an "Upsell" tag set, on the Front account (external id = the Account Id);
- and no other write: no echo, nothing without a cause (``echo.explain``).

``result`` sums each up as "<exactly right>/<expected>", the same for any run of the same
plan: one worker, one killed and replaced, two in a group.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from tests.allcases.echo import _COMMENT_LINE, Verdict
from tests.allcases.ledger import Emulators, Writes
from tests.allcases.scenario import Run
from tests.allcases.stack import World

PROPOSAL = "Proposal/Price Quote"


def check(world: World, run: Run, writes: Writes, verdict: Verdict) -> tuple[dict[str, str], list[str]]:
    em: Emulators = world.emulators
    problems: list[str] = []
    result: dict[str, str] = {}

    def tally(name: str, wrong: list[str], expected: int) -> None:
        result[name] = f"{expected - len(wrong)}/{expected}"
        problems.extend(f"{name}: {w}" for w in wrong)

    tasks: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in em.rows("Task"):
        if t.get("Front_Message_Id__c"):
            tasks[str(t["Front_Message_Id__c"])].append(t)
    leads: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for lead in em.rows("Lead"):
        if lead.get("Front_Handle__c"):
            leads[str(lead["Front_Handle__c"]).lower()].append(lead)
    front = writes.front
    tag_names = {t["id"]: t["name"] for t in (front.get("tags") or {}).values()}
    convs = front.get("conversations") or {}
    api_events = Counter((e["type"], e["conversation"]["id"],
                          str(((e.get("target") or {}).get("data") or {}).get("name") or ""))
                         for e in writes.front_api_events())

    # Messages: one Task each, on the right record.
    wrong = []
    for m in run.messages.values():
        found = tasks.get(m.id, [])
        if len(found) != 1:
            wrong.append(f"{m.kind} message {m.id} from {m.sender}: {len(found)} Tasks")
            continue
        t = found[0]
        if m.kind == "K" and m.account and t["WhoId"] != m.account.contacts[m.sender]:
            wrong.append(f"{m.id}: on {t['WhoId']}, not Contact {m.account.contacts[m.sender]}")
        elif m.kind == "S" and [t["WhoId"]] != [lead["Id"] for lead in leads.get(m.sender, [])]:
            wrong.append(f"{m.id}: on {t['WhoId']}, not the Lead of {m.sender}")
        elif m.kind == "C" and m.account and (t["WhoId"], t["WhatId"]) != (None, m.account.id):
            wrong.append(f"{m.id}: on {t['WhoId']}/{t['WhatId']}, not Account {m.account.id}")
    tally("message Tasks", wrong, len(run.messages))

    # Strangers: one Lead each, "New Lead" once on each of their conversations, nowhere else.
    tally("Leads", [f"{s}: {len(leads.get(s, []))} Leads" for s in run.strangers
                    if len(leads.get(s, [])) != 1], len(run.strangers))
    stranger_convs = {c for cs in run.strangers.values() for c in cs}
    wrong = []
    for c in sorted(stranger_convs):
        names = {tag_names.get(t) for t in (convs.get(c) or {}).get("tag_ids") or []}
        n = api_events[("tag", c, "New Lead")]
        if "New Lead" not in names or n != 1:
            wrong.append(f"{c}: tags {sorted(map(str, names))}, tagged 'New Lead' {n} times")
    wrong += [f"{c}: tagged 'New Lead' by frontforce, not a stranger's" for (kind, c, name) in api_events
              if kind == "tag" and name == "New Lead" and c not in stranger_convs]
    tally("New Lead tags", wrong, len(stranger_convs))

    # Routing: once, to the Account owner's teammate.
    routed = {m.conversation: m.account for m in run.messages.values()
              if m.kind in ("K", "C") and m.account}
    wrong = []
    for c, account in sorted(routed.items(), key=lambda kv: kv[0]):
        assignee = (convs.get(c) or {}).get("assignee_id")
        email = (front.get("teammates") or {}).get(assignee, {}).get("email") if assignee else None
        n = api_events[("assign", c, "")]
        if email != account.owner_email or n != 1:
            wrong.append(f"{c}: assigned to {email} ({n} times), not {account.owner_email}")
    wrong += [f"{c}: assigned {n} times" for (kind, c, _), n in api_events.items()
              if kind == "assign" and n > 1 and c not in routed]
    tally("routing", wrong, len(routed))

    # Tag rules: follow-ups and notes once; none for frontforce's own tags.
    tagged = [(c, t) for c, t, action in run.tags if action == "tag" and t in ("Renewal Risk", "New Lead")]
    wrong = []
    for c, t in tagged:
        found = tasks.get(f"tag:{c}/{t.lower()}", [])
        account = run.known_conversations.get(c)
        if len(found) != 1 or (account and found[0]["WhoId"] not in account.contacts.values()):
            wrong.append(f"{c} {t!r}: {len(found)} follow-up Tasks "
                         f"{[f['WhoId'] for f in found]}")
    wrong += [f"{ext}: a follow-up nobody asked for" for ext in tasks
              if ext.startswith("tag:") and ext.split("/")[0].removeprefix("tag:") in stranger_convs]
    tally("follow-up Tasks", wrong, len(tagged))
    notes = Counter(f.get("Body") for f in writes.feed_items)
    risk = [c for c, t in tagged if t == "Renewal Risk"]
    wrong = []
    for c in risk:
        n = sum(k for body, k in notes.items() if f"on {c})" in str(body))
        if n != 1:
            wrong.append(f"{c}: {n} Chatter notes")
    tally("Chatter notes", wrong, len(risk))

    # Upsell: the stage, moved once.
    moves: Counter[str] = Counter()
    for ch in writes.sf_ours:
        if ch.entity == "Opportunity" and "StageName" in ch.changed_fields:
            for rid in ch.record_ids:
                moves[rid] += 1
    stages = {o["Id"]: o["StageName"] for o in em.rows("Opportunity")}
    by_id = {a.id: a for a in world.accounts}
    wrong = []
    for account_id, actions in run.upsell.items():
        opp = by_id[account_id].opportunity
        want = PROPOSAL if actions[-1] == "tag" else "Qualification"
        if stages.get(opp) != want or not (moves[opp] == 1 if actions == ["tag"] else moves[opp] <= len(actions)):
            wrong.append(f"Opportunity {opp} ({actions}): {stages.get(opp)}, moved {moves[opp]} times")
    tally("Opportunity stages", wrong, len(run.upsell))

    # Cases: closed (or reopened), one resolution note per archive.
    statuses = {c["Id"]: c["Status"] for c in em.rows("Case")}
    resolved = Counter(f.get("ParentId") for f in writes.feed_items
                       if str(f.get("Body") or "").startswith("Resolved in Front"))
    wrong = []
    for conv, actions in run.archives.items():
        case = world.archive_cases[conv]
        want = "Closed" if actions[-1] == "archive" else "Working"
        n = resolved[case]
        if statuses.get(case) != want or n != actions.count("archive"):
            wrong.append(f"Case {case} ({actions}): {statuses.get(case)}, {n} resolution notes")
    tally("Cases", wrong, len(run.archives))

    # Case status comments: one line per change Pat made.
    said: Counter[tuple[str, str]] = Counter()
    for e in writes.front_api_events():
        if e["type"] == "comment":
            said.update(_COMMENT_LINE.findall(str(((e.get("target") or {}).get("data") or {}).get("body"))))
    asked = Counter(run.case_statuses)
    wrong = [f"Case {case} is now {status}: said {said[k]} times, asked {asked[k]}"
             for k in sorted(asked | said) for case, status in [k] if said[k] != asked[k]]
    tally("Case comments", wrong, sum(asked.values()))

    # Context in Front.
    accounts = {a.get("external_id"): a for a in (front.get("accounts") or {}).values()}
    wrong = []
    expected = 0
    for a in world.accounts:
        fields = (accounts.get(a.id) or {}).get("custom_fields") or {}
        want: dict[str, Any] = {}
        if a.id in run.arr:
            want["ARR"] = run.arr[a.id]
        if a.id in run.tiers:
            want["Tier"] = run.tiers[a.id]
        opps = str(fields.get("Open opportunities") or "")
        if a.opportunity in run.amounts:
            want["amount"] = f"{run.amounts[a.opportunity]:,}"
        if run.upsell.get(a.id):
            # The stage Front shows follows the tag and its removal (a context back at an
            # earlier state is a new command: streams/_context.py keys the transition).
            want["stage"] = f"({PROPOSAL})" if run.upsell[a.id][-1] == "tag" else "(Qualification)"
        if not want:
            continue
        expected += 1
        got = {k: fields.get(k) for k in ("ARR", "Tier") if k in want}
        bad = {k: v for k, v in got.items() if v != want[k]}
        bad |= {k: opps for k in ("amount", "stage") if k in want and str(want[k]) not in opps}
        if bad:
            wrong.append(f"Front account of {a.id}: {bad}, want {want}")
    tally("Front account context", wrong, expected)

    # Nothing else (how many writes that takes varies with what the sinks coalesce).
    stray = [f"ECHO {w} <- {c}" for w, c in verdict.echoes] + [f"NO CAUSE {w}" for w in verdict.unexplained]
    result["no other write"] = "ok" if not stray else f"{len(stray)} stray writes"
    problems.extend(stray)
    return result, problems
