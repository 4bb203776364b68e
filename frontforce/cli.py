"""The ``frontforce`` command."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer

from frontforce.config import Settings, load_settings
from frontforce.errors import ConfigError, FatalError

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="frontforce: Front <-> Salesforce on Kafka.")
sink_app = typer.Typer(no_args_is_help=True, help="Run a sink.")
load_app = typer.Typer(no_args_is_help=True, help="Load a snapshot into Kafka.")
source_app = typer.Typer(no_args_is_help=True, help="Run a source.")
app.add_typer(sink_app, name="sink")
app.add_typer(load_app, name="load")
app.add_typer(source_app, name="source")
schemas_app = typer.Typer(no_args_is_help=True, help="Schema contracts in the registry.")
app.add_typer(schemas_app, name="schemas")
backfill_app = typer.Typer(no_args_is_help=True, help="Read history from an API into Kafka.")
app.add_typer(backfill_app, name="backfill")

ConfigOpt = typer.Option(
    Path(os.environ.get("FRONTFORCE_CONFIG", "frontforce.yaml")), "--config", "-c",
    help="Configuration file (env FRONTFORCE_CONFIG).",
)


def _settings(path: Path) -> Settings:
    from frontforce.logs import setup, use_privacy

    setup(os.environ.get("FRONTFORCE_LOG_LEVEL", "INFO"))
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    use_privacy(settings.privacy)  # the deployment's mask patterns hold in logs too
    return settings


config_app = typer.Typer(no_args_is_help=True, help="The configuration file.")
app.add_typer(config_app, name="config")


@config_app.command("check")
def config_check(
    config: Path = ConfigOpt,
    offline: bool = typer.Option(False, "--offline", help="Only the file: no login, no API call."),
) -> None:
    """Validate the file (every problem with its line), then, unless --offline, the
    credentials (Salesforce login, Front token with GET /me) and every mapped field and value
    against Salesforce's describe. Read-only. Exit 2: the file is invalid; 1: a credential or
    mapping problem."""
    s = _settings(config)
    typer.echo(f"{config}: file ok")
    if offline:
        return
    from frontforce.ops.check import check_online

    problems, checked = check_online(s)
    for line in checked:
        typer.echo(f"  ok: {line}")
    for line in problems:
        typer.echo(f"{config}: {line}", err=True)
    if problems:
        typer.echo(f"{len(problems)} problem(s): fix them before starting the pipeline", err=True)
        raise typer.Exit(1)


@app.command("check-config")
def check_config(
    config: Path = ConfigOpt,
    offline: bool = typer.Option(False, "--offline", help="Only the file: no login, no API call."),
) -> None:
    """Alias of `config check`."""
    config_check(config, offline)


@app.command()
def setup(config: Path = ConfigOpt) -> None:
    """Create the pipeline's topics and register their schemas (FULL_TRANSITIVE)."""
    from frontforce.contracts import Contracts
    from frontforce.kafka import ensure_topics

    s = _settings(config)
    created = ensure_topics(s)
    ids = Contracts(s).register()
    typer.echo(f"topics created: {len(created)}; subjects registered: "
               + ", ".join(f"{k}={v}" for k, v in sorted(ids.items())))


@schemas_app.command("register")
def schemas_register(config: Path = ConfigOpt) -> None:
    """Register every subject and set its compatibility level."""
    from frontforce.contracts import Contracts, compatibility

    contracts = Contracts(_settings(config))
    for subject, schema_id in contracts.register().items():
        typer.echo(f"{subject}: id {schema_id} ({compatibility(contracts.subjects[subject])})")


@schemas_app.command("check")
def schemas_check(
    config: Path = ConfigOpt,
    schemas_dir: Path | None = typer.Option(None, help="Check these .avsc files instead of ours."),
) -> None:
    """Check local schemas against every registered version; explain what breaks."""
    from frontforce.contracts import Contracts

    bad = 0
    for r in Contracts(_settings(config), schemas_dir=schemas_dir).check():
        typer.echo(f"{r.subject}: {r.status}")
        for reason in r.reasons:
            typer.echo(f"  - {reason}")
        bad += r.status == "incompatible"
    if bad:
        typer.echo(f"{bad} subject(s) incompatible: the registry would refuse them", err=True)
        raise typer.Exit(1)


