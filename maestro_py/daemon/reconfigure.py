"""Settings changed in `.env` take effect in the running daemon: it hands out a new `Settings` value, which every part
reads at its next use (no figure is written into them); only what holds state of its own, the budget's windows and the
governor gate's leases, takes its new limits here, and the alert targets are rebuilt when they change.

A few settings name resources the daemon opened at start-up (the governor store, the agent's name in it):
changing them needs a restart, which `restart_required` says (event, `status`, `doctor`) instead of
silently keeping the old value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from maestro_py.config import Settings

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
    daemon.settings = new  # the value every part reads at its next use (the live cap, the guards, the breakers,
    # the backoff, the dispatcher, housekeeping, the budget warning); what holds state of its own takes new figures:
    fresh = new.budget()  # the limits as `Settings.budget` builds them; spent and reserved stay the daemon's
    daemon.budget.global_limits, daemon.budget.default_estimate = fresh.global_limits, fresh.default_estimate
    if daemon.fleet is not None:
        daemon.fleet.max_live, daemon.fleet.lease_seconds = new.fleet_max_live, new.fleet_lease_seconds
    if (old.notify_urls, old.notify_command) != (new.notify_urls, new.notify_command):
        from maestro_py.daemon.alerts import renew

        daemon.alerts = renew(daemon.alerts, daemon.layout, new, daemon.housekeeping.env, daemon.redactor,
                               daemon.events, daemon.clock)
    return [name for name in changed if name not in pending], pending


def _keep(new: Settings, old: Settings) -> Settings:
    """`new` with the restart-only settings as `old` has them."""
    from dataclasses import replace

    return replace(new, governor_url=old.governor_url, agent=old.agent)
