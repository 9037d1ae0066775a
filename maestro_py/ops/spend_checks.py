"""`maestro doctor`'s checks of spending: the budget left per scope, and the fleet governor store."""

from __future__ import annotations

from maestro_py.config import Settings
from maestro_py.errors import ConfigError
from maestro_py.ops import views, when
from maestro_py.ops.probe import Check, Level, Probe
from maestro_py.policy.budget import never_fits_lines
from maestro_py.registry import Registry, RegistryError
from maestro_py.state import read_status


def check_budget(p: Probe) -> Check:
    """Budget left per limited scope, as the daemon counts it (the ledger plus live reservations)."""
    try:
        settings = Settings.from_env(p.env)
    except ConfigError:
        return Check("budget", Level.WARN, "skipped: a setting is invalid (see settings)")
    try:
        registry: Registry | None = Registry.load(p.layout)
    except RegistryError:
        registry = None  # the registry check reports it; the global limits still apply
    rows = [r for r in views.budget_rows(p.layout, settings, registry, p.now())
            if any(v is not None for v in r["total"].values())]
    if not rows:
        return Check("budget", Level.OK, "no budget configured")
    floor = {"tokens": settings.reserve_tokens, "usd": settings.reserve_usd}
    shown: list[str] = []
    short: list[str] = []
    for row in rows:
        left = {unit: value for unit, value in row["remaining"].items() if value is not None}
        label = f"{row['scope']} {row['window']}"
        shown.append(f"{label}: " + " / ".join(_amount(unit, value) for unit, value in left.items()) + " left")
        never = never_fits_lines(row["never_fits"])
        short += [f"{label}: {line}" for line in never]
        # "Until the reset" only where a default-sized run fits the limit at all: below that, `never_fits`
        # names the cadences that are stuck for good, and the others' smaller reservations may still fit.
        if not never and any(value < floor[unit] <= row["total"][unit] for unit, value in left.items()):
            short.append(f"{label} cannot cover another run until {when.local(row['resets_at'], seconds=False)}")
    if short:
        return Check("budget", Level.WARN, "; ".join(short))
    return Check("budget", Level.OK, "; ".join(shown))


def check_governor(p: Probe) -> Check:
    """The fleet governor store answers (when MAESTRO_GOVERNOR_URL names one): else nothing spawns."""
    try:
        url = Settings.from_env(p.env).governor_url
    except ConfigError:
        return Check("governor", Level.WARN, "skipped: a setting is invalid (see settings)")
    if url is None:
        return Check("governor", Level.OK, "no governor store: this root's own budget only")
    from maestro_py.fleet import open_store
    from maestro_py.fleet.model import StoreUnavailable
    from maestro_py.redact import mask_url

    store = open_store(url)
    try:
        limits = store.limits()
        live = store.live(p.now())
    except StoreUnavailable as exc:
        return Check("governor", Level.FAIL, f"{exc}; no sub-session will spawn until it answers")
    finally:
        store.close()
    waiting = ((read_status(p.layout) or {}).get("governor") or {}).get("outbox") or 0
    detail = f"{mask_url(url)} answers: {len(limits)} limit(s), {len(live)} live run(s) in the fleet"
    if waiting:
        return Check("governor", Level.WARN, f"{detail}; {waiting} settle(s) not pushed yet")
    return Check("governor", Level.OK, detail)


def check_gates(p: Probe) -> Check:
    """Each cadence's runs walked through the daemon's gate chain (`ops.gates`): fail for a run that can never fit
    a budget (a configuration error: no reset lifts it), warn for a hold that lasts, ok when every cadence may run."""
    try:
        settings = Settings.from_env(p.env)
        registry = Registry.load(p.layout)
    except (ConfigError, RegistryError):
        return Check("gates", Level.WARN, "skipped: the settings or the registry are invalid (see above)")
    from maestro_py.ops import gates

    now = p.now()
    try:
        with gates.PersistedState(p.layout, p.env, settings, registry, now) as state:
            held = gates.holds(state, registry, now)
    except views.CircuitFileInvalid as exc:
        return Check("gates", Level.FAIL, str(exc))
    never = [f"{name} never fits: {hold.line()}" for name, hold in held.items() if hold.never_fits]
    lasting = [f"{name} held by {hold.gate}: {hold.why}" for name, hold in held.items()
               if hold.lasting and not hold.never_fits]
    if never:
        return Check("gates", Level.FAIL, "; ".join(never))
    if lasting:
        return Check("gates", Level.WARN, "; ".join(lasting))
    return Check("gates", Level.OK, "no gate holds a cadence for long")


def _amount(unit: str, value: float) -> str:
    return f"${value:.4f}" if unit == "usd" else f"{value:,.0f} tokens"
