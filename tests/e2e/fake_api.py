"""A loopback fake of the Anthropic Messages API for driving the real ``claude`` CLI.

Stdlib only. A ``ThreadingHTTPServer`` runs in a daemon thread on 127.0.0.1 (port 0 by default,
so the OS picks a free one). Point the CLI at it with ``ANTHROPIC_BASE_URL=<api.url>``.

It answers:

* ``HEAD /`` with 200 (CLI 2.1.197 sent it first, as a connectivity probe; 2.1.337 does not);
* ``POST /v1/messages`` (the CLI adds ``?beta=true``) in streaming form (SSE, when the body has
  ``"stream": true``: message_start, ping, content_block_start/delta/stop, message_delta,
  message_stop) or as one JSON message, with usage input_tokens=1234 / output_tokens=56 (CLI 2.1.337
  prices that at $0.006056 on its default model, claude-opus-5-5: $4 / $20 per million tokens);
* anything else with a 404 ``{"type":"error","error":{...}}`` body.

Modes (see ``MODES``): ``ok``, ``slow`` (ok after ``slow_seconds``), ``401``, ``403``, ``400``,
``404``, ``413``, ``429``, ``500``, ``529`` (real error bodies), ``hang`` (read the request,
never answer), ``stall`` (200 + message_start, then silence), ``cut`` (200, message_start and a
text delta, then after ``cut_delay`` a TCP reset), ``tool_sleep`` (reply with a Bash ``tool_use`` running
``tool_command``, default ``true && sleep 300``; once the conversation holds a tool_result, reply
with text), and ``calls:NAME`` (scripted tool calls, below). ``stall`` and ``cut`` only affect
streaming requests: the CLI's non-streaming fallback gets a normal answer, as it did in the
measurements (/work/shared/claude-cli-facts.md). ``hang``/``stall``/``slow`` wait on the server's
stop event, so ``stop()`` never blocks on them, and they give up when the client disconnects.

What CLI 2.1.337 does with these that 2.1.197 did not: a ``400`` (any message but "prompt is too
long") costs 6 POSTs whatever ``CLAUDE_CODE_MAX_RETRIES`` is, as the CLI re-sends the request with
betas and features dropped; ``cut`` is metered twice (the cut stream's message_start usage plus the
fallback's: 2468 input tokens in ``modelUsage`` and in the top-level ``usage``).

Mode of one POST, first match wins:

1. a directive ``[[fake:MODE]]`` (or ``[[fake:calls:NAME]]``) in the user text of the request (the
   last directive in the latest user message that has one; tool_result contents are ignored), so a
   prompt file picks its own behaviour and one daemon can run cadences that behave differently;
2. the credential: an ``x-api-key`` (or ``Authorization: Bearer`` token) starting with ``bad-``
   or ``invalid`` gets ``401``;
3. the next entry of ``api.script([...])``, consumed one per POST that reaches this step;
4. ``api.mode``.

Scripted tool calls: ``api.register_calls("peek", [{"name": "Read", "input": {"file_path": "/x"}},
{"name": "Bash", "input": {"command": "cat /x"}}])``, then ``[[fake:calls:peek]]`` in a prompt (or
``api.tool_calls([...])``, which makes them the default mode). The first POST of a conversation
answers with ONE assistant message holding every scripted ``tool_use`` (distinct ids); once the
conversation holds tool_results, the final text. ``api.tool_results()`` lists what the CLI sent back,
once per tool_use id: ``{tool_use_id, tool_name, input, is_error, content}`` (content flattened to
text). ``api.requests_containing(needle)`` finds a string in any request (raw body, decoded JSON,
path, query, headers): a canary read by a tool must not show up there. Measured with CLI 2.1.337:
a denied call comes back as an ``is_error`` tool_result (and in the result's ``permission_denials``);
a tool missing from the session's set comes back ``is_error`` ("No such tool available: Grep"),
not as a denial. By default 2.1.337 offers Bash, Read, Edit, Write… but not Grep/Glob (``--tools``
or ``--disallowedTools Bash`` bring them), and defers some tools behind ToolSearch.

Requests of CLI 2.1.337 also carry a ``role: "system"`` message after the first user message;
directives there are ignored like every non-user message.

Bash tool mode (measured with CLI 2.1.197 as root, under ``--print``; rechecked with 2.1.337):

* CLI 2.1.337 refuses a bare ``sleep 300`` (tool_result "Blocked: standalone sleep 300. …") and
  ``sleep 300; true`` ("Blocked: sleep 300 followed by: true"), hence ``true && sleep 300``: it
  still runs ``["sleep", "300"]`` as a child of the tool's bash.
* That command needs **no flag**: the CLI classes it as read-only and runs it under the default
  permission mode (and under ``--permission-mode dontAsk``).
* Pass ``--allowedTools Bash`` anyway (test_fake_api_cli.py does) so a changed ``tool_command``
  that writes still runs: without it, ``touch`` outside the working directory comes back as an
  ``is_error`` tool_result ("was blocked"), and ``dontAsk`` denies it outright.
* ``--dangerously-skip-permissions`` / ``--permission-mode bypassPermissions`` also work, but as
  root the CLI exits 1 ("cannot be used with root/sudo privileges for security reasons") unless
  ``IS_SANDBOX=1`` is in its environment.
* The tool runs ``/bin/bash -c '... eval <cmd>'`` in a new session, and files its scratch data under
  ``$TMPDIR/claude-<uid>/`` (``/tmp`` when TMPDIR is unset).

Standalone (used by ``make demo``)::

    python tests/e2e/fake_api.py [--port N] [--mode ok] [--port-file PATH] [--quiet]

prints ``FAKE_API_URL=http://127.0.0.1:PORT`` on one line, writes the port to ``--port-file``,
logs one line per request to stderr (never a credential) and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import re
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable
from urllib.parse import urlsplit

FAKE_KEY = "sk-ant-test-FAKEKEY-0123456789"
"""A recognisable fake API key: tests assert it never leaks into output."""

INPUT_TOKENS = 1234
OUTPUT_TOKENS = 56
REPLY_TEXT = "hi there"
EXPECTED_COST_USD = 0.006056
"""What CLI 2.1.337 reports as total_cost_usd for one ok reply on its default model (claude-opus-5-5,
$4 / $20 per million input / output tokens). CLI 2.1.197 reported $0.00757 (opus at $5 / $25)."""

ERRORS: dict[str, tuple[int, str, str]] = {
    "400": (400, "invalid_request_error", "messages: field required (fake)"),
    "401": (401, "authentication_error", "invalid x-api-key"),
    "403": (403, "permission_error", "Your API key does not have permission to use the specified resource. (fake)"),
    "404": (404, "not_found_error", "model: not found (fake)"),
    "413": (413, "request_too_large", "Request exceeds the maximum allowed number of bytes. (fake)"),
    "429": (429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit (fake)"),
    "500": (500, "api_error", "Internal server error (fake)"),
    "529": (529, "overloaded_error", "Overloaded (fake)"),
}
MODES: frozenset[str] = frozenset(ERRORS) | {"ok", "slow", "hang", "stall", "cut", "tool_sleep"}

DIRECTIVE_RE = re.compile(r"\[\[fake:([A-Za-z0-9_]+(?::[A-Za-z0-9_.-]+)?)\]\]")
CALLS_PREFIX = "calls:"
"""``calls:NAME`` answers with the tool calls registered as NAME (``FakeMessagesAPI.register_calls``)."""
CALLS_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
MESSAGES_PATH = "/v1/messages"
_POLL_S = 0.1


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is a known mode or ``calls:NAME``, else raise ValueError.

    Whether NAME is registered is checked when a request uses it (it may be registered later).
    """
    if mode not in MODES and not _calls_name(mode):
        raise ValueError(f"unknown fake API mode {mode!r}; known: {sorted(MODES)} and calls:NAME")
    return mode


