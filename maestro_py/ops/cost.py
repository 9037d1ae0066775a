"""What the runs cost, from the ledger (`state/cost-ledger.jsonl` and the monthly archives retention makes), grouped
by cadence, model or local day, with totals.

A row whose cost or tokens were not measured (a killed run, no result line: `null` in the ledger) is counted as
*unknown*, never as 0: each group says how many runs that is, beside the sum of those that were measured, and
what the budget charged them instead (their reservation, `charged_usd`). By model, a run that used two models
counts in both groups (with each model's own share of cost and tokens), so the groups' runs may add up to more
than the total's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from maestro_py.clock import iso, parse_iso
from maestro_py.paths import Layout
from maestro_py.session.ledger import Ledger
from maestro_py.session.metering import TOKEN_FIELDS

GROUPINGS = ("cadence", "model", "day")
UNMEASURED = "(unmeasured)"      # by model: a run whose usage is unknown
NO_MODEL = "(no model reported)"  # by model: measured, but the CLI named no model (an API error billed nothing)
# The CLI's modelUsage keys, for rows that carry it raw instead of the ledger's per_model.
_CAMEL = {"inputTokens": "input_tokens", "outputTokens": "output_tokens", "cacheReadInputTokens": "cache_read_tokens",
          "cacheCreationInputTokens": "cache_creation_tokens", "costUSD": "cost_usd"}


@dataclass
class Figures:
    """One group's sums: measured amounts, and how many runs had none."""

    runs: int = 0
    cost_usd: float = 0.0
    cost_unknown: int = 0       # runs whose cost was not measured
    tokens: int = 0
    tokens_unknown: int = 0     # runs whose tokens were not measured
    charged_usd: float = 0.0    # what the budget counted (a reservation for an unmeasured run)
    charged_unknown_usd: float = 0.0  # of which for the runs whose cost is unknown
    by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOKEN_FIELDS, 0))

    def add(self, cost: Any, tokens: Any, charged: Any, kinds: Mapping[str, Any]) -> None:
        """Count one run (or one model's share of it)."""
        self.runs += 1
        charged = charged if isinstance(charged, (int, float)) and not isinstance(charged, bool) else 0.0
        if isinstance(cost, (int, float)) and not isinstance(cost, bool):
            self.cost_usd += cost
        else:
            self.cost_unknown += 1
            self.charged_unknown_usd += charged
        if isinstance(tokens, int) and not isinstance(tokens, bool):
            self.tokens += tokens
            for kind in TOKEN_FIELDS:
                self.by_kind[kind] += kinds.get(kind) or 0
        else:
            self.tokens_unknown += 1
        self.charged_usd += charged

    def to_json(self) -> dict[str, Any]:
        return {"runs": self.runs, "cost_usd": round(self.cost_usd, 6), "cost_unknown_runs": self.cost_unknown,
                "tokens": self.tokens, "tokens_unknown_runs": self.tokens_unknown,
                "charged_usd": round(self.charged_usd, 6), "charged_unknown_usd": round(self.charged_unknown_usd, 6),
                **self.by_kind}


def ledger_files(layout: Layout, since: datetime | None = None) -> list[Path]:
    """The monthly archives (those not wholly before `since`), oldest first, then the current ledger."""
    floor = f"{since.astimezone():%Y-%m}" if since is not None else ""
    return [path for month, path in layout.ledger_archives() if month >= floor] + [layout.ledger_file]


def rows(layout: Layout, since: datetime | None = None, until: datetime | None = None) -> Iterator[dict[str, Any]]:
    """Every ledger row with a readable `ts` in [since, until), archives first; a row found twice (a rotation cut
    short leaves it in both files until the next one) is counted once."""
    seen: set[str] = set()
    for path in ledger_files(layout, since):
        for row in Ledger(path).rows():
            try:
                ts = parse_iso(str(row["ts"]))
            except (KeyError, ValueError):
                continue
            if (since is not None and ts < since) or (until is not None and ts >= until):
                continue
            key = json.dumps(row, sort_keys=True, default=str)
            if key in seen:
                continue
            seen.add(key)
            yield row


def report(found: Iterable[Mapping[str, Any]], by: str, *, since: datetime | None, now: datetime) -> dict[str, Any]:
    """The groups (largest cost first; by day, in date order) and the total."""
    if by not in GROUPINGS:
        raise ValueError(f"--by must be one of {', '.join(GROUPINGS)}")
    groups: dict[str, Figures] = {}
    total = Figures()
    for row in found:
        kinds = {kind: row.get(kind) for kind in TOKEN_FIELDS}
        total.add(row.get("cost_usd"), row.get("total_tokens"), row.get("charged_usd"), kinds)
        for key, cost, tokens, charged, parts in _shares(row, by):
            groups.setdefault(key, Figures()).add(cost, tokens, charged, parts)
    order = sorted(groups) if by == "day" else sorted(groups, key=lambda k: (-groups[k].cost_usd, k))
    return {"by": by, "since": iso(since) if since else None, "until": iso(now),
            "groups": [{"key": key, **groups[key].to_json()} for key in order], "total": total.to_json()}


def _shares(row: Mapping[str, Any], by: str) -> Iterator[tuple[str, Any, Any, Any, Mapping[str, Any]]]:
    """(group, cost, tokens, charged, token kinds) of one row: one share, or one per model."""
    kinds = {kind: row.get(kind) for kind in TOKEN_FIELDS}
    if by == "cadence":
        yield str(row.get("cadence") or "?"), row.get("cost_usd"), row.get("total_tokens"), row.get("charged_usd"), kinds
        return
    if by == "day":
        day = f"{parse_iso(str(row['ts'])).astimezone():%Y-%m-%d}"
        yield day, row.get("cost_usd"), row.get("total_tokens"), row.get("charged_usd"), kinds
        return
    models = per_model(row)
    if row.get("cost_usd") is None and row.get("total_tokens") is None:
        yield UNMEASURED, None, None, row.get("charged_usd"), {}
        return
    if not models:
        yield NO_MODEL, row.get("cost_usd"), row.get("total_tokens"), row.get("charged_usd"), kinds
        return
    for model, entry in sorted(models.items()):
        counts = [entry.get(kind) for kind in TOKEN_FIELDS]
        tokens = sum(counts) if all(isinstance(c, int) for c in counts) else None
        # The run's charge belongs to the run: it goes with its first model only, so it is not counted twice.
        charged = row.get("charged_usd") if model == min(models) else 0.0
        yield model, entry.get("cost_usd"), tokens, charged, entry


def per_model(row: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The row's usage per model: the ledger's `per_model`, or a raw `modelUsage` (the CLI's camelCase keys)."""
    found = row.get("per_model")
    if isinstance(found, dict) and found:
        return {str(m): e for m, e in found.items() if isinstance(e, dict)}
    raw = row.get("modelUsage")
    if isinstance(raw, dict):
        return {str(m): {_CAMEL[k]: v for k, v in e.items() if k in _CAMEL} for m, e in raw.items() if isinstance(e, dict)}
    return {}
