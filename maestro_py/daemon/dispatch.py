"""Dispatch: claim what the guardrails allow, run it inline or start its sub-session (at most one per step)."""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Callable, Mapping

from maestro_py import inline
from maestro_py.bus.events import EventLog
from maestro_py.bus.fsio import DISK_ERRNOS
from maestro_py.bus.inbox import Entry, payload_fingerprint
from maestro_py.bus.store import Bus, Claim
from maestro_py.clock import Clock
from maestro_py.config import Settings
from maestro_py.daemon.live import LiveRuns, Running
from maestro_py.daemon.sdnotify import Notifier
from maestro_py.daemon.settle import Settler
from maestro_py.errors import ClaudeUnavailable, SpawnError
from maestro_py.paths import Layout
from maestro_py.policy import overlap
from maestro_py.policy.failures import FailureClass
from maestro_py.policy import verdict
from maestro_py.policy.guardrails import Guardrails
from maestro_py.registry import Cadence, Registry
from maestro_py.registry_keys import Mode
from maestro_py.session import command
from maestro_py.session.runner import Spawner

INLINE_BATCH = 256  # inline ticks per step (and per group commit: one sync) before the loop looks at its other duties again
INLINE_WINDOW = 0.05  # seconds of inline work per step: a slow handler's batch commits early


class Holds:
    """Counts held ticks, not loop passes: a `skipped_*` / `deferred_*` counter goes up when a queued tick is first
    held for that reason, and again only once it was let through (or left the queue) and is held again. Two ticks
    waiting out an emergency stop for an hour count 2, not one per loop pass."""

    def __init__(self, counters: Counter[str]) -> None:
        self.counters = counters
        self._held: dict[str, set[str]] = {}  # inbox name -> the reasons it has been held for since it was let through
        self._looked_at: set[str] = set()

    def begin(self) -> None:
        """A look at every head starts."""
        self._looked_at = set()

    def held(self, name: str, reason: str) -> None:
        """`name` was refused for `reason` in this look; counted if this hold is new."""
        self._looked_at.add(name)
        reasons = self._held.setdefault(name, set())
        if reason not in reasons:
            reasons.add(reason)
            self.counters[reason] += 1

    def let_through(self, name: str) -> None:
        """`name` passed every gate: a later refusal is a new hold."""
        self._held.pop(name, None)

    def complete(self) -> None:
        """Every head was looked at: a tick not among them is no longer held (claimed, cancelled, waiting for its
        retry time); forgetting it keeps this as small as the queue's heads."""
        for name in [n for n in self._held if n not in self._looked_at]:
            del self._held[name]


