"""Fakes and plain helpers the tests share: a clock, a spawner, agent roots, daemon environments, waiting, reading."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, TypeVar

import psutil
import pytest
from click.testing import CliRunner, Result

from maestro_py.bus.claim import Claim
from maestro_py.bus.store import Bus
from maestro_py.bus.tickfile import read_tick_file
from maestro_py.cli import cli
from maestro_py.config import Settings
from maestro_py.daemon.loop import Daemon
from maestro_py.paths import Folder, Layout
from maestro_py.registry import Cadence
from maestro_py.session.metering import CliResult, Usage
from maestro_py.session.command import SpawnSpec, log_stamp
from maestro_py.session.runner import RunOutcome

REPO = Path(__file__).resolve().parent.parent
FAKE_CLAUDE = REPO / "tests" / "fake_claude.py"
SECRET = "sk-ant-test-DAEMONSECRET-0123456789abcdef"  # the key real `maestro` processes get from daemon_env

T = TypeVar("T")
_pids = itertools.count(900_000)
_DIRECTIVE = re.compile(rb"\[\[fake:([a-z0-9_]+)\]\]")


# -- time ------------------------------------------------------------------------------------------

class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=timezone.utc)
        self._mono = 1000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds


def wait_for(predicate: Callable[[], T], *, timeout: float = 15, what: str = "condition", interval: float = 0.02,
             explain: Callable[[], str] | None = None) -> T:
    """Poll `predicate` until it returns something truthy (returned); after `timeout` s the test fails (pytest.fail,
    with `explain()` appended, e.g. where the ticks are)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}" + (f": {explain()}" if explain else ""))
        time.sleep(interval)


def gone(pid: int) -> bool:
    """Dead, or a zombie waiting for its parent (or init) to reap it."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- the sub-session fake ------------------------------------------------------------------------------

def cli_result(kind: str) -> tuple[int | None, CliResult | None]:
    """(exit code, result) the real CLI gives for an outcome kind: ok, 400/401/403/429/500/529, garbage."""
    if kind == "ok":
        usage = Usage(0.00757, 1234, 56, 0, 0, {"claude-opus-4-8": {"input_tokens": 1234, "output_tokens": 56}})
        return 0, CliResult("success", False, None, "hi there", "sess-1", usage, {})
    if kind == "garbage":
        return 0, None
    status = int(kind)
    text = "Not logged in · Please run /login" if status == 401 else f"API Error: {status} (fake)"
    return 1, CliResult("success", True, status, text, "sess-1", Usage(0, 0, 0, 0, 0, {}), {})


@dataclass
class FakeSession:
    """A sub-session that ends when the test says so (or at once, for a scripted outcome)."""

    pid: int
    spec: SpawnSpec
    kind: str
    outcome: RunOutcome | None = None
    stop_requested: bool = False

    def finish(self, kind: str | None = None) -> None:
        code, result = cli_result(kind or self.kind)
        self.outcome = RunOutcome(self.pid, code, None, False, False, 5, result, "")

    def poll(self) -> RunOutcome | None:
        return self.outcome

    def wait(self, timeout: float | None = None) -> RunOutcome | None:
        return self.outcome

    def stop(self, grace: float | None = None) -> None:
        self.stop_requested = True
        if self.outcome is None:
            self.outcome = RunOutcome(self.pid, None, 15, False, True, 5, None, "")

    def kill(self) -> None:
        self.stop(0)


@dataclass
class FakeSpawner:
    """Replays outcomes: the prompt's `[[fake:KIND]]` directive, else `default`; `hang` never ends by itself."""

    default: str = "ok"
    sessions: list[FakeSession] = field(default_factory=list)

    def spawn(self, spec: SpawnSpec) -> FakeSession:
        match = _DIRECTIVE.search(spec.stdin)
        kind = match[1].decode() if match else self.default
        session = FakeSession(next(_pids), spec, kind)
        if kind != "hang":
            session.finish()
        self.sessions.append(session)
        return session

    @property
    def count(self) -> int:
        return len(self.sessions)

    def live(self) -> list[FakeSession]:
        return [s for s in self.sessions if s.outcome is None]


