"""The STOP file is untrusted input: a FIFO, a link or a huge file must not block or confuse the daemon."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from maestro_py.policy.emergency import read_stop_file


def read_within(path: Path, seconds: float = 5.0) -> str | None:
    """read_stop_file in a thread, so a regression that blocks fails the test instead of hanging the suite."""
    box: list[str | None] = []
    worker = threading.Thread(target=lambda: box.append(read_stop_file(path)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert box, "read_stop_file blocked"
    return box[0]


def test_absent_means_no_stop(tmp_path: Path) -> None:
    assert read_within(tmp_path / "STOP") is None


def test_json_reason_and_plain_text(tmp_path: Path) -> None:
    stop = tmp_path / "STOP"
    stop.write_text('{"reason": "spend spike"}')
    assert read_within(stop) == "spend spike"
    stop.write_text("budget scare\n")
    assert read_within(stop) == "budget scare"


def test_a_fifo_stops_spending_without_blocking(tmp_path: Path) -> None:
    """It used to block the daemon forever (open + read on a FIFO with no writer), SIGTERM included."""
    os.mkfifo(tmp_path / "STOP")
    assert read_within(tmp_path / "STOP") == "STOP file present (not a regular file)"


def test_a_link_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret contents")
    os.symlink(secret, tmp_path / "STOP")
    assert read_within(tmp_path / "STOP") == "STOP file present (not a regular file)"


def test_a_huge_file_is_read_only_in_part(tmp_path: Path) -> None:
    (tmp_path / "STOP").write_bytes(b"x" * (8 << 20))
    assert read_within(tmp_path / "STOP") == "x" * 200
