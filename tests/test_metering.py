"""Parsing the CLI's json result: tokens from modelUsage only, and never a silent zero."""

from __future__ import annotations

import json
from typing import Any

import pytest

from maestro_py.session import metering
from maestro_py.session.metering import RESULT_WINDOW, CliResult, Usage, parse_result


def ok_result(**overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "result": "hi there",
        "session_id": "5b0f0a4e-0000-4000-8000-000000000001",
        "total_cost_usd": 0.00757,
        "usage": {"input_tokens": 1234, "output_tokens": 56,
                  "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0},
        "modelUsage": {
            "claude-opus-4-8": {"inputTokens": 1234, "outputTokens": 56, "cacheReadInputTokens": 0,
                                "cacheCreationInputTokens": 0, "costUSD": 0.00757, "contextWindow": 200000},
        },
    }
    obj.update(overrides)
    return obj


def parse(obj: Any) -> CliResult | None:
    return parse_result(json.dumps(obj).encode())


def test_ok_result_is_metered_from_model_usage() -> None:
    res = parse(ok_result())
    assert res is not None
    assert (res.subtype, res.is_error, res.api_error_status) == ("success", False, None)
    assert res.text == "hi there"
    assert res.session_id == "5b0f0a4e-0000-4000-8000-000000000001"
    u = res.usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_creation_tokens) == (1234, 56, 0, 0)
    assert u.cost_usd == pytest.approx(0.00757)
    assert u.total_tokens == 1290
    assert u.measured
    assert u.per_model["claude-opus-4-8"] == {
        "input_tokens": 1234, "output_tokens": 56, "cache_read_tokens": 0,
        "cache_creation_tokens": 0, "cost_usd": 0.00757,
    }


def test_cut_stream_fallback_ignores_zero_top_level_usage() -> None:
    # Non-streaming fallback: top-level usage is all zeros, modelUsage has the real counts.
    zeros = {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    res = parse(ok_result(usage=zeros))
    assert res is not None
    assert (res.usage.input_tokens, res.usage.output_tokens) == (1234, 56)
    assert res.usage.cost_usd == pytest.approx(0.00757)


def test_tokens_are_summed_over_models() -> None:
    # The hidden title request can go to another model; both count.
    model_usage = {
        "claude-opus-4-8": {"inputTokens": 1234, "outputTokens": 56, "cacheReadInputTokens": 30000,
                            "cacheCreationInputTokens": 2000, "costUSD": 0.03507},
        "claude-haiku-4-5": {"inputTokens": 100, "outputTokens": 10, "cacheReadInputTokens": 0,
                             "cacheCreationInputTokens": 0, "costUSD": 0.0002},
    }
    res = parse(ok_result(modelUsage=model_usage, total_cost_usd=0.03527,
                          usage={"input_tokens": 1234, "output_tokens": 56}))
    assert res is not None
    u = res.usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_creation_tokens) == (1334, 66, 30000, 2000)
    assert u.total_tokens == 33400
    assert u.cost_usd == pytest.approx(0.03527)
    assert set(u.per_model) == {"claude-opus-4-8", "claude-haiku-4-5"}


def test_api_error_reports_a_measured_zero() -> None:
    obj = {"type": "result", "subtype": "success", "is_error": True, "api_error_status": 500,
           "result": "API Error: 500 Internal server error", "total_cost_usd": 0, "modelUsage": {},
           "usage": {"input_tokens": 0, "output_tokens": 0}}
    res = parse(obj)
    assert res is not None
    assert res.is_error is True and res.api_error_status == 500
    assert res.text == "API Error: 500 Internal server error"
    assert res.usage.measured
    assert res.usage.cost_usd == 0.0
    assert res.usage.total_tokens == 0
    assert res.usage.per_model == {}


def test_an_interrupted_request_in_flight_is_unknown_not_free() -> None:
    """After SIGINT mid-request the CLI prints error_during_execution with zeros: the abandoned request's
    usage was never reported to it (seen in the hung-API e2e test when the CLI answers SIGINT in time)."""
    obj = {"type": "result", "subtype": "error_during_execution", "is_error": True, "total_cost_usd": 0,
           "modelUsage": {}, "usage": {"input_tokens": 0, "output_tokens": 0}, "errors": ["aborted"],
           "terminal_reason": "aborted_streaming"}
    res = parse(obj)
    assert res is not None and res.is_error is True
    assert not res.usage.measured
    assert res.usage.cost_usd is None and res.usage.total_tokens is None
    # Turns it did finish before the interrupt are still reported as measured.
    finished = parse(ok_result(subtype="error_during_execution", is_error=True))
    assert finished is not None and finished.usage.measured and finished.usage.total_tokens == 1290


