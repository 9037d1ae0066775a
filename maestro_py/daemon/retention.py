"""Retention: prune old `done/` ticks and per-run logs, and rotate event logs and the ledger by month.

- `done/<id>.json` and `logs/cadence-bus/subsessions/*.log` older than `MAESTRO_RETENTION_DAYS`, or beyond
  `MAESTRO_LOGS_MAX_MB` in total, are removed oldest first (a run's stdout and stderr logs together).
  Never removed: protected paths (the live sub-sessions' logs) and anything modified in the last 60 s.
- Daily event logs of earlier months are concatenated into `bus-YYYY-MM.jsonl`, then removed.
- Ledger rows of earlier months move to `state/cost-ledger-YYYY-MM.jsonl`.
- launchd's stdout/stderr files (`logs/launchd-*.log`) past 10 MiB are copied to `.1` and emptied
  (launchd_logs.py: launchd cannot rotate them).

Months are local time, like the daily event log names. Both rotations are safe to repeat after a crash:
an archive that already ends with exactly the chunk being moved is not written again. The ledger is
rewritten under an exclusive `flock` on `state/cost-ledger.jsonl`; `Ledger.append` takes the same lock and
re-opens the file if it was replaced while it waited, so no row is lost to a concurrent append.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from maestro_py.clock import parse_iso
from maestro_py.bus.fsio import atomic_write, fsync_dir, scan_dir, unlink_missing_ok
from maestro_py.daemon import launchd_logs
from maestro_py.paths import Folder, Layout

PRUNE_EVERY_SECONDS = 3600.0   # how often the daemon prunes
RECENT_SECONDS = 60.0          # files modified this recently are never pruned (a writer may still be busy)
TMP_GRACE_SECONDS = 3600.0     # a crashed merge's leftover `.bus-*.tmp` is removed after this
MIB = 1024 * 1024

_DAILY_RE = re.compile(r"^bus-(\d{4}-\d{2})-\d{2}\.jsonl\Z")
_RUN_LOG_RE = re.compile(r"\.(stdout|stderr)\.log\Z")


# -- the report ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Removal:
    """One file pruned (or that would be): why, and how many bytes it held."""

    path: Path
    size: int
    reason: str  # "age" | "size" | "tmp"


@dataclass(frozen=True)
class Rotation:
    """One month of event logs or ledger rows moved into its monthly archive."""

    kind: str  # "events" | "ledger" | "launchd"
    month: str  # YYYY-MM
    archive: Path
    sources: tuple[Path, ...]
    lines: int


@dataclass
class PruneReport:
    """What `prune` removed and rotated (or would have, with `dry_run`)."""

    dry_run: bool
    limit_bytes: int
    removed: list[Removal] = field(default_factory=list)
    rotations: list[Rotation] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    total_bytes: int = 0  # done ticks + per-run logs left afterwards

    @property
    def bytes_freed(self) -> int:
        """Bytes the removals free."""
        return sum(r.size for r in self.removed)

    @property
    def changed(self) -> bool:
        """True if anything was (or would be) removed or rotated, or something failed."""
        return bool(self.removed or self.rotations or self.errors)

    def summary(self) -> dict[str, Any]:
        """Counts for a `pruned` event."""
        return {"removed": len(self.removed), "bytes_freed": self.bytes_freed,
                "rotated": [f"{r.kind}:{r.month}" for r in self.rotations], "errors": self.errors[:5],
                "total_bytes": self.total_bytes, "dry_run": self.dry_run}

    def to_json(self, root: Path) -> dict[str, Any]:
        """The report as `maestro prune --json` prints it (paths relative to the root)."""
        return {
            "dry_run": self.dry_run,
            "removed": [{"path": _rel(r.path, root), "bytes": r.size, "reason": r.reason} for r in self.removed],
            "rotated": [{"kind": r.kind, "month": r.month, "archive": _rel(r.archive, root),
                         "sources": [_rel(s, root) for s in r.sources], "lines": r.lines} for r in self.rotations],
            "bytes_freed": self.bytes_freed, "total_bytes": self.total_bytes, "limit_bytes": self.limit_bytes,
            "errors": self.errors,
        }

    def lines(self, root: Path) -> list[str]:
        """One human-readable line per removal and rotation, then a summary line."""
        verb = "would remove" if self.dry_run else "removed"
        out = [f"{verb} {_rel(r.path, root)} ({_size(r.size)}, {r.reason})" for r in self.removed]
        for rot in self.rotations:
            what = (f"{len(rot.sources)} daily log(s)" if rot.kind == "events" else "ledger rows" if rot.kind == "ledger"
                    else _rel(rot.sources[0], root))
            out.append(f"{'would rotate' if self.dry_run else 'rotated'} {rot.kind} {rot.month}: {what}, "
                       f"{rot.lines} line(s) -> {_rel(rot.archive, root)}")
        out += [f"error: {e}" for e in self.errors]
        out.append(f"{verb} {len(self.removed)} file(s), {_size(self.bytes_freed)}; done ticks + per-run logs: "
                   f"{_size(self.total_bytes)} of {_size(self.limit_bytes)}")
        return out


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _size(n: int) -> str:
    return f"{n / MIB:.1f} MB" if n >= MIB else f"{n / 1024:.1f} KB" if n >= 1024 else f"{n} B"


# -- pruning ------------------------------------------------------------------------------------

def prune(layout: Layout, *, now: datetime, retention_days: float, max_mb: float, protect: set[Path],
          dry_run: bool) -> PruneReport:
    """Rotate last months' event logs and ledger rows, then prune done ticks and per-run logs."""
    report = PruneReport(dry_run=dry_run, limit_bytes=int(max_mb * MIB))
    month = f"{now.astimezone():%Y-%m}"
    for step in (_rotate_events, _rotate_ledger, _rotate_launchd):
        try:
            step(layout, month, now, report)
        except OSError as exc:
            report.errors.append(f"{step.__name__.lstrip('_').replace('_', ' ')}: {exc}")
    try:
        _prune_files(layout, now, retention_days, protect, report)
    except OSError as exc:
        report.errors.append(f"prune files: {exc}")
    return report


