"""The ``frontforce`` command."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
    from frontforce.logs import setup

    setup(os.environ.get("FRONTFORCE_LOG_LEVEL", "INFO"))
    try:
        return load_settings(path)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


@app.command("check-config")
def check_config(config: Path = ConfigOpt) -> None:
    """Validate the configuration file and report every problem with its line."""
    _settings(config)
    typer.echo(f"{config}: ok")


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
def receiver(config: Path = ConfigOpt) -> None:
    """Run the Front webhook receiver."""
    from sources.front._receiver import run_receiver

    run_receiver(_settings(config))


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


def main() -> None:
    app()
