"""The status page at `/`: one server-rendered HTML document with inline SVG, no script, no external request.

It refreshes itself (`<meta http-equiv="refresh">`). Every text that comes from a run, a file or a setting goes
through `esc` (control characters made visible as in `maestro logs`, then HTML-escaped). The Content-Security-
Policy the page is served with allows its one inline style block (by hash) and `data:` images, and nothing
else: no script, no request to any other address, even if some text escaped escaping.
"""

from __future__ import annotations

import base64
import hashlib
import html
from datetime import datetime
from typing import Any

from maestro_py.bus.logview import escape as visible
from maestro_py.bus.tick import TICK_ID_RE
from maestro_py.clock import parse_iso
from maestro_py.ops.runs import COLUMNS, cells  # `maestro runs`' words
from maestro_py.ops.when import local  # the CLI's way: the machine's zone (TZ), named
from maestro_py.policy.budget import amount, never_fits_lines
from maestro_py.serve.chart import budget_bar, legend, spend_chart
from maestro_py.serve.snapshot import LAST_RUNS, Snapshot

REFRESH_SECONDS = 15
NUMERIC = {"attempt", "duration", "exit", "tokens", "cost"}  # right-aligned columns of the runs table
SHORT_TICK = 6  # characters of a tick id the runs table shows (ops/ticks.py SUFFIX: what log names carry)
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1000px}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.4em 0 .4em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%}td,th{padding:3px 8px;text-align:left;border-bottom:1px solid #eee;
vertical-align:top}th{font-weight:600;color:#555}.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37}.bad{color:#c62828;font-weight:600}.banner{background:#c62828;color:#fff;padding:.5em 1em}
.muted{color:#777}.legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:1em}
code{font-size:.95em}#runs td.started,#runs td.tick{white-space:nowrap}
"""
STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CSP = (f"default-src 'none'; style-src 'sha256-{STYLE_HASH}'; img-src data:; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")


def esc(value: object) -> str:
    """Any value as safe HTML text: control and bidi characters made visible, then `<>&"'` escaped."""
    return html.escape(visible(str(value)), quote=True)


def render(snap: Snapshot) -> str:
    """The whole page."""
    sections = [
        _header(snap), _queues(snap), _live(snap), _holds(snap), _breakers(snap), _budget(snap), _chart(snap),
        _runs(snap),
    ]
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="referrer" content="no-referrer"><link rel="icon" href="data:,">'
            f'<title>maestro · {esc(snap.root)}</title><style>{STYLE}</style></head><body>'
            + "".join(sections) + "</body></html>")


def _header(snap: Snapshot) -> str:
    cls = "ok" if snap.health_code == 0 else "bad"
    out = [f"<h1>maestro · {esc(snap.root)}</h1>",
           f'<p id="health" class="{cls}">daemon: {esc(snap.health)}</p>',
           f'<p class="muted">as of {esc(local(snap.now))}; refreshes every {REFRESH_SECONDS} s</p>']
    if snap.emergency_stop is not None:
        out.insert(1, f'<p id="emergency-stop" class="banner">EMERGENCY STOP: {esc(snap.emergency_stop)} — nothing '
                      f"spawns and triggers are refused (503) until <code>maestro resume</code></p>")
    out += [f'<p class="bad">{esc(problem)}</p>' for problem in snap.problems]
    return "".join(out)


def _queues(snap: Snapshot) -> str:
    cells = "".join(f'<td class="num" id="queue-{esc(name)}">{count}</td>' for name, count in snap.queues.items())
    heads = "".join(f"<th>{esc(name)}</th>" for name in snap.queues)
    return f'<h2>Queues</h2><table id="queues"><tr>{heads}</tr><tr>{cells}</tr></table>'


def _live(snap: Snapshot) -> str:
    if not snap.live:
        return '<h2>Live sub-sessions</h2><p id="live" class="muted">none</p>'
    rows = "".join(f"<tr><td>{esc(r.get('cadence'))}</td><td><code>{esc(r.get('tick'))}</code></td>"
                   f"<td class=\"num\">{esc(r.get('attempt'))}</td><td class=\"num\">{esc(r.get('pid'))}</td>"
                   f"<td>{esc(r.get('started'))}</td></tr>" for r in snap.live)
    return ('<h2>Live sub-sessions</h2><table id="live"><tr><th>cadence</th><th>tick</th><th>attempt</th>'
            f"<th>pid</th><th>since</th></tr>{rows}</table>")


def _holds(snap: Snapshot) -> str:
    """Which gate holds each cadence's runs now, in the daemon's own words (`maestro dry-run` says the same)."""
    if not snap.holds:
        return '<h2>Held</h2><p id="holds" class="muted">no gate holds a cadence now</p>'
    rows = "".join(f'<tr class="hold" data-cadence="{esc(h["cadence"])}"><td>{esc(h["cadence"])}</td>'
                   f'<td>{esc(h["gate"])}</td><td class="{"bad" if h["never_fits"] else ""}">{esc(h["why"])}</td>'
                   f'<td>{esc(h["lifts"])}</td></tr>' for h in snap.holds)
    return ('<h2>Held</h2><table id="holds"><tr><th>cadence</th><th>gate</th><th>why</th><th>what lifts it</th></tr>'
            f"{rows}</table>")


def _breakers(snap: Snapshot) -> str:
    if not snap.breakers:
        return '<h2>Breakers and holds</h2><p id="breakers" class="muted">all closed</p>'
    rows = []
    for b in snap.breakers:
        until = b.get("open_until")
        until_text = f"{esc(local(until))} ({_in(until, snap.now)})" if until else "until reset"
        detail = b.get("words") or b.get("last_error") or ""
        rows.append(f'<tr class="breaker" data-name="{esc(b["name"])}"><td>{esc(b["name"])}</td><td>{esc(b["kind"])}'
                    f'</td><td class="bad">{esc(b["state"])}</td><td>{until_text}</td>'
                    f'<td class="num">{esc(b.get("failures"))}</td><td>{esc(detail)}</td></tr>')
    return ('<h2>Breakers and holds</h2><table id="breakers"><tr><th>name</th><th>kind</th><th>state</th>'
            f'<th>until</th><th>failures</th><th>last error</th></tr>{"".join(rows)}</table>')


def _in(until: str, now: datetime) -> str:
    try:
        seconds = (parse_iso(until) - now).total_seconds()
    except ValueError:
        return "?"
    if seconds <= 0:
        return "passed: one probe next"
    return f"in {seconds / 60:.0f} min" if seconds < 5400 else f"in {seconds / 3600:.1f} h"


def _budget(snap: Snapshot) -> str:
    rows = []
    for row in snap.budget:
        cells = []
        for unit in ("usd", "tokens"):
            total, spent, held = row["total"][unit], row["spent"][unit], row["reserved"][unit]
            if unit == "tokens" and total is None:
                continue
            limit = amount(unit, total) if total is not None else "unlimited"
            words = f"{amount(unit, spent)} spent, {amount(unit, held)} reserved of {limit}"
            cells.append(f"<div>{budget_bar(spent, held, total, esc, words)} {esc(words)}</div>")
        note = "".join(f'<div class="bad">{esc(line)}</div>' for line in never_fits_lines(row.get("never_fits", [])))
        rows.append(f'<tr class="budget" data-scope="{esc(row["scope"])}" data-window="{esc(row["window"])}">'
                    f'<td>{esc(row["scope"])}</td><td>{esc(row["window"])}</td><td>{"".join(cells)}{note}</td>'
                    f'<td>{esc(local(row["resets_at"]))}</td><td class="num">{esc(row["runs"])}</td></tr>')
    return ('<h2>Budget</h2><table id="budget"><tr><th>scope</th><th>window</th><th>spent / limit</th>'
            f'<th>resets</th><th>runs</th></tr>{"".join(rows)}</table>')


def _chart(snap: Snapshot) -> str:
    total = sum(snap.spend.values())
    head = (f"<h2>Spend per cadence per day (last {len(snap.days)} days, ${total:.4f} charged)</h2>")
    if not snap.cadences:
        return head + '<p id="spend-chart" class="muted">no runs in the ledger in this period</p>'
    return head + spend_chart(snap.days, snap.cadences, snap.spend, snap.run_counts, esc) + legend(snap.cadences, esc)


def _runs(snap: Snapshot) -> str:
    """The last runs as `maestro runs` lists them (running ones first), each linking to its run's page."""
    head = f"<h2>Runs (the last {LAST_RUNS})</h2>"
    if not snap.runs:
        return head + '<p id="runs" class="muted">none yet</p>'
    heads = "".join(f"<th>{esc(name)}</th>" for name in COLUMNS)
    return head + f'<table id="runs"><tr>{heads}</tr>{"".join(_run_row(r) for r in snap.runs)}</table>'


def _run_row(run: dict[str, Any]) -> str:
    shown = cells(run)
    cls = {"running": "", "ok": "ok"}.get(str(run["outcome"]), "bad")
    out = []
    for name in COLUMNS:
        text = esc(shown[name])
        if name == "tick" and TICK_ID_RE.match(run["tick"]):  # a safe path segment: nothing to encode
            tick = run["tick"]  # its last characters, as `maestro tick show` takes them; the whole id on hover
            short = tick if len(tick) <= SHORT_TICK + 2 else f"…{tick[-SHORT_TICK:]}"
            text = f'<a href="/runs/{esc(tick)}" title="{esc(tick)}"><code>{esc(short)}</code></a>'
        elif name == "outcome":
            text = f'<span class="{cls}">{text}</span>'
        kind = "num" if name in NUMERIC else name
        out.append(f'<td class="{kind}">{text}</td>')
    return (f'<tr class="run" data-tick="{esc(run["tick"])}" data-state="{esc(run["state"])}">'
            + "".join(out) + "</tr>")