@dataclass
class _Unit:
    """Files removed together (one done tick, or one run's stdout + stderr logs)."""

    key: str
    files: list[tuple[Path, int, float]]  # path, size, mtime

    @property
    def mtime(self) -> float:
        return max(f[2] for f in self.files)

    @property
    def size(self) -> int:
        return sum(f[1] for f in self.files)


def _units(layout: Layout) -> list[_Unit]:
    units: dict[str, _Unit] = {}
    # A policy's settings files are touched by every run under it: old ones are of policies no longer used.
    for folder, pattern in ((layout.folder(Folder.DONE), None), (layout.subsessions_dir, ".log"),
                            (layout.run_settings_dir, ".json")):
        for entry in scan_dir(folder):
            if pattern and not entry.name.endswith(pattern):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            name = entry.name.split(".")[0] if pattern == ".json" else _RUN_LOG_RE.sub("", entry.name) if pattern \
                else entry.name
            key = f"{folder.name}/{name}"
            units.setdefault(key, _Unit(key, [])).files.append((Path(entry.path), st.st_size, st.st_mtime))
    return sorted(units.values(), key=lambda u: (u.mtime, u.key))


def _prune_files(layout: Layout, now: datetime, retention_days: float, protect: set[Path],
                 report: PruneReport) -> None:
    guarded = {os.path.abspath(p) for p in protect} | {os.path.realpath(p) for p in protect}
    units = _units(layout)
    total = sum(u.size for u in units)
    old_before = now.timestamp() - retention_days * 86400
    recent_after = now.timestamp() - RECENT_SECONDS
    for unit in units:
        if unit.mtime > recent_after or any(os.path.abspath(f[0]) in guarded for f in unit.files):
            continue
        if unit.mtime < old_before:
            reason = "age"
        elif unit.key.startswith("run-settings/"):
            continue  # a policy's files go by age only: a long run may still be using them
        elif total > report.limit_bytes:
            reason = "size"
        else:
            break  # oldest first: nothing later is old, and the total fits
        for path, size, _ in unit.files:
            if not report.dry_run:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    report.errors.append(f"cannot remove {path}: {exc.strerror or exc}")
                    continue
            total -= size
            report.removed.append(Removal(path, size, reason))
    report.total_bytes = total


# -- event log rotation -------------------------------------------------------------------------

