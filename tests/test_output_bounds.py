"""Big output (issue 14, item 2): a per-run log cap, and logs redacted and read back in bounded memory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from maestro_py.config import Settings
from maestro_py.errors import ConfigError
from maestro_py.paths import Folder, Layout
from maestro_py.redact import MASK, Redactor
from maestro_py.session import runlog
from maestro_py.session.command import SpawnSpec
from maestro_py.session.metering import parse_result
from maestro_py.session.runner import ProcessSpawner
from tests.fakes import REPO, daemon_env, ledger_rows, read_json, tick_ids, write_agent

MIB = 1 << 20
KEY = "sk-ant-api03-" + "K" * 60
TOKEN = "plain-secret-token-value"
REDACTORS = [Redactor({"ANTHROPIC_AUTH_TOKEN": TOKEN})]
RESULT = json.dumps({"type": "result", "subtype": "success", "is_error": False, "result": "done",
                     "total_cost_usd": 0.01, "modelUsage": {}})

# A child that prints MB mebibytes of 1 KiB lines, then a result line.
BIG = ("import sys\nline = b'x' * 1023 + b'\\n'\nfor _ in range(int(sys.argv[1]) * 1024):\n"
       "    sys.stdout.buffer.write(line)\nsys.stdout.buffer.write(sys.argv[2].encode() + b'\\n')\n")
# A child that prints forever; on SIGTERM it prints a result and exits, as the CLI may.
ENDLESS = ("import signal, sys\nasked = []\nsignal.signal(signal.SIGTERM, lambda *_: asked.append(1))\n"
           "line = b'y' * 1023 + b'\\n'\nwhile not asked:\n    sys.stdout.buffer.write(line * 64)\n"
           "sys.stdout.buffer.write(b'\\n' + sys.argv[1].encode() + b'\\n')\n")
# Spawns BIG through the real spawner in this fresh process and reports its peak RSS before and after.
MEASURE = """
import json, os, resource, sys
from pathlib import Path
from maestro_py.session.command import SpawnSpec
from maestro_py.session.runner import ProcessSpawner
tmp, child, mb, result = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
spec = SpawnSpec(argv=[sys.executable, "-c", child, mb, result], env={"PATH": os.environ["PATH"]}, cwd=tmp,
                 stdin=b"", stdout_log=tmp / "out.log", stderr_log=tmp / "err.log", timeout=120, grace=1,
                 log_max_bytes=1024 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = ProcessSpawner().spawn(spec).wait(timeout=120)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_kib": after - before, "text": out.result.text if out and out.result else None,
                  "ok": bool(out and out.ok), "log": (tmp / "out.log").stat().st_size}))