@schemas_app.command("diff")
def schemas_diff(
    config: Path = ConfigOpt,
    schemas_dir: Path | None = typer.Option(None, help="Diff these .avsc files instead of ours."),
) -> None:
    """Show how local schemas differ from the registry's latest versions."""
    from frontforce.contracts import Contracts

    for subject, text in Contracts(_settings(config), schemas_dir=schemas_dir).diff().items():
        typer.echo(text if text else f"{subject}: no difference")


@app.command()
def receiver(
    config: Path = ConfigOpt,
    workers: int | None = typer.Option(
        None, "--workers", min=1, max=64,
        help="Processes sharing the port (default: receiver.workers in the config)."),
) -> None:
    """Run the Front webhook receiver."""
    from sources.front._receiver import run_receiver

    run_receiver(_settings(config), workers=workers)


# `ingest` is the name operators use; `receiver` stays for existing scripts.
app.command("ingest", help="Run the Front webhook receiver (ingest; alias: receiver).")(receiver)


@app.command()
def worker(config: Path = ConfigOpt) -> None:
    """Run a Faust stream worker (run more in the same group to scale out)."""
    from streams._app import run_worker

    s = _settings(config)
    sys.argv = sys.argv[:1]  # Faust's worker reads argv; it must not see ours
    run_worker(s)


@sink_app.command("salesforce")
def sink_salesforce(config: Path = ConfigOpt) -> None:
    """Run the Salesforce sink."""
    from sinks.salesforce import run_sink

    try:
        run_sink(_settings(config))
    except FatalError as exc:
        typer.echo(f"fatal: {exc}", err=True)
        raise typer.Exit(1) from None


@sink_app.command("front")
def sink_front(config: Path = ConfigOpt) -> None:
    """Run the Front sink."""
    from sinks.front import run_sink as run_front_sink

    try:
        run_front_sink(_settings(config))
    except FatalError as exc:
        typer.echo(f"fatal: {exc}", err=True)
        raise typer.Exit(1) from None


