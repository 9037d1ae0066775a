"""The one reliability facade: may this tick spawn now, and what happens to it after its run?

Before a spawn, `Guardrails.refusal` walks `gates.GATES` (the one gate chain) over the daemon's memory and answers
with a `Refusal` (its value is the counter the daemon bumps) or None. After a run, `Guardrails.learn` teaches the
auth halt, the backoff and the breaker what happened and answers with one `Verdict`: complete, retry at a time,
requeue without burning an attempt, or dead-letter. The daemon moves the tick as told; it never looks up a failure
class's handling, a breaker, the backoff or the credentials itself.

Every gate fails closed: a refusal leaves the tick in `inbox/` without burning an attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from maestro_py.bus.events import EventLog
from maestro_py.bus.tick import Tick
from maestro_py.clock import Clock, iso
from maestro_py.policy.backoff import Backoff, Wait, parse_backoff, schedule
from maestro_py.policy.breaker import CLAUDE_MISSING, QUOTA_HOLD, PersistedCircuits, State
from maestro_py.policy.budget import Estimate, Budget
from maestro_py.policy.denials import Denials, Streak
from maestro_py.policy.verdict import Action, Verdict, burnt
from maestro_py.policy.gates import FleetAnswer, Hold, Refusal, first_hold
if TYPE_CHECKING:
    from maestro_py.fleet.gate import FleetGate
from maestro_py.policy.failures import HANDLING, FailureClass, classify, failure_reason, quota_reset
from maestro_py.registry import Cadence
from maestro_py.session.command import auth_fix, claude_fix
from maestro_py.session.runlog import cap_mib
from maestro_py.session.runner import RunOutcome
from maestro_py.session.sandbox import Sandbox



# A 429/529 reaches the daemon only after the CLI's own retries gave up, or at once when the server asked for
# more than 60 s (the CLI does not wait that long: claude-cli-facts §retry-after). Either way an immediate
# retry would cost a CLI start and its requests for nothing: the rate class waits at least this long.
RATE_MIN_WAIT = 60.0
# Exit codes of a run that never became the CLI: 126 "cannot execute", 127 "not found", as `env` (a script's
# `#!/usr/bin/env node` under launchd's bare PATH) and shells report them. With no result line, `claude` is broken.
CANNOT_EXEC = (126, 127)


class Tuning(Protocol):
    """The settings the guardrails read (`config.Settings` is one), as they are in force at each use."""

    max_live: int
    max_attempts: int
    quota_min_hold: float
    quota_pause_at: float | None
    backoff: str


class LiveView(Protocol):
    """What the gates need to know about the sub-sessions running now (`daemon.live.LiveRuns` is one)."""

    def count(self) -> int:
        """Live sub-sessions, counted from real processes (a leaked child counts)."""

    def ticks(self, cadence: str) -> list[str]:
        """The ticks whose sub-session of `cadence` is running."""


class _LiveState:
    """The gates' view of the daemon's memory for one question (`gates.GateState`)."""

    def __init__(self, guardrails: "Guardrails", spawned_this_step: bool, tick_id: str | None) -> None:
        self.g = guardrails
        self.spawned_this_step = spawned_this_step
        self.tick_id = tick_id
        self.emergency = guardrails.emergency
        self.breakers = guardrails.breakers
        self.budget = guardrails.budget
        self.max_live = guardrails.max_live
        self.credentials_verified, self._fleet = guardrails.credentials_verified, None

    def claude_problem(self) -> str | None:
        return None  # the daemon learns it from a spawn, and halts (the claude_missing breaker)

    def backoff_until(self, cadence: str, now: datetime) -> datetime | None:
        return self.g.backoff.holds(cadence, now)

    def sandbox(self) -> Sandbox:
        return self.g.sandbox()

    def denied(self, cadence: Cadence) -> Streak | None:
        return self.g.denials.holding(cadence.name, self.g.policy_of(cadence))

    def live_count(self) -> int:
        return self.g.live.count()

    def live_ticks(self, cadence: str) -> list[str]:
        return self.g.live.ticks(cadence)

    def fleet(self, cadence: Cadence, estimate: Estimate, now: datetime) -> FleetAnswer | None:
        """The store's answer, which here is a reservation (kept until `spawned` or `unadmit`)."""
        if self.g.fleet is None or self.tick_id is None:
            return None
        if self._fleet is None:  # one store transaction answers all three fleet gates
            self._fleet = self.g.fleet.admit(self.tick_id, cadence.name, estimate, now)
        return self._fleet


