"""The daemon loop: reap -> claim -> gate -> run -> settle, one iteration per `step()`."""

from __future__ import annotations

import logging
import os

import psutil
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from maestro_py import inline
from maestro_py.daemon import retention
from maestro_py.policy import overlap
from maestro_py.session import command, proctree
from maestro_py.policy.backoff import Backoff, parse_backoff
from maestro_py.policy.breaker import Breakers, CircuitFile
from maestro_py.policy.budget import Estimate, cadence_limits, charge_for
from maestro_py.bus.store import Bus, Claim
from maestro_py.policy.circuits import PersistedCircuits
from maestro_py.clock import Clock, SystemClock, iso
from maestro_py.config import Settings, load_env
from maestro_py.errors import SpawnError
from maestro_py.bus.events import EventLog
from maestro_py.bus.fsio import DISK_ERRNOS, disk_trouble
from maestro_py.policy.gates import Gates, read_stop_file
from maestro_py.policy.guards import Guards
from maestro_py.bus.inbox import Entry, InboxIndex, payload_fingerprint
from maestro_py.session.ledger import Ledger
from maestro_py.session.metering import Usage
from maestro_py.daemon.lock import DaemonLock
from maestro_py.bus.owner import Owner
from maestro_py.paths import Folder, Layout
from maestro_py.policy.failures import HANDLING, FailureClass, classify, failure_reason
from maestro_py.redact import Redactor
from maestro_py.daemon.sdnotify import Notifier, scrub, status_line
from maestro_py.registry import Cadence, Registry, RegistryError
from maestro_py.session.runner import ProcessSpawner, RunOutcome, SpawnSpec, Spawner, SubSession
from maestro_py.daemon.status import new_counters, write_status
from maestro_py.daemon.wakeup import Wakeup

log = logging.getLogger("maestro")

INLINE_BATCH = 64  # inline ticks per iteration before the loop looks at its other duties again
INLINE_WINDOW = 0.05  # seconds of inline work per iteration: a slow handler's batch commits early
STATUS_EVERY = 0.25  # seconds between consumer.json rewrites while busy
HEARTBEAT_EVERY = 5.0  # seconds between rewrites of an unchanged consumer.json (the heartbeat)


@dataclass
class Running:
    """A sub-session the daemon started and has not settled yet."""

    claim: Claim
    session: SubSession
    cadence: Cadence
    started_at: datetime
    stdout_log: str
    stderr_log: str
    fingerprint: str
    estimate: Estimate
    end_reason: str | None = None
    io_errors_at_start: int = 0
    failure: tuple[FailureClass, str] | None = None  # how a failed run was judged (kept across settle retries)
    ledgered: bool = False  # set when the daemon ends it (drain, emergency stop): requeue, no attempt burnt


