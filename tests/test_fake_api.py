"""The loopback Messages API fake on its own (no CLI): shapes, mode selection and shutdown."""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

E2E_DIR = Path(__file__).resolve().parent / "e2e"
if str(E2E_DIR) not in sys.path:
    sys.path.insert(0, str(E2E_DIR))

from fake_api import (  # noqa: E402
    FAKE_KEY,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    REPLY_TEXT,
    FakeMessagesAPI,
    find_directive,
)

MODEL = "claude-test-model"


@pytest.fixture
def api() -> Iterator[FakeMessagesAPI]:
    """A started fake, stopped after; fails the test if a handler raised."""
    fake = FakeMessagesAPI().start()
    try:
        yield fake
    finally:
        fake.stop()
    assert fake.server_errors == []


def _body(text: str = "hello", *, stream: bool = False, messages: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 100,
        "messages": messages if messages is not None else [{"role": "user", "content": text}],
    }
    if stream:
        body["stream"] = True
    return body


def _post(
    api: FakeMessagesAPI, body: dict[str, Any], *, key: str = FAKE_KEY, path: str = "/v1/messages?beta=true",
    timeout: float = 5,
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        api.url + path, data=json.dumps(body).encode(), method="POST",
        headers={"content-type": "application/json", "x-api-key": key, "anthropic-version": "2023-06-01"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def _sse_events(raw: bytes) -> list[dict[str, Any]]:
    events = []
    for frame in raw.decode().split("\n\n"):
        if not frame.strip():
            continue
        lines = dict(line.split(": ", 1) for line in frame.splitlines())
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        events.append(data)
    return events


def test_head_root_and_unknown_paths(api: FakeMessagesAPI) -> None:
    with urllib.request.urlopen(urllib.request.Request(api.url + "/", method="HEAD"), timeout=5) as resp:
        assert resp.status == 200
    status, headers, raw = _post(api, _body(), path="/v1/complete")
    assert status == 404
    assert json.loads(raw)["error"]["type"] == "not_found_error"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(api.url + "/v1/models", timeout=5)
    assert info.value.code == 404
    assert json.loads(info.value.read())["type"] == "error"
    info.value.close()
    assert [(r.method, r.path) for r in api.requests] == [("HEAD", "/"), ("POST", "/v1/complete"), ("GET", "/v1/models")]
    assert api.post_count() == 0


def test_streaming_shape(api: FakeMessagesAPI) -> None:
    status, headers, raw = _post(api, _body(stream=True))
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    events = _sse_events(raw)
    assert [e["type"] for e in events] == [
        "message_start", "ping", "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]
    start = events[0]["message"]
    assert start["model"] == MODEL and start["role"] == "assistant" and start["content"] == []
    assert start["usage"]["input_tokens"] == INPUT_TOKENS
    assert events[3]["delta"] == {"type": "text_delta", "text": REPLY_TEXT}
    assert events[5]["delta"]["stop_reason"] == "end_turn"
    assert events[5]["usage"]["output_tokens"] == OUTPUT_TOKENS


def test_non_streaming_shape_and_record(api: FakeMessagesAPI) -> None:
    status, headers, raw = _post(api, _body())
    assert status == 200 and headers["content-type"] == "application/json"
    msg = json.loads(raw)
    assert msg["type"] == "message" and msg["stop_reason"] == "end_turn"
    assert msg["content"] == [{"type": "text", "text": REPLY_TEXT}]
    assert msg["usage"]["input_tokens"] == INPUT_TOKENS and msg["usage"]["output_tokens"] == OUTPUT_TOKENS
    (rec,) = api.posts()
    assert rec.path == "/v1/messages" and rec.query == "beta=true"
    assert rec.headers["x-api-key"] == FAKE_KEY and rec.headers["anthropic-version"] == "2023-06-01"
    assert rec.json["model"] == MODEL and rec.body_size == len(json.dumps(_body()))
    assert rec.mode == "ok" and rec.stream is False and abs(rec.time - time.time()) < 60


@pytest.mark.parametrize(
    "mode,err_type",
    [("400", "invalid_request_error"), ("401", "authentication_error"), ("403", "permission_error"),
     ("404", "not_found_error"), ("413", "request_too_large"), ("429", "rate_limit_error"),
     ("500", "api_error"), ("529", "overloaded_error")],
)
def test_error_bodies(api: FakeMessagesAPI, mode: str, err_type: str) -> None:
    api.mode = mode
    for stream in (False, True):
        status, headers, raw = _post(api, _body(stream=stream))
        assert status == int(mode)
        body = json.loads(raw)
        assert body["type"] == "error"
        assert body["error"]["type"] == err_type and body["error"]["message"]
        assert headers["request-id"].startswith("req_")


def test_directive_parsing() -> None:
    assert find_directive(_body("plain")) is None
    assert find_directive(_body("x [[fake:500]] y [[fake:529]]")) == "529"
    blocks = [{"type": "text", "text": "<system-reminder>r</system-reminder>"}, {"type": "text", "text": "go [[fake:cut]]"}]
    assert find_directive(_body(messages=[{"role": "user", "content": blocks}])) == "cut"
    # The latest user message with a directive wins; tool_result contents and other roles are ignored.
    convo = [
        {"role": "user", "content": "[[fake:tool_sleep]] run"},
        {"role": "assistant", "content": [{"type": "text", "text": "[[fake:500]]"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "[[fake:403]]"}]},
        {"role": "system", "content": "[[fake:400]]"},
    ]
    assert find_directive(_body(messages=convo)) == "tool_sleep"
    assert find_directive(None) is None and find_directive({"messages": "nope"}) is None


def test_mode_priority_directive_key_script_default(api: FakeMessagesAPI) -> None:
    api.mode = "403"
    assert _post(api, _body("hi [[fake:529]]"))[0] == 529  # directive beats everything
    assert _post(api, _body("hi [[fake:ok]]"), key="bad-key")[0] == 200  # ...even a bad key
    assert _post(api, _body("hi"), key="bad-key")[0] == 401
    assert _post(api, _body("hi"), key="invalid-key")[0] == 401
    api.script(["500", "ok"])
    assert [_post(api, _body("hi"))[0] for _ in range(3)] == [500, 200, 403]  # script, then .mode
    assert [r.mode for r in api.posts()] == ["529", "ok", "401", "401", "500", "ok", "403"]


def test_unknown_modes_rejected(api: FakeMessagesAPI) -> None:
    with pytest.raises(ValueError):
        api.mode = "teapot"
    with pytest.raises(ValueError):
        api.script(["ok", "teapot"])
    status, _, raw = _post(api, _body("[[fake:teapot]]"))
    assert status == 400 and "teapot" in json.loads(raw)["error"]["message"]


def test_tool_sleep_then_text(api: FakeMessagesAPI) -> None:
    api.mode = "tool_sleep"
    events = _sse_events(_post(api, _body(stream=True))[2])
    block = events[2]["content_block"]
    assert block["type"] == "tool_use" and block["name"] == "Bash" and block["input"] == {}
    assert json.loads(events[3]["delta"]["partial_json"])["command"] == "true && sleep 300"
    assert events[5]["delta"]["stop_reason"] == "tool_use"
    convo = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": block["id"], "name": "Bash", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block["id"], "content": "Exit code 137"}]},
    ]
    msg = json.loads(_post(api, _body(messages=convo))[2])
    assert msg["content"] == [{"type": "text", "text": REPLY_TEXT}]


def _raw_request(api: FakeMessagesAPI, body: dict[str, Any], timeout: float) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=timeout)
    conn.request("POST", "/v1/messages?beta=true", json.dumps(body), {"content-type": "application/json"})
    return conn


def _raw_socket_request(api: FakeMessagesAPI, body: dict[str, Any]) -> socket.socket:
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=5)
    sock.sendall(
        b"POST /v1/messages?beta=true HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(data) + data
    )
    return sock