def _calls_name(mode: str) -> str | None:
    """NAME of a ``calls:NAME`` mode, else None."""
    if mode.startswith(CALLS_PREFIX) and CALLS_NAME_RE.fullmatch(mode[len(CALLS_PREFIX):]):
        return mode[len(CALLS_PREFIX):]
    return None


def error_body(err_type: str, message: str) -> dict[str, Any]:
    """The Messages API error envelope."""
    return {"type": "error", "error": {"type": err_type, "message": message}}


def _user_texts(message: dict[str, Any]) -> Iterable[str]:
    content = message.get("content")
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
                yield block["text"]


def find_directive(body: Any) -> str | None:
    """The ``[[fake:MODE]]`` directive of a request body: the last one in the latest user message with one."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return None
    for message in reversed(body["messages"]):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        found = [m for text in _user_texts(message) for m in DIRECTIVE_RE.findall(text)]
        if found:
            return found[-1]
    return None


def flatten_content(content: Any) -> str:
    """A tool_result's ``content`` as text: a string as is, text blocks joined by newlines
    (other blocks as ``[<type>]``)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return "" if content is None else json.dumps(content)
    parts = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict):
            parts.append(f"[{block.get('type')}]")
        else:
            parts.append(str(block))
    return "\n".join(parts)


