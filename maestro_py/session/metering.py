"""Read what a sub-session cost from the CLI's result object, `--output-format stream-json` or `json` (pure
parsing, no I/O)."""

from __future__ import annotations

import heapq
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

# modelUsage key -> our field name. The CLI reports per-model counts in camelCase.
_MODEL_KEYS: dict[str, str] = {
    "inputTokens": "input_tokens",
    "outputTokens": "output_tokens",
    "cacheReadInputTokens": "cache_read_tokens",
    "cacheCreationInputTokens": "cache_creation_tokens",
}
TOKEN_FIELDS: tuple[str, ...] = tuple(_MODEL_KEYS.values())
# How much of a run's stdout (from its end) is searched for the result. The CLI prints its result last; a result
# line longer than this (a final answer of megabytes) is not found, and the run is charged its reservation.
RESULT_WINDOW = 4 << 20
_PRETTY_ATTEMPTS = 16  # lines tried as the start of a pretty-printed (multi-line) result object
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Usage:
    """Tokens and dollars one sub-session consumed; None means "not reported", never "zero"."""

    cost_usd: float | None
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None
    cache_creation_tokens: int | None
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int | None:
        """Sum of the four token counts, or None if any of them is unknown (a partial sum would undercount)."""
        counts = [getattr(self, name) for name in TOKEN_FIELDS]
        if any(c is None for c in counts):
            return None
        return sum(counts)

    @property
    def measured(self) -> bool:
        """True when the CLI reported a cost or any token count (including a reported zero)."""
        return self.cost_usd is not None or any(getattr(self, name) is not None for name in TOKEN_FIELDS)

    @classmethod
    def unknown(cls) -> Usage:
        """Usage of a run whose result could not be read."""
        return cls(None, None, None, None, None, {})

    def to_row(self) -> dict[str, Any]:
        """A flat, JSON-ready dict for the ledger."""
        return {
            "cost_usd": self.cost_usd,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_creation_tokens": self.cache_creation_tokens,
            "total_tokens": self.total_tokens,
            "per_model": {model: dict(row) for model, row in self.per_model.items()},
        }


@dataclass(frozen=True)
class CliResult:
    """The fields of the CLI's result object that the daemon acts on, plus the raw object."""

    subtype: str | None
    is_error: bool | None
    api_error_status: int | None
    text: str | None
    session_id: str | None
    usage: Usage
    raw: dict[str, Any]
    api_retries: int | None = None  # `api_retry` lines before it (stream-json); None: not known
    rate_limit: dict[str, Any] | None = None  # the last `rate_limit_event`'s `rate_limit_info` (subscription auth)
    denials: tuple[str, ...] | None = None  # the tools its `permission_denials` name, one per denial (None: absent)


_STREAM_INIT = b'{"type":"system","subtype":"init"'
_API_RETRY = b'"type":"system","subtype":"api_retry"'  # as the CLI prints it; quoted text inside a string is escaped
_RATE_LIMIT_EVENT = b'{"type":"rate_limit_event"'


def parse_result(stdout: bytes) -> CliResult | None:
    """The CLI result found in `stdout`, or None if there is none (then usage is unknown, not zero)."""
    obj = find_result_object(stdout)
    if obj is None:
        return None
    window = stdout[-RESULT_WINDOW:]
    # The count is known only if the stream's first line is in the window (json mode has none of these).
    retries = window.count(_API_RETRY) if _STREAM_INIT in window else None
    return CliResult(
        subtype=_str(obj.get("subtype")),
        is_error=obj.get("is_error") if isinstance(obj.get("is_error"), bool) else None,
        api_error_status=_int(obj.get("api_error_status")),
        text=_text(obj),
        session_id=_str(obj.get("session_id")),
        usage=usage_from_result(obj),
        raw=obj,
        api_retries=retries,
        rate_limit=last_rate_limit(window),
        denials=_denials(denied_tools(obj), window if _STREAM_INIT in window else None),
    )


_USER_LINE = b'{"type":"user"'
_NO_SUCH_TOOL = re.compile(rb"No such tool available: ([A-Za-z0-9_]{1,100})")


def _denials(listed: tuple[str, ...] | None, stream: bytes | None) -> tuple[str, ...] | None:
    """The result's `permission_denials`, plus the calls of tools the run was not given (`--tools` narrows the set,
    and the CLI answers those "No such tool available" without listing them): the stream's tool results say so."""
    if stream is None or listed is None or b"No such tool available" not in stream:
        return listed
    missing = []
    for line in stream.split(b"\n"):
        if line.startswith(_USER_LINE) and b'"is_error":true' in line:
            missing += [m.decode() for m in _NO_SUCH_TOOL.findall(line)[:1]]
    return listed + tuple(missing[:1000])


def denied_tools(obj: dict[str, Any]) -> tuple[str, ...] | None:
    """The tool of each call the CLI denied (`permission_denials: [{tool_name, tool_use_id, tool_input}]`), in order;
    None when the result has no such list (an older CLI, or a result cut short)."""
    found = obj.get("permission_denials")
    if not isinstance(found, list):
        return None
    return tuple(str(d.get("tool_name") or "?")[:100] if isinstance(d, dict) else "?" for d in found[:1000])


