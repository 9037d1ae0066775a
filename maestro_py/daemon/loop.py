"""The daemon loop, one iteration per `step()`: settle -> housekeeping -> discover -> dispatch -> status.

`Daemon` wires the parts and owns the lifecycle (lock, signals, drain); each part takes only what it uses:
`Settler` (settle.py) turns finished runs into ledger rows and tick moves, `Housekeeping` follows the
agent root's files and sweeps, `Dispatcher` (dispatch.py) claims and starts work, `StatusWriter`
(status.py) writes `consumer.json`. `Guardrails` (policy/guardrails.py) decides what may spawn and what
happens after a run; `Bus` (bus/store.py) moves the tick files and keeps its index of `inbox/`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import traceback
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from maestro_py.bus.events import EventLog
from maestro_py.bus.owner import Owner
from maestro_py.bus.store import Bus
from maestro_py.clock import Clock, SystemClock
from maestro_py.config import Settings, unknown_settings
from maestro_py.daemon.alerts import alerts_for
from maestro_py.daemon.autosync import AutoSync
from maestro_py.daemon.dispatch import Dispatcher
from maestro_py.daemon.housekeeping import Housekeeping
from maestro_py.daemon.live import LiveRuns
from maestro_py.daemon.lock import DaemonLock
from maestro_py.daemon.metrics import Metrics
from maestro_py.daemon.sdnotify import Notifier, scrub, status_line
from maestro_py.daemon.settle import Settler
from maestro_py.daemon.status import StatusWriter, new_counters, status_doc
from maestro_py.state import root_id
from maestro_py.daemon.wakeup import Wakeup
from maestro_py.policy.backoff import Backoff, parse_backoff
from maestro_py.policy.breaker import Breakers, CircuitFile, PersistedCircuits
from maestro_py.policy.budget import Estimate, cadence_limits
from maestro_py.bus import kills
from maestro_py.policy.denials import Denials
from maestro_py.policy.guardrails import Guardrails
from maestro_py.paths import Folder, Layout, agent_name
from maestro_py.redact import Redactor
from maestro_py.registry import Registry
from maestro_py.session import command, proctree, sandbox
from maestro_py.session.ledger import Ledger
from maestro_py.session.runner import ProcessSpawner, Spawner

if TYPE_CHECKING:
    from maestro_py.fleet.gate import FleetGate

log = logging.getLogger("maestro")


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
        settings, clock = self.settings, self.clock
        self.notifier = Notifier.from_env(self.env, monotonic=clock.monotonic)
        scrub(self.env)  # sub-sessions and handlers must not inherit NOTIFY_SOCKET/WATCHDOG_*
        self.redactor = Redactor(self.env)  # updated in place when .env changes: every writer shares it
        self.events = EventLog(self.layout, clock=clock, redactor=self.redactor)
        self.owner = Owner.current()
        self.bus = Bus(self.layout, clock=clock, events=self.events, owner=self.owner,
                       max_inbox=settings.max_inbox)
        self.ledger = Ledger(self.layout.ledger_file, self.redactor)
        self.wakeup = Wakeup(self.bus.inbox, self.layout.bus_dir, watch=self.watch)
        if self.spawner is None:
            self.spawner = ProcessSpawner(on_exit=self.wakeup.set, redactor=self.redactor)
        registry = Registry.load(self.layout)  # invalid at start-up: the caller reports it
        self.budget = settings.budget(cadence_limits(registry))
        denials = Denials()  # each cadence's streak of denied runs, learnt from the same one read of the ledger
        self.budget.load(denials.passing(self.ledger.rows()), clock.now())
        # The parts read the settings in force through `current` at each use: a reload of `.env` hands out a new
        # value (`reconfigure`), it does not write figures into them.
        current = lambda: self.settings  # noqa: E731
        self.live = LiveRuns(lambda: self.settings.max_live, clock.monotonic)
        self.counters = new_counters()
        breakers = Breakers(tuning=lambda: (self.settings.circuit_threshold, self.settings.circuit_open_seconds,
                                            self.settings.circuit_max_open_seconds))
        circuits = PersistedCircuits(breakers, CircuitFile(self.layout.circuit_file, self.layout.folder(Folder.TMP)),
                                     self.events, clock)
        self.fleet = fleet_gate(self.layout, settings, self.events, clock)
        self.guardrails = Guardrails(
            circuits=circuits, backoff=Backoff(parse_backoff(settings.backoff)), budget=self.budget, live=self.live,
            settings=current, credential=command.credential_fingerprint(self.env), events=self.events, clock=clock,
            subscription=command.prefers_subscription(self.env), fleet=self.fleet,
            sandbox=lambda: sandbox.available(self.housekeeping.env), denials=denials,
            policy_of=lambda cadence: command.policy_id(cadence, self.housekeeping.env, self.layout.root))
        self.settler = Settler(bus=self.bus, guardrails=self.guardrails, budget=self.budget, ledger=self.ledger,
                               live=self.live, events=self.events, counters=self.counters, clock=clock,
                               warn_at=lambda: self.settings.budget_warn_at, layout=self.layout,
                               reservation=self._reservation)
        # MAESTRO_SERVICE_AUTOSYNC: the installed timers follow a reloaded registry (a thread of its own).
        self.autosync = AutoSync(self.layout, self.events, settings=current,
                                 env=lambda: self.housekeeping.env)
        self.housekeeping = Housekeeping(
            layout=self.layout, settings=current, env=self.env, registry=registry, bus=self.bus,
            guardrails=self.guardrails, budget=self.budget, live=self.live, redactor=self.redactor,
            events=self.events, counters=self.counters, clock=clock, settler=self.settler,
            on_settings=self._settings_changed,
            on_registry=self.autosync.registry_changed,
            on_trigger_failed=self._trigger_failed)
        self.restart_required: list[str] = []  # settings changed in .env that only a restart applies
        self.dispatcher = Dispatcher(
            layout=self.layout, settings=current, bus=self.bus, guardrails=self.guardrails, live=self.live,
            spawner=self.spawner, settler=self.settler, events=self.events, notifier=self.notifier,
            counters=self.counters, clock=clock, stopping=lambda: self.stopping)
        self.status = StatusWriter(self.layout, self.redactor, self.events, clock.monotonic)
        # Alerts (MAESTRO_NOTIFY_URLS / _COMMAND) listen to the events and send from a thread of their own.
        self.alerts = alerts_for(self.layout, settings, self.env, self.redactor, self.events, clock)
        self.started_at = clock.now()
        self.metrics = Metrics(layout=self.layout, bus=self.bus, live=self.live, guardrails=self.guardrails,
                               counters=self.counters, registry=lambda: self.housekeeping.registry, events=self.events,
                               ledger=self.ledger, clock=clock, started_at=self.started_at.timestamp(),
                               agent=settings.agent or agent_name(self.layout.root.name))
        self.stopping = False     # first SIGTERM/SIGINT: drain
        self.forced = False       # second signal: end everything now
        self._stop_deadline: float | None = None
        self._next_scan = 0.0
        self._watching = False

    def _trigger_failed(self, failure: dict[str, Any]) -> None:
        """A trigger another process recorded as failed (`maestro enqueue`, systemd's OnFailure= handler): its
        `trigger_failed` event is in the log already, so it goes to the alerts only, as that event."""
        if self.alerts is not None:
            self.alerts.observe(self.redactor.data({**failure, "stage": "trigger_failed"}))

    def _reservation(self, name: str) -> Estimate:
        """What a run of cadence `name` reserves now (its registry entry's reservation, else the default)."""
        cadence = self.housekeeping.registry.get(name)
        return self.guardrails.estimate(cadence) if cadence is not None else self.budget.estimate(name)

    @property
    def registry(self) -> Registry:
        """The cadences as the daemon runs them now (reloaded when `cadences.toml` changes)."""
        return self.housekeeping.registry

    # -- lifecycle --------------------------------------------------------
    def run(self, *, once: bool = False) -> int:
        """Run until stopped (or, with `once`, until nothing runnable is left); returns the exit code."""
        lock = DaemonLock(self.layout.lock_file, self.layout.root)
        lock.acquire()
        try:
            self.layout.ensure()
            proctree.become_subreaper()  # orphaned tool processes come back to us, so none survives
            # A previous daemon that died abnormally (SIGKILL, OOM, a crash) may have left sub-sessions and their
            # tools running: end them before their stale claims go back to inbox/ and run again.
            leftovers = proctree.end_leftovers(str(self.layout.root), self.owner.token)
            if leftovers:
                self.events.emit("leftovers_ended", level="warn", pids=leftovers,
                                 reason="a previous daemon of this root left them running")
            previous = self._install_signals()
            self.guardrails.restore()
            if self.fleet is not None:  # leases an earlier process of this root left are charged now
                self.fleet.start()
            self._watching = self.wakeup.start()
            for line in unknown_settings(self.env):
                self.events.emit("unknown_setting", level="warn", reason=line)
            self.events.emit("daemon_started", pid=os.getpid(), once=once, watchdog=self._watching,
                             wakeup=self.wakeup.mechanism, root=str(self.layout.root))
            scrub(os.environ)  # a reloaded .env is merged over os.environ
            self.notifier.ready(status_line(state="running", queued=len(self.bus.index), live=len(self.live)))
            try:
                while True:
                    try:
                        progressed = self.step()
                    except OSError as exc:
                        self._io_error(exc)
                        progressed = False
                    except Exception as exc:  # a bug must not end the daemon and orphan its sub-sessions
                        self._internal_error(exc)
                        progressed = False
                    if self.stopping and not self.live:
                        break
                    if once and not progressed and not self.live and not self.bus.index.unread:
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
                if self.fleet is not None:
                    self.fleet.close()
                self.autosync.wait(5.0)  # a sync under way: its files are written atomically, so never wait long
                self.autosync.poll(start=False)
                self.events.emit("daemon_stopped", pid=os.getpid(), counters=dict(self.counters))
                if self.alerts is not None:
                    self.alerts.close()  # sends what is pending, bounded
        finally:
            lock.release()
        return 0

    def step(self) -> bool:
        """One iteration of the loop; True if it did work (claimed or settled something)."""
        now_mono = self.clock.monotonic()
        self.notifier.keepalive(now_mono)
        progressed = self.settler.settle_finished()
        self._act_on_kills()
        self.housekeeping.run(now_mono)
        self.autosync.poll()
        self._handle_stopping(now_mono)
        self._discover(now_mono)
        if not self.stopping:
            if self.dispatcher.dispatch(self.housekeeping.registry, self.housekeeping.env):
                progressed = True
                self.wakeup.set()  # more may be runnable: look again before sleeping
        self._write_status()
        return progressed

    def _act_on_kills(self) -> None:
        """`maestro tick kill`: end that one run as a timeout ends one; its settle books what it spent and files the
        tick (done/ as killed, or back to inbox/ with its attempt intact)."""
        for kill in kills.take(self.layout):
            run = self.live.get(kill.tick)
            if run is None or run.kill is not None:
                self.events.emit("kill_ignored", level="warn", id=kill.tick, reason="no run of it is live here")
                continue
            run.kill, run.end_reason = kill, kill.words()
            run.session.stop()
            self.events.emit("kill_requested", id=kill.tick, cadence=run.claim.tick.cadence, requeue=kill.requeue,
                             reason=kill.reason or None)

    def _discover(self, now_mono: float) -> None:
        """Files that arrived from elsewhere (other processes' enqueues, hand-dropped ticks)."""
        index = self.bus.index
        for name in self.wakeup.drain_names():
            index.notice(name)
        if self.wakeup.overflowed:  # file events were lost: rescan now rather than at the next poll
            self.wakeup.overflowed = False
            index.refresh(force=True)
        if now_mono >= self._next_scan or not self._watching:
            self._next_scan = now_mono + self.settings.poll_ms / 1000
            index.refresh()
        self.counters["quarantined"] = self.bus.quarantined
        index.promote(self.clock.now())

    def _io_error(self, exc: OSError) -> None:
        """A full disk or a read-only folder: say so clearly, lose nothing, and try again shortly."""
        self.counters["io_errors"] += 1
        self.events.emit("io_error", level="error", error=f"{type(exc).__name__}: {exc}",
                         action="nothing is lost: the step is retried; interrupted claims are requeued")
        log.error("I/O error (%s); retrying in %.1fs", exc, self.settings.poll_ms / 1000)  # format adds "maestro: "
        self.housekeeping.reap_soon()  # requeue claims whose settling was cut short
        self.bus.reindex()  # the failed step may have half-updated the index
        self.wakeup.wait(self.settings.poll_ms / 1000)

    def _internal_error(self, exc: Exception) -> None:
        """An unexpected exception in a step: report it with its traceback, recover as for an I/O error."""
        self.counters["internal_errors"] += 1
        self.events.emit("internal_error", level="error", during="step", error=f"{type(exc).__name__}: {exc}",
                         traceback=traceback.format_exc()[-2000:])
        log.error("internal error (%s: %s); the step is retried", type(exc).__name__, exc)
        self.housekeeping.reap_soon()
        self.bus.reindex()
        self.wakeup.wait(self.settings.poll_ms / 1000)

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
            self.events.emit("draining", live=len(self.live), grace_s=self.settings.stop_grace)
            self.notifier.stopping(status_line(state="draining", queued=len(self.bus.index), live=len(self.live)))
        if self.forced or now_mono >= self._stop_deadline:
            self.live.end_all("daemon stopping", grace=0.0 if self.forced else self.settings.kill_grace)

    def _install_signals(self) -> dict[int, Any]:
        """SIGTERM, SIGINT and SIGHUP drain (a second one ends the runs now); handlers only set flags."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop()  # only sets flags and writes to the wake-up pipe

        previous: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # a hang-up drains too, it does not kill
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
        if self.bus.index.unread:  # a backlog still being read: keep picking
            return 0.0
        wait = self.settings.poll_ms / 1000
        if self.stopping and self._stop_deadline is not None:
            wait = min(wait, max(0.0, self._stop_deadline - self.clock.monotonic()))
        due = self.bus.index.next_due()
        if due is not None:
            wait = min(wait, max(0.0, due - self.clock.now().timestamp()) + 0.001)
        ping_in = self.notifier.seconds_until_ping(self.clock.monotonic())
        if ping_in is not None:
            wait = min(wait, ping_in)
        return max(wait, 0.0)

    def _settings_changed(self, new: Settings) -> None:
        """`.env` changed: apply its settings now; say which, and which wait for a restart."""
        from maestro_py.daemon.reconfigure import reconfigure

        applied, pending = reconfigure(self, new)
        if applied:
            self.events.emit("settings_changed", level="warn", applied=applied)
        if pending != self.restart_required:
            self.restart_required = pending
            if pending:
                self.events.emit("restart_required", level="warn", settings=pending,
                                 reason="changed in .env; these take effect at the next start")

    def _write_status(self, *, force: bool = False, state: str | None = None) -> None:
        if not self.status.due(force=force):
            return
        emergency = self.guardrails.emergency
        doc = status_doc(
            owner=self.owner, root=self.layout.root, now=self.clock.now(), started_at=self.started_at,
            state=state or ("draining" if self.stopping else "emergency_stop" if emergency else "running"),
            watching=self._watching, emergency=emergency, live=self.live, queued=len(self.bus.index),
            counters=self.counters, budget=self.budget, quota=self.guardrails.quota_usage,
            governor=self.fleet.status() if self.fleet is not None else None,
            settings=self.settings.in_force(), restart_required=self.restart_required,
            gates=self.guardrails.memory(self.clock.now()))
        self.notifier.status(status_line(state=doc["state"], queued=doc["queued"], live=len(self.live)))
        self.status.write(doc)
        self.metrics.write(doc)  # state/metrics.prom, at most every second (see metrics.py)


def fleet_gate(layout: Layout, settings: Settings, events: EventLog, clock: Clock) -> "FleetGate | None":
    """The governor store's gate when MAESTRO_GOVERNOR_URL names one (not connected yet), else None."""
    if settings.governor_url is None:
        return None
    from maestro_py.fleet.gate import FleetGate
    from maestro_py.fleet import open_store

    # The holder is this host and this root: a root reclaims only its own leases, whatever its name.
    return FleetGate(open_store(settings.governor_url), agent=settings.agent or agent_name(layout.root.name),
                     host=f"{socket.gethostname()}#{root_id(layout)}", pid=os.getpid(), max_live=settings.fleet_max_live,
                     lease_seconds=settings.fleet_lease_seconds, outbox=layout.fleet_outbox_file, events=events,
                     clock=clock)
