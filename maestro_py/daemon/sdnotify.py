"""The systemd notify protocol (sd_notify) over `$NOTIFY_SOCKET`, with the stdlib only.

A `Type=notify` service tells systemd READY=1 once it serves, WATCHDOG=1 at least every `WatchdogSec`
(we ping at half the interval, as sd_watchdog_enabled(3) advises, and at least every 30 s), STOPPING=1 when
it starts to drain, and STATUS=… for `systemctl status`. Without NOTIFY_SOCKET every call is a no-op, so the daemon calls
it unconditionally. A failed send is never fatal: the protocol is advisory, and a daemon that died
because systemd restarted its socket would be worse than one that missed a ping.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping, MutableMapping

NOTIFY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
# `maestro service sync` may shorten WatchdogSec= while the daemon runs (it follows the inline timeouts), and some
# systemd versions apply a reloaded WatchdogSec= at once: pinging at least this often (the shortest generated
# WatchdogSec= is 60 s) keeps such a reload from killing a healthy daemon. One datagram: cheap.
MAX_PING_INTERVAL = 30.0


class Notifier:
    """Sends sd_notify messages to one datagram socket; without an address it does nothing.

    Every message method returns True when a datagram was sent, False otherwise (no socket, nothing
    new to say, or a failed send, whose reason is kept in `problem`).
    """

    def __init__(self, address: str | None, watchdog_usec: int | None = None, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.address = address
        self.watchdog_interval: float | None = (min(watchdog_usec / 2_000_000, MAX_PING_INTERVAL) if watchdog_usec
                                                else None)
        self.problem: str | None = None  # why the last send failed, for a status line or an event
        self._monotonic = monotonic
        self._last_ping: float | None = None
        self._last_status: str | None = None
        self._stopping = False
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, pid: int | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> "Notifier":
        """From NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID; a no-op notifier when NOTIFY_SOCKET is unset."""
        address = env.get("NOTIFY_SOCKET") or None
        if address is not None and not address.startswith(("/", "@")):
            address = None  # vsock:… and friends: not ours to speak, stay silent rather than crash
        usec: int | None = None
        raw = env.get("WATCHDOG_USEC", "")
        if address is not None and raw.isdigit() and int(raw) > 0:
            usec = int(raw)
            watched = env.get("WATCHDOG_PID", "")
            if watched and watched != str(os.getpid() if pid is None else pid):
                usec = None  # the watchdog is armed for another process (we were started by a wrapper)
        return cls(address, usec, monotonic=monotonic)

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere."""
        return self.address is not None

    # -- the messages -------------------------------------------------------
    def ready(self, status: str | None = None) -> bool:
        """READY=1: start-up is complete (systemd considers the unit active from now)."""
        return self._send("READY=1", status)

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: draining has begun (sent once; later calls only update STATUS)."""
        if self._stopping:
            return self.status(status) if status else False
        self._stopping = True
        return self._send("STOPPING=1", status)

    def status(self, text: str) -> bool:
        """STATUS=<text> for `systemctl status`; an unchanged line is not resent."""
        if text == self._last_status:
            return False
        return self._send(None, text)

    def watchdog_due(self, now_monotonic: float) -> bool:
        """Whether a WATCHDOG=1 ping is due (never, if no watchdog is armed)."""
        if self.address is None or self.watchdog_interval is None:
            return False
        return self._last_ping is None or now_monotonic - self._last_ping >= self.watchdog_interval

    def seconds_until_ping(self, now_monotonic: float) -> float | None:
        """How long the caller may sleep before the next ping is due (None: no watchdog)."""
        if self.address is None or self.watchdog_interval is None:
            return None
        if self._last_ping is None:
            return 0.0
        return max(0.0, self._last_ping + self.watchdog_interval - now_monotonic)

    def ping(self, now_monotonic: float | None = None) -> bool:
        """WATCHDOG=1 (unconditionally); records the time for `watchdog_due`."""
        self._last_ping = self._monotonic() if now_monotonic is None else now_monotonic
        return self._send("WATCHDOG=1", None)

    def keepalive(self, now_monotonic: float) -> bool:
        """Ping if due; True if a ping was sent."""
        if not self.watchdog_due(now_monotonic):
            return False
        self.ping(now_monotonic)
        return True

    def close(self) -> None:
        """Release the socket (a later message opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- the wire -----------------------------------------------------------
    def _send(self, state: str | None, status: str | None) -> bool:
        lines = [state] if state else []
        if status is not None:
            lines.append("STATUS=" + _one_line(status))
        if self.address is None or not lines:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode("utf-8", errors="replace"), target)
        except OSError as exc:
            self.problem = f"sd_notify to {self.address}: {exc.strerror or exc}"
            self.close()
            return False
        if status is not None:
            self._last_status = status
        self.problem = None
        return True


def scrub(env: MutableMapping[str, str]) -> None:
    """Remove the notify variables so child processes cannot speak for us (sd_notify's unset_environment)."""
    for name in NOTIFY_VARS:
        env.pop(name, None)


def status_line(*, state: str, queued: int, live: int) -> str:
    """The short human STATUS= line: state, queue depth and live sub-sessions."""
    sessions = "sub-session" if live == 1 else "sub-sessions"
    return f"{state}: {queued} queued, {live} live {sessions}"


def _one_line(text: str) -> str:
    # A newline would start a new assignment: STATUS must never smuggle READY=1 or the like.
    return " ".join(text.split())[:400]
