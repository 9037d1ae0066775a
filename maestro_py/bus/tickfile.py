"""The tick file: how a tick is stored on disk, written and read back (`read_tick_file`).

The file's first line is the tick as one JSON object (as it was enqueued, or as last rewritten). Each move
of the tick after that (settled, retried, requeued, reaped, dead-lettered) appends one *record* line, written
with O_APPEND by one `write`, before the file is renamed into its next folder:

    {"id": ..., "cadence": ..., "attempts": 0, "history": [{"outcome": "enqueued", ...}], ...}
    {"to": "inbox", "set": {"attempts": 1, "not_before": "..."}, "entry": {"outcome": "failed", ...}}
    {"to": "done", "set": {}, "entry": {"outcome": "ok", ...}}

Reading folds the records into the tick: `set` overwrites its fields, `entry` joins its history. A last line
without its newline is a write a crash cut short; it is left out (`Tick.torn` counts its bytes, and the next
writer truncates them before it appends), so a power cut mid-append loses at most that record, never the
tick. A file whose next record would pass MAX_TICK_BYTES is rewritten as one line instead (compacted), so
the daemon never writes a file it would refuse to read back. Files of one JSON object (older versions, or
written by hand, pretty-printed or not) are read as they always were.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from datetime import datetime
from pathlib import Path
from typing import Any

from maestro_py.bus.tick import MAX_BASE_BYTES, MAX_PAYLOAD_DEPTH, MAX_TICK_BYTES, TICK_ID_RE, Tick, trusted_source
from maestro_py.clock import iso
from maestro_py.errors import TickInvalid

# The fields a record's "set" may change, and the folders its "to" may name.
RECORD_FIELDS = frozenset({"attempts", "not_before", "reaps", "dlq_reason", "dlq_at"})
RECORD_TARGETS = frozenset({"inbox", "done", "dlq"})


def encode_record(to: str, entry: dict[str, Any], changes: dict[str, Any] | None = None, *,
                  entry_json: str | None = None) -> bytes:
    """One appended record line: the tick moves `to` a folder, its fields `changes`, `entry` joins its history
    (`entry_json`: the entry already encoded, by `Tick.record`)."""
    if entry_json is None:
        entry_json = json.dumps(entry, ensure_ascii=False)
    fields = json.dumps(changes, ensure_ascii=False) if changes else "{}"
    return f'{{"to": "{to}", "set": {fields}, "entry": {entry_json}}}\n'.encode()


def parse_tick(data: bytes, *, stem: str, fallback_time: datetime | float) -> Tick:
    """Decode a tick file's bytes (its first JSON object, then any appended records); lenient on missing
    optional fields, strict on types.

    Ticks dropped by hand or by shell scripts may carry only `cadence`: the id then comes from the file
    name and `enqueued_at` from the file's mtime.
    """
    if len(data) > MAX_TICK_BYTES:
        raise TickInvalid(f"file is larger than {MAX_TICK_BYTES} bytes")
    torn = _torn_tail(data)
    try:
        text = (data[:-torn] if torn else data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TickInvalid(f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if "\x00" in text:
        raise TickInvalid("contains a NUL character")
    obj, end = _first_object(text)
    if not isinstance(obj, dict):
        raise TickInvalid(f"not a JSON object (got {type(obj).__name__})")
    if "cadence" not in obj:
        raise TickInvalid("missing required field 'cadence'")
    if _depth(obj.get("payload")) > MAX_PAYLOAD_DEPTH:
        raise TickInvalid(f"payload nested deeper than {MAX_PAYLOAD_DEPTH} levels")
    if not TICK_ID_RE.match(stem):
        raise TickInvalid(f"file name {stem!r} is not a valid tick id")
    tick_id = obj.get("id", stem)
    if tick_id != stem:
        raise TickInvalid(f"id {tick_id!r} does not match the file name {stem!r}")
    tick = Tick(
        id=tick_id,
        cadence=obj["cadence"],
        source=obj.get("source", "file"),
        enqueued_at=obj.get("enqueued_at") or iso(_when(fallback_time)),
        attempts=obj.get("attempts", 0),
        not_before=obj.get("not_before"),
        payload=obj.get("payload") if obj.get("payload") is not None else {},
        history=obj.get("history") if obj.get("history") is not None else [],
        reaps=obj.get("reaps", 0),
        dlq_reason=obj.get("dlq_reason"),
        dlq_at=obj.get("dlq_at"),
        trusted=obj["trusted"] if "trusted" in obj else trusted_source(str(obj.get("source", "file"))),
    )
    if not isinstance(tick.history, list):
        raise TickInvalid("history must be a list of objects")
    _fold(tick, text[end:])
    if tick.history_bytes is None:
        tick.history_bytes = len(data)  # an upper bound, so the next `record` need not encode the whole history
    tick.stored, tick.torn, tick.unterminated = len(data) - torn, torn, not torn and not text.endswith("\n")
    tick.validate(check_encoding="\\u" in text)
    if len(data) > MAX_BASE_BYTES and tick.base_size() > MAX_BASE_BYTES:
        raise TickInvalid(f"tick is larger than {MAX_BASE_BYTES} bytes without its history")
    return tick


def _torn_tail(data: bytes) -> int:
    """How many bytes at the end are a record cut short by a crash: a last line without its newline (maybe zeros,
    maybe half a UTF-8 character) after a whole tick. 0 when there is none; the hot path looks at one byte."""
    cut = data.rfind(b"\n") + 1
    if not cut or not data[cut:].strip():
        return 0
    try:
        head = data[:cut].decode("utf-8")
    except UnicodeDecodeError:
        return 0  # the tick itself is not UTF-8: said when it is decoded
    return len(data) - cut if _ends_whole(head) else 0


_DECODER = json.JSONDecoder()


def _ends_whole(text: str) -> bool:
    try:
        _first_object(text)
        return True
    except TickInvalid:
        return False


def _first_object(text: str) -> tuple[Any, int]:
    """The first JSON value in `text` (a tick, maybe pretty-printed) and where it ends."""
    start = len(text) - len(text.lstrip(" \t\r\n"))
    try:
        return _DECODER.raw_decode(text, start)
    except RecursionError:
        raise TickInvalid("JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise TickInvalid(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python's int-to-str digit limit
        raise TickInvalid(f"not valid JSON: {str(exc).split(';')[0]}") from None


def _fold(tick: Tick, records: str) -> None:
    """Apply the appended record lines (what follows the tick's object, torn tail left out) to the tick."""
    lines = records.split("\n")
    if lines[0].strip():
        raise TickInvalid("not valid JSON: Extra data after the tick's object")
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            raise TickInvalid(f"record on line {number} is not valid JSON") from None
        if (not isinstance(rec, dict) or rec.get("to") not in RECORD_TARGETS or not isinstance(rec.get("entry"), dict)
                or not isinstance(rec.get("set", {}), dict) or not set(rec.get("set", {})) <= RECORD_FIELDS):
            raise TickInvalid(f"record on line {number} is not a tick record")
        for key, value in rec.get("set", {}).items():
            setattr(tick, key, value)
        tick.history.append(rec["entry"])
        tick.moving_to = rec["to"]
    if tick.moving_to is not None:
        tick.bound_history()


def read_tick_file(path: Path | str, stem: str) -> tuple[Tick, os.stat_result]:
    """Open without following links or blocking, check it is a small regular file, parse it.

    Raises TickInvalid (the reason to quarantine it) or FileNotFoundError (it vanished).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TickInvalid("is a symbolic link (never followed)") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise TickInvalid("unreadable (permission denied)") from None
        if exc.errno == errno.ENXIO:
            raise TickInvalid("is a socket or device, not a regular file") from None
        raise TickInvalid(f"cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise TickInvalid("is a directory, not a regular file")
        if stat.S_ISFIFO(st.st_mode):
            raise TickInvalid("is a FIFO, not a regular file")
        if not stat.S_ISREG(st.st_mode):
            raise TickInvalid("is not a regular file")
        if st.st_size > MAX_TICK_BYTES:
            raise TickInvalid(f"file is larger than {MAX_TICK_BYTES} bytes ({st.st_size})")
        # One read of the size fstat gave (and a byte more) usually gets it all; a file still growing is read
        # on, never past the limit.
        chunks = [os.read(fd, min(st.st_size + 1, MAX_TICK_BYTES + 1))]
        remaining = MAX_TICK_BYTES + 1 - len(chunks[0])
        while remaining > 0 and len(chunks[0]) != st.st_size:  # it grew, or a read came short: read to the end
            chunk = os.read(fd, min(remaining, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise TickInvalid(f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    return parse_tick(data, stem=stem, fallback_time=st.st_mtime), st


def _when(value: datetime | float) -> datetime:
    """A fallback time given as a datetime or epoch seconds (a file's mtime: converted only when needed)."""
    return value if isinstance(value, datetime) else datetime.fromtimestamp(value).astimezone()


def _depth(value: Any, level: int = 0) -> int:
    """Nesting depth of a JSON value, stopping early once past the limit."""
    if level > MAX_PAYLOAD_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level
