"""Where a refused edit of `.env` or `cadences.toml` goes wrong: the file, the line (where it can be told) and the
reason, as the fields of the daemon's `env_invalid` and `registry_invalid` events and of the alerts made of them.

The errors say what is wrong (`ConfigError`, `RegistryError`); the line is found here, once, when the daemon
refuses an edit: the last assignment of the setting in `.env` (python-dotenv keeps the last), the TOML parser's
own line, or the line of the table and key a registry error names. A line that cannot be told is None.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from maestro_py.errors import ConfigError
from maestro_py.registry import RegistryError

MAX_READ = 1024 * 1024  # more than a `.env` (envfile.MAX_ENV_BYTES) or a sane registry: a bigger file is read this far
_TOML_AT = re.compile(r"\(at line (\d+), column \d+\)")
_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(?:#.*)?$")  # `[name]`, `["quoted name"]` (not `[[array]]`)


def env_fields(path: Path, exc: ConfigError) -> dict[str, Any]:
    """`file`, `line` and `reason` of an invalid `.env` (its file, or the setting it holds)."""
    line = exc.line
    if line is None and exc.setting is not None:
        line = assignment_line(path, exc.setting)
    file = exc.file or str(path)
    return {"file": file, "line": line, "reason": _reason(str(exc), file)}


def registry_fields(exc: ConfigError) -> dict[str, Any]:
    """`file`, `line` and `reason` of an invalid `cadences.toml`."""
    line = exc.line
    if isinstance(exc, RegistryError):
        if line is None:
            match = _TOML_AT.search(exc.problem)
            line = int(match[1]) if match else table_line(exc.path, exc.table, exc.key)
        file = str(exc.path)
    else:
        file = exc.file or ""
    return {"file": file or None, "line": line, "reason": _reason(str(exc), file)}


def assignment_line(path: Path, name: str) -> int | None:
    """The line of the last `NAME=…` (or `export NAME=…`) in the `.env` at `path`, or None."""
    pattern = re.compile(rf"^\s*(?:export\s+)?{re.escape(name)}\s*=")
    found = None
    for number, text in enumerate(_lines(path), 1):
        if pattern.match(text):
            found = number
    return found


def table_line(path: Path, table: str | None, key: str | None) -> int | None:
    """The line of `key` in `[table]` of the TOML file at `path` (the table's header when the key is not on a line
    of its own; a top-level key when there is no table), or None."""
    current: str | None = None  # the table the lines belong to (None: before the first header)
    header = None
    for number, text in enumerate(_lines(path), 1):
        match = _HEADER.match(text)
        if match:
            current = _unquote(match[1])
            if table is not None and current == table:
                header = number
                if key is None:
                    return number
            elif table is None and key is not None and current == key:
                return number  # a top-level name that is a table after all
            continue
        if key is not None and current == table and _is_key(text, key):
            return number
    return header


def _is_key(text: str, key: str) -> bool:
    head = text.split("=", 1)[0].strip() if "=" in text else ""
    return bool(head) and _unquote(head) == key


def _unquote(name: str) -> str:
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] and name[0] in "\"'":
        return name[1:-1]
    return name


def _lines(path: Path) -> list[str]:
    try:
        with open(path, "rb") as fh:
            return fh.read(MAX_READ).decode("utf-8", errors="replace").splitlines()
    except OSError:
        return []


def _reason(message: str, file: str) -> str:
    """The error without the file name it starts with (the alert names the file apart)."""
    return message[len(file) + 1:].strip() if file and message.startswith(f"{file}:") else message