"""


def spec(tmp_path: Path, argv: list[str], *, cap: int | None, timeout: float = 30) -> SpawnSpec:
    return SpawnSpec(argv=argv, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, cwd=tmp_path, stdin=b"",
                     stdout_log=tmp_path / "out.log", stderr_log=tmp_path / "err.log", timeout=timeout, grace=2,
                     log_max_bytes=cap)


# -- the spawner ---------------------------------------------------------------------------------------

def test_a_result_after_100_mib_of_output_is_found_in_bounded_memory(tmp_path: Path) -> None:
    # Before: the whole log was read, redacted, decoded and split in memory (200 MB of output: 635 MiB peak).
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path), BIG, "100", RESULT], cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["text"] == "done"
    assert report["log"] > 100 * MIB  # under the cap: kept whole
    assert report["grew_kib"] < 48 * 1024, report


def test_a_run_printing_forever_is_ended_at_the_cap(tmp_path: Path) -> None:
    s = spec(tmp_path, [sys.executable, "-c", ENDLESS, RESULT], cap=2 * MIB)
    out = ProcessSpawner().spawn(s).wait(timeout=30)
    assert out is not None, "the run was not ended"
    assert out.truncated and out.log_cap == 2 * MIB
    assert not out.timed_out and not out.stopped
    assert not out.ok  # even though it printed a success result when asked to stop
    assert out.result is not None and out.result.text == "done"  # the end of its output is kept: still metered
    log = s.stdout_log.read_bytes()
    assert len(log) <= 2 * MIB + 256
    assert log.endswith(b"\n[maestro: output truncated at 2 MiB; run ended]\n")
    assert b"bytes of output dropped here (over the 2 MiB cap)]\n" in log
    assert log.startswith(b"y" * 1023 + b"\n")
    assert "run ended" in out.tail


def test_a_run_under_the_cap_is_left_whole(tmp_path: Path) -> None:
    s = spec(tmp_path, [sys.executable, "-c", BIG, "1", RESULT], cap=2 * MIB)
    out = ProcessSpawner().spawn(s).wait(timeout=30)
    assert out is not None and out.ok and not out.truncated
    assert s.stdout_log.stat().st_size == MIB + len(RESULT) + 1


# -- settling a log --------------------------------------------------------------------------------------

def test_a_log_over_the_cap_keeps_its_start_and_end_in_bounded_memory(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    earlier = b"an earlier run's line\n"
    with log.open("wb") as f:
        f.write(earlier)
        for i in range(40 * 1024):
            f.write(f"{i:08d} {KEY} ".encode() + b"z" * 900 + b"\n")
        f.write(RESULT.encode() + b"\n")
    tracemalloc.start()
    try:
        runlog.settle(log, len(earlier), REDACTORS, cap=4 * MIB, ended=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MIB  # it was 40 MiB of secrets to mask: read whole, that is 40 MiB and more
    data = log.read_bytes()
    assert len(data) <= len(earlier) + 4 * MIB + 256
    assert data.startswith(earlier + b"00000000 " + MASK.encode())
    assert KEY.encode() not in data
    head, mark, tail = data.partition(b" bytes of output dropped here (over the 4 MiB cap)]\n")
    body, dropped = head.rsplit(b"\n[maestro: ", 1)
    assert mark and int(dropped.replace(b",", b"")) > 30 * MIB
    assert body.endswith(b"z" * 900) and re.match(rb"\d{8} \[REDACTED\] z", tail)  # cut on line ends
    assert tail.endswith(RESULT.encode() + b"\n[maestro: output truncated at 4 MiB; run ended]\n")
    res = parse_result(runlog.read_end(log, len(earlier), 4 * MIB))
    assert res is not None and res.text == "done"


def test_a_cut_through_one_long_line_leaves_no_piece_of_a_secret(tmp_path: Path) -> None:
    # One 6 MiB line cut to 2 MiB keeps [0, 1 MiB) and [5 MiB, 6 MiB): put a secret across each of those cuts.
    data = bytearray(b"x" * 6 * MIB)
    for at, secret in [(MIB - 5, TOKEN), (5 * MIB - 10, KEY)]:
        quoted = f' "{secret}" '.encode()
        data[at - 2:at - 2 + len(quoted)] = quoted
    log = tmp_path / "out.log"
    log.write_bytes(bytes(data))
    runlog.settle(log, 0, REDACTORS, cap=2 * MIB)
    out = log.read_bytes()
    assert len(out) <= 2 * MIB + 256 and b"dropped here" in out
    assert b"K" not in out and b"plain" not in out


def test_a_log_is_redacted_in_place_in_bounded_memory(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    # A key straddling each 1 MiB chunk boundary and the token right after it.
    block = b"a" * (MIB - 20) + KEY.encode() + b" " + TOKEN.encode() + b"\n"
    with log.open("wb") as f:
        for _ in range(24):
            f.write(block)
    tracemalloc.start()
    try:
        runlog.settle(log, 0, REDACTORS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MIB
    assert log.read_bytes() == runlog.redact_bytes(block, REDACTORS) * 24
    assert os.stat(log).st_mode & 0o777 == 0o600


def test_a_log_without_secrets_is_not_rewritten(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    log.write_bytes(b"nothing to hide\n" * 100_000)
    inode = log.stat().st_ino
    runlog.settle(log, 0, REDACTORS, cap=4 * MIB)
    assert log.stat().st_ino == inode


# -- the streaming redactor ------------------------------------------------------------------------------

SECRETS = [KEY, TOKEN, json.dumps("quote\"d-secret-value")[1:-1], "sk-ant-oat01-" + "o" * 30]


@pytest.mark.parametrize("chunk", [1, 5, 16, 17, 33, 64, 1000])
def test_a_secret_split_across_chunks_is_still_masked(chunk: int) -> None:
    redactors = [Redactor({"ANTHROPIC_AUTH_TOKEN": TOKEN, "CLAUDE_CODE_OAUTH_TOKEN": "quote\"d-secret-value"})]
    # Secrets at every offset against a small span, so cuts land inside each of them somewhere.
    data = b"".join(b"." * gap + s.encode() + b"," for gap in range(0, 40, 3) for s in SECRETS) + b"x" * 100
    stream = runlog.StreamRedactor(redactors, span=max(len(s) for s in SECRETS) + 1)
    out = b"".join(stream.feed(data[i:i + chunk]) for i in range(0, len(data), chunk)) + stream.close()
    assert out == runlog.redact_bytes(data, redactors)
    assert not any(s.encode() in out for s in SECRETS)
    assert stream.changed


def test_endless_key_shaped_output_does_not_grow_the_redactor() -> None:
    stream = runlog.StreamRedactor(REDACTORS)
    stream.feed(b"sk-ant-")
    for _ in range(6):
        out = stream.feed(b"k" * runlog.CHUNK)
        assert len(stream._carry) <= 3 * runlog.CHUNK
    assert out  # output flows even though no cut is clean


# -- the setting and the daemon --------------------------------------------------------------------------

def test_the_run_log_cap_setting() -> None:
    assert Settings.from_env({}).run_log_max_mb == 64
    assert Settings.from_env({"MAESTRO_RUN_LOG_MAX_MB": "2"}).run_log_max_mb == 2
    for bad in ["0", "-1", "0.5", "5000", "1e400", "nan", "inf", "lots"]:
        with pytest.raises(ConfigError, match="MAESTRO_RUN_LOG_MAX_MB") as error:
            Settings.from_env({"MAESTRO_RUN_LOG_MAX_MB": bad})
        assert "\n" not in str(error.value)


def test_the_daemon_ends_a_run_printing_forever_and_records_it(layout: Layout, tmp_path: Path) -> None:
    flood = tmp_path / "claude-flood"
    flood.write_text(f"#!{sys.executable}\nimport signal, sys\nsignal.signal(signal.SIGINT, signal.SIG_DFL)\n"
                     "while True:\n    sys.stdout.buffer.write(b'w' * 65535 + b'\\n')\n")
    flood.chmod(0o755)
    write_agent(layout, "[memo]\nmax_attempts = 1\ntimeout_seconds = 60\n", {"memo": "Write the memo."})
    env = daemon_env(tmp_path, CLAUDE_BIN=str(flood), MAESTRO_RUN_LOG_MAX_MB="1")

    def maestro(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "maestro_py", "--root", str(layout.root), *args], env=env,
                              capture_output=True, text=True, timeout=60, cwd=REPO)

    tick = maestro("enqueue", "memo").stdout.strip()
    assert maestro("run", "--once").returncode == 0
    assert tick_ids(layout, Folder.DLQ) == [tick]
    last = read_json(layout.folder(Folder.DLQ) / f"{tick}.json")["history"][-1]
    assert last["truncated"] is True and last["failure_class"] == "transient"
    assert last["reason"] == "output over the 1 MiB cap; run ended"
    assert last["tail"].endswith("[maestro: output truncated at 1 MiB; run ended]\n")
    (log,) = layout.subsessions_dir.glob("*.stdout.log")
    assert log.stat().st_size <= MIB + 256
    (row,) = ledger_rows(layout)
    assert row["ok"] is False