def _blocks(body: Any, role: str, block_type: str) -> Iterable[dict[str, Any]]:
    """The content blocks of ``block_type`` in the ``role`` messages of a request body, in order."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return
    for m in messages:
        if isinstance(m, dict) and m.get("role") == role and isinstance(m.get("content"), list):
            for b in m["content"]:
                if isinstance(b, dict) and b.get("type") == block_type:
                    yield b


def _has_tool_result(body: Any) -> bool:
    """True once any message carries a tool_result (the tool already ran: time for the final text)."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return False
    return any(
        isinstance(m, dict)
        and isinstance(m.get("content"), list)
        and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in m["content"])
        for m in messages
    )


def _credential(headers: dict[str, str]) -> str:
    key = headers.get("x-api-key", "")
    if key:
        return key
    auth = headers.get("authorization", "")
    return auth[7:] if auth.lower().startswith("bearer ") else ""


@dataclass
class RecordedRequest:
    """One request the fake received (credentials included: tests may assert on them)."""

    method: str
    path: str  # without the query string
    query: str
    headers: dict[str, str]  # lower-case keys
    body_size: int
    json: Any  # parsed JSON body, or None
    time: float  # time.time() when the request was read
    body: bytes = b""  # the raw body, as received (after de-chunking)
    mode: str | None = None  # the mode that answered a POST /v1/messages
    stream: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: "FakeMessagesAPI"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Record handler exceptions (tests assert there are none) instead of printing them."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, socket.timeout)):
            return  # the client hung up or went silent: normal when a test kills the CLI
        self.api.server_errors.append(repr(exc))
        print(f"fake_api: handler error from {client_address}: {exc!r}", file=sys.stderr, flush=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeMessagesAPI/1.0"
    sys_version = ""
    timeout = 30  # bounds every socket read/write of a connection
    server: _Server

    # ---- plumbing -------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the API logs its own one-liners (without credentials) when verbose

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _parse(self, body: bytes) -> RecordedRequest:
        parts = urlsplit(self.path)
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        rec = RecordedRequest(
            method=self.command,
            path=parts.path,
            query=parts.query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body_size=len(body),
            json=parsed,
            time=time.time(),
            body=body,
        )
        return rec

    def _record(self, body: bytes) -> RecordedRequest:
        rec = self._parse(body)
        self.server.api._add(rec)
        return rec

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", self.server.api._request_id())
        for k, v in {**self.server.api.extra_headers, **(headers or {})}.items():
            self.send_header(k, v)
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.close_connection = True

    def _start_sse(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("request-id", self.server.api._request_id())
        for k, v in self.server.api.extra_headers.items():
            self.send_header(k, v)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _sse(self, event: dict[str, Any]) -> None:
        data = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end_sse(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _wait(self, seconds: float | None = None) -> None:
        """Sleep until stop(), the client hangs up, or ``seconds`` pass (None: no limit)."""
        deadline = None if seconds is None else time.monotonic() + seconds
        stop = self.server.api._stop_event
        while not stop.wait(_POLL_S):
            if deadline is not None and time.monotonic() >= deadline:
                return
            if self._peer_closed():
                return

    def _peer_closed(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _reset_connection(self) -> None:
        """Abort with a TCP RST, as a dropped connection looks to the client."""
        try:
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # drops the makefile reference, so close() below is the real close
            self.connection.close()
        except OSError:
            pass
        # The stdlib still flushes and closes these after do_POST returns: give it harmless ones.
        self.rfile, self.wfile = io.BytesIO(), io.BytesIO()
        self.close_connection = True

    # ---- verbs ----------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._record(self._read_body())
        if urlsplit(self.path).path == "/":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
        else:
            self._not_found()

    def do_GET(self) -> None:
        self._record(self._read_body())
        self._not_found()

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def do_POST(self) -> None:
        rec = self._parse(self._read_body())
        api = self.server.api
        if rec.path != MESSAGES_PATH:
            api._add(rec)
            self._not_found()
            return
        body = rec.json if isinstance(rec.json, dict) else {}
        rec.stream = body.get("stream") is True
        rec.mode = mode = api._choose_mode(rec)
        api._collect_tool_results(body)
        api._add(rec)  # only now: wait_for_posts() callers see a complete record
        api._log(f"POST {rec.path} stream={rec.stream} size={rec.body_size} mode={mode}")
        calls: list[dict[str, Any]] | None = None
        if _calls_name(mode) is not None:
            calls = api._registered(_calls_name(mode))
            if calls is None:
                self._send_json(400, error_body("invalid_request_error", f"fake: no calls registered as {mode!r}"))
                return
        elif mode not in MODES:
            self._send_json(400, error_body("invalid_request_error", f"fake: unknown mode {mode!r}"))
            return
        if mode in ERRORS:
            status, err_type, message = ERRORS[mode]
            headers = {}
            if status == 429 and api.retry_after is not None:
                headers["retry-after"] = str(api.retry_after)
            if api.should_retry is not None:
                headers["x-should-retry"] = "true" if api.should_retry else "false"
            self._send_json(status, error_body(err_type, message), headers)
            return
        if mode == "hang":
            self._wait()
            self.close_connection = True
            return
        if mode == "slow":
            self._wait(api.slow_seconds)
            if api._stop_event.is_set() or self._peer_closed():
                self.close_connection = True
                return
        if _has_tool_result(body):
            content = api._content(False)  # the tools ran: the final text
        elif calls is not None:
            content = api._tool_uses(calls)
        else:
            content = api._content(mode == "tool_sleep")
        model = str(body.get("model") or "claude-fake")
        if not rec.stream:
            self._send_json(200, api._message(model, content, final=True))
            return
        self._stream(mode, model, content)

    def _stream(self, mode: str, model: str, content: list[dict[str, Any]]) -> None:
        api = self.server.api
        self._start_sse()
        self._sse({"type": "message_start", "message": api._message(model, [], final=False)})
        if mode == "stall":
            self._wait()
            return
        self._sse({"type": "ping"})
        for index, block in enumerate(content):
            if block["type"] == "text":
                self._sse({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})
                self._sse({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": block["text"]}})
                if mode == "cut":
                    # Let the client read what was sent first: an RST that arrives before the
                    # headers are read makes the CLI report a connection error (ECONNRESET,
                    # api_error_status null) instead of falling back to a non-streaming request.
                    self._wait(api.cut_delay)
                    self._reset_connection()
                    return
            else:
                start = {**block, "input": {}}
                self._sse({"type": "content_block_start", "index": index, "content_block": start})
                partial = json.dumps(block["input"])
                self._sse({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": partial}})
            self._sse({"type": "content_block_stop", "index": index})
        stop_reason = "tool_use" if content and content[-1]["type"] == "tool_use" else "end_turn"
        self._sse({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": OUTPUT_TOKENS},
        })
        self._sse({"type": "message_stop"})
        self._end_sse()

    def _not_found(self) -> None:
        self._send_json(404, error_body("not_found_error", f"Not found: {urlsplit(self.path).path}"))


class FakeMessagesAPI:
    """A fake Messages API on 127.0.0.1, in a daemon thread; see the module docstring."""

    def __init__(self, mode: str = "ok", port: int = 0, *, verbose: bool = False) -> None:
        self._mode = check_mode(mode)
        self._port = port
        self.verbose = verbose
        self.reply_text = REPLY_TEXT
        # Not a bare `sleep 300`: CLI 2.1.337 refuses "standalone sleep" ("Blocked: standalone sleep 300. …").
        self.tool_command = "true && sleep 300"
        self.slow_seconds = 3.0
        self.cut_delay = 0.5  # seconds between the last streamed bytes and the RST in ``cut``
        self.retry_after: int | None = None  # sent with 429 when set
        self.should_retry: bool | None = None  # sent as x-should-retry with errors when set
        # Sent with every response, e.g. the subscription's `anthropic-ratelimit-unified-*` headers.
        self.extra_headers: dict[str, str] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []
        self.server_errors: list[str] = []  # unexpected handler exceptions (repr), oldest first
        self._script: deque[str] = deque()
        self._calls: dict[str, list[dict[str, Any]]] = {}  # register_calls()
        self._tool_names: dict[str, str] = {}  # tool_use id -> tool name (ids the fake issued or saw)
        self._tool_inputs: dict[str, Any] = {}
        self._tool_results: dict[str, dict[str, Any]] = {}  # tool_use id -> first tool_result seen
        self._ids = itertools.count(1)
        self._stop_event = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> "FakeMessagesAPI":
        """Bind and start serving in a daemon thread; returns self."""
        if self._server is not None:
            return self
        self._stop_event.clear()
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.api = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-messages-api", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; wakes hung/stalled handlers so this returns promptly."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stop_event.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeMessagesAPI":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (after start())."""
        if self._server is None:
            raise RuntimeError("FakeMessagesAPI is not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """Base URL for ANTHROPIC_BASE_URL, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    # ---- behaviour ------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """The default mode (step 4 of the selection); settable at runtime."""
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        self._mode = check_mode(value)

    def script(self, modes: Iterable[str]) -> None:
        """Queue modes consumed one per POST (after directive and credential checks)."""
        modes = [check_mode(m) for m in modes]
        with self._lock:
            self._script.extend(modes)

    def register_calls(self, name: str, calls: Iterable[dict[str, Any]]) -> None:
        """Register tool calls for the directive ``[[fake:calls:NAME]]`` (or the mode ``calls:NAME``).

        Each call is ``{"name": "Read", "input": {"file_path": "/x"}}`` (``input`` defaults to {};
        an ``id`` may be given, else the fake makes a unique one per request; a fixed id repeats in every
        conversation, and ``tool_results()`` keeps only its first result). A conversation's
        first POST (no tool_result yet) is answered with ONE assistant message holding all these
        ``tool_use`` blocks; once the conversation holds tool_results, with the final text
        (``reply_text``). The CLI's tool_results are recorded: see ``tool_results()``.
        """
        if not CALLS_NAME_RE.fullmatch(name):
            raise ValueError(f"calls name {name!r} must match {CALLS_NAME_RE.pattern}")
        specs = []
        for call in calls:
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                raise ValueError(f"a tool call needs a string 'name': {call!r}")
            extra = set(call) - {"name", "input", "id"}
            if extra:
                raise ValueError(f"unknown keys {sorted(extra)} in tool call {call!r}")
            tool_input = call.get("input", {})
            if not isinstance(tool_input, dict):
                raise ValueError(f"a tool call's 'input' must be an object: {call!r}")
            spec = {"name": call["name"], "input": tool_input}
            if "id" in call:
                spec["id"] = str(call["id"])
            specs.append(spec)
        if not specs:
            raise ValueError("register_calls needs at least one tool call")
        with self._lock:
            self._calls[name] = specs

    def tool_calls(self, calls: Iterable[dict[str, Any]], name: str = "default") -> str:
        """Register ``calls`` as ``name`` and make ``calls:name`` the default mode; returns the mode."""
        self.register_calls(name, calls)
        self.mode = CALLS_PREFIX + name
        return self.mode

    def _registered(self, name: str | None) -> list[dict[str, Any]] | None:
        with self._lock:
            return self._calls.get(name or "")

    def _choose_mode(self, rec: RecordedRequest) -> str:
        directive = find_directive(rec.json)
        if directive is not None:
            return directive
        cred = _credential(rec.headers)
        if cred.startswith(("bad-", "invalid")):
            return "401"
        with self._lock:
            if self._script:
                return self._script.popleft()
        return self._mode

    # ---- recorded traffic -----------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def posts(self) -> list[RecordedRequest]:
        """The POSTs to /v1/messages so far."""
        return [r for r in self.requests if r.method == "POST" and r.path == MESSAGES_PATH]

    def post_count(self) -> int:
        """How many POSTs to /v1/messages arrived."""
        return len(self.posts())

    def wait_for_posts(self, n: int = 1, timeout: float = 10.0) -> bool:
        """Block until at least ``n`` POSTs to /v1/messages arrived; False on timeout."""
        def enough() -> bool:
            return sum(1 for r in self._requests if r.method == "POST" and r.path == MESSAGES_PATH) >= n

        with self._cond:
            return self._cond.wait_for(enough, timeout=timeout)

    def tool_results(self) -> list[dict[str, Any]]:
        """Every tool_result the CLI sent back so far, once each, in the order first seen.

        Each is ``{"tool_use_id", "tool_name", "input", "is_error", "content"}``: ``tool_name`` and
        ``input`` come from the tool_use the id answers (None when unknown), ``is_error`` is a bool
        and ``content`` the result's text (text blocks joined by newlines).
        """
        with self._lock:
            return [
                {**r, "tool_name": self._tool_names.get(r["tool_use_id"]),
                 "input": self._tool_inputs.get(r["tool_use_id"])}
                for r in self._tool_results.values()
            ]

    def requests_containing(self, needle: str | bytes) -> list[RecordedRequest]:
        """The requests (any method and path) that carry ``needle`` anywhere: in the raw body, in the
        body's JSON decoded (so a JSON-escaped occurrence counts), in the path, query or a header value."""
        raw = needle.encode() if isinstance(needle, str) else needle
        text = raw.decode(errors="replace")
        found = []
        for rec in self.requests:
            if raw in rec.body or text in rec.path or text in rec.query or any(text in v for v in rec.headers.values()):
                found.append(rec)
            elif rec.json is not None and text in json.dumps(rec.json, ensure_ascii=False):
                found.append(rec)
        return found

    def clear(self) -> None:
        """Forget recorded requests, tool results and any queued script (registered calls stay)."""
        with self._lock:
            self._requests.clear()
            self._script.clear()
            self._tool_results.clear()

    def _add(self, rec: RecordedRequest) -> None:
        with self._cond:
            self._requests.append(rec)
            self._cond.notify_all()
        if rec.method != "POST":
            self._log(f"{rec.method} {rec.path}")

    def _log(self, line: str) -> None:
        if self.verbose:
            print(f"fake_api: {line}", file=sys.stderr, flush=True)

    def _collect_tool_results(self, body: Any) -> None:
        """Note the tool_use blocks and tool_results of a request body (each request repeats the
        conversation: keep the first sighting of each id)."""
        with self._lock:
            for block in _blocks(body, "assistant", "tool_use"):
                tid = block.get("id")
                if isinstance(tid, str) and tid not in self._tool_names:
                    self._tool_names[tid] = str(block.get("name"))
                    self._tool_inputs[tid] = block.get("input")
            for block in _blocks(body, "user", "tool_result"):
                tid = block.get("tool_use_id")
                if isinstance(tid, str) and tid not in self._tool_results:
                    self._tool_results[tid] = {
                        "tool_use_id": tid,
                        "is_error": block.get("is_error") is True,
                        "content": flatten_content(block.get("content")),
                    }

    # ---- response bodies ------------------------------------------------------------------
    def _tool_uses(self, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        content = []
        for call in calls:
            tid = call.get("id") or f"toolu_fake{next(self._ids):06d}"
            content.append({"type": "tool_use", "id": tid, "name": call["name"], "input": call["input"]})
            with self._lock:
                self._tool_names[tid] = call["name"]
                self._tool_inputs[tid] = call["input"]
        return content

    def _request_id(self) -> str:
        return f"req_fake{next(self._ids):06d}"

    def _content(self, tool: bool) -> list[dict[str, Any]]:
        if tool:
            return [{
                "type": "tool_use",
                "id": f"toolu_fake{next(self._ids):06d}",
                "name": "Bash",
                "input": {"command": self.tool_command, "description": "Run a long command (fake)"},
            }]
        return [{"type": "text", "text": self.reply_text}]

    def _message(self, model: str, content: list[dict[str, Any]], *, final: bool) -> dict[str, Any]:
        stop_reason = None
        if final:
            stop_reason = "tool_use" if content and content[-1]["type"] == "tool_use" else "end_turn"
        return {
            "id": f"msg_fake{next(self._ids):06d}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": INPUT_TOKENS,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": OUTPUT_TOKENS if final else 1,
            },
        }


def main(argv: list[str] | None = None) -> int:
    """Serve the fake until SIGTERM/SIGINT (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Loopback fake of the Anthropic Messages API.")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--mode", default="ok", choices=sorted(MODES), help="default mode")
    parser.add_argument("--port-file", help="write the bound port to this file")
    parser.add_argument("--quiet", action="store_true", help="do not log requests to stderr")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()  # only set a flag; the main thread shuts down

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    api = FakeMessagesAPI(args.mode, args.port, verbose=not args.quiet).start()
    try:
        if args.port_file:
            tmp = f"{args.port_file}.tmp{os.getpid()}"
            with open(tmp, "w") as fh:
                fh.write(f"{api.port}\n")
            os.replace(tmp, args.port_file)
        print(f"FAKE_API_URL={api.url}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