class Guardrails:
    """Emergency stop, auth halt, breakers, backoff, pacing, live cap, credential probe, overlap, budget."""

    def __init__(self, *, circuits: PersistedCircuits, backoff: Backoff, budget: Budget, live: LiveView,
                 settings: Callable[[], Tuning], credential: str, events: EventLog, clock: Clock,
                 subscription: bool = False, fleet: FleetGate | None = None,
                 sandbox: Callable[[], Sandbox] = lambda: Sandbox(None), denials: Denials | None = None,
                 policy_of: Callable[[Cadence], str] = lambda cadence: "") -> None:
        self.circuits, self.breakers = circuits, circuits.breakers
        self.backoff, self.budget = backoff, budget
        self.fleet = fleet  # the governor store's gate, when MAESTRO_GOVERNOR_URL names one
        self.live = live
        self.sandbox = sandbox  # whether the CLI's sandbox can run (`session.sandbox.available`)
        self.denials = denials or Denials()  # each cadence's streak of denied runs
        self.policy_of = policy_of  # a cadence's policy id now (`command.policy_id`): a change lifts a denial hold
        self.settings = settings  # the settings in force: a reload hands out a new value, read at each use
        self._wait: tuple[str, Wait] | None = None  # MAESTRO_BACKOFF_SECONDS as last parsed
        self.credential = credential  # fingerprint of the credentials sub-sessions run with now
        self.subscription = subscription  # sub-sessions authenticate with the subscription login
        self.quota_usage: dict[str, dict[str, Any]] = {}  # window kind -> last utilization the CLI reported
        self.events, self.clock = events, clock
        self.emergency: str | None = None
        self.credentials_verified = False  # until one run succeeds with these credentials, run one at a time

    @property
    def max_live(self) -> int:
        return self.settings().max_live

    @property
    def max_attempts(self) -> int:
        return self.settings().max_attempts

    @property
    def quota_min_hold(self) -> float:
        """Seconds a usage-limit hold lasts at least, whatever the reset says."""
        return self.settings().quota_min_hold

    @property
    def quota_pause_at(self) -> float | None:
        """The utilization at which spawning pauses, leaving the rest to a human (None: never)."""
        return self.settings().quota_pause_at

    def _default_wait(self) -> Wait:
        """The backoff after a failure of a cadence without its own `backoff_seconds` (parsed once per value)."""
        text = self.settings().backoff
        if self._wait is None or self._wait[0] != text:
            self._wait = (text, parse_backoff(text))
        return self._wait[1]

    # -- before a spawn ---------------------------------------------------
    def refusal(self, cadence: Cadence, now: datetime, *, spawned_this_step: bool,
                tick_id: str | None = None) -> Refusal | None:
        """Why `cadence` may not spawn now (the first gate of `gates.GATES` that holds), or None if it may."""
        hold = self.hold(cadence, now, spawned_this_step=spawned_this_step, tick_id=tick_id)
        return hold.refusal if hold is not None else None

    def hold(self, cadence: Cadence, now: datetime, *, spawned_this_step: bool,
             tick_id: str | None = None) -> Hold | None:
        """The first gate that holds a spawn of `cadence` now, walked over the daemon's live state, or None.

        With a governor store and a `tick_id`, the last gates reserve the run's live slot and amount in the
        store: the caller then either spawns it (`spawned`) or gives the reservation back (`unadmit`)."""
        hold = first_hold(_LiveState(self, spawned_this_step, tick_id), cadence, now)
        if hold is not None and hold.refusal is Refusal.BUDGET:
            self._report_budget(cadence, hold, now)
        elif hold is not None and hold.refusal is Refusal.FLEET_BUDGET:
            self._report_fleet_budget(cadence, hold.detail, now)
        return hold

    def memory(self, now: datetime) -> dict[str, Any]:
        """What the gates read that lives only in this daemon's memory, for the status file (so the views'
        `ops.gates.PersistedState` reads it back): whether the credentials are proven, the backoffs still ahead."""
        return {"credentials_verified": self.credentials_verified,
                "backoff": {name: iso(at) for name, at in self.backoff.next_allowed.items() if at > now}}

    def _report_fleet_budget(self, cadence: Cadence, answer: FleetAnswer, now: datetime) -> None:
        """The store's budget refused: said once per scope, window and reset."""
        assert self.fleet is not None
        if self.fleet.first_report(answer, now):  # type: ignore[arg-type]
            self.events.emit("fleet_budget_exhausted", level="error" if answer.never_fits else "warn",
                             cadence=cadence.name, scope=answer.scope, window=answer.window,
                             resets_at=iso(answer.resets_at) if answer.resets_at else None,
                             never_fits=answer.never_fits, reason=f"{cadence.name} waits: {answer.detail}")

    def unadmit(self) -> None:
        """Give back a fleet reservation that did not become a spawn (the claim or the guard said no)."""
        if self.fleet is not None:
            self.fleet.unadmit()

    def estimate(self, cadence: Cadence) -> Estimate:
        """What a run of `cadence` is expected to cost (its reservation)."""
        return self.budget.estimate(cadence.name, cadence.reserve_tokens, cadence.reserve_usd)

    def spawned(self, tick_id: str, cadence: Cadence) -> tuple[Estimate, str | None]:
        """A spawn was allowed and started: in HALF_OPEN it is the one probe; its estimate is reserved.
        (The estimate, and the run id its fleet reservation is held under, if there is a governor store.)"""
        self.breakers.on_spawn(cadence.name)
        estimate = self.estimate(cadence)
        self.budget.reserve(tick_id, cadence.name, estimate)
        return estimate, self.fleet.spawned(tick_id) if self.fleet is not None else None

    def _report_budget(self, cadence: Cadence, hold: Hold, now: datetime) -> None:
        """A budget refused: said once per scope and window (a run that can never fit, once per cadence: a
        reset will not lift it, so it is a configuration error)."""
        short = hold.detail
        about = f"never:{cadence.name}" if short.never_fits else ""
        if self.budget.first_report(short.scope, short.window, now, about):
            self.events.emit("budget_exhausted", level="error" if short.never_fits else "warn", cadence=cadence.name,
                             **short.details(cadence.name))

    # -- after a run ------------------------------------------------------
    def learn(self, tick: Tick, cadence: Cadence, outcome: RunOutcome, *, ended_by: str | None = None,
               disk_trouble: Callable[[], str | None] = lambda: None, cli_retries: bool = False,
               claude: tuple[str, str] | None = None) -> Verdict:
        """What a finished sub-session teaches the guards, and where its tick goes. Call once per run.

        `ended_by`: the daemon ended the run itself (drain, emergency stop), so it is requeued even if the
        CLI printed a success after the signal. `disk_trouble`: asked only when a run left no parsable
        result, whether the disk failed meanwhile (then the failure is not the tick's). `cli_retries`: the CLI
        was allowed to retry (so a 5xx it did not retry is one the API said not to). `claude`: the binary the
        run started and its identity (a run that could not become the CLI halts like a missing binary).
        """
        if ended_by is not None:
            self._quota_probe_ended(cut_short=True)
            return Verdict(Action.REQUEUE, ended_by, outcome="requeued")
        if outcome.truncated:
            # Ended for printing past the log cap, whatever the CLI printed after the signal: transient (a runaway
            # tool may not run away again; attempts and the breaker bound the retries).
            return self.failed(tick, cadence, FailureClass.TRANSIENT,
                               f"output over the {cap_mib(outcome.log_cap or 0)} MiB cap; run ended")
        if claude is not None and outcome.result is None and outcome.exit_code in CANNOT_EXEC:
            said = (outcome.tail.strip().splitlines() or ["no output"])[-1][:300]
            return self.claude_unavailable(tick, f"{claude[0]} exited {outcome.exit_code} without a result, so it "
                                                 f"could not run: {said}", claude[0], claude[1])
        if outcome.ok and not outcome.timed_out:
            self._quota_probe_ended()
            self._succeeded(cadence.name)
            self._note_usage(tick, outcome)
            return Verdict(Action.COMPLETE, outcome="ok")
        cls, reason = classify(outcome, cli_retries=cli_retries), failure_reason(outcome, cli_retries=cli_retries)
        if cls is FailureClass.QUOTA:
            return self._hold_quota(tick, outcome, reason)
        self._quota_probe_ended()
        if cls is FailureClass.UNKNOWN:
            trouble = disk_trouble()
            if trouble is not None:  # its output could not be written: the disk failed, not the tick
                cls, reason = FailureClass.DISK, f"{reason}; the run's log folder: {trouble}"
        return self.failed(tick, cadence, cls, reason)

    def failed(self, tick: Tick, cadence: Cadence, cls: FailureClass, reason: str) -> Verdict:
        """A sub-session failed with class `cls` (or could not start): update the guards, return the verdict."""
        handling = HANDLING[cls]
        now = self.clock.now()
        if handling.halts_all:
            self.breakers.halt_auth(now, reason, self.credential)
            self.credentials_verified = False
            self.circuits.save()
            self.events.emit("auth_halt", level="error", id=tick.id, cadence=tick.cadence, reason=reason,
                             fix=auth_fix(subscription=self.subscription))
        at_least = RATE_MIN_WAIT if cls is FailureClass.RATE else 0.0
        retry_at = self._trip(tick.cadence, cadence, now, reason, at_least) if handling.trips_breaker else None
        if not handling.burns_attempt:
            return Verdict(Action.REQUEUE, f"{reason} ({cls.value} failure: attempt not counted)", failure_class=cls,
                           outcome=f"failed_{cls.value}")
        return self._burn(tick, cadence, reason, retry_at, cls, permanent=handling.dead_letter)

    def _hold_quota(self, tick: Tick, outcome: RunOutcome, reason: str) -> Verdict:
        """The usage limit: hold every spawn until it resets; the tick goes back as it was."""
        until = self._set_quota_hold(tick, outcome, reason)
        return Verdict(Action.REQUEUE, f"{reason} (usage limit: held until {iso(until)}; attempt not counted)",
                       failure_class=FailureClass.QUOTA, outcome="failed_quota")

    def _note_usage(self, tick: Tick, outcome: RunOutcome) -> None:
        """Remember the window's utilization; at MAESTRO_QUOTA_PAUSE_AT, pause spawning until it resets."""
        info = outcome.result.rate_limit if outcome.result else None
        if not info or not isinstance(info.get("utilization"), (int, float)):
            return
        kind, used = str(info.get("rateLimitType") or "usage limit"), float(info["utilization"])
        self.quota_usage[kind] = {"utilization": used, "status": info.get("status"), "at": iso(self.clock.now()),
                                  "resets_at": info.get("resetsAt")}
        if self.quota_pause_at is None or used < self.quota_pause_at or info.get("status") != "allowed_warning":
            return
        reason = f"paused at {used:.0%} of the {kind} window (MAESTRO_QUOTA_PAUSE_AT={self.quota_pause_at:g})"
        self._set_quota_hold(tick, outcome, reason, utilization=used)

    def _set_quota_hold(self, tick: Tick, outcome: RunOutcome, reason: str, **fields: Any) -> datetime:
        """Hold every spawn until the window `outcome` reports resets; save it, say so once; the reset time."""
        now = self.clock.now()
        until, kind = quota_reset(outcome, now, self.quota_min_hold)
        self.breakers.hold_quota(now, until, f"{kind}: {reason}")
        self.circuits.save()
        self.events.emit("quota_hold", level="warn", id=tick.id, cadence=tick.cadence, kind=kind, until=iso(until),
                         reason=reason, **fields)
        return until

    def _quota_probe_ended(self, *, cut_short: bool = False) -> None:
        """A run ended while the hold was half-open without meeting the limit: the hold is lifted (cut short by the
        daemon: it proved nothing, so another probe may go)."""
        hold = self.breakers.circuits.get(QUOTA_HOLD)
        if hold is None or hold.state is not State.HALF_OPEN:
            return
        if cut_short:
            hold.probe_in_flight = False
        elif self.breakers.lift_quota():
            self.events.emit("quota_hold_lifted", level="warn", reason="a run after the reset was not refused")
            self.circuits.save()

    def claude_unavailable(self, tick: Tick, reason: str, path: str | None, identity: str) -> Verdict:
        """The `claude` binary could not be started: halt every spawn (one event) and requeue the tick as it
        was; the same for every cadence, so no breaker, no backoff and no attempt. `identity`: what lifts it."""
        self.breakers.halt_claude(self.clock.now(), reason, identity)
        self.circuits.save()
        self.events.emit("claude_missing", level="error", id=tick.id, cadence=tick.cadence, path=path,
                         reason=reason, fix=claude_fix())
        return Verdict(Action.REQUEUE, f"{reason} (claude is not usable: attempt not counted; spawning halted)",
                       failure_class=FailureClass.SPAWN, outcome="failed_claude_missing")

    @property
    def claude_halted(self) -> bool:
        """True while spawning is halted because `claude` could not be started."""
        return CLAUDE_MISSING in self.breakers.circuits

    def claude_changed(self, identity: str) -> None:
        """`claude` resolves to `identity` now: lift a `claude` halt set for another (or no) binary."""
        if self.breakers.claude_changed(identity):
            self.events.emit("claude_found", level="warn", reason="the claude binary can be found now")
            self.circuits.save()

    def inline_failed(self, tick: Tick, cadence: Cadence, reason: str) -> Verdict:
        """An inline handler or a guard failed: an attempt burns, at once retryable; no breaker, no backoff."""
        return self._burn(tick, cadence, reason, None, None, permanent=False)

    def _burn(self, tick: Tick, cadence: Cadence, reason: str, retry_at: datetime | None,
              cls: FailureClass | None, *, permanent: bool) -> Verdict:
        return burnt(tick, reason, retry_at, cls, max_attempts=cadence.max_attempts or self.max_attempts,
                     permanent=permanent)

    def _succeeded(self, cadence: str) -> None:
        """A run succeeded: the credentials work, and the cadence's backoff and breaker reset."""
        self.credentials_verified = True
        self.backoff.record_success(cadence)
        if self.breakers.record_success(cadence):
            self.events.emit("circuit_closed", cadence=cadence)
            self.circuits.save()

    def _trip(self, name: str, cadence: Cadence, now: datetime, reason: str, at_least: float) -> datetime:
        """Count a failure toward the cadence's backoff and breaker; when the cadence may run again."""
        wait = schedule(cadence.backoff_seconds) if cadence.backoff_seconds else self._default_wait()
        retry_at = self.backoff.record_failure(name, now, wait, at_least=at_least)
        before = self.breakers.circuits.get(name)
        was_open = before is not None and before.state is not State.CLOSED
        circuit = self.breakers.record_failure(name, now, reason)
        if circuit.state is State.OPEN:
            retry_at = max(retry_at, circuit.open_until) if circuit.open_until else retry_at
            self.events.emit("circuit_opened" if not was_open else "circuit_reopened", level="error",
                             cadence=name, failures=circuit.failures,
                             open_until=iso(circuit.open_until) if circuit.open_until else None, reason=reason)
            self.circuits.save()
        return retry_at

    # -- housekeeping -----------------------------------------------------
    def advance(self, now: datetime) -> None:
        """Once per loop: circuits whose open period is over go HALF_OPEN (one probe may go)."""
        for name in self.breakers.advance(now):
            self.events.emit("circuit_half_open", cadence=name)

    def set_emergency(self, reason: str | None) -> bool:
        """Set or clear the emergency stop; True if that changed it."""
        changed = reason != self.emergency
        self.emergency = reason
        return changed

    def use_credentials(self, credential: str, why: str, *, subscription: bool = False) -> None:
        """Sub-sessions now run with `credential`: unproven until a run succeeds; lifts an auth halt set
        under other credentials."""
        self.subscription = subscription
        if credential == self.credential:
            return
        self.credential = credential
        self.credentials_verified = False
        self.circuits.credentials_changed(credential, why)

    def restore(self) -> None:
        """Breakers survive restarts (see `PersistedCircuits.restore`)."""
        self.circuits.restore(self.credential)

    def sync(self) -> None:
        """Pick up an operator's edit of `circuit-open.json`; the cadences its "released" key names ("*": all) end
        their backoff too (`circuit reset`: the ticks it released run at the next loop), and the key is dropped."""
        released = (self.circuits.sync() or {}).get("released")
        if isinstance(released, list) and released:
            for name in set(self.backoff.next_allowed) if "*" in released else set(map(str, released)):
                self.backoff.record_success(name)
            self.circuits.save()
