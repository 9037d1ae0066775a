"""The routes: triggers, tick status, health, metrics, the status page and a run's page (a Starlette application).

Blocking work (file I/O under the bus's enqueue lock, SQLite, reading the ledger) runs in Starlette's worker
threads, so a slow disk delays one request, not the event loop that reads every other one.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from maestro_py.bus.tick import CADENCE_RE
from maestro_py.clock import SystemClock
from maestro_py.config import Settings
from maestro_py.ops import kill
from maestro_py.paths import Layout
from maestro_py.redact import Redactor
from maestro_py.serve import auth, page, runpage, snapshot, ticks, triggers
from maestro_py.serve.body import read_body
from maestro_py.serve.http import SECURITY_HEADERS, HttpError, error_answer, json_answer, text_answer
from maestro_py.serve.idempotency import KeyStore, check_key
from maestro_py.serve.options import Credentials, ServeOptions
from maestro_py.state import judge

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_METRICS_BYTES = 16 * 1024 * 1024


def metrics_file(layout: Layout) -> Path:
    """Where the daemon writes its Prometheus metrics (daemon/metrics.py): `state/metrics.prom`."""
    return layout.state_dir / "metrics.prom"


Handler = Callable[[Request], Awaitable[Response]]


def peer(request: Request) -> str | None:
    """The address the connection came from (None over a Unix socket or when unknown)."""
    return request.client.host if request.client is not None else None


def answering(handler: Handler) -> Handler:
    """Turn an HttpError raised by `handler` into its answer."""
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except HttpError as err:
            return error_answer(err)
    return wrapped


def build(layout: Layout, settings: Settings, options: ServeOptions, env: dict[str, str]) -> Starlette:
    """The application for one agent root (the registry is read now: an invalid one raises RegistryError)."""
    keys = KeyStore(layout.serve_keys_file)
    intake = triggers.Intake(layout, options, triggers.Cadences(layout), keys, Redactor(env))
    creds = Credentials(layout, options, settings, on_env=intake.redactor.update)  # `.env` edits apply at once

    @answering
    async def post_tick(request: Request) -> Response:
        started = time.monotonic()
        headers = request.headers
        opts = creds.current()
        access = auth.trigger_access(headers, opts, peer(request))
        body = await read_body(request.receive, headers, limit=options.max_body, deadline=started + options.timeout,
                               timeout=options.timeout)
        if access is auth.Access.WEBHOOK:
            auth.verify_signature(body, headers[auth.SIGNATURE_HEADER], opts.webhook_secret or "")
        name = request.path_params["name"]
        if not CADENCE_RE.match(name):
            raise HttpError(400, f"invalid cadence name (expected {CADENCE_RE.pattern})")
        key = check_key(headers["idempotency-key"]) if "idempotency-key" in headers else None
        if access is auth.Access.WEBHOOK:
            trigger = triggers.webhook(name, body, headers, key)
            if trigger.event == "ping":  # GitHub's hello when a webhook is created: nothing to run
                return json_answer(200, {"ping": True, "enqueued": False})
        else:
            trigger = triggers.envelope(name, body, key, trusted=access is auth.Access.TOKEN)
        status, answer = await run_in_threadpool(intake.accept, trigger)
        extra = {"Location": answer["status_url"]}
        if answer.get("replayed"):
            extra["Idempotent-Replayed"] = "true"
        return json_answer(status, answer, extra)

    @answering
    async def kill_tick(request: Request) -> Response:
        """`maestro tick kill` over HTTP: the token (or, with no credential set, a local request); never a webhook."""
        started, headers = time.monotonic(), request.headers
        if auth.trigger_access(headers, creds.current(), peer(request)) is auth.Access.WEBHOOK:
            raise HttpError(403, "a webhook signature cannot kill a run: send the token")
        body = await read_body(request.receive, headers, limit=options.max_body, deadline=started + options.timeout,
                               timeout=options.timeout)
        doc = triggers.parse_json(body, "the body") if body.strip() else {}
        if not isinstance(doc, dict) or set(doc) - {"requeue", "reason"} or not isinstance(doc.get("requeue", False),
                                                                                       bool) \
                or not isinstance(doc.get("reason", ""), (str, type(None))):
            raise HttpError(400, 'the body must be empty or {"requeue": true|false, "reason": "…"}')
        tick_id = request.path_params["tick_id"]
        try:
            asked = await run_in_threadpool(kill.ask, layout, tick_id, requeue=bool(doc.get("requeue")),
                                            reason=doc.get("reason"), now=SystemClock().now())
        except kill.NotRunning as exc:
            raise HttpError(404 if isinstance(exc, kill.Unknown) else 409, str(exc)) from None
        return json_answer(202, {"id": tick_id, "kill_requested": True, "requeue": asked.requeue,
                                 "status_url": f"/v1/ticks/{tick_id}"}, {"Location": f"/v1/ticks/{tick_id}"})

    @answering
    async def get_tick(request: Request) -> Response:
        auth.read_access(request.headers, creds.current(), peer(request))
        doc = await run_in_threadpool(ticks.find_tick, layout, request.path_params["tick_id"])
        if doc is None:
            raise HttpError(404, "no such tick in inbox/, claimed/, done/ or dlq/ (done ticks are pruned after "
                                 "MAESTRO_RETENTION_DAYS)")
        if doc.get("state") == "queued":  # the gate that holds it, as the daemon would answer
            doc["held_by"] = await run_in_threadpool(ticks.held_by, layout, env, settings, intake.cadences.current(),
                                                     doc, SystemClock().now())
        return json_answer(200, doc)

    def judge_health() -> dict[str, Any]:
        # `maestro status`'s judgment, with the root's `.env` read now as a `maestro status` started now reads it
        return judge(layout, SystemClock().now()).health_json()

    @answering
    async def healthz(request: Request) -> Response:
        doc = await run_in_threadpool(judge_health)
        return json_answer(200 if doc["healthy"] else 503, doc)

    @answering
    async def metrics(request: Request) -> Response:
        auth.read_access(request.headers, creds.current(), peer(request))
        text = await run_in_threadpool(_read_metrics, layout)
        if text is None:
            return text_answer(503, f"no metrics: {metrics_file(layout)} is absent (the daemon writes it while it "
                                    "runs)\n")
        return Response(text, media_type=METRICS_TYPE, headers=SECURITY_HEADERS)

    @answering
    async def status_page(request: Request) -> Response:
        auth.read_access(request.headers, creds.current(), peer(request), page=True)
        snap = await run_in_threadpool(lambda: snapshot.take(layout, settings, intake.cadences.current(),
                                                             SystemClock().now(), env))
        return Response(page.render(snap), media_type="text/html; charset=utf-8",
                        headers={**SECURITY_HEADERS, "Content-Security-Policy": page.CSP})

    @answering
    async def run_page(request: Request) -> Response:
        auth.read_access(request.headers, creds.current(), peer(request), page=True)
        attempt = runpage.attempt_of(request.query_params.get("attempt"))
        view = await run_in_threadpool(runpage.gather, layout, request.path_params["tick_id"], attempt,
                                       intake.redactor)
        return Response(runpage.render(view, SystemClock().now()), media_type="text/html; charset=utf-8",
                        headers={**SECURITY_HEADERS, "Content-Security-Policy": runpage.CSP})

    routes = [
        Route("/", status_page, methods=["GET"]),
        Route("/runs/{tick_id}", run_page, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/cadences/{name}/ticks", post_tick, methods=["POST"]),
        Route("/v1/ticks/{tick_id}", get_tick, methods=["GET"]),
        Route("/v1/ticks/{tick_id}/kill", kill_tick, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.keys = keys
    return app


def _read_metrics(layout: Layout) -> str | None:
    """The metrics file's text, None if absent (never following a link, at most MAX_METRICS_BYTES)."""
    try:
        fd = os.open(metrics_file(layout), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, size = [], 0
        while size < MAX_METRICS_BYTES:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks).decode("utf-8", errors="replace")
    finally:
        os.close(fd)
