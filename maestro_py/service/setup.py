"""From an agent root and the options of `maestro service …` to the files to install, and the record of them.

`install` and `sync` write `state/service.json` (the manager, its folder and the options given), so that a later
`maestro service sync` with no options, and the daemon's autosync (`MAESTRO_SERVICE_AUTOSYNC`), regenerate the same
files from the registry and settings as they are then. Paths only: no setting or secret goes into it.
"""

from __future__ import annotations

import json
import os
import pwd
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from maestro_py.bus.fsio import atomic_write_json
from maestro_py.config import Settings
from maestro_py.envfile import load_env
from maestro_py.errors import SpawnError
from maestro_py.paths import Layout
from maestro_py.registry import Registry
from maestro_py.service import units as svc
from maestro_py.service.harden import Harden
from maestro_py.service.sync import default_dest
from maestro_py.session.command import resolve_claude


@dataclass(frozen=True)
class Options:
    """What `maestro service install|sync` was told (None: the default, worked out again at each sync)."""

    manager: str
    user: bool = False
    dest: str | None = None  # None: the service manager's own folder
    python: str | None = None
    name: str | None = None
    watchdog_sec: int | None = None
    stop_timeout: int | None = None
    run_as: str | None = None
    serve: tuple[str, int] | None = None
    claude: str | None = None
    harden: bool = False

    def to_json(self) -> dict[str, Any]:
        """The record in `state/service.json`."""
        return {"version": 1, **asdict(self)}

    @classmethod
    def from_json(cls, doc: Any) -> "Options":
        """Read a record back; ServiceError if it is not one."""
        try:
            values = {k: v for k, v in doc.items() if k != "version"}
            if values.get("serve") is not None:
                values["serve"] = (str(values["serve"][0]), int(values["serve"][1]))
            options = cls(**values)
        except (AttributeError, TypeError, ValueError, IndexError, KeyError) as exc:
            raise svc.ServiceError(f"not a service record ({exc})") from None
        if options.manager not in (svc.LAUNCHD, svc.SYSTEMD):
            raise svc.ServiceError(f"not a service record (manager {options.manager!r})")
        return options


