"""The daemon's state as everything else reads it: `consumer.json`, the lock's holder, and one judgment of its health.

The daemon writes `consumer.json` (daemon/status.py) and holds the root's lock (daemon/lock.py). Whatever asks
"does a daemon run here, and is it healthy" reads it here: `observe` for the facts (the status document, who
holds the lock, whether that process is the one the status names, the heartbeat's age) and `judge` for the
judgment that `maestro status` exits with, `/healthz` answers, the status page shows and `maestro doctor` checks.
So they cannot disagree. Nothing here writes, and nothing here imports the daemon.
"""

from __future__ import annotations

import enum
import fcntl
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from maestro_py.bus.fsio import atomic_write
from maestro_py.bus.owner import Owner
from maestro_py.clock import parse_iso
from maestro_py.config import VARS, Settings
from maestro_py.envfile import load_env
from maestro_py.errors import ConfigError
from maestro_py.paths import Layout

# `maestro status` exit codes (the LSB init-script convention: 0 running, 3 not running, 4 unknown), and
# sysexits' EX_CONFIG (cli.common's too) for a root whose `.env` or settings cannot be used.
EX_HEALTHY = 0      # alive, and its heartbeat is fresh
EX_NOT_RUNNING = 3  # no daemon holds the root's lock
EX_STALE = 4        # a process holds the lock, but its heartbeat is too old (stopped, wedged) or missing
EX_CONFIG = 78      # the root's configuration is invalid: a bad setting, an unreadable .env


class Condition(enum.Enum):
    """The daemon's own condition, whatever the configuration says."""

    HEALTHY = "healthy"          # alive, heartbeat fresh (EX_HEALTHY)
    NOT_RUNNING = "not_running"  # nobody holds the lock (EX_NOT_RUNNING)
    NO_STATUS = "no_status"      # a process holds the lock but has written no status yet (EX_STALE)
    STALE = "stale"              # the heartbeat is older than the limit: stopped or stuck (EX_STALE)
    OTHER_PID = "other_pid"      # the lock's holder is not the process the status names (EX_STALE)


CODES = {Condition.HEALTHY: EX_HEALTHY, Condition.NOT_RUNNING: EX_NOT_RUNNING, Condition.NO_STATUS: EX_STALE,
         Condition.STALE: EX_STALE, Condition.OTHER_PID: EX_STALE}


# -- the facts ---------------------------------------------------------------------------------------------------

def holder(path: Path) -> int | None:
    """The pid written by the current holder of the lock file `path`, if the lock is held at all."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None  # nobody holds it
    finally:
        os.close(fd)


def read_status(layout: Layout) -> dict[str, Any] | None:
    """The last status document, or None when there is none (or it is unreadable)."""
    try:
        doc = json.loads(layout.consumer_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def liveness(layout: Layout, doc: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    """Is the daemon alive: the lock's holder, its pid and start time, and the heartbeat's age."""
    lock_pid = holder(layout.lock_file)
    out: dict[str, Any] = {"alive": False, "pid": None, "heartbeat_age_s": None, "lock_pid": lock_pid}
    if doc:
        out["pid"] = doc.get("pid")
        try:
            out["heartbeat_age_s"] = round((now - parse_iso(doc["heartbeat"])).total_seconds(), 3)
        except (KeyError, TypeError, ValueError):
            pass
        owner = Owner.parse(str(doc.get("owner", "")))
        out["alive"] = bool(owner and owner.is_alive() and lock_pid == owner.pid)
    elif lock_pid:
        out.update(alive=True, pid=lock_pid)
    return out


@dataclass(frozen=True)
class Seen:
    """`consumer.json` and the lock, read together once."""

    doc: dict[str, Any] | None  # the status document as the daemon last wrote it (None: none, or unreadable)
    live: dict[str, Any]  # `liveness`: alive, pid, heartbeat_age_s, lock_pid

    @property
    def alive(self) -> bool:
        """A process holds the lock and is the one the status names (or has written none yet)."""
        return bool(self.live["alive"])

    @property
    def running(self) -> bool:
        """Alive and with a status: what the status says is running (its sub-sessions, its reservations) is."""
        return bool(self.doc) and self.alive

    @property
    def lock_pid(self) -> int | None:
        return self.live["lock_pid"]


def observe(layout: Layout, now: datetime) -> Seen:
    """Read the status document and the lock's holder, as of `now`."""
    doc = read_status(layout)
    return Seen(doc, liveness(layout, doc, now))


