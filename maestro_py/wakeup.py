"""What wakes the daemon loop: watchdog events in `inbox/` (and for `STOP`), exits, signals, timers."""

from __future__ import annotations

import os
import queue
import select
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

try:  # Linux (watchdog 7): the inotify emitter's move pairing
    from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper
except ImportError:  # other platforms and versions: nothing to tune
    InotifyMoveEventGrouper = None  # type: ignore[assignment,misc]


# Files in the bus folder whose change the loop must see at once (consumer.json, which the loop
# itself rewrites, must not wake it, or an idle daemon would spin).
CONTROL_FILES = frozenset({"STOP", "circuit-open.json"})


class _Handler(FileSystemEventHandler):
    def __init__(self, wakeup: "Wakeup", inbox: Path) -> None:
        self.wakeup = wakeup
        self.inbox = str(inbox)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write", "closed"):
            return
        wake = False
        for raw in (getattr(event, "dest_path", ""), event.src_path):
            if not raw:
                continue
            path = Path(raw if isinstance(raw, str) else raw.decode(errors="replace"))
            if str(path.parent) == self.inbox:
                wake = True
                # A tick appears in inbox/ by rename (moved, dest_path) or by create; note its name.
                if event.event_type in ("created", "moved"):
                    self.wakeup.names.put(path.name)
            elif path.name in CONTROL_FILES:
                wake = True
        if wake:
            self.wakeup.set()


class Wakeup:
    """An event the loop waits on, set by watchdog, sub-session exits and signal handlers."""

    def __init__(self, inbox: Path, bus_dir: Path, *, watch: bool = True) -> None:
        self.inbox = inbox
        self.bus_dir = bus_dir
        self.watch = watch
        self.names: queue.SimpleQueue[str] = queue.SimpleQueue()
        # A self-pipe rather than threading.Event: a signal handler may write to it without taking a lock.
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._observer: Observer | None = None

    def start(self) -> bool:
        """Start watching; False (poll-only) if the platform's observer cannot start."""
        if not self.watch:
            return False
        if InotifyMoveEventGrouper is not None:
            # watchdog holds each IN_MOVED_FROM for 0.5 s to pair it with its IN_MOVED_TO, and later events
            # queue behind it: every claim (a rename out of inbox/) would delay the next tick's wake-up by up
            # to half a second. The bus needs no move pairing (a rename in reads as delete + create).
            InotifyMoveEventGrouper.delay = 0.0
        try:
            observer = Observer()
            handler = _Handler(self, self.inbox)
            observer.schedule(handler, str(self.inbox), recursive=False)
            observer.schedule(handler, str(self.bus_dir), recursive=False)
            observer.daemon = True
            observer.start()
        except Exception:  # noqa: BLE001 - inotify limits etc.: the poll fallback still works
            return False
        self._observer = observer
        return True

    def stop(self) -> None:
        """Stop the observer thread."""
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
        ready, _, _ = select.select([self._read_fd], [], [], max(0.0, timeout))
        if not ready:
            return False
        try:
            while os.read(self._read_fd, 4096):
                pass
        except BlockingIOError:
            pass
        return True

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
        out: list[str] = []
        while True:
            try:
                out.append(self.names.get_nowait())
            except queue.Empty:
                return out
