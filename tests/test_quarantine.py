"""Bad input in `inbox/` is quarantined with a reason while good ticks around it keep flowing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import pytest

from maestro_py.bus.store import Bus
from maestro_py.paths import Folder, Layout
from tests.fakes import FakeClock, events, names, read_json, tick_ids

GOOD = {"cadence": "good", "payload": {}}


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda inbox: (inbox / name).write_bytes(data)


def _symlink(inbox: Path) -> None:
    os.symlink("/etc/passwd", inbox / "passwd.json")


def _fifo(inbox: Path) -> None:
    os.mkfifo(inbox / "fifo.json")


def _directory(inbox: Path) -> None:
    (inbox / "dir.json").mkdir()
    (inbox / "dir.json" / "inner").write_text("x")


def _huge(inbox: Path) -> None:
    (inbox / "huge.json").write_bytes(b'{"cadence": "good", "pad": "' + b"x" * (1024 * 1024 + 10) + b'"}')


BAD: dict[str, tuple[Callable[[Path], None], str]] = {
    "garbage bytes": (_write("garbage.json", b"\xff\xfe\x00\x01binary"), "not valid UTF-8"),
    "truncated json": (_write("trunc.json", b'{"cadence": "go'), "not valid JSON"),
    "not an object": (_write("list.json", b"[1, 2, 3]"), "not a JSON object"),
    "no cadence": (_write("nocad.json", b'{"payload": {}}'), "missing required field 'cadence'"),
    "traversal cadence": (_write("trav.json", b'{"cadence": "../../etc"}'), "does not match"),
    "unicode cadence": (_write("uni.json", json.dumps({"cadence": "caf\u00e9"}).encode()), "does not match"),
    "uppercase cadence": (_write("upper.json", b'{"cadence": "Inbox"}'), "does not match"),
    "wrong payload type": (_write("ptype.json", b'{"cadence": "good", "payload": "text"}'), "payload must be"),
    "wrong attempts type": (_write("atype.json", b'{"cadence": "good", "attempts": "two"}'), "attempts must be"),
    "bad timestamp": (_write("ts.json", b'{"cadence": "good", "not_before": "soon"}'), "not an ISO 8601"),
    "nul byte": (_write("nul.json", b"{\"cadence\": \"good\", \"x\": \"\x00\"}"), "NUL"),
    "deep nesting": (_write("deep.json", b'{"cadence": "good", "payload": ' + b'{"a":' * 100 + b"1" + b"}" * 101),
                     "nested"),
    "id mismatch": (_write("mismatch.json", b'{"cadence": "good", "id": "other"}'), "does not match the file name"),
    "not json name": (_write("notes.txt", b'{"cadence": "good"}'), "not a tick file name"),
    "huge": (_huge, "larger than"),
    "symlink": (_symlink, "symbolic link"),
    "fifo": (_fifo, "FIFO"),
    "directory": (_directory, "directory"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_file_is_quarantined_with_a_reason(kind: str, bus: Bus, layout: Layout) -> None:
    make, reason = BAD[kind]
    before = bus.enqueue("good")
    make(layout.folder(Folder.INBOX))
    after = bus.enqueue("good")
    index = bus.index
    index.refresh(force=True)
    index.promote(bus.clock.now())
    claimed = []
    for _ in range(2):
        (head,) = list(index.heads())
        claimed.append(bus.claim(head.name).tick.id)
    assert claimed == [before.id, after.id]
    assert names(layout, Folder.INBOX) == []
    notes = [n for n in names(layout, Folder.DLQ) if n.endswith(".reason.json")]
    assert len(notes) == 1
    note = read_json(layout.folder(Folder.DLQ) / notes[0])
    assert reason in note["reason"]
    quarantined = layout.folder(Folder.DLQ) / note["file"]
    assert os.path.lexists(quarantined)
    assert [e["reason"] for e in events(layout) if e["stage"] == "quarantined"] == [note["reason"]]


def test_symlink_target_is_never_read_or_moved(bus: Bus, layout: Layout, tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(GOOD))
    os.symlink(outside, layout.folder(Folder.INBOX) / "link.json")
    bus.index.refresh(force=True)
    assert outside.read_text() == json.dumps(GOOD)  # untouched, still where it was
    assert os.path.islink(layout.folder(Folder.DLQ) / "link.json")


def test_unreadable_file_is_quarantined(bus: Bus, layout: Layout) -> None:
    path = layout.folder(Folder.INBOX) / "locked.json"
    path.write_text(json.dumps(GOOD))
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("running as root: permission bits do not stop reads")
    bus.index.refresh(force=True)
    assert "permission denied" in read_json(layout.folder(Folder.DLQ) / "locked.json.reason.json")["reason"]


def test_hand_written_minimal_tick_is_accepted(bus: Bus, layout: Layout) -> None:
    (layout.folder(Folder.INBOX) / "from-cron-42.json").write_text('{"cadence": "good"}')
    index = bus.index
    index.refresh(force=True)
    index.promote(bus.clock.now())
    (head,) = list(index.heads())
    claim = bus.claim(head.name)
    assert claim.tick.id == "from-cron-42" and claim.tick.source == "file" and claim.tick.attempts == 0


def test_quarantine_never_overwrites_an_earlier_one(bus: Bus, layout: Layout) -> None:
    inbox = layout.folder(Folder.INBOX)
    for _ in range(3):
        (inbox / "bad.json").write_text("nope")
        bus.index.refresh(force=True)
    assert sorted(n for n in names(layout, Folder.DLQ) if not n.endswith(".reason.json")) == [
        "bad.json", "bad.json.1", "bad.json.2"]


def test_claim_cost_does_not_grow_with_the_backlog(bus: Bus, layout: Layout) -> None:
    # Behavioural guard (not a timing): picking the next tick reads no other file.
    bus.max_inbox = 10_000
    for _ in range(300):
        bus.enqueue("good")
    index = bus.index
    index.refresh(force=True)
    reads = 0
    original = bus.inspect

    def counting(name: str):
        nonlocal reads
        reads += 1
        return original(name)

    bus.inspect = counting  # type: ignore[method-assign]
    index.promote(bus.clock.now())
    for _ in range(100):
        (head,) = list(index.heads())
        assert bus.claim(head.name) is not None
    index.refresh()  # the folder changed: a rescan lists it but reads no known file again
    assert reads == 0
    assert len(tick_ids(layout, Folder.CLAIMED)) == 100


# -- a tick written in place by a slow writer ------------------------------------------------------------

@pytest.fixture
def live_bus(layout: Layout) -> tuple[Bus, FakeClock]:
    """A bus whose fake clock starts at the real time, so files written now are fresh to it."""
    from datetime import datetime, timezone

    clock = FakeClock(datetime.now(timezone.utc))
    return Bus(layout, clock=clock), clock


def test_every_cut_of_a_tick_reads_as_unfinished() -> None:
    """The index waits on what parse_tick says of a file that ends too soon: pin that wording."""
    from datetime import datetime, timezone

    from maestro_py.bus.inbox import UNFINISHED
    from maestro_py.bus.tickfile import parse_tick
    from maestro_py.errors import TickInvalid

    data = ('{"cadence": "good", "payload": {"t": "caf\u00e9 \\u00e9 \\"q\\"", "n": -1.5e3, "ok": true, '
            '"no": false, "x": null, "l": [1, {}]}}').encode()
    for cut in range(len(data)):
        with pytest.raises(TickInvalid) as exc:
            parse_tick(data[:cut], stem="t", fallback_time=datetime.now(timezone.utc))
        assert str(exc.value).startswith(UNFINISHED), (data[:cut], str(exc.value))


def test_a_tick_written_in_two_parts_across_the_grace_is_waited_for(live_bus, layout: Layout) -> None:
    bus, clock = live_bus
    path = layout.folder(Folder.INBOX) / "slow.json"
    with open(path, "w") as fh:
        fh.write('{"cadence":')
        fh.flush()
        assert bus.index.refresh(force=True) == 0
        assert bus.index.pending() == ["slow.json"] and names(layout, Folder.DLQ) == []
        clock.advance(1.5)
        assert bus.index.refresh() == 0  # not written to since, still young: left alone
        fh.write(' "good"}')
    os.utime(path, (clock.now().timestamp(),) * 2)  # the second part lands 1.5 s (fake) after the first
    clock.advance(1.5)  # past the grace counted from the first part
    assert bus.index.refresh() == 1  # the folder did not change: the pending file is looked at anyway
    bus.index.promote(clock.now())
    assert [e.name for e in bus.index.heads()] == ["slow.json"] and bus.index.pending() == []
    assert names(layout, Folder.DLQ) == []


def test_a_file_that_stays_unfinished_is_quarantined_after_the_grace(live_bus, layout: Layout) -> None:
    from maestro_py.bus.inbox import FRESH_SECONDS

    bus, clock = live_bus
    (layout.folder(Folder.INBOX) / "torn.json").write_text('{"cadence": "go')
    bus.index.notice("torn.json")  # a wake-up event
    assert bus.index.pending() == ["torn.json"] and names(layout, Folder.DLQ) == []
    clock.advance(FRESH_SECONDS + 0.1)
    bus.index.refresh()
    assert bus.index.pending() == [] and names(layout, Folder.INBOX) == []
    assert "not valid JSON: Unterminated string" in read_json(layout.folder(Folder.DLQ) / "torn.json.reason.json")[
        "reason"]


@pytest.mark.parametrize("kind", ["garbage bytes", "not an object", "no cadence", "nul byte", "id mismatch",
                                  "not json name", "huge", "symlink", "fifo", "directory"])
def test_a_fresh_file_no_more_writing_can_fix_is_quarantined_at_once(kind: str, live_bus, layout: Layout) -> None:
    bus, _ = live_bus
    make, reason = BAD[kind]
    make(layout.folder(Folder.INBOX))
    bus.index.refresh(force=True)
    assert bus.index.pending() == [] and names(layout, Folder.INBOX) == []
    (note,) = [n for n in names(layout, Folder.DLQ) if n.endswith(".reason.json")]
    assert reason in read_json(layout.folder(Folder.DLQ) / note)["reason"]


def test_a_pending_file_that_vanishes_is_forgotten(live_bus, layout: Layout) -> None:
    bus, _ = live_bus
    path = layout.folder(Folder.INBOX) / "gone.json"
    path.write_text("")
    bus.index.refresh(force=True)
    assert bus.index.pending() == ["gone.json"]
    path.unlink()
    bus.index.refresh()
    assert bus.index.pending() == [] and names(layout, Folder.DLQ) == []
