"""`MAESTRO_SERVICE_AUTOSYNC`: after the daemon reloads a changed `cadences.toml`, it runs `maestro service sync`
itself, so the timers follow the registry without an operator.

Only when services were installed for this root (`state/service.json` names them, and the daemon's unit or plist
is in that folder with our header). The sync runs in a thread of its own, off the loop: it may wait for systemctl.
Its outcome is logged by the loop at its next step: `service_synced` (what was added, changed, removed) or
`service_sync_failed` with a one-line reason; nothing at all when everything was already up to date. It never
removes or renames the daemon's own unit or job (that would stop the daemon halfway): that needs a sync by hand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from maestro_py.bus.events import EventLog
from maestro_py.paths import Layout
from maestro_py.registry import Registry

if TYPE_CHECKING:
    from maestro_py.config import Settings

COMMAND_TIMEOUT = 60.0  # seconds one systemctl/launchctl call may take


def run_command(argv: Sequence[str]) -> tuple[int, str]:
    """Run one manager command, bounded; (exit code, the first line it printed on stderr)."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return 124, f"no answer within {COMMAND_TIMEOUT:g}s"
    except OSError as exc:
        return 127, exc.strerror or str(exc)
    lines = (done.stderr or done.stdout or "").strip().splitlines()
    return done.returncode, lines[0][:300] if lines else ""


class SyncFailed(Exception):
    """Why a sync could not be done (one line)."""


class AutoSync:
    """Starts a service sync when the registry changed, and reports its outcome from the loop."""

    def __init__(self, layout: Layout, events: EventLog, *, settings: Callable[[], "Settings"],
                 env: Callable[[], dict[str, str]], run: Callable[[Sequence[str]], tuple[int, str]] = run_command,
                 which: Callable[[str], str | None] = shutil.which) -> None:
        self.layout = layout
        self.events = events
        self.settings = settings  # read when a sync starts: the setting is live like the others
        self.env = env
        self.run = run
        self.which = which
        self._thread: threading.Thread | None = None
        self._pending: Registry | None = None  # a reload that came while a sync was running
        self._done: deque[tuple[str, str, dict[str, Any]]] = deque()

    def registry_changed(self, registry: Registry) -> None:
        """The daemon applied a new registry: sync now, or after the sync that is running."""
        if not self.settings().service_autosync:
            return
        if self._thread is not None and self._thread.is_alive():
            self._pending = registry
            return
        self._start(registry)

    def poll(self, *, start: bool = True) -> None:
        """Log what finished; start a sync a reload asked for meanwhile. Cheap: run at every loop step."""
        while self._done:
            level, stage, details = self._done.popleft()
            self.events.emit(stage, level=level, **details)
        if start and self._pending is not None and (self._thread is None or not self._thread.is_alive()):
            registry, self._pending = self._pending, None
            self._start(registry)

    def wait(self, timeout: float | None = None) -> None:
        """Until the running sync is over (tests, and the daemon's exit)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _start(self, registry: Registry) -> None:
        settings, env = self.settings(), dict(self.env())
        self._thread = threading.Thread(target=self._work, args=(registry, settings, env), name="maestro-autosync",
                                        daemon=True)
        self._thread.start()

    def _work(self, registry: Registry, settings: "Settings", env: dict[str, str]) -> None:
        try:
            outcome = self.sync(registry, settings, env)
        except SyncFailed as exc:
            self._done.append(("warn", "service_sync_failed", {"reason": str(exc)}))
        except Exception as exc:  # noqa: BLE001 - a sync must never take the daemon down
            self._done.append(("warn", "service_sync_failed", {"reason": f"{type(exc).__name__}: {exc}"}))
        else:
            if outcome is not None:
                self._done.append(("info", "service_synced", outcome))

    def sync(self, registry: Registry, settings: "Settings", env: dict[str, str]) -> dict[str, Any] | None:
        """One sync, as `maestro service sync` with the recorded options does it; None if there was nothing to do
        (no services installed here, or all up to date). SyncFailed says why it could not."""
        from maestro_py.service import units as svc
        from maestro_py.service import setup
        from maestro_py.service import sync

        options = setup.saved_options(self.layout)
        if options is None:
            return None
        try:
            target = setup.build(self.layout, options, settings=settings, registry=registry, env=env)
            manager, name, root = options.manager, target.spec.name, target.spec.root
            if not any(sync.is_long_running(f) for f in sync.installed(manager, target.dest, name, root)):
                return None  # the daemon's unit or plist is not there (uninstalled by hand): not ours to bring back
            plan = sync.plan(manager, options.user, target.files, target.dest, name, root)
        except svc.ServiceError as exc:
            raise SyncFailed(str(exc)) from None
        if plan.up_to_date:
            return None
        moving = [f.name for f in plan.stale if f.unit is not None and sync.is_long_running(f)]
        if moving:
            raise SyncFailed(f"{', '.join(moving)} would be removed (its name changed): run `maestro service sync` "
                             "by hand, the daemon does not unload itself")
        tool = "launchctl" if manager == svc.LAUNCHD else "systemctl"
        here = not target.custom_dest and self.which(tool) is not None
        uid = os.getuid()
        if here:
            self._run_all(sync.stop_stale(plan, uid))
        try:
            sync.apply(plan)
        except OSError as exc:
            raise SyncFailed(f"cannot write {target.dest}: {exc.strerror or exc}") from None
        commands, hints = sync.follow_up(plan, uid)
        if here:
            self._run_all(commands)
        return {**plan.summary(), "dest": str(target.dest), "manager": manager, "commands_run": here,
                **({"note": "; ".join(hints)} if hints else {})}

    def _run_all(self, commands: Sequence[Any]) -> None:
        for command in commands:
            code, said = self.run(command.argv)
            if code and not command.may_fail:
                raise SyncFailed(f"`{command.shell()}` exited {code}" + (f": {said}" if said else ""))