@dataclass
class Daemon:
    """Claims ticks from the bus and runs them inline or as `claude --print` sub-sessions."""

    layout: Layout
    settings: Settings
    env: dict[str, str]
    clock: Clock = field(default_factory=SystemClock)
    spawner: Spawner | None = None
    watch: bool = True

    def __post_init__(self) -> None:
        self.notifier = Notifier.from_env(self.env, monotonic=self.clock.monotonic)
        scrub(self.env)  # sub-sessions and handlers must not inherit NOTIFY_SOCKET/WATCHDOG_*
        self.redactor = Redactor(self.env)
        self.events = EventLog(self.layout, clock=self.clock, redactor=self.redactor)
        self.owner = Owner.current()
        self.bus = Bus(self.layout, clock=self.clock, events=self.events, owner=self.owner,
                       max_inbox=self.settings.max_inbox, max_reaps=self.settings.max_reaps)
        self.index = InboxIndex(self.bus)
        self.ledger = Ledger(self.layout.ledger_file, self.redactor)
        self.wakeup = Wakeup(self.bus.inbox, self.layout.bus_dir, watch=self.watch)
        if self.spawner is None:
            self.spawner = ProcessSpawner(on_exit=self.wakeup.set, redactor=self.redactor)
        self.registry = Registry.load(self.layout)  # invalid at start-up: the caller reports it
        self._registry_mtime = _mtime(self.layout.registry_file)
        self.breakers = Breakers(threshold=self.settings.circuit_threshold,
                                 open_seconds=self.settings.circuit_open_seconds,
                                 max_open_seconds=self.settings.circuit_max_open_seconds)
        self.circuits = PersistedCircuits(
            self.breakers, CircuitFile(self.layout.circuit_file, self.layout.folder(Folder.TMP)), self.events,
            self.clock)
        self.backoff = Backoff(parse_backoff(self.settings.backoff))
        self.gates = Gates(self.breakers, self.backoff, self.settings.max_live, self._live_count)
        self.guards = Guards(self.breakers, self.backoff, self.gates, self.circuits, self.events, self.clock)
        self._env_mtime = _mtime(self.layout.env_file)
        self._credential = command.credential_fingerprint(self.env)
        self.governor = self.settings.governor(cadence_limits(self.registry))
        self.governor.load(self.ledger.rows(), self.clock.now())
        self.running: dict[str, Running] = {}
        self._accounted: dict[str, datetime | None] = {}
        self._leaked: set[int] = set()  # live `claude` children found by a process scan (a leaked one counts)
        self._leaked_at: float | None = None  # tick id -> retry time, while its settle is pending
        self.counters: Counter[str] = new_counters()
        self.started_at = self.clock.now()
        self.stopping = False     # first SIGTERM/SIGINT: drain
        self.forced = False       # second signal: end everything now
        self._stop_deadline: float | None = None
        self._next_reap = 0.0
        self._next_prune = 0.0
        self._next_scan = 0.0
        self._last_status = 0.0
        self._last_doc: dict[str, Any] | None = None
        self._last_written = 0.0
        self._emergency: str | None = None
        self._watching = False

    # -- lifecycle --------------------------------------------------------
    def run(self, *, once: bool = False) -> int:
        """Run until stopped (or, with `once`, until nothing runnable is left); returns the exit code."""
        lock = DaemonLock(self.layout.lock_file, self.layout.root)
        lock.acquire()
        try:
            self.layout.ensure()
            proctree.become_subreaper()  # orphaned tool processes come back to us, so none survives
            previous = self._install_signals()
            self.restore_circuits()
            self._watching = self.wakeup.start()
            self.events.emit("daemon_started", pid=os.getpid(), once=once, watchdog=self._watching,
                             wakeup=self.wakeup.mechanism,
                             root=str(self.layout.root))
            scrub(os.environ)  # _reload_env rebuilds self.env from os.environ
            self.notifier.ready(status_line(state="running", queued=len(self.index), live=len(self.running)))
            try:
                while True:
                    try:
                        progressed = self.step()
                    except OSError as exc:
                        self._io_error(exc)
                        progressed = False
                    if self.stopping and not self.running:
                        break
                    if once and not progressed and not self.running:
                        break
                    if not progressed:
                        self._write_status(force=True)  # what an operator reads while we sleep is current
                        self.wakeup.wait(self._sleep_for())
            finally:
                self._restore_signals(previous)
                self.wakeup.close()
                self.notifier.stopping()  # no-op if the drain already said so
                self._write_status(force=True, state="stopped")
                self.notifier.close()
                self.events.emit("daemon_stopped", pid=os.getpid(), counters=dict(self.counters))
        finally:
            lock.release()
        return 0

    def step(self) -> bool:
        """One iteration of the loop; True if it did work (claimed or settled something)."""
        now_mono = self.clock.monotonic()
        self.notifier.keepalive(now_mono)
        progressed = self._settle_finished()
        self._reload_registry()
        self._reload_env()
        self.circuits.sync()
        self._check_emergency_stop()
        self._handle_stopping(now_mono)
        if now_mono >= self._next_reap:
            self._next_reap = now_mono + self.settings.reap_seconds
            self._reap()
        if now_mono >= self._next_prune:
            self._next_prune = now_mono + retention.PRUNE_EVERY_SECONDS
            self._prune()
        self._discover(now_mono)
        if not self.stopping:
            progressed |= self._dispatch()
        self._write_status()
        return progressed

    # -- discovery --------------------------------------------------------
    def _discover(self, now_mono: float) -> None:
        for name in self.wakeup.drain_names():
            self.index.notice(name)
        if self.wakeup.overflowed:  # file events were lost: rescan now rather than at the next poll
            self.wakeup.overflowed = False
            self.index.refresh(force=True)
        if now_mono >= self._next_scan or not self._watching:
            self._next_scan = now_mono + self.settings.poll_ms / 1000
            self.index.refresh()
        self.counters["quarantined"] = self.bus.quarantined
        self.index.promote(self.clock.now())

    def _reap(self) -> None:
        reaped = self.bus.reap_stale(active=set(self.running))
        self.counters["reaped"] += len(reaped)
        if reaped:
            self.index.refresh(force=True)
        self.bus.sweep_tmp(grace=self.settings.tmp_grace)
        tracked = {r.session.pid for r in self.running.values()}
        for pid in proctree.reap_adopted(tracked):
            self.events.emit("orphan_killed", level="warn", pid=pid)

    def _prune(self) -> None:
        """Retention: old done ticks and per-run logs; last months' event logs and ledger rows to monthly files."""
        protect = {Path(p) for r in self.running.values() for p in (r.stdout_log, r.stderr_log)}
        report = retention.prune(self.layout, now=self.clock.now(), retention_days=self.settings.retention_days,
                                 max_mb=self.settings.logs_max_mb, protect=protect, dry_run=False)
        if report.changed:
            self.events.emit("pruned", level="warn" if report.errors else "info", **report.summary())

    # -- dispatch ---------------------------------------------------------
    def _dispatch(self) -> bool:
        """Claim and start what the gates allow; inline work up to a batch, at most one spawn.

        The batch's completions are one group commit: durable together, with one sync at the end.
        """
        with self.bus.group_commit():
            return self._dispatch_batch()

    def _dispatch_batch(self) -> bool:
        progressed = self._coalesce()
        inline_left = INLINE_BATCH
        spawned = False
        window_ends = time.monotonic() + INLINE_WINDOW
        while inline_left > 0 and time.monotonic() < window_ends:
            entry = self._next_entry(spawned)
            if entry is None:
                break
            claim = self.bus.claim(entry.name, self.index.take(entry.name))
            self.counters["quarantined"] = self.bus.quarantined
            if claim is None:
                continue
            self.counters["claimed"] += 1
            progressed = True
            cadence = self.registry.get(claim.tick.cadence)
            if cadence is None:
                self.bus.dead_letter(claim, f"unknown cadence {claim.tick.cadence!r}: no registry entry "
                                            f"and no prompt file cadences/{claim.tick.cadence}.md")
                self.counters["dlq"] += 1
                continue
            if cadence.mode == "escalate" or (cadence.mode == "guarded" and self._guard_says_escalate(claim, cadence)):
                spawned = self._spawn(claim, cadence) or spawned
            else:
                inline_left -= 1
                if cadence.mode == "inline":
                    self._run_inline(claim, cadence)
        if progressed:
            self.wakeup.set()  # more may be runnable: look again before sleeping
        return progressed

    def _coalesce(self) -> bool:
        """Settle queued duplicates per the cadences' overlap policy (a burst costs one run)."""
        merged = False
        for cadence_name in {e.cadence for e in self.index.heads()}:
            cadence = self.registry.get(cadence_name)
            if cadence is None or cadence.mode == "inline":
                continue
            running = {r.fingerprint: tid for tid, r in self.running.items() if r.claim.tick.cadence == cadence_name}
            for entry, target in overlap.surplus(self.index, cadence_name, cadence.overlap, running):
                claim = self.bus.claim(entry.name, self.index.take(entry.name))
                if claim is None:
                    continue
                self.bus.complete(claim, "skipped_overlap", reason=f"merged into {target}", merged_into=target)
                self.counters["skipped_overlap"] += 1
                merged = True
        return merged

    def _next_entry(self, spawned: bool) -> Entry | None:
        """The oldest runnable tick whose cadence may run now; gated heads wait in `inbox/`."""
        now = self.clock.now()
        for entry in self.index.heads():
            cadence = self.registry.get(entry.cadence)
            if cadence is None or cadence.mode == "inline":
                return entry
            refusal = (self._overlap_refusal(cadence)
                       or self.gates.refusal(cadence.name, now, spawned_this_step=spawned)
                       or self._budget_refusal(cadence, now))
            if refusal is None:
                return entry
            self.counters[refusal] += 1
        return None

    def _estimate(self, cadence: Cadence) -> Estimate:
        return self.governor.estimate(cadence.name, cadence.reserve_tokens, cadence.reserve_usd)

    def _budget_refusal(self, cadence: Cadence, now: datetime) -> str | None:
        """Fail closed on spend: no spawn unless every applicable budget covers the reservation."""
        refused = self.governor.refusal(cadence.name, self._estimate(cadence), now)
        if refused is None:
            return None
        scope, window, resets_at = refused
        if self.governor.first_report(scope, window, now):
            self.events.emit("budget_exhausted", level="warn", cadence=cadence.name, scope=scope, window=window,
                             resets_at=iso(resets_at), estimate_tokens=round(self._estimate(cadence).tokens))
        return "deferred_budget"

    def _overlap_refusal(self, cadence: Cadence) -> str | None:
        """Unless `overlap = "allow"`, a cadence runs one sub-session at a time."""
        if cadence.overlap != "allow" and any(r.claim.tick.cadence == cadence.name for r in self.running.values()):
            return "skipped_overlap_wait"
        return None

    def _live_count(self) -> int:
        """Live sub-sessions, counted from real processes too, so a leaked child still counts (fails closed)."""
        pids = {r.session.pid for r in self.running.values()}
        if len(pids) >= self.settings.max_live:
            return len(pids)  # at the cap already: no need to look further
        now_mono = self.clock.monotonic()
        if self._leaked_at is None or now_mono - self._leaked_at >= 1.0:  # the process scan is cached ~1 s
            try:
                self._leaked = set()
                for child in psutil.Process().children():
                    try:
                        if child.status() != psutil.STATUS_ZOMBIE and "--print" in child.cmdline():
                            self._leaked.add(child.pid)
                    except (psutil.NoSuchProcess, psutil.ZombieProcess):
                        continue
                self._leaked_at = now_mono
            except psutil.Error:
                self._leaked_at = None
                return self.settings.max_live  # cannot tell: refuse
        return len(pids | self._leaked)

    # -- inline work ------------------------------------------------------
    def _run_inline(self, claim: Claim, cadence: Cadence) -> None:
        spec = cadence.handler or "noop"
        self.notifier.ping(self.clock.monotonic())  # the call may block the loop up to its timeout
        started = time.monotonic()
        result = inline.call(spec, claim.tick.to_json(), root=self.layout.root, env=self.env,
                               timeout=self._timeout(cadence), kind="handler")
        duration_ms = round((time.monotonic() - started) * 1000)
        self.counters["inline"] += 1
        if result.ok and result.error is None:
            self.bus.complete(claim, "ok", mode="inline", detail=result.detail, duration_ms=duration_ms)
            self.counters["succeeded"] += 1
        else:
            self._fail(claim, cadence, result.error or result.detail or "handler failed", mode="inline",
                       duration_ms=duration_ms)

    def _guard_says_escalate(self, claim: Claim, cadence: Cadence) -> bool:
        self.notifier.ping(self.clock.monotonic())  # the guard may block the loop up to its timeout
        result = inline.call(cadence.guard or "noop", claim.tick.to_json(), root=self.layout.root,
                               env=self.env, timeout=self._timeout(cadence), kind="guard")
        if result.error is not None:
            self._fail(claim, cadence, f"guard failed: {result.error}", mode="guarded")
            return False
        if not result.ok:
            self.counters["guard_skipped"] += 1
            self.counters["inline"] += 1
            self.bus.complete(claim, "nothing_to_do", mode="guarded", detail=result.detail)
            return False
        return True

    # -- sub-sessions -----------------------------------------------------
    def _spawn(self, claim: Claim, cadence: Cadence) -> bool:
        tick = claim.tick
        now = self.clock.now()
        local = now.astimezone()
        stamp = f"{local:%H%M%S}-a{claim.attempt}-{tick.id[-6:]}"
        stdout_log, stderr_log = self.layout.subsession_logs(local, tick.cadence, stamp)
        try:
            if cadence.prompt is None or not cadence.prompt.is_file():
                raise FileNotFoundError(f"prompt file {cadence.prompt} is missing")
            spec = SpawnSpec(
                argv=command.argv(command.resolve_claude(self.env), model=cadence.model, extra=cadence.claude_args,
                                 max_budget_usd=cadence.max_budget_usd),
                env=command.child_env(self.env, self.layout.root),
                cwd=self.layout.root,
                stdin=command.prompt(cadence.prompt, tick),
                stdout_log=stdout_log,
                stderr_log=stderr_log,
                timeout=self._timeout(cadence),
                grace=self.settings.kill_grace,
                interrupt_first=min(3.0, max(0.5, self.settings.kill_grace)),
            )
            session = self.spawner.spawn(spec)
        except (SpawnError, OSError) as exc:
            cause = exc if isinstance(exc, OSError) else exc.__cause__
            if isinstance(cause, OSError) and cause.errno in DISK_ERRNOS:
                # A full or read-only disk is not the tick's fault: back it goes, attempt intact, and the
                # loop's I/O error handling reports it and pauses.
                self.bus.requeue(claim, f"not started: {exc} (disk trouble: attempt not counted)")
                self.index.notice(tick.filename)
                raise cause
            self.counters["spawn_failures"] += 1
            self._failed_run(claim, cadence, FailureClass.SPAWN, f"spawn failed: {exc}", mode="escalate")
            return False
        self.breakers.on_spawn(cadence.name)
        self.counters["escalated"] += 1
        estimate = self._estimate(cadence)
        self.governor.reserve(tick.id, cadence.name, estimate)
        self.running[tick.id] = Running(claim, session, cadence, now, str(stdout_log), str(stderr_log),
                                        payload_fingerprint(tick.payload), estimate,
                                        io_errors_at_start=self.counters["io_errors"])
        self.events.emit("spawned", id=tick.id, cadence=tick.cadence, attempt=claim.attempt, pid=session.pid,
                         stdout_log=str(stdout_log), stderr_log=str(stderr_log))
        return True

    def _io_error(self, exc: OSError) -> None:
        """A full disk or a read-only folder: say so clearly, lose nothing, and try again shortly."""
        self.counters["io_errors"] += 1
        self.events.emit("io_error", level="error", error=f"{type(exc).__name__}: {exc}",
                         action="nothing is lost: the step is retried; interrupted claims are requeued")
        log.error("I/O error (%s); retrying in %.1fs", exc, self.settings.poll_ms / 1000)  # format adds "maestro: "
        self._next_reap = 0.0  # requeue claims whose settling was cut short
        self.index = InboxIndex(self.bus)  # rebuilt from the folder: the failed step may have half-updated it
        self.wakeup.wait(self.settings.poll_ms / 1000)

    def _settle_finished(self) -> bool:
        settled = False
        for tick_id, run in list(self.running.items()):
            outcome = run.session.poll()
            if outcome is None:
                continue
            self._settle(run, outcome)  # an OSError leaves the run here, to be settled again
            del self.running[tick_id]
            settled = True
        return settled

    def _settle(self, run: Running, outcome: RunOutcome) -> None:
        claim, tick = run.claim, run.claim.tick
        result = outcome.result
        usage = result.usage.to_row() if result is not None else Usage.unknown().to_row()
        details: dict[str, Any] = {
            "mode": "escalate", "exit_code": outcome.exit_code, "signal": outcome.signal,
            "duration_ms": outcome.duration_ms, "timed_out": outcome.timed_out,
            "api_error_status": result.api_error_status if result else None,
            "cost_usd": usage.get("cost_usd"), "session_id": result.session_id if result else None,
        }
        held = self.governor.release(tick.id) or run.estimate
        measured, charged_tokens, charged_usd = charge_for(usage, held, exempt=run.cadence.budget_exempt)
        row = {
            "ts": iso(self.clock.now()), "tick": tick.id, "cadence": tick.cadence, "attempt": claim.attempt,
            "exit_code": outcome.exit_code, "signal": outcome.signal, "duration_ms": outcome.duration_ms,
            "ok": outcome.ok, "session_id": details["session_id"], **usage, "metered": measured,
            "reserved_tokens": round(held.tokens), "reserved_usd": round(held.usd, 6),
            "charged_tokens": charged_tokens, "charged_usd": charged_usd,
        }
        if not run.ledgered:  # a settle retried after an I/O error must not count the spend twice
            self.ledger.append(row)
            run.ledgered = True
            self.governor.charge(row, self.clock.now())
        if outcome.timed_out:
            self.counters["timeouts"] += 1
        if run.end_reason is not None:
            # The daemon ended it (drain, emergency stop): requeue even if the CLI printed a success
            # after the signal, since its work was cut short.
            self.bus.requeue(claim, run.end_reason, **details)
            self.counters["requeued"] += 1
            self.index.notice(tick.filename)
        elif outcome.ok and not outcome.timed_out:
            self.bus.complete(claim, "ok", **details)
            self.counters["succeeded"] += 1
            self.guards.succeeded(tick.cadence)
        else:
            if run.failure is None:  # judged once: a settle retried after the disk recovered must agree
                cls, reason = classify(outcome), failure_reason(outcome)
                trouble = self._disk_trouble_during(run) if cls is FailureClass.UNKNOWN else None
                if trouble is not None:  # its output could not be written: the disk failed, not the tick
                    cls, reason = FailureClass.DISK, f"{reason}; the run's log folder: {trouble}"
                run.failure = (cls, reason)
            self._failed_run(claim, run.cadence, *run.failure, tail=outcome.tail, **details)

    def _disk_trouble_during(self, run: Running) -> str | None:
        """Did the disk fail while `run` ran? (Checked now, and by the I/O errors the loop met meanwhile.)"""
        trouble = disk_trouble(Path(run.stdout_log).parent)
        if trouble is None and self.counters["io_errors"] > run.io_errors_at_start:
            trouble = "the daemon met disk errors while it ran"
        return trouble

    def _failed_run(self, claim: Claim, cadence: Cadence, cls: FailureClass, reason: str, **details: Any) -> None:
        """Route a failed sub-session by its class (see policy.HANDLING)."""
        handling = HANDLING[cls]
        tick = claim.tick
        details["failure_class"] = cls.value
        # A settle retried after an I/O error must count the failure once: the policies' verdict is kept
        # per tick until the bus move has gone through.
        if tick.id not in self._accounted:
            self._accounted[tick.id] = self.guards.failed(tick, cadence, cls, reason, self._credential)
        retry_at = self._accounted[tick.id]
        if not handling.burns_attempt:
            self.bus.requeue(claim, f"{reason} ({cls.value} failure: attempt not counted)",
                             outcome=f"failed_{cls.value}", **details)
            del self._accounted[tick.id]
            self.counters["failed"] += 1
            self.counters["requeued"] += 1
            self.index.notice(tick.filename)
            return
        self._fail(claim, cadence, reason, retry_at=retry_at, permanent=handling.dead_letter, **details)
        del self._accounted[tick.id]

    def _fail(self, claim: Claim, cadence: Cadence, reason: str, **details: Any) -> None:
        max_attempts = cadence.max_attempts or self.settings.max_attempts
        where = self.bus.fail(claim, reason, max_attempts=max_attempts, **details)
        self.counters["failed"] += 1
        if where == "dlq":
            self.counters["dlq"] += 1
        else:
            self.counters["retries"] += 1
            self.index.notice(claim.tick.filename)

    def _timeout(self, cadence: Cadence) -> float:
        return cadence.timeout_seconds or self.settings.spawn_timeout

    # -- circuits and credentials ------------------------------------------
    def restore_circuits(self) -> None:
        """Breakers survive restarts (see `PersistedCircuits.restore`)."""
        self.circuits.restore(self._credential)

    def _reload_env(self) -> None:
        """A changed `.env` (a new key, say) is picked up without a restart and lifts the auth halt."""
        mtime = _mtime(self.layout.env_file)
        if mtime == self._env_mtime:
            return
        self._env_mtime = mtime
        self.env = load_env(self.layout)
        scrub(self.env)
        self.redactor = Redactor(self.env)
        self.events.redactor = self.redactor
        self.ledger.redactor = self.redactor
        credential = command.credential_fingerprint(self.env)
        if credential != self._credential:
            self._credential = credential
            self.gates.credentials_verified = False
            self.circuits.credentials_changed(credential, ".env credentials changed")

    # -- stopping ---------------------------------------------------------
    def request_stop(self) -> None:
        """First call drains (stop claiming, let sub-sessions finish); a second ends them now."""
        if self.stopping:
            self.forced = True
        self.stopping = True
        self.wakeup.set()

    def _handle_stopping(self, now_mono: float) -> None:
        if not self.stopping:
            return
        if self._stop_deadline is None:
            self._stop_deadline = now_mono + self.settings.stop_grace
            self.events.emit("draining", live=len(self.running), grace_s=self.settings.stop_grace)
            self.notifier.stopping(status_line(state="draining", queued=len(self.index), live=len(self.running)))
        if self.forced or now_mono >= self._stop_deadline:
            self._end_all("daemon stopping", grace=0.0 if self.forced else self.settings.kill_grace)

    def _check_emergency_stop(self) -> None:
        reason = read_stop_file(self.layout.stop_file)
        if reason != self._emergency:
            self._emergency = self.gates.emergency = reason
            if reason is None:
                self.events.emit("emergency_stop_cleared", level="warn")
            else:
                self.events.emit("emergency_stop", level="error", reason=reason, live=len(self.running))
        if self._emergency is not None:
            self._end_all(f"emergency stop: {self._emergency}", grace=self.settings.kill_grace)

    def _end_all(self, reason: str, *, grace: float) -> None:
        for run in self.running.values():
            if run.end_reason is None or grace == 0.0:
                run.end_reason = run.end_reason or reason
                if grace == 0.0:
                    run.session.kill()
                else:
                    run.session.stop(grace)

    def _install_signals(self) -> dict[int, Any]:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop()  # only sets flags and writes to the wake-up pipe

        previous: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread (tests drive step() directly)
                pass
        return previous

    @staticmethod
    def _restore_signals(previous: dict[int, Any]) -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    # -- timing and status ------------------------------------------------
    def _sleep_for(self) -> float:
        wait = self.settings.poll_ms / 1000
        if self.stopping and self._stop_deadline is not None:
            wait = min(wait, max(0.0, self._stop_deadline - self.clock.monotonic()))
        due = self.index.next_due()
        if due is not None:
            wait = min(wait, max(0.0, due - self.clock.now().timestamp()) + 0.001)
        ping_in = self.notifier.seconds_until_ping(self.clock.monotonic())
        if ping_in is not None:
            wait = min(wait, ping_in)
        return max(wait, 0.0)

    def _reload_registry(self) -> None:
        mtime = _mtime(self.layout.registry_file)
        if mtime == self._registry_mtime:
            return
        self._registry_mtime = mtime
        try:
            self.registry = Registry.load(self.layout)
            self.governor.cadence_limits = cadence_limits(self.registry)
            self.events.emit("registry_reloaded")
        except RegistryError as exc:
            self.events.emit("registry_invalid", level="error", error=str(exc), keeping="previous registry")

    def _write_status(self, *, force: bool = False, state: str | None = None) -> None:
        now_mono = self.clock.monotonic()
        if not force and now_mono - self._last_status < STATUS_EVERY:
            return
        self._last_status = now_mono
        now = self.clock.now()
        doc = {
            "pid": os.getpid(),
            "owner": self.owner.token,
            "root": str(self.layout.root),
            "state": state or ("draining" if self.stopping else "emergency_stop" if self._emergency else "running"),
            "started_at": iso(self.started_at),
            "heartbeat": iso(now),
            "watchdog": self._watching,
            "emergency_stop": self._emergency,
            "live_subsessions": [
                {"pid": r.session.pid, "tick": tid, "cadence": r.claim.tick.cadence, "attempt": r.claim.attempt,
                 "started": iso(r.started_at), "stdout_log": r.stdout_log}
                for tid, r in self.running.items()
            ],
            "queued": len(self.index),
            "counters": dict(self.counters),
            "budget": self.governor.summary(now),
            "reservations": [{"tick": tid, "cadence": cad, "tokens": est.tokens, "usd": est.usd, "basis": est.basis}
                             for tid, (cad, est) in self.governor.reservations.items()],
        }
        self.notifier.status(status_line(state=doc["state"], queued=doc["queued"], live=len(self.running)))
        # An idle daemon must cost nothing measurable: unchanged state is rewritten only to refresh the
        # heartbeat, every HEARTBEAT_EVERY seconds.
        content = {k: v for k, v in doc.items() if k != "heartbeat"}
        if content == self._last_doc and now_mono - self._last_written < HEARTBEAT_EVERY:
            return
        try:
            write_status(self.layout, doc, self.redactor)
            self._last_doc, self._last_written = content, now_mono
        except OSError as exc:
            self.events.emit("status_write_failed", level="error", error=str(exc))


def _mtime(path: Any) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
