"""The run page at `/runs/{tick_id}` (`?attempt=N`): one tick's header and one run's transcript, as `maestro tick log`
renders it (`ops.transcript`, read through `ops.runlogs`: bounded, secrets masked), with the last lines of its
stderr. The last run by default, another attempt's by `?attempt=N`.

Like the status page it is one server-rendered HTML document: no script, no request elsewhere (its own
Content-Security-Policy allows its inline style block by hash, nothing else), every text from a run or a file
through `page.esc` (control and bidi characters made visible, then HTML-escaped). While the tick runs it
refreshes itself.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from maestro_py.bus.store import Bus
from maestro_py.bus.tick import TICK_ID_RE
from maestro_py.errors import TickInvalid
from maestro_py.ops import runlogs, ticks
from maestro_py.ops.transcript import Entry
from maestro_py.ops.when import local
from maestro_py.paths import Layout
from maestro_py.redact import Redactor
from maestro_py.serve.http import HttpError
from maestro_py.serve.page import STYLE as PAGE_STYLE
from maestro_py.serve.page import esc

REFRESH_SECONDS = 5  # while the tick runs
REASON_WIDTH = 300
STYLE = PAGE_STYLE + """
.transcript{font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,monospace;white-space:pre-wrap;
overflow-wrap:anywhere;border:1px solid #eee;padding:.5em .8em;background:#fafafa}
.transcript div{min-height:1.2em}.call{color:#0550ae}.error,.denied,.denials,.failed{color:#c62828}
.retry,.limit{color:#9a6700}.session,.note,.thinking{color:#777}.result{font-weight:600;color:#1a7f37}
.failed{font-weight:600}.runs a{margin-right:1em}.here{font-weight:600}
"""
STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CSP = (f"default-src 'none'; style-src 'sha256-{STYLE_HASH}'; img-src data:; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")
_ATTEMPT = re.compile(r"[1-9][0-9]{0,5}\Z")


@dataclass
class RunView:
    """What the run page shows: the tick (`ops.ticks.describe`), its runs with a log, the one shown and its lines."""

    doc: dict[str, Any]
    runs: list[runlogs.Run] = field(default_factory=list)
    run: runlogs.Run | None = None
    live: bool = False
    entries: list[Entry] = field(default_factory=list)
    stderr: list[Entry] = field(default_factory=list)


def attempt_of(text: str | None) -> int | None:
    """`?attempt=N` as a number (None: not given); 400 for anything but a positive integer."""
    if text is None:
        return None
    if not _ATTEMPT.match(text):
        raise HttpError(400, "attempt must be a positive integer")
    return int(text)


def gather(layout: Layout, tick_id: str, attempt: int | None, redactor: Redactor) -> RunView:
    """Read the tick and its run (404 for an unknown tick or attempt); blocking file work, for a worker thread."""
    if not TICK_ID_RE.match(tick_id):
        raise HttpError(400, "not a tick id")
    doc = ticks.describe(layout, tick_id)
    try:
        found = runlogs.find(layout, tick_id) if doc is not None else None
    except TickInvalid:
        found = None
    if doc is None:
        raise HttpError(404, "no such tick in inbox/, claimed/, done/ or dlq/ (done ticks are pruned after "
                             "MAESTRO_RETENTION_DAYS)")
    view = RunView(doc)
    if found is None:
        return view  # unreadable: the header says why
    tick = found[1]
    view.runs = runlogs.runs(layout, tick)
    view.run = runlogs.pick(view.runs, attempt)
    if view.run is None:
        if attempt is not None:
            raise HttpError(404, f"tick {tick_id} has no log of attempt {attempt}")
        return view
    view.live = view.run == view.runs[-1] and runlogs.running(Bus(layout), tick_id)
    if view.run.stdout is not None:
        view.entries = runlogs.page_transcript(view.run.stdout, redactor, settled=not view.live)
    if view.run.stderr is not None:
        view.stderr = runlogs.stderr_tail(view.run.stderr, redactor)
    return view


def render(view: RunView, now: datetime) -> str:
    """The whole page."""
    doc = view.doc
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if view.live else ""
    body = [f'<p><a href="/">← status page</a></p><h1>run · <code>{esc(doc["id"])}</code></h1>', _header(view),
            _runs(view), _transcript(view), _stderr(view),
            f'<p class="muted">as of {esc(local(now))}' + (f"; refreshes every {REFRESH_SECONDS} s while it runs"
                                                           if view.live else "") + "</p>"]
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{refresh}'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="referrer" content="no-referrer"><link rel="icon" href="data:,">'
            f'<title>maestro · run {esc(doc["id"])}</title><style>{STYLE}</style></head><body>'
            + "".join(body) + "</body></html>")


def _header(view: RunView) -> str:
    doc = view.doc
    rows = [("state", f"{doc['state'].replace('_', ' ')} ({doc['folder']}/)")]
    if not doc.get("readable", True):
        rows.append(("unreadable", doc.get("error")))
        return _table("tick", rows)
    rows += [("cadence", doc.get("cadence")), ("source", doc.get("source")),
             ("enqueued", local(doc.get("enqueued_at"))), ("attempts", doc.get("attempts"))]
    if doc.get("dlq_reason"):
        rows.append(("dead-lettered", _cut(doc["dlq_reason"])))
    run = view.run
    if run is not None:
        rows.append(("attempt shown", f"{run.attempt}" + (" (running)" if view.live else "")))
        entry = next((h for h in reversed(doc.get("history") or []) if h.get("attempt") == run.attempt
                      and h.get("outcome") not in (None, "released")), None)
        if entry is not None and not view.live:
            rows.append(("outcome", f"{entry.get('outcome')}" + (f": {_cut(str(entry['reason']))}"
                                                                  if entry.get("reason") else "")))
        row = next((r for r in reversed(doc.get("runs") or []) if r.get("attempt") == run.attempt), None)
        if row is not None:
            rows.append(("ledger", _cost(row)))
        rows.append(("log", (run.stdout or run.stderr or run).name))
    return _table("tick", rows)


def _cost(row: dict[str, Any]) -> str:
    """The ledger's figures for the run: duration, tokens and dollars (unmeasured: unknown, and what was charged)."""
    seconds = row.get("duration_ms")
    duration = f"{seconds / 1000:.1f} s" if isinstance(seconds, (int, float)) else "duration unknown"
    tokens = row.get("total_tokens")
    usd = row.get("cost_usd")
    words = [duration, f"{tokens:,} tokens" if isinstance(tokens, int) else "tokens unknown",
             f"${usd:.4f}" if isinstance(usd, (int, float)) else "cost unknown"]
    if not row.get("metered", True) and isinstance(row.get("charged_usd"), (int, float)):
        words.append(f"unmeasured: ${row['charged_usd']:.4f} charged")
    return ", ".join(words)


def _table(name: str, rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f'<table id="{name}">{cells}</table>'


def _runs(view: RunView) -> str:
    if len(view.runs) < 2:
        return ""
    tick = quote(view.doc["id"], safe="")
    links = []
    for attempt in dict.fromkeys(r.attempt for r in view.runs):
        here = view.run is not None and attempt == view.run.attempt
        links.append(f'<a href="/runs/{tick}?attempt={attempt}"' + (' class="here"' if here else "")
                     + f">attempt {attempt}</a>")
    return f'<p class="runs" id="runs">runs: {"".join(links)}</p>'


def _transcript(view: RunView) -> str:
    if view.run is None:
        state = view.doc.get("state")
        why = ("it has not run yet" if state == "queued" else "its run has no log yet" if state == "running"
               else "it never ran a sub-session, or its logs were pruned")
        return f'<h2>Transcript</h2><p id="transcript" class="muted">no run log: {esc(why)}</p>'
    if view.run.stdout is None:
        return '<h2>Transcript</h2><p id="transcript" class="muted">the run wrote nothing on stdout</p>'
    lines = "".join(f'<div class="{esc(e.kind)}">{esc(e.text)}</div>' for e in view.entries)
    return f'<h2>Transcript</h2><div id="transcript" class="transcript">{lines}</div>'


def _stderr(view: RunView) -> str:
    if not view.stderr:
        return ""
    lines = "".join(f'<div class="{esc(e.kind)}">{esc(e.text)}</div>' for e in view.stderr)
    return f'<h2>stderr (its last lines)</h2><div id="stderr" class="transcript">{lines}</div>'


def _cut(text: str) -> str:
    return text if len(text) <= REASON_WIDTH else text[:REASON_WIDTH - 1] + "…"