# -- the judgment ------------------------------------------------------------------------------------------------

def stale_after(poll_ms: int) -> float:
    """Heartbeat age beyond which a daemon holding the lock is considered stuck: 3 × poll + 30 s."""
    return 3 * max(poll_ms / 1000, 1.0) + 30


def condition(live: dict[str, Any], limit: float) -> tuple[Condition, str]:
    """The daemon's condition and its words, from `liveness` judged against the heartbeat `limit`."""
    age = live["heartbeat_age_s"]
    if not live["alive"] and not live.get("lock_pid"):
        return Condition.NOT_RUNNING, "not running"
    if age is None:
        return Condition.NO_STATUS, f"pid {live['pid']} holds the lock but has written no status yet"
    if age > limit:
        return Condition.STALE, (f"STALE: pid {live['pid']} holds the lock but its heartbeat is {_ago(age)} old "
                                 f"(limit {_ago(limit)}): stopped (SIGSTOP?) or stuck")
    if not live["alive"]:
        return Condition.OTHER_PID, f"pid {live.get('lock_pid')} holds the lock but the status names pid {live['pid']}"
    return Condition.HEALTHY, f"alive (pid {live['pid']}, heartbeat {_ago(age)} ago)"


def health(live: dict[str, Any], limit: float) -> tuple[int, str]:
    """(exit code, the daemon's state in words) from `liveness`, judged against the heartbeat `limit`."""
    cond, words = condition(live, limit)
    return CODES[cond], words


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class Health:
    """What `maestro status` exits with and says, and what `/healthz` answers."""

    code: int  # EX_HEALTHY, EX_NOT_RUNNING, EX_STALE or EX_CONFIG
    words: str  # why: the daemon's condition in words, or the configuration error
    condition: Condition  # the daemon's own condition, also when the configuration is invalid
    daemon_words: str  # that condition in words
    seen: Seen
    stale_after_s: float

    @property
    def healthy(self) -> bool:
        return self.code == EX_HEALTHY

    def daemon_json(self) -> dict[str, Any]:
        """`maestro status --json`'s "daemon" object."""
        return {**self.seen.live, "health": self.words, "exit_code": self.code, "stale_after_s": self.stale_after_s}

    def health_json(self) -> dict[str, Any]:
        """`/healthz`'s answer."""
        return {"healthy": self.healthy, "health": self.words, "exit_code": self.code, "pid": self.seen.live["pid"],
                "heartbeat_age_s": self.seen.live["heartbeat_age_s"], "stale_after_s": self.stale_after_s}


def judge(layout: Layout, now: datetime, env: Mapping[str, str] | None = None) -> Health:
    """The one judgment of the root's daemon, as of `now`: EX_CONFIG (78) with the error when the root's settings
    cannot be used (`.env` unreadable, a setting invalid), else its condition judged against the stale limit its
    MAESTRO_POLL_MS gives. `env` is the root's merged environment (`envfile.load_env`); None reads it now, as a
    `maestro status` started now would (the server's way: `.env` may have changed since it started).

    An invalid cadences.toml is no configuration error here: a running daemon keeps its previous registry."""
    problem: str | None = None
    poll_ms = int(VARS["MAESTRO_POLL_MS"].default)
    try:
        poll_ms = Settings.from_env(load_env(layout) if env is None else env).poll_ms
    except ConfigError as exc:
        problem = str(exc)
    seen = observe(layout, now)
    limit = stale_after(poll_ms)
    cond, words = condition(seen.live, limit)
    if problem is not None:
        return Health(EX_CONFIG, problem, cond, words, seen, limit)
    return Health(CODES[cond], words, cond, words, seen, limit)


def root_id(layout: Layout) -> str:
    """A stable id for this agent root, made once and kept in `state/root-id`: two roots whose folders share a name
    share an agent name in the governor store, but each reclaims only its own leases."""
    import secrets

    try:
        text = layout.root_id_file.read_text(encoding="ascii").strip()
        if text.isalnum() and 8 <= len(text) <= 64:
            return text
    except (OSError, UnicodeDecodeError):
        pass
    made = secrets.token_hex(8)
    layout.state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(layout.root_id_file, f"{made}\n".encode())
    return made