def test_errors_list_becomes_text() -> None:
    obj = ok_result(subtype="error_max_turns", is_error=True, errors=["Reached maximum number of turns (1)", "x"])
    del obj["result"]
    res = parse(obj)
    assert res is not None
    assert res.subtype == "error_max_turns"
    assert res.text == "Reached maximum number of turns (1); x"


def test_missing_model_usage_means_unknown_tokens() -> None:
    obj = ok_result()
    del obj["modelUsage"]
    res = parse(obj)
    assert res is not None
    u = res.usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_creation_tokens) == (None,) * 4
    assert u.total_tokens is None
    assert u.cost_usd == pytest.approx(0.00757)
    assert u.measured  # the cost was reported


@pytest.mark.parametrize("stdout", [b"", b"   \n", b"this is not json\n", b"{truncated", b"[1, 2]",
                                    b'{"type": "assistant"}', b"\xff\xfe\x00garbage"])
def test_no_result_is_none_not_zero(stdout: bytes) -> None:
    assert parse_result(stdout) is None


def test_unknown_usage_is_not_measured() -> None:
    u = Usage.unknown()
    assert not u.measured
    assert u.total_tokens is None
    assert u.to_row() == {"cost_usd": None, "input_tokens": None, "output_tokens": None, "cache_read_tokens": None,
                          "cache_creation_tokens": None, "total_tokens": None, "per_model": {}}


def test_junk_numbers_become_none() -> None:
    model_usage = {"m": {"inputTokens": "1234", "outputTokens": True, "cacheReadInputTokens": -5,
                         "cacheCreationInputTokens": 7.0, "costUSD": "0.1"}}
    res = parse(ok_result(modelUsage=model_usage, total_cost_usd="lots", api_error_status="500"))
    assert res is not None
    u = res.usage
    assert u.cost_usd is None
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_creation_tokens) == (None, None, None, 7)
    assert u.total_tokens is None
    assert u.per_model["m"]["cost_usd"] is None
    assert res.api_error_status is None


def test_one_unreadable_model_entry_makes_that_total_unknown() -> None:
    model_usage = {"a": {"inputTokens": 10, "outputTokens": 1, "cacheReadInputTokens": 0, "cacheCreationInputTokens": 0},
                   "b": {"inputTokens": "junk", "outputTokens": 2, "cacheReadInputTokens": 0,
                         "cacheCreationInputTokens": 0}}
    res = parse(ok_result(modelUsage=model_usage))
    assert res is not None
    assert res.usage.input_tokens is None
    assert res.usage.output_tokens == 3


def test_result_after_junk_lines_and_stream_json() -> None:
    lines = [
        b"Warning: no stdin data received in 3s, proceeding without it",
        json.dumps({"type": "system", "subtype": "init", "session_id": "s"}).encode(),
        json.dumps({"type": "system", "subtype": "api_retry", "attempt": 1}).encode(),
        json.dumps(ok_result(result="first")).encode(),
        json.dumps(ok_result(result="last")).encode(),
        b"trailing junk",
    ]
    res = parse_result(b"\n".join(lines) + b"\n")
    assert res is not None and res.text == "last"


def test_pretty_printed_result_after_junk() -> None:
    stdout = b"some banner\n" + json.dumps(ok_result(), indent=2).encode()
    res = parse_result(stdout)
    assert res is not None and res.usage.input_tokens == 1234


def test_to_row_is_flat_and_copied() -> None:
    res = parse(ok_result())
    assert res is not None
    row = res.usage.to_row()
    assert row["cost_usd"] == pytest.approx(0.00757)
    assert row["input_tokens"] == 1234 and row["total_tokens"] == 1290
    row["per_model"]["claude-opus-4-8"]["input_tokens"] = 0
    assert res.usage.per_model["claude-opus-4-8"]["input_tokens"] == 1234
    json.dumps(row)  # ledger-ready


def test_raw_keeps_the_whole_object() -> None:
    obj = ok_result(terminal_reason="completed")
    res = parse(obj)
    assert res is not None and res.raw == obj


# -- bounded search (issue 14, item 3: 80k stream-json lines without a result took 200 s) -------------------

