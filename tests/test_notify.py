"""The sd_notify protocol against real AF_UNIX datagram sockets (a path under tmp and an abstract one)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from maestro_py.daemon.sdnotify import NOTIFY_VARS, Notifier, scrub, status_line


class Listener:
    """A bound datagram socket standing in for systemd's notify socket."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address  # the NOTIFY_SOCKET value
        sock.settimeout(2.0)

    def recv(self) -> str:
        return self.sock.recv(4096).decode()

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(2.0)
        return False


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    folder = tmp_path
    if len(str(tmp_path / "notify.sock")) > 100:  # sun_path is 108 bytes
        folder = Path(tempfile.mkdtemp(prefix="mn-"))
    path = folder / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield Listener(sock, str(path))
    sock.close()


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    name = f"maestro-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    yield Listener(sock, "@" + name)
    sock.close()


class Clock:
    """An injected monotonic clock."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_without_notify_socket_everything_is_a_no_op() -> None:
    n = Notifier.from_env({"WATCHDOG_USEC": "1000000"})
    assert not n.enabled
    assert n.ready("x") is False and n.stopping() is False and n.status("s") is False and n.ping() is False
    assert n.watchdog_due(1e9) is False and n.seconds_until_ping(0.0) is None
    assert n._sock is None  # no socket was ever opened


def test_ready_reaches_a_socket_on_a_path(listener: Listener) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": listener.address})
    assert n.enabled and n.ready()
    assert listener.recv() == "READY=1"


def test_ready_reaches_an_abstract_socket(abstract_listener: Listener) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": abstract_listener.address})
    assert n.ready("running: 0 queued, 0 live sub-sessions")
    assert abstract_listener.recv() == "READY=1\nSTATUS=running: 0 queued, 0 live sub-sessions"
    n.close()


def test_stopping_is_sent_once(listener: Listener) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": listener.address})
    assert n.stopping("draining: 2 queued, 1 live sub-session")
    assert listener.recv() == "STOPPING=1\nSTATUS=draining: 2 queued, 1 live sub-session"
    assert n.stopping() is False
    assert n.stopping("draining: 2 queued, 0 live sub-sessions")  # later calls only update STATUS
    assert listener.recv() == "STATUS=draining: 2 queued, 0 live sub-sessions"
    assert listener.nothing_pending()


def test_status_is_one_line_and_not_repeated(listener: Listener) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": listener.address})
    assert n.status("running: 1 queued,\nREADY=1")
    assert listener.recv() == "STATUS=running: 1 queued, READY=1"  # a newline cannot smuggle a state
    assert n.status("running: 1 queued,\nREADY=1") is False
    assert n.status("running: 2 queued") and listener.recv() == "STATUS=running: 2 queued"
    assert listener.nothing_pending()


def test_watchdog_pings_at_half_the_interval(listener: Listener) -> None:
    clock = Clock(100.0)
    n = Notifier.from_env({"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "10000000"}, monotonic=clock)
    assert n.watchdog_interval == 5.0
    assert n.watchdog_due(100.0) and n.seconds_until_ping(100.0) == 0.0  # never pinged: due at once
    assert n.keepalive(100.0)
    assert listener.recv() == "WATCHDOG=1"
    assert not n.watchdog_due(104.9) and not n.keepalive(104.9)
    assert n.seconds_until_ping(103.0) == pytest.approx(2.0)
    assert listener.nothing_pending()
    assert n.watchdog_due(105.0) and n.keepalive(105.0)
    assert listener.recv() == "WATCHDOG=1"
    clock.now = 111.0
    assert n.ping()  # without an argument: the injected clock
    assert listener.recv() == "WATCHDOG=1"
    assert not n.watchdog_due(115.9) and n.watchdog_due(116.0)


def test_a_long_watchdog_is_pinged_every_30_seconds_all_the_same() -> None:
    """A sync that shortens WatchdogSec= (down to 60 s) while the daemon runs must not get it killed."""
    n = Notifier.from_env({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": str(1830 * 1_000_000)})
    assert n.watchdog_interval == 30.0


@pytest.mark.parametrize("env, armed", [
    ({"WATCHDOG_USEC": "60000000"}, True),
    ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "4242"}, True),
    ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, False),  # armed for someone else
    ({"WATCHDOG_USEC": "0"}, False),
    ({"WATCHDOG_USEC": "soon"}, False),
    ({}, False),
])
def test_watchdog_is_armed_only_for_us(listener: Listener, env: dict[str, str], armed: bool) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": listener.address, **env}, pid=4242)
    assert n.watchdog_due(0.0) is armed
    assert (n.watchdog_interval == 30.0) is armed


def test_watchdog_pid_defaults_to_this_process(listener: Listener) -> None:
    env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(env).watchdog_interval == 1.0


@pytest.mark.parametrize("address", ["", "vsock:2:1234", "relative/path"])
def test_unsupported_addresses_are_silent(address: str) -> None:
    assert not Notifier.from_env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}).enabled


def test_a_failed_send_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "later.sock"
    n = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
    assert n.ready() is False
    assert n.problem is not None and str(path) in n.problem
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(path))  # the manager came back: the next message goes through
        assert n.status("back") and n.problem is None
        assert sock.recv(100) == b"STATUS=back"
    finally:
        sock.close()


def test_scrub_removes_the_notify_variables() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "HOME": "/h"}
    scrub(env)
    assert env == {"HOME": "/h"}
    assert set(NOTIFY_VARS) == {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}


def test_status_line() -> None:
    assert status_line(state="running", queued=3, live=1) == "running: 3 queued, 1 live sub-session"
    assert status_line(state="draining", queued=0, live=2) == "draining: 0 queued, 2 live sub-sessions"


# -- the daemon, end to end -------------------------------------------------------------

def _collect(listener: Listener, until: str, seconds: float) -> list[str]:
    """Messages received until one contains `until` (or `seconds` pass)."""
    got: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        listener.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(listener.recv())
        except TimeoutError:
            break
        if until and until in got[-1]:
            break
    return got


def test_the_daemon_speaks_the_protocol(tmp_path: Path, listener: Listener) -> None:
    root = tmp_path / "agent"
    dump = tmp_path / "handler-env.txt"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MAESTRO_", "NOTIFY_", "WATCHDOG_"))}
    maestro = [sys.executable, "-m", "maestro_py", "--root", str(root)]
    subprocess.run([*maestro, "init"], check=True, capture_output=True, env=base)
    (root / "cadences.toml").write_text(f'[envdump]\nmode = "inline"\nhandler = "sh -c \'env > {dump}\'"\n')
    subprocess.run([*maestro, "enqueue", "envdump"], check=True, capture_output=True, env=base)
    env = {**base, "NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "600000", "WATCHDOG_PID": "",
           "MAESTRO_POLL_MS": "5000"}  # polling alone would sleep far past the 0.3 s ping interval
    proc = subprocess.Popen([*maestro, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        first = _collect(listener, "READY=1", 15)
        assert first and first[-1].startswith("READY=1\nSTATUS=running: "), first
        later = _collect(listener, "", 1.6)
        assert later.count("WATCHDOG=1") >= 3, later
        assert "STATUS=running: 0 queued, 0 live sub-sessions" in later or any(
            "0 queued" in m for m in first + later)
        handler_env = dump.read_text()
        assert "NOTIFY_SOCKET" not in handler_env and "WATCHDOG_USEC" not in handler_env
        proc.send_signal(signal.SIGTERM)
        stopping = _collect(listener, "STOPPING=1", 15)
        assert any(m.startswith("STOPPING=1") for m in stopping), stopping
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
