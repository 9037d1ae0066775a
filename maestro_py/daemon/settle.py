"""Settling: a finished sub-session's ledger row and charge, the guardrails' verdict, and the tick's move."""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maestro_py.bus.events import EventLog
from maestro_py.bus.fsio import disk_trouble
from maestro_py.bus.recovery import Stale
from maestro_py.bus.store import Bus, Claim
from maestro_py.bus.tick import Tick
from maestro_py.clock import Clock, iso
from maestro_py.daemon.live import LiveRuns, Running, Settlement
from maestro_py.paths import Layout
from maestro_py.policy import denials
from maestro_py.policy.budget import Budget, Estimate, charge_for, window_bounds
from maestro_py.policy.guardrails import Guardrails
from maestro_py.policy.verdict import Action, Verdict, killed, reaped, requeued
from maestro_py.session.ledger import Ledger
from maestro_py.session.metering import Usage
from maestro_py.session.runlog import run_logs
from maestro_py.session.runner import RunOutcome


class Settler:
    """Turns finished runs into ledger rows and tick moves; every verdict goes through `apply`."""

    def __init__(self, *, bus: Bus, guardrails: Guardrails, budget: Budget, ledger: Ledger, live: LiveRuns,
                 events: EventLog, counters: Counter[str], clock: Clock,
                 warn_at: Callable[[], float | None] = lambda: None,
                 layout: Layout | None = None,
                 reservation: Callable[[str], Estimate] | None = None) -> None:
        self.bus = bus
        self.guardrails = guardrails
        self.budget = budget
        self.ledger = ledger
        self.live = live
        self.events = events
        self.counters = counters
        self.clock = clock
        self.warn_at = warn_at  # MAESTRO_BUDGET_WARN_AT in force: the fraction of a limit that earns one budget_warning
        self.layout = layout  # where the per-run logs show which runs a dead daemon had started
        self.reservation = reservation or (lambda cadence: budget.estimate(cadence))  # what a run of a cadence reserves

    def settle_finished(self) -> bool:
        """Settle every run that has ended; True if any was. An OSError leaves the run to be settled again."""
        settled = False
        for tick_id, run in self.live.items():
            outcome = run.session.poll()
            if outcome is None:
                continue
            try:
                self.settle(run, outcome)
            except OSError:
                raise  # the loop's disk-trouble path: the run stays here and is settled again
            except Exception as exc:  # a bug or a hostile output must not take the loop (and every run) down
                self.events.emit("internal_error", level="error", id=tick_id, cadence=run.claim.tick.cadence,
                                 during="settle", error=f"{type(exc).__name__}: {exc}",
                                 traceback=traceback.format_exc()[-2000:])
                self._charge_unknown(run)
                self.apply(run.claim, requeued(f"internal error while settling ({type(exc).__name__}: {exc}); "
                                               "requeued, attempt not counted"))
            self.live.remove(tick_id)
            settled = True
        return settled

    def settle(self, run: Running, outcome: RunOutcome) -> None:
        """Judge the run once (its pending `Settlement`), ledger it once, then move the tick as judged."""
        if run.settlement is None:
            run.settlement = self._judge(run, outcome)
        pending = run.settlement
        if not pending.ledgered:
            self.ledger.append(pending.row)
            pending.ledgered = True
            self.budget.charge(pending.row, self.clock.now())
            self._warn_budget(pending.row)
            self._charge_fleet(run, pending.row)
        self.apply(run.claim, pending.verdict, **pending.details)

    def _charge_unknown(self, run: Running) -> None:
        """A run whose settle failed half-way: unless it is ledgered already, it gets a row with unknown usage,
        charged its reservation (unknown spend never reads as free, and the reservation is not left held)."""
        if run.settlement is not None and run.settlement.ledgered:
            return
        tick = run.claim.tick
        held = self.budget.release(tick.id) or run.estimate
        row = self._book_unknown(tick, run.claim.attempt, held, "settle failed; usage unknown", run_id=run.run_id)
        self._charge_fleet(run, row)

    def _book_unknown(self, tick: Tick, attempt: int, held: Estimate, error: str, **extra: Any) -> dict[str, Any]:
        """A ledger row for a run whose usage is unknown, charged its reservation: never a silent zero."""
        row = {"ts": iso(self.clock.now()), "tick": tick.id, "cadence": tick.cadence, "attempt": attempt,
               "ok": False, **Usage.unknown().to_row(), "metered": False, "reserved_tokens": round(held.tokens),
               "reserved_usd": round(held.usd, 6), "charged_tokens": round(held.tokens), "charged_usd": held.usd,
               "error": error, **extra}
        self.ledger.append(row)
        self.budget.charge(row, self.clock.now())
        self._warn_budget(row)
        return row

    def book_lost_run(self, stale: Stale) -> None:
        """A claim whose owner died: if that daemon had started its sub-session (its log files for this attempt
        exist) and no ledger row has it, the run is booked now, usage unknown and charged its reservation, before
        the tick runs again: what the API billed for a killed run is never read as free. (The governor store
        charges it too: its lease expires.)"""
        tick, attempt = stale.claim.tick, stale.claim.attempt
        if self.layout is None:
            return
        # Each start of this attempt left a log; each run booked left a row (a reaped attempt runs again under
        # the same number, so a crash loop shows as more logs than rows).
        started = sum(1 for p in run_logs(self.layout, tick, attempt) if p.name.endswith(".stdout.log"))
        if not started:
            return  # never started (an inline tick, or killed before its spawn)
        booked = sum(1 for row in self.ledger.rows() if row.get("tick") == tick.id and row.get("attempt") == attempt)
        held = self.reservation(tick.cadence)
        for _ in range(started - booked):
            self._book_unknown(tick, attempt, held, f"its daemon (pid {stale.owner_pid}) died while it ran; usage "
                                                    "unknown, charged its reservation", lost=True)
            self.events.emit("lost_run_booked", level="warn", id=tick.id, cadence=tick.cadence, attempt=attempt,
                             charged_usd=round(held.usd, 6), owner_pid=stale.owner_pid)

    def _warn_budget(self, row: dict[str, Any]) -> None:
        """One `budget_warning` per scope and window once a charge takes its spend past `warn_at` of a limit.
        Only the limits this run's cadence counts against are looked at, and only after a sub-session."""
        warn_at = self.warn_at()
        if warn_at is None:
            return
        now = self.clock.now()
        for scope, window, limit in self.budget.scopes(str(row.get("cadence", ""))):
            tokens, usd = self.budget.spent(scope, window, now)
            used = max(tokens / limit.tokens if limit.tokens else 0.0, usd / limit.usd if limit.usd else 0.0)
            if used >= warn_at and self.budget.first_report(scope, window, now, "warn"):
                resets = window_bounds(window, now, self.budget.zone)[1]
                self.events.emit("budget_warning", level="warn", cadence=row.get("cadence"), scope=scope,
                                 window=window, used_pct=round(used * 100), spent_tokens=round(tokens),
                                 limit_tokens=limit.tokens, spent_usd=round(usd, 6), limit_usd=limit.usd,
                                 resets_at=iso(resets),
                                 reason=f"the {scope} {window} budget is {used:.0%} spent (warning at "
                                        f"{warn_at:.0%}, MAESTRO_BUDGET_WARN_AT); it resets at {iso(resets)}")

    def _charge_fleet(self, run: Running, row: dict[str, Any]) -> None:
        """The same charge in the governor store (or its outbox, when the store cannot be reached)."""
        fleet = self.guardrails.fleet
        if fleet is not None:
            fleet.settle(run.run_id, tokens=row["charged_tokens"], usd=row["charged_usd"], measured=row["metered"])

    def _judge(self, run: Running, outcome: RunOutcome) -> Settlement:
        claim, tick = run.claim, run.claim.tick
        result = outcome.result
        usage = result.usage.to_row() if result is not None else Usage.unknown().to_row()
        details: dict[str, Any] = {
            "mode": "escalate", "exit_code": outcome.exit_code, "signal": outcome.signal,
            "duration_ms": outcome.duration_ms, "timed_out": outcome.timed_out,
            "api_error_status": result.api_error_status if result else None,
            "cost_usd": usage.get("cost_usd"), "session_id": result.session_id if result else None,
        }
        held = self.budget.release(tick.id) or run.estimate
        measured, charged_tokens, charged_usd = charge_for(usage, held, exempt=run.cadence.budget_exempt)
        row = {
            "ts": iso(self.clock.now()), "tick": tick.id, "cadence": tick.cadence, "attempt": claim.attempt,
            "exit_code": outcome.exit_code, "signal": outcome.signal, "duration_ms": outcome.duration_ms,
            "ok": outcome.ok, "session_id": details["session_id"], **usage, "metered": measured,
            "reserved_tokens": round(held.tokens), "reserved_usd": round(held.usd, 6),
            "charged_tokens": charged_tokens, "charged_usd": charged_usd,
        }
        if run.run_id is not None:
            row["run_id"] = run.run_id
        self._note_denials(run, outcome, row, details)
        if outcome.truncated:
            details["truncated"] = True
        verdict = self.guardrails.learn(tick, run.cadence, outcome, ended_by=run.end_reason,
                                         disk_trouble=lambda: self._disk_trouble_during(run),
                                         cli_retries=run.cli_retries, claude=run.claude)
        if run.kill is not None and not run.kill.requeue:  # ended by `maestro tick kill`: filed as killed
            verdict = killed(run.kill.words())
        if verdict.failure_class is not None:
            details["tail"] = outcome.tail  # what the CLI said, for the tick's history and the event
        if outcome.timed_out:
            self.counters["timeouts"] += 1
            self.events.emit("run_timed_out", level="warn", id=tick.id, cadence=tick.cadence, attempt=claim.attempt,
                             timeout_s=outcome.timeout_s, duration_ms=outcome.duration_ms)
        return Settlement(verdict, row, details)

    def _note_denials(self, run: Running, outcome: RunOutcome, row: dict[str, Any], details: dict[str, Any]) -> None:
        """What the CLI denied the run: in its ledger row (with the policy it ran under), its history, an event;
        the cadence's streak of denied runs learns it (`policy.denials`)."""
        tick = run.claim.tick
        tools = outcome.result.denials if outcome.result is not None else None
        row["policy"], row["denials"] = run.policy, denials.to_row(tools, None)
        streak = self.guardrails.denials.learn(tick.cadence, run.policy, tools)
        if not tools:
            return
        details["denials"] = row["denials"]
        self.counters["permission_denials"] += len(tools)
        held = streak is not None and streak.runs >= self.guardrails.denials.hold_after
        self.events.emit("permission_denied", level="error" if held else "warn", id=tick.id, cadence=tick.cadence,
                         attempt=run.claim.attempt, count=len(tools), tools=sorted(set(tools)),
                         streak=streak.runs if streak else 1, held=held,
                         reason=f"the CLI denied {len(tools)} tool call(s) ({', '.join(sorted(set(tools)))}) under "
                                "the cadence's permissions" + ("; the cadence is held as misconfigured" if held else ""),
                         fix=denials.fix(tick.cadence, streak) if streak else "")

    def _disk_trouble_during(self, run: Running) -> str | None:
        """Did the disk fail while `run` ran? (Checked now, and by the I/O errors the loop met meanwhile.)"""
        trouble = disk_trouble(Path(run.stdout_log).parent)
        if trouble is None and self.counters["io_errors"] > run.io_errors_at_start:
            trouble = "the daemon met disk errors while it ran"
        return trouble

    def apply(self, claim: Claim, verdict: Verdict, **details: Any) -> None:
        """Move the tick as `verdict` says, and count it (`carry_out`)."""
        carry_out(self.bus, claim, verdict, self.counters, **details)

    def reap(self, *, max_reaps: int, active: set[str] | None = None) -> list[str]:
        """Claims whose owner is gone, a run they lost booked first, settled as the policy says (`reap`)."""
        return reap(self.bus, self.counters, max_reaps=max_reaps, active=active, before=self.book_lost_run)


