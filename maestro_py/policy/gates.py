"""The gate chain as data: every reason a sub-session may not start now, in the order the daemon asks them.

Each `Gate` has its refusal (the counter the daemon bumps when it holds a tick), a check over a `GateState` (the
view of the state a gate reads) that answers with a `Hold` or None, and its words when it passes. A `Hold` says
why, until when (if it lifts by itself), whether the run can ever fit, and what lifts it.

The daemon walks `GATES` over its live state (`Guardrails.refusal` stops at the first hold); `dry-run`,
`run-now`, `cadences`, `inbox list`, `tick show`, `doctor`, `budget`, the status page and `/v1/ticks/ID` walk
the same list over the persisted state (`ops.gates`). So the order and the words exist here only, and a view
cannot say "it would start" while the daemon holds it.

Checks have no side effects but one: the fleet gate's state, in the daemon, reserves in the governor store (the
answer is a reservation). The daemon's reactions to a hold (an event the first time) are its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from maestro_py.policy.holds import Answer, Hold, Refusal
from maestro_py.policy.breaker import AUTH_HALT, CLAUDE_MISSING, QUOTA_HOLD, Breakers, Circuit, State
from maestro_py.policy import denials
from maestro_py.policy.budget import Estimate, Budget
from maestro_py.policy.denials import Streak
from maestro_py.registry import Cadence
from maestro_py.registry_keys import Mode
from maestro_py.session.sandbox import Sandbox


class FleetAnswer(Protocol):
    """The governor store's answer for one run (`fleet.model.Admission`)."""

    admitted: bool
    reason: str | None       # "unavailable", "live_cap" or "budget"
    detail: str
    scope: str | None
    window: str | None
    resets_at: datetime | None
    never_fits: bool


class GateState(Protocol):
    """What the gates read. The daemon's is its memory (`Guardrails`); the views' is what the daemon persisted."""

    emergency: str | None
    breakers: Breakers
    budget: Budget           # spent and reserved, with every limit that applies
    max_live: int
    credentials_verified: bool
    spawned_this_step: bool

    def claude_problem(self) -> str | None:
        """Why `claude` could not be started now, beyond its halt (the daemon learns it at a spawn: None)."""

    def sandbox(self) -> Sandbox:
        """Whether the CLI's sandbox can run here (`session.sandbox.available`)."""

    def denied(self, cadence: Cadence) -> Streak | None:
        """The streak of denied runs that holds `cadence` under its current policy, or None."""

    def backoff_until(self, cadence: str, now: datetime) -> datetime | None:
        """When `cadence`'s backoff after a failure ends, if it is still ahead."""

    def live_count(self) -> int:
        """Sub-sessions running now (the daemon also counts a leaked child)."""

    def live_ticks(self, cadence: str) -> list[str]:
        """The ticks whose sub-session of `cadence` runs now."""

    def fleet(self, cadence: Cadence, estimate: Estimate, now: datetime) -> FleetAnswer | None:
        """The governor store's answer for one run of `cadence` (None: no store is configured)."""


Check = Callable[[GateState, Cadence, datetime], "Hold | None"]
Words = Callable[[GateState, Cadence, datetime], str]


@dataclass(frozen=True)
class Gate:
    """One gate: its refusal, its check, and what it says when it lets a run through."""

    refusal: Refusal
    check: Check
    passes: Words

    @property
    def name(self) -> str:
        return self.refusal.gate


RESET_ALL = "`maestro circuit reset --all` lifts it"


# -- the checks, in the daemon's order ------------------------------------------------------------------------------
def _emergency(state: GateState, cadence: Cadence, now: datetime) -> Hold | None:
    if state.emergency is None:
        return None
    return Hold(Refusal.EMERGENCY_STOP, f"emergency stop: {state.emergency}", lifts="`maestro resume` clears it")


def _open(state: GateState, name: str) -> Circuit | None:
    circuit = state.breakers.circuits.get(name)
    return circuit if circuit is not None and circuit.state is State.OPEN else None


