"""Inline handlers and guards for the example agent (imported by the daemon from the agent root)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def heartbeat(tick: dict) -> str:
    """Record that the agent is alive: a cheap, local duty that needs no model."""
    out = ROOT / "state" / "heartbeat.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"at": datetime.now(timezone.utc).isoformat(), "tick": tick["id"]}) + "\n")
    return "heartbeat written"


def has_new_mail(tick: dict) -> bool:
    """Escalate to the model only when the mail drop holds something (or the tick says so)."""
    if tick.get("payload", {}).get("force"):
        return True
    drop = ROOT / "mail"
    return drop.is_dir() and any(p.is_file() for p in drop.iterdir())
