"""Settings changed in `.env` take effect in the running daemon: each part gets its new figures.

A few settings name resources the daemon opened at start-up (the governor store, the agent's name in it):
changing them needs a restart, which `restart_required` says (event, `status`, `doctor`) instead of
silently keeping the old value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from maestro_py.config import Settings
from maestro_py.policy.backoff import parse_backoff

if TYPE_CHECKING:
    from maestro_py.daemon.loop import Daemon

RESTART_REQUIRED = ("MAESTRO_GOVERNOR_URL", "MAESTRO_AGENT_NAME")


def reconfigure(daemon: "Daemon", new: Settings) -> tuple[list[str], list[str]]:
    """Apply `new` to every part of `daemon`; (names applied, names that need a restart)."""
    old = daemon.settings
    changed = old.changed(new)
    if not changed:
        return [], []
    pending = [name for name in changed if name in RESTART_REQUIRED]
    if pending:  # keep what was opened with, in force and in what `status` shows
        new = _keep(new, old)
    daemon.settings = new
    daemon.dispatcher.settings = new
    daemon.housekeeping.settings = new
    daemon.bus.max_inbox = new.max_inbox
    daemon.live.max_live = new.max_live
    rails = daemon.guardrails
    rails.max_live, rails.max_attempts = new.max_live, new.max_attempts
    rails.quota_pause_at, rails.quota_min_hold = new.quota_pause_at, new.quota_min_hold
    rails.backoff.wait = parse_backoff(new.backoff)
    breakers = rails.breakers
    breakers.threshold, breakers.open_seconds = new.circuit_threshold, new.circuit_open_seconds
    breakers.max_open_seconds = new.circuit_max_open_seconds
    fresh = new.budget()  # the limits as `Settings.budget` builds them; spent and reserved stay the daemon's
    daemon.budget.global_limits, daemon.budget.default_estimate = fresh.global_limits, fresh.default_estimate
    if daemon.fleet is not None:
        daemon.fleet.max_live, daemon.fleet.lease_seconds = new.fleet_max_live, new.fleet_lease_seconds
    daemon.settler.warn_at = new.budget_warn_at
    if (old.notify_urls, old.notify_command) != (new.notify_urls, new.notify_command):
        from maestro_py.daemon.alerts import renew

        daemon.alerts = renew(daemon.alerts, daemon.layout, new, daemon.housekeeping.env, daemon.redactor,
                               daemon.events, daemon.clock)
    return [name for name in changed if name not in pending], pending


def _keep(new: Settings, old: Settings) -> Settings:
    """`new` with the restart-only settings as `old` has them."""
    from dataclasses import replace

    return replace(new, governor_url=old.governor_url, agent=old.agent)
