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
app.add_typer(sink_app, name="sink")
app.add_typer(load_app, name="load")

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
    """Create the pipeline's topics and register their schemas (BACKWARD_TRANSITIVE)."""
    from frontforce.kafka import ensure_topics
    from frontforce.serialization import Serde

    s = _settings(config)
    created = ensure_topics(s)
    ids = Serde(s).register_all()
    typer.echo(f"topics created: {len(created)}; subjects registered: "
               + ", ".join(f"{k}={v}" for k, v in sorted(ids.items())))


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


@load_app.command("salesforce")
def load_salesforce(config: Path = ConfigOpt) -> None:
    """Initial load: SOQL snapshot of synced objects onto salesforce.changes."""
    from frontforce.salesforce import connect
    from sources.salesforce import load_snapshot

    s = _settings(config)
    counts = load_snapshot(s, connect(s.salesforce))
    typer.echo("loaded: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


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