def _auth_halt(state: GateState, cadence: Cadence, now: datetime) -> Hold | None:
    halt = _open(state, AUTH_HALT)
    if halt is None:
        return None
    return Hold(Refusal.AUTH_HALT, f"auth halt: {halt.last_error}",
                lifts="new credentials (.env or the CLI's login change), or " + RESET_ALL)


def _claude_missing(state: GateState, cadence: Cadence, now: datetime) -> Hold | None:
    halt = _open(state, CLAUDE_MISSING)
    if halt is not None:
        return Hold(Refusal.CLAUDE_MISSING, f"claude cannot be started: {halt.last_error}",
                    lifts="a changed `claude` binary (CLAUDE_BIN or PATH), or " + RESET_ALL)
    problem = state.claude_problem()
    if problem is None:
        return None
    return Hold(Refusal.CLAUDE_MISSING, f"{problem}: the first spawn would halt every spawn",
                lifts="install claude or set CLAUDE_BIN in .env")


def _quota_hold(state: GateState, cadence: Cadence, now: datetime) -> Hold | None:
    hold = state.breakers.circuits.get(QUOTA_HOLD)
    if hold is None or not (hold.state is State.OPEN or hold.probe_in_flight):
        return None
    if hold.state is State.OPEN:
        return Hold(Refusal.QUOTA_HOLD, f"usage limit: {hold.last_error}", until=hold.open_until,
                    lifts="its reset (then one probe run), or " + RESET_ALL)
    return Hold(Refusal.QUOTA_HOLD, "usage limit reset: its one probe run is running",
                lifts="the probe's end")


def _sandbox(state: GateState, cadence: Cadence, now: datetime) -> Hold | None:
    p = cadence.permissions
    if p.sandbox != "required" or not p.runs_commands:
        return None  # only commands are sandboxed: a cadence that runs none has nothing to confine
    found = state.sandbox()
    if found.ready:
        return None
    return Hold(Refusal.SANDBOX_MISSING, f"sandbox = \"required\" but the sandbox cannot run: {found.problem}",
                lifts=f'{found.fix}; or sandbox = "preferred" (runs unsandboxed) in cadences.toml [{cadence.name}]')


def _sandbox_passes(state: GateState, cadence: Cadence, now: datetime) -> str:
    p = cadence.permissions
    if p.sandbox == "off":
        return "sandbox off"
    if not p.runs_commands:
        return "no commands to sandbox (Bash is not among its tools)"
    found = state.sandbox()
    return f"commands run sandboxed: {found.how}" if found.ready else f"sandbox unavailable, {p.sandbox}: {found.problem}"


def _misconfigured(state: GateState, cadence: Cadence, now: datetime) -> Hold | None:
    streak = state.denied(cadence)
    if streak is None:
        return None
    return Hold(Refusal.MISCONFIGURED, f"misconfigured: its last {streak.runs} runs were denied "
                                       f"{', '.join(streak.tools)} by its permissions", lifts=denials.fix(cadence.name,
                                                                                                          streak))


def _circuit(state: GateState, cadence: Cadence, now: datetime) -> Hold | None:
    circuit = state.breakers.circuits.get(cadence.name)
    if circuit is None or circuit.state is State.CLOSED:
        return None
    lifts = f"`maestro circuit reset {cadence.name}`"
    if circuit.state is State.HALF_OPEN:
        if not circuit.probe_in_flight:
            return None
        return Hold(Refusal.CIRCUIT_OPEN, f"breaker half-open: its one probe run is running ({circuit.failures} "
                                          "failure(s))", lifts="the probe's end, or " + lifts)
    return Hold(Refusal.CIRCUIT_OPEN, f"breaker open ({circuit.failures} failure(s); last error: "
                                      f"{circuit.last_error})", until=circuit.open_until,
                lifts=("its open period's end (then one probe run), or " if circuit.open_until else "") + lifts)


