"""The gates a tick passes before a sub-session may start; each refusal is a reason the loop counts."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from maestro_py.policy.backoff import Backoff
from maestro_py.policy.breaker import AUTH_HALT, Breakers


@dataclass
class Gates:
    """Emergency stop, auth halt, circuit breaker, backoff, pacing, live cap, credential probe (in that order).

    Every gate fails closed: a refusal keeps the tick in `inbox/` without burning an attempt.
    """

    breakers: Breakers
    backoff: Backoff
    max_live: int
    live_count: Callable[[], int]
    emergency: str | None = None
    credentials_verified: bool = False  # until one run succeeds with these credentials, run one at a time

    def refusal(self, cadence: str, now: datetime, *, spawned_this_step: bool) -> str | None:
        """Why `cadence` may not spawn now (a counter name), or None if it may."""
        if self.emergency is not None:
            return "skipped_emergency_stop"
        circuit = self.breakers.refusal(cadence, now)
        if circuit is not None:
            return "skipped_auth_halt" if circuit.name == AUTH_HALT else "skipped_circuit_open"
        if self.backoff.holds(cadence, now) is not None:
            return "skipped_backoff"
        if spawned_this_step:
            return "skipped_pacing"
        live = self.live_count()
        if live >= self.max_live:
            return "skipped_live_cap"
        if live > 0 and not self.credentials_verified:
            # One bad key must cost one sub-session: no second spawn until a run proves the credentials.
            return "skipped_auth_probe"
        return None


def read_stop_file(path: Path) -> str | None:
    """The emergency stop's reason if the STOP file exists (its JSON `reason`, or its text), else None."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError:
        return "STOP file present (unreadable)"
    try:
        doc = json.loads(text)
        return str(doc.get("reason") or "STOP file present") if isinstance(doc, dict) else text or "STOP file present"
    except ValueError:
        return text[:200] or "STOP file present"
