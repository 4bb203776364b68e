"""``frontforce page``: a status page for a person, served by frontforce itself.

One Starlette app (as the receiver), no build step, no CDN:

- ``GET /`` the page, rendered on the server from the latest sample (it reads fine without
  JavaScript); a few lines of JS poll ``/api/status`` and re-render the figures;
- ``GET /api/status`` the latest sample as JSON: ``frontforce.ops.status.collect(settings)``
  (health, lag per group and partition, records/s, Salesforce quota, Front headroom,
  dead-letter depth, last errors) plus ``dead_letters``, the newest dead letters with their
  ids and re-drives (``frontforce.ops.dlq``), and ``page`` (when it was sampled, how long
  that took, the sampler's error if any);
- ``POST /api/deadletters/{id}/redrive`` re-drives that one dead letter
  (``frontforce.ops.dlq.redrive``: once, however often it is clicked); the request must
  carry the header ``X-Frontforce: redrive``, which a cross-site form cannot send;
- ``GET /metrics`` (Prometheus), ``GET /healthz``.

One sampler thread refreshes the sample every ``refresh_s`` (a sample takes about a second:
``collect`` measures rates over one), so any number of open pages costs the same Kafka and
Salesforce reads: one ``/limits`` call (and its login) per sample.
"""

from __future__ import annotations

import html
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from frontforce.config import Settings
from frontforce.errors import FatalError
from frontforce.ops import dlq

log = structlog.get_logger("frontforce.page")

Collect = Callable[[Settings], dict[str, Any]]
DEAD_LETTERS_SHOWN = 50


def _default_collect(settings: Settings) -> dict[str, Any]:
    from frontforce.ops.status import collect

    return collect(settings)