def _read_for(sock: socket.socket, seconds: float) -> bytes:
    """Everything the server sends within ``seconds`` (stops early at EOF)."""
    chunks, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if select.select([sock], [], [], left)[0]:
            try:
                if sock.recv(65536) == b"":
                    return True
            except ConnectionError:
                return True
    return False


@pytest.mark.parametrize("mode", ["hang", "stall"])
def test_hang_and_stall_go_silent_and_do_not_block_stop(mode: str) -> None:
    api = FakeMessagesAPI(mode).start()
    sock = _raw_socket_request(api, _body(stream=True))
    try:
        assert api.wait_for_posts(1, timeout=5)
        got = _read_for(sock, 0.6)
        if mode == "hang":
            assert got == b""  # not even headers
        else:
            assert got.startswith(b"HTTP/1.1 200") and b"event: message_start" in got
            assert b"ping" not in got and b"message_stop" not in got
        t0 = time.monotonic()
        api.stop()
        assert time.monotonic() - t0 < 3
        assert _closed_within(sock, 3)  # stop() also ends the silent handler's connection
    finally:
        sock.close()
        api.stop()
    assert api.server_errors == []


def test_hang_handler_gives_up_when_client_leaves() -> None:
    with FakeMessagesAPI("hang") as api:
        sock = _raw_socket_request(api, _body())
        assert api.wait_for_posts(1, timeout=5)
        before = threading.active_count()
        sock.close()
        deadline = time.monotonic() + 3
        while threading.active_count() >= before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threading.active_count() < before
        assert api.server_errors == []


def test_stall_and_cut_only_affect_streams(api: FakeMessagesAPI) -> None:
    for mode in ("stall", "cut"):
        api.mode = mode
        status, _, raw = _post(api, _body())
        assert status == 200 and json.loads(raw)["content"][0]["text"] == REPLY_TEXT


def test_cut_resets_mid_stream(api: FakeMessagesAPI) -> None:
    api.mode = "cut"
    conn = _raw_request(api, _body(stream=True), timeout=5)
    resp = conn.getresponse()
    assert resp.status == 200
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        resp.read()
    conn.close()


def test_slow_answers_after_delay(api: FakeMessagesAPI) -> None:
    api.mode = "slow"
    api.slow_seconds = 0.3
    t0 = time.monotonic()
    assert _post(api, _body())[0] == 200
    assert 0.25 < time.monotonic() - t0 < 3


def test_standalone_prints_url_writes_port_and_stops_on_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, str(E2E_DIR / "fake_api.py"), "--mode", "500", "--port-file", str(port_file), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], 10)
        assert readable, "no FAKE_API_URL line within 10 s"
        line = proc.stdout.readline().decode().strip()
        assert line.startswith("FAKE_API_URL=http://127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        assert int(port_file.read_text()) == port
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(
                urllib.request.Request(f"http://127.0.0.1:{port}/v1/messages", data=b"{}", method="POST"), timeout=5
            )
        assert info.value.code == 500
        info.value.close()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
