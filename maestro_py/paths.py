"""Every path under an agent root, named once (nothing else builds bus paths)."""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime
from pathlib import Path


class Folder(str, enum.Enum):
    """The bus's state folders: a tick's state *is* the folder it lives in."""

    TMP = "tmp"
    INBOX = "inbox"
    CLAIMED = "claimed"
    DONE = "done"
    DLQ = "dlq"


def agent_name(text: str) -> str:
    """A label- and unit-name-safe agent name: lower case, [a-z0-9._-], never empty."""
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")[:64]
    return cleaned or "agent"


# Reverse-DNS, as launchd labels are: two or more dot-separated parts of letters, digits and inner hyphens.
_REVERSE_DNS = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+")


def launchd_prefix(text: str) -> str:
    """A launchd label prefix (`MAESTRO_LAUNCHD_PREFIX`), checked; ValueError says what is expected."""
    if not _REVERSE_DNS.fullmatch(text.strip()) or len(text.strip()) > 128:
        raise ValueError("must be a reverse-DNS prefix such as com.example.agents (letters, digits and inner "
                         "hyphens, two or more dot-separated parts)")
    return text.strip()


LEDGER_ARCHIVE = re.compile(r"^cost-ledger-(\d{4}-\d{2})\.jsonl\Z")  # `Layout.ledger_archive`'s names


@dataclass(frozen=True)
class Layout:
    """The file layout of one agent root."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def resolve(cls, root: str | os.PathLike[str] | None = None) -> "Layout":
        """`--root`, else `MAESTRO_AGENT_ROOT`, else the current directory."""
        chosen = root or os.environ.get("MAESTRO_AGENT_ROOT") or os.getcwd()
        return cls(Path(chosen).expanduser().resolve())

    def check_agent_root(self) -> None:
        """ConfigError unless this is an agent root: a folder with `.env`, `cadences.toml`, `cadences/` or `state/`
        (a typo in `--root` must not read as an empty agent and exit 0)."""
        from maestro_py.errors import ConfigError

        markers = (self.env_file, self.registry_file, self.cadences_dir, self.state_dir)
        if not self.root.is_dir():
            raise ConfigError(f"{self.root}: no such folder, so not an agent root; create one with "
                              f"`maestro --root {self.root} init`")
        if not any(path.exists() for path in markers):
            raise ConfigError(f"{self.root}: not an agent root (no .env, cadences.toml, cadences/ or state/); "
                              f"run `maestro --root {self.root} init` to make it one")

    # -- configuration ----------------------------------------------------
    @cached_property
    def env_file(self) -> Path:
        return self.root / ".env"

    @cached_property
    def registry_file(self) -> Path:
        return self.root / "cadences.toml"

    @cached_property
    def cadences_dir(self) -> Path:
        return self.root / "cadences"

    def prompt_file(self, cadence: str) -> Path:
        return self.cadences_dir / f"{cadence}.md"

    # -- state ------------------------------------------------------------
    @cached_property
    def state_dir(self) -> Path:
        return self.root / "state"

    @cached_property
    def bus_dir(self) -> Path:
        return self.state_dir / "cadence-bus"

    def folder(self, which: Folder) -> Path:
        return self._folders[which]

    @cached_property
    def _folders(self) -> dict[Folder, Path]:
        return {which: self.bus_dir / which.value for which in Folder}

    @cached_property
    def circuit_file(self) -> Path:
        return self.bus_dir / "circuit-open.json"

    @cached_property
    def consumer_file(self) -> Path:
        return self.bus_dir / "consumer.json"

    @cached_property
    def stop_file(self) -> Path:
        return self.bus_dir / "STOP"

    @cached_property
    def run_settings_dir(self) -> Path:
        """The CLI settings (and MCP) files that enforce each cadence policy, named by their content."""
        return self.state_dir / "run-settings"

    @cached_property
    def kill_dir(self) -> Path:
        """`maestro tick kill`'s requests to the daemon: one `<tick id>.json` each, removed once acted on."""
        return self.bus_dir / "kill"

    @cached_property
    def trigger_failures_dir(self) -> Path:
        """Triggers that could not deliver their tick, one small file each, until the daemon alerts them."""
        return self.bus_dir / "trigger-failures"

    @cached_property
    def lock_file(self) -> Path:
        return self.bus_dir / "daemon.lock"

    @cached_property
    def serve_keys_file(self) -> Path:
        """`maestro serve`'s idempotency keys (SQLite), kept 24 h."""
        return self.state_dir / "serve-keys.sqlite3"

    @cached_property
    def service_file(self) -> Path:
        """What `maestro service install|sync` last installed (manager, folder, options), for `sync` and autosync."""
        return self.state_dir / "service.json"

    @cached_property
    def ledger_file(self) -> Path:
        return self.state_dir / "cost-ledger.jsonl"

    @cached_property
    def root_id_file(self) -> Path:
        """This root's identity in a shared governor store (`state.root_id`)."""
        return self.state_dir / "root-id"

    def ledger_archive(self, month: str) -> Path:
        """Where retention moves the ledger rows of an earlier local month (`YYYY-MM`): the one name rule."""
        return self.state_dir / f"cost-ledger-{month}.jsonl"

    def ledger_archives(self) -> list[tuple[str, Path]]:
        """Every monthly ledger archive as (month, path), oldest first."""
        found = (LEDGER_ARCHIVE.match(path.name) for path in self.state_dir.glob("cost-ledger-*.jsonl"))
        return sorted((match[1], self.state_dir / match[0]) for match in found if match)

    @cached_property
    def metrics_file(self) -> Path:
        """Prometheus metrics for node_exporter's textfile collector (`--collector.textfile.directory=<root>/state`)."""
        return self.state_dir / "metrics.prom"

    @cached_property
    def fleet_outbox_file(self) -> Path:
        """Settles and releases the governor store has not taken yet (pushed when it is back)."""
        return self.state_dir / "fleet-outbox.jsonl"

    # -- logs -------------------------------------------------------------
    @cached_property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @cached_property
    def events_dir(self) -> Path:
        return self.logs_dir / "cadence-bus"

    def event_log(self, day: datetime) -> Path:
        return self.events_dir / f"bus-{day:%Y-%m-%d}.jsonl"

    @cached_property
    def subsessions_dir(self) -> Path:
        return self.events_dir / "subsessions"

    def subsession_logs(self, day: datetime, cadence: str, stamp: str) -> tuple[Path, Path]:
        """(stdout, stderr) log paths for one sub-session."""
        base = self.subsessions_dir / f"{day:%Y-%m-%d}-{cadence}-{stamp}"
        return Path(f"{base}.stdout.log"), Path(f"{base}.stderr.log")

    def ensure(self) -> None:
        """Create every runtime folder (idempotent): private (0700) when made, but `state/` (0711: a node_exporter of
        another user may read `state/metrics.prom` by its path, and list nothing)."""
        for folder, mode in ((self.state_dir, 0o711), (self.bus_dir, 0o700), (self.logs_dir, 0o700),
                             (self.events_dir, 0o700)):
            folder.mkdir(mode=mode, parents=True, exist_ok=True)
        for which in Folder:
            self.folder(which).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.subsessions_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