class Sampler:
    """The latest sample, refreshed by one daemon thread; ``refresh()`` asks for a new one
    now (after a re-drive)."""

    def __init__(self, settings: Settings, collect: Collect | None = None, refresh_s: float = 2.0) -> None:
        self.settings = settings
        self.collect = collect or _default_collect
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.snapshot: dict[str, Any] = {"page": {"sampled_at": None, "took_s": None,
                                                  "error": "no sample yet"}, "dead_letters": []}
        self._thread = threading.Thread(target=self._run, name="status-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def refresh(self) -> None:
        self._wake.set()

    def wait_ready(self, timeout_s: float) -> bool:
        return self._ready.wait(timeout_s)

    def get(self) -> dict[str, Any]:
        with self._lock:
            return self.snapshot

    def sample_once(self) -> dict[str, Any]:
        started = time.monotonic()
        errors = []
        try:
            data = dict(self.collect(self.settings))
        except Exception as exc:  # noqa: BLE001 - the page shows it instead of dying
            data = {}
            errors.append(f"status: {type(exc).__name__}: {exc}")
        try:
            letters = dlq.list_dead_letters(self.settings, timeout_s=10.0)
            data["dead_letters"] = [d.summary() for d in reversed(letters[-DEAD_LETTERS_SHOWN:])]
            data["dead_letters_pending"] = sum(1 for d in letters if d.redriven is None)
        except Exception as exc:  # noqa: BLE001
            data["dead_letters"] = []
            errors.append(f"dead letters: {type(exc).__name__}: {exc}")
        data["page"] = {"sampled_at": time.time(), "took_s": round(time.monotonic() - started, 2),
                        "error": "; ".join(errors) or None}
        return data

    def _run(self) -> None:
        while not self._stop.is_set():
            data = self.sample_once()
            with self._lock:
                self.snapshot = data
            self._ready.set()
            self._wake.wait(self.refresh_s)
            self._wake.clear()


# -- rendering -----------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _quota(data: dict[str, Any]) -> tuple[str, float, str]:
    sf = data.get("salesforce") or {}
    daily = sf.get("daily_api_requests")
    if not daily:
        return "unknown", 0.0, _e(sf.get("error") or "not read yet")
    pct = float(daily.get("used_pct") or 0.0)
    return (f"{daily['used']} / {daily['max']} ({pct:.1f}%)", pct,
            f"the sink pauses at {_num(sf.get('sink_share_pct'))}%")


def _front(data: dict[str, Any]) -> str:
    front = data.get("front") or {}
    rl = front.get("rate_limit")
    if not front.get("configured"):
        return "not configured"
    if not rl:
        return _e(front.get("error") or "not read yet")
    return f"{rl['remaining']} / {rl['limit']} left, resets in {_num(rl.get('reset_in_s'))} s"


def _health(data: dict[str, Any]) -> tuple[str, list[str]]:
    problems = []
    for key in ("kafka", "salesforce", "front", "deadletter", "audit"):
        err = (data.get(key) or {}).get("error")
        if err:
            problems.append(f"{key}: {err}")
    for gid, g in (data.get("groups") or {}).items():
        if g.get("error"):
            problems.append(f"group {gid}: {g['error']}")
        elif g.get("state") not in (None, "Stable") or not g.get("members"):
            problems.append(f"group {gid} ({g.get('role')}): {g.get('state') or 'no state'}, "
                            f"{g.get('members') or 0} member(s)")
    pending = data.get("dead_letters_pending")
    if pending:
        problems.append(f"{pending} dead letter(s) not re-driven")
    page_err = (data.get("page") or {}).get("error")
    if page_err:
        problems.append(page_err)
    if not data.get("groups") and not problems:
        return "unknown", ["no sample yet"]
    return ("ok" if data.get("ok") and not problems else "attention"), problems


def _group_rows(data: dict[str, Any]) -> str:
    rows = []
    for gid, g in sorted((data.get("groups") or {}).items()):
        rows.append(
            f'<tr data-group="{_e(gid)}"><td>{_e(g.get("role"))}</td><td>{_e(gid)}</td>'
            f'<td>{_e(g.get("state") or "–")}</td><td class="n">{_num(g.get("members"))}</td>'
            f'<td class="n lag">{_num(g.get("lag"))}</td>'
            f'<td class="n">{_num(g.get("records_per_s"))}</td></tr>')
        for p in g.get("partitions") or []:
            if p.get("lag"):
                rows.append(f'<tr class="sub"><td></td><td>{_e(p["topic"])}[{p["partition"]}]</td>'
                            f'<td>committed {_num(p.get("committed"))} / end {p["end"]}</td><td></td>'
                            f'<td class="n">{p["lag"]}</td><td class="n">{_num(p.get("records_per_s"))}</td></tr>')
    return "".join(rows) or '<tr><td colspan="6">no sample yet</td></tr>'


def _topic_rows(data: dict[str, Any]) -> str:
    rows = [f'<tr><td>{_e(t)}</td><td class="n">{v.get("records")}</td>'
            f'<td class="n">{_num(v.get("in_per_s"))}</td></tr>'
            for t, v in sorted((data.get("topics") or {}).items())]
    return "".join(rows) or '<tr><td colspan="3">no sample yet</td></tr>'


def _dead_letter_rows(data: dict[str, Any]) -> str:
    rows = []
    for d in data.get("dead_letters") or []:
        done = d.get("redriven")
        action = (f'<span class="done">re-driven to {_e(done["to"])}</span>' if done else
                  f'<button class="redrive" data-id="{_e(d["id"])}">Re-drive</button>')
        rows.append(f'<tr data-id="{_e(d["id"])}"><td>{_e(d["id"])}</td><td>{_e(d["age"])}</td>'
                    f'<td>{_e(d["stage"])}</td><td>{_e(d["original"])}</td>'
                    f'<td class="reason">{_e(d["reason"][:300])}</td><td>{action}</td></tr>')
    return "".join(rows) or '<tr><td colspan="6">none</td></tr>'


def _error_rows(data: dict[str, Any]) -> str:
    rows = [f'<tr><td>{_e(a.get("at"))}</td><td>{_e(a.get("target"))}</td><td>{_e(a.get("operation"))}</td>'
            f'<td>{_e(a.get("outcome"))}</td><td class="reason">{_e((a.get("error") or "")[:300])}</td></tr>'
            for a in (data.get("audit") or {}).get("failures") or []]
    return "".join(rows) or '<tr><td colspan="5">none</td></tr>'


def figures(data: dict[str, Any]) -> dict[str, str]:
    """The page's figures as text, by element id: what the server renders and what the
    JavaScript puts back after each poll (one rendering, in Python)."""
    health, problems = _health(data)
    quota_text, quota_pct, quota_note = _quota(data)
    dl = data.get("deadletter") or {}
    rate = sum(float(g.get("records_per_s") or 0) for g in (data.get("groups") or {}).values())
    return {
        "health": health, "problems": "; ".join(problems) or "none",
        "lag-total": _num(data.get("lag_total")), "records-per-s": f"{rate:.1f}",
        "dl-depth": _num(dl.get("depth")), "dl-pending": _num(data.get("dead_letters_pending")),
        "sf-quota": quota_text, "sf-quota-pct": f"{quota_pct:.1f}", "sf-quota-note": quota_note,
        "front-headroom": _front(data),
        "sampled-at": (time.strftime("%H:%M:%S", time.localtime(data["page"]["sampled_at"]))
                       if (data.get("page") or {}).get("sampled_at") else "–"),
    }


def tables(data: dict[str, Any]) -> dict[str, str]:
    """The tables' rows as HTML, by tbody id."""
    return {"groups": _group_rows(data), "topics": _topic_rows(data),
            "dead-letters": _dead_letter_rows(data), "errors": _error_rows(data)}


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
.cards{display:flex;flex-wrap:wrap;gap:1em}.card{background:#fff;border:1px solid #ddd;
border-radius:6px;padding:.7em 1em;min-width:11em}.card b{display:block;font-size:1.6em}
.ok{color:#17702e}.attention{color:#b35c00}.unknown{color:#666}
table{border-collapse:collapse;background:#fff;width:100%}td,th{border:1px solid #e2e2e2;
padding:.25em .5em;text-align:left;vertical-align:top}td.n{text-align:right}
tr.sub td{color:#666;font-size:.9em}.reason{font-family:monospace;font-size:.9em}
meter{width:12em;height:1.1em}.done{color:#17702e}#redrive-result{margin:.5em 0;font-family:monospace}
"""

# Polls the JSON, puts back the figures and tables the server rendered (``figures`` and
# ``tables``, sent in the JSON as ``_render``), and posts re-drives.
_JS = """
const $ = (id) => document.getElementById(id);
async function poll() {
  try {
    const r = await fetch('api/status', {cache: 'no-store'});
    const d = await r.json();
    for (const [id, text] of Object.entries(d._render.figures)) { const el = $(id); if (el) el.textContent = text; }
    for (const [id, rows] of Object.entries(d._render.tables)) { const el = $(id); if (el) el.innerHTML = rows; }
    $('health').className = d._render.figures.health; $('sf-meter').value = d._render.figures['sf-quota-pct'];
  } catch (e) { $('problems').textContent = 'page: ' + e; }
}
document.addEventListener('click', async (ev) => {
  const b = ev.target.closest('button.redrive'); if (!b) return;
  b.disabled = true; b.textContent = 'Re-driving…';
  const r = await fetch('api/deadletters/' + encodeURIComponent(b.dataset.id) + '/redrive',
                        {method: 'POST', headers: {'X-Frontforce': 'redrive'}});
  const d = await r.json();
  $('redrive-result').textContent = (d.lines || [d.error]).join(' | ');
  poll();
});
setInterval(poll, POLL_MS);
"""


def render_page(data: dict[str, Any], poll_ms: int) -> str:
    f = figures(data)
    t = tables(data)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>frontforce status</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<h1>frontforce <span id="health" class="{_e(f['health'])}">{_e(f['health'])}</span></h1>
<div>sampled at <span id="sampled-at">{_e(f['sampled-at'])}</span>;
 problems: <span id="problems">{_e(f['problems'])}</span></div>
<h2>Pipeline</h2>
<div class="cards">
 <div class="card">lag (records)<b id="lag-total">{_e(f['lag-total'])}</b></div>
 <div class="card">throughput (records/s)<b id="records-per-s">{_e(f['records-per-s'])}</b></div>
 <div class="card">dead letters<b id="dl-depth">{_e(f['dl-depth'])}</b>
  not re-driven: <span id="dl-pending">{_e(f['dl-pending'])}</span></div>
 <div class="card">Salesforce daily API<b id="sf-quota">{_e(f['sf-quota'])}</b>
  <meter id="sf-meter" min="0" max="100" low="50" high="80" optimum="0" value="{_e(f['sf-quota-pct'])}"></meter>
  <div id="sf-quota-note">{_e(f['sf-quota-note'])}</div></div>
 <div class="card">Front rate limit<b id="front-headroom">{_e(f['front-headroom'])}</b></div>
</div>
<h2>Consumer groups</h2>
<table><thead><tr><th>role</th><th>group / partition</th><th>state</th><th>members</th><th>lag</th>
<th>records/s</th></tr></thead>
<tbody id="groups">{t['groups']}</tbody></table>
<h2>Topics</h2>
<table><thead><tr><th>topic</th><th>records</th><th>in/s</th></tr></thead>
<tbody id="topics">{t['topics']}</tbody></table>
<h2>Dead letters</h2>
<div id="redrive-result"></div>
<table><thead><tr><th>id</th><th>age</th><th>stage</th><th>original</th><th>reason</th><th></th></tr></thead>
<tbody id="dead-letters">{t['dead-letters']}</tbody></table>
<h2>Last errors (audit)</h2>
<table><thead><tr><th>at</th><th>target</th><th>operation</th><th>outcome</th><th>error</th></tr></thead>
<tbody id="errors">{t['errors']}</tbody></table>
<script>{_JS.replace("POLL_MS", str(int(poll_ms)))}</script>
</body></html>"""


def create_page_app(settings: Settings, sampler: Sampler, poll_ms: int = 2000) -> Starlette:
    async def page(request: Request) -> Response:
        return HTMLResponse(render_page(sampler.get(), poll_ms))

    async def api_status(request: Request) -> Response:
        data = sampler.get()
        body = json.dumps({**data, "_render": {"figures": figures(data), "tables": tables(data)}},
                          default=str)
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})

    async def redrive(request: Request) -> Response:
        if request.headers.get("x-frontforce") != "redrive":
            return JSONResponse({"error": "missing X-Frontforce: redrive header"}, status_code=403)
        dead_letter_id = request.path_params["dead_letter_id"]
        try:
            dlq.parse_id(dead_letter_id)
            report = await run_in_threadpool(dlq.redrive, settings, ids=[dead_letter_id],
                                             by="status page")
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except FatalError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        sampler.refresh()
        log.info("re-drive from the status page", dead_letter=dead_letter_id, **report.as_dict())
        status = 404 if report.unknown else 200
        return JSONResponse({**report.as_dict(), "lines": report.lines()}, status_code=status)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "sampled_at": sampler.get()["page"]["sampled_at"]})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[
        Route("/", page, methods=["GET"]),
        Route("/api/status", api_status, methods=["GET"]),
        Route("/api/deadletters/{dead_letter_id}/redrive", redrive, methods=["POST"]),
        Route("/healthz", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ])


def run_page(settings: Settings, host: str, port: int, refresh_s: float = 5.0) -> None:
    import uvicorn

    sampler = Sampler(settings, refresh_s=refresh_s).start()
    log.info("status page", url=f"http://{host}:{port}/")
    try:
        uvicorn.run(create_page_app(settings, sampler, poll_ms=int(refresh_s * 1000)),
                    host=host, port=port, log_level="warning")
    finally:
        sampler.stop()
