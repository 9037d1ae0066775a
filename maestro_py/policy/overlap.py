"""Overlap policy per cadence: which queued ticks are duplicates of work already running or queued.

`skip` (default): one run per payload; a tick equal to a running or older queued one is merged into it.
`buffer_one`: as skip, but one equal tick may wait behind a running one.
`allow`: nothing is merged; runs overlap (subject to the live cap).
Only ticks with equal payloads are ever merged: a tick carrying its own payload is work.
"""

from __future__ import annotations

from collections import defaultdict

from maestro_py.bus.inbox import Entry, InboxIndex


def surplus(index: InboxIndex, cadence: str, policy: str, running: dict[str, str]) -> list[tuple[Entry, str]]:
    """Queued ticks of `cadence` to settle as `skipped_overlap`, each with the tick id it merges into.

    `running` maps payload fingerprint -> id of the cadence's running tick with that payload.
    """
    if policy == "allow":
        return []
    if not index.has_duplicates(cadence) and not any(index.duplicates(cadence, fp) for fp in running):
        return []
    groups: dict[str, list[Entry]] = defaultdict(list)
    for entry in index.ready_entries(cadence):
        groups[entry.fingerprint].append(entry)
    out: list[tuple[Entry, str]] = []
    for fingerprint, entries in groups.items():
        live = running.get(fingerprint)
        # How many equal ticks may stay queued: skip keeps the one that will run (none if one runs
        # already); buffer_one keeps one more than skip.
        keep = (0 if live else 1) + (1 if policy == "buffer_one" else 0)
        target = entries[0].name[:-5] if keep else live
        out.extend((entry, target) for entry in entries[keep:])
    return out
