"""`maestro service … --systemd --harden`: the sandboxing directives of the generated units.

Chosen so that the daemon's sub-sessions (a node CLI that runs Bash tools, which may run anything the agent
needs) keep working: no `MemoryDenyWriteExecute=` (node's JIT maps memory writable and executable), no
`SystemCallFilter=` (a tool's syscalls cannot be known in advance; a wrong guess kills it with SIGSYS), no
`RestrictNamespaces=` (the CLI's own sandbox on Linux, bubblewrap, creates namespaces), no `PrivateNetwork=`
or IP lists (the API is on the network). What stays is cheap: a read-only system and home, private `/tmp` and
`/dev`, no privilege gain, kernel knobs out of reach, a private umask and resource caps.

Per-user units (`--user`) run in a user namespace that systemd sets up for them (it needs unprivileged user
namespaces); some directives exist for system units only (systemd.exec(5)): `CapabilityBoundingSet=` (a user
unit with it fails with 218/CAPABILITIES), `ProtectControlGroups=` and `ProtectProc=`.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024 ** 3
# MemoryMax= of the daemon's unit: its own loop and inline handlers, plus one claude CLI per live sub-session.
# The CLI (node) takes ~300 MB for a short run and grows with its context; the Bash tools it starts (builds,
# tests) count in the same cgroup, so each live sub-session gets 2 GiB and the daemon 1 GiB.
MEMORY_BASE = 1 * GIB
MEMORY_PER_SESSION = 2 * GIB
# TasksMax= (threads and processes): node runs ~10 threads, a tool's process tree a few dozen more.
TASKS_BASE = 64
TASKS_PER_SESSION = 256

COMMON = (
    "NoNewPrivileges=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "PrivateMounts=yes",
    "ProtectSystem=strict",
    "ProtectHome=read-only",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "RestrictSUIDSGID=yes",
    "RestrictRealtime=yes",
    "LockPersonality=yes",
    "SystemCallArchitectures=native",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "UMask=0077",
)
SYSTEM_ONLY = (
    "CapabilityBoundingSet=",
    "ProtectControlGroups=yes",
    "ProtectProc=invisible",
)


@dataclass(frozen=True)
class Harden:
    """What `--harden` needs to know beyond the unit: the daemon's writable folders and its live-run cap."""

    writable: tuple[str, ...] = ()  # absolute paths the daemon writes besides the root; `-` first: may be missing
    home_writable: bool = False  # the home folder is among them (no CLAUDE_CONFIG_DIR): said in a comment
    max_live: int = 1


def limits(max_live: int) -> tuple[int, int]:
    """(MemoryMax= in bytes, TasksMax=) for a daemon that runs up to `max_live` sub-sessions at once."""
    live = max(1, max_live)
    return MEMORY_BASE + MEMORY_PER_SESSION * live, TASKS_BASE + TASKS_PER_SESSION * live


def _size(n: int) -> str:
    return f"{n // GIB}G" if n % GIB == 0 else f"{n // 1024 ** 2}M"


def directives(*, user: bool, writable: tuple[str, ...], daemon: bool, max_live: int = 1,
               home_writable: bool = False) -> list[str]:
    """The [Service] lines for one unit. `writable` are already escaped paths (a leading `-`: may be missing);
    `daemon` adds the resource caps and keeps the unit alive when the kernel kills one of its tools."""
    lines = [*COMMON, *(() if user else SYSTEM_ONLY)]
    if home_writable:
        lines.append("# The claude CLI replaces ~/.claude.json by renaming a file beside it, so the home folder stays "
                     "writable; set CLAUDE_CONFIG_DIR in .env to keep it read-only.")
    lines += [f"ReadWritePaths={path}" for path in writable]
    if daemon:
        memory, tasks = limits(max_live)
        # A tool killed for memory is one failed run: the daemon retries it, it must not be stopped with it.
        lines += [f"MemoryMax={_size(memory)}", f"TasksMax={tasks}", "OOMPolicy=continue"]
    return lines
