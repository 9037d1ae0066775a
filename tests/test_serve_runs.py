"""The run page (`GET /runs/{tick_id}`) of a real `maestro serve` over plain HTTP: the tick's header and its run's
transcript, HTML-escaped and masked, another attempt by `?attempt=N`, a live run refreshing itself, and the same
auth as the status page."""

from __future__ import annotations

import base64
import hashlib
import html
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from maestro_py.bus.store import Bus
from maestro_py.paths import Layout
from maestro_py.redact import MASK
from tests.fakes import SECRET, claimed_tick, run_log, stream_json, write_agent
from tests.serve_support import TOKEN, Served, bearer

HOSTILE = '<img src="http://192.0.2.1/x.png"><script>document.title="owned"</script>\x1b[2J\u202eevil'


def text(words: str) -> dict[str, Any]:
    return {"type": "assistant", "message": {"content": [{"type": "text", "text": words}]}}


def call(use_id: str, command: str) -> dict[str, Any]:
    return {"type": "assistant", "message": {"content": [
        {"type": "tool_use", "id": use_id, "name": "Bash", "input": {"command": command}}]}}


RESULT = {"type": "result", "subtype": "success", "is_error": False, "num_turns": 2, "duration_ms": 1500,
          "result": "done", "total_cost_usd": 0.25,
          "modelUsage": {"m": {"inputTokens": 100, "outputTokens": 20, "cacheReadInputTokens": 0,
                               "cacheCreationInputTokens": 0, "costUSD": 0.25}}}


@pytest.fixture
def agent(tmp_path: Path) -> Layout:
    return write_agent(tmp_path / "agent", "", {"memo": "Do it."})


@pytest.fixture
def serve(agent: Layout, tmp_path: Path):
    started: list[Served] = []

    def start(**env: object) -> Served:
        started.append(Served(agent, tmp_path, **env))
        return started[-1]

    yield start
    for served in started:
        served.stop()


def two_runs(layout: Layout) -> str:
    """A tick that failed its first attempt and settled after its second: each left a log."""
    bus = Bus(layout)
    claim = claimed_tick(bus)
    run_log(layout, claim, stream_json(text("first try"), {**RESULT, "is_error": True, "result": "API Error: 500"}),
            when=datetime(2030, 1, 1, 10, 0, 0))
    bus.retry(claim, "exit 1", max_attempts=3)
    bus.index.promote(bus.clock.now())
    claim = bus.claim(claim.tick.filename)
    assert claim is not None
    run_log(layout, claim, stream_json(text(f"{HOSTILE} key {SECRET}"), call("t1", f"echo {HOSTILE}"),
                                       {"type": "system", "subtype": "permission_denied", "tool_name": "Bash",
                                        "tool_use_id": "t2", "message": "not allowed"}, RESULT)
            + b"<b>not json</b>\n", when=datetime(2030, 1, 1, 10, 1, 0), stderr=f"warning {HOSTILE}\n".encode())
    bus.complete(claim)
    return claim.tick.id


def body_of(page: str, element: str) -> str:
    found = re.search(rf'<div id="{element}" class="transcript">(.*?</div>)</div>', page, re.S)
    assert found, page
    return found[1]


