"""The agent root's `.env`, read: its variables under the real environment's, or one line saying why it cannot be
read (not UTF-8, unreadable, absurdly large). What the variables mean is `config.py`'s business."""

from __future__ import annotations

import os
from collections.abc import Mapping

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
                raise ConfigError(f"{path}: larger than {MAX_ENV_BYTES} bytes; is it the right file?")
            values = dotenv_values(path, encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 (byte {exc.start}); save it as UTF-8") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None
        env.update({k: v for k, v in values.items() if v is not None})
    env.update(os.environ if base is None else base)
    return env
