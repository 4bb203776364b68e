"""CLI: ``python -m emulators.front --host 127.0.0.1 --port N --state-dir DIR``.

Serves plain HTTP by default (clients take Front's base URL from configuration), or HTTPS
with ``--tls`` using the project CA in the state dir. Prints one
``front emulator ready on http://HOST:PORT`` line once listening. With ``--persist`` the
company is loaded from ``DIR/front-state.json`` at start and saved there on SIGTERM/SIGINT;
without it every start is a clean company.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emulators._server import serve
from emulators.front._app import create_app
from emulators.front._store import DEFAULT_TOKEN, FrontState
from emulators.front._world import seed
from emulators.tls import ensure_ca

STATE_FILE = "front-state.json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m emulators.front",
                                description="Local Front Core API emulator.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8095, help="0 picks a free port")
    p.add_argument("--state-dir", type=Path, required=True,
                   help="holds the state file (with --persist) and, with --tls, the CA")
    p.add_argument("--persist", action="store_true",
                   help=f"load STATE_DIR/{STATE_FILE} on start, save it on shutdown")
    p.add_argument("--token", default=None,
                   help=f"accepted API token (default {DEFAULT_TOKEN!r}; kept across --persist)")
    p.add_argument("--rpm", type=int, default=None, help="company rate budget (default 100)")
    p.add_argument("--company", default="Acme", help="company name for a fresh state")
    p.add_argument("--base-url", default=None,
                   help="base of _links/_pagination URLs (default: the URL clients used)")
    p.add_argument("--tls", action="store_true", help="serve HTTPS with DIR/ca.pem's CA")
    p.add_argument("--seed-defaults", action="store_true",
                   help="on a fresh state, add two teammates, an inbox and two tags")
    p.add_argument("--log-level", default="warning")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    state_dir: Path = args.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    state_path = state_dir / STATE_FILE
    if args.persist and state_path.exists():
        state = FrontState.load(state_path)
    else:
        state = FrontState(token=args.token or DEFAULT_TOKEN, company_name=args.company)
        if args.seed_defaults:
            seed(state, {"defaults": True})
    tls = ensure_ca(state_dir) if args.tls else None
    app = create_app(state, token=args.token, rpm=args.rpm,
                     persist_path=state_path if args.persist else None, base_url=args.base_url)

    def ready(base_url: str) -> None:
        suffix = f" (ca: {tls.ca_cert})" if tls else ""
        print(f"front emulator ready on {base_url}{suffix}", flush=True)

    serve(app, args.host, args.port, tls, on_ready=ready, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