def carry_out(bus: Bus, claim: Claim, verdict: Verdict, counters: Counter[str], **details: Any) -> None:
    """The one mover: `verdict` carried out by the bus, which decides nothing again, and counted."""
    if verdict.failure_class is not None:
        details["failure_class"] = verdict.failure_class.value
    action = verdict.action
    if action is Action.COMPLETE:
        bus.complete(claim, verdict.outcome, reason=verdict.reason, ran=verdict.ran, **details)
        counters[verdict.counter or "succeeded"] += 1
    elif action is Action.REQUEUE:
        bus.requeue(claim, verdict.reason or "requeued", outcome=verdict.outcome, reaps=verdict.reaps, **details)
        if verdict.failure_class is not None:  # a failure that was not the tick's fault, not a drain
            counters["failed"] += 1
        counters[verdict.counter or "requeued"] += 1
    elif action is Action.RETRY:
        bus.retry(claim, verdict.reason or "failed", max_attempts=verdict.max_attempts, retry_at=verdict.retry_at,
                  outcome=verdict.outcome, **details)
        counters["failed"] += 1
        counters["retries"] += 1
    else:
        bus.dead_letter(claim, verdict.reason or "failed", burn=verdict.burns, outcome=verdict.outcome,
                        dlq_reason=verdict.dlq_reason, reaps=verdict.reaps, **details)
        if verdict.burns:
            counters["failed"] += 1
        counters[verdict.counter or "dlq"] += 1


def reap(bus: Bus, counters: Counter[str], *, max_reaps: int, active: set[str] | None = None,
         before: Callable[[Stale], None] = lambda stale: None) -> list[str]:
    """Every claim whose owner is gone (`Bus.stale_claims`) settled by its verdict: this process's own claim whose
    settling an I/O error cut short goes back as it was; another's is a reap (`verdict.reaped`), `before` it is
    settled. Their ids."""
    out = []
    for stale in bus.stale_claims(active=active):
        if not stale.interrupted:
            before(stale)
        if stale.interrupted:
            carry_out(bus, stale.claim, requeued("settling was interrupted by an I/O error; requeued", counter="reaped"),
                      counters)
        else:
            carry_out(bus, stale.claim, reaped(stale.claim.tick, max_reaps=max_reaps), counters,
                      owner_pid=stale.owner_pid)
        out.append(stale.claim.tick.id)
    return out
