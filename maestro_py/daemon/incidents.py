"""Which events a person must hear about, each as one `Alert` (a short line and a few fields), and the one alert
no single event makes: a crash loop, read from the event log at start-up."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from maestro_py.bus.logview import tail_lines
from maestro_py.clock import parse_iso
from maestro_py.paths import Layout
from maestro_py.policy.breaker import AUTH_HALT, CLAUDE_MISSING, QUOTA_HOLD

CRASH_STARTS, CRASH_WINDOW = 3, 600.0  # starts without a clean stop within the window: a crash loop


@dataclass(frozen=True)
class Alert:
    """One alert: a short human line (title, body) and structured fields (cadence, reason, until, figures)."""

    kind: str
    title: str
    body: str
    level: str = "warning"      # apprise's notify types: info, success, warning, failure
    subject: str = ""           # what it is about (a cadence, a scope/window); with `kind`, the dedupe key
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.subject}"

    def message(self) -> str:
        """The body, then one `name: value` line per field that has a value."""
        lines = [f"{k}: {v}" for k, v in self.fields.items() if v not in (None, "", [], {})]
        return "\n".join([self.body, *lines])

    def doc(self, agent: str, at: str) -> dict[str, Any]:
        """The alert as JSON (what MAESTRO_NOTIFY_COMMAND reads on stdin)."""
        return {"kind": self.kind, "level": self.level, "agent": agent, "at": at, "title": self.title,
                "body": self.body, "fields": self.fields}


# -- events -> alerts ---------------------------------------------------------------------------------

def _circuit_opened(e: Mapping[str, Any]) -> Alert:
    c, until = e.get("cadence"), e.get("open_until")
    return Alert("circuit_opened", f"circuit opened: {c}",
                 f"{c} failed {e.get('failures')} times in a row: no run of it until {until}", "failure", str(c),
                 {"cadence": c, "until": until, "reason": e.get("reason"), "failures": e.get("failures")})


def _budget(e: Mapping[str, Any], fleet: bool = False) -> Alert:
    scope, window = e.get("scope"), e.get("window")
    about = f"{scope}/{window}" + (f"/{e.get('cadence')}" if e.get("never_fits") else "")
    kind = "fleet_budget_exhausted" if fleet else "budget_exhausted"
    title = f"{'fleet ' if fleet else ''}budget spent: {scope} {window}"
    return Alert(kind, title, str(e.get("reason") or title), "failure" if e.get("never_fits") else "warning",
                 about, {"cadence": e.get("cadence"), "scope": scope, "window": window, "until": e.get("resets_at"),
                         "never_fits": e.get("never_fits") or None})


def _budget_warning(e: Mapping[str, Any]) -> Alert:
    scope, window = e.get("scope"), e.get("window")
    return Alert("budget_warning", f"budget {e.get('used_pct')}% spent: {scope} {window}", str(e.get("reason")),
                 "warning", f"{scope}/{window}",
                 {"scope": scope, "window": window, "until": e.get("resets_at"), "spent_tokens": e.get("spent_tokens"),
                  "limit_tokens": e.get("limit_tokens"), "spent_usd": e.get("spent_usd"),
                  "limit_usd": e.get("limit_usd")})


def _refused(e: Mapping[str, Any], name: str, kept: str) -> Alert:
    """An edit of `.env` or `cadences.toml` the daemon refused: the file, the line where it is known, and why
    (`refused_edit.py`). One per distinct error: the same mistake saved again within the window is not news."""
    line, reason = e.get("line"), e.get("reason") or e.get("error")
    where = f"{e.get('file') or name}" + (f", line {line}" if line else "")
    return Alert(f"{'env' if name == '.env' else 'registry'}_invalid",
                 f"{name} edit refused" + (f" (line {line})" if line else ""),
                 f"{where}: {reason}; the daemon keeps its previous {kept} until it is fixed", "failure",
                 str(e.get("error")), {"file": e.get("file"), "line": line, "reason": reason})


RULES: dict[str, Callable[[Mapping[str, Any]], Alert]] = {
    "circuit_opened": _circuit_opened,
    "circuit_reopened": _circuit_opened,
    "circuit_closed": lambda e: Alert(
        "circuit_closed", f"circuit closed: {e.get('cadence')}", f"{e.get('cadence')} ran successfully again",
        "success", str(e.get("cadence")), {"cadence": e.get("cadence")}),
    "auth_halt": lambda e: Alert(
        "auth_halt", "auth halt: no sub-session spawns",
        "the credentials were refused; nothing spawns until .env or the CLI login changes, or "
        "`maestro circuit reset --all`", "failure", "",
        {"cadence": e.get("cadence"), "reason": e.get("reason"), "fix": e.get("fix")}),
    "auth_halt_lifted": lambda e: Alert(
        "auth_halt_lifted", "auth halt lifted", f"spawning resumes: {e.get('reason')}", "success", ""),
    "quota_hold": lambda e: Alert(
        "quota_hold", f"usage limit: spawns held until {e.get('until')}", str(e.get("reason")), "warning", "",
        {"cadence": e.get("cadence"), "until": e.get("until"), "limit": e.get("kind")}),
    "quota_hold_lifted": lambda e: Alert(
        "quota_hold_lifted", "usage limit lifted", f"spawning resumes: {e.get('reason')}", "success", ""),
    "budget_exhausted": _budget,
    "fleet_budget_exhausted": lambda e: _budget(e, fleet=True),
    "budget_warning": _budget_warning,
    "io_error": lambda e: Alert(
        "io_error", "disk trouble", f"{e.get('error')}; {e.get('action')}", "failure", "", {"error": e.get("error")}),
    "permission_denied": lambda e: Alert(  # one per cadence per DEDUPE_SECONDS: later denials join it
        "permission_denied", f"permission denied: {e.get('cadence')}" + (" (held: misconfigured)" if e.get("held")
                                                                         else ""),
        f"{e.get('reason')}; {e.get('fix')}", "failure" if e.get("held") else "warning", str(e.get("cadence")),
        {"cadence": e.get("cadence"), "tick": e.get("id"), "count": e.get("count"), "tools": e.get("tools"),
         "streak": e.get("streak")}),
    "run_timed_out": lambda e: Alert(
        "run_timed_out", f"run timed out: {e.get('cadence')}",
        f"a run of {e.get('cadence')} passed its {e.get('timeout_s')} s timeout and was ended", "warning",
        str(e.get("cadence")), {"cadence": e.get("cadence"), "tick": e.get("id"), "timeout_s": e.get("timeout_s")}),
    "claude_missing": lambda e: Alert(
        "claude_missing", "claude missing: no sub-session spawns",
        f"the claude CLI could not be started ({e.get('reason')}); nothing spawns until it can be", "failure", "",
        {"cadence": e.get("cadence"), "path": e.get("path"), "fix": e.get("fix")}),
    "claude_found": lambda e: Alert(
        "claude_found", "claude found", f"spawning resumes: {e.get('reason')}", "success", ""),
    "governor_unavailable": lambda e: Alert(
        "governor_unavailable", "governor unavailable: no sub-session spawns",
        f"the governor store does not answer ({e.get('reason')}); {e.get('effect')}", "failure", "",
        {"store": e.get("store")}),
    "governor_available": lambda e: Alert(
        "governor_available", "governor available", "the governor store answers again: spawning resumes",
        "success", "", {"store": e.get("store"), "down_since": e.get("down_since")}),
    "service_sync_failed": lambda e: Alert(
        "service_sync_failed", "service sync failed", f"the timers may not follow cadences.toml: {e.get('reason')}",
        "warning", "", {"reason": e.get("reason")}),
    "env_invalid": lambda e: _refused(e, ".env", "settings"),
    "env_fixed": lambda e: Alert("env_fixed", ".env fixed", str(e.get("reason")), "success", ""),
    "registry_invalid": lambda e: _refused(e, "cadences.toml", "cadences"),
    "registry_fixed": lambda e: Alert("registry_fixed", "cadences.toml fixed", str(e.get("reason")), "success", ""),
    "trigger_failed": lambda e: Alert(  # recorded by another process: the daemon takes it from a file (housekeeping)
        "trigger_failed", f"trigger failed: {e.get('cadence') or 'no cadence'}",
        f"a tick of {e.get('cadence') or 'a cadence'} was not delivered ({e.get('source') or 'trigger'}): "
        f"{e.get('reason')}", "failure", f"{e.get('cadence')}:{e.get('exit_code')}",
        {"cadence": e.get("cadence"), "reason": e.get("reason"), "exit_code": e.get("exit_code"),
         "source": e.get("source"), "unit": e.get("unit"), "at": e.get("at")}),
    "crash_loop": lambda e: Alert(
        "crash_loop", "daemon crash loop",
        f"the daemon started {e.get('starts')} times in {e.get('window_s')} s without a clean stop", "failure", "",
        {"starts": e.get("starts"), "window_s": e.get("window_s")}),
}
# An alert that ends a state forgets the dedupe of the one that began it (and back): opened, closed, opened
# again within the window are three alerts (`Alerts._forget`).
PAIRS = {"circuit_opened": "circuit_closed", "auth_halt": "auth_halt_lifted", "quota_hold": "quota_hold_lifted",
         "claude_missing": "claude_found", "governor_unavailable": "governor_available", "env_invalid": "env_fixed",
         "registry_invalid": "registry_fixed"}
PAIRS.update({v: k for k, v in PAIRS.items()})


# The circuit (as `circuit-open.json` names it) an alert says opened or closed: a `maestro circuit reset` lifts it
# without an event of its own, only `circuits_reloaded` with what is still open.
OPENS = {"circuit_opened": None, "auth_halt": AUTH_HALT, "quota_hold": QUOTA_HOLD, "claude_missing": CLAUDE_MISSING}
CLOSES = {"circuit_closed": None, "auth_halt_lifted": AUTH_HALT, "quota_hold_lifted": QUOTA_HOLD,
          "claude_found": CLAUDE_MISSING}


def reset_by_hand(circuit: str) -> Alert:
    """The alert for a circuit, auth halt or usage-limit hold that an operator reset."""
    reason = {"reason": "reset by hand (`maestro circuit reset`)"}
    if circuit == AUTH_HALT:
        return RULES["auth_halt_lifted"](reason)
    if circuit == QUOTA_HOLD:
        return RULES["quota_hold_lifted"](reason)
    if circuit == CLAUDE_MISSING:
        return RULES["claude_found"](reason)
    return Alert("circuit_closed", f"circuit closed: {circuit}", f"{circuit} was reset by hand (`maestro circuit "
                 "reset`)", "success", circuit, {"cadence": circuit})


def trial_alert(agent: str) -> Alert:
    """What `maestro notify test` sends."""
    return Alert("test", "test alert", f"maestro notify test from {agent}: alerts reach this target", "info")


def restarts(layout: Layout, now: datetime, window: float = CRASH_WINDOW) -> int:
    """Daemon starts in the last `window` seconds since the last clean stop (this one's included), or 0 when a
    crash loop was reported since: one alert per loop, not one per restart."""
    since = now - timedelta(seconds=window)
    lines: list[str] = []
    for day in sorted({since.astimezone().date(), now.astimezone().date()}):
        lines += tail_lines(layout.event_log(datetime.combine(day, datetime.min.time())))
    starts, reported = 0, False
    for line in lines:
        if '"daemon_st' not in line and '"crash_loop"' not in line:
            continue
        try:
            event = json.loads(line)
            if parse_iso(event["ts"]) < since:
                continue
        except (ValueError, KeyError, TypeError):
            continue
        stage = event.get("stage")
        if stage == "daemon_stopped":
            starts, reported = 0, False
        elif stage == "daemon_started":
            starts += 1
        elif stage == "crash_loop":
            reported = True
    return 0 if reported else starts
