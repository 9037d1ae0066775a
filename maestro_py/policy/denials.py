"""Permission denials: a run the CLI refused a tool call is a fact (the ledger row's `denials`, the tick's history,
an event, a metric, an alert); a cadence whose last `HOLD_AFTER` runs under the same policy were all denied
something is misconfigured, and is held (no attempt burnt) until its permissions or its prompt change.

The streak is learned from each run and, at start, from the ledger (`seed`), so the daemon and every view read the
same rows the same way. A run with no result (its denials unknown) neither extends nor breaks a streak.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

HOLD_AFTER = 3


@dataclass(frozen=True)
class Streak:
    """Consecutive runs of one cadence under one policy that were denied something, and the tools denied."""

    policy: str
    runs: int
    tools: tuple[str, ...]


def tools_of(row: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The tools a ledger row says were denied (empty: none), or None when the row does not know."""
    denials = row.get("denials")
    if not isinstance(denials, dict):
        return None
    tools = denials.get("tools")
    return tuple(str(t) for t in tools) if isinstance(tools, list) else None


def to_row(tools: tuple[str, ...] | None, count: int | None) -> dict[str, Any] | None:
    """The ledger row's `denials` field: count and tool names, or None (unknown: no result was read)."""
    if tools is None:
        return None
    return {"count": count if count is not None else len(tools), "tools": sorted(set(tools))}


class Denials:
    """Per cadence, its current streak of denied runs."""

    def __init__(self, hold_after: int = HOLD_AFTER) -> None:
        self.hold_after = hold_after
        self.streaks: dict[str, Streak] = {}

    def learn(self, cadence: str, policy: str, tools: tuple[str, ...] | None) -> Streak | None:
        """One run's denials (`tools`: what was denied, () none, None unknown); the cadence's streak after it."""
        if tools is None:
            return self.streaks.get(cadence)
        if not tools:
            self.streaks.pop(cadence, None)
            return None
        old = self.streaks.get(cadence)
        runs = old.runs + 1 if old is not None and old.policy == policy else 1
        seen = tuple(sorted(set(tools) | (set(old.tools) if old is not None and old.policy == policy else set())))
        self.streaks[cadence] = Streak(policy, runs, seen)
        return self.streaks[cadence]

    def seed(self, rows: Iterable[Mapping[str, Any]]) -> "Denials":
        """Learn from ledger rows, oldest first."""
        for _ in self.passing(rows):
            pass
        return self

    def passing(self, rows: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        """Each of `rows`, learnt from as it passes on to another reader (the daemon reads its ledger once at start,
        for the budget and for this)."""
        for row in rows:
            cadence, policy = row.get("cadence"), row.get("policy")
            if isinstance(cadence, str) and isinstance(policy, str):
                self.learn(cadence, policy, tools_of(row))
            yield row

    def holding(self, cadence: str, policy: str) -> Streak | None:
        """The streak that holds `cadence` under `policy` now, or None."""
        streak = self.streaks.get(cadence)
        if streak is None or streak.policy != policy or streak.runs < self.hold_after:
            return None
        return streak


def fix(cadence: str, streak: Streak) -> str:
    """What lifts the hold, in one line."""
    wanted = ", ".join(f'"{tool}"' for tool in streak.tools[:4])
    return (f"grant what it needs in cadences.toml [{cadence}] (tools/allow, e.g. allow = [{wanted}]), or change "
            "its prompt so it does not ask; an edit of either lifts the hold")
