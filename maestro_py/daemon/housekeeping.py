"""What the loop does besides claiming: follow edits of its files (registry, `.env`, circuits, STOP),
let open circuits go half-open, take the triggers that failed (for their alerts), and, now and then, reap stale
claims and prune old output."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maestro_py.bus import trigger_failures
from maestro_py.bus.events import EventLog
from maestro_py.bus.store import Bus
from maestro_py.clock import Clock
from maestro_py.config import Settings
from maestro_py.envfile import load_env
from maestro_py.errors import ConfigError
from maestro_py.daemon import retention
from maestro_py.daemon.live import LiveRuns
from maestro_py.daemon.sdnotify import scrub
from maestro_py.paths import Layout
from maestro_py.policy.budget import Budget, cadence_limits
from maestro_py.policy.emergency import read_stop_file
from maestro_py.daemon.settle import Settler
from maestro_py.policy.guardrails import Guardrails
from maestro_py.redact import Redactor
from maestro_py import refused_edit
from maestro_py.registry import Registry, RegistryError
from maestro_py.session import command, proctree

REGISTRY_GRACE = 10.0  # seconds an edit of the registry gets to finish: editors truncate, then write
CLAUDE_RECHECK_SECONDS = 5.0  # while `claude` is missing, how often to look for it (a few stats each time)
TRIGGER_LOOK_SECONDS = 1.0  # how often to look for triggers that failed (bus/trigger_failures.py): one listing


class Housekeeping:
    """Keeps the daemon's view of its agent root current; owns the registry and environment it runs with."""

    def __init__(self, *, layout: Layout, settings: Callable[[], Settings], env: dict[str, str], registry: Registry, bus: Bus,
                 guardrails: Guardrails, budget: Budget, live: LiveRuns, redactor: Redactor, events: EventLog,
                 counters: Counter[str], clock: Clock, settler: Settler,
                 on_settings: Callable[[Settings], None] = lambda settings: None,
                 on_registry: Callable[[Registry], None] = lambda registry: None,
                 on_trigger_failed: Callable[[dict[str, Any]], None] = lambda failure: None) -> None:
        self.layout = layout
        self.settings = settings  # the settings in force (a reload hands out a new value)
        self.env = env
        self.registry = registry
        self.bus = bus
        self.guardrails = guardrails
        self.budget = budget
        self.live = live
        self.settler = settler
        self.redactor = redactor
        self.events = events
        self.counters = counters
        self.clock = clock
        self.on_settings = on_settings  # the daemon applies settings changed in `.env` (daemon/reconfigure.py)
        self.on_registry = on_registry  # and syncs the services to a new registry (daemon/autosync.py)
        self.on_trigger_failed = on_trigger_failed  # and alerts a trigger that could not deliver its tick
        self._registry_version = _version(layout.registry_file)
        self._cadences_version = _version(layout.cadences_dir)
        self._emptied_at: float | None = None  # when cadences.toml lost every cadence (not applied yet)
        self._env_mtime = _mtime(layout.env_file)
        self._refused: set[str] = set()  # "env", "registry": an edit of it was refused and not fixed since
        self._login = command.login_stamp(env)  # the CLI's stored login: (mtime, size), never its contents
        self._next_reap = 0.0
        self._next_prune = 0.0
        self._next_claude_check = 0.0
        self._next_trigger_look = 0.0

    def run(self, now_mono: float) -> None:
        """One step's housekeeping, cheapest first: each file check is one stat."""
        self._reload_registry()
        self._reload_env()
        self.guardrails.sync()
        self._check_claude(now_mono)
        self.guardrails.advance(self.clock.now())
        self._check_emergency_stop()
        if now_mono >= self._next_trigger_look:
            self._next_trigger_look = now_mono + TRIGGER_LOOK_SECONDS
            for failure in trigger_failures.take(self.layout):
                self.on_trigger_failed(failure)
        if self.guardrails.fleet is not None:  # renew leases, push the outbox, retry a store that was down
            self.guardrails.fleet.housekeep()
        if now_mono >= self._next_reap:
            self._next_reap = now_mono + self.settings().reap_seconds
            self.reap()
        if now_mono >= self._next_prune:
            self._next_prune = now_mono + retention.PRUNE_EVERY_SECONDS
            self._prune()

    def reap_soon(self) -> None:
        """Reap at the next step (claims whose settling an I/O error cut short must not wait)."""
        self._next_reap = 0.0

    # -- files an operator edits ------------------------------------------
    def _reload_registry(self) -> None:
        """Follow edits of `cadences.toml` and `cadences/`, giving each REGISTRY_GRACE to finish.

        Meanwhile a tick of a cadence the registry does not know waits in `inbox/` (`Registry.settles_at`),
        and a file that has lost every cadence is not applied (`registry_suspect`) unless it stays so.
        """
        now = self.clock.monotonic()
        folder = _version(self.layout.cadences_dir)
        if folder != self._cadences_version:  # a prompt file came or went: implicit cadences changed
            self._cadences_version = folder
            self.registry.settles_at = now + REGISTRY_GRACE
        version = _version(self.layout.registry_file)
        emptied_at = self._emptied_at
        if version != self._registry_version:
            self._registry_version, emptied_at, self._emptied_at = version, None, None
        elif emptied_at is None or now - emptied_at < REGISTRY_GRACE:
            return
        try:
            registry = Registry.load(self.layout)
        except RegistryError as exc:
            self._emptied_at = None  # an invalid file is never applied: nothing left to wait for
            self.registry.settles_at = now + REGISTRY_GRACE  # half written, perhaps: its ticks wait too
            self.events.emit("registry_invalid", level="error", error=str(exc), keeping="previous registry",
                             **refused_edit.registry_fields(exc))
            self._refused.add("registry")
            return
        self._fixed("registry", "cadences.toml is valid again: its cadences are in force")
        if emptied_at is None and _configured(self.registry) and not _configured(registry):
            self._emptied_at = now
            self.registry.settles_at = now + REGISTRY_GRACE
            self.events.emit("registry_suspect", level="warn", reason="cadences.toml now defines no cadence",
                             keeping=f"previous registry unless it stays so for {REGISTRY_GRACE:g}s")
            return
        self._emptied_at = None
        # The wait counts from the edit (an emptied file applied late has waited already), or from a later
        # change of cadences/ noted on the registry it replaces.
        edited = (emptied_at if emptied_at is not None else now) + REGISTRY_GRACE
        registry.settles_at = max(edited, self.registry.settles_at or edited)
        self.registry = registry
        self.budget.cadence_limits = cadence_limits(registry)
        if emptied_at is None:
            self.events.emit("registry_reloaded")
        else:
            self.events.emit("registry_reloaded", level="warn", empty=True)
        self.on_registry(registry)

    def _fixed(self, what: str, reason: str) -> None:
        """A file whose edit was refused loads again: say so once (`env_fixed`, `registry_fixed`)."""
        if what in self._refused:
            self._refused.discard(what)
            self.events.emit(f"{what}_fixed", level="warn", reason=reason)

    def _reload_env(self) -> None:
        """A changed `.env` (a new key, say) is picked up without a restart and lifts the auth halt; so does a
        changed login file of the CLI (`claude` run again, a new `CLAUDE_CONFIG_DIR` login)."""
        mtime = _mtime(self.layout.env_file)
        if mtime == self._env_mtime:
            self._check_login()
            return
        self._env_mtime = mtime
        try:
            env = load_env(self.layout)
            settings = Settings.from_env(env)
        except ConfigError as exc:  # a bad edit while running: say so, keep what runs now
            self.events.emit("env_invalid", level="error", error=str(exc), keeping="previous environment",
                             **refused_edit.env_fields(self.layout.env_file, exc))
            self._refused.add("env")
            return
        self._fixed("env", ".env is valid again: its settings are in force")
        self.env = env
        self.on_settings(settings)
        scrub(self.env)
        self.redactor.update(self.env)
        self._login = command.login_stamp(self.env)  # of the login file this `.env` names
        self.guardrails.use_credentials(command.credential_fingerprint(self.env), ".env credentials changed",
                                        subscription=command.prefers_subscription(self.env))
        self._next_claude_check = 0.0  # CLAUDE_BIN or PATH may have been fixed in .env: look at once

    def _check_claude(self, now_mono: float) -> None:
        """While spawning is halted for a missing or broken `claude`, look for it every few seconds."""
        if not self.guardrails.claude_halted or now_mono < self._next_claude_check:
            return
        self._next_claude_check = now_mono + CLAUDE_RECHECK_SECONDS
        self.guardrails.claude_changed(command.claude_identity(self.env))

    def _check_login(self) -> None:
        """The CLI's login file (`command.login_file`) changed: its fingerprint changed, so the auth halt lifts."""
        stamp = command.login_stamp(self.env)
        if stamp == self._login:
            return
        self._login = stamp
        self.guardrails.use_credentials(command.credential_fingerprint(self.env), "the CLI's login changed",
                                        subscription=command.prefers_subscription(self.env))

    def _check_emergency_stop(self) -> None:
        reason = read_stop_file(self.layout.stop_file)
        if self.guardrails.set_emergency(reason):
            if reason is None:
                self.events.emit("emergency_stop_cleared", level="warn")
            else:
                self.events.emit("emergency_stop", level="error", reason=reason, live=len(self.live))
        if reason is not None:
            self.live.end_all(f"emergency stop: {reason}", grace=self.settings().kill_grace)

    # -- periodic sweeps --------------------------------------------------
    def reap(self) -> None:
        """Stale claims back to `inbox/`, old `tmp/` leftovers removed, adopted orphans ended."""
        self.settler.reap(max_reaps=self.settings().max_reaps, active=self.live.ids())
        self.bus.sweep_tmp(grace=self.settings().tmp_grace)
        tracked = {r.session.pid for r in self.live}
        for pid, argv, run in proctree.reap_adopted(tracked):  # exited ones (zombies): reaped without a word
            tick, _, cadence = (run or "").partition(" ")
            self.events.emit("orphan_killed", level="warn", pid=pid, command=argv, id=tick or None,
                             cadence=cadence or None, reason="a process a sub-session left running was ended")

    def _prune(self) -> None:
        """Retention: old done ticks and per-run logs; last months' event logs and ledger rows to monthly files."""
        protect = {Path(p) for r in self.live for p in (r.stdout_log, r.stderr_log)}
        report = retention.prune(self.layout, now=self.clock.now(), retention_days=self.settings().retention_days,
                                 max_mb=self.settings().logs_max_mb, protect=protect, dry_run=False)
        if report.changed:
            self.events.emit("pruned", level="warn" if report.errors else "info", **report.summary())


def _configured(registry: Registry) -> bool:
    """True if `cadences.toml` defines a cadence (prompt files alone make implicit ones, which do not count)."""
    return any(c is not None and c.configured for c in map(registry.get, registry.names()))


def _version(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is rewritten: mtime, size and inode (an edit within one mtime tick too)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _mtime(path: Any) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None