def _circuit_passes(state: GateState, cadence: Cadence, now: datetime) -> str:
    circuit = state.breakers.circuits.get(cadence.name)
    if circuit is not None and circuit.state is State.HALF_OPEN:
        return f"half-open: the next run is its one probe ({circuit.failures} failure(s))"
    return "closed"


def _backoff(state: GateState, cadence: Cadence, now: datetime) -> Hold | None:
    until = state.backoff_until(cadence.name, now)
    if until is None:
        return None
    return Hold(Refusal.BACKOFF, "backing off after a failure", until=until,
                lifts=f"the wait's end, a success, or `maestro circuit reset {cadence.name}`")


def _pacing(state: GateState, cadence: Cadence, now: datetime) -> Hold | None:
    if not state.spawned_this_step:
        return None
    return Hold(Refusal.PACING, "one spawn per loop: this loop started one already", lifts="the next loop")


def _live_cap(state: GateState, cadence: Cadence, now: datetime) -> Hold | None:
    live = state.live_count()
    if live < state.max_live:
        return None
    return Hold(Refusal.LIVE_CAP, f"{live} of MAESTRO_MAX_LIVE_SUBSESSIONS={state.max_live} sub-session(s) running",
                lifts="a live run's end")


def _auth_probe(state: GateState, cadence: Cadence, now: datetime) -> Hold | None:
    # One bad key must cost one sub-session: no second spawn until a run proves the credentials.
    if state.credentials_verified or state.live_count() == 0:
        return None
    return Hold(Refusal.AUTH_PROBE, "the credentials are unproven and a run is live: one run at a time until one "
                                    "succeeds", lifts="a run that succeeds")


def _overlap(state: GateState, cadence: Cadence, now: datetime) -> Hold | None:
    if cadence.overlap == "allow":
        return None
    mine = state.live_ticks(cadence.name)
    if not mine:
        return None
    return Hold(Refusal.OVERLAP_WAIT, f"a run of {cadence.name} is live (tick {mine[0]}); overlap = "
                                      f"{cadence.overlap!r} waits for it", lifts="that run's end")


def _budget(state: GateState, cadence: Cadence, now: datetime) -> Hold | None:
    """Fail closed on spend: no spawn unless every applicable budget covers the reservation."""
    estimate = state.budget.estimate(cadence.name, cadence.reserve_tokens, cadence.reserve_usd)
    short = state.budget.refusal(cadence.name, estimate, now)
    if short is None:
        return None
    return Hold(Refusal.BUDGET, short.details(cadence.name)["reason"], until=None if short.never_fits
                else short.resets_at, never_fits=short.never_fits, detail=short,
                lifts="a larger limit or a smaller reservation (cadences.toml or .env)" if short.never_fits
                else "the window's reset, or a larger limit")


def _budget_passes(state: GateState, cadence: Cadence, now: datetime) -> str:
    estimate = state.budget.estimate(cadence.name, cadence.reserve_tokens, cadence.reserve_usd)
    scopes = state.budget.scopes(cadence.name)
    return (f"its reservation ({estimate.tokens:,.0f} tokens / ${estimate.usd:.4f}, {estimate.basis}) fits "
            + (f"{len(scopes)} budget(s)" if scopes else "(no budget set)"))


def fleet_estimate(budget: Budget, cadence: Cadence) -> Estimate:
    """What a run reserves in the governor store: its estimate, or exactly `max_budget_usd` where the cadence sets
    it (the CLI stops past it between turns, so a run overshoots by at most one turn)."""
    estimate = budget.estimate(cadence.name, cadence.reserve_tokens, cadence.reserve_usd)
    if cadence.max_budget_usd is None:
        return estimate
    return Estimate(estimate.tokens, float(cadence.max_budget_usd), f"{estimate.basis}; max_budget_usd")