class Dispatcher:
    """One step's claims: coalesce duplicates, then the oldest runnable heads, inline up to a batch."""

    def __init__(self, *, layout: Layout, settings: Callable[[], Settings], bus: Bus, guardrails: Guardrails, live: LiveRuns,
                 spawner: Spawner, settler: Settler, events: EventLog, notifier: Notifier,
                 counters: Counter[str], clock: Clock, stopping: Callable[[], bool] = lambda: False) -> None:
        self.layout = layout
        self.settings = settings  # the settings in force (a reload hands out a new value)
        self.bus = bus
        self.guardrails = guardrails
        self.live = live
        self.spawner = spawner
        self.settler = settler
        self.events = events
        self.notifier = notifier
        self.counters = counters
        self.clock = clock
        self.stopping = stopping  # polled by inline calls: a drain or stop cuts them short
        self.holds = Holds(counters)

    def dispatch(self, registry: Registry, env: Mapping[str, str]) -> bool:
        """Claim and start what the guardrails allow; True if anything was claimed or settled.

        The batch's completions are one group commit: durable together, with one sync at the end.
        """
        with self.bus.group_commit():
            try:
                return self._batch(registry, env)
            finally:
                self.guardrails.unadmit()

    def _batch(self, registry: Registry, env: Mapping[str, str]) -> bool:
        progressed = self._coalesce(registry)
        inline_left = INLINE_BATCH
        spawned = False
        window_ends = self.clock.monotonic() + INLINE_WINDOW
        while inline_left > 0 and self.clock.monotonic() < window_ends and not self.stopping():
            self.guardrails.unadmit()  # a fleet reservation the last entry did not spawn with goes back
            entry = self._next_entry(registry, spawned)
            if entry is None:
                break
            claim = self.bus.claim(entry.name)
            self.counters["quarantined"] = self.bus.quarantined
            if claim is None:
                continue
            self.counters["claimed"] += 1
            progressed = True
            cadence = registry.get(claim.tick.cadence)
            if cadence is None:
                self.settler.apply(claim, verdict.unknown_cadence(claim.tick.cadence))
                continue
            if cadence.mode != Mode.INLINE and not claim.tick.trusted and cadence.permissions.refuses_untrusted():
                self.settler.apply(claim, verdict.untrusted_refused(cadence.name, claim.tick.source))
                continue
            if cadence.mode == Mode.ESCALATE or (cadence.mode == Mode.GUARDED and self._guard_says_escalate(claim, cadence, env)):
                spawned = self._spawn(claim, cadence, env) or spawned
            else:
                inline_left -= 1
                if cadence.mode == Mode.INLINE:
                    self._run_inline(claim, cadence, env)
        return progressed

    def _coalesce(self, registry: Registry) -> bool:
        """Settle queued duplicates per the cadences' overlap policy (a burst costs one run)."""
        merged = False
        index = self.bus.index
        for cadence_name in {e.cadence for e in index.heads(read_ahead=False)}:
            cadence = registry.get(cadence_name)
            if cadence is None or cadence.mode == Mode.INLINE:
                continue
            running = self.live.fingerprints(cadence_name)
            for entry, target in overlap.surplus(index, cadence_name, cadence.overlap, running):
                claim = self.bus.claim(entry.name)
                if claim is None:
                    continue
                self.settler.apply(claim, verdict.merged(target), merged_into=target)
                merged = True
        return merged

    def _next_entry(self, registry: Registry, spawned: bool) -> Entry | None:
        """The oldest runnable tick whose cadence may run now; refused heads wait in `inbox/`, and so do those
        of an unknown cadence shortly after a registry edit (then they are dead-lettered)."""
        now = self.clock.now()
        settling = registry.settles_at is not None and self.clock.monotonic() < registry.settles_at
        self.holds.begin()
        for entry in self.bus.index.heads():
            cadence = registry.get(entry.cadence)
            if cadence is None and settling:  # the registry was just edited: its cadence may be on its way back
                self.holds.held(entry.name, "deferred_registry")
                continue
            if cadence is None or cadence.mode == Mode.INLINE:
                self.holds.let_through(entry.name)
                return entry
            refusal = self.guardrails.refusal(cadence, now, spawned_this_step=spawned,
                                              tick_id=entry.name.removesuffix(".json"))
            if refusal is None:
                self.holds.let_through(entry.name)
                return entry
            self.holds.held(entry.name, refusal.value)
        self.holds.complete()
        return None

    # -- inline work ------------------------------------------------------
    def _run_inline(self, claim: Claim, cadence: Cadence, env: Mapping[str, str]) -> None:
        self.notifier.ping(self.clock.monotonic())  # the call may block the loop up to its timeout
        if (cadence.handler or inline.NOOP) != inline.NOOP:
            self.events.flush()  # the log shows `claimed` while a handler runs, however long
        started = self.clock.monotonic()
        result = inline.call(cadence.handler or "noop", claim.tick.to_json(), root=self.layout.root, env=env,
                             timeout=self._inline_timeout(cadence), kind="handler", cancelled=self.stopping)
        duration_ms = round((self.clock.monotonic() - started) * 1000)
        self.counters["inline"] += 1
        if result.interrupted:
            self._interrupted(claim, result.error, mode="inline", duration_ms=duration_ms)
        elif result.ok and result.error is None:
            self.settler.apply(claim, verdict.completed(), mode="inline", detail=result.detail,
                               duration_ms=duration_ms)
        else:
            reason = result.error or result.detail or "handler failed"
            self._inline_failed(claim, cadence, reason, mode="inline", duration_ms=duration_ms)

    def _guard_says_escalate(self, claim: Claim, cadence: Cadence, env: Mapping[str, str]) -> bool:
        self.notifier.ping(self.clock.monotonic())  # the guard may block the loop up to its timeout
        self.events.flush()
        result = inline.call(cadence.guard or "noop", claim.tick.to_json(), root=self.layout.root,
                             env=env, timeout=self._inline_timeout(cadence), kind="guard", cancelled=self.stopping)
        if result.interrupted:
            self._interrupted(claim, result.error, mode="guarded")
            return False
        if result.error is not None:
            self._inline_failed(claim, cadence, f"guard failed: {result.error}", mode="guarded")
            return False
        if not result.ok:
            self.counters["inline"] += 1
            self.settler.apply(claim, verdict.declined(), mode="guarded", detail=result.detail)
            return False
        return True

    def _interrupted(self, claim: Claim, reason: str | None, **details: object) -> None:
        """A handler or guard cut short by a drain or stop: back to inbox/, attempt intact."""
        self.settler.apply(claim, verdict.requeued(reason or "interrupted: the daemon is stopping"), **details)

    def _inline_failed(self, claim: Claim, cadence: Cadence, reason: str, **details: object) -> None:
        self.settler.apply(claim, self.guardrails.inline_failed(claim.tick, cadence, reason), **details)

    # -- sub-sessions -----------------------------------------------------
    def _spawn(self, claim: Claim, cadence: Cadence, env: Mapping[str, str]) -> bool:
        tick = claim.tick
        now = self.clock.now()
        local = now.astimezone()
        stamp = command.log_stamp(local, claim.attempt, tick.id)
        stdout_log, stderr_log = self.layout.subsession_logs(local, tick.cadence, stamp)
        try:
            spec = command.spawn_spec(cadence, tick, env, self.layout.root, self.settings(), owner=self.bus.owner.token,
                                      stdout_log=stdout_log, stderr_log=stderr_log)
            session = self.spawner.spawn(spec)
        except ClaudeUnavailable as exc:
            # Missing, not executable, not a program: every cadence would fail the same, so it halts all spawns
            # (no attempt burnt) until the binary changes (`Housekeeping` looks every few seconds).
            self.counters["spawn_failures"] += 1
            halted = self.guardrails.claude_unavailable(tick, f"spawn failed: {exc}", exc.path,
                                                        command.claude_identity(env))
            self.settler.apply(claim, halted, mode="escalate")
            return False
        except (SpawnError, OSError) as exc:
            cause = exc if isinstance(exc, OSError) else exc.__cause__
            if isinstance(cause, OSError) and cause.errno in DISK_ERRNOS:
                # A full or read-only disk is not the tick's fault: back it goes, attempt intact, and the
                # loop's I/O error handling reports it and pauses.
                self.settler.apply(claim, verdict.requeued(f"not started: {exc} (disk trouble: attempt not counted)"))
                raise cause
            self.counters["spawn_failures"] += 1
            self.settler.apply(claim, self.guardrails.failed(tick, cadence, FailureClass.SPAWN, f"spawn failed: {exc}"),
                               mode="escalate")
            return False
        except Exception as exc:  # a bug or a hostile input in one tick's start must not take the loop down
            self.counters["spawn_failures"] += 1
            self.events.emit("internal_error", level="error", id=tick.id, cadence=tick.cadence, during="spawn",
                             error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-2000:])
            self.settler.apply(claim, self.guardrails.failed(tick, cadence, FailureClass.SPAWN, "spawn failed: internal "
                                                             f"error {type(exc).__name__}: {exc}"), mode="escalate")
            return False
        self.counters["escalated"] += 1
        estimate, run_id = self.guardrails.spawned(tick.id, cadence)
        self.live.add(tick.id, Running(claim, session, cadence, now, str(stdout_log), str(stderr_log),
                                       payload_fingerprint(tick.payload), estimate, run_id=run_id,
                                       io_errors_at_start=self.counters["io_errors"],
                                       cli_retries=command.cli_retries(env),
                                       claude=(spec.argv[0], command.claude_identity(env)), policy=spec.policy))
        self.events.emit("spawned", id=tick.id, cadence=tick.cadence, attempt=claim.attempt, pid=session.pid,
                         stdout_log=str(stdout_log), stderr_log=str(stderr_log))
        return True

    def _inline_timeout(self, cadence: Cadence) -> float:
        """Inline work blocks the loop: its own, much shorter default."""
        return cadence.timeout_seconds or self.settings().inline_timeout
