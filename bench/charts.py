"""Charts for BENCHMARKS.md from the benches' sample files (PNG, matplotlib's Agg backend).

    .venv/bin/python bench/charts.py --ingest .run/bench/webhook_ingest.json \\
        --latency .run/bench/latency.json --outdir bench/charts

- ingest_throughput.png: records acknowledged by Kafka a second during the ingest bench's
  acked runs, one line per receiver process count (from the end offsets of front.events);
- latency_cdf.png: distribution of webhook -> Task latency per rate (CDF, log time axis),
  p50/p99/p99.9 marked;
- latency_lag.png: per rate, the consumer-group lag of the worker and the sink every second,
  and each event's latency against its send time (a backlog shows as a rising line).

A file missing is skipped: each chart needs only its own bench.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _stamp(fig: Any, data: dict[str, Any]) -> None:
    fig.text(0.99, 0.005, f"{data['command']}  ({data['date'][:10]}, {data['cores']} cores)",
             ha="right", va="bottom", fontsize=7, color="0.4")


def ingest_throughput(data: dict[str, Any], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ceilings = {r["processes"]: r.get("ceiling_per_s") for r in data["results"]}
    for run in data["runs"]:
        if run["mode"] != "acked" or not run.get("series"):
            continue
        # Rate over the last second, while wrk was sending.
        end = run["duration_us"] / 1e6
        pts = [(t, n) for t, n in run["series"] if t <= end + 0.25]
        xs, ys = [], []
        for (t0, n0), (t1, n1) in zip(pts, pts[2:], strict=False):
            if t1 > t0:
                xs.append(t1)
                ys.append((n1 - n0) / (t1 - t0))
        line = ax.plot(xs, ys, label=f"{run['processes']} process(es): {run['ok_per_s']:,.0f}/s")
        ceiling = ceilings.get(run["processes"])
        if ceiling:
            ax.axhline(ceiling, ls=":", color=line[0].get_color(), lw=1,
                       label=f"ceiling, {run['processes']} (no produce): {ceiling:,.0f}/s")
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("webhooks acknowledged by Kafka / s")
    ax.set_title("Webhook ingest: 2xx after acks=all, by receiver processes (goal: 5,000/s)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _stamp(fig, data)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def latency_cdf(data: dict[str, Any], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for run in data["runs"]:
        lat = sorted(ms for _, ms in run["events"])
        if not lat:
            continue
        n = len(lat)
        line = ax.plot(lat, [(i + 1) / n for i in range(n)],
                       label=f"{run['rate']:g}/s: p50 {run['p50_ms']:,.0f}, p99 {run['p99_ms']:,.0f},"
                             f" p99.9 {run['p999_ms']:,.0f} ms ({run['accepted']:,} of"
                             f" {run['sent']:,} accepted)")
        for q in ("p50_ms", "p99_ms", "p999_ms"):
            ax.axvline(run[q], color=line[0].get_color(), ls=":", lw=0.8)
    ax.axvline(1000, color="red", lw=0.8, alpha=0.6, label="goal: p99 < 1 s")
    ax.set_xscale("log")
    ax.set_xlabel("webhook due -> Task stored in the Salesforce emulator (ms, log)")
    ax.set_ylabel("share of events")
    sf = data["salesforce_latency_ms"]
    ax.set_title(f"Latency distribution (Salesforce latency {sf['before']:g} + {sf['after']:g} ms,"
                 f" sink batch wait {data['sink_batch_wait_ms']} ms)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    _stamp(fig, data)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def latency_lag(data: dict[str, Any], out: Path) -> None:
    runs = data["runs"]
    fig, axes = plt.subplots(2, len(runs), figsize=(5 * len(runs), 6.5), squeeze=False,
                             sharex="col")
    names = data["groups"]
    for col, run in enumerate(runs):
        top, bottom = axes[0][col], axes[1][col]
        lag = run["lag"]
        keys = sorted({k for s in lag for k in s if "|" in k})
        for group, label in names.items():
            mine = [k for k in keys if k.startswith(f"{group}|")]
            for key in mine or [group]:
                ys = [s.get(key, 0) for s in lag]
                if mine and not any(ys):
                    continue  # a topic of the group that saw nothing in this run
                topic = key.split("|", 1)[1] if "|" in key else ""
                top.plot([s["t"] for s in lag], ys,
                         label=f"{label} lag{f' ({topic})' if topic else ''}")
        top.axvline(run["duration_s"], color="0.5", ls="--", lw=0.8, label="last webhook due")
        top.set_title(f"{run['rate']:g} webhooks/s for {run['duration_s']:g} s")
        top.set_ylabel("records behind (committed offsets)")
        top.grid(alpha=0.3)
        top.legend(fontsize=8)
        ev = run["events"]
        bottom.scatter([t for t, _ in ev], [ms / 1000 for _, ms in ev], s=1, alpha=0.3)
        bottom.axhline(1.0, color="red", lw=0.8, alpha=0.6)
        bottom.set_xlabel("seconds since the first webhook")
        bottom.set_ylabel("latency of the event sent then (s)")
        bottom.grid(alpha=0.3)
    _stamp(fig, data)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ingest", type=Path, default=Path(".run/bench/webhook_ingest.json"))
    ap.add_argument("--latency", type=Path, default=Path(".run/bench/latency.json"))
    ap.add_argument("--outdir", type=Path, default=Path("bench/charts"))
    args = ap.parse_args()
    args.outdir.mkdir(parents=True, exist_ok=True)
    made = []
    if args.ingest.exists():
        ingest_throughput(json.loads(args.ingest.read_text()), args.outdir / "ingest_throughput.png")
        made.append("ingest_throughput.png")
    if args.latency.exists():
        data = json.loads(args.latency.read_text())
        latency_cdf(data, args.outdir / "latency_cdf.png")
        latency_lag(data, args.outdir / "latency_lag.png")
        made += ["latency_cdf.png", "latency_lag.png"]
    print(f"charts in {args.outdir}: {', '.join(made) or 'none (no bench data)'}")


if __name__ == "__main__":
    main()
