"""The agent root's `.env`, read: its variables under the real environment's, or one line saying why it cannot be
read (not UTF-8, unreadable, absurdly large). What the variables mean is `config.py`'s business."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values

from maestro_py.errors import ConfigError
from maestro_py.paths import Layout

MAX_ENV_BYTES = 1024 * 1024


def load_env(layout: Layout, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment the daemon works with: `.env` under the root, overridden by the real environment.

    ConfigError (one line naming the file) if `.env` is not UTF-8, unreadable or absurdly large.
    """
    env: dict[str, str] = {}
    path = layout.env_file
    if path.is_file():
        try:
            if path.stat().st_size > MAX_ENV_BYTES:
                raise ConfigError(f"{path}: larger than {MAX_ENV_BYTES} bytes; is it the right file?", file=str(path))
            values = dotenv_values(path, encoding="utf-8")
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})", file=str(path)) from None
        env.update({k: v for k, v in values.items() if v is not None})
    env.update(os.environ if base is None else base)
    return env


def _not_utf8(path: Path) -> ConfigError:
    """The error for a `.env` that is not UTF-8, at its first byte that is not (the decoder's own offset counts from
    the chunk it was given, not from the start of the file), with that byte's line."""
    try:
        raw = path.read_bytes()[:MAX_ENV_BYTES]
        raw.decode("utf-8")
        start = 0
    except UnicodeDecodeError as exc:
        start = exc.start
    except OSError:
        return ConfigError(f"{path}: not UTF-8; save it as UTF-8", file=str(path))
    line = raw.count(b"\n", 0, start) + 1
    return ConfigError(f"{path}: not UTF-8 (line {line}, byte {start}); save it as UTF-8", file=str(path), line=line)
