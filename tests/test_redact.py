"""Secrets are masked in everything the daemon writes, including when masked on encoded JSON text."""

from __future__ import annotations

import json

import pytest

from maestro_py.bus.events import EventLog
from maestro_py.paths import Layout
from maestro_py.redact import MASK, Redactor
from tests.fakes import fail

TOKEN = 'tok"en\\with/odd\tchars-0123456789'  # characters JSON escapes: quote, backslash, tab


@pytest.mark.parametrize("secret", [TOKEN, "plain-secret-value-42"])
def test_event_lines_mask_secrets_even_where_json_escapes_them(layout: Layout, clock, secret: str) -> None:
    log = EventLog(layout, clock=clock, redactor=Redactor({"ANTHROPIC_AUTH_TOKEN": secret}))
    log.emit("failed", id="t1", reason=f"auth failed for {secret}", nested={"k": [secret], secret: 1},
             other="sk-ant-api03-abcdefghijkl")
    (path,) = (layout.root / "logs" / "cadence-bus").glob("bus-*.jsonl")
    text = path.read_text()
    assert secret not in text and json.dumps(secret)[1:-1] not in text and "sk-ant-api03" not in text
    event = json.loads(text)
    assert event["reason"] == f"auth failed for {MASK}" and event["nested"] == {"k": [MASK], MASK: 1}
    assert event["other"] == MASK


def test_short_placeholders_are_not_masked() -> None:
    r = Redactor({"ANTHROPIC_API_KEY": "x"})
    assert r.text("x marks the spot") == "x marks the spot"
    assert r.json_line({"a": "x"}) == '{"a": "x"}'


def test_notify_urls_are_masked_whole_and_token_by_token() -> None:
    slack = "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ"
    tgram = "tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/987654321"
    ntfy = "ntfys://ntfy.sh/my-topic"
    hook = "json://user:pass%2Fword99@10.0.0.7:8080/hook?x=tokentoken"
    r = Redactor({"MAESTRO_NOTIFY_URLS": f"{slack}, {tgram} {ntfy},{hook}"})
    said = r.text(f"posting to {slack}; tokens T1JJ3T3L2 A1BRTD4JD TIiajkdnlazkcOXrIdevi7FQ, bot 123456789 "
                  "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw chat 987654321, topic my-topic at ntfy.sh, pass/word99 "
                  "tokentoken")
    for secret in ("T1JJ3T3L2", "A1BRTD4JD", "TIiajkdnlazkcOXrIdevi7FQ", "123456789",
                   "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw", "987654321", "my-topic", "pass/word99", "tokentoken",
                   "slack://"):
        assert secret not in said, secret
    assert "ntfy.sh" in said  # a host name is no secret (and masking it would hide ordinary text)


@pytest.mark.parametrize("secret", [TOKEN, "plain-secret-value-42"])
def test_tick_history_records_mask_secrets_in_the_file_and_in_memory(layout: Layout, clock, secret: str) -> None:
    from maestro_py.bus.store import Bus
    from maestro_py.bus.tickfile import read_tick_file
    from maestro_py.paths import Folder

    bus = Bus(layout, clock=clock, events=EventLog(layout, clock=clock,
                                                   redactor=Redactor({"ANTHROPIC_AUTH_TOKEN": secret})))
    tick = bus.enqueue("a")
    bus.index.promote(clock.now())
    claim = bus.claim(next(bus.index.heads()).name)
    fail(bus, claim, f"auth failed for {secret}", max_attempts=1, stderr_tail=[secret, "sk-ant-api03-abcdefghijkl"])
    path = layout.folder(Folder.DLQ) / tick.filename
    raw = path.read_text()
    assert secret not in raw and json.dumps(secret)[1:-1] not in raw and "sk-ant-api03" not in raw
    last = read_tick_file(path, tick.id)[0].history[-1]
    assert last["reason"] == f"auth failed for {MASK}" and last["stderr_tail"] == [MASK, MASK]
    assert claim.tick.history[-1] == last  # what the daemon holds is masked too
