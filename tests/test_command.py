"""What a sub-session is started with: its environment and credentials."""

from __future__ import annotations

from pathlib import Path

from maestro_py.session.command import child_env

KEY = "sk-ant-api03-" + "k" * 40
AUTH = "auth-token-" + "a" * 40
OAUTH = "sk-ant-oat01-" + "o" * 40


def test_preferring_the_subscription_withholds_every_api_credential(tmp_path: Path) -> None:
    """ANTHROPIC_AUTH_TOKEN used to reach the child, which then authenticated with it instead of the login."""
    env = {"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_AUTH_TOKEN": AUTH, "CLAUDE_CODE_OAUTH_TOKEN": OAUTH,
           "MAESTRO_PREFER_SUBSCRIPTION_AUTH": "true", "HOME": "/h"}
    child = child_env(env, tmp_path)
    assert "ANTHROPIC_API_KEY" not in child and "ANTHROPIC_AUTH_TOKEN" not in child
    assert child["CLAUDE_CODE_OAUTH_TOKEN"] == OAUTH  # the subscription's own token
    assert child["AGENT_DIR"] == str(tmp_path) and child["HOME"] == "/h"


def test_only_the_credential_in_use_passes_when_the_subscription_is_not_preferred(tmp_path: Path) -> None:
    child = child_env({"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_AUTH_TOKEN": AUTH, "CLAUDE_CODE_OAUTH_TOKEN": OAUTH},
                      tmp_path)
    assert child["ANTHROPIC_API_KEY"] == KEY
    assert "ANTHROPIC_AUTH_TOKEN" not in child and "CLAUDE_CODE_OAUTH_TOKEN" not in child
    assert child["CLAUDE_CODE_SUBPROCESS_ENV_SCRUB"] == "0"  # see Permissions.scrubs_credential


def test_a_placeholder_key_is_withheld_but_a_real_auth_token_is_not(tmp_path: Path) -> None:
    child = child_env({"ANTHROPIC_API_KEY": "your-api-key-here", "ANTHROPIC_AUTH_TOKEN": AUTH}, tmp_path)
    assert "ANTHROPIC_API_KEY" not in child and child["ANTHROPIC_AUTH_TOKEN"] == AUTH


def test_the_cli_defaults_are_set_unless_the_operator_set_them(tmp_path: Path) -> None:
    assert child_env({}, tmp_path)["CLAUDE_CODE_MAX_RETRIES"] == "2"
    assert child_env({"CLAUDE_CODE_MAX_RETRIES": "0"}, tmp_path)["CLAUDE_CODE_MAX_RETRIES"] == "0"


def test_stream_json_by_default_and_json_for_a_cadence_that_relies_on_it(tmp_path: Path) -> None:
    from maestro_py.registry import Registry, RegistryError
    from maestro_py.session.command import argv
    from tests.fakes import write_agent

    layout = write_agent(tmp_path / "agent", "[old]\noutput_format = \"json\"\n", {"old": "hi", "new": "hi"})
    registry = Registry.load(layout)
    old, new = registry.get("old"), registry.get("new")
    assert old is not None and new is not None
    assert argv("claude", model=None, extra=(), output_format=new.output_format)[1:] == [
        "--print", "--output-format", "stream-json", "--verbose", "--no-session-persistence"]
    assert argv("claude", model=None, extra=(), output_format=old.output_format)[1:] == [
        "--print", "--output-format", "json", "--no-session-persistence"]
    write_agent(layout, "[old]\noutput_format = \"text\"\n", {"old": "hi"})
    try:
        Registry.load(layout)
    except RegistryError as exc:
        assert "output_format" in str(exc)
    else:
        raise AssertionError("output_format = text was accepted")