# -- the one mover, for bus tests ---------------------------------------------------------------------

def fail(bus: Bus, claim: Any, reason: str, *, max_attempts: int, retry_at: datetime | None = None,
         permanent: bool = False, **details: Any) -> str:
    """A failed attempt as the daemon settles it (the policy's verdict carried out): "retry" or "dlq"."""
    from collections import Counter

    from maestro_py.daemon.settle import carry_out
    from maestro_py.policy.verdict import Action, burnt

    verdict = burnt(claim.tick, reason, retry_at, None, max_attempts=max_attempts, permanent=permanent)
    carry_out(bus, claim, verdict, Counter(), **details)
    return "retry" if verdict.action is Action.RETRY else "dlq"


def reap(bus: Bus, *, max_reaps: int = 3, active: set[str] | None = None) -> list[str]:
    """Claims whose owner is gone, settled as the daemon's housekeeping settles them (`daemon.settle.reap`)."""
    from collections import Counter

    from maestro_py.daemon.settle import reap as settle_reap

    return settle_reap(bus, Counter(), max_reaps=max_reaps, active=active)


# -- an in-process daemon ------------------------------------------------------------------------------

def settings_env(**overrides: Any) -> dict[str, str]:
    """A settings environment for in-process daemons (no real claude needed: the spawner is fake)."""
    env = {"MAESTRO_BACKOFF_SECONDS": "0", "MAESTRO_MAX_ATTEMPTS": "10", "CLAUDE_BIN": "/bin/true",
           "ANTHROPIC_API_KEY": "sk-ant-test-RELIABILITY-0123456789"}
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def make_daemon(layout: Layout, clock: FakeClock, spawner: FakeSpawner, **env: object) -> Daemon:
    """A daemon on `layout` driven by hand (`step()`), with the fake clock and spawner; `env` overrides settings."""
    full = settings_env(**env)
    daemon = Daemon(layout, Settings.from_env(full), full, clock=clock, spawner=spawner, watch=False)
    daemon.guardrails.restore()
    return daemon


def run_steps(daemon: Daemon, n: int = 30) -> None:
    """`n` loop iterations."""
    for _ in range(n):
        daemon.step()


def enqueue(layout: Layout, clock: FakeClock, cadence: str, n: int = 1, payload: dict | None = None,
            *, same: bool = False) -> list[str]:
    """n ticks; distinct payloads unless `same` or `payload` (equal payloads are merged by overlap=skip)."""
    bus = Bus(layout, clock=clock, max_inbox=10_000)
    ids = []
    for i in range(n):
        body = payload if payload is not None else ({} if same else {"n": i})
        ids.append(bus.enqueue(cadence, payload=body).id)
        clock.advance(0.001)
    return ids


def attempts(layout: Layout, tick_id: str) -> int:
    """The attempts a tick waiting in `inbox/` has burnt."""
    return read_json(layout.folder(Folder.INBOX) / f"{tick_id}.json")["attempts"]


# -- agent roots and real `maestro` processes ----------------------------------------------------------

def write_agent(root: Path | Layout, registry: str = "", prompts: dict[str, str] | None = None,
                files: dict[str, str] | None = None) -> Layout:
    """An agent root on disk: its folders, `cadences.toml`, a `cadences/<name>.md` per prompt, and other `files`."""
    layout = root if isinstance(root, Layout) else Layout(root)
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.ensure()
    layout.registry_file.write_text(registry)
    layout.cadences_dir.mkdir(exist_ok=True)
    for name, text in (prompts or {}).items():
        layout.prompt_file(name).write_text(text)
    for name, text in (files or {}).items():
        (layout.root / name).write_text(text)
    return layout


