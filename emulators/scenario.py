"""A realistic scenario for the demo and the tests: a company's Salesforce org with
Accounts and Contacts, and a Front inbox receiving email from them and from strangers.

    python -m emulators.scenario seed --salesforce https://127.0.0.1:8443 --ca CA --known 40
    python -m emulators.scenario send --receiver URL --secret S --messages 200 --senders 50 \
        [--front http://127.0.0.1:8095]   # deliver through the Front emulator

Deterministic for a given --seed, so seed and send agree on who is known.
"""

from __future__ import annotations

import argparse
import json
import random
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx

from emulators.front import WebhookEmitter, inbound_email_event

FIRST = ["Ada", "Bob", "Chen", "Dana", "Emeka", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kai",
         "Lena", "Mo", "Nia", "Oscar", "Priya", "Quinn", "Rosa", "Sven", "Tara"]
LAST = ["Lovelace", "Vance", "Wei", "Scully", "Okafor", "Haddad", "Fring", "Sato", "Petrov",
        "March", "Kealoha", "Berg", "Salah", "Long", "Diaz", "Patel", "Reyes", "Stone"]
COMPANIES = ["vancerefrigeration.com", "dundermifflin.com", "initech.io", "globex.example",
             "umbrella-corp.net", "hooli.xyz", "stark.industries", "wayne-enterprises.org"]
FREE_MAIL = ["gmail.com", "yahoo.com", "outlook.com"]
TOPICS = ["Quote for 40 reams", "Invoice question", "Renewal next quarter", "Login issue",
          "Shipping delay", "Upgrade to Pro tier", "Cancel my order", "API rate limits"]


@dataclass(frozen=True)
class Person:
    first: str
    last: str
    email: str
    domain: str


def people(senders: int, seed: int) -> list[Person]:
    rng = random.Random(seed)
    out = []
    for i in range(senders):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        domain = COMPANIES[i % len(COMPANIES)] if i % 7 else rng.choice(FREE_MAIL)
        out.append(Person(first, last, f"{first}.{last}{i}@{domain}".lower(), domain))
    return out


def seed_salesforce(base_url: str, ca: str, known: list[Person]) -> dict[str, Any]:
    """Create one Account per company domain and a Contact per known person, through the
    emulator's admin API (not the public API: seeding must not spend the org's quota)."""
    ctx = ssl.create_default_context(cafile=ca)
    with httpx.Client(base_url=base_url, verify=ctx, timeout=30) as client:
        domains = sorted({p.domain for p in known if p.domain in COMPANIES})
        accounts = [{"Name": d.split(".")[0].replace("-", " ").title(), "Website": d}
                    for d in domains]
        r = client.post("/__admin/seed", json={"records": {"Account": accounts}})
        r.raise_for_status()
        account_ids = dict(zip(domains, r.json()["ids"]["Account"], strict=True))
        contacts = [{"FirstName": p.first, "LastName": p.last, "Email": p.email,
                     **({"AccountId": account_ids[p.domain]} if p.domain in account_ids else {})}
                    for p in known]
        r = client.post("/__admin/seed", json={"records": {"Contact": contacts}})
        r.raise_for_status()
        contact_ids = r.json()["ids"]["Contact"]
    return {"accounts": len(accounts), "contacts": len(contacts),
            "contact_ids": dict(zip([p.email for p in known], contact_ids, strict=True))}


def send_messages(emitter: WebhookEmitter, senders: list[Person], messages: int, seed: int,
                  run_id: str) -> dict[str, Any]:
    rng = random.Random(seed + 1)
    emitter.register()
    threads: dict[str, str] = {}
    sent_from: dict[str, int] = {}
    now = time.time()
    for i in range(messages):
        person = senders[i] if i < len(senders) else rng.choice(senders)
        topic = rng.choice(TOPICS)
        conv = threads.setdefault(f"{person.email}/{topic}", f"cnv_{run_id}{len(threads):04d}")
        event = inbound_email_event(
            base_url="https://acme.api.frontapp.com",
            event_id=f"evt_{run_id}{i:05d}", conversation_id=conv,
            message_id=f"msg_{run_id}{i:05d}", inbox_id="inb_1ix6",
            sender=person.email, sender_name=f"{person.first} {person.last}",
            to="support@acme.example", subject=topic,
            text=f"Hi, {topic.lower()} - message {i} from {person.first}.",
            emitted_at=round(now - (messages - i), 3),
        )
        status = emitter.deliver(event)
        if not 200 <= status < 300:
            raise RuntimeError(f"webhook {i} not accepted: HTTP {status}")
        sent_from[person.email] = sent_from.get(person.email, 0) + 1
    return {"messages": messages, "deliveries": emitter.delivered,
            "duplicates": emitter.duplicates, "attempts": emitter.attempts,
            "senders": len(sent_from), "sent_from": sent_from}


