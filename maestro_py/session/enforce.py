"""How the CLI enforces a cadence's permissions: a settings file of its own (content-addressed, 0600, under
`state/run-settings/`), the flags that make it the only policy in force, and the environment a run may see.

- `--settings FILE --setting-sources user`: files in the agent folder (`.claude/settings*.json`, hooks, its `env`
  block) cannot widen the policy; `--strict-mcp-config --mcp-config FILE` loads the cadence's servers only.
- Paths in rules are absolute (`//abs/path`); reads of the usual credential folders, the agent's `.env` and
  `state/` are denied, and so are edits of what configures the agent (`.claude/`, `.env`, `cadences.toml`,
  `.mcp.json`, `state/`).
- The environment is an allowlist (`child_environment`): what the CLI needs, the one credential in use and
  what `env_pass` names; `CLAUDE_CODE_SUBPROCESS_ENV_SCRUB=1` keeps that credential from the run's tools.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maestro_py.permissions import Permissions

# Read denials every run gets, relative to the home folder: folders (all below them) and files.
HOME_SECRET_DIRS = (".ssh", ".aws", ".config/gh", ".gnupg", ".docker", ".kube")
HOME_SECRET_FILES = (".netrc", ".claude/.credentials.json")
# What configures the agent: a run may not read the secrets among it, nor edit any of it.
AGENT_SECRETS = (".env", "state")
AGENT_CONFIG = (".claude", ".env", "cadences.toml", ".mcp.json", "state")

# The environment a run gets from the daemon's, by name (values of the daemon's own); all else is withheld.
PASSED = frozenset({"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TZ", "TMPDIR", "LANG", "LANGUAGE", "TERM",
                    "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME",
                    "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "SSL_CERT_DIR", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY",
                    "https_proxy", "http_proxy", "no_proxy", "ANTHROPIC_BASE_URL", "ANTHROPIC_MODEL",
                    "ANTHROPIC_SMALL_FAST_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL", "ANTHROPIC_DEFAULT_SONNET_MODEL",
                    "ANTHROPIC_DEFAULT_HAIKU_MODEL", "CLAUDE_CONFIG_DIR", "DISABLE_AUTOUPDATER", "DISABLE_TELEMETRY",
                    "DISABLE_ERROR_REPORTING", "MAX_THINKING_TOKENS", "BASH_DEFAULT_TIMEOUT_MS", "BASH_MAX_TIMEOUT_MS"})
PASSED_PREFIXES = ("LC_", "CLAUDE_CODE_")  # locale; the CLI's own settings (CLAUDE_CODE_OAUTH_TOKEN is a credential)
CREDENTIALS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")
SCRUB = "CLAUDE_CODE_SUBPROCESS_ENV_SCRUB"


def child_environment(env: Mapping[str, str], credential: str | None, env_pass: tuple[str, ...] = (), *,
                      scrub: bool = False) -> dict[str, str]:
    """What a run may see of `env`: the names in PASSED (and the LC_/CLAUDE_CODE_ prefixes), the one `credential`
    in use, and `env_pass`. Every other variable (the daemon's, `.env`'s) is withheld. `scrub`: the CLI strips the
    credential from its tools' environment (`Permissions.scrubs_credential` says when it may); always set, so the
    operator's environment cannot flip it."""
    out = {name: value for name, value in env.items()
           if (name in PASSED or name.startswith(PASSED_PREFIXES)) and name not in CREDENTIALS}
    if credential is not None and env.get(credential):
        out[credential] = env[credential]
    for name in env_pass:
        if name in env:
            out[name] = env[name]
    out[SCRUB] = "1" if scrub else "0"
    return out


def withheld(env: Mapping[str, str], child: Mapping[str, str]) -> list[str]:
    """The names of `env` a run does not get (names only: `dry-run` lists them)."""
    return sorted(name for name in env if name not in child)


def _abs(path: Path) -> str:
    return "/" + str(path)  # "//abs/path": the CLI's absolute form in rules ("/path" is relative to the file)


