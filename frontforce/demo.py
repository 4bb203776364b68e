"""``frontforce demo``: everything on one machine, a realistic scenario, a summary a person
can check against what was sent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from typing import Any, cast

from confluent_kafka.serialization import MessageField, SerializationContext

from frontforce.kafka import read_to_end
from frontforce.lag import wait_settled
from frontforce.localstack import REPO, LocalStack
from frontforce.serialization import avro_deserializer, registry_client


def read_topic(bootstrap: str, registry_url: str, topic: str,
               timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Every record of a topic up to its end as of now, decoded by an independent consumer
    through the registry (``frontforce.kafka.read_to_end``)."""
    de = avro_deserializer(registry_client(registry_url))
    ctx = SerializationContext(topic, MessageField.VALUE)
    return [cast(dict[str, Any], de(m.value(), ctx)) for m in read_to_end(bootstrap, topic, timeout_s)]


def summarize(stack: LocalStack, sent: dict[str, Any], known: set[str]) -> tuple[str, bool]:
    from frontforce.salesforce import connect

    settings = stack.settings()
    t = settings.topics
    events = read_topic(stack.bootstrap, stack.registry_url, t.front_events)
    audit = read_topic(stack.bootstrap, stack.registry_url, t.audit)
    dead = read_topic(stack.bootstrap, stack.registry_url, t.deadletter)
    conn = connect(settings.salesforce)
    tasks = conn.client.query_all(
        f"SELECT Id, WhoId, {settings.salesforce.task_external_id_field} FROM Task "
        f"WHERE {settings.salesforce.task_external_id_field} != null")["records"]
    leads = conn.client.query_all(
        "SELECT Id, Front_Handle__c FROM Lead WHERE Front_Handle__c != null")["records"]
    from streams._matching import web_domain
    account_domains = {web_domain(a.get("Website")) for a in conn.client.query_all(
        "SELECT Id, Website FROM Account")["records"]} - {None}
    usage = conn.client.api_usage.get("api-usage")
    outcomes = Counter(a["outcome"] for a in audit if a["target"] == "salesforce")
    sink_calls = sum(sum(a["api_calls"].values()) for a in audit if a["target"] == "salesforce")
    front_calls = sum(sum(a["api_calls"].values()) for a in audit if a["target"] == "front")
    from_known = sum(n for email, n in sent["sent_from"].items() if email in known)
    unknown = {email.lower() for email, n in sent["sent_from"].items() if email not in known and n}
    # An unknown sender at a customer's domain lands on its Account (no Lead); the others
    # (free mail, unknown companies) become Leads.
    at_accounts = {e for e in unknown if e.rpartition("@")[2] in account_domains}
    strangers = unknown - at_accounts
    from_strangers = sum(n for email, n in sent["sent_from"].items() if email.lower() in strangers)
    on_leads = sum(1 for t in tasks if str(t.get("WhoId") or "").startswith("00Q"))
    on_accounts = sum(1 for t in tasks if not t.get("WhoId"))
    distinct_events = len({e["event_id"] for e in events if e["event_type"] == "INBOUND_MESSAGE"})
    # Use case 2 in Front: the conversations of unknown senders carry the tag "New Lead".
    tagged, should_tag = _new_lead_tags(stack, sent.get("conversations") or {}, strangers)
    ok = (tagged == should_tag and len(tasks) == sent["messages"] and distinct_events == sent["messages"]
          and {lead["Front_Handle__c"] for lead in leads} == strangers and len(leads) == len(strangers)
          and on_leads == from_strangers and on_accounts == sent["messages"] - from_known - from_strangers
          and not dead)
    lines = [
        "",
        "frontforce demo summary",
        f"  webhooks accepted         {sent['deliveries']:>5}  "
        f"({sent['duplicates']} re-deliveries of the same event, as Front may do)",
        f"  messages received         {distinct_events:>5}  distinct events on {t.front_events}"
        f" (sent: {sent['messages']}; the pipeline's own tags come back as other events)",
        f"  Tasks written             {len(tasks):>5}  in Salesforce (expected {sent['messages']}:"
        f" {from_known} on known Contacts, {on_leads} on new Leads, {on_accounts} on Accounts"
        f" by the sender's domain)",
        f"  Leads created             {len(leads):>5}  one per unknown sender outside the customers'"
        f" domains (expected {len(strangers)}; {len(at_accounts)} more at a customer's domain"
        f" landed on its Account), Front_Handle__c = the email",
        f"  'New Lead' in Front       {len(tagged):>5}  conversations tagged (expected "
        f"{len(should_tag)}: those of unknown senders)",
        f"  sink writes               {outcomes['CREATED'] + outcomes['SKIPPED']:>5}  "
        f"({outcomes['CREATED']} created a record, {outcomes['SKIPPED']} re-deliveries or repeat"
        " senders found it made and left it as is)",
        f"  senders                   {sent['senders']:>5}  ({sent['known_senders']} known Contacts)",
        f"  dead letters              {len(dead):>5}",
        f"  Salesforce API calls      {sink_calls:>5.0f}  by the sink for {len(tasks)} Tasks and"
        f" {len(leads)} Leads"
        + (f"; org usage {usage.used}/{usage.total}" if usage else ""),
        f"  Front API calls           {front_calls:>5.0f}  by the Front sink: {len(tagged)} tags, the"
        " Accounts' context on Front accounts and contacts, routing",
        f"  result                    {'OK' if ok else 'MISMATCH'}",
    ]
    return "\n".join(lines), ok