def test_the_run_page_shows_the_tick_and_its_last_run_escaped_and_masked(serve, agent: Layout) -> None:
    tick = two_runs(agent)
    s = serve()
    answer = s.request("GET", f"/runs/{tick}")
    assert answer.status == 200, answer.text
    page = answer.text
    assert answer.headers["content-type"].startswith("text/html")
    style = re.search(r"<style>(.*?)</style>", page, re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style[1].encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in answer.headers["content-security-policy"]
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    assert "<script" not in page and "<img" not in page and "<b>" not in page  # every text escaped
    assert "\x1b" not in page and "\u202e" not in page and SECRET not in page
    lines = re.findall(r'<div class="([a-z]+)">(.*?)</div>', body_of(page, "transcript"))
    shown = [(kind, html.unescape(words)) for kind, words in lines]
    visible = '<img src="http://192.0.2.1/x.png"><script>document.title="owned"</script>\\x1b[2J\\u202eevil'
    assert shown == [("text", f"{visible} key {MASK}"), ("call", f"→ Bash: echo {visible}"),
                     ("denied", "✗ Bash denied: not allowed"),
                     ("result", "= result success, 2 turns, 120 tokens, $0.2500, 1.5 s: done"),
                     ("note", "[not JSON] <b>not json</b>")]
    header = dict(re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", page))
    assert header["state"] == "done (done/)" and header["cadence"] == "memo" and header["attempts"] == "2"
    assert header["attempt shown"] == "2" and header["outcome"] == "ok"
    assert header["log"].endswith("-a2-" + tick[-6:] + ".stdout.log")
    assert re.findall(r'<a href="(/runs/[^"]+)"', page) == [f"/runs/{tick}?attempt=1", f"/runs/{tick}?attempt=2"]
    stderr = re.findall(r'<div class="stderr">(.*?)</div>', body_of(page, "stderr"))
    assert [html.unescape(x) for x in stderr] == [f"warning {visible}"]
    assert 'http-equiv="refresh"' not in page  # settled: nothing to refresh for

    first = s.request("GET", f"/runs/{tick}?attempt=1")
    assert first.status == 200 and "first try" in first.text and "key" not in first.text
    assert "= result error, 2 turns, 120 tokens, $0.2500, 1.5 s: API Error: 500" in html.unescape(first.text)
    for path, status in ((f"/runs/{tick}?attempt=3", 404), (f"/runs/{tick}?attempt=0", 400),
                         (f"/runs/{tick}?attempt=x", 400), ("/runs/20990101T000000Z-nosuchtick", 404),
                         ("/runs/-x", 400)):
        answer = s.request("GET", path)
        assert answer.status == status, (path, answer.text)
        assert answer.json()["status"] == status


def test_a_tick_that_never_ran_and_a_running_one(serve, agent: Layout) -> None:
    bus = Bus(agent)
    queued = bus.enqueue("memo")
    claim = claimed_tick(bus)  # held by this live process: running, to the page
    run_log(agent, claim, stream_json(text("working on it")))
    s = serve()
    page = s.request("GET", f"/runs/{queued.id}")
    assert page.status == 200 and "no run log: it has not run yet" in page.text
    page = s.request("GET", f"/runs/{claim.tick.id}")
    assert page.status == 200
    assert '<meta http-equiv="refresh" content="5">' in page.text
    assert "working on it" in page.text and "… running: no result yet" in page.text
    assert "<tr><th>attempt shown</th><td>1 (running)</td></tr>" in page.text


def test_the_run_page_is_behind_the_same_auth_as_the_status_page(serve, agent: Layout) -> None:
    tick = two_runs(agent)
    s = serve(MAESTRO_SERVE_TOKEN=TOKEN)
    refused = s.request("GET", f"/runs/{tick}")
    assert refused.status == 401 and refused.headers["www-authenticate"].startswith("Basic")
    assert SECRET not in refused.text and "memo" not in refused.text
    assert s.request("GET", f"/runs/{tick}?token={TOKEN}").status == 401  # never in the URL
    assert s.request("GET", f"/runs/{tick}", headers=bearer("wrong-token-0123456789")).status == 401
    assert s.request("GET", "/runs/20990101T000000Z-nosuchtick").status == 401  # nothing told before auth
    assert s.request("GET", f"/runs/{tick}", headers=bearer()).status == 200
    basic = "Basic " + base64.b64encode(f"me:{TOKEN}".encode()).decode()
    assert s.request("GET", f"/runs/{tick}", headers={"Authorization": basic}).status == 200


def test_without_credentials_only_a_direct_local_request_sees_a_run(serve, agent: Layout) -> None:
    tick = two_runs(agent)
    s = serve()
    assert s.request("GET", f"/runs/{tick}").status == 200
    assert s.request("GET", f"/runs/{tick}", headers={"X-Forwarded-For": "203.0.113.9"}).status == 403
    assert s.request("GET", f"/runs/{tick}", headers={"Host": "agent.example.com"}).status == 403
    webhook_only = serve(MAESTRO_WEBHOOK_SECRET="whs-0123456789abcdef")
    assert webhook_only.request("GET", f"/runs/{tick}").status == 401