def saved_options(layout: Layout) -> Options | None:
    """The options of the last install/sync of this root, or None if there are none (or they are unreadable)."""
    try:
        return Options.from_json(json.loads(layout.service_file.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, svc.ServiceError):
        return None


def save_options(layout: Layout, options: Options) -> None:
    """Remember `options` for `sync` and autosync (not rewritten when they are the same)."""
    if saved_options(layout) != options:
        layout.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(layout.service_file, options.to_json())


def forget(layout: Layout) -> None:
    """Drop the record (after `uninstall`)."""
    layout.service_file.unlink(missing_ok=True)


@dataclass
class Target:
    """The files for one manager and folder, worked out from the root as it is now."""

    options: Options
    spec: svc.ServiceSpec
    files: list[svc.ServiceFile]
    dest: Path
    notes: list[str] = field(default_factory=list)  # warnings to print once the files are out

    @property
    def custom_dest(self) -> bool:
        """True with `--dest` (the manager does not read that folder: its commands are not run)."""
        return self.options.dest is not None


def build(layout: Layout, options: Options, *, settings: Settings, registry: Registry, env: dict[str, str],
          deploy_root: Path | None = None) -> Target:
    """The spec and files for `options`; ServiceError (a usage problem) if they cannot be made."""
    manager, user = options.manager, options.user
    if manager == svc.LAUNCHD and user:
        raise svc.ServiceError("--user is for --systemd (launchd agents are always per-user)")
    if options.run_as and (manager == svc.LAUNCHD or user):
        raise svc.ServiceError("--run-as is only for system-wide units (--systemd without --user)")
    if options.harden and manager == svc.LAUNCHD:
        raise svc.ServiceError("--harden is for --systemd (launchd agents have no such sandbox settings)")
    home = Path(os.path.expanduser("~"))
    dest = (Path(options.dest).expanduser().absolute() if options.dest is not None
            else default_dest(manager, user, home, os.environ))
    root = deploy_root or layout.root
    dotenv = load_env(layout, base={})  # what the service will see: .env only, not this shell's environment
    notes: list[str] = []
    run_as = None if manager == svc.LAUNCHD or user else options.run_as or _owner(layout.root)
    spec = svc.ServiceSpec(
        root=root,
        python=_interpreter(options.python),
        name=options.name if options.name is not None else svc.agent_name(root.name),
        schedules=svc.schedules(registry),
        zones=svc.zones(registry),
        stop_timeout=options.stop_timeout or svc.stop_timeout(settings.stop_grace, settings.kill_grace),
        watchdog_sec=(svc.watchdog_sec(registry, settings.spawn_timeout) if options.watchdog_sec is None
                      else options.watchdog_sec),
        user=user,
        run_as=run_as,
        claude=_claude(options.claude, env, notes),
        claude_bin=not dotenv.get("CLAUDE_BIN"),  # a CLAUDE_BIN in the unit would silently win over .env's
        serve=_serve(options.serve, env),
        prefix=settings.launchd_prefix,
        harden=_harden(root, dotenv, lambda: home if run_as is None else _home_of(run_as), settings)
        if options.harden else None,
    )
    return Target(options, spec, svc.generate(spec, manager), dest, notes)


def _claude(given: str | None, env: dict[str, str], notes: list[str]) -> str | None:
    """`--claude`, else the one the daemon would find now (None if there is none: the daemon then holds every spawn
    with a `claude_missing` event until it appears)."""
    if given is not None:
        return os.path.abspath(os.path.expanduser(given))
    try:
        return os.path.abspath(resolve_claude(env))
    except SpawnError as exc:
        notes.append(f"warning: {exc}; the service will not find it either (install it and run this again, or pass "
                     "--claude PATH)")
        return None


def _serve(serve: tuple[str, int] | None, env: dict[str, str]) -> tuple[str, int] | None:
    """(host, port) of the `maestro serve` unit; off loopback only when the root sets a token."""
    from maestro_py.loopback import is_loopback  # the server's rule (serve/options.py checks it at start)

    if serve is not None and not is_loopback(serve[0]) and not env.get("MAESTRO_SERVE_TOKEN", "").strip():
        raise svc.ServiceError(f"--serve-host {serve[0]} is not a loopback address: set MAESTRO_SERVE_TOKEN in the "
                               "root's .env first (the server would refuse to start without it)")
    return serve


def _harden(root: Path, dotenv: dict[str, str], home: Callable[[], Path], settings: Settings) -> Harden:
    """The daemon writes the root, the claude CLI's config folder (`CLAUDE_CONFIG_DIR` from .env, else ~/.claude and
    ~/.claude.json, which the CLI replaces by renaming a file beside it: the whole home folder) and a SQLite governor
    store's folder (its journal goes beside it)."""
    store = [] if not (settings.governor_url or "").startswith("sqlite:") else [
        "-" + os.path.dirname(settings.governor_url.removeprefix("sqlite:///"))]  # type: ignore[union-attr]
    folder = dotenv.get("CLAUDE_CONFIG_DIR", "").strip()
    if folder:
        path = Path(os.path.expanduser(folder))
        return Harden(writable=("-" + os.path.abspath(root / path), *store), max_live=settings.max_live)
    return Harden(writable=(str(home()), *store), home_writable=True, max_live=settings.max_live)


def _interpreter(given: str | None) -> str:
    if given is None:
        return sys.executable
    if os.sep not in given:
        raise svc.ServiceError(f"--python needs a path to the interpreter, got {given!r}")
    return os.path.abspath(os.path.expanduser(given))  # abspath, not resolve: a venv's python is a symlink


def _owner(root: Path) -> str:
    """Who system-wide units run as: the root's owner (not root because `sudo` installed them)."""
    try:
        uid = root.stat().st_uid
    except OSError:
        uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _home_of(user: str) -> Path:
    """The home folder of the user system units run as (their claude CLI writes there)."""
    try:
        return Path(pwd.getpwnam(user).pw_dir)
    except KeyError:
        raise svc.ServiceError(f"--harden: there is no user {user!r} here, so its home folder (where the claude CLI "
                               "writes) is unknown; set CLAUDE_CONFIG_DIR in the root's .env") from None


def merged(base: Options, **given: Any) -> Options:
    """`base` with the options given on the command line (those not None) on top."""
    return replace(base, **{k: v for k, v in given.items() if v is not None})
