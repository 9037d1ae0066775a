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
from maestro_py.policy.budget import Estimate, cadence_limits
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


def budget_rows(layout: Layout, settings: Settings, registry: Registry | None, now: datetime) -> list[dict[str, Any]]:
    """Per scope and window, as the daemon sees it: limits from settings and the registry (None: no
    per-cadence limits), spent from the ledger, reservations from a live daemon's status file, and the
    cadences whose one run's reservation is more than a limit (`never_fits`)."""
    governor = settings.governor(cadence_limits(registry) if registry is not None else {})
    governor.load(Ledger(layout.ledger_file).rows(), now)
    estimates: dict[str, Estimate] = {}
    if registry is not None:
        for name in registry.names():
            cadence = registry.get(name)
            if cadence is not None and cadence.mode != Mode.INLINE:  # inline handlers pass no budget gate
                estimates[name] = governor.estimate(name, cadence.reserve_tokens, cadence.reserve_usd)
    seen = observe(layout, now)
    # A dead daemon's reservations are not held by anything: counting them would understate what is left.
    if seen.running:
        for item in (seen.doc or {}).get("reservations") or []:
            governor.reserve(item["tick"], item["cadence"], Estimate(item["tokens"], item["usd"], "live"))
    return governor.summary(now, estimates)


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
