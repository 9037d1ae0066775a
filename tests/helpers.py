"""Small helpers the tests share (reading folders and event logs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from maestro_py.paths import Folder, Layout


def names(layout: Layout, folder: Folder) -> list[str]:
    return sorted(p.name for p in layout.folder(folder).iterdir())


def tick_ids(layout: Layout, folder: Folder) -> list[str]:
    return sorted(n[:-5].split("@")[0] for n in names(layout, folder) if n.endswith(".json")
                  and not n.endswith(".reason.json"))


def events(layout: Layout) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(layout.events_dir.glob("bus-*.jsonl")):
        out.extend(json.loads(line) for line in path.read_text().splitlines())
    return out


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
