"""The emergency stop: `state/cadence-bus/STOP` present means no sub-session may run."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

MAX_STOP_BYTES = 4096  # a reason is one line; anything longer is cut


def read_stop_file(path: Path) -> str | None:
    """The emergency stop's reason if the STOP file exists (its JSON `reason`, or its text), else None.

    Untrusted like every file an operator or a script can drop: never followed if a link, never blocked on
    if a FIFO, never read past MAX_STOP_BYTES. Anything present that is not a readable regular file still
    stops spending: the safe reading of "something is there".
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError:
        return "STOP file present (unreadable)"
    if not stat.S_ISREG(st.st_mode):
        return "STOP file present (not a regular file)"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return "STOP file present (not a regular file)" if exc.errno == errno.ELOOP else "STOP file present (unreadable)"
    try:
        data = os.read(fd, MAX_STOP_BYTES)
    except OSError:
        return "STOP file present (unreadable)"
    finally:
        os.close(fd)
    text = data.decode("utf-8", errors="replace").strip()
    try:
        doc = json.loads(text)
        return str(doc.get("reason") or "STOP file present")[:200] if isinstance(doc, dict) else text[:200] or "STOP file present"
    except ValueError:
        return text[:200] or "STOP file present"
