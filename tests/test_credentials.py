"""Credentials that last (issue 12, item 4): the OAuth token is masked and fingerprinted, a fresh CLI login lifts the
auth halt, and the doctor names the credential the CLI will use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maestro_py.bus.events import EventLog
from maestro_py.ops import doctor
from maestro_py.ops.probe import Level, Probe
from maestro_py.paths import Layout
from maestro_py.policy.breaker import AUTH_HALT
from maestro_py.redact import MASK, Redactor
from maestro_py.session import command
from maestro_py.session.ledger import Ledger
from tests.fakes import FakeClock, FakeSpawner, enqueue, make_daemon, read_json, run_steps, write_agent

OAUTH = "sk-ant-oat01-" + "Ab3_x-" * 12 + "AA"  # the shape `claude setup-token` prints
LOGIN_SECRET = "sk-ant-ort01-REFRESHSECRET-0123456789"


# -- item 4: the token as a first-class credential -------------------------------------------------

def test_an_oauth_token_not_in_the_env_is_masked_in_events_and_ledger(layout: Layout, clock: FakeClock) -> None:
    redactor = Redactor({})  # the token reached the output some other way (a tool printed it)
    EventLog(layout, clock=clock, redactor=redactor).emit("failed", reason=f"bad token {OAUTH}.", nested=[OAUTH])
    ledger = Ledger(layout.ledger_file, redactor)
    ledger.append({"id": "t1", "error": f"token={OAUTH}"})
    (events,) = (layout.root / "logs" / "cadence-bus").glob("bus-*.jsonl")
    for text in (events.read_text(), layout.ledger_file.read_text()):
        assert "sk-ant-oat" not in text and "Ab3_x" not in text and MASK in text
    assert json.loads(events.read_text())["reason"] == f"bad token {MASK}."
    assert redactor.bytes(f"log {OAUTH}\n".encode()) == f"log {MASK}\n".encode()


def test_the_oauth_token_stays_for_the_subscription_and_names_the_source(tmp_path: Path) -> None:
    both = {"ANTHROPIC_API_KEY": "sk-ant-api03-realkey-0123456789", "CLAUDE_CODE_OAUTH_TOKEN": OAUTH}
    assert command.credential_source(both) == command.API_KEY
    preferred = {**both, "MAESTRO_PREFER_SUBSCRIPTION_AUTH": "1", "ANTHROPIC_AUTH_TOKEN": "x" * 20}
    assert command.credential_source(preferred) == command.OAUTH_TOKEN
    child = command.child_env(preferred, tmp_path)
    assert child["CLAUDE_CODE_OAUTH_TOKEN"] == OAUTH and "ANTHROPIC_API_KEY" not in child
    assert command.credential_source({"ANTHROPIC_API_KEY": "your-api-key-here"}) == command.LOGIN
    assert command.credential_source({"ANTHROPIC_AUTH_TOKEN": "gateway-token-123"}) == command.API_KEY


def test_the_fingerprint_follows_claude_config_dir_and_the_login_file(tmp_path: Path) -> None:
    home, config = tmp_path / "home", tmp_path / "agent-config"
    env = {"HOME": str(home), "MAESTRO_PREFER_SUBSCRIPTION_AUTH": "1"}
    base = command.credential_fingerprint(env)
    own = {**env, "CLAUDE_CONFIG_DIR": str(config)}
    assert command.credential_fingerprint(own) != base
    assert command.login_file(env) == home / ".claude" / ".credentials.json"
    assert command.login_file(own) == config / ".credentials.json"
    config.mkdir()
    (config / ".credentials.json").write_text("{}")
    logged_in = command.credential_fingerprint(own)
    assert logged_in != command.credential_fingerprint({**own, "CLAUDE_CONFIG_DIR": str(home)})
    (config / ".credentials.json").write_text('{"a": 1}')  # a new login: another size
    assert command.credential_fingerprint(own) != logged_in
    # With a key or a token in the environment the CLI ignores the login file: so does the fingerprint.
    keyed = {**own, "CLAUDE_CODE_OAUTH_TOKEN": OAUTH}
    before = command.credential_fingerprint(keyed)
    (config / ".credentials.json").write_text('{"a": 22}')
    assert command.credential_fingerprint(keyed) == before
    assert command.credential_fingerprint(keyed) != command.credential_fingerprint({**keyed, "CLAUDE_CODE_OAUTH_TOKEN": ""})


def _halted(layout: Layout, clock: FakeClock, spawner: FakeSpawner, **env: object):  # noqa: ANN202 - a Daemon
    daemon = make_daemon(layout, clock, spawner, **env)
    enqueue(layout, clock, "memo", 2)
    for _ in range(3):
        run_steps(daemon, 10)
        clock.advance(600)
    assert spawner.count == 1 and AUTH_HALT in read_json(layout.circuit_file)["open"]
    return daemon


def test_a_new_cli_login_lifts_the_auth_halt_without_reading_the_file(layout: Layout, clock: FakeClock,
                                                                        tmp_path: Path) -> None:
    write_agent(layout, prompts={"memo": "[[fake:401]]"})
    home, config = tmp_path / "home", tmp_path / "agent-config"
    home.mkdir()
    config.mkdir()
    env = {"HOME": str(home), "CLAUDE_CONFIG_DIR": str(config), "ANTHROPIC_API_KEY": "",
           "MAESTRO_PREFER_SUBSCRIPTION_AUTH": "1"}
    spawner = FakeSpawner()
    daemon = _halted(layout, clock, spawner, **env)
    (home / ".claude").mkdir()
    (home / ".claude" / ".credentials.json").write_text("{}")  # not the folder CLAUDE_CONFIG_DIR names
    run_steps(daemon, 10)
    assert spawner.count == 1 and layout.circuit_file.exists()
    # A restart with the same login keeps the halt (the fingerprint at start-up is the same one).
    restarted = _restart(layout, clock, spawner, env)
    assert spawner.count == 1 and layout.circuit_file.exists()
    (config / ".credentials.json").write_text(json.dumps({"claudeAiOauth": {"refreshToken": LOGIN_SECRET}}))
    layout.prompt_file("memo").write_text("fixed")
    run_steps(restarted, 10)
    assert spawner.count > 1 and not layout.circuit_file.exists()
    events = "".join(p.read_text() for p in (layout.root / "logs").rglob("*.jsonl"))
    lifted = [json.loads(line) for line in events.splitlines() if '"auth_halt_lifted"' in line]
    assert lifted and lifted[-1]["reason"] == "the CLI's login changed"
    written = "".join(p.read_text(errors="replace") for p in layout.root.rglob("*") if p.is_file())
    assert "REFRESHSECRET" not in written and "claudeAiOauth" not in written


def _restart(layout: Layout, clock: FakeClock, spawner: FakeSpawner, env: dict[str, str]):  # noqa: ANN202
    restarted = make_daemon(layout, clock, spawner, **env)
    run_steps(restarted, 10)
    return restarted


def test_a_login_file_change_does_not_lift_a_halt_of_an_api_key(layout: Layout, clock: FakeClock,
                                                                 tmp_path: Path) -> None:
    write_agent(layout, prompts={"memo": "[[fake:401]]"})
    config = tmp_path / "agent-config"
    config.mkdir()
    spawner = FakeSpawner()
    daemon = _halted(layout, clock, spawner, HOME=str(tmp_path), CLAUDE_CONFIG_DIR=str(config))
    (config / ".credentials.json").write_text("{}")  # the CLI sends the key, not this login
    run_steps(daemon, 10)
    assert spawner.count == 1 and layout.circuit_file.exists()


# -- item 4: what the doctor says ---------------------------------------------------------------------

def _credential(tmp_path: Path, env: dict[str, str]) -> tuple[Level, str]:
    (tmp_path / "agent").mkdir(exist_ok=True)
    probe = Probe(Layout(tmp_path / "agent"), {"HOME": str(tmp_path / "home"), **env},
                  http_post=lambda *_: (200, b"{}"))
    (check,) = [c for c in doctor.run_checks(probe, (doctor.check_credential,))]
    return check.level, check.detail


def test_doctor_names_each_credential_source_and_warns_about_an_interactive_login(tmp_path: Path) -> None:
    level, detail = _credential(tmp_path, {"ANTHROPIC_API_KEY": "sk-ant-api03-realkey-0123456789"})
    assert level is Level.OK and "API key accepted" in detail
    level, detail = _credential(tmp_path, {"CLAUDE_CODE_OAUTH_TOKEN": OAUTH})
    assert level is Level.OK and "CLAUDE_CODE_OAUTH_TOKEN from the environment" in detail and OAUTH not in detail
    level, detail = _credential(tmp_path, {})
    assert level is Level.WARN and "no login in" in detail and "claude setup-token" in detail
    login = tmp_path / "home" / ".claude" / ".credentials.json"
    login.parent.mkdir(parents=True)
    login.write_text("{}")
    level, detail = _credential(tmp_path, {"MAESTRO_PREFER_SUBSCRIPTION_AUTH": "1",
                                           "ANTHROPIC_API_KEY": "sk-ant-api03-realkey-0123456789"})
    assert level is Level.WARN and f"interactive login in {login.parent}" in detail
    assert "expires in an unattended service" in detail and "`claude setup-token`" in detail
    config = tmp_path / "agent-config"
    level, detail = _credential(tmp_path, {"CLAUDE_CONFIG_DIR": str(config)})
    assert level is Level.WARN and f"no login in {config}" in detail  # the agent's own folder, not ~/.claude
    config.mkdir()
    (config / ".credentials.json").write_text("{}")
    level, detail = _credential(tmp_path, {"CLAUDE_CONFIG_DIR": str(config)})
    assert f"interactive login in {config}" in detail and "claude setup-token" in detail


@pytest.mark.parametrize("name", ["CLAUDE_CODE_OAUTH_TOKEN", "CLAUDE_CONFIG_DIR", "MAESTRO_QUOTA_PAUSE_AT"])
def test_env_example_documents_the_subscription_settings(name: str) -> None:
    text = (Path(__file__).resolve().parent.parent / "maestro_py" / "templates" / "env.example").read_text()
    assert f"{name}=" in text
