"""The tick: one scheduled run of a cadence, and its history. How it is stored on disk (one file named
`<id>.json`: the tick on line 1, each later move appended as a record) is tickfile.py's."""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from maestro_py.clock import iso, parse_iso
from maestro_py.errors import TickInvalid

CADENCE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")  # \Z: "$" would accept a trailing newline
TICK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
MAX_TICK_BYTES = 1024 * 1024
# A tick file is at most MAX_TICK_BYTES: the tick itself (its payload, mostly) at most MAX_BASE_BYTES, and the
# history the daemon appends at most HISTORY_MAX_BYTES (older entries are elided to keep it there), so the
# daemon never writes a tick it would refuse to read back.
HISTORY_MAX_BYTES = 64 * 1024
MAX_BASE_BYTES = MAX_TICK_BYTES - HISTORY_MAX_BYTES
ELIDED = "history_elided"
_CUT = 512  # characters kept of a long string in an old history entry when the history must shrink
MAX_PAYLOAD_DEPTH = 32

_seq = itertools.count()


def new_id(now: datetime) -> str:
    """An id that sorts by enqueue time and is unique across processes (time, pid, sequence, random)."""
    n = now
    stamp = f"{n.year:04d}{n.month:02d}{n.day:02d}T{n.hour:02d}{n.minute:02d}{n.second:02d}{n.microsecond:06d}"
    return f"{stamp}Z-{os.getpid():07d}-{next(_seq) % 10000:04d}{secrets.token_hex(2)}"


@dataclass
class HistoryEntry:
    """One recorded step in a tick's life."""

    attempt: int
    at: str
    outcome: str
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"attempt": self.attempt, "at": self.at, "outcome": self.outcome, "reason": self.reason}
        out.update(self.details)
        return out


