"""A loopback fake of the Anthropic Messages API for driving the real ``claude`` CLI.

Stdlib only. A ``ThreadingHTTPServer`` runs in a daemon thread on 127.0.0.1 (port 0 by default,
so the OS picks a free one). Point the CLI at it with ``ANTHROPIC_BASE_URL=<api.url>``.

It answers:

* ``HEAD /`` with 200 (the CLI sends it first, as a connectivity probe);
* ``POST /v1/messages`` (the CLI adds ``?beta=true``) in streaming form (SSE, when the body has
  ``"stream": true``: message_start, ping, content_block_start/delta/stop, message_delta,
  message_stop) or as one JSON message, with usage input_tokens=1234 / output_tokens=56 (the CLI
  prices that at $0.00757 for its default opus model);
* anything else with a 404 ``{"type":"error","error":{...}}`` body.

Modes (see ``MODES``): ``ok``, ``slow`` (ok after ``slow_seconds``), ``401``, ``403``, ``400``,
``404``, ``413``, ``429``, ``500``, ``529`` (real error bodies), ``hang`` (read the request,
never answer), ``stall`` (200 + message_start, then silence), ``cut`` (200, message_start and a
text delta, then after ``cut_delay`` a TCP reset), ``tool_sleep`` (reply with a Bash ``tool_use`` running
``tool_command``, default ``sleep 300``; once the conversation holds a tool_result, reply with
text). ``stall`` and ``cut`` only affect streaming requests: the CLI's non-streaming fallback
gets a normal answer, as it did in the measurements (/work/shared/claude-cli-facts.md).
``hang``/``stall``/``slow`` wait on the server's stop event, so ``stop()`` never blocks on them,
and they give up when the client disconnects.

Mode of one POST, first match wins:

1. a directive ``[[fake:MODE]]`` in the user text of the request (the last directive in the
   latest user message that has one; tool_result contents are ignored), so a prompt file picks
   its own behaviour and one daemon can run cadences that behave differently;
2. the credential: an ``x-api-key`` (or ``Authorization: Bearer`` token) starting with ``bad-``
   or ``invalid`` gets ``401``;
3. the next entry of ``api.script([...])``, consumed one per POST that reaches this step;
4. ``api.mode``.

Bash tool mode (measured with CLI 2.1.197 as root, under ``--print``):

* ``sleep 300`` needs **no flag**: the CLI classes it as read-only and runs it under the default
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
EXPECTED_COST_USD = 0.00757
"""What CLI 2.1.197 reports as total_cost_usd for one ok reply on its default (opus) model."""

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

DIRECTIVE_RE = re.compile(r"\[\[fake:([A-Za-z0-9_]+)\]\]")
MESSAGES_PATH = "/v1/messages"
_POLL_S = 0.1


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is a known mode, else raise ValueError."""
    if mode not in MODES:
        raise ValueError(f"unknown fake API mode {mode!r}; known: {sorted(MODES)}")
    return mode


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
        api._add(rec)  # only now: wait_for_posts() callers see a complete record
        api._log(f"POST {rec.path} stream={rec.stream} size={rec.body_size} mode={mode}")
        if mode not in MODES:
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
        tool = mode == "tool_sleep" and not _has_tool_result(body)
        content = api._content(tool)
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
        self.tool_command = "sleep 300"
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

    def clear(self) -> None:
        """Forget recorded requests and any queued script."""
        with self._lock:
            self._requests.clear()
            self._script.clear()

    def _add(self, rec: RecordedRequest) -> None:
        with self._cond:
            self._requests.append(rec)
            self._cond.notify_all()
        if rec.method != "POST":
            self._log(f"{rec.method} {rec.path}")

    def _log(self, line: str) -> None:
        if self.verbose:
            print(f"fake_api: {line}", file=sys.stderr, flush=True)

    # ---- response bodies ------------------------------------------------------------------
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