def _fleet(reason: str, refusal: Refusal, lifts: str) -> Check:
    def check(state: GateState, cadence: Cadence, now: datetime) -> Hold | None:
        answer = state.fleet(cadence, fleet_estimate(state.budget, cadence), now)
        if answer is None or answer.admitted or (answer.reason or "unavailable") != reason:
            return None
        never = reason == "budget" and answer.never_fits
        return Hold(refusal, f"governor store: {answer.detail}", until=None if never else answer.resets_at,
                    never_fits=never, detail=answer,
                    lifts="a larger limit (`maestro governor set`) or a smaller reservation" if never else lifts)
    return check


def _fleet_passes(state: GateState, cadence: Cadence, now: datetime) -> str:
    answer = state.fleet(cadence, fleet_estimate(state.budget, cadence), now)
    if answer is None:
        return "no governor store (MAESTRO_GOVERNOR_URL unset)"
    if answer.admitted:
        return "the governor store would admit it"
    return f"the governor store refuses it for another reason ({answer.reason})"


def _says(text: str) -> Words:
    return lambda state, cadence, now: text


GATES: tuple[Gate, ...] = (
    Gate(Refusal.EMERGENCY_STOP, _emergency, _says("no emergency stop")),
    Gate(Refusal.AUTH_HALT, _auth_halt, _says("no auth halt")),
    Gate(Refusal.CLAUDE_MISSING, _claude_missing, _says("claude can be started")),
    Gate(Refusal.QUOTA_HOLD, _quota_hold, _says("no usage-limit hold")),
    Gate(Refusal.SANDBOX_MISSING, _sandbox, _sandbox_passes),
    Gate(Refusal.MISCONFIGURED, _misconfigured, _says("its recent runs were not all denied a tool")),
    Gate(Refusal.CIRCUIT_OPEN, _circuit, _circuit_passes),
    Gate(Refusal.BACKOFF, _backoff, _says("no backoff after a failure")),
    Gate(Refusal.PACING, _pacing, _says("at most one spawn per loop: not a wait")),
    Gate(Refusal.LIVE_CAP, _live_cap,
         lambda s, c, n: f"{s.live_count()} of MAESTRO_MAX_LIVE_SUBSESSIONS={s.max_live} sub-session(s) running"),
    Gate(Refusal.AUTH_PROBE, _auth_probe,
         lambda s, c, n: "the credentials are proven" if s.credentials_verified else
         "the credentials are unproven: this run is their one probe"),
    Gate(Refusal.OVERLAP_WAIT, _overlap,
         lambda s, c, n: f"overlap = {c.overlap!r}: {len(s.live_ticks(c.name))} run(s) of {c.name} live"),
    Gate(Refusal.BUDGET, _budget, _budget_passes),
    Gate(Refusal.GOVERNOR_UNAVAILABLE, _fleet("unavailable", Refusal.GOVERNOR_UNAVAILABLE,
                                              "the store answering again"), _fleet_passes),
    Gate(Refusal.FLEET_LIVE_CAP, _fleet("live_cap", Refusal.FLEET_LIVE_CAP, "a fleet run's end"),
         _fleet_passes),
    Gate(Refusal.FLEET_BUDGET, _fleet("budget", Refusal.FLEET_BUDGET, "the window's reset, or a larger limit"),
         _fleet_passes),
)


def first_hold(state: GateState, cadence: Cadence, now: datetime) -> Hold | None:
    """The first gate that holds a run of `cadence` now (the one the daemon counts), or None: it may start."""
    for gate in GATES:
        hold = gate.check(state, cadence, now)
        if hold is not None:
            return hold
    return None


def walk(state: GateState, cadence: Cadence, now: datetime) -> list[Answer]:
    """Every gate's answer for a run of `cadence` now, in order (inline cadences pass no gate: an empty list)."""
    if cadence.mode == Mode.INLINE:
        return []
    out = []
    for gate in GATES:
        hold = gate.check(state, cadence, now)
        out.append(Answer(gate.refusal, hold, hold.line() if hold is not None else gate.passes(state, cadence, now)))
    return out


def refused_by(answers: list[Answer]) -> Answer | None:
    """The first answer that holds (the gate the daemon counts), or None."""
    return next((a for a in answers if a.holds), None)
