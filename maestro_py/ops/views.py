"""Read-models for operators: the budget and the circuits exactly as the daemon counts them.

`maestro status`, `maestro budget`, `maestro circuit list` and `maestro doctor` all read through here,
so they cannot disagree about what is spent or what is open. Nothing here writes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from maestro_py.clock import parse_iso
from maestro_py.config import Settings
from maestro_py.errors import MaestroError
from maestro_py.ops.when import local
from maestro_py.paths import Folder, Layout
from maestro_py.policy.breaker import Breakers, Circuit, CircuitFile
from maestro_py.policy.budget import Budget, Estimate, cadence_limits
from maestro_py.registry import Registry
from maestro_py.registry_keys import Mode
from maestro_py.session.ledger import Ledger
from maestro_py.state import observe


class CircuitFileInvalid(MaestroError):
    """circuit-open.json exists but does not describe breakers."""


def load_breakers(layout: Layout) -> tuple[Breakers, CircuitFile]:
    """The persisted breakers and their file (callers that change a circuit save through the file)."""
    file = CircuitFile(layout.circuit_file, layout.folder(Folder.TMP))
    breakers = Breakers()
    try:
        breakers.load_doc(file.load())
    except (ValueError, KeyError, TypeError) as exc:
        raise CircuitFileInvalid(f"{layout.circuit_file} is not valid: {exc}") from None
    return breakers, file


def open_circuits(layout: Layout) -> dict[str, Circuit]:
    """Open and half-open circuits by name, sorted; the auth halt is the one named `AUTH_HALT`."""
    breakers, _ = load_breakers(layout)
    return dict(sorted(breakers.open_circuits().items()))


def budget_of(layout: Layout, settings: Settings, registry: Registry | None, daemon: dict[str, Any] | None,
              now: datetime) -> Budget:
    """The local budget exactly as the daemon counts it: limits from settings and the registry (None: no
    per-cadence limits), spent from the ledger, and the reservations of `daemon` (a live daemon's status file;
    a dead daemon's reservations are held by nothing: counting them would understate what is left)."""
    budget = settings.budget(cadence_limits(registry) if registry is not None else {})
    budget.load(Ledger(layout.ledger_file).rows(), now)
    for item in (daemon or {}).get("reservations") or []:
        budget.reserve(item["tick"], item["cadence"], Estimate(item["tokens"], item["usd"], "live"))
    return budget


def budget_rows(layout: Layout, settings: Settings, registry: Registry | None, now: datetime) -> list[dict[str, Any]]:
    """Per scope and window, as the daemon sees it (`budget_of`), with the cadences whose one run's reservation is
    more than a limit (`never_fits`)."""
    seen = observe(layout, now)
    budget = budget_of(layout, settings, registry, seen.doc if seen.running else None, now)
    estimates: dict[str, Estimate] = {}
    if registry is not None:
        for name in registry.names():
            cadence = registry.get(name)
            if cadence is not None and cadence.mode != Mode.INLINE:  # inline handlers pass no budget gate
                estimates[name] = budget.estimate(name, cadence.reserve_tokens, cadence.reserve_usd)
    return budget.summary(now, estimates)


def quota_line(doc: dict[str, Any], now: datetime) -> str:
    """The usage-limit hold as an operator reads it: "usage limit (five_hour): resets 2026-12-01 14:00 CET (in 58
    min)…", in the machine's zone."""
    kind = str(doc.get("last_error") or "").split(":", 1)[0] or "usage limit"
    until = doc.get("open_until")
    if not until:
        return f"usage limit ({kind}): held until `maestro circuit reset --all`"
    at = parse_iso(until)
    minutes = max(0, round((at - now).total_seconds() / 60))
    state = f"resets {local(at, seconds=False)} (in {minutes} min)" if doc.get("state") == "open" \
        else "reset passed: one probe run first"
    return f"usage limit ({kind}): {state}; nothing spawns until then; `maestro circuit reset --all` lifts it"
