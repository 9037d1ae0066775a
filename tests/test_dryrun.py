"""`maestro dry-run CADENCE`: the exact run the daemon would start, secrets masked, and the gate that would refuse
it now, read from what is persisted; nothing is started or written."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from click.testing import CliRunner

from maestro_py.config import Settings
from maestro_py.ops import dryrun
from maestro_py.paths import Layout
from maestro_py.registry import Registry
from tests.fakes import (
    SECRET, FakeClock, FakeSpawner, enqueue, fast_fake_claude, invoke, make_daemon, one_line_error, run_steps,
    settings_env, write_agent,
)

REGISTRY = """
[memo]
model = "claude-sonnet-4-5"
claude_args = ["--fallback-model", "claude-haiku-4-5"]
max_budget_usd = 0.5
timeout_seconds = 300

[beat]
mode = "inline"
handler = "noop"
"""


def _files(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_the_plan_is_what_the_daemon_spawns(layout: Layout, clock: FakeClock) -> None:
    """Same function, same inputs: argv, cwd, environment and prompt are the daemon's own (only the tick differs)."""
    write_agent(layout, REGISTRY, prompts={"memo": "Write the memo.\n"})
    env = settings_env()
    plan = dryrun.plan(layout, env, Settings.from_env(env), Registry.load(layout), Registry.load(layout).get("memo"),
                       {"to": "board"}, clock.now())
    spawner = FakeSpawner()
    daemon = make_daemon(layout, clock, spawner)
    enqueue(layout, clock, "memo", payload={"to": "board"})
    run_steps(daemon, 3)
    spec = spawner.sessions[0].spec
    flags = plan["permissions"]["flags"]
    assert plan["argv"] == spec.argv == ["/bin/true", "--print", "--output-format", "stream-json", "--verbose",
                                         "--no-session-persistence", "--model", "claude-sonnet-4-5",
                                         "--max-budget-usd", "0.5", *flags, "--fallback-model", "claude-haiku-4-5"]
    assert flags[:2] == ["--settings", plan["permissions"]["settings_file"]] and spec.files[0][0] == Path(flags[1])
    assert plan["cwd"] == str(spec.cwd) and plan["timeout_s"] == spec.timeout == 300
    changed = {c["name"]: c["value"] for c in plan["env_changes"]}
    per_run = ("MAESTRO_SUBSESSION", "MAESTRO_TICK")  # the daemon's token and the tick's id: the rest is equal
    assert {k: v for k, v in spec.env.items() if env.get(k) != v} == {
        **{k: v for k, v in changed.items() if k not in per_run}, **{k: spec.env[k] for k in per_run}}
    assert changed["MAESTRO_TICK"] == f"{plan['tick_id']} memo"
    assert changed["MAESTRO_SUBSESSION"] == f"<daemon-owner>:{layout.root}"  # no daemon alive: a placeholder
    prompt, block = plan["stdin"].split("---\nmaestro tick:\n")
    assert spec.stdin.decode().startswith(prompt) and '"payload": {\n    "to": "board"' in block
    assert plan["refused_by"] is None


def test_dry_run_masks_secrets_and_says_what_the_sub_session_loses(runner: CliRunner, layout: Layout) -> None:
    write_agent(layout, REGISTRY, prompts={"memo": f"Use the key {SECRET} nowhere.\n"},
                files={".env": f"ANTHROPIC_API_KEY={SECRET}\nMAESTRO_PREFER_SUBSCRIPTION_AUTH=1\n"
                               "CLAUDE_CODE_OAUTH_TOKEN=sk-ant-oat01-TOKENTOKENTOKEN\n"})
    fast_fake_claude(layout.root)
    before = _files(layout.root)
    out = invoke(runner, layout.root, "dry-run", "memo", "--payload", '{"n": 1}',
                 env={"CLAUDE_BIN": str(layout.root / "claude")})
    assert out.exit_code == 0, out.stdout + out.stderr
    text = out.stdout
    assert SECRET not in text and "TOKENTOKEN" not in text and "[REDACTED]" in text
    withheld = next(line for line in text.splitlines() if line.startswith("  withheld ("))
    assert "ANTHROPIC_API_KEY" in withheld and "MAESTRO_PREFER_SUBSCRIPTION_AUTH" in withheld  # names only
    assert "permissions: dontAsk; tools Read,Grep,Glob" in text and "--setting-sources user" in text
    assert '"disableBypassPermissionsMode": "disable"' in text  # the settings file, printed, not written
    assert "+ AGENT_DIR=" in text and "+ CLAUDE_CODE_MAX_RETRIES=2" in text
    assert f"argv: {layout.root / 'claude'} --print" in text and "  | Use the key [REDACTED] nowhere." in text
    assert "verdict: it would start at the daemon's next loop" in text
    assert _files(layout.root) == before  # nothing written: no tick, no event, no log


def test_dry_run_names_the_gate_that_would_refuse_it(runner: CliRunner, layout: Layout) -> None:
    write_agent(layout, REGISTRY, prompts={"memo": "write"},
                files={".env": "CLAUDE_BIN=/bin/true\nMAESTRO_DAILY_USD_BUDGET=0.10\n"})
    now = datetime.now(timezone.utc)
    layout.ledger_file.write_text(json.dumps({"ts": now.isoformat(), "tick": "t", "cadence": "memo", "ok": True,
                                              "cost_usd": 0.08, "total_tokens": 100, "charged_usd": 0.08,
                                              "charged_tokens": 100}) + "\n")
    out = invoke(runner, layout.root, "dry-run", "memo")
    assert out.exit_code == 1
    assert "verdict: refused now by budget" in out.stdout and "HOLDS budget" in out.stdout
    assert invoke(runner, layout.root, "circuit", "open", "memo").exit_code == 0
    assert invoke(runner, layout.root, "stop", "--reason", "audit").exit_code == 0
    doc = json.loads(invoke(runner, layout.root, "dry-run", "memo", "--json").stdout)
    holding = [g["gate"] for g in doc["gates"] if g["holds"]]
    assert holding == ["emergency_stop", "circuit_open", "budget"]
    assert doc["refused_by"]["gate"] == "emergency_stop"  # the first, as the daemon counts it
    inline = invoke(runner, layout.root, "dry-run", "beat")
    assert inline.exit_code == 0 and "no gate holds inline work" in inline.stdout
    unknown = invoke(runner, layout.root, "dry-run", "nosuch")
    assert unknown.exit_code == 2 and "unknown cadence" in one_line_error(unknown)


def test_a_missing_claude_and_a_missing_prompt_are_reported(runner: CliRunner, layout: Layout) -> None:
    write_agent(layout, REGISTRY, prompts={"memo": "write"}, files={".env": "CLAUDE_BIN=/nonexistent/claude\n"})
    doc = json.loads(invoke(runner, layout.root, "dry-run", "memo", "--json").stdout)
    assert doc["refused_by"]["gate"] == "claude_missing" and "CLAUDE_BIN" in doc["refused_by"]["why"]
    layout.prompt_file("memo").write_bytes(b"\xff\xfe not UTF-8")  # read at spawn time: the run cannot start
    broken = invoke(runner, layout.root, "dry-run", "memo", env={"CLAUDE_BIN": "/bin/true"})
    assert broken.exit_code == 1 and "would fail to start" in broken.stdout and "not UTF-8" in broken.stdout
