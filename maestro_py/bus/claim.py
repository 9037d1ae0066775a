"""A claim: a tick held in `claimed/` under its holder's name (`claimed/<id>@<owner-token>.json`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from maestro_py.bus.tick import Tick

CLAIM_SEP = "@"  # claimed/<id>@<owner-token>.json


@dataclass
class Claim:
    """A tick this process holds in `claimed/`."""

    tick: Tick
    where: str | Path  # the claimed file (the bus passes a str: no Path is built on the hot path)

    @property
    def path(self) -> Path:
        return Path(self.where)

    @property
    def attempt(self) -> int:
        """The number of the attempt being made now (1-based)."""
        return self.tick.attempts + 1