def last_rate_limit(window: bytes) -> dict[str, Any] | None:
    """The `rate_limit_info` of the last `rate_limit_event` line in `window` (the CLI prints one per response
    under subscription auth: `allowed`, `allowed_warning` near the limit, `rejected` at it), or None."""
    at = window.rfind(_RATE_LIMIT_EVENT)
    while at >= 0:
        end = window.find(b"\n", at)
        line = window[at:end if end >= 0 else len(window)].decode("utf-8", errors="replace")
        try:
            info = json.loads(line).get("rate_limit_info")
        except (ValueError, AttributeError):
            info = None
        if isinstance(info, dict):
            return info
        at = window.rfind(_RATE_LIMIT_EVENT, 0, at)
    return None


def find_result_object(stdout: bytes) -> dict[str, Any] | None:
    """The last `{"type":"result",...}` object in `stdout` (json mode, stream-json lines, or junk before it).

    Only the last RESULT_WINDOW bytes are searched, each line parsed at most once, plus a few attempts at a
    pretty-printed object: the work is linear and bounded however much a run printed (a timed-out
    stream-json run leaves tens of thousands of lines and no result).
    """
    text = stdout[-RESULT_WINDOW:].decode("utf-8", errors="replace")
    # Lines that open an object without closing it, as (-indent, offset of the "{"): a heap of the best few, so
    # the outermost (least indented), then the last, are tried as the start of a pretty-printed object.
    opened: list[tuple[int, int]] = []
    end = len(text)
    while end > 0:
        begin = text.rfind("\n", 0, end) + 1
        raw, end = text[begin:end], begin - 1
        line = raw.strip()
        if not line.startswith("{"):
            continue
        if not line.endswith("}"):
            indent = len(raw) - len(raw.lstrip())
            push = heapq.heappush if len(opened) < _PRETTY_ATTEMPTS else heapq.heappushpop
            push(opened, (-indent, begin + indent))
        # Every result object says "type": "result"; lines without that word need no parsing at all.
        elif '"result"' in line and (obj := _result_or_none(line)) is not None:
            return obj
    for _, start in sorted(opened, key=lambda o: (-o[0], -o[1])):
        if (obj := _result_or_none(text, start)) is not None:
            return obj
    return None


def usage_from_result(obj: dict[str, Any]) -> Usage:
    """Usage summed over `modelUsage`; top-level `usage` is ignored (all zeros under the non-streaming fallback)."""
    cost = _float(obj.get("total_cost_usd"))
    model_usage = obj.get("modelUsage")
    if obj.get("subtype") == "error_during_execution" and not model_usage:
        # The CLI was interrupted (SIGINT) with a request in flight: its zeros describe the turns it finished,
        # not the request it abandoned, which may be billed. Unknown, not free.
        return Usage.unknown()
    if not isinstance(model_usage, dict):
        # Absent (or not an object): the CLI said nothing about tokens, so they are unknown.
        return Usage(cost, None, None, None, None, {})
    per_model: dict[str, dict[str, Any]] = {}
    totals: dict[str, int | None] = {name: 0 for name in TOKEN_FIELDS}
    for model, entry in model_usage.items():
        entry = entry if isinstance(entry, dict) else {}
        row: dict[str, Any] = {name: _int(entry.get(key)) for key, name in _MODEL_KEYS.items()}
        row["cost_usd"] = _float(entry.get("costUSD"))
        per_model[str(model)] = row
        for name in TOKEN_FIELDS:
            # One unreadable count makes the total unknown rather than silently smaller.
            current = totals[name]
            totals[name] = None if current is None or row[name] is None else current + row[name]
    # An empty modelUsage is a report too: the CLI billed nothing (every API error looks like this).
    return Usage(
        cost_usd=cost,
        input_tokens=totals["input_tokens"],
        output_tokens=totals["output_tokens"],
        cache_read_tokens=totals["cache_read_tokens"],
        cache_creation_tokens=totals["cache_creation_tokens"],
        per_model=per_model,
    )


def _result_or_none(text: str, start: int = 0) -> dict[str, Any] | None:
    """The result object at `text[start:]` (what follows it is ignored), or None."""
    try:
        obj, _ = _DECODER.raw_decode(text, start)
    except (ValueError, RecursionError):
        return None
    if isinstance(obj, dict) and obj.get("type") == "result":
        return obj
    return None


def _text(obj: dict[str, Any]) -> str | None:
    result = obj.get("result")
    if isinstance(result, str):
        return result
    # error_max_turns / error_max_budget_usd / error_during_execution carry "errors" and no "result".
    errors = obj.get("errors")
    if isinstance(errors, list) and errors:
        return "; ".join(e if isinstance(e, str) else json.dumps(e) for e in errors)
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    # bool is an int subclass, and JSON true is not a count.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and value >= 0:
        return int(value)
    return None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and value >= 0 else None
