"""The parts of `maestro serve` without a server: request parsing, credentials, idempotency keys, the chart, the
snapshot's ledger reading, the bind rule, and what `maestro enqueue` and sub-sessions are kept from."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from maestro_py.config import Settings
from maestro_py.errors import ConfigError
from maestro_py.loopback import is_loopback, loopback_host
from maestro_py.paths import Folder, Layout
from maestro_py.redact import MASK, Redactor
from maestro_py.serve import auth, chart, page, snapshot, triggers
from maestro_py.serve.http import HttpError
from maestro_py.serve.idempotency import KeyStore, fingerprint
from maestro_py.serve.options import ServeOptions, check_bind
from maestro_py.session.command import child_env
from tests.fakes import REPO, settings_env, write_agent
from tests.serve_support import TOKEN, WEBHOOK_SECRET, github_signature


def options(**env: str) -> ServeOptions:
    full = settings_env(**env)
    return ServeOptions.from_env(full, Settings.from_env(full))


# -- bodies -------------------------------------------------------------------------------------------------------

def test_an_envelope_with_every_key() -> None:
    t = triggers.envelope("memo", b'{"payload": {"a": [1]}, "delay": 1.5, "source": "ci"}', "k")
    assert (t.payload, t.delay, t.source, t.key) == ({"a": [1]}, 1.5, "ci", "k")
    assert t.fingerprint == fingerprint("memo", b'{"delay":1.5,"payload":{"a":[1]},"source":"ci"}')  # canonical
    spaced = triggers.envelope("memo", b'{ "source":"ci",\n "delay": 1.5, "payload": {"a": [ 1 ]} }', "k")
    assert spaced.fingerprint == t.fingerprint
    nulls = triggers.envelope("memo", b'{"payload": null, "delay": null}', None)
    assert (nulls.payload, nulls.delay, nulls.source) == ({}, 0.0, "http")


@pytest.mark.parametrize("body, fragment", [
    (b'{"delay": 1e400}', "delay"), (b'{"delay": Infinity}', "not valid JSON"), (b'{"source": "a\\nb"}', "source"),
    (b'{"source": "' + b"x" * 201 + b'"}', "source"), (b'{"payload": "x"}', "payload must be"),
    (b'{"other": 1}', "unknown key"), (b"\xff\xfe", "not valid JSON"), (b"[]", "must be a JSON object"),
])
def test_bad_envelopes(body: bytes, fragment: str) -> None:
    with pytest.raises(HttpError) as err:
        triggers.envelope("memo", body, None)
    assert err.value.status == 400 and fragment in err.value.message


def test_a_webhook_body_is_the_payload_and_its_event_the_source() -> None:
    body = b'{"action": "opened", "number": 7}'
    t = triggers.webhook("memo", body, {"x-github-event": "pull_request", "x-github-delivery": "abc-1"}, None)
    assert (t.payload, t.source, t.delay, t.event, t.signed) == ({"action": "opened", "number": 7},
                                                                  "github:pull_request", 0.0, "pull_request", True)
    assert triggers.webhook("memo", body, {}, None).source == "webhook"
    # The signature covers the body only: the body is the key, whatever delivery id or key the sender chose.
    again = triggers.webhook("memo", body, {"x-github-event": "pull_request", "x-github-delivery": "fresh-2"}, "mine")
    assert t.key == again.key and t.key.startswith("body-")
    for headers in ({"x-github-event": "push;rm"},):
        with pytest.raises(HttpError):
            triggers.webhook("memo", body, headers, None)
    form = {"content-type": "application/x-www-form-urlencoded"}
    with pytest.raises(HttpError):
        triggers.webhook("memo", b"nopayload=1", form, None)


# -- credentials --------------------------------------------------------------------------------------------------

def test_bearer_basic_and_signature_checks() -> None:
    assert auth.bearer_matches(f"Bearer {TOKEN}", TOKEN) and auth.bearer_matches(f"bearer  {TOKEN} ", TOKEN)
    assert not auth.bearer_matches(f"Bearer {TOKEN}x", TOKEN) and not auth.bearer_matches(TOKEN, TOKEN)
    assert not auth.bearer_matches("Bearer ünïcode", TOKEN)  # non-ASCII compares as bytes instead of raising
    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    assert auth.basic_matches(f"Basic {basic}", TOKEN) and not auth.basic_matches("Basic !!!", TOKEN)
    assert not auth.basic_matches("Basic " + base64.b64encode(TOKEN.encode()).decode(), TOKEN)  # no colon
    body = b'{"zen": "x"}'
    auth.verify_signature(body, github_signature(body), WEBHOOK_SECRET)
    auth.verify_signature(body, github_signature(body).upper().replace("SHA256=", "sha256="), WEBHOOK_SECRET)
    for header in (github_signature(body + b"\n"), "sha256=", "md5=" + github_signature(body)[7:], "garbage"):
        with pytest.raises(HttpError) as err:
            auth.verify_signature(body, header, WEBHOOK_SECRET)
        assert err.value.status == 401


def test_trigger_access_decisions() -> None:
    both = options(MAESTRO_SERVE_TOKEN=TOKEN, MAESTRO_WEBHOOK_SECRET=WEBHOOK_SECRET)
    local = "127.0.0.1"
    assert auth.trigger_access({"authorization": f"Bearer {TOKEN}"}, both, "203.0.113.9") is auth.Access.TOKEN
    assert auth.trigger_access({"x-hub-signature-256": "sha256=00"}, both, "203.0.113.9") is auth.Access.WEBHOOK
    assert auth.trigger_access({"host": "127.0.0.1:1"}, options(), local) is auth.Access.OPEN
    assert auth.trigger_access({"host": "[::1]:1"}, options(), "::1") is auth.Access.OPEN
    cases = [({}, both, local, 401), ({"authorization": "Bearer nope"}, both, local, 401),
             ({"x-hub-signature-256": "sha256=00"}, options(MAESTRO_SERVE_TOKEN=TOKEN), local, 403),
             ({"authorization": f"Bearer {TOKEN}"}, options(), local, 403), ({"host": "example.com"}, options(), local, 403),
             ({"authorization": f"Bearer {TOKEN}", "origin": "https://x.example", "host": "127.0.0.1:1"}, both, local, 403),
             # open access: a loopback Host from another peer, or relayed by a proxy on this machine, is not local
             ({"host": "127.0.0.1:1"}, options(), "203.0.113.9", 403), ({"host": "127.0.0.1:1"}, options(), None, 403),
             *[({"host": "127.0.0.1:1", name: value}, options(), local, 403) for name, value in (
                 ("x-forwarded-for", "203.0.113.9"), ("X-Forwarded-Host", "maestro.example"),
                 ("forwarded", "for=203.0.113.9"), ("via", "1.1 nginx"), ("x-real-ip", "203.0.113.9"))]]
    for headers, opts, peer, status in cases:
        with pytest.raises(HttpError) as err:
            auth.trigger_access(headers, opts, peer)
        assert err.value.status == status, (headers, peer)


def test_reads_need_the_token_whenever_any_credential_is_set() -> None:
    local, direct = "127.0.0.1", {"host": "127.0.0.1:1"}
    auth.read_access(direct, options(), local)  # nothing set: direct local reads are open
    auth.read_access({"authorization": f"Bearer {TOKEN}"}, options(MAESTRO_SERVE_TOKEN=TOKEN), "203.0.113.9")
    for opts in (options(MAESTRO_WEBHOOK_SECRET=WEBHOOK_SECRET), options(MAESTRO_SERVE_TOKEN=TOKEN)):
        with pytest.raises(HttpError) as err:
            auth.read_access(direct, opts, local)
        assert err.value.status == 401
    with pytest.raises(HttpError) as err:  # the README's proxy, with nothing set
        auth.read_access({**direct, "x-forwarded-for": "203.0.113.9"}, options(), local, page=True)
    assert err.value.status == 403


@pytest.mark.parametrize("host, ok", [
    ("127.0.0.1:8787", True), ("localhost", True), ("LOCALHOST:1", True), ("[::1]:8787", True), ("127.9.9.9", True),
    ("example.com", False), ("10.0.0.1:8787", False), ("", False), ("[::1", False), ("127.0.0.1.nip.io", False),
])
def test_loopback_host_header(host: str, ok: bool) -> None:
    assert loopback_host(host) is ok


def test_only_loopback_without_a_token() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1") and not is_loopback("no-such-host.invalid")
    check_bind("127.0.0.1", options())
    check_bind("0.0.0.0", options(MAESTRO_SERVE_TOKEN=TOKEN))
    with pytest.raises(ConfigError, match="not a loopback address"):
        check_bind("0.0.0.0", options(MAESTRO_WEBHOOK_SECRET=WEBHOOK_SECRET))  # a webhook secret is not enough
    with pytest.raises(ConfigError, match="MAESTRO_WEBHOOK_SECRET='…'"):
        options(MAESTRO_WEBHOOK_SECRET="short")  # and a rejected secret is not quoted back


# -- idempotency keys ---------------------------------------------------------------------------------------------

def test_keys_expire_after_24_hours_and_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from maestro_py.serve import idempotency

    now = [1_000_000.0]
    store = KeyStore(tmp_path / "keys.sqlite3", clock=lambda: now[0])
    with store.claim("a", "fp") as (first, remember):
        assert first is None
        remember("tick-a", "memo")
    with store.claim("a", "fp") as (first, _):
        assert first is not None and first.tick_id == "tick-a"
    with pytest.raises(HttpError) as err, store.claim("a", "other"):
        pass
    assert err.value.status == 422
    with pytest.raises(RuntimeError), store.claim("b", "fp") as (_, remember):  # the enqueue failed: not kept
        remember("tick-b", "memo")
        raise RuntimeError("inbox full")
    assert store.count() == 1
    now[0] += 24 * 3600 + 1
    with store.claim("a", "other") as (first, remember):  # expired: a new request may use it
        assert first is None
        remember("tick-a2", "memo")
    assert store.count() == 1  # the old row was pruned by the insert
    monkeypatch.setattr(idempotency, "MAX_KEYS", 5)
    monkeypatch.setattr(idempotency, "CAP_EVERY", 1)
    for i in range(12):
        now[0] += 1
        with store.claim(f"k{i}", "fp") as (_, remember):
            remember(f"t{i}", "memo")
    assert store.count() == 5
    with store.claim("k11", "fp") as (first, _):
        assert first is not None and first.tick_id == "t11"  # the newest are kept
    store.close()
    assert (tmp_path / "keys.sqlite3").stat().st_mode & 0o777 == 0o600


# -- the page's parts ----------------------------------------------------------------------------------------------

def test_nice_ceilings() -> None:
    assert [chart.nice_ceiling(v) for v in (0, 0.0042, 0.3, 1, 1.01, 2.4, 7, 10.5, 420)] == [
        1.0, 0.005, 0.5, 1, 2, 2.5, 10, 20, 500]


def test_the_chart_has_one_bar_per_cadence_per_day_with_runs() -> None:
    days = [date(2026, 11, d) for d in (1, 2, 3)]
    counts = {(days[0], "a"): 2, (days[0], "b"): 1, (days[2], "a"): 1}
    spend = {(days[0], "a"): 0.5, (days[0], "b"): 0.0, (days[2], "a"): 0.25}
    svg = chart.spend_chart(days, ["a", "b"], spend, counts, page.esc)
    assert svg.count('class="bar"') == 3 and 'data-day="2026-11-01" data-cadence="b"' in svg
    assert 'height="1.00"' in svg  # a run that cost nothing still shows


def test_escaping_makes_hostile_text_inert() -> None:
    text = page.esc('<script>x</script>\x1b[2J"\u202e')
    assert "<" not in text and '"' not in text and "\x1b" not in text and "\u202e" not in text
    assert page.CSP.startswith("default-src 'none'") and "script-src" not in page.CSP


def test_the_snapshot_reads_last_months_archive(tmp_path: Path) -> None:
    layout = write_agent(tmp_path / "agent")
    now = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
    archive = layout.state_dir / "cost-ledger-2026-11.jsonl"
    old = {"ts": "2026-11-20T10:00:00Z", "cadence": "memo", "ok": True, "charged_usd": 0.5, "duration_ms": 10}
    ancient = {**old, "ts": "2026-10-01T10:00:00Z"}
    archive.write_text(json.dumps(old) + "\n")
    (layout.state_dir / "cost-ledger-2026-10.jsonl").write_text(json.dumps(ancient) + "\n")
    layout.ledger_file.write_text(json.dumps({**old, "ts": "2026-12-02T09:00:00Z", "cadence": "triage"}) + "\n"
                                  + "torn {\n")
    snap = snapshot.take(layout, Settings.from_env(settings_env()), None, now)
    assert snap.cadences == ["memo", "triage"] and len(snap.days) == 30 and snap.days[-1] == now.date()
    assert sum(snap.run_counts.values()) == 2  # the chart's 30 days; the runs table lists the last runs, older too
    assert [(r["cadence"], r["ended"][:10]) for r in snap.runs] == [("triage", "2026-12-02"), ("memo", "2026-11-20"),
                                                                    ("memo", "2026-10-01")]
    assert snap.health == "not running" and snap.queues == {"inbox": 0, "claimed": 0, "done": 0, "dlq": 0}
    html = page.render(snap)
    assert html.count('class="bar"') == 2 and "no runs" not in html


def test_a_snapshot_with_live_runs_and_a_stop(tmp_path: Path) -> None:
    layout = write_agent(tmp_path / "agent")
    snap = snapshot.take(layout, Settings.from_env(settings_env()), None, datetime.now(timezone.utc))
    snap.live = [{"cadence": "memo", "tick": "t1", "attempt": 1, "pid": 42, "started": "2026-12-01T10:00:00Z"}]
    snap.emergency_stop = "<b>spend spike</b>"
    html = page.render(snap)
    assert "<td>memo</td>" in html and "&lt;b&gt;spend spike" in html and 'id="emergency-stop"' in html


# -- what others must not see or load -----------------------------------------------------------------------------

def test_sub_sessions_never_get_the_serve_credentials(tmp_path: Path) -> None:
    env = child_env({"MAESTRO_SERVE_TOKEN": TOKEN, "MAESTRO_WEBHOOK_SECRET": WEBHOOK_SECRET, "PATH": "/bin"},
                    tmp_path)
    assert "MAESTRO_SERVE_TOKEN" not in env and "MAESTRO_WEBHOOK_SECRET" not in env and env["PATH"] == "/bin"
    masked = Redactor({"MAESTRO_SERVE_TOKEN": TOKEN, "MAESTRO_WEBHOOK_SECRET": WEBHOOK_SECRET})
    assert masked.text(f"a {TOKEN} b {WEBHOOK_SECRET}") == f"a {MASK} b {MASK}"


def test_enqueue_loads_neither_serve_nor_its_stack(tmp_path: Path) -> None:
    root = write_agent(tmp_path / "agent", prompts={"hello": "hi"}).root
    code = ("import sys, runpy; sys.argv = ['maestro', '--root', %r, 'enqueue', 'hello'];\n"
            "import atexit; atexit.register(lambda: print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('starlette', 'uvicorn', 'sqlite3') or m.startswith('maestro_py.serve')), file=sys.stderr))\n"
            "from maestro_py.cli import main; main()") % str(root)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "[]"
    assert len(list(Layout(root).folder(Folder.INBOX).iterdir())) == 1


def test_files_maestro_creates_are_private(tmp_path: Path) -> None:
    """0600: the idempotency keys with SQLite's -wal and -shm, a SQLite governor store with its own, the daemon's
    lock (they were 0644)."""
    import os
    import stat

    before = os.umask(0o022)  # a usual umask: the modes must not depend on it
    try:
        _make_files(tmp_path)
    finally:
        os.umask(before)
    made = [p for p in tmp_path.iterdir() if p.is_file()]
    assert {p.name for p in made} >= {"serve-keys.sqlite3", "serve-keys.sqlite3-wal", "governor.db", "daemon.lock"}
    loose = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in made if stat.S_IMODE(p.stat().st_mode) != 0o600}
    assert loose == {}


def _make_files(tmp_path: Path) -> None:
    from maestro_py.daemon.lock import DaemonLock
    from maestro_py.fleet import open_store
    from maestro_py.serve.idempotency import KeyStore

    keys = KeyStore(tmp_path / "serve-keys.sqlite3")
    with keys.claim("k1", "fp") as (_, remember):
        remember("20990101T000000000000Z-0000001-0000abcd", "hello")
    store = open_store(f"sqlite:///{tmp_path}/governor.db")
    store.ping()
    lock = DaemonLock(tmp_path / "daemon.lock", tmp_path)
    lock.acquire()
    lock.release()
    store.close()


def test_a_corrupt_key_store_is_one_line_and_a_locked_one_a_bounded_503(tmp_path: Path) -> None:
    import sqlite3
    import time

    from maestro_py.errors import ConfigError
    from maestro_py.serve import idempotency
    from maestro_py.serve.idempotency import KeyStore

    bad = tmp_path / "corrupt.sqlite3"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError) as err:
        KeyStore(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    keys = KeyStore(tmp_path / "keys.sqlite3")
    other = sqlite3.connect(tmp_path / "keys.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        started = time.monotonic()
        with pytest.raises(HttpError) as busy:
            with keys.claim("k", "fp"):
                pass
        assert busy.value.status == 503 and busy.value.headers["Retry-After"]
        assert time.monotonic() - started < idempotency.BUSY_TIMEOUT_MS / 1000 + 1
    finally:
        other.execute("ROLLBACK")
        other.close()
    with keys.claim("k", "fp") as (found, remember):  # free again: it works
        assert found is None


def test_serves_own_overload_is_not_the_daemons_health() -> None:
    """Past the connection limit every request but /healthz gets 503 "overloaded" with Retry-After; /healthz is
    still answered by the app (uvicorn keeps it a reserve of connections), so a monitor is not paged for it."""
    import asyncio

    from maestro_py.serve.server import overload_guard

    reached: list[str] = []

    async def app(scope, receive, send):  # noqa: ANN001, ANN202
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def call(path: str, open_connections: int) -> list[dict]:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        guarded = overload_guard(app, {"connections": set(range(open_connections))}, limit=10)
        asyncio.run(guarded({"type": "http", "path": path}, None, send))
        return sent

    busy = call("/v1/ticks/x", 11)
    assert busy[0]["status"] == 503 and (b"retry-after", b"5") in busy[0]["headers"] and b"overloaded" in busy[1]["body"]
    assert call("/healthz", 11)[0]["status"] == 200 and reached == ["/healthz"]
    assert call("/", 10)[0]["status"] == 200


def test_the_page_shows_times_in_the_machines_zone_as_the_cli_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time
    from datetime import datetime, timezone

    from maestro_py.config import Settings
    from maestro_py.ops.when import local
    from maestro_py.paths import Layout
    from maestro_py.serve import snapshot
    from tests.fakes import settings_env

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        layout = Layout(tmp_path / "agent")
        layout.root.mkdir()
        layout.ensure()
        now = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
        html = page.render(snapshot.take(layout, Settings.from_env(settings_env()), None, now))
        assert f"as of {local(now)}" in html and "21:00:00 JST" in html and " UTC;" not in html
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_folders_maestro_creates_are_private_but_state_is_traversable(tmp_path: Path) -> None:
    import os
    import stat

    from maestro_py.paths import Folder, Layout

    before = os.umask(0o022)
    try:
        layout = Layout(tmp_path / "agent")
        layout.ensure()
    finally:
        os.umask(before)
    mode = {p: stat.S_IMODE(p.stat().st_mode) for p in (layout.state_dir, layout.bus_dir, layout.logs_dir,
                                                          layout.folder(Folder.INBOX), layout.subsessions_dir)}
    assert mode.pop(layout.state_dir) == 0o711  # metrics.prom (0644) stays readable by its path, nothing listable
    assert set(mode.values()) == {0o700}