def _rotate_events(layout: Layout, month: str, now: datetime, report: PruneReport) -> None:
    try:
        fd = os.open(layout.events_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        # `maestro prune` by hand and the daemon's hourly prune must not merge the same month at once.
        fcntl.flock(fd, fcntl.LOCK_EX)
        _rotate_events_locked(layout.events_dir, month, now, report)
    finally:
        os.close(fd)


def _rotate_events_locked(folder: Path, month: str, now: datetime, report: PruneReport) -> None:
    by_month: dict[str, list[Path]] = {}
    for entry in scan_dir(folder):
        match = _DAILY_RE.match(entry.name)
        if match and match[1] < month and entry.is_file(follow_symlinks=False):
            by_month.setdefault(match[1], []).append(Path(entry.path))
        elif entry.name.startswith(".bus-") and entry.name.endswith(".tmp"):
            _drop_leftover(Path(entry.path), now, report)
    recent_after = now.timestamp() - RECENT_SECONDS
    for old_month, dailies in sorted(by_month.items()):
        dailies.sort()
        if any(_mtime(p) > recent_after for p in dailies):
            continue  # a writer that read the clock before midnight may still append: next time
        archive = folder / f"bus-{old_month}.jsonl"
        lines = sum(len(_chunk(p).splitlines()) for p in dailies)
        if not report.dry_run:
            _merge(archive, dailies)
        report.rotations.append(Rotation("events", old_month, archive, tuple(dailies), lines))


def _merge(archive: Path, parts: list[Path]) -> None:
    """Append `parts` to `archive` exactly once (atomically, durably), then remove them."""
    if not _ends_with(archive, parts):
        tmp = archive.parent / f".{archive.name}.{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    with open(archive, "rb") as old:
                        shutil.copyfileobj(old, out)
                except FileNotFoundError:
                    pass
                for part in parts:
                    out.write(_chunk(part))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, archive)
        except BaseException:
            unlink_missing_ok(tmp)
            raise
        fsync_dir(archive.parent)
    for part in parts:
        unlink_missing_ok(part)
    fsync_dir(archive.parent)


def _ends_with(archive: Path, parts: list[Path]) -> bool:
    """True if the archive already ends with the parts' content (a merge whose clean-up was cut short)."""
    chunks = [_chunk(p) for p in parts]
    wanted = sum(len(c) for c in chunks)
    try:
        with open(archive, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size < wanted:
                return False
            fh.seek(size - wanted)
            return all(fh.read(len(c)) == c for c in chunks)
    except FileNotFoundError:
        return wanted == 0


def _chunk(path: Path) -> bytes:
    data = path.read_bytes()
    return data + b"\n" if data and not data.endswith(b"\n") else data


def _drop_leftover(path: Path, now: datetime, report: PruneReport) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if st.st_mtime < now.timestamp() - TMP_GRACE_SECONDS:
        if not report.dry_run:
            unlink_missing_ok(path)
        report.removed.append(Removal(path, st.st_size, "tmp"))


def _rotate_launchd(layout: Layout, month: str, now: datetime, report: PruneReport) -> None:
    for path, _ in launchd_logs.oversized(layout.logs_dir):
        lines = launchd_logs.count_lines(path) if report.dry_run else launchd_logs.rotate(path)
        report.rotations.append(Rotation("launchd", month, path.with_name(path.name + ".1"), (path,), lines))


# -- ledger rotation ----------------------------------------------------------------------------

def lock_ledger(path: Path) -> int | None:
    """Open `path` and hold an exclusive flock on the file the path names *now*; None if there is none.

    Re-checks the inode after locking: a waiter that locked a file which was replaced meanwhile must lock
    the new one. `Ledger.append` follows the same protocol. Closing the descriptor releases the lock.
    """
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            st = os.stat(path)
            mine = os.fstat(fd)
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _rotate_ledger(layout: Layout, month: str, now: datetime, report: PruneReport) -> None:
    path = layout.ledger_file
    fd = lock_ledger(path)
    if fd is None:
        return
    try:
        with open(fd, "rb", closefd=False) as fh:
            data = fh.read()
        keep: list[bytes] = []
        old: dict[str, list[bytes]] = {}
        for line in data.splitlines(keepends=True):
            row_month = _row_month(line)
            if row_month is not None and row_month < month:
                old.setdefault(row_month, []).append(line if line.endswith(b"\n") else line + b"\n")
            else:
                keep.append(line)  # this month's rows, and lines without a readable ts (never dropped)
        for row_month, rows in sorted(old.items()):
            archive = layout.ledger_archive(row_month)
            report.rotations.append(Rotation("ledger", row_month, archive, (path,), len(rows)))
            if report.dry_run:
                continue
            chunk = b"".join(rows)
            existing = archive.read_bytes() if archive.exists() else b""
            if not existing.endswith(chunk):  # else a rotation cut short already archived them
                atomic_write(archive, existing + chunk)
        if old and not report.dry_run:
            # Only after every archive is durable: a crash before this line leaves the rows in both
            # places, and the next rotation finds them already archived.
            atomic_write(path, b"".join(keep))
    finally:
        os.close(fd)


def _row_month(line: bytes) -> str | None:
    try:
        row = json.loads(line)
        return f"{parse_iso(row['ts']).astimezone():%Y-%m}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


# -- helpers ------------------------------------------------------------------------------------


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
