"""The words of the gate chain (`policy.gates`): why a run may not start now (`Refusal`, its counter), a gate's
refusal in words (`Hold`), and one gate's answer for a view (`Answer`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from maestro_py.clock import iso


class Refusal(str, enum.Enum):
    """Why a tick may not start now, in the order the gates are asked; the value is its counter name."""

    EMERGENCY_STOP = "skipped_emergency_stop"
    AUTH_HALT = "skipped_auth_halt"
    CLAUDE_MISSING = "skipped_claude_missing"
    QUOTA_HOLD = "skipped_quota_hold"
    SANDBOX_MISSING = "skipped_sandbox_missing"
    MISCONFIGURED = "skipped_misconfigured"
    CIRCUIT_OPEN = "skipped_circuit_open"
    BACKOFF = "skipped_backoff"
    PACING = "skipped_pacing"
    LIVE_CAP = "skipped_live_cap"
    AUTH_PROBE = "skipped_auth_probe"
    OVERLAP_WAIT = "skipped_overlap_wait"
    BUDGET = "deferred_budget"
    GOVERNOR_UNAVAILABLE = "skipped_governor_unavailable"
    FLEET_LIVE_CAP = "skipped_fleet_live_cap"
    FLEET_BUDGET = "deferred_fleet_budget"

    @property
    def gate(self) -> str:
        """The gate's name, as every view shows it (`emergency_stop`, `budget`, `fleet_budget` …); the value is its
        counter's name, kept for the metrics and `consumer.json` that dashboards already read."""
        return self.name.lower()


FLEET_REFUSALS = {"unavailable": Refusal.GOVERNOR_UNAVAILABLE, "live_cap": Refusal.FLEET_LIVE_CAP,
                  "budget": Refusal.FLEET_BUDGET}  # the governor store's refusal reasons, as gates


# Holds that do not lift by themselves within a run's time (`maestro run-now` refuses up front instead of queueing).
LASTING = frozenset((Refusal.EMERGENCY_STOP, Refusal.AUTH_HALT, Refusal.CLAUDE_MISSING, Refusal.QUOTA_HOLD,
                     Refusal.SANDBOX_MISSING, Refusal.MISCONFIGURED, Refusal.CIRCUIT_OPEN, Refusal.BACKOFF, Refusal.BUDGET, Refusal.FLEET_BUDGET))


@dataclass(frozen=True)
class Hold:
    """A gate's refusal, in words: why, until when it lifts by itself, whether the run can ever fit, what lifts it."""

    refusal: Refusal
    why: str
    until: datetime | None = None
    never_fits: bool = False
    lifts: str = ""
    detail: Any = None  # what the daemon reports the first time (a budget `Shortfall`, a fleet answer)

    @property
    def gate(self) -> str:
        return self.refusal.gate

    @property
    def lasting(self) -> bool:
        """It will not lift by itself within a run's time (or ever, when the run can never fit)."""
        return self.never_fits or self.refusal in LASTING

    def to_json(self) -> dict[str, Any]:
        return {"gate": self.gate, "counter": self.refusal.value, "why": self.why,
                "until": iso(self.until) if self.until else None, "never_fits": self.never_fits, "lifts": self.lifts}

    def line(self) -> str:
        """One line for an operator: why, and what lifts it."""
        return f"{self.why}; {self.lifts}" if self.lifts else self.why


@dataclass(frozen=True)
class Answer:
    """One gate's answer for a view: it holds the run (with its `Hold`) or passes (with its words)."""

    refusal: Refusal
    hold: Hold | None
    why: str

    @property
    def gate(self) -> str:
        return self.refusal.gate

    @property
    def holds(self) -> bool:
        return self.hold is not None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"gate": self.gate, "counter": self.refusal.value, "holds": self.holds, "why": self.why}
        if self.hold is not None:
            doc.update(until=iso(self.hold.until) if self.hold.until else None, never_fits=self.hold.never_fits,
                       lifts=self.hold.lifts)
        return doc
