"""What wakes the daemon loop: file events in `inbox/` (and for `STOP`), exits, signals, timers.

On Linux the loop reads inotify itself, through watchdog's bindings: the inotify descriptor sits in the
same `select` as the wake-up pipe, so a new tick wakes the loop directly. watchdog's `Observer` would
hand each event across two threads (its reader and its dispatcher); measured, that cost ~60 futex calls
per claimed tick in GIL hand-offs and added its hops to every pickup. Elsewhere (macOS FSEvents, BSD
kqueue) the `Observer` is used. If neither can start, the daemon polls.
"""

from __future__ import annotations

import ctypes
import os
import queue
import select
import struct
import time
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

try:  # Linux: watchdog's inotify bindings
    from watchdog.observers.inotify_c import InotifyConstants, inotify_add_watch, inotify_init
except Exception:  # noqa: BLE001 - UnsupportedLibcError, ImportError: not Linux
    InotifyConstants = None  # type: ignore[assignment,misc]


# Files in the bus folder whose change the loop must see at once (consumer.json, which the loop
# itself rewrites, must not wake it, or an idle daemon would spin).
CONTROL_FILES = frozenset({"STOP", "circuit-open.json"})

_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


class _Inotify:
    """One inotify descriptor watching `inbox/` for arrivals and the bus folder for control files."""

    def __init__(self, inbox: Path, bus_dir: Path) -> None:
        c = InotifyConstants
        arrivals = c.IN_CREATE | c.IN_MOVED_TO | c.IN_CLOSE_WRITE  # link/rename in, or a hand-written file
        gone = c.IN_DELETE_SELF | c.IN_MOVE_SELF  # the folder itself was removed or moved away
        self.overflow, self.watch_ended = c.IN_Q_OVERFLOW, c.IN_IGNORED | c.IN_MOVE_SELF
        self.inbox, self.bus_dir = inbox, bus_dir
        self.masks = (arrivals | gone | c.IN_ONLYDIR, arrivals | gone | c.IN_DELETE | c.IN_MOVED_FROM | c.IN_ONLYDIR)
        self.lost = False  # a watched folder was removed or replaced: `rewatch` when it is back
        fd = inotify_init()
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init: {os.strerror(err)}")
        self.fd = fd
        try:
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)  # sub-sessions must not hold it
            self.inbox_wd = self.bus_wd = -1
            self.rewatch()
            if self.lost:
                raise FileNotFoundError(f"cannot watch {inbox} and {bus_dir}")
        except BaseException:
            os.close(fd)
            raise

    def rewatch(self) -> None:
        """(Re)place both watches on the folders now at their paths; `lost` stays set while one is missing."""
        try:
            self.inbox_wd = self._watch(self.inbox, self.masks[0])
            self.bus_wd = self._watch(self.bus_dir, self.masks[1])
            self.lost = False
        except OSError:
            self.lost = True

    def _watch(self, path: Path, mask: int) -> int:
        wd = inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        return wd

    def read(self) -> tuple[list[str], bool, bool]:
        """Events queued so far: (names that arrived in inbox/, wake the loop?, did the queue overflow?)."""
        names: list[str] = []
        wake = overflowed = False
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return names, wake, overflowed
            if not buf:
                return names, wake, overflowed
            offset = 0
            while offset + _EVENT.size <= len(buf):
                wd, mask, _cookie, length = _EVENT.unpack_from(buf, offset)
                raw = buf[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                if mask & self.overflow:
                    overflowed = wake = True
                elif wd in (self.inbox_wd, self.bus_wd) and mask & self.watch_ended:
                    self.lost = overflowed = wake = True  # rescan, and watch the folder now at the path
                elif wd == self.inbox_wd:
                    wake = True
                    if raw:
                        names.append(os.fsdecode(raw))  # as os.scandir names it
                elif wd == self.bus_wd and os.fsdecode(raw) in CONTROL_FILES:
                    wake = True

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class _Handler(FileSystemEventHandler):
    """The `Observer` fallback's handler (runs on watchdog's thread)."""

    def __init__(self, wakeup: "Wakeup", inbox: Path) -> None:
        self.wakeup = wakeup
        self.inbox = str(inbox)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        wake = False
        for raw in (getattr(event, "dest_path", ""), event.src_path):
            if not raw:
                continue
            path = Path(raw if isinstance(raw, str) else raw.decode(errors="replace"))
            if str(path.parent) == self.inbox:
                wake = True
                # A tick appears in inbox/ by rename (moved, dest_path), by link/create, or is written by hand.
                if event.event_type in ("created", "moved", "closed"):
                    self.wakeup.names.put(path.name)
            elif path.name in CONTROL_FILES:
                wake = True
        if wake:
            self.wakeup.set()


class Wakeup:
    """What the loop sleeps on: file events, sub-session exits and signal handlers all end the sleep."""

    def __init__(self, inbox: Path, bus_dir: Path, *, watch: bool = True) -> None:
        self.inbox = inbox
        self.bus_dir = bus_dir
        self.watch = watch
        self.names: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.overflowed = False  # events were lost: the caller should rescan inbox/
        # A self-pipe rather than threading.Event: a signal handler may write to it without taking a lock.
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._inotify: _Inotify | None = None
        self._observer: Observer | None = None

    @property
    def mechanism(self) -> str:
        """How file events arrive: "inotify", "observer" (watchdog's thread) or "poll"."""
        return "inotify" if self._inotify else "observer" if self._observer else "poll"

    def start(self) -> bool:
        """Start watching; False (poll-only) if no watcher can start."""
        if not self.watch:
            return False
        if InotifyConstants is not None:
            try:
                self._inotify = _Inotify(self.inbox, self.bus_dir)
                return True
            except OSError:  # inotify limits: try the observer, else poll
                self._inotify = None
        try:
            observer = Observer()
            handler = _Handler(self, self.inbox)
            observer.schedule(handler, str(self.inbox), recursive=False)
            observer.schedule(handler, str(self.bus_dir), recursive=False)
            observer.daemon = True
            observer.start()
        except Exception:  # noqa: BLE001 - the poll fallback still works
            return False
        self._observer = observer
        return True

    def stop(self) -> None:
        """Stop watching."""
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def set(self) -> None:
        """Wake the loop now (safe from any thread and from signal handlers)."""
        try:
            os.write(self._write_fd, b"!")
        except BlockingIOError:
            pass  # the pipe is full: a wake-up is already pending

    def wait(self, timeout: float) -> bool:
        """Sleep until woken or `timeout` passes; True if woken."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            fds = [self._read_fd] if self._inotify is None else [self._read_fd, self._inotify.fd]
            ready, _, _ = select.select(fds, [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return False
            woken = self._read_fd in ready
            if woken:
                try:
                    while os.read(self._read_fd, 4096):
                        pass
                except BlockingIOError:
                    pass
            if self._inotify is not None and self._inotify.fd in ready:
                woken = self._read_inotify() or woken
            if woken:
                return True  # else only events that concern nobody (consumer.json rewrites): sleep on

    def close(self) -> None:
        """Stop watching and release the pipe."""
        self.stop()
        for fd in (self._read_fd, self._write_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def drain_names(self) -> list[str]:
        """Names of files seen arriving in `inbox/` since the last call."""
        if self._inotify is not None:
            self._read_inotify()
        out: list[str] = []
        while True:
            try:
                out.append(self.names.get_nowait())
            except queue.Empty:
                return out

    def _read_inotify(self) -> bool:
        assert self._inotify is not None
        names, wake, overflowed = self._inotify.read()
        if self._inotify.lost:  # until the folder is back, the loop's poll rescans cover it
            self._inotify.rewatch()
        for name in names:
            self.names.put(name)
        self.overflowed = self.overflowed or overflowed
        return wake