@dataclass
class Tick:
    """A unit of scheduled work and its history."""

    id: str
    cadence: str
    source: str
    enqueued_at: str
    attempts: int = 0
    not_before: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    reaps: int = 0
    dlq_reason: str | None = None  # set when dead-lettered
    dlq_at: str | None = None
    # Whether its source is trusted: the CLI, timers and a token holder are; a webhook's body (anyone may have
    # written it) and an open trigger are not. An untrusted payload reaches the prompt fenced (`session.command`).
    trusted: bool = True
    # What reading the file found (never written): its bytes up to the last whole line, the bytes of a torn
    # last line after them, whether it lacks a final newline (written by hand), and the folder its last record
    # was moving it to.
    stored: int = field(default=0, compare=False, repr=False)
    torn: int = field(default=0, compare=False, repr=False)
    unterminated: bool = field(default=False, compare=False, repr=False)
    # The newest history entry as `record` encoded it (None once anything changed the history otherwise), and
    # the history's encoded size so far (None: not counted yet), so a record costs one entry's encoding.
    last_entry_json: str | None = field(default=None, compare=False, repr=False)
    history_bytes: int | None = field(default=None, compare=False, repr=False)
    _last_entry: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    moving_to: str | None = field(default=None, compare=False, repr=False)

    @classmethod
    def new(
        cls, cadence: str, *, now: datetime, source: str = "cli", payload: dict[str, Any] | None = None,
        not_before: datetime | None = None, trusted: bool = True,
    ) -> "Tick":
        """A fresh tick (validated)."""
        tick = cls(
            id=new_id(now), cadence=cadence, source=source, enqueued_at=iso(now),
            payload=payload or {}, not_before=iso(not_before) if not_before else None, trusted=trusted,
        )
        tick.validate(check_encoding=False)
        try:  # one encoding checks both: UTF-8 (a lone surrogate fails) and the size
            size = tick.base_size()
        except UnicodeEncodeError:
            raise TickInvalid("contains an unpaired UTF-16 surrogate (\\ud800-\\udfff): not UTF-8") from None
        if size > MAX_BASE_BYTES:
            raise TickInvalid(f"tick is too large ({size} bytes; at most {MAX_BASE_BYTES}, room kept for its history)")
        return tick

    # -- history ----------------------------------------------------------
    def record(self, outcome: str, *, at: datetime, attempt: int | None = None, reason: str | None = None,
               redact: Callable[[str], str] | None = None, **details: Any) -> None:
        """Append one history entry (for `attempt`, default the attempts made so far); None details are left out;
        `redact` masks secrets in its JSON text.

        The history stays under HISTORY_MAX_BYTES: past it, the oldest entries after the first are elided
        (counted in one `history_elided` entry), then long texts in old entries are cut.
        """
        entry = HistoryEntry(self.attempts if attempt is None else attempt, iso(at), outcome, reason,
                             {k: v for k, v in details.items() if v is not None}).to_json()
        text = json.dumps(entry, ensure_ascii=False)
        if redact is not None:  # masks its secrets in the encoded entry (each is looked for as JSON escapes it)
            masked = redact(text)
            if masked != text:
                text, entry = masked, json.loads(masked)
        if self.history_bytes is None:
            self.history_bytes = _size(self.history)
        self.history.append(entry)
        self.history_bytes += len(text.encode()) + 2  # and ", " (an upper bound: the exact size is checked next)
        self.last_entry_json, self._last_entry = text, entry
        if self.history_bytes > HISTORY_MAX_BYTES:
            self.bound_history()

    def bound_history(self) -> None:
        """Keep the history under HISTORY_MAX_BYTES (see `record`)."""
        self.history_bytes = _size(self.history)
        if self.history_bytes <= HISTORY_MAX_BYTES:
            return
        self.last_entry_json = None  # entries may be cut below
        history = self.history
        while len(history) > 3 and _size(history) > HISTORY_MAX_BYTES:
            # Keep the first entry (how it began) and the latest ones; count what goes.
            marker = history[1] if history[1].get("outcome") == ELIDED else None
            gone = history.pop(2 if marker else 1)
            count = (marker["count"] if marker else 0) + (gone["count"] if gone.get("outcome") == ELIDED else 1)
            note = {"attempt": gone.get("attempt", 0), "at": gone.get("at"), "outcome": ELIDED,
                    "reason": f"{count} earlier entries elided to keep the tick under {MAX_TICK_BYTES} bytes",
                    "count": count}
            if marker:
                history[1] = note
            else:
                history.insert(1, note)
        for entry in history:  # still too big: a few entries with huge texts
            if _size(history) <= HISTORY_MAX_BYTES:
                break
            for key, value in entry.items():
                if isinstance(value, str) and len(value) > _CUT:
                    entry[key] = value[:_CUT] + "…[cut]"
        self.history_bytes = _size(history)

    def encoded_last_entry(self) -> str | None:
        """The newest history entry as `record` encoded it, if it is still that entry, unchanged."""
        if self.last_entry_json is not None and self.history and self.history[-1] is self._last_entry:
            return self.last_entry_json
        return None

    def base_size(self) -> int:
        """Bytes of the tick without its history (what MAX_BASE_BYTES limits)."""
        doc = self.to_json()
        doc["history"] = []
        return len(encode(doc))

    @property
    def not_before_dt(self) -> datetime | None:
        return parse_iso(self.not_before) if self.not_before else None

    @property
    def filename(self) -> str:
        return f"{self.id}.json"

    # -- encoding ---------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "cadence": self.cadence, "source": self.source, "enqueued_at": self.enqueued_at,
            "attempts": self.attempts, "not_before": self.not_before, "trusted": self.trusted,
            "payload": self.payload, "history": self.history,
        }
        if self.reaps:
            out["reaps"] = self.reaps
        if self.dlq_reason is not None or self.dlq_at is not None:
            out["dlq_reason"], out["dlq_at"] = self.dlq_reason, self.dlq_at
        return out

    def to_bytes(self) -> bytes:
        return encode(self.to_json())

    def validate(self, *, check_encoding: bool = True) -> None:
        """Raise TickInvalid naming the first problem found.

        `check_encoding=False` skips the UTF-8 round trip, for ticks decoded from JSON text without a `\\u`
        escape (the only way a lone surrogate gets in).
        """
        if not isinstance(self.cadence, str) or not CADENCE_RE.match(self.cadence):
            raise TickInvalid(f"cadence {self.cadence!r} does not match {CADENCE_RE.pattern}")
        if not isinstance(self.id, str) or not TICK_ID_RE.match(self.id):
            raise TickInvalid(f"id {self.id!r} is not a valid tick id")
        if not isinstance(self.source, str) or len(self.source) > 200:
            raise TickInvalid("source must be a string of at most 200 characters")
        if not isinstance(self.attempts, int) or isinstance(self.attempts, bool) or self.attempts < 0:
            raise TickInvalid("attempts must be a non-negative integer")
        if not isinstance(self.reaps, int) or isinstance(self.reaps, bool) or self.reaps < 0:
            raise TickInvalid("reaps must be a non-negative integer")
        if not isinstance(self.payload, dict):
            raise TickInvalid("payload must be a JSON object")
        if not isinstance(self.trusted, bool):
            raise TickInvalid("trusted must be true or false")
        if not isinstance(self.history, list) or not all(isinstance(h, dict) for h in self.history):
            raise TickInvalid("history must be a list of objects")
        if not all(isinstance(v, (str, type(None))) for v in (self.dlq_reason, self.dlq_at)):
            raise TickInvalid("dlq_reason and dlq_at must be strings")
        for name in ("enqueued_at", "not_before"):
            value = getattr(self, name)
            if value is None and name == "not_before":
                continue
            if not isinstance(value, str):
                raise TickInvalid(f"{name} must be an ISO 8601 string")
            try:
                parse_iso(value)
            except ValueError:
                raise TickInvalid(f"{name} {value!r} is not an ISO 8601 timestamp") from None
        if not check_encoding:
            return
        try:
            self.to_bytes()
        except UnicodeEncodeError:  # JSON's "\ud800" escapes decode to lone surrogates UTF-8 cannot store
            raise TickInvalid("contains an unpaired UTF-16 surrogate (\\ud800-\\udfff): not UTF-8") from None


UNTRUSTED_SOURCES = ("github:", "webhook")


def trusted_source(source: str) -> bool:
    """Whether a tick file without `trusted` (written before it existed) came from a trusted source: a webhook's
    did not."""
    return not source.startswith(UNTRUSTED_SOURCES)


def encode(doc: dict[str, Any]) -> bytes:
    """A tick file's bytes: one line of JSON (json's C encoder; `indent` would switch to the pure-Python one,
    several times slower on the hot path). `maestro dlq show` pretty-prints."""
    return (json.dumps(doc, ensure_ascii=False) + "\n").encode()


def _size(history: list[dict[str, Any]]) -> int:
    return len(json.dumps(history, ensure_ascii=False).encode())
