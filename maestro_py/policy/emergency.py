"""The emergency stop: `state/cadence-bus/STOP` present means no sub-session may run."""

from __future__ import annotations

import json
from pathlib import Path


def read_stop_file(path: Path) -> str | None:
    """The emergency stop's reason if the STOP file exists (its JSON `reason`, or its text), else None."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError:
        return "STOP file present (unreadable)"
    try:
        doc = json.loads(text)
        return str(doc.get("reason") or "STOP file present") if isinstance(doc, dict) else text or "STOP file present"
    except ValueError:
        return text[:200] or "STOP file present"
