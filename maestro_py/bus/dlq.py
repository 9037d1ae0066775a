"""Dead letters: bad input quarantined as it is, ticks that gave up, and how an operator lists, replays
and purges them. `DeadLetters` is a part of `Bus` (its mixin), kept here so the move table stays short."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from collections.abc import Callable
from typing import Any

from maestro_py.bus.claim import CLAIM_SEP
from maestro_py.bus.events import EventLog
from maestro_py.bus.owner import Owner
from maestro_py.bus.fsio import dump_json, fsync_dir, scan_dir, unlink_missing_ok, write_tmp
from maestro_py.bus.tick import Tick
from maestro_py.bus.tickfile import read_tick_file
from maestro_py.bus.inbox import InboxIndex
from maestro_py.clock import Clock, iso
from maestro_py.errors import TickInvalid

REASON_SUFFIX = ".reason.json"


class DeadLetters:
    """The `dlq/` side of the bus: a mixin of `Bus`, which provides what is declared here."""

    dlq: Path
    tmp: Path
    inbox: Path
    claimed: Path
    owner: Owner
    clock: Clock
    events: EventLog
    index: InboxIndex
    quarantined: int
    _publish: Callable[..., None]
    _record: Callable[..., None]

    def quarantine(self, path: Path, reason: str, *, original_name: str | None = None) -> Path | None:
        """Move a bad entry into `dlq/` as it is (never following a link) beside `<name>.reason.json`."""
        name = original_name or path.name
        target = self._free_name(self.dlq, _dlq_name(name))
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EISDIR, errno.ENOTEMPTY):
                raise
            return None
        note = {"file": _shown(target.name), "name": _shown(name), "from": path.parent.name, "reason": reason,
                "at": iso(self.clock.now())}
        tmp = write_tmp(self.tmp, dump_json(note))
        os.replace(tmp, self.dlq / f"{target.name}{REASON_SUFFIX}")
        fsync_dir(self.dlq)
        self.quarantined += 1
        self.events.emit("quarantined", level="error", id=None, cadence=None, file=_shown(name), reason=reason)
        return target

    def dead_letters(self) -> list[dict[str, Any]]:
        """Everything in `dlq/`, oldest first: dead-lettered ticks and quarantined files with their reasons."""
        out: list[dict[str, Any]] = []
        for entry in sorted(scan_dir(self.dlq), key=lambda e: e.name):
            name = entry.name
            if name.endswith(REASON_SUFFIX):
                continue
            note_path = self.dlq / f"{name}{REASON_SUFFIX}"
            if os.path.lexists(note_path):
                note = _read_note(note_path)
                out.append({"id": name, "kind": "quarantined", "cadence": None, "attempts": None,
                            "reason": note.get("reason"), "at": note.get("at")})
                continue
            try:
                tick, _ = read_tick_file(entry.path, name[:-5])
            except (TickInvalid, OSError) as exc:
                out.append({"id": name, "kind": "unreadable", "cadence": None, "attempts": None,
                            "reason": str(exc), "at": None})
                continue
            out.append({"id": tick.id, "kind": "tick", "cadence": tick.cadence, "attempts": tick.attempts,
                        "reason": tick.dlq_reason, "at": tick.dlq_at})
        return out

    def replay(self, tick_id: str, *, reset_attempts: bool = False, by: str = "operator") -> Tick:
        """dlq/ -> inbox/ with an audit entry: a dead-lettered tick, or a quarantined file once it has been fixed
        by hand (named as `dlq list` shows it). TickInvalid, saying why, if it is neither or still not a tick."""
        path, note = self._replayable(tick_id)
        name = note.get("name") if note is not None and isinstance(note.get("name"), str) else path.name
        try:  # under the name it had in inbox/ (its copy in dlq/ may carry a ".1")
            tick, _ = read_tick_file(path, name[:-5] if name.endswith(".json") else name)
        except TickInvalid as exc:
            if note is None:
                raise
            raise TickInvalid(f"still not a valid tick (fix {path} by hand, then replay it): {exc}") from None
        before = tick.attempts
        if reset_attempts:
            tick.attempts = 0
        tick.not_before = tick.dlq_reason = tick.dlq_at = None
        details: dict[str, Any] = {"attempts_before": before, "reset_attempts": reset_attempts}
        if note is not None:
            details["quarantine_reason"] = note.get("reason")
        self._record(tick, tick.attempts, "replayed", f"replayed from {'quarantine' if note else 'dlq'} by {by}",
                     details)
        if note is None:  # held in claimed/ first, as an operator's release is: cut short, it is in one place
            hold = self.claimed / f"{tick.id}{CLAIM_SEP}{self.owner.token}.json"
            os.rename(path, hold)
            path = hold
        self._publish(tick, self.inbox / tick.filename, overwrite=False)
        unlink_missing_ok(path)
        if note is not None:
            unlink_missing_ok(self.dlq / f"{path.name}{REASON_SUFFIX}")
        self.index.add(tick)
        self.events.emit("replayed", id=tick.id, cadence=tick.cadence, reset_attempts=reset_attempts,
                         quarantined=note is not None)
        return tick

    def _replayable(self, tick_id: str) -> tuple[Path, dict[str, Any] | None]:
        """The dead letter `tick_id` names, and its quarantine note if it is a quarantined file."""
        for name in (tick_id, f"{tick_id}.json"):
            path = self.dlq / name
            if "/" in name or name in (".", "..") or name.endswith(REASON_SUFFIX) or not os.path.lexists(path):
                continue
            note_path = self.dlq / f"{name}{REASON_SUFFIX}"
            if os.path.lexists(note_path):
                return path, _read_note(note_path)
            if name.endswith(".json"):
                return path, None
        raise TickInvalid(f"{tick_id} is not in dlq/ (see `maestro dlq list`)")

    def purge_dead_letters(self, *, older_than_days: float | None = None) -> list[str]:
        """Delete dead letters (and quarantine notes) older than N days, or all; returns the names."""
        cutoff = None if older_than_days is None else self.clock.now().timestamp() - older_than_days * 86400
        removed: list[str] = []
        for entry in scan_dir(self.dlq):
            if entry.name.endswith(REASON_SUFFIX):
                continue
            try:
                mtime = entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            if cutoff is not None and mtime >= cutoff:
                continue
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            else:
                unlink_missing_ok(path)
            unlink_missing_ok(self.dlq / f"{entry.name}{REASON_SUFFIX}")
            removed.append(entry.name)
        if removed:
            self.events.emit("dlq_purged", level="warn", count=len(removed), older_than_days=older_than_days)
        return sorted(removed)

    @staticmethod
    def _free_name(folder: Path, name: str) -> Path:
        target = folder / name
        n = 1
        while os.path.lexists(target) or os.path.lexists(f"{target}{REASON_SUFFIX}"):
            target = folder / f"{name}.{n}"
            n += 1
        return target


def _read_note(path: Path) -> dict[str, Any]:
    """A quarantine note (`<name>.reason.json`); {} if it cannot be read."""
    try:
        note = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return note if isinstance(note, dict) else {}


def _shown(name: str) -> str:
    """A file name fit for JSON: bytes that are not UTF-8 (surrogate-escaped by os) shown as \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _dlq_name(name: str) -> str:
    """Where a quarantined entry goes in dlq/: room left for `<name>.reason.json` under NAME_MAX (255 bytes),
    and never a name that reads as a note."""
    raw = os.fsencode(name)
    if len(raw) > 200:
        raw = raw[:180] + b"~" + hashlib.sha256(raw).hexdigest()[:16].encode()
        name = os.fsdecode(raw)
    if name.endswith(REASON_SUFFIX):
        name += ".quarantined"
    return name