def _new_lead_tags(stack: LocalStack, conversations: dict[str, str],
                   strangers: set[str]) -> tuple[set[str], set[str]]:
    """(conversations the Front emulator holds tagged "New Lead", those that should be: the
    conversations of the senders who became Leads)."""
    import httpx

    should = {cid for cid, sender in conversations.items() if sender.lower() in strangers}
    # The admin view: the emulator's rate limit must not make a conversation look untagged.
    state = httpx.get(f"{stack.front_url}/__admin/state", timeout=30).json()
    names = {t["id"]: t["name"] for t in state["tags"].values()}
    tagged = {cid for cid, conv in state["conversations"].items() if cid in conversations
              and "New Lead" in {names.get(t) for t in conv.get("tag_ids") or []}}
    return tagged, should


def run_demo(once: bool, messages: int, senders: int, known: int) -> int:
    state = REPO / ".run" / "demo"
    # Every demo starts from a clean slate (broker data, registry, org), so the summary
    # speaks only of this run; downloads stay cached outside the repo.
    subprocess.run(["bash", str(REPO / "deploy" / "stack.sh"), "stop"], check=False,
                   env={**os.environ, "FRONTFORCE_STATE": str(state / "stack")},
                   stdout=subprocess.DEVNULL)
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    stack = LocalStack(state_dir=state, persist=True)
    say = lambda s: print(f"==> {s}", flush=True)  # noqa: E731
    try:
        say("starting Kafka and the schema registry (first run downloads them from Maven Central)")
        stack.start_infra()
        say("starting the Salesforce emulator (HTTPS, local CA) and the Front emulator")
        stack.start_salesforce()
        stack.start_front(context_fields=True)
        assert stack.ca_file is not None
        stack.write_config()
        say("creating topics and registering schemas")
        print(stack.frontforce("setup").stdout.strip())
        say(f"seeding Salesforce: {known} known Contacts and their Accounts")
        seeded = json.loads(subprocess.run(
            [sys.executable, "-m", "emulators.scenario", "seed", "--salesforce",
             stack.salesforce_url, "--ca", str(stack.ca_file), "--senders", str(senders),
             "--known", str(known)], check=True, capture_output=True, text=True, cwd=REPO).stdout)
        say("initial load of Salesforce Contacts into Kafka")
        print(stack.frontforce("load", "salesforce").stdout.strip())
        say("starting the pipeline: receiver, stream worker, Salesforce sink, Salesforce change"
            " subscription, Front sink")
        stack.start_pipeline()
        if not wait_settled(stack.bootstrap, {stack.app_id: stack.worker_groups[stack.app_id][:2]},
                            timeout_s=120):
            say("worker did not index the snapshot in time")
            return 1
        say(f"Front (emulator) receives {messages} inbound emails from {senders} senders and "
            "delivers them as signed webhooks")
        sent = json.loads(subprocess.run(
            [sys.executable, "-m", "emulators.scenario", "send", "--receiver",
             stack.receiver_url, f"--secret={stack.app_secret}", "--front", stack.front_url,
             "--messages", str(messages),
             "--senders", str(senders), "--known", str(known)],
            check=True, capture_output=True, text=True, cwd=REPO).stdout)
        say("waiting for the pipeline to settle")
        settled = wait_settled(stack.bootstrap, stack.worker_groups, timeout_s=180)
        text, ok = summarize(stack, sent, set(seeded["known"]))
        print(text, flush=True)
        if not settled:
            print("  (pipeline did not settle within 180 s)")
        if once:
            return 0 if ok and settled else 1
        print(f"\nRunning. Webhook URL {stack.receiver_url}; logs in {stack.logs}. Ctrl-C stops.",
              flush=True)
        while all(p.poll() is None for p in stack.procs.values()):
            time.sleep(1)
        return 1
    except KeyboardInterrupt:
        return 0
    except subprocess.CalledProcessError as exc:
        print(f"step failed: {exc.cmd}\n{exc.stdout or ''}\n{exc.stderr or ''}", file=sys.stderr)
        return 1
    finally:
        say("stopping everything")
        stack.stop_all()


__all__ = ["read_topic", "run_demo", "summarize"]
