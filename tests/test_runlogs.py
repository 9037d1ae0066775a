"""Reading a tick's run logs (`ops.runlogs`) and `maestro tick log` over hand-made runs: which run, bounded reading,
following a log that grows and is replaced at settle, secrets masked on the way out, terminal output escaped.
The real CLI end to end is in tests/e2e/test_tick_log_e2e.py."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from maestro_py.bus.logview import escape
from maestro_py.bus.store import Bus
from maestro_py.ops import runlogs
from maestro_py.ops.transcript import Entry
from maestro_py.paths import Layout
from maestro_py.redact import MASK, Redactor
from tests.fakes import SECRET, claimed_tick, daemon_env, maestro, run_log, stream_json, write_agent

HOSTILE = "\x1b]0;owned\x07\x1b[2J\x9b31m\u202eevil"


def text(words: str) -> dict[str, Any]:
    return {"type": "assistant", "message": {"content": [{"type": "text", "text": words}]}}


RESULT = {"type": "result", "subtype": "success", "is_error": False, "num_turns": 1, "result": "done",
          "total_cost_usd": 0.5, "modelUsage": {"m": {"inputTokens": 10, "outputTokens": 5, "cacheReadInputTokens": 0,
                                                      "cacheCreationInputTokens": 0, "costUSD": 0.5}}}


def test_runs_pairs_each_runs_logs_and_picks_the_last_or_an_attempt(layout: Layout) -> None:
    bus = Bus(layout)
    claim = claimed_tick(bus)
    first = run_log(layout, claim, b"a1\n", when=datetime(2030, 1, 1, 10, 0, 0), stderr=b"warn\n")
    bus.retry(claim, "failed", max_attempts=3)
    bus.index.promote(bus.clock.now())
    claim = bus.claim(claim.tick.filename)
    second = run_log(layout, claim, b"a2\n", when=datetime(2030, 1, 1, 10, 5, 0))
    found = runlogs.runs(layout, claim.tick)
    assert [(r.attempt, r.stdout, r.stderr is not None) for r in found] == [(1, first, True), (2, second, False)]
    assert runlogs.pick(found, None) == found[1] and runlogs.pick(found, 1) == found[0]
    assert runlogs.pick(found, 3) is None


def test_the_raw_view_masks_a_secret_split_between_reads_and_is_otherwise_the_bytes_written() -> None:
    out: list[bytes] = []
    raw = runlogs.Raw(out.append, Redactor({"ANTHROPIC_API_KEY": SECRET}))
    data = f'{{"k": "{SECRET}"}}\nplain\npartial {SECRET} line'.encode()
    cut = data.index(b"DAEMONSECRET") + 3
    raw.feed(data[:cut])
    raw.feed(data[cut:])
    raw.close(settled=True)
    assert b"".join(out) == data.replace(SECRET.encode(), MASK.encode())


def test_a_followed_log_replaced_at_settle_goes_on_from_the_next_line(layout: Layout) -> None:
    """The daemon redacts a log that held a secret into a new file when its run ends: the follower masks it on the
    way out meanwhile, and reads the new file from the first line it has not shown (no line twice, none lost)."""
    bus = Bus(layout)
    claim = claimed_tick(bus)
    path = run_log(layout, claim, stream_json(text(f"key {SECRET}")))
    shown: list[Entry] = []
    redactor = Redactor({"ANTHROPIC_API_KEY": SECRET})
    steps = [
        lambda: _append(path, stream_json(text("two"))[:-10]),  # a line still being written
        lambda: _append(path, stream_json(text("two"))[-10:] + stream_json(text("three"))),
        lambda: _replace(path, path.read_bytes().replace(SECRET.encode(), MASK.encode()) + stream_json(RESULT)),
        lambda: bus.complete(claim),
    ]

    def sleep(_: float) -> None:
        steps.pop(0)()

    seen = []
    run = runlogs.follow(layout, claim.tick, lambda r: runlogs.Shown(shown.append, redactor),
                         on_run=seen.append, sleep=sleep, poll=0)
    assert run is not None and seen == [run] and steps == []
    assert [e.text for e in shown] == [f"key {MASK}", "two", "three",
                                       "= result success, 1 turn, 15 tokens, $0.5000: done"]


def test_following_switches_to_a_retry_and_ends_when_the_owner_is_gone(layout: Layout) -> None:
    bus = Bus(layout)
    claim = claimed_tick(bus)
    run_log(layout, claim, stream_json(text("first try")), when=datetime(2030, 1, 1, 10, 0, 0))
    shown: list[str] = []
    heads: list[int] = []

    def retried() -> None:
        bus.retry(claim, "failed", max_attempts=3)
        bus.index.promote(bus.clock.now())
        again = bus.claim(claim.tick.filename)
        assert again is not None
        run_log(layout, again, stream_json(text("second try")), when=datetime(2030, 1, 1, 10, 1, 0))
        # a claim whose owner died (as if the daemon were SIGKILLed): the run is over for a follower
        dead = again.path.with_name(again.path.name.replace(bus.owner.token, "999999999-1"))
        os.rename(again.path, dead)

    steps = [retried]
    runlogs.follow(layout, claim.tick, lambda r: runlogs.Shown(lambda e: shown.append(e.text), Redactor({})),
                   on_run=lambda r: heads.append(r.attempt), sleep=lambda _: steps.pop(0)(), poll=0)
    assert heads == [1, 2] and steps == []
    no_result = ("= no result: the run ended without one (ended by maestro, killed, or its output cut): turns, "
                 "tokens and cost unknown")
    assert shown == ["first try", no_result, "second try", no_result]


def test_the_run_page_reads_a_huge_log_in_a_bounded_window(layout: Layout) -> None:
    bus = Bus(layout)
    claim = claimed_tick(bus)
    line = json.dumps(text("x" * 1000)).encode() + b"\n"
    count = (runlogs.PAGE_HEAD + runlogs.PAGE_TAIL) // len(line) + 3000
    path = run_log(layout, claim, line * count + stream_json(RESULT))
    entries = runlogs.page_transcript(path, Redactor({}), settled=True)
    assert len(entries) == runlogs.PAGE_ENTRIES + 1
    (note,) = [e for e in entries if e.kind == "note"]
    assert entries.index(note) == runlogs.PAGE_FIRST
    assert re.fullmatch(r"\[… [\d,]+ bytes of output not read and [\d,]+ display lines not shown here: "
                        r"`maestro tick log` shows them all …\]", note.text)
    assert entries[-1].kind == "result" and entries[0].text == "x" * 1000


def test_tick_log_through_the_entry_point_escapes_masks_and_says_why_when_there_is_no_log(tmp_path: Path) -> None:
    layout = write_agent(tmp_path / "agent", "", {"memo": "Do it."})
    bus = Bus(layout)
    claim = claimed_tick(bus)
    data = stream_json({"type": "system", "subtype": "init", "model": "m", "tools": []},
                  text(f"{HOSTILE} and the key {SECRET}"),
                  {"type": "assistant", "message": {"content": [
                      {"type": "tool_use", "id": "t", "name": "Bash", "input": {"command": f"echo {HOSTILE}"}}]}},
                  RESULT) + b"not json \x1b[31m red\n"
    run_log(layout, claim, data, stderr=f"warning {HOSTILE}\n".encode())
    bus.complete(claim)
    queued = bus.enqueue("memo")
    env = daemon_env(tmp_path)
    tick = claim.tick.id

    shown = maestro(layout, "tick", "log", tick[-6:], env=env)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[1] == f"\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\u202eevil and the key {MASK}"
    assert lines[2] == "→ Bash: echo \\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\u202eevil"
    assert lines[3:] == ["= result success, 1 turn, 15 tokens, $0.5000: done", "[not JSON] not json \\x1b[31m red"]
    assert all(line.isprintable() for line in lines) and SECRET not in shown.stdout
    assert shown.stderr.startswith(f"==> attempt 1 of tick {tick} (memo): ")

    raw = maestro(layout, "tick", "log", tick, "--raw", env=env)  # to a pipe: the bytes as written, masked
    assert raw.returncode == 0 and raw.stdout == data.decode().replace(SECRET, MASK)
    err = maestro(layout, "tick", "log", tick, "--stderr", env=env)
    assert err.stdout == f"warning {escape(HOSTILE)}\n"
    for args, code, words in (
            (["nosuchtick"], 1, "no tick matches 'nosuchtick'"),
            ([queued.id], 1, f"tick {queued.id} has not run yet: it is queued in inbox/"),
            ([tick, "--attempt", "2"], 1, f"tick {tick} has no log of attempt 2 (runs with a log: attempt 1)"),
            ([queued.id, "--follow"], 1, f"tick {queued.id} has not run yet: it is queued in inbox/"),
            ([tick, "--attempt", "0"], 2, "")):
        out = maestro(layout, "tick", "log", *args, env=env)
        assert out.returncode == code and out.stdout == "", (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1 and f"maestro: {words}" in out.stderr, out.stderr


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)