def settings_doc(permissions: Permissions, root: Path, home: Path) -> dict[str, Any]:
    """The CLI settings that enforce `permissions` for a run in `root` (the daemon's HOME is `home`)."""
    p = permissions
    deny = [f"Read({_abs(home / name)}/**)" for name in HOME_SECRET_DIRS]
    deny += [f"Read({_abs(home / name)})" for name in HOME_SECRET_FILES]
    deny += [f"Read({_abs(root / name)})" if name == ".env" else f"Read({_abs(root / name)}/**)"
             for name in AGENT_SECRETS]
    deny += [f"Edit({_abs(root / name)}/**)" if name in (".claude", "state") else f"Edit({_abs(root / name)})"
             for name in AGENT_CONFIG]
    deny += list(p.deny)
    if not p.mcp_servers:
        deny.append("mcp__*")
    perms: dict[str, Any] = {"defaultMode": p.permission_mode, "allow": list(p.allow), "deny": deny,
                             "blockReadsOutsideWorkingDirectories": True,
                             "additionalDirectories": [str(d) for d in resolved_dirs(p, root)]}
    if p.permission_mode != "bypassPermissions":
        perms["disableBypassPermissionsMode"] = "disable"
    doc: dict[str, Any] = {"permissions": perms, "enableAllProjectMcpServers": False}
    if not p.hooks:
        doc["disableAllHooks"] = True
    if p.sandbox == "off" or not p.runs_commands:  # it confines commands only
        doc["sandbox"] = {"enabled": False}
    else:
        doc["sandbox"] = {"enabled": True, "failIfUnavailable": p.sandbox == "required",
                          "allowUnsandboxedCommands": False, "autoAllowBashIfSandboxed": False,
                          "network": {"allowedDomains": list(p.allowed_domains)}}
    return doc


def resolved_dirs(permissions: Permissions, root: Path) -> list[Path]:
    """`add_dirs` as absolute paths (relative ones are under the agent root)."""
    return [(root / d).resolve() if not os.path.isabs(d) else Path(d) for d in permissions.add_dirs]


@dataclass(frozen=True)
class Enforcement:
    """The files a run's permissions need on disk and the flags that point the CLI at them."""

    settings: dict[str, Any]
    settings_path: Path
    mcp: dict[str, Any]
    mcp_path: Path
    flags: tuple[str, ...]

    @property
    def digest(self) -> str:
        """The policy's fingerprint: the settings file's name."""
        return self.settings_path.stem

    def files(self) -> tuple[tuple[Path, bytes], ...]:
        return ((self.settings_path, _encode(self.settings)), (self.mcp_path, _encode(self.mcp)))


def _encode(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def enforcement(permissions: Permissions, root: Path, folder: Path, home: Path) -> Enforcement:
    """What enforces `permissions`: the settings and MCP files in `folder` (`Layout.run_settings_dir`), named by the
    hash of both, and the flags."""
    doc = settings_doc(permissions, root, home)
    mcp = {"mcpServers": {name: dict(server) for name, server in permissions.mcp_servers.items()}}
    digest = hashlib.sha256(_encode(doc) + _encode(mcp)).hexdigest()[:16]
    settings_path, mcp_path = folder / f"{digest}.json", folder / f"{digest}.mcp.json"
    builtin = [tool for tool in permissions.tools if not tool.startswith("mcp__")]
    flags = ["--settings", str(settings_path), "--setting-sources", "user",
             "--permission-mode", permissions.permission_mode, "--tools", ",".join(builtin) or "",
             "--strict-mcp-config", "--mcp-config", str(mcp_path)]
    for folder_path in resolved_dirs(permissions, root):
        flags += ["--add-dir", str(folder_path)]
    if permissions.max_turns is not None:
        flags += ["--max-turns", str(permissions.max_turns)]
    return Enforcement(doc, settings_path, mcp, mcp_path, tuple(flags))


def materialise(files: tuple[tuple[Path, bytes], ...]) -> None:
    """Write each file once (0600, folder 0700), atomically; a file already there has this content by its name, and
    is touched: retention removes only the files of policies no run used for `MAESTRO_RETENTION_DAYS`."""
    for path, data in files:
        try:
            os.utime(path)  # one syscall per file and run
            continue
        except FileNotFoundError:
            pass
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
