"""Alerts: the events `incidents.py` picks, shaped and pushed to the targets in `targets.py` (apprise URLs, a
command) by one background thread, so the loop never waits on a receiver.

`Alerts.observe` is an `EventLog` listener: on the loop's thread it only maps the event (a dict lookup for the
stages no one is alerted about) and appends to a bounded queue. Floods are shaped there: the same kind about
the same thing (a cadence, a budget scope) within DEDUPE_SECONDS is one alert; dead letters are batched per
cadence (one alert per DLQ_EVERY carrying the count); at most RATE_PER_MINUTE alerts go out a minute; a full
queue drops its oldest. Every send has a deadline, and a failing target is logged once (`alert_failed`), not
once per alert.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from maestro_py.bus.events import EventLog
from maestro_py.clock import Clock, SystemClock, iso
from maestro_py.config import Settings
from maestro_py.daemon.incidents import (CLOSES, CRASH_STARTS, CRASH_WINDOW, OPENS, PAIRS, RULES, Alert,
                                         reset_by_hand, restarts)
from maestro_py.daemon.targets import SEND_TIMEOUT, Target, targets_for
from maestro_py.paths import Layout, agent_name
from maestro_py.redact import Redactor

QUEUE_MAX = 100          # alerts waiting to be sent; past it the oldest is dropped (and counted)
RATE_PER_MINUTE = 20     # alerts sent a minute, all kinds together; the rest are dropped and counted
DEDUPE_SECONDS = 600.0   # the same kind about the same thing within this is one alert
DLQ_GATHER = 60.0        # a dead letter's alert waits this long for others of its cadence to join it
DLQ_EVERY = 600.0        # at most one dead-letter alert per cadence this often
FLUSH_TIMEOUT = 5.0      # how long a stop (or the end of `run --once`) waits for pending alerts
_POLL = 5.0              # the longest the sender sleeps while a dead-letter batch waits (the clock may jump)


@dataclass
class _Batch:
    """Dead letters of one cadence waiting to go out as one alert."""

    count: int = 0
    reason: str | None = None
    due: float = 0.0


class Alerts:
    """Turns events into alerts and sends them from one daemon thread; `observe` never waits on a send."""

    def __init__(self, targets: list[Target], *, agent: str, redactor: Redactor, notes: EventLog,
                 layout: Layout | None = None, clock: Clock | None = None, queue_max: int = QUEUE_MAX,
                 rate_per_minute: int = RATE_PER_MINUTE) -> None:
        self.targets = targets
        self.agent = agent
        self.redactor = redactor
        self.notes = notes  # its own EventLog (own descriptor, no listeners): written from the sender's thread
        self.layout = layout
        self.clock = clock or SystemClock()
        self.queue_max = queue_max
        self.rate_per_minute = rate_per_minute
        self.stats: Counter[str] = Counter()  # sent, failed, dropped_overflow, rate_limited, deduplicated
        self._cond = threading.Condition()
        self._queue: deque[Alert] = deque()
        self._batches: dict[str, _Batch] = {}
        self._batch_sent: dict[str, float] = {}
        self._last: dict[str, float] = {}  # dedupe key -> when last queued
        self._recent: deque[float] = deque()  # when the alerts of the last minute were queued
        self._suppressed = 0  # dropped by the rate limit since the last alert that went out
        self._busy = False
        self._closing = False
        self._check_crash = False
        self._open: set[str] = set()  # circuits alerts said are open (cadences, _auth, _quota); emitting thread only
        self._thread = threading.Thread(target=self._serve, name="maestro-alerts", daemon=True)
        self._thread.start()

    # -- the loop's side: cheap, never blocks on a send ----------------------------------------------
    def observe(self, event: Mapping[str, Any]) -> None:
        """An `EventLog` listener: queue the alert `event` calls for, if any (secrets are masked already)."""
        stage = event.get("stage")
        if stage == "dlq":
            return self._dead_letter(event)
        if stage == "daemon_started" and event.get("pid") == os.getpid():
            with self._cond:
                self._check_crash = True  # the sender reads the log for earlier starts, off the loop's thread
                self._cond.notify()
            return
        if stage == "circuit_restored":  # open since before this start: a reset by hand is news
            self._open.add(str(event.get("cadence")))
        elif stage == "circuits_reloaded":  # an operator's edit or `circuit reset`: what is no longer open?
            still = set(event.get("open") or ())
            for circuit in sorted(self._open - still):
                self.push(reset_by_hand(circuit))
            self._open &= still
        rule = RULES.get(str(stage))
        if rule is None:
            return
        alert = rule(event)
        if alert.kind in OPENS:
            self._open.add(OPENS[alert.kind] or alert.subject)
        elif alert.kind in CLOSES:
            self._open.discard(CLOSES[alert.kind] or alert.subject)
        self.push(alert)

    def push(self, alert: Alert) -> bool:
        """Queue `alert` unless deduplicated or over the rate; True if queued."""
        now = self.clock.monotonic()
        with self._cond:
            last = self._last.get(alert.key)
            if last is not None and now - last < DEDUPE_SECONDS:
                self.stats["deduplicated"] += 1
                return False
            if not self._admit(now):
                return False
            self._last[alert.key] = now
            if alert.kind in PAIRS:
                self._forget(PAIRS[alert.kind], alert.subject)
            if len(self._last) > 1000:  # forget keys whose window is over
                self._last = {k: t for k, t in self._last.items() if now - t < DEDUPE_SECONDS}
            self._enqueue(alert)
        return True

    def _forget(self, kind: str, subject: str) -> None:
        """Forget the dedupe of `kind` (the other half of a pair) about `subject` and about nothing in particular; an
        alert about nothing in particular (`.env fixed`) forgets every one of that kind (each refused edit's)."""
        if subject:
            self._last.pop(f"{kind}:{subject}", None)
            self._last.pop(f"{kind}:", None)
        else:
            for key in [k for k in self._last if k.startswith(f"{kind}:")]:
                del self._last[key]

    def _admit(self, now: float) -> bool:
        """The rate limit (call with the lock held)."""
        while self._recent and now - self._recent[0] >= 60.0:
            self._recent.popleft()
        if len(self._recent) >= self.rate_per_minute:
            self.stats["rate_limited"] += 1
            self._suppressed += 1
            return False
        self._recent.append(now)
        return True

    def _enqueue(self, alert: Alert) -> None:
        if self._suppressed:  # say what the rate limit held back, in the next alert that goes out
            alert = replace(alert, fields={**alert.fields, "suppressed": self._suppressed},
                            body=f"{alert.body} ({self._suppressed} earlier alerts dropped by the rate limit)")
            self._suppressed = 0
        if len(self._queue) >= self.queue_max:
            self._queue.popleft()
            self.stats["dropped_overflow"] += 1
        self._queue.append(alert)
        self._cond.notify()

    def _dead_letter(self, event: Mapping[str, Any]) -> None:
        cadence, now = str(event.get("cadence")), self.clock.monotonic()
        with self._cond:
            batch = self._batches.get(cadence)
            if batch is None:
                sent = self._batch_sent.get(cadence)
                due = now + DLQ_GATHER if sent is None else max(now + DLQ_GATHER, sent + DLQ_EVERY)
                batch = self._batches[cadence] = _Batch(due=due)
                self._cond.notify()  # the sender sleeps until the earliest batch is due
            batch.count += 1
            batch.reason = event.get("reason") or batch.reason

    def _release(self, *, all_: bool = False) -> None:
        """Queue the dead-letter batches that are due (all of them on flush); call with the lock held."""
        now = self.clock.monotonic()
        for cadence, batch in list(self._batches.items()):
            if all_ or now >= batch.due:
                del self._batches[cadence]
                self._batch_sent[cadence] = now
                ticks = "tick" if batch.count == 1 else "ticks"
                self._enqueue(Alert("dlq", f"{batch.count} {ticks} dead-lettered: {cadence}",
                                    f"{batch.count} {ticks} of {cadence} went to dlq/ (`maestro dlq list`)",
                                    "failure", cadence, {"cadence": cadence, "count": batch.count,
                                                         "reason": batch.reason}))

    # -- stopping --------------------------------------------------------------------------------------
    def flush(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Send what is pending (dead-letter batches too), waiting at most `timeout`; True if all went out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._release(all_=True)
            self._cond.notify_all()
            while self._queue or self._busy or self._check_crash:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Flush (bounded), stop the sender, and note what was dropped or failed."""
        delivered = self.flush(timeout)
        with self._cond:
            self._closing = True
            left = len(self._queue)
            self._cond.notify_all()
        self._thread.join(0.5)
        lost = {k: v for k, v in self.stats.items() if k != "sent" and v}
        if lost or not delivered:
            self.notes.emit("alerts_closed", level="warn", pending_left=left, **dict(self.stats))
        self.notes.close()

    # -- the sender's side ----------------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._check_crash and not self._closing:
                    self._release()
                    if self._queue:
                        break
                    self._cond.wait(self._idle_wait())
                if self._closing:
                    return
                check, self._check_crash = self._check_crash, False
                alert = None if check else self._queue.popleft()
                self._busy = True
            try:
                if check:
                    self._crash_loop()
                elif alert is not None:
                    self._deliver(alert)
            except Exception as exc:  # noqa: BLE001 - the sender must outlive any one alert
                self.notes.emit("alert_failed", level="error",
                                error=self.redactor.text(f"{type(exc).__name__}: {exc}"))
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _idle_wait(self) -> float | None:
        """Until the next dead-letter batch is due (None: until woken); call with the lock held."""
        if not self._batches:
            return None
        due = min(batch.due for batch in self._batches.values())
        return min(max(due - self.clock.monotonic(), 0.05), _POLL)

    def _deliver(self, alert: Alert) -> None:
        for target, error in deliver(self.targets, alert, agent=self.agent, redactor=self.redactor,
                                     at=iso(self.clock.now())):
            self._note(target, alert, error)

    def _note(self, target: Target, alert: Alert, error: str | None) -> None:
        """Count the send; report a target's failure once, and its recovery once."""
        if error is None:
            self.stats["sent"] += 1
            if target.failing:
                target.failing = False
                self.notes.emit("alert_recovered", target=target.label)
            return
        self.stats["failed"] += 1
        if not target.failing:
            target.failing = True
            self.notes.emit("alert_failed", level="error", target=target.label, kind=alert.kind, error=error,
                            action="reported once: alerts to this target are lost until it works again")

    def _crash_loop(self) -> None:
        if self.layout is None:
            return
        starts = restarts(self.layout, self.clock.now())
        if starts >= CRASH_STARTS:
            self.notes.emit("crash_loop", level="error", starts=starts, window_s=CRASH_WINDOW)
            self.push(RULES["crash_loop"]({"starts": starts, "window_s": CRASH_WINDOW}))


def deliver(targets: list[Target], alert: Alert, *, agent: str, redactor: Redactor,
            at: str) -> list[tuple[Target, str | None]]:
    """Send `alert` to every target in turn, each bounded by SEND_TIMEOUT: (target, None or why it failed),
    the reason masked. Everything that leaves is masked again here, whatever built the alert."""
    doc = redactor.data(alert.doc(agent, at))
    title = redactor.text(f"maestro {agent}: {alert.title}")
    body = redactor.text(alert.message())
    out: list[tuple[Target, str | None]] = []
    for target in targets:
        error = target.send(title, body, alert.level, doc, SEND_TIMEOUT)
        out.append((target, None if error is None else redactor.text(" ".join(error.split()))[:500]))
    return out


def alerts_for(layout: Layout, settings: Settings, env: Mapping[str, str], redactor: Redactor, events: EventLog,
               clock: Clock) -> Alerts | None:
    """The daemon's alerts, subscribed to `events`, when MAESTRO_NOTIFY_URLS or MAESTRO_NOTIFY_COMMAND is set."""
    targets = targets_for(settings.notify_urls, settings.notify_command, layout.root, env)
    if not targets:
        return None
    alerts = Alerts(targets, agent=settings.agent or agent_name(layout.root.name), redactor=redactor,
                    notes=EventLog(layout, clock=clock, redactor=redactor), layout=layout, clock=clock)
    events.listeners.append(alerts.observe)
    return alerts


def renew(alerts: Alerts | None, layout: Layout, settings: Settings, env: Mapping[str, str], redactor: Redactor,
           events: EventLog, clock: Clock) -> Alerts | None:
    """The daemon's alerts after `.env` changed its targets: the same queue with the new targets (none: nothing is
    sent), or alerts started now if there were none."""
    if alerts is None:
        return alerts_for(layout, settings, env, redactor, events, clock)
    alerts.targets = targets_for(settings.notify_urls, settings.notify_command, layout.root, env)
    return alerts
