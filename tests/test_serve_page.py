"""The status page in a real browser: Debian's headless Chromium driven by Playwright, against `maestro serve`.

After a mixed run (a daemon loop with a fake spawner: runs that succeed, a cadence whose failures open its
breaker, an inline cadence, ticks left queued and dead-lettered, plus ledger rows of earlier days), the page
shows the queues, the held breaker, budget bars and one chart bar per cadence per day; it makes no request
off 127.0.0.1, runs no script, and shows hostile text from a run as text. A screenshot is kept.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from maestro_py.bus.logview import escape as visible
from maestro_py.bus.store import Bus
from maestro_py.clock import iso
from maestro_py.paths import Layout
from maestro_py.policy.budget import local_zone
from tests.fakes import FakeClock, FakeSpawner, enqueue, make_daemon, run_steps, write_agent
from tests.serve_support import TOKEN, Served

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOSTILE = '<img src="http://192.0.2.1/x.png"><script>document.title="owned"</script>\u202eevil'
REGISTRY = """
[tidy]
mode = "inline"
handler = "noop"
"""


def browser_or_skip():
    """Playwright's sync API and the path of Debian's chromium, or a skip that says why."""
    why = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        why = "the playwright package is not installed (pip install -e '.[test]')"
    if why is None and not Path(CHROMIUM).exists():
        why = f"{CHROMIUM} is missing (apt-get install -y chromium; .ci/run does it as root)"
    if why is not None:
        print(f"\nbrowser test skipped: {why}")
        pytest.skip(why)
    return sync_playwright


def mixed_run(layout: Layout) -> None:
    """A few days of work: ledger rows of the last three days, then today's loop with successes, failures that
    open `triage`'s breaker, inline ticks, a dead letter and ticks still queued."""
    now = datetime.now(timezone.utc)
    rows = []
    for back, cadence, usd in ((3, "memo", 0.42), (3, "triage", 0.10), (2, "memo", 0.30), (1, "triage", 0.05),
                               (1, HOSTILE, 0.01)):
        ts = now - timedelta(days=back)
        rows.append({"ts": iso(ts), "tick": f"t{back}{cadence[:2]}", "cadence": cadence, "attempt": 1, "ok": True,
                     "duration_ms": 12_000, "cost_usd": usd, "total_tokens": 1000, "metered": True,
                     "charged_tokens": 1000, "charged_usd": usd})
    rows.append({"ts": iso(now - timedelta(days=1)), "tick": "t-bad", "cadence": "memo", "attempt": 2, "ok": False,
                 "exit_code": 1, "duration_ms": 800, "cost_usd": None, "total_tokens": None, "metered": False,
                 "charged_tokens": 20000, "charged_usd": 0.25, "error": HOSTILE})
    layout.state_dir.mkdir(parents=True, exist_ok=True)
    with open(layout.ledger_file, "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    clock = FakeClock(now - timedelta(minutes=10))
    daemon = make_daemon(layout, clock, FakeSpawner(), MAESTRO_CIRCUIT_THRESHOLD=3, MAESTRO_DAILY_USD_BUDGET=5)
    enqueue(layout, clock, "memo", 2)
    enqueue(layout, clock, "triage", 4)
    enqueue(layout, clock, "tidy", 3)
    run_steps(daemon, 40)
    bus = Bus(layout, max_inbox=10_000)
    bus.enqueue("memo", payload={"later": True}, delay=3600)
    tick = bus.enqueue("memo", payload={"doomed": True})
    bus.index.refresh(force=True)
    bus.index.promote(bus.clock.now())
    claim = bus.claim(tick.filename)
    assert claim is not None
    bus.dead_letter(claim, HOSTILE)


def expected_bars(layout: Layout, since_days: int = 30) -> set[tuple[str, str]]:
    """(local day, cadence as the page shows it) of every ledger row in the chart's window: the current ledger
    and the monthly archives (the daemon's retention moves last month's rows there)."""
    zone = local_zone()
    first = (datetime.now(timezone.utc).astimezone(zone) - timedelta(days=since_days - 1)).date()
    out = set()
    for path in layout.state_dir.glob("cost-ledger*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            day = datetime.fromisoformat(row["ts"].replace("Z", "+00:00")).astimezone(zone).date()
            if day >= first:
                out.add((day.isoformat(), visible(row["cadence"])))
    return out


def test_the_status_page_in_headless_chromium(tmp_path: Path) -> None:
    sync_playwright = browser_or_skip()
    layout = write_agent(tmp_path / "agent", REGISTRY, prompts={"memo": "write the memo", "triage": "[[fake:500]]"})
    mixed_run(layout)
    served = Served(layout, tmp_path, MAESTRO_SERVE_TOKEN=TOKEN, MAESTRO_DAILY_USD_BUDGET=5)
    base = served.base + "/"
    off_machine: list[str] = []
    seen: list[str] = []
    shot = tmp_path / "status-page.png"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=60_000)
            try:
                context = browser.new_context(http_credentials={"username": "operator", "password": TOKEN},
                                              viewport={"width": 1100, "height": 900})
                page = context.new_page()
                page.set_default_timeout(20_000)
                page.on("request", lambda request: seen.append(request.url))

                def guard(route) -> None:  # anything not to this server is recorded and never leaves
                    if route.request.url.startswith(base):
                        route.continue_()
                    else:
                        off_machine.append(route.request.url)
                        route.abort()

                context.route("**/*", guard)
                response = page.goto(base, wait_until="load")
                assert response is not None and response.status == 200
                page.screenshot(path=str(shot), full_page=True)
                print(f"\nstatus page screenshot: {shot}")

                queued = Bus(layout).depths()
                assert queued["inbox"] >= 2 and queued["dlq"] == 1 and queued["done"] >= 3  # the run left all three
                for folder in ("inbox", "claimed", "done", "dlq"):
                    assert page.inner_text(f"#queue-{folder}") == str(queued[folder])
                triage = page.locator('tr.breaker[data-name="triage"]')
                assert triage.count() == 1 and "open" in triage.inner_text() and "min" in triage.inner_text()
                assert page.locator("tr.budget").count() >= 1 and page.locator("svg.budget-bar rect.spent").count() >= 1
                bars = page.eval_on_selector_all("#spend-chart rect.bar", "els => els.map(e => [e.dataset.day, "
                                                 "e.dataset.cadence])")
                assert len(bars) == len({tuple(b) for b in bars}) == len(expected_bars(layout))
                assert {tuple(b) for b in bars} == expected_bars(layout)
                assert {"memo", "triage", visible(HOSTILE)} <= {b[1] for b in bars}
                assert len({b[0] for b in bars}) >= 3  # several days
                assert page.locator("tr.run").count() >= 5
                assert page.locator('#runs a[href^="/runs/"]').count() >= 5  # each run links to its page
                # Hostile text is shown as text: no element, no script ran, nothing fetched for it.
                assert page.locator("script").count() == 0 and page.locator("body img").count() == 0
                assert page.title().startswith("maestro") and "<script>" in page.inner_text("#runs")
                assert page.locator('meta[http-equiv="refresh"]').count() == 1
            finally:
                browser.close()
    finally:
        served.stop()
    assert shot.stat().st_size > 10_000
    assert off_machine == [] and seen and all(url.startswith(base) for url in seen), seen


def test_chromium_is_where_ci_installs_it() -> None:
    """.ci/run installs Debian's chromium where missing, like PostgreSQL: say so if this machine lacks it."""
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "chromium" in ci
    if shutil.which("chromium") is None:
        print("\nchromium is not installed here: the browser test skips (apt-get install -y chromium)")