def fast_fake_claude(folder: Path) -> Path:
    """fake_claude.py behind a shebang naming this interpreter: `#!/usr/bin/env python3` may go through a
    pyenv shim (~0.2 s per spawn here), which would make the sub-sessions, not the daemon, the bottleneck."""
    path = folder / "claude"
    if not path.exists():
        path.write_text(f"#!{sys.executable}\nimport runpy, sys\nsys.argv[0] = {str(FAKE_CLAUDE)!r}\n"
                        f"runpy.run_path({str(FAKE_CLAUDE)!r}, run_name='__main__')\n")
        path.chmod(0o755)
    return path


def maestro(layout: Layout, *args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """`maestro --root ROOT ARGS` in a process of its own (this checkout's code), output captured."""
    return subprocess.run([sys.executable, "-m", "maestro_py", "--root", str(layout.root), *args],
                          env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def start_daemon(layout: Layout, env: dict[str, str], *args: str) -> subprocess.Popen:
    """`maestro run ARGS` in the background, returned once it has written its status file."""
    proc = subprocess.Popen([sys.executable, "-m", "maestro_py", "--root", str(layout.root), "run", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    wait_for(lambda: layout.consumer_file.exists(), what="daemon status file")
    return proc


def spawns(tmp_path: Path) -> list[str]:
    """The fake claude's spawn log (see daemon_env): one line per run."""
    path = tmp_path / "spawns.txt"
    return path.read_text().split("\n")[:-1] if path.exists() else []


def daemon_env(tmp_path: Path, **extra: Any) -> dict[str, str]:
    """The environment of a real `maestro` process: no setting or credential of the machine, the fake claude
    (one line per run in tmp_path/spawns.txt), the key SECRET, short grace periods; `extra` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_", "MAESTRO_", "FAKE_"))}
    env.update({
        "CLAUDE_BIN": str(fast_fake_claude(tmp_path)),
        "ANTHROPIC_API_KEY": SECRET,
        "CLAUDE_CODE_FAKE_COUNT": str(tmp_path / "spawns.txt"),
        "MAESTRO_KILL_GRACE_SECONDS": "0.5",
        "MAESTRO_STOP_GRACE_SECONDS": "1",
        "PYTHONPATH": str(REPO),
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


# -- runs as the daemon leaves them ----------------------------------------------------------------------

def claimed_tick(bus: Bus, cadence: str = "memo") -> Claim:
    """A new tick of `cadence`, claimed by this process (alive: a running tick to every reader)."""
    tick = bus.enqueue(cadence)
    bus.index.promote(bus.clock.now())
    claim = bus.claim(tick.filename)
    assert claim is not None
    return claim


def run_log(layout: Layout, claim: Claim, data: bytes, *, when: datetime | None = None,
            stderr: bytes | None = None) -> Path:
    """The stdout log (and the stderr log, if given) a run of `claim` leaves, named as the daemon names them."""
    local = (when or datetime.now()).astimezone()
    out, err = layout.subsession_logs(local, claim.tick.cadence, log_stamp(local, claim.attempt, claim.tick.id))
    layout.subsessions_dir.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    if stderr is not None:
        err.write_bytes(stderr)
    return out


def stream_json(*objs: dict[str, Any]) -> bytes:
    """Lines of stream-json, as the CLI prints them."""
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


# -- the CLI in-process --------------------------------------------------------------------------------

def invoke(runner: CliRunner, root: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    """`maestro --root ROOT ARGS` through click's runner (see the `runner` fixture)."""
    return runner.invoke(cli, ["--root", str(root), *args], env=env)


def one_line_error(result: Result) -> str:
    """The single `maestro: ...` line a failed command prints on stderr."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("maestro: ")
    return lines[0]


# -- reading what the daemon left ------------------------------------------------------------------------

def names(layout: Layout, folder: Folder) -> list[str]:
    """Every entry of a bus folder, sorted."""
    return sorted(p.name for p in layout.folder(folder).iterdir())


def tick_ids(layout: Layout, folder: Folder) -> list[str]:
    """Ids of the tick files in a bus folder, sorted (quarantine notes left out)."""
    return sorted(n[:-5].split("@")[0] for n in names(layout, folder) if n.endswith(".json")
                  and not n.endswith(".reason.json"))


def read_json(path: Path) -> Any:
    """A JSON file's content; a tick file's with its appended records folded in (what every reader sees)."""
    text = path.read_text()
    try:
        return json.loads(text)
    except ValueError:
        stem = path.name[:-5] if path.name.endswith(".json") else path.name
        return read_tick_file(path, stem.partition("@")[0])[0].to_json()


def events(layout: Layout, *, lenient: bool = False) -> list[dict[str, Any]]:
    """Every bus event, oldest first; `lenient` skips lines a SIGKILL or a full disk tore (else they fail)."""
    out: list[dict[str, Any]] = []
    for path in sorted(layout.events_dir.glob("bus-*.jsonl")):
        for line in path.read_text(errors="replace" if lenient else "strict").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                if not lenient:
                    raise
    return out


def ledger_rows(layout: Layout) -> list[dict[str, Any]]:
    """Every row of the cost ledger (none while it does not exist); a torn line fails the test."""
    if not layout.ledger_file.exists():
        return []
    rows = []
    for line in layout.ledger_file.read_text(errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pytest.fail(f"torn ledger line: {line!r}")
    return rows


class FakeLive:
    """A stand-in for the daemon's live runs, as `Guardrails` sees them: a count and the cadences running."""

    def __init__(self) -> None:
        self.cadences: list[str] = []

    def count(self) -> int:
        return len(self.cadences)

    def ticks(self, cadence: str) -> list[str]:
        return [f"t{i}" for i, name in enumerate(self.cadences) if name == cadence]


def cadence_of(name: str = "memo", **overrides: Any) -> Cadence:
    """An escalate cadence with every setting at its default, `overrides` applied."""
    base = Cadence(name=name, mode="escalate", prompt=None, handler=None, guard=None, timeout_seconds=None,
                   max_attempts=None, model=None, claude_args=(), schedule=None, overlap="skip", max_budget_usd=None,
                   budget_tokens_daily=None, budget_usd_daily=None, reserve_tokens=None, reserve_usd=None,
                   budget_exempt=False, backoff_seconds=None, configured=True)
    return dataclasses.replace(base, **overrides)


# -- an alert receiver -----------------------------------------------------------------------------------

class FakeReceiver:
    """A loopback HTTP server standing in for Slack & co: apprise's `json://` URL posts each alert here.

    `mode`: "ok" answers 200; "hang" accepts and reads the request, then never answers (until `stop()`);
    "refuse" listens nowhere (its port was free a moment ago, so a connection is refused).
    """

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.posts: list[tuple[str, bytes]] = []  # (path, raw body)
        self.connections = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        if mode == "refuse":
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.port = sock.getsockname()[1]
            return
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._cond:
                    receiver.connections += 1
                    receiver._cond.notify_all()
                if receiver.mode == "hang":
                    receiver._stop.wait(60)  # bounded: stop() ends it
                    return
                with receiver._cond:
                    receiver.posts.append((self.path, body))
                    receiver._cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="fake-receiver", daemon=True).start()

    def url(self, path: str = "/alerts-hook") -> str:
        """The apprise URL that posts JSON here."""
        return f"json://127.0.0.1:{self.port}{path}"

    @property
    def alerts(self) -> list[dict[str, Any]]:
        """The alerts received so far (apprise's JSON: title, message, type), oldest first."""
        with self._cond:
            return [json.loads(body) for _, body in self.posts]

    def raw(self) -> bytes:
        """Every byte received, for secret checks."""
        with self._cond:
            return b"".join(path.encode() + body for path, body in self.posts)

    def wait(self, n: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until `n` alerts have arrived (the test fails after `timeout`); all of them."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.posts) >= n, timeout):
                pytest.fail(f"the receiver got {len(self.posts)} alerts, not {n}, within {timeout:g}s: {self.posts}")
        return self.alerts

    def titled(self, fragment: str) -> list[dict[str, Any]]:
        """The alerts whose title contains `fragment`."""
        return [a for a in self.alerts if fragment in a["title"]]

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
