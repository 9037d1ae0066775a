"""Triggers: what a POST to `/v1/cadences/{name}/ticks` asks for, and turning it into one tick.

Two shapes of body:

- **An envelope** (bearer token, or open access): empty, or `{"payload": {…}, "delay": seconds, "source":
  "…"}`, every key optional (payload `{}`, delay 0, source `http`), no other key.
- **A webhook event** (the request carries `X-Hub-Signature-256`): the whole body is the payload, as the
  sender wrote it (`application/json`, or GitHub's form encoding, `payload=<json>`); the source is
  `github:<X-GitHub-Event>` (e.g. `github:push`), or `webhook` without that header; no delay. GitHub's
  delivery id (`X-GitHub-Delivery`, the same on a redelivery) is the idempotency key unless the request
  sets `Idempotency-Key`. A `ping` event (sent when a webhook is created) is answered and enqueues nothing.

`Intake.accept` runs in a worker thread (it does file I/O under the bus's enqueue lock): unknown cadence
404, idempotent replay 200, emergency stop 503, backlog ceiling 429 (nothing written), else 202.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from maestro_py.bus.events import EventLog
from maestro_py.bus.fsio import file_stamp
from maestro_py.bus.store import MAX_DELAY_SECONDS, Bus
from maestro_py.errors import InboxFull, TickInvalid
from maestro_py.paths import Layout
from maestro_py.policy.emergency import read_stop_file
from maestro_py.redact import Redactor
from maestro_py.registry import Registry, RegistryError
from maestro_py.serve.http import HttpError
from maestro_py.serve.idempotency import KeyStore, canonical, fingerprint
from maestro_py.serve.options import RETRY_AFTER_FULL, RETRY_AFTER_STOP, ServeOptions

ENVELOPE_KEYS = frozenset({"payload", "delay", "source"})
DEFAULT_SOURCE = "http"
MAX_SOURCE = 200
EVENT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")


@dataclass(frozen=True)
class Trigger:
    """One parsed trigger request."""

    cadence: str
    payload: dict[str, Any]
    delay: float
    source: str
    key: str | None
    fingerprint: str
    event: str | None = None  # the webhook's X-GitHub-Event
    signed: bool = False  # a webhook authenticated by its body's signature (not by the token)
    trusted: bool = False  # as trusted as its token: a webhook's body and an open trigger are not


def parse_json(data: bytes | str, what: str) -> Any:
    """JSON (UTF-8, no NaN or Infinity) or a 400 naming `what`."""
    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not allowed")

    try:
        return json.loads(data, parse_constant=constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError; deep nesting recurses
        raise HttpError(400, f"{what} is not valid JSON: {str(exc)[:200] or type(exc).__name__}") from None


def envelope(cadence: str, body: bytes, key: str | None, *, trusted: bool = False) -> Trigger:
    """The trigger an envelope body asks for (empty: all defaults)."""
    doc: Any = {} if not body.strip() else parse_json(body, "the body")
    if not isinstance(doc, dict):
        raise HttpError(400, 'the body must be a JSON object: {"payload": {…}, "delay": seconds, "source": "…"}')
    unknown = sorted(set(doc) - ENVELOPE_KEYS)
    if unknown:
        raise HttpError(400, f"unknown key(s) {', '.join(map(repr, unknown))[:200]} (expected payload, delay, source)")
    payload = doc.get("payload")
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise HttpError(400, "payload must be a JSON object")
    delay = doc.get("delay", 0)
    if delay is None:
        delay = 0
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not math.isfinite(delay) \
            or not 0 <= delay <= MAX_DELAY_SECONDS:
        raise HttpError(400, f"delay must be a number of seconds from 0 to {MAX_DELAY_SECONDS} (366 days)")
    source = doc.get("source", DEFAULT_SOURCE)
    if not isinstance(source, str) or not 0 < len(source) <= MAX_SOURCE or not source.isprintable():
        raise HttpError(400, f"source must be a printable string of 1-{MAX_SOURCE} characters")
    return Trigger(cadence, payload, float(delay), source, key, fingerprint(cadence, canonical(doc)),
                   trusted=trusted)


def webhook(cadence: str, body: bytes, headers: Mapping[str, str], key: str | None) -> Trigger:
    """The trigger a signed webhook delivery asks for: its body is the payload."""
    event = headers.get("x-github-event")
    if event is not None and not EVENT_RE.match(event):
        raise HttpError(400, "X-GitHub-Event must be 1-64 characters of [A-Za-z0-9_.-]")
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    data: bytes | str = body
    if media == "application/x-www-form-urlencoded":  # GitHub's other content type: payload=<url-encoded JSON>
        try:
            form = parse_qs(body.decode("utf-8"), strict_parsing=bool(body))
        except (UnicodeDecodeError, ValueError):
            raise HttpError(400, "the form body is not valid") from None
        if len(form.get("payload", [])) != 1:
            raise HttpError(400, "a form-encoded webhook body must have one `payload` field")
        data = form["payload"][0]
    doc = parse_json(data, "the webhook body")
    if not isinstance(doc, dict):
        raise HttpError(400, "a webhook body must be a JSON object")
    # The signature covers the body only, not the delivery id nor the URL: a captured delivery re-sent with a fresh
    # X-GitHub-Delivery is the same body. So the body is the key (kept 24 h): a redelivery answers with its first
    # tick, and the same body sent to another cadence is refused (422).
    key = f"body-{hashlib.sha256(body).hexdigest()[:48]}"
    source = f"github:{event}" if event else "webhook"
    return Trigger(cadence, doc, 0.0, source, key, fingerprint(cadence, body), event, signed=True)


class Cadences:
    """The registry as of now: reloaded when `cadences.toml` changes; an invalid edit keeps the last good one."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._registry = Registry.load(layout)  # invalid at start: the caller says so and does not serve

    def _stat(self) -> tuple[int, int, int] | None:
        return file_stamp(self.layout.registry_file)

    def current(self) -> Registry:
        """The registry, reloaded first if its file changed."""
        with self._lock:
            stamp = self._stat()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._registry = Registry.load(self.layout)
                except RegistryError:
                    pass  # as the daemon does: keep serving the last valid registry until the file is fixed
            return self._registry