@load_app.command("salesforce")
def load_salesforce(config: Path = ConfigOpt) -> None:
    """Initial load: SOQL snapshot of the synced objects onto salesforce.changes, handed
    over to the change subscription (its replay id taken before the load) without a hole."""
    from sources.salesforce import load_snapshot

    try:
        counts = load_snapshot(_settings(config), progress=sys.stderr.isatty())
    except FatalError as exc:
        typer.echo(f"fatal: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo("loaded: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


@source_app.command("salesforce")
def source_salesforce(config: Path = ConfigOpt) -> None:
    """Salesforce Change Data Capture over the Pub/Sub API onto salesforce.changes (replay
    id on source.cursors); runs the initial load first when there is no cursor yet."""
    from sources.salesforce import run_source

    try:
        run_source(_settings(config))
    except FatalError as exc:
        typer.echo(f"fatal: {exc}", err=True)
        raise typer.Exit(1) from None


def parse_time(text: str) -> float:
    """Epoch seconds, or an ISO 8601 time (UTC when it has no offset)."""
    from datetime import UTC, datetime

    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither epoch seconds nor an ISO 8601 time") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


@backfill_app.command("front")
def backfill_front(
    since: str = typer.Option(..., help="Start of the window: ISO 8601 or epoch seconds."),
    until: str | None = typer.Option(None, help="End of the window (default: now)."),
    config: Path = ConfigOpt,
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Page Front's Events API over a time window into front.events (resumable: run the same
    window again after a crash and it continues where the stored events end)."""
    import time

    from sources.front import backfill

    s = _settings(config)
    start, end = parse_time(since), (parse_time(until) if until else time.time())
    if end <= start:
        raise typer.BadParameter("--until must be after --since")
    try:
        r = backfill(s, start, end, progress=progress and sys.stderr.isatty())
    except FatalError as exc:
        typer.echo(f"fatal: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{r.name}: {'already complete' if r.already_done else 'complete'}; "
               f"pages={r.pages} events={r.events} dead_lettered={r.dead_lettered}"
               f"{' (resumed)' if r.resumed else ''}")


@app.command()
def demo(
    once: bool = typer.Option(False, "--once", help="Exit after the summary, stopping everything."),
    messages: int = typer.Option(200, help="Inbound emails to send."),
    senders: int = typer.Option(50, help="Distinct senders."),
    known: int = typer.Option(40, help="Senders that are Salesforce Contacts."),
) -> None:
    """Start the local stack (Kafka, registry, emulators, pipeline), drive a scenario and
    print a summary."""
    from frontforce.demo import run_demo

    raise typer.Exit(run_demo(once=once, messages=messages, senders=senders, known=known))


dlq_app = typer.Typer(no_args_is_help=True,
                      help="The dead-letter topic: list, show and re-drive dead letters.")
app.add_typer(dlq_app, name="dlq")


@dlq_app.command("list")
def dlq_list(
    config: Path = ConfigOpt,
    pending: bool = typer.Option(False, "--pending", help="Only those not re-driven yet."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Every dead letter: id (partition@offset), stage, reason, original topic, age, and
    where it was re-driven to, if it was."""
    import json

    from frontforce.ops.dlq import list_dead_letters

    letters = [d for d in list_dead_letters(_settings(config)) if not (pending and d.redriven)]
    if as_json:
        for d in letters:
            typer.echo(json.dumps(d.summary()))
        return
    typer.echo(f"{'ID':<10} {'AGE':>8}  {'STAGE':<16} {'ORIGINAL':<40} {'REDRIVEN':<9} REASON")
    for d in letters:
        s = d.summary()
        reason = s["reason"] if len(s["reason"]) <= 100 else s["reason"][:99] + "…"
        typer.echo(f"{d.id:<10} {s['age']:>8}  {d.stage:<16} {d.origin:<40} "
                   f"{'yes' if d.redriven else 'no':<9} {reason}")
    typer.echo(f"{len(letters)} dead letter(s)")


@dlq_app.command("show")
def dlq_show(
    dead_letter_id: str = typer.Argument(..., help="partition@offset, as `dlq list` shows."),
    config: Path = ConfigOpt,
) -> None:
    """One dead letter in full, its original key and value decoded when they decode (Avro
    with the original topic's schema, else text or JSON, else hex and base64)."""
    import json

    from frontforce.ops.dlq import show

    try:
        typer.echo(json.dumps(show(_settings(config), dead_letter_id), indent=2, ensure_ascii=False))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    except KeyError:
        typer.echo(f"no dead letter {dead_letter_id}", err=True)
        raise typer.Exit(1) from None


@dlq_app.command("redrive")
def dlq_redrive(
    ids: list[str] = typer.Option([], "--id", help="A dead letter's id (repeatable)."),
    all_: bool = typer.Option(False, "--all", help="Every dead letter not re-driven yet."),
    reason: str | None = typer.Option(None, "--reason",
                                      help="Those whose stage, error class or message contains this."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be sent; send nothing."),
    config: Path = ConfigOpt,
) -> None:
    """Send dead letters' original key and value back to their original topic, each dead
    letter once however often this runs (marker on <deadletter>.redriven, written in the
    same Kafka transaction as the copy)."""
    from frontforce.ops.dlq import redrive

    try:
        report = redrive(_settings(config), ids=ids or None, all_=all_, reason=reason, dry_run=dry_run)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    except FatalError as exc:
        typer.echo(f"fatal: {exc}", err=True)
        raise typer.Exit(1) from None
    for line in report.lines():
        typer.echo(line)
    if report.unknown:
        raise typer.Exit(1)


# ---------------------------------------------------------------- operating it
# up/down/status/replay (frontforce/ops/): plain aligned text a person reads and a script
# can grep; --json where a program reads it.

StateDirOpt = typer.Option(
    None, "--state-dir",
    help="Where `up` keeps the local stack (env FRONTFORCE_UP_STATE; default .run/up in the repo).")


def _up_state(state_dir: Path | None) -> Path:
    from frontforce.ops.up import DEFAULT_STATE

    return state_dir or Path(os.environ.get("FRONTFORCE_UP_STATE") or DEFAULT_STATE)


@app.command()
def up(
    state_dir: Path | None = StateDirOpt,
    free_ports: bool = typer.Option(
        False, "--free-ports",
        help="The first time: pick free ports instead of 9092/8081/8443/8095 (kept afterwards)."),
    as_json: bool = typer.Option(False, "--json", help="Print what is where as JSON."),
) -> None:
    """Start the local stack alone, detached: Kafka, the schema registry, the Salesforce and
    Front emulators, the pipeline's topics and schemas; write a ready-to-use config file.
    Idempotent; `frontforce down` stops it. Start the pipeline yourself with that file."""
    import json

    from frontforce.ops.up import UpError
    from frontforce.ops.up import up as start

    try:
        info = start(_up_state(state_dir), free_ports=free_ports,
                     echo=lambda m: typer.echo(m, err=True))
    except UpError as exc:
        typer.echo(f"up: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    rows = [("kafka bootstrap", info["kafka_bootstrap"]),
            ("schema registry", info["schema_registry_url"]),
            ("salesforce emulator", f"{info['salesforce_url']}  (CA {info['salesforce_ca_file']};"
                                    f" client id {info['salesforce_client_id']})"),
            ("salesforce pub/sub", info["salesforce_pubsub"]),
            ("front emulator", f"{info['front_url']}  (API token {info['front_api_token']})"),
            ("webhook receiver", f"{info['receiver_url']}  (when you run `frontforce ingest`)"),
            ("config", info["config"]),
            ("logs", f"{info['logs']['stack']}, {info['logs']['emulators']}")]
    typer.echo("frontforce local stack is up")
    for k, v in rows:
        typer.echo(f"  {k:<20} {v}")
    typer.echo(f"\n  export FRONTFORCE_CONFIG={info['config']}\n"
               "  frontforce worker & frontforce sink salesforce & frontforce sink front & "
               "frontforce ingest &\n  frontforce status\n  frontforce down")


@app.command()
def down(
    state_dir: Path | None = StateDirOpt,
    purge: bool = typer.Option(False, "--purge", help="Also delete the stack's data and config."),
) -> None:
    """Stop exactly what `frontforce up` started (emulators, registry, Kafka)."""
    from frontforce.ops.up import UpError
    from frontforce.ops.up import down as stop

    try:
        stopped = stop(_up_state(state_dir), purge=purge)
    except UpError as exc:
        typer.echo(f"down: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo("stopped: " + ", ".join(stopped) if stopped else "nothing was running")
    if purge:
        typer.echo(f"deleted {_up_state(state_dir)}")


@app.command()
def status(
    config: Path = ConfigOpt,
    as_json: bool = typer.Option(False, "--json", help="Print frontforce.ops.status.collect()'s dict."),
    sample: float = typer.Option(1.0, min=0.1, help="Seconds between the two offset samples (rates)."),
    last: int = typer.Option(5, min=0, help="How many dead letters and audit failures to show."),
) -> None:
    """Lag per consumer group and partition, records a second, Salesforce API quota, Front
    rate-limit headroom, dead-letter depth and the last errors. Exit 1 when Kafka cannot be
    read."""
    import json

    from frontforce.ops.status import collect

    s = _settings(config)
    data = collect(s, sample_s=sample, last=last)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        for line in _render_status(data):
            typer.echo(line)
    if data["kafka"]["error"]:
        raise typer.Exit(1)


def _render_status(d: dict[str, Any]) -> list[str]:
    def n(v: Any) -> str:
        return "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)

    out = [f"frontforce status at {d['at']}  (kafka {d['kafka']['bootstrap']}, rates over "
           f"{d['sample_s'] or '-'} s){'' if d['ok'] else '  ATTENTION'}"]
    if d["kafka"]["error"]:
        out.append(f"  kafka: ERROR {d['kafka']['error']}")
    out.append("")
    out.append(f"{'group':<34} {'role':<20} {'state':<20} {'members':>7} {'lag':>9} {'rec/s':>9}")
    for gid, g in d["groups"].items():
        state = "(no such group)" if g["state"] == "Dead" else n(g["state"])  # Kafka's word for it
        out.append(f"{gid:<34} {g['role']:<20} {state:<20} {n(g['members']):>7} "
                   f"{n(g['lag']):>9} {n(g['records_per_s']):>9}" + (f"  ERROR {g['error']}" if g["error"] else ""))
    out.append("")
    out.append(f"{'group':<34} {'topic[partition]':<44} {'committed':>10} {'end':>10} {'lag':>8} {'rec/s':>8}")
    for gid, g in d["groups"].items():
        for p in g["partitions"]:
            if p["end"] == 0 and p["committed"] is None:
                continue  # an empty topic the group never read: nothing to say
            out.append(f"{gid:<34} {p['topic'] + '[' + str(p['partition']) + ']':<44} "
                       f"{n(p['committed']):>10} {n(p['end']):>10} {n(p['lag']):>8} {p['records_per_s']:>8}")
    out.append("")
    sf = d["salesforce"]
    q = sf["daily_api_requests"]
    out.append("salesforce API   " + (
        f"{q['used']:,} of {q['max']:,} daily requests used ({q['used_pct']}%), {q['remaining']:,} "
        f"left; the sink pauses at {sf['sink_share_pct']}%" if q else f"ERROR {sf['error']}"))
    fr = d["front"]
    rl = fr["rate_limit"]
    out.append("front API        " + (
        f"{rl['remaining']:,} of {rl['limit']:,} requests left this window (resets in "
        f"{rl['reset_in_s']} s)" if rl else f"ERROR {fr['error']}" if fr["error"]
        else "not configured (no front.api_token)"))
    dl = d["deadletter"]
    out.append(f"dead letters     {n(dl['depth'])} on {dl['topic']}"
               + (f"  ERROR {dl['error']}" if dl["error"] else ""))
    for x in dl["last"]:
        out.append(f"  {x['at']}  {x['stage']}: {x['error_class']}: {x['error_message']}  "
                   f"({x['original_topic']}[{x['original_partition']}]@{x['original_offset']})")
    au = d["audit"]
    out.append(f"audit failures   {len(au['failures'])} in the last {au['scanned']:,} audit records"
               + (f"  ERROR {au['error']}" if au["error"] else ""))
    for x in au["failures"]:
        out.append(f"  {x['at']}  {x['target']} {x['operation']} {x['outcome']}: "
                   f"{x['error'] or x['reason'] or ''}  (command {x['command_id']})")
    return out


def _replay_time(text: str) -> float:
    """``beginning``/``earliest`` (0), ``-2h``/``-30m``/``-1d`` (before now), or what
    ``parse_time`` reads."""
    import re
    import time

    if text.strip().lower() in ("beginning", "earliest"):
        return 0.0
    m = re.fullmatch(r"-(\d+(?:\.\d+)?)([smhd])", text.strip())
    if m:
        return time.time() - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return parse_time(text)


@app.command()
def replay(
    from_: str = typer.Option(..., "--from", help="Re-read from this time: ISO 8601, epoch "
                              "seconds, -2h (before now) or 'beginning'."),
    to: str | None = typer.Option(None, "--to", help="End of the range to count and watch (the "
                                  "groups still read on to the end: the sinks skip what they wrote)."),
    group: list[str] = typer.Option([], "--group", "-g", help="Only this group: worker, "
                                    "sink-salesforce, sink-front or a group id (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print per partition how many records "
                                 "would be re-read; change nothing."),
    wait_stopped: float = typer.Option(0.0, "--wait-stopped", min=0, help="Seconds to wait for "
                                       "running groups to lose their members before refusing."),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="After moving the offsets, show "
                                "a progress bar until the groups have read the range again."),
    timeout: float | None = typer.Option(None, "--timeout", help="Stop following after this many "
                                         "seconds (exit 1)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON (with --dry-run)."),
    config: Path = ConfigOpt,
) -> None:
    """Move the pipeline's consumer groups back to the offsets of --from so they handle that
    range again (idempotent sinks: nothing is written twice). Only while a group has no
    members: stop its processes first. A group is never moved forward."""
    import json

    from frontforce.ops import select_groups
    from frontforce.ops.replay import ReplayRefused, apply, busy_message, plan
    from frontforce.ops.replay import wait_stopped as wait_empty

    s = _settings(config)
    try:
        groups = select_groups(s, group or None)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--group") from None
    start = _replay_time(from_)
    end = _replay_time(to) if to else None
    if end is not None and end <= start:
        raise typer.BadParameter("--to must be after --from", param_hint="--to")
    from_ms, to_ms = int(start * 1000), (int(end * 1000) if end is not None else None)
    if not dry_run:
        told: set[str] = set()

        def waiting(b: dict[str, tuple[str, ...]]) -> None:
            for g in sorted(set(b) - told):
                typer.echo(f"waiting for {g} to have no members ({len(b[g])} now)", err=True)
                told.add(g)

        busy = wait_empty(s, groups, wait_stopped, on_wait=waiting)
        if busy:
            typer.echo(f"replay refused: {busy_message(busy)}", err=True)
            raise typer.Exit(1)
    p = plan(s, groups, from_ms, to_ms)
    if dry_run:
        if as_json:
            typer.echo(json.dumps({"from_ms": from_ms, "to_ms": to_ms,
                                   "rows": [r.as_dict() for r in p.rows]}, indent=2))
            return
        typer.echo(f"dry run: nothing changed. Records each partition would re-read from "
                   f"{_iso_ms(from_ms)}" + (f" to {_iso_ms(to_ms)}" if to_ms is not None else ""))
        typer.echo(f"{'group':<34} {'topic[partition]':<40} {'committed':>10} {'moved to':>10} {'re-read':>9}")
        for r in p.rows:
            typer.echo(f"{r.group:<34} {r.topic + '[' + str(r.partition) + ']':<40} "
                       f"{'-' if r.committed is None else r.committed:>10} "
                       f"{'-' if r.new_offset is None else r.new_offset:>10} {r.reread:>9}")
        for g in groups:
            running = p.members.get(g.group_id)
            typer.echo(f"{g.group_id}: {p.reread(g.group_id)} record(s) to re-read"
                       + (f"; RUNNING ({len(running)} member(s)): stop it before replay" if running else ""))
        return
    try:
        apply(s, p)
    except ReplayRefused as exc:
        typer.echo(f"replay refused: {exc}", err=True)
        raise typer.Exit(1) from None
    for g in groups:
        typer.echo(f"{g.group_id}: moved back to {_iso_ms(from_ms)}: {p.reread(g.group_id)} "
                   "record(s) to re-read")
    if not follow:
        typer.echo("start the pipeline's processes again; they re-read from there")
        return
    raise typer.Exit(_follow_replay(s, p, timeout))


def _iso_ms(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _follow_replay(s: Settings, p: Any, timeout: float | None) -> int:
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from frontforce.ops.replay import progress

    console = Console(stderr=True)
    started = time.monotonic()
    typer.echo("waiting for the groups to read the range again (start their processes if they "
               "are stopped; Ctrl-C stops watching, the replay stays in effect)", err=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    last: list[Any] = []
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            tasks = {g.group_id: bar.add_task(g.group_id, total=None) for g in p.groups}
            for snapshot in progress(s, p):
                last = snapshot
                for x in snapshot:
                    note = "" if x.members or x.caught_up else " (no consumer running)"
                    bar.update(tasks[x.group], completed=x.done, total=max(x.total, 1) if x.total else 1,
                               description=f"{x.group}{note}")
                    if x.total == 0:
                        bar.update(tasks[x.group], completed=1)
                if timeout is not None and time.monotonic() - started > timeout:
                    behind = ", ".join(f"{x.group} {x.done}/{x.total}" for x in snapshot if not x.caught_up)
                    typer.echo(f"not caught up after {timeout:.0f} s: {behind}", err=True)
                    return 1
    except KeyboardInterrupt:
        typer.echo("stopped watching; the groups go on re-reading", err=True)
        return 130
    took = time.monotonic() - started
    typer.echo(f"caught up in {took:.1f} s: "
               + ", ".join(f"{x.group} re-read {x.done}" for x in last))
    return 0


@app.command()
def page(
    config: Path = ConfigOpt,
    port: int = typer.Option(8099, "--port", help="Port of the page."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address it binds (the page can re-drive: keep it private)."),
    refresh: float = typer.Option(
        5.0, "--refresh", min=0.5,
        help="Seconds between two samples (each logs in to Salesforce and reads /limits once)."),
) -> None:
    """A status page: health, throughput, lag, Salesforce quota, Front headroom, dead letters
    with a re-drive button (http://HOST:PORT/, JSON at /api/status)."""
    from frontforce.ops.page import run_page

    run_page(_settings(config), host, port, refresh)


def main() -> None:
    app()