def send_through_front(front_url: str, receiver: str, secret: str, senders: list[Person],
                       messages: int, seed: int, duplicate_rate: float) -> dict[str, Any]:
    """Play the inbox through the Front emulator: subscribe the receiver as an application
    webhook (Front's challenge handshake included), simulate inbound emails, and let the
    emulator deliver the webhooks, at least once, the way Front does."""
    rng = random.Random(seed + 1)
    with httpx.Client(base_url=front_url, timeout=60) as front:
        r = front.post("/__admin/webhooks", json={
            "url": receiver, "kind": "app", "secret": secret, "duplicate_rate": duplicate_rate})
        r.raise_for_status()
        sub_id = r.json()["id"]
        threads: dict[str, str] = {}
        sent_from: dict[str, int] = {}
        for i in range(messages):
            person = senders[i] if i < len(senders) else rng.choice(senders)
            topic = rng.choice(TOPICS)
            thread = f"{person.email}/{topic}"
            r = front.post("/__admin/simulate/inbound", json={
                "from": person.email, "name": f"{person.first} {person.last}",
                "subject": topic, "text": f"Hi, {topic.lower()} - message {i} from {person.first}.",
                **({"conversation_id": threads[thread]} if thread in threads else {})})
            r.raise_for_status()
            threads.setdefault(thread, r.json()["conversation_id"])
            sent_from[person.email] = sent_from.get(person.email, 0) + 1
        r = front.post("/__admin/webhooks/drain", json={"timeout": 120})
        r.raise_for_status()
        # The inbound messages' webhooks (the pipeline's own tags come back as events too).
        deliveries = [d for d in front.get("/__admin/webhooks").json()["deliveries"]
                      if d["subscription"] == sub_id and d.get("event_type") == "inbound"]
    failed = [d for d in deliveries if not 200 <= int(d["status"]) < 300]
    if failed or len(deliveries) != messages:
        raise RuntimeError(f"{len(failed)} webhooks refused, {len(deliveries)} of {messages} delivered")
    duplicates = sum(1 for d in deliveries if d["duplicated"])
    return {"messages": messages, "deliveries": len(deliveries) + duplicates,
            "duplicates": duplicates, "attempts": sum(int(d["attempts"]) for d in deliveries),
            "senders": len(sent_from), "sent_from": sent_from,
            "conversations": {cid: thread.split("/", 1)[0] for thread, cid in threads.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emulators.scenario")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seed")
    s.add_argument("--salesforce", required=True)
    s.add_argument("--ca", required=True)
    for p in (s, snd := sub.add_parser("send")):
        p.add_argument("--senders", type=int, default=50)
        p.add_argument("--known", type=int, default=40)
        p.add_argument("--seed", type=int, default=42)
    snd.add_argument("--receiver", required=True)
    snd.add_argument("--front", default=None,
                     help="Front emulator URL: deliver through it instead of signing here")
    snd.add_argument("--secret", required=True)
    snd.add_argument("--messages", type=int, default=200)
    snd.add_argument("--duplicate-rate", type=float, default=0.05)
    snd.add_argument("--run-id", default=time.strftime("%H%M%S"))
    args = ap.parse_args(argv)
    everyone = people(args.senders, args.seed)
    known = everyone[: args.known]
    if args.cmd == "seed":
        out = seed_salesforce(args.salesforce, args.ca, known)
        out["known"] = [p.email for p in known]
    elif args.front:
        out = send_through_front(args.front, args.receiver, args.secret, everyone,
                                 args.messages, args.seed, args.duplicate_rate)
    else:
        emitter = WebhookEmitter(args.receiver, args.secret.encode(),
                                 duplicate_rate=args.duplicate_rate)
        try:
            out = send_messages(emitter, everyone, args.messages, args.seed, args.run_id)
        finally:
            emitter.close()
    if args.cmd == "send":
        out["known_senders"] = sum(1 for e in out["sent_from"] if e in {p.email for p in known})
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
