"""What a `handler` or `guard` string of cadences.toml is: the built-in `noop`, a `module:function`, or a shell-free
command. The registry checks the strings with `parse` when it loads; `inline` calls them."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Literal

NOOP = "noop"
FUNCTION_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*\Z")

Form = Literal["noop", "function", "command"]


@dataclass(frozen=True)
class Spec:
    """A parsed handler/guard string."""

    form: Form
    module: str | None = None
    function: str | None = None
    argv: tuple[str, ...] = ()


def parse(spec: str) -> Spec:
    """Classify `spec` as noop, `module:function` or a command; ValueError says why it is unusable."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("must be a non-empty string")
    text = spec.strip()
    if text == NOOP:
        return Spec("noop")
    if FUNCTION_RE.match(text):
        module, function = text.split(":")
        return Spec("function", module=module, function=function)
    try:
        argv = shlex.split(text)
    except ValueError as exc:  # unbalanced quotes, trailing backslash
        raise ValueError(f"cannot split command: {exc}") from None
    if not argv:
        raise ValueError("command is empty")
    return Spec("command", argv=tuple(argv))
