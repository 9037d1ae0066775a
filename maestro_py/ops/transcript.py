"""A run's stream-json output as a person reads it (`maestro tick log`, the status page's run page): pure, no I/O.

`Transcript.feed` takes one line of the CLI's `--output-format stream-json --verbose` stdout and gives the display
lines it makes, each an `Entry` (a kind, for styling, and the text): the assistant's text as written, one line per
tool call (the tool and a short input), per tool result (ok or error, its first line), per permission denial (the
stream's `system/permission_denied` line, whose call's error result it stands for), per API retry (`api_retry`)
and usage-limit event, and the result line with turns, tokens and cost (`session.metering`'s reading: what was not
reported is "unknown", never $0), then the calls the result lists as denied. Lines that are not JSON are shown cut,
as notes; a line longer than MAX_LINE is not parsed. Everything is cut to a width and a number of lines: whatever
a run printed, a display line is short and a text block bounded. Entries are not escaped: the caller does that
for its medium (`bus.logview.escape` for a terminal, `serve.page.esc` for HTML).

`LineReader` splits bytes, fed in chunks as a file grows, into lines, keeping at most MAX_LINE bytes of any one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from maestro_py.ops.when import local
from maestro_py.session.metering import usage_from_result

MAX_LINE = 4 << 20     # bytes of one line parsed; the CLI's result line is looked for in as much (metering)
WIDTH = 160            # a one-line entry (a call's input, a result's first line) is cut here
TEXT_WIDTH = 2000      # a line of the assistant's text is cut here
TEXT_LINES = 200       # lines shown of one text block
DENIALS_SHOWN = 10     # calls named on the result's denial line
REMEMBERED = 4096      # tool-use ids remembered (to name a result's tool), oldest forgotten first
INPUT_KEYS = ("command", "file_path", "notebook_path", "path", "pattern", "url", "query", "description", "prompt",
              "skill")  # the input field that says most about a call, first found wins
_TYPE = re.compile(rb'"type"\s*:\s*"([a-z_]{1,40})"')
_ERROR_TAG = re.compile(r"^\s*<tool_use_error>|</tool_use_error>\s*$")


@dataclass(frozen=True)
class Entry:
    """One display line: `kind` (session, text, thinking, call, ok, error, denied, retry, limit, result, failed,
    denials, note) and its text, unescaped."""

    kind: str
    text: str


class Transcript:
    """Turns stream-json lines into display lines, remembering across lines only what names a tool result (its
    call) and whether the result came (a bounded state)."""

    def __init__(self, mask: Callable[[str], str] | None = None) -> None:
        self._mask = mask or (lambda text: text)
        self._tools: dict[str, str] = {}     # tool_use id -> tool name
        self._denied: dict[str, None] = {}   # tool_use ids a permission_denied line named
        self._last_text: int | None = None   # hash of the last assistant text (the result repeats it)
        self.result_seen = False

    def feed(self, line: bytes, size: int | None = None) -> list[Entry]:
        """The display lines of one stdout line (without its newline); `size` is its whole length when only its
        start is given (a line over MAX_LINE, as `LineReader` keeps it)."""
        size = len(line) if size is None else size
        if size > MAX_LINE or len(line) > MAX_LINE:
            kind = _TYPE.search(line[:4096])
            name = kind[1].decode() if kind else ""
            what = f"{'an' if name[:1] in ('a', 'e', 'i', 'o', 'u') else 'a'} {name} line" if name else "a line"
            return [self._entry("note", f"[{what} of {size:,} bytes not shown: over the {MAX_LINE >> 20} MiB a "
                                        "line is read to; `--raw` has it]")]
        text = line.decode("utf-8", errors="replace").strip()
        if not text:
            return []
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            obj = None
        if not isinstance(obj, dict):
            return [self._entry("note", text if text.startswith("[maestro:") else f"[not JSON] {cut(text)}")]
        handler = _HANDLERS.get(str(obj.get("type")))
        return [self._entry(kind, words) for kind, words in handler(self, obj)] if handler else []

    def end(self, *, settled: bool) -> list[Entry]:
        """What to say once the stream is over (`settled`: the run ended) or read so far (it is running)."""
        if self.result_seen:
            return []
        if settled:
            return [self._entry("failed", "= no result: the run ended without one (ended by maestro, killed, or its "
                                          "output cut): turns, tokens and cost unknown")]
        return [self._entry("note", "… running: no result yet")]

    def _entry(self, kind: str, text: str) -> Entry:
        return Entry(kind, self._mask(text))

    # -- one handler per line type: each yields (kind, text) ------------------------------------------------

    def _system(self, obj: dict[str, Any]) -> Iterator[tuple[str, str]]:
        subtype = obj.get("subtype")
        if subtype == "init":
            tools = obj.get("tools") if isinstance(obj.get("tools"), list) else []
            shown = ", ".join(str(t) for t in tools[:30]) + (f" and {len(tools) - 30} more" if len(tools) > 30 else "")
            yield "session", cut(f"· session: model {obj.get('model', '?')}, permission mode "
                                 f"{obj.get('permissionMode', '?')}, tools: {shown or 'none'}"
                                 + (f" (claude {obj['claude_code_version']})" if obj.get("claude_code_version")
                                    else ""), WIDTH * 2)
        elif subtype == "api_retry":
            status = obj.get("error_status")
            delay = obj.get("retry_delay_ms")
            wait = f" in {delay / 1000:.1f} s" if _number(delay) else ""
            yield "retry", cut(f"↻ API retry {obj.get('attempt', '?')}/{obj.get('max_retries', '?')}{wait}: "
                               f"{obj.get('error') or 'error'}" + (f" (HTTP {status})" if status else ""))
        elif subtype == "permission_denied":
            use_id = obj.get("tool_use_id")
            if isinstance(use_id, str):
                _remember(self._denied, use_id, None)
            why = obj.get("message") or obj.get("decision_reason_code") or "no reason given"
            yield "denied", cut(f"✗ {obj.get('tool_name') or self._tools.get(str(use_id), '?')} denied: "
                                f"{first_line(str(why))[0]}")

    def _assistant(self, obj: dict[str, Any]) -> Iterator[tuple[str, str]]:
        message = obj.get("message") if isinstance(obj.get("message"), dict) else {}
        content = message.get("content")
        texts = []
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
                yield from (("text", line) for line in text_lines(block["text"]))
            elif kind == "tool_use":
                name = str(block.get("name") or "?")
                if isinstance(block.get("id"), str):
                    _remember(self._tools, block["id"], name)
                yield "call", cut(f"→ {name}: {call_input(block.get('input'))}")
            elif kind == "thinking" and isinstance(block.get("thinking"), str) and block["thinking"].strip():
                yield "thinking", cut(f"(thinking) {first_line(block['thinking'])[0]}")
        if texts:
            self._last_text = hash("".join(texts))

    def _user(self, obj: dict[str, Any]) -> Iterator[tuple[str, str]]:
        message = obj.get("message") if isinstance(obj.get("message"), dict) else {}
        content = message.get("content")
        if isinstance(content, str):  # a note the CLI adds ("[Request interrupted by user]")
            yield "note", cut(first_line(content)[0])
            return
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, dict) or block.get("type") != "tool_result":
                continue
            use_id = str(block.get("tool_use_id"))
            failed = block.get("is_error") is True
            if failed and use_id in self._denied:
                continue  # its denial line said it
            said, more = first_line(_ERROR_TAG.sub("", result_text(block.get("content"))))
            extra = f" (+{more} lines)" if more else ""
            name = self._tools.get(use_id, "tool")
            if failed:
                yield "error", cut(f"← {name} error: {said}") + extra
            else:
                yield "ok", cut(f"← {name} ok: {said}" if said else f"← {name} ok") + extra

    def _rate_limit(self, obj: dict[str, Any]) -> Iterator[tuple[str, str]]:
        info = obj.get("rate_limit_info") if isinstance(obj.get("rate_limit_info"), dict) else {}
        status = info.get("status")
        if status in (None, "allowed"):
            return
        resets = info.get("resetsAt")
        when = f", resets {local(datetime.fromtimestamp(resets, timezone.utc))}" if _number(resets) and \
            0 < resets < 1e11 else ""
        yield "limit", cut(f"! usage limit {status} ({info.get('rateLimitType') or '?'}){when}")

    def _result(self, obj: dict[str, Any]) -> Iterator[tuple[str, str]]:
        self.result_seen = True
        usage = usage_from_result(obj)
        subtype = str(obj.get("subtype") or "?")
        failed = obj.get("is_error") is True or subtype != "success"
        status = obj.get("api_error_status")
        head = ("error" if subtype == "success" else subtype) if failed else "success"
        turns = obj.get("num_turns")
        figures = [f"{turns} turn{'s' if turns != 1 else ''}" if _count(turns) else "turns unknown",
                   f"{usage.total_tokens:,} tokens" if usage.total_tokens is not None else "tokens unknown",
                   f"${usage.cost_usd:.4f}" if usage.cost_usd is not None else "cost unknown"]
        if _number(obj.get("duration_ms")):
            figures.append(f"{obj['duration_ms'] / 1000:.1f} s")
        said = obj.get("result") if isinstance(obj.get("result"), str) else None
        if said is None and isinstance(obj.get("errors"), list):
            said = "; ".join(str(e) for e in obj["errors"])
        repeat = said is not None and not failed and hash(said) == self._last_text
        tail = f": {first_line(said)[0]}" if said and not repeat else ""
        yield ("failed" if failed else "result"), cut(f"= result {head}" + (f" (HTTP {status})" if status else "")
                                                      + ", " + ", ".join(figures) + tail, WIDTH * 2)
        denials = obj.get("permission_denials")
        if isinstance(denials, list) and denials:
            named = [f"{d.get('tool_name') or '?'}: {call_input(d.get('tool_input'))}" if isinstance(d, dict) else "?"
                     for d in denials[:DENIALS_SHOWN]]
            more = f"; and {len(denials) - DENIALS_SHOWN} more" if len(denials) > DENIALS_SHOWN else ""
            yield "denials", cut(f"✗ {len(denials)} call{'s' if len(denials) != 1 else ''} denied: "
                                 + "; ".join(named) + more, WIDTH * 3)


_HANDLERS: dict[str, Callable[[Transcript, dict[str, Any]], Iterable[tuple[str, str]]]] = {
    "system": Transcript._system, "assistant": Transcript._assistant, "user": Transcript._user,
    "rate_limit_event": Transcript._rate_limit, "result": Transcript._result,
}


@dataclass(frozen=True)
class Line:
    """One line of a file, without its newline: `data` (its first MAX_LINE bytes at most) and its whole `size`."""

    data: bytes
    size: int


class LineReader:
    """Bytes fed in chunks -> whole lines, each kept to its first `cap` bytes (the rest counted, not held)."""

    def __init__(self, cap: int = MAX_LINE) -> None:
        self.cap = cap
        self._buf = bytearray()
        self._dropped = 0
        self.lines = 0  # whole lines given so far

    def feed(self, data: bytes) -> list[Line]:
        """The lines `data` completes."""
        out = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._keep(data[start:end])
            out.append(self._take())
            start = end + 1
        self._keep(data[start:])
        return out

    def close(self) -> list[Line]:
        """The last line, if it has no newline."""
        return [self._take()] if self._buf or self._dropped else []

    def reset(self) -> None:
        """Forget the line in progress (the file was replaced: it is read again from its start)."""
        self._buf.clear()
        self._dropped = 0

    def _keep(self, piece: bytes) -> None:
        room = max(0, self.cap - len(self._buf))
        self._buf += piece[:room]
        self._dropped += max(0, len(piece) - room)

    def _take(self) -> Line:
        line = Line(bytes(self._buf), len(self._buf) + self._dropped)
        self.lines += 1
        self.reset()
        return line


def text_lines(text: str) -> list[str]:
    """A text block's lines, each cut to TEXT_WIDTH, at most TEXT_LINES of them (then how many more)."""
    parts = text.strip("\n").split("\n", TEXT_LINES)
    if len(parts) > TEXT_LINES:
        rest = parts.pop()
        parts.append(f"… ({rest.count(chr(10)) + 1:,} more lines)")
    return [cut(part, TEXT_WIDTH) for part in parts]