class Intake:
    """Turns triggers into ticks through `Bus.enqueue`, with the stop, idempotency and ceiling answers."""

    def __init__(self, layout: Layout, options: ServeOptions, cadences: Cadences, keys: KeyStore,
                 redactor: Redactor) -> None:
        self.layout = layout
        self.options = options
        self.cadences = cadences
        self.keys = keys
        self.redactor = redactor
        self._local = threading.local()

    def accept(self, trigger: Trigger) -> tuple[int, dict[str, Any]]:
        """(202 or 200, the answer) for a trigger, or an HttpError (404, 422, 503, 429, 413, 400)."""
        cadence = self.cadences.current().get(trigger.cadence)
        if cadence is None:
            raise HttpError(404, f"unknown cadence {trigger.cadence!r}: no entry in cadences.toml and no "
                                 f"cadences/{trigger.cadence}.md")
        if trigger.signed and not ({"*", trigger.event or ""} & set(cadence.webhook_events)):
            raise HttpError(403, f"{trigger.cadence} takes no webhook of event {trigger.event or '(none)'}: list it in "
                                 f"its table, webhook_events = [\"{trigger.event or 'push'}\"]")
        if not trigger.trusted and cadence.permissions.refuses_untrusted():
            raise HttpError(403, f"{trigger.cadence} may write, run commands or reach the network, so it refuses "
                                 "untrusted input (a webhook, or a trigger without the token); set accept_untrusted = "
                                 "true in its table to take it, fenced in the prompt")
        if trigger.key is None:
            self._refuse_if_stopped()
            return 202, self._answer(self._enqueue(trigger), trigger)
        with self.keys.claim(trigger.key, trigger.fingerprint) as (first, remember):
            if first is not None:
                return 200, {**self._shape(first.tick_id, first.cadence), "replayed": True}
            self._refuse_if_stopped()
            answer = self._answer(self._enqueue(trigger), trigger)
            remember(answer["id"], trigger.cadence)
        return 202, answer

    def _refuse_if_stopped(self) -> None:
        reason = read_stop_file(self.layout.stop_file)
        if reason is not None:
            raise HttpError(503, f"emergency stop is set ({reason}); `maestro resume` lifts it",
                            {"Retry-After": str(RETRY_AFTER_STOP)})

    def _bus(self) -> Bus:
        """This worker thread's bus: a `Bus` and its event log's open file are not for sharing between threads."""
        bus = getattr(self._local, "bus", None)
        if bus is None:
            events = EventLog(self.layout, redactor=self.redactor)
            bus = self._local.bus = Bus(self.layout, events=events, max_inbox=self.options.max_inbox)
        return bus

    def _enqueue(self, trigger: Trigger) -> Any:
        bus = self._bus()
        try:
            return bus.enqueue(trigger.cadence, source=trigger.source, payload=trigger.payload, delay=trigger.delay,
                               trusted=trigger.trusted)
        except InboxFull as exc:
            raise HttpError(429, str(exc), {"Retry-After": str(RETRY_AFTER_FULL)}) from None
        except TickInvalid as exc:
            status = 413 if str(exc).startswith("tick is too large") else 400
            raise HttpError(status, str(exc)) from None
        finally:
            bus.reindex()  # the server never claims: an index of what it delivered would only grow

    @staticmethod
    def _shape(tick_id: str, cadence: str) -> dict[str, Any]:
        return {"id": tick_id, "cadence": cadence, "status_url": f"/v1/ticks/{tick_id}"}

    def _answer(self, tick: Any, trigger: Trigger) -> dict[str, Any]:
        return {**self._shape(tick.id, tick.cadence), "source": tick.source, "not_before": tick.not_before}
