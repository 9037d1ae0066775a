"""The stream-json renderer (`ops.transcript`) on the CLI's own line shapes and on hostile input: control characters,
lines of megabytes, lines that are not JSON. Pure: lines in, display lines out."""

from __future__ import annotations

import json
from typing import Any

from maestro_py.bus.logview import escape
from maestro_py.ops import transcript
from maestro_py.ops.transcript import MAX_LINE, TEXT_LINES, TEXT_WIDTH, WIDTH, Entry, LineReader, Transcript
from maestro_py.redact import Redactor

HOSTILE = "\x1b]0;owned\x07ESC\x1b[2J C1\x9b31m bidi\u202eevil bell\x07 cr\rdel\x7f"


def line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


def assistant(*blocks: dict[str, Any]) -> bytes:
    return line({"type": "assistant", "message": {"role": "assistant", "content": list(blocks)}})


def tool_result(use_id: str, content: Any, *, is_error: bool = False) -> bytes:
    return line({"type": "user", "message": {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": use_id, "content": content, "is_error": is_error}]}})


def result(**fields: Any) -> bytes:
    base = {"type": "result", "subtype": "success", "is_error": False, "num_turns": 3, "duration_ms": 2500,
            "result": "All done.", "total_cost_usd": 0.012112,
            "modelUsage": {"claude-opus-5-5": {"inputTokens": 2468, "outputTokens": 112, "cacheReadInputTokens": 0,
                                               "cacheCreationInputTokens": 0, "costUSD": 0.012112}},
            "permission_denials": []}
    return line({**base, **fields})


def texts(entries: list[Entry]) -> list[str]:
    return [e.text for e in entries]


# A run as CLI 2.1.337 writes it (shapes captured from a real run against the API fake, trimmed).
STREAM = [
    line({"type": "system", "subtype": "ui_invalidate", "event": "ui.render"}),
    line({"type": "system", "subtype": "init", "model": "claude-opus-5-5", "permissionMode": "default",
          "tools": ["Bash", "Read"], "claude_code_version": "2.1.337"}),
    assistant({"type": "tool_use", "id": "toolu_cat", "name": "Bash", "input": {"command": "cat /srv/outside.txt"}}),
    line({"type": "system", "subtype": "permission_denied", "tool_name": "Bash", "tool_use_id": "toolu_cat",
          "decision_reason_code": "outside_reads_blocked",
          "message": "Reads outside the working directories are blocked."}),
    assistant({"type": "tool_use", "id": "toolu_echo", "name": "Bash", "input": {"command": "echo hello"}}),
    tool_result("toolu_cat", "Reads outside the working directories are blocked.", is_error=True),
    assistant({"type": "tool_use", "id": "toolu_read", "name": "Read", "input": {"file_path": "/a/memo.md"}}),
    tool_result("toolu_read", [{"type": "text", "text": "1\tline one\n2\tline two\n3\tline three"}]),
    tool_result("toolu_echo", "hello"),
    assistant({"type": "tool_use", "id": "toolu_w", "name": "Write", "input": {"file_path": "/x", "content": "y"}}),
    tool_result("toolu_w", "<tool_use_error>Error: No such tool available: Write.</tool_use_error>", is_error=True),
    line({"type": "system", "subtype": "api_retry", "attempt": 1, "max_retries": 10, "retry_delay_ms": 612,
          "error_status": 529, "error": "overloaded"}),
    line({"type": "rate_limit_event", "rate_limit_info": {"status": "allowed"}}),
    line({"type": "rate_limit_event", "rate_limit_info": {"status": "allowed_warning", "rateLimitType": "five_hour",
                                                          "resetsAt": 1796104390, "utilization": 0.95}}),
    assistant({"type": "thinking", "thinking": "Let me sum up.\nmore"}, {"type": "text", "text": "All done.\n\nBye."}),
    result(result="All done.\n\nBye.", permission_denials=[
        {"tool_name": "Bash", "tool_use_id": "toolu_cat", "tool_input": {"command": "cat /srv/outside.txt"}}]),
]


def test_a_run_reads_as_a_person_reads_it() -> None:
    entries = transcript.render(STREAM)
    shown = [(e.kind, e.text) for e in entries]
    assert shown[:9] == [
        ("session", "· session: model claude-opus-5-5, permission mode default, tools: Bash, Read (claude 2.1.337)"),
        ("call", "→ Bash: cat /srv/outside.txt"),
        ("denied", "✗ Bash denied: Reads outside the working directories are blocked."),
        ("call", "→ Bash: echo hello"),
        # the denied call's error result is not said twice
        ("call", "→ Read: /a/memo.md"),
        ("ok", "← Read ok: 1\tline one (+2 lines)"),
        ("ok", "← Bash ok: hello"),
        ("call", "→ Write: /x"),
        ("error", "← Write error: Error: No such tool available: Write."),
    ]
    assert shown[9] == ("retry", "↻ API retry 1/10 in 0.6 s: overloaded (HTTP 529)")
    assert shown[10][0] == "limit" and shown[10][1].startswith("! usage limit allowed_warning (five_hour), resets ")
    assert shown[11:] == [
        ("thinking", "(thinking) Let me sum up."),
        ("text", "All done."), ("text", ""), ("text", "Bye."),
        ("result", "= result success, 3 turns, 2,580 tokens, $0.0121, 2.5 s"),  # its text was just shown
        ("denials", "✗ 1 call denied: Bash: cat /srv/outside.txt"),
    ]


def test_what_was_not_measured_is_unknown_never_zero() -> None:
    bare = {"type": "result", "subtype": "success", "is_error": False, "result": "ok"}
    (entry,) = transcript.render([line(bare)])
    assert entry.text == "= result success, turns unknown, tokens unknown, cost unknown: ok"
    interrupted = result(subtype="error_during_execution", is_error=True, total_cost_usd=0, modelUsage={},
                         errors=["aborted"], result=None)
    (entry,) = transcript.render([interrupted])
    assert entry.kind == "failed" and "$0" not in entry.text
    assert entry.text == "= result error_during_execution, 3 turns, tokens unknown, cost unknown, 2.5 s: aborted"
    api_error = result(is_error=True, api_error_status=500, total_cost_usd=0, modelUsage={}, num_turns=1,
                       result="API Error: 500 Internal server error\ndetails")
    (entry,) = transcript.render([api_error])
    # an empty modelUsage is a report (the CLI billed nothing), so these zeros are measured ones
    assert entry.text == ("= result error (HTTP 500), 1 turn, 0 tokens, $0.0000, 2.5 s: API Error: 500 Internal "
                          "server error")


def test_a_stream_without_its_result_says_so() -> None:
    lines = STREAM[:5]
    assert transcript.render(lines, settled=True)[-1] == Entry(
        "failed", "= no result: the run ended without one (ended by maestro, killed, or its output cut): turns, "
                  "tokens and cost unknown")
    assert transcript.render(lines, settled=False)[-1] == Entry("note", "… running: no result yet")


def test_control_characters_reach_the_caller_as_they_are_and_leave_escaped() -> None:
    lines = [assistant({"type": "text", "text": f"one {HOSTILE}\ntwo"},
                       {"type": "tool_use", "id": "t1", "name": f"Bash{HOSTILE}", "input": {"command": HOSTILE}}),
             tool_result("t1", f"{HOSTILE}\nsecond", is_error=True),
             line({"type": "system", "subtype": "permission_denied", "tool_name": HOSTILE, "message": HOSTILE}),
             result(result=HOSTILE, is_error=True)]
    entries = transcript.render(lines)
    assert [e.kind for e in entries] == ["text", "text", "call", "error", "denied", "failed"]
    assert entries[1].text == "two"  # a newline in the text starts a display line; nothing else does
    for entry in entries:
        shown = escape(entry.text)
        assert shown.isprintable() and "\x1b" not in shown and "\x9b" not in shown and "\u202e" not in shown
    assert escape(entries[0].text) == ("one \\x1b]0;owned\\x07ESC\\x1b[2J C1\\x9b31m bidi\\u202eevil bell\\x07 "
                                       "cr\\rdel\\x7f")


def test_a_line_of_five_megabytes_is_named_not_parsed() -> None:
    huge = assistant({"type": "text", "text": "x" * (5 << 20)})
    assert len(huge) > MAX_LINE
    (entry,) = Transcript().feed(huge)
    assert entry.kind == "note"
    assert entry.text == (f"[an assistant line of {len(huge):,} bytes not shown: over the 4 MiB a line is read to; "
                          "`--raw` has it]")
    # as LineReader keeps it: its first MAX_LINE bytes and its size
    (entry,) = Transcript().feed(huge[:MAX_LINE], len(huge))
    assert f"{len(huge):,} bytes" in entry.text


def test_megabytes_under_the_line_limit_are_cut_to_a_bounded_display() -> None:
    many = "\n".join(f"line {i} " + "y" * 50 for i in range(40_000))  # 2.3 MB of text in one block
    one = "z" * (3 << 20)  # 3 MB with no newline
    entries = transcript.render([assistant({"type": "text", "text": many}), assistant({"type": "text", "text": one}),
                                 assistant({"type": "tool_use", "id": "t", "name": "Bash", "input": {"command": one}}),
                                 tool_result("t", one)], settled=False)
    block = [e for e in entries if e.kind == "text"]
    assert len(block) == TEXT_LINES + 1 + 1 and block[TEXT_LINES].text == f"… ({40_000 - TEXT_LINES:,} more lines)"
    assert block[-1].text == "z" * (TEXT_WIDTH - 1) + "…"
    assert all(len(e.text) <= TEXT_WIDTH for e in entries)
    assert [len(e.text) for e in entries if e.kind in ("call", "ok")] == [WIDTH, WIDTH]


def test_lines_that_are_not_json_are_shown_as_notes_and_the_rest_goes_on() -> None:
    junk = [b"plain words", b"{not json", b'{"type": "assistant", "message": ', b"[1, 2]", b"null", b'"a string"',
            b"\xff\xfe\x00binary\x1b[31m", b"[" * 100_000, b"", b"   ",
            b"[maestro: 1,234 bytes of output dropped here]",
            line({"type": "assistant", "message": "not an object"}), line({"type": "assistant", "message": {
                "content": ["not a block", {"type": "tool_use"}, {"type": "text", "text": 5}]}}),
            line({"type": "user", "message": {"content": [{"type": "tool_result"}]}}),
            line({"type": "system", "subtype": "api_retry", "attempt": True, "retry_delay_ms": "soon"}),
            line({"type": "result", "num_turns": "many", "duration_ms": float("inf"), "modelUsage": []}),
            line({"type": "something_new", "x": 1}), line({"no": "type"}),
            line({"type": "assistant", "message": {"content": [{"type": "text", "text": "still here"}]}})]
    entries = transcript.render(junk)
    notes = [e.text for e in entries if e.kind == "note"]
    assert notes[:8] == ["[not JSON] plain words", "[not JSON] {not json",
                         '[not JSON] {"type": "assistant", "message":', "[not JSON] [1, 2]", "[not JSON] null",
                         '[not JSON] "a string"', "[not JSON] \ufffd\ufffd\x00binary\x1b[31m",
                         "[not JSON] " + "[" * (WIDTH - 1) + "…"]
    assert notes[8] == "[maestro: 1,234 bytes of output dropped here]"  # the daemon's own mark, as it is
    # odd shapes of known types say what they can; unknown types say nothing; the stream goes on after all of it
    assert texts(entries)[9:] == ["→ ?: ", "← tool ok", "↻ API retry True/?: error",
                                  "= result ?, turns unknown, tokens unknown, cost unknown", "still here"]
    assert all(len(e.text) <= 2 * WIDTH for e in entries)


def test_secrets_are_masked_in_what_is_shown() -> None:
    secret = "tok-THESERVETOKEN-0123456789"
    redactor = Redactor({"MAESTRO_SERVE_TOKEN": secret})
    lines = [assistant({"type": "tool_use", "id": "t", "name": "Bash", "input": {"command": f"echo {secret}"}}),
             tool_result("t", "sk-ant-api03-ABCDEFGHIJKLMNOP"),
             assistant({"type": "text", "text": f"the token is {secret}"})]
    shown = "\n".join(texts(transcript.render(lines, mask=redactor.text)))
    assert secret not in shown and "sk-ant-api03" not in shown and shown.count("[REDACTED]") == 3


def test_the_line_reader_keeps_at_most_its_cap_of_a_line() -> None:
    reader = LineReader(cap=1000)
    got = []
    data = b"first\n" + b"x" * 5_000_000 + b"\nsecond\nthird-no-newline"
    for at in range(0, len(data), 65536):
        got += reader.feed(data[at:at + 65536])
        assert len(reader._buf) <= 1000  # never more of a line than the cap, however long it is
    got += reader.close()
    assert [(g.data[:6], g.size) for g in got] == [(b"first", 5), (b"x" * 6, 5_000_000), (b"second", 6),
                                                   (b"third-", 16)]
    assert len(got[1].data) == 1000 and reader.close() == []