def first_line(text: str) -> tuple[str, int]:
    """The first non-blank line of `text` (cut to TEXT_WIDTH) and how many lines follow it."""
    stripped = text.strip()
    end = stripped.find("\n")
    head = stripped if end < 0 else stripped[:end]
    more = 0 if end < 0 else stripped.count("\n", end)
    return cut(head.strip(), TEXT_WIDTH), more


def result_text(content: Any) -> str:
    """A tool result's content as text: a string, or its text blocks (an image is named, not shown)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return "" if content is None else str(content)[:TEXT_WIDTH]
    parts = []
    for block in content[:100]:
        if isinstance(block, dict) and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif isinstance(block, dict):
            parts.append(f"[{block.get('type') or 'block'}]")
    return "\n".join(parts)


def call_input(value: Any) -> str:
    """A tool call's input, short: its most telling field (`INPUT_KEYS`), else its compact JSON."""
    if isinstance(value, dict):
        for key in INPUT_KEYS:
            if isinstance(value.get(key), str) and value[key]:
                return cut(value[key], WIDTH)
        try:
            return cut(json.dumps(value, ensure_ascii=False, separators=(",", ":"))[:WIDTH * 2], WIDTH)
        except (TypeError, ValueError, RecursionError):
            return "?"
    return cut(str(value)[:WIDTH * 2], WIDTH) if value is not None else ""


def cut(text: str, width: int = WIDTH) -> str:
    """`text` of at most `width` characters (a longer one ends with "…")."""
    return text if len(text) <= width else text[:width - 1] + "…"


def render(lines: Iterable[bytes], *, settled: bool = True, mask: Callable[[str], str] | None = None) -> list[Entry]:
    """Every display line of `lines` (each without its newline), then what `Transcript.end` says."""
    transcript = Transcript(mask)
    out = [entry for line in lines for entry in transcript.feed(line)]
    return out + transcript.end(settled=settled)


def _remember(seen: dict[str, Any], key: str, value: Any) -> None:
    seen[key] = value
    if len(seen) > REMEMBERED:
        del seen[next(iter(seen))]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) < 1e15


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
