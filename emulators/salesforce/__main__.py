"""CLI: ``python -m emulators.salesforce --host 127.0.0.1 --port 8443 --state-dir DIR``.

Generates (or reuses) the local CA in the state dir, serves HTTPS and the Pub/Sub API (gRPC
over TLS, same certificate, ``--pubsub-port``, default 7443 as Salesforce's endpoint), and
prints ``salesforce emulator ready on https://HOST:PORT (ca: PATH)`` once listening, then
``salesforce pubsub api ready on HOST:PORT`` (unless ``--pubsub-port -1``).
With ``--persist`` the org is loaded from ``DIR/salesforce-state.json`` at start and saved
there on SIGTERM/SIGINT; without it every start is a clean org.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emulators._server import serve
from emulators.salesforce._app import create_app
from emulators.salesforce._pubsub import DEFAULT_KEEPALIVE_S, PubSubServer
from emulators.salesforce._settings import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from emulators.salesforce._store import OrgState
from emulators.tls import ensure_ca

STATE_FILE = "salesforce-state.json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m emulators.salesforce",
                                description="Local Salesforce REST API emulator (HTTPS).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8443, help="0 picks a free port")
    p.add_argument("--state-dir", type=Path, required=True,
                   help="holds the generated CA/server cert and, with --persist, the org")
    p.add_argument("--persist", action="store_true",
                   help=f"load STATE_DIR/{STATE_FILE} on start, save it on shutdown")
    p.add_argument("--daily-limit", type=int, default=None,
                   help="daily API request allocation (default 15000)")
    p.add_argument("--page-size", type=int, default=None, help="query page size (default 2000)")
    p.add_argument("--session-timeout", type=float, default=None,
                   help="session idle timeout in seconds (default 7200)")
    p.add_argument("--no-duplicate-rules", dest="duplicate_rules", action="store_false",
                   default=None, help="disable the standard Lead/Contact duplicate rules")
    p.add_argument("--cdc-retention-hours", type=float, default=None,
                   help="change-event retention in org hours (default 72)")
    p.add_argument("--cdc-delivery-limit", type=int, default=None,
                   help="change events delivered per client id per rolling 24 h (default 25000)")
    p.add_argument("--cdc-entity-limit", type=int, default=None,
                   help="max entities selectable through per-entity CDC channels (default 5, "
                        "0 = unlimited)")
    p.add_argument("--pubsub-port", type=int, default=7443,
                   help="Pub/Sub API (gRPC, TLS) port; 0 picks a free port, -1 serves none "
                        "(default 7443)")
    p.add_argument("--pubsub-keepalive", type=float, default=DEFAULT_KEEPALIVE_S,
                   help="seconds without events before a Subscribe stream gets an empty "
                        f"keepalive FetchResponse (default {DEFAULT_KEEPALIVE_S:g}, as Salesforce)")
    p.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    p.add_argument("--client-secret", default=DEFAULT_CLIENT_SECRET)
    p.add_argument("--jwt-consumer-key", default=None,
                   help="expected JWT iss (default: --client-id)")
    p.add_argument("--jwt-public-key", type=Path, default=None,
                   help="PEM public key or certificate verifying JWT assertions; without it "
                        "signatures are not checked")
    p.add_argument("--instance-url", default=None,
                   help="instance_url returned by the token endpoint (default: request URL)")
    p.add_argument("--log-level", default="warning")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    state_dir: Path = args.state_dir
    tls = ensure_ca(state_dir)
    state_path = state_dir / STATE_FILE
    state = OrgState.load(state_path) if args.persist and state_path.exists() else OrgState()
    app = create_app(
        state,
        client_id=args.client_id,
        client_secret=args.client_secret,
        jwt_consumer_key=args.jwt_consumer_key,
        jwt_public_key=args.jwt_public_key.read_text() if args.jwt_public_key else None,
        instance_url=args.instance_url,
        persist_path=state_path if args.persist else None,
        daily_limit=args.daily_limit,
        page_size=args.page_size,
        session_timeout=args.session_timeout,
        duplicate_rules=args.duplicate_rules,
        cdc_retention_hours=args.cdc_retention_hours,
        cdc_delivery_limit=args.cdc_delivery_limit,
        cdc_entity_limit=args.cdc_entity_limit,
    )

    pubsub = None
    if args.pubsub_port >= 0:
        pubsub = PubSubServer(state, tls, args.host, args.pubsub_port,
                              keepalive_s=args.pubsub_keepalive).start()

    def ready(base_url: str) -> None:
        print(f"salesforce emulator ready on {base_url} (ca: {tls.ca_cert})", flush=True)
        if pubsub is not None:
            print(f"salesforce pubsub api ready on {pubsub.target}", flush=True)

    try:
        serve(app, args.host, args.port, tls, on_ready=ready, log_level=args.log_level)
    finally:
        if pubsub is not None:
            pubsub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
