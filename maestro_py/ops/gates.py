"""Would a run of a cadence be refused now, and by which gate? A read-only walk through the daemon's gates, in
`Guardrails.refusal`'s order, from what is persisted: the `STOP` file, `circuit-open.json`, the ledger, a live
daemon's status file (its live runs and reservations) and the queued ticks. Nothing is written and no daemon is
started: `maestro dry-run` and `maestro run-now` explain a wait with it.

What lives only in a daemon's memory is approximated and says so: the backoff (a cadence's queued ticks carry the
retry time it gave them), whether the current credentials have been proven yet, and the per-loop pacing. The fleet
governor store is not asked (`maestro governor show` does).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from maestro_py.config import Settings
from maestro_py.state import liveness, read_status
from maestro_py.errors import SpawnError
from maestro_py.ops import ticks, views, when
from maestro_py.paths import Layout
from maestro_py.policy.breaker import AUTH_HALT, CLAUDE_MISSING, QUOTA_HOLD, Breakers, Circuit
from maestro_py.policy.budget import Estimate, cadence_limits
from maestro_py.policy.guardrails import Refusal
from maestro_py.registry import Cadence, Registry
from maestro_py.session import command
from maestro_py.session.ledger import Ledger

CIRCUIT_REFUSALS = {AUTH_HALT: Refusal.AUTH_HALT, CLAUDE_MISSING: Refusal.CLAUDE_MISSING,
                    QUOTA_HOLD: Refusal.QUOTA_HOLD}


@dataclass(frozen=True)
class Gate:
    """One gate's answer: its counter name (`Refusal`'s value), whether it holds the run now, and why."""

    name: str
    holds: bool
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"gate": self.name, "holds": self.holds, "why": self.why}


def evaluate(layout: Layout, env: Mapping[str, str], settings: Settings, registry: Registry, cadence: Cadence,
             now: datetime) -> list[Gate]:
    """Every gate a sub-session of `cadence` passes, in order, each with its answer now (inline cadences pass none)."""
    if cadence.mode == "inline":
        return []
    status = read_status(layout)
    alive = bool(status) and liveness(layout, status, now)["alive"]
    live = (status or {}).get("live_subsessions") or [] if alive else []
    gates = [_emergency(layout), *_circuits(layout, env, cadence, now), _backoff(layout, cadence, now),
             Gate(Refusal.PACING.value, False, "at most one spawn per loop: not a wait")]
    gates.append(Gate(Refusal.LIVE_CAP.value, len(live) >= settings.max_live,
                      f"{len(live)} of MAESTRO_MAX_LIVE_SUBSESSIONS={settings.max_live} sub-session(s) running"
                      + ("" if alive else " (no daemon is running)")))
    mine = [run for run in live if run.get("cadence") == cadence.name]
    gates.append(Gate(Refusal.OVERLAP_WAIT.value, bool(mine) and cadence.overlap != "allow",
                      f"a run of {cadence.name} is live (tick {mine[0].get('tick')}); overlap = {cadence.overlap!r} "
                      "waits for it" if mine and cadence.overlap != "allow" else f"overlap = {cadence.overlap!r}: "
                      f"{len(mine)} run(s) of {cadence.name} live"))
    gates.append(_budget(layout, settings, registry, cadence, status if alive else None, now))
    if settings.governor_url is not None:
        gates.append(Gate("fleet_governor", False, "the governor store's budget and live cap are checked at spawn, "
                          "not here (`maestro governor show`)"))
    return gates


def refused_by(gates: list[Gate]) -> Gate | None:
    """The first gate that holds the run (the one the daemon counts), or None: it would spawn now."""
    return next((gate for gate in gates if gate.holds), None)


def _emergency(layout: Layout) -> Gate:
    if not layout.stop_file.exists():
        return Gate(Refusal.EMERGENCY_STOP.value, False, "no emergency stop")
    return Gate(Refusal.EMERGENCY_STOP.value, True, f"emergency stop is set ({layout.stop_file}); `maestro resume` "
                                                    "clears it")


def _circuits(layout: Layout, env: Mapping[str, str], cadence: Cadence, now: datetime) -> list[Gate]:
    """The global halts and the cadence's breaker, each judged alone by `Breakers.refusal`, as the daemon would see
    them after its next `advance` (an open period that is over is half-open: one probe may go)."""
    breakers, _ = views.load_breakers(layout)
    breakers.advance(now)
    try:
        command.resolve_claude(env)
        missing = None
    except SpawnError as exc:
        missing = str(exc)
    out = []
    for name, refusal in [*CIRCUIT_REFUSALS.items(), (cadence.name, Refusal.CIRCUIT_OPEN)]:
        circuit = breakers.circuits.get(name)
        holds = circuit is not None and Breakers(circuits={name: circuit}).refusal(cadence.name, now) is not None
        why = _circuit_why(circuit) if circuit is not None else "closed" if name == cadence.name else "not set"
        if name == CLAUDE_MISSING and missing is not None and not holds:
            holds, why = True, f"{missing}: the first spawn would halt every spawn; {command.claude_fix()}"
        elif name == cadence.name and circuit is not None and not holds:
            why = f"half-open: the next run is its one probe ({circuit.failures} failure(s))"
        elif name == cadence.name and holds:
            why += f"; `maestro circuit reset {cadence.name}`"
        out.append(Gate(refusal.value, holds, why))
    return out


def _circuit_why(circuit: Circuit) -> str:
    until = f"until {when.local(circuit.open_until)}" if circuit.open_until else "until reset"
    return f"{circuit.state.value} {until} ({circuit.failures} failure(s); last error: {circuit.last_error})"


def _backoff(layout: Layout, cadence: Cadence, now: datetime) -> Gate:
    """The daemon's backoff is in its memory only: the retry times a failure gave this cadence's queued ticks show it."""
    waits = [t["not_before"] for t in ticks.queued(layout, now)
             if t["cadence"] == cadence.name and t["waiting"] and t["wait"] == "retry"]
    if not waits:
        return Gate(Refusal.BACKOFF.value, False, "no queued tick waits for a retry time (the daemon's own backoff "
                                                  "is not persisted: a failure in the last minutes may still hold it)")
    return Gate(Refusal.BACKOFF.value, True, f"{len(waits)} queued tick(s) wait for a retry time until {when.local(max(waits))} "
                                             f"(the backoff or breaker after a failure); `maestro circuit reset "
                                             f"{cadence.name}` releases them")


def _budget(layout: Layout, settings: Settings, registry: Registry, cadence: Cadence, status: dict[str, Any] | None,
            now: datetime) -> Gate:
    """The budget gate exactly as the daemon computes it: spent from the ledger, a live daemon's reservations held."""
    governor = settings.governor(cadence_limits(registry))
    governor.load(Ledger(layout.ledger_file).rows(), now)
    for item in (status or {}).get("reservations") or []:
        governor.reserve(item["tick"], item["cadence"], Estimate(item["tokens"], item["usd"], "live"))
    estimate = governor.estimate(cadence.name, cadence.reserve_tokens, cadence.reserve_usd)
    short = governor.refusal(cadence.name, estimate, now)
    if short is None:
        scopes = governor.scopes(cadence.name)
        return Gate(Refusal.BUDGET.value, False, f"its reservation ({estimate.tokens:,.0f} tokens / "
                                                 f"${estimate.usd:.4f}, {estimate.basis}) fits "
                                                 + (f"{len(scopes)} budget(s)" if scopes else "(no budget set)"))
    return Gate(Refusal.BUDGET.value, True, short.details(cadence.name)["reason"])
