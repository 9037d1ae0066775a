"""Running the server: the listening socket, uvicorn's settings, time limits on slow clients, and its log.

uvicorn serves the application over its pure-Python h11 protocol, extended here with a header deadline:
uvicorn itself only times out idle keep-alive connections, so a client that trickles its request *headers*
would hold a connection forever. With it, a connection gets MAESTRO_SERVE_TIMEOUT_SECONDS for each
request's headers, and then the same again for its body (serve/body.py). Beyond MAX_CONNECTIONS a request is
answered 503 "overloaded" (`overload_guard`), except `/healthz`, for which uvicorn keeps HEALTH_RESERVE more: a
monitor must not read the server's own overload as the daemon being unhealthy.

The log is one line per request on stderr (method, path without its query, status, time, client), plus
uvicorn's warnings, every line masked by the same `Redactor` as the daemon's files. Headers and bodies are
never logged.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from maestro_py.bus.logview import escape
from maestro_py.config import Settings
from maestro_py.errors import MaestroError
from maestro_py.paths import Layout
from maestro_py.redact import Redactor
from maestro_py.serve.app import build
from maestro_py.serve.options import ServeOptions, check_bind

MAX_CONNECTIONS = 1000
HEALTH_RESERVE = 64  # connections beyond MAX_CONNECTIONS that only /healthz may use
RETRY_AFTER_OVERLOAD = 5
KEEP_ALIVE_SECONDS = 5
GRACEFUL_SECONDS = 10
MAX_HEADER_BYTES = 16 * 1024
LOGGER = "maestro.serve"


def header_deadline_protocol(timeout: float, load: dict[str, Any] | None = None) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose next request's headers take longer than `timeout`
    (`load["connections"]`: the server's open connections, for `overload_guard`)."""

    class HeaderDeadline(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if load is not None:
                load["connections"] = self.server_state.connections
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request on this connection gets its own deadline

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a pipelined request is being answered already: its body has the app's own deadline
            waiting_for = self.cycle  # a new request replaces the cycle once its headers are complete
            self._deadline = self.loop.call_later(timeout, self._expire, waiting_for)

        def _expire(self, waiting_for: Any) -> None:
            if self.cycle is waiting_for and self.transport is not None and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline


def overload_guard(app: Any, load: dict[str, Any], limit: int = MAX_CONNECTIONS) -> Any:
    """503 "overloaded" (with Retry-After) for every request but `/healthz` while more than `limit` connections are
    open: the server's overload, said as such, and never in the health check's answer."""
    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") != "/healthz" and len(load.get("connections", ())) > limit:
            body = b'{"error": "maestro serve is overloaded: too many open connections; retry shortly"}'
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"retry-after", str(RETRY_AFTER_OVERLOAD).encode()),
                (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)
    return guarded


class Redacting(logging.Filter):
    """Masks secrets in every record's final text (its arguments included)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor.text(record.getMessage())
        record.args = None
        return True


def access_log(app: Any, logger: logging.Logger) -> Any:
    """ASGI middleware: one line per HTTP request once its answer has started."""
    async def logged(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        started = time.monotonic()
        status: list[int] = []

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await app(scope, receive, sending)
        finally:
            client = scope.get("client") or ("-", 0)
            logger.info("%s %s %s %s %.1fms", client[0], scope["method"], escape(scope["path"])[:300],
                        status[0] if status else "-", (time.monotonic() - started) * 1000)
    return logged


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one); a one-line MaestroError if it cannot be had."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(1024)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise MaestroError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def configure_logging(redactor: Redactor) -> logging.Logger:
    """Everything logged goes to stderr, one line each, masked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s maestro serve: %(message)s"))
    handler.addFilter(Redacting(redactor))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.INFO)
    return logger


def run(layout: Layout, settings: Settings, env: dict[str, str], host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT (uvicorn's graceful shutdown). Raises ConfigError before listening."""
    options = ServeOptions.from_env(env, settings)
    check_bind(host, options)
    redactor = Redactor(env)
    logger = configure_logging(redactor)
    layout.ensure()
    app = build(layout, settings, options, env)
    sock = listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    load: dict[str, Any] = {}
    config = uvicorn.Config(
        access_log(overload_guard(app, load), logger), http=header_deadline_protocol(options.timeout, load),
        lifespan="off", log_config=None, access_log=False, server_header=False,
        limit_concurrency=MAX_CONNECTIONS + HEALTH_RESERVE,
        timeout_keep_alive=KEEP_ALIVE_SECONDS, timeout_graceful_shutdown=GRACEFUL_SECONDS,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )
    logger.warning("listening on http://%s:%d for %s (auth: %s; body limit %d bytes, %g s)", shown, bound_port,
                   layout.root, options.auth_words, options.max_body, options.timeout)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        app.state.keys.close()
