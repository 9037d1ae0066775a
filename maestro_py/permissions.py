"""What a run may do: a cadence's permissions, as declared in `cadences.toml` (in `[defaults]` or per table).

The keys (`FIELDS`) are checked at load like every other key, with a one-line error. `Permissions` is the
checked value; `session.enforce` turns it into the CLI's own settings file and flags, so the CLI's permission
modes, permission rules and sandbox enforce it.

Decisions:
- The defaults are the least a useful run needs: `dontAsk` (a call no rule admits is denied, never prompted),
  the read-only tools (Read, Grep, Glob), no MCP server, no hooks, the sandbox required where the platform has
  one (Linux: bubblewrap; macOS: Seatbelt), no network, no variable of the daemon's environment beyond what the
  CLI itself needs.
- `bypassPermissions` needs `isolation = "external"`: a cadence says it runs in a container or VM of its own.
- A cadence that can write, run commands or reach the network (`acts`) refuses untrusted ticks (a webhook's
  text was written by anyone) unless it says `accept_untrusted = true`.
- `claude_args` may not carry a permission flag: there is one place to grant anything, and `dry-run` shows it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from maestro_py.registry_keys import Bad, choice, flag, integer, strings

MODES = ("dontAsk", "acceptEdits", "plan", "bypassPermissions")
SANDBOX = ("required", "preferred", "off")
ISOLATION = ("none", "external")
READ_ONLY_TOOLS = ("Read", "Grep", "Glob")
# Tools that change files, run commands or reach the network: a cadence granted one of them "acts".
EDIT_TOOLS = frozenset({"Edit", "Write", "MultiEdit", "NotebookEdit"})
ACTING_TOOLS = EDIT_TOOLS | {"Bash", "WebFetch", "WebSearch", "Task", "Agent"}
# The CLI's flags that grant or widen permissions: refused in `claude_args` (each has its key).
PERMISSION_FLAGS = {
    "--dangerously-skip-permissions": 'permission_mode = "bypassPermissions" with isolation = "external"',
    "--allow-dangerously-skip-permissions": 'permission_mode = "bypassPermissions" with isolation = "external"',
    "--permission-mode": "permission_mode", "--permission-prompt-tool": "permission_mode",
    "--permission-prompts": "permission_mode",
    "--allowedTools": "allow", "--allowed-tools": "allow", "--disallowedTools": "deny", "--disallowed-tools": "deny",
    "--tools": "tools", "--add-dir": "add_dirs", "--mcp-config": "mcp_servers", "--strict-mcp-config": "mcp_servers",
    "--settings": "the permission keys", "--setting-sources": "the permission keys", "--max-turns": "max_turns",
}
# The CLI release that understands every setting and flag `session.enforce` writes.
MIN_CLI = (2, 1, 337)

_RULE = re.compile(r"\A(?:mcp__[A-Za-z0-9_-]+(?:__[A-Za-z0-9_*-]+)?|[A-Z][A-Za-z]*)(?:\([^()\n]*\))?\Z")
_TOOL = re.compile(r"\A(?:[A-Z][A-Za-z]*|mcp__[A-Za-z0-9_-]+(?:__[A-Za-z0-9_*-]+)?)\Z")
_ENV_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
_DOMAIN = re.compile(r"\A(?:\*\.)?[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}"
                     r"[A-Za-z0-9])?)*\Z")


def has_sandbox(platform: str = sys.platform) -> bool:
    """Whether the CLI has a sandbox on this platform (bubblewrap on Linux, Seatbelt on macOS)."""
    return platform.startswith("linux") or platform == "darwin"


def _listed(pattern: re.Pattern[str], what: str) -> Callable[[Any], tuple[str, ...]]:
    def check(value: Any) -> tuple[str, ...]:
        items = strings(value)
        for item in items:
            if not pattern.match(item):
                raise Bad(f"each must be {what}", item)
        return items

    return check


def _mode(value: Any) -> str:
    return choice(MODES)(value)


def _servers(value: Any) -> dict[str, dict[str, Any]]:
    """`{name = {command = "…", args = […], env = {…}}}` or `{name = {type = "http", url = "…"}}`: the CLI's
    `mcpServers` shape, one table per server."""
    if not isinstance(value, dict):
        raise Bad('must be a table of servers, e.g. { github = { command = "gh-mcp", args = [] } }', value)
    for name, server in value.items():
        if not re.match(r"\A[A-Za-z0-9_-]{1,64}\Z", name):
            raise Bad("server names must be letters, digits, _ or - (at most 64)", name)
        if not isinstance(server, dict) or not ({"command", "url"} & set(server)):
            raise Bad(f"server {name} must be a table with a command or a url", server)
    return {name: dict(server) for name, server in value.items()}


def _own_names(names: tuple[str, ...]) -> tuple[str, ...]:
    for name in names:
        if name.startswith("MAESTRO_"):
            raise Bad("may not name maestro's own settings (MAESTRO_*): they are no business of a run", name)
    return names


FIELDS: dict[str, Callable[[Any], Any]] = {
    "permission_mode": _mode,
    "tools": _listed(_TOOL, "a tool name such as Read, Bash or mcp__server__tool"),
    "allow": _listed(_RULE, 'a permission rule such as "Bash(git diff *)" or "Read(//srv/data/**)"'),
    "deny": _listed(_RULE, 'a permission rule such as "Bash(curl *)" or "WebFetch"'),
    "add_dirs": strings,
    "mcp_servers": _servers,
    "hooks": flag,
    "sandbox": choice(SANDBOX),
    "allowed_domains": _listed(_DOMAIN, "a domain such as github.com or *.example.org"),
    "max_turns": integer(at_least=1, wording="an integer >= 1"),
    "env_pass": lambda value: _own_names(_listed(_ENV_NAME, "a variable name")(value)),
    "isolation": choice(ISOLATION),
    "accept_untrusted": flag,
    "memory_mb": integer(at_least=16, wording="an integer >= 16 (MiB)"),
    "max_processes": integer(at_least=1, wording="an integer >= 1"),
}


@dataclass(frozen=True)
class Permissions:
    """One cadence's permissions, defaults applied (see the module's doc)."""

    permission_mode: str = "dontAsk"
    tools: tuple[str, ...] = READ_ONLY_TOOLS
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    add_dirs: tuple[str, ...] = ()
    mcp_servers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    hooks: bool = False
    sandbox: str = "required" if has_sandbox() else "off"
    allowed_domains: tuple[str, ...] = ()
    max_turns: int | None = None
    env_pass: tuple[str, ...] = ()
    isolation: str = "none"
    accept_untrusted: bool = False
    memory_mb: int | None = None
    max_processes: int | None = None

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> "Permissions":
        """The permissions among a cadence's checked values (its own over `[defaults]`)."""
        return cls(**{key: values[key] for key in FIELDS if key in values})

    @property
    def acts(self) -> bool:
        """Whether a run can change files, run commands or reach the network (then untrusted input is refused)."""
        granted = set(self.tools) | {_tool_of(rule) for rule in self.allow}
        return (self.permission_mode in ("acceptEdits", "bypassPermissions") or bool(granted & ACTING_TOOLS)
                or bool(self.mcp_servers) or bool(self.allowed_domains) or self.hooks)

    @property
    def runs_commands(self) -> bool:
        """Whether a run has the Bash tool (the sandbox confines commands only)."""
        return "Bash" in self.tools

    @property
    def scrubs_credential(self) -> bool:
        """Whether the CLI strips the credential from what its tools, hooks and MCP servers inherit
        (`CLAUDE_CODE_SUBPROCESS_ENV_SCRUB=1`): where something unsandboxed could read the environment (commands
        with `sandbox = "off"`, an MCP server, a hook). Not elsewhere, because CLI 2.1.337 answers that variable
        by forcing the permission mode to `default`, running Bash unsandboxed, and writing 18 empty placeholder
        files (`.env`, `package.json`, `node_modules/` …) into the working folder (all measured); so not for
        `acceptEdits` or `bypassPermissions` either."""
        exposed = (self.runs_commands and self.sandbox == "off") or bool(self.mcp_servers) or self.hooks
        return exposed and self.permission_mode in ("dontAsk", "plan")

    def problem(self) -> tuple[str, str] | None:
        """(key, problem) when the keys contradict each other, else None."""
        if self.permission_mode == "bypassPermissions" and self.isolation != "external":
            return ("permission_mode", '"bypassPermissions" needs isolation = "external" (a container or VM of the '
                                       'cadence\'s own); use "dontAsk" with allow rules instead')
        if self.sandbox != "off" and not has_sandbox():
            return ("sandbox", f'this platform ({sys.platform}) has no sandbox for the CLI; set sandbox = "off"')
        return None

    def line(self) -> str:
        """The policy in one line (`doctor`, `cadences`, `dry-run`)."""
        parts = [self.permission_mode, "tools " + (",".join(self.tools) or "none")]
        if self.allow:
            parts.append("allow " + ",".join(self.allow))
        if self.deny:
            parts.append("deny " + ",".join(self.deny))
        parts.append(f"sandbox {self.sandbox}")
        parts.append("network " + (",".join(self.allowed_domains) if self.allowed_domains else "none"))
        if self.mcp_servers:
            parts.append("mcp " + ",".join(self.mcp_servers))
        if self.hooks:
            parts.append("hooks on")
        if self.add_dirs:
            parts.append("dirs " + ",".join(self.add_dirs))
        if self.env_pass:
            parts.append("env " + ",".join(self.env_pass))
        if self.max_turns:
            parts.append(f"max_turns {self.max_turns}")
        if self.memory_mb or self.max_processes:
            parts.append("limits " + ", ".join(x for x in (f"{self.memory_mb} MiB" if self.memory_mb else "",
                                                            f"{self.max_processes} procs" if self.max_processes
                                                            else "") if x))
        if self.isolation == "external":
            parts.append("isolation external")
        parts.append("untrusted input " + ("accepted" if self.accept_untrusted or not self.acts else "refused"))
        return "; ".join(parts)

    def refuses_untrusted(self) -> bool:
        return self.acts and not self.accept_untrusted


def _tool_of(rule: str) -> str:
    return rule.split("(", 1)[0]


def permission_flag(args: tuple[str, ...]) -> tuple[str, str] | None:
    """(flag, the key to use instead) for the first permission flag in `claude_args`, else None."""
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in PERMISSION_FLAGS:
            return name, PERMISSION_FLAGS[name]
    return None