ASSISTANT = json.dumps({"type": "assistant", "message": {"role": "assistant", "content": [
    {"type": "tool_use", "name": "Bash", "input": {"command": "make", "result": "pending"}}]}}).encode()


class ParseMeter:
    """Wraps metering's one JSON entry point and counts the characters it is handed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.chars = 0
        self._real = metering._result_or_none
        monkeypatch.setattr(metering, "_result_or_none", self)

    def __call__(self, text: str, *args: int) -> dict[str, Any] | None:
        self.calls += 1
        self.chars += len(text) - (args[0] if args else 0)
        return self._real(text, *args)


def test_many_lines_without_a_result_are_each_parsed_at_most_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each line names a "result" key, so each one must be parsed; the old join-from-every-line loop handed the
    # parser ~n²/2 lines' worth of text (here ~700 MB) and took seconds.
    stdout = b"\n".join([ASSISTANT] * 5000) + b"\n"
    meter = ParseMeter(monkeypatch)
    assert parse_result(stdout) is None
    assert meter.calls <= 5000 + 16
    assert meter.chars <= len(stdout)


def test_lines_that_cannot_be_a_result_are_not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    line = json.dumps({"type": "assistant", "message": {"content": [{"type": "text", "text": "hi"}]}}).encode()
    meter = ParseMeter(monkeypatch)
    assert parse_result(b"\n".join([line] * 20_000)) is None
    assert meter.calls == 0


def test_only_the_end_of_the_output_is_searched(monkeypatch: pytest.MonkeyPatch) -> None:
    bulk = b"\n".join([ASSISTANT] * (3 * RESULT_WINDOW // len(ASSISTANT))) + b"\n"
    result = json.dumps(ok_result(result="after megabytes")).encode()
    meter = ParseMeter(monkeypatch)
    res = parse_result(bulk + result + b"\n")
    assert res is not None and res.text == "after megabytes"
    assert meter.chars == len(result)  # found at once, from the end
    # Without a result, the work stops at the window: at most its size, not the 12 MiB printed.
    meter.chars = 0
    assert parse_result(bulk) is None
    assert meter.chars <= RESULT_WINDOW
    # A result further from the end than the window is not looked for (the run is charged its reservation).
    assert parse_result(result + b"\n" + bulk) is None


def test_pretty_printed_result_after_junk_and_before_a_trailing_line() -> None:
    pretty = json.dumps(ok_result(permission_denials=[{"tool": "Bash"}, {"tool": "Edit"}]), indent=2).encode()
    res = parse_result(b"{not json\n" + pretty + b"\nbye\n")
    assert res is not None and res.usage.input_tokens == 1234


def test_many_unclosed_lines_cost_a_bounded_number_of_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    meter = ParseMeter(monkeypatch)
    assert parse_result(b'{"a": [\n' * 50_000) is None
    assert meter.calls <= 16


def test_stream_json_counts_the_cli_s_retries() -> None:
    """The API's "do not retry" is visible only as the absence of `api_retry` lines in stream-json."""
    init = json.dumps({"type": "system", "subtype": "init", "session_id": "s"}, separators=(",", ":"))
    retry = json.dumps({"type": "system", "subtype": "api_retry", "attempt": 1, "error_status": 500},
                       separators=(",", ":"))
    err = ok_result(is_error=True, api_error_status=500, result="API Error: 500", modelUsage={}, total_cost_usd=0)
    for lines, expected in (([init, retry, retry], 2), ([init], 0), ([], None)):
        out = "\n".join([*lines, json.dumps(err, separators=(",", ":"))]).encode()
        res = parse_result(out)
        assert res is not None and res.api_retries == expected, lines


def test_the_last_rate_limit_event_is_read_from_the_stream() -> None:
    init = '{"type":"system","subtype":"init","session_id":"s"}'
    warn = '{"type":"rate_limit_event","rate_limit_info":{"status":"allowed_warning","utilization":0.95}}'
    rejected = '{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1796114461}}'
    err = json.dumps(ok_result(is_error=True, api_error_status=429, result="You've hit your session limit"),
                     separators=(",", ":"))
    res = parse_result("\n".join([init, warn, rejected, err]).encode())
    assert res is not None and res.rate_limit == {"status": "rejected", "resetsAt": 1796114461}
    res = parse_result("\n".join([init, err]).encode())
    assert res is not None and res.rate_limit is None
