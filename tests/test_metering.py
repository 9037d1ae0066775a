"""Parsing the CLI's json result: tokens from modelUsage only, and never a silent zero."""

from __future__ import annotations

import json
from typing import Any

import pytest

from maestro_py.session.metering import CliResult, Usage, parse_result


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
