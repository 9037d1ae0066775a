"""The cadence registry: cadences.toml validation, defaults, implicit cadences, prompt containment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from maestro_py.bus.tick import CADENCE_RE
from maestro_py.errors import ConfigError
from maestro_py.paths import Layout
from maestro_py.registry import Cadence, Registry, RegistryError


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    root = tmp_path / "agent"
    (root / "cadences").mkdir(parents=True)
    return Layout(root.resolve())


def write_toml(layout: Layout, text: str) -> None:
    layout.registry_file.write_text(text)


def write_prompt(layout: Layout, name: str, text: str = "Do the thing.\n") -> Path:
    path = layout.prompt_file(name)
    path.write_text(text)
    return path


def load_error(layout: Layout, text: str) -> str:
    write_toml(layout, text)
    with pytest.raises(RegistryError) as info:
        Registry.load(layout)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{layout.registry_file}: ")
    return message


# -- loading basics ------------------------------------------------------------


def test_missing_file_is_an_empty_registry(layout: Layout) -> None:
    registry = Registry.load(layout)
    assert registry.path == layout.registry_file
    assert registry.names() == []
    assert registry.get("anything") is None
    assert not registry.knows("anything")


def test_toml_syntax_error_has_line_info(layout: Layout) -> None:
    message = load_error(layout, '[inbox]\nhandler = "noop"\ntimeout_seconds = = 3\n')
    assert "invalid TOML" in message
    assert "line 3" in message


def test_non_utf8_file_is_an_error(layout: Layout) -> None:
    layout.registry_file.write_bytes(b'[inbox]\nhandler = "\xff"\n')
    with pytest.raises(RegistryError, match="UTF-8"):
        Registry.load(layout)


def test_unreadable_file_is_an_error(layout: Layout) -> None:
    layout.registry_file.mkdir()
    with pytest.raises(RegistryError, match="cannot read"):
        Registry.load(layout)


def test_error_carries_its_parts(layout: Layout) -> None:
    write_toml(layout, '[inbox]\nhandler = "noop"\ntimeout_seconds = "abc"\n')
    with pytest.raises(RegistryError) as info:
        Registry.load(layout)
    error = info.value
    assert isinstance(error, ConfigError)  # the CLI reports every configuration error the same way
    assert (error.path, error.table, error.key) == (layout.registry_file, "inbox", "timeout_seconds")
    assert str(error).endswith("cadences.toml: [inbox] timeout_seconds: must be a number > 0, got 'abc'")


def test_full_table_is_parsed(layout: Layout) -> None:
    write_prompt(layout, "inbox")
    write_toml(
        layout,
        """
[inbox]
mode = "escalate"
timeout_seconds = 90
max_attempts = 3
model = "claude-sonnet-4-5"
claude_args = ["--verbose"]
schedule = "*/15  * * * *"
overlap = "buffer_one"
max_budget_usd = 0.5
budget_tokens_daily = 100000
budget_usd_daily = 2
reserve_tokens = 0
reserve_usd = 0
budget_exempt = true
backoff_seconds = [0, 30, 120.5]
""",
    )
    cadence = Registry.load(layout).get("inbox")
    assert cadence == Cadence(
        name="inbox",
        mode="escalate",
        prompt=layout.prompt_file("inbox"),
        handler=None,
        guard=None,
        timeout_seconds=90.0,
        max_attempts=3,
        model="claude-sonnet-4-5",
        claude_args=("--verbose",),
        schedule="*/15 * * * *",
        overlap="buffer_one",
        max_budget_usd=0.5,
        budget_tokens_daily=100000,
        budget_usd_daily=2.0,
        reserve_tokens=0,
        reserve_usd=0.0,
        budget_exempt=True,
        backoff_seconds=(0.0, 30.0, 120.5),
        configured=True,
    )
    assert isinstance(cadence.timeout_seconds, float)


def test_builtin_defaults(layout: Layout) -> None:
    write_toml(layout, '[tidy]\nhandler = "noop"\n')
    cadence = Registry.load(layout).get("tidy")
    assert cadence is not None
    assert cadence.mode == "inline"
    assert cadence.prompt is None
    assert cadence.overlap == "skip"
    assert cadence.budget_exempt is False
    assert cadence.claude_args == ()
    assert (cadence.timeout_seconds, cadence.max_attempts, cadence.backoff_seconds) == (None, None, None)
    assert cadence.configured


# -- modes -----------------------------------------------------------------------


def test_mode_defaults_to_escalate_when_prompt_exists(layout: Layout) -> None:
    write_prompt(layout, "inbox")
    write_toml(layout, "[inbox]\ntimeout_seconds = 10\n")
    cadence = Registry.load(layout).get("inbox")
    assert cadence is not None and cadence.mode == "escalate"
    assert cadence.prompt == layout.prompt_file("inbox")


def test_handler_implies_inline_even_with_prompt_file(layout: Layout) -> None:
    write_prompt(layout, "inbox")
    write_toml(layout, '[inbox]\nhandler = "helpers:run"\n')
    cadence = Registry.load(layout).get("inbox")
    assert cadence is not None
    assert (cadence.mode, cadence.handler, cadence.prompt) == ("inline", "helpers:run", None)


def test_guard_implies_guarded(layout: Layout) -> None:
    write_prompt(layout, "inbox")
    write_toml(layout, '[inbox]\nguard = "python3 check.py"\n')
    cadence = Registry.load(layout).get("inbox")
    assert cadence is not None
    assert (cadence.mode, cadence.guard) == ("guarded", "python3 check.py")
    assert cadence.prompt == layout.prompt_file("inbox")


def test_nothing_to_run_is_an_error(layout: Layout) -> None:
    message = load_error(layout, "[ghost]\ntimeout_seconds = 5\n")
    assert "[ghost] nothing to run" in message


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('[x]\nmode = "inline"\n', '[x] mode: mode = "inline" needs a handler'),
        ('[x]\nmode = "guarded"\n', '[x] mode: mode = "guarded" needs a guard'),
        ('[x]\nmode = "escalate"\nhandler = "noop"\n', '[x] handler: only used when mode = "inline"'),
        ('[x]\nmode = "guarded"\nguard = "noop"\nhandler = "noop"\n', "[x] handler: only used when"),
        ('[x]\nmode = "inline"\nhandler = "noop"\nguard = "noop"\n', "[x] guard: only used when"),
        ('[x]\nhandler = "noop"\nmodel = "m"\n', "[x] model: only used by escalate and guarded"),
        ('[x]\nhandler = "noop"\nclaude_args = []\n', "[x] claude_args: only used by escalate and guarded"),
        ('[x]\nhandler = "noop"\nmax_budget_usd = 1\n', "[x] max_budget_usd: only used by escalate"),
        ('[x]\nhandler = "noop"\nprompt = "cadences/x.md"\n', "[x] prompt: only used by escalate"),
        ('[x]\nmode = "escalate"\n', "[x] prompt: file not found: 'cadences/x.md'"),
        ('[x]\nprompt = "prompts/x.md"\n', "[x] prompt: file not found: 'prompts/x.md'"),
    ],
)
def test_mode_consistency_errors(layout: Layout, toml: str, needle: str) -> None:
    write_prompt(layout, "other")
    assert needle in load_error(layout, toml)


def test_explicit_prompt_path(layout: Layout) -> None:
    (layout.root / "prompts").mkdir()
    (layout.root / "prompts" / "weekly.md").write_text("hi")
    write_toml(layout, '[weekly]\nprompt = "prompts/weekly.md"\n')
    cadence = Registry.load(layout).get("weekly")
    assert cadence is not None and cadence.mode == "escalate"
    assert cadence.prompt == layout.root / "prompts" / "weekly.md"
    assert cadence.prompt.is_absolute()


def test_absolute_prompt_inside_root_is_allowed(layout: Layout) -> None:
    path = write_prompt(layout, "inbox")
    write_toml(layout, f'[digest]\nprompt = "{path}"\n')
    cadence = Registry.load(layout).get("digest")
    assert cadence is not None and cadence.prompt == path


def test_symlink_inside_root_is_allowed(layout: Layout) -> None:
    target = write_prompt(layout, "real")
    os.symlink(target, layout.prompt_file("alias"))
    write_toml(layout, "[alias]\nmax_attempts = 2\n")
    cadence = Registry.load(layout).get("alias")
    assert cadence is not None and cadence.prompt == target


# -- prompt escapes ----------------------------------------------------------------


def test_prompt_dotdot_escape_rejected(layout: Layout) -> None:
    (layout.root.parent / "secret.md").write_text("outside")
    message = load_error(layout, '[x]\nprompt = "../secret.md"\n')
    assert "[x] prompt: must stay inside the agent root" in message


def test_prompt_absolute_outside_rejected(layout: Layout) -> None:
    outside = layout.root.parent / "secret.md"
    outside.write_text("outside")
    message = load_error(layout, f'[x]\nprompt = "{outside}"\n')
    assert "[x] prompt: must stay inside the agent root" in message


def test_prompt_symlink_out_rejected(layout: Layout) -> None:
    outside = layout.root.parent / "secret.md"
    outside.write_text("outside")
    os.symlink(outside, layout.root / "link.md")
    message = load_error(layout, '[x]\nprompt = "link.md"\n')
    assert "[x] prompt: must stay inside the agent root" in message


def test_default_prompt_symlink_out_rejected(layout: Layout) -> None:
    outside = layout.root.parent / "secret.md"
    outside.write_text("outside")
    os.symlink(outside, layout.prompt_file("x"))
    message = load_error(layout, "[x]\ntimeout_seconds = 5\n")
    assert "[x] prompt: must stay inside the agent root" in message


def test_implicit_symlink_out_is_not_a_cadence(layout: Layout) -> None:
    outside = layout.root.parent / "secret.md"
    outside.write_text("outside")
    os.symlink(outside, layout.prompt_file("sneaky"))
    registry = Registry.load(layout)
    assert registry.get("sneaky") is None
    assert "sneaky" not in registry.names()


def test_get_rejects_path_like_names(layout: Layout) -> None:
    (layout.root / "escape.md").write_text("outside cadences/")
    registry = Registry.load(layout)
    assert registry.get("../escape") is None
    assert registry.get("") is None


# -- implicit cadences ---------------------------------------------------------------


def test_implicit_cadence_from_prompt_file(layout: Layout) -> None:
    write_prompt(layout, "daily-review")
    registry = Registry.load(layout)
    cadence = registry.get("daily-review")
    assert cadence is not None
    assert cadence.mode == "escalate"
    assert cadence.prompt == layout.prompt_file("daily-review")
    assert not cadence.configured
    assert registry.knows("daily-review")
    assert registry.names() == ["daily-review"]


def test_prompt_file_added_after_load_is_seen(layout: Layout) -> None:
    registry = Registry.load(layout)
    assert registry.get("late") is None
    write_prompt(layout, "late")
    assert registry.knows("late")


def test_names_merges_configured_and_prompt_files(layout: Layout) -> None:
    write_prompt(layout, "b-prompted")
    write_prompt(layout, "a-both")
    (layout.cadences_dir / "Not_A_Name.md").write_text("ignored")
    (layout.cadences_dir / "notes.txt").write_text("ignored")
    (layout.cadences_dir / "dir.md").mkdir()
    write_toml(layout, '[a-both]\nmax_attempts = 2\n\n[c-inline]\nhandler = "noop"\n')
    assert Registry.load(layout).names() == ["a-both", "b-prompted", "c-inline"]


def test_defaults_is_reserved(layout: Layout) -> None:
    write_prompt(layout, "defaults")
    write_toml(layout, "[defaults]\nmax_attempts = 2\n")
    registry = Registry.load(layout)
    assert registry.get("defaults") is None
    assert registry.names() == []


# -- defaults --------------------------------------------------------------------------


def test_defaults_apply_to_tables_and_implicit_cadences(layout: Layout) -> None:
    write_prompt(layout, "implicit")
    write_prompt(layout, "own")
    write_toml(
        layout,
        """
[defaults]
timeout_seconds = 600
max_attempts = 2
model = "claude-haiku"
claude_args = ["--a"]
overlap = "allow"
budget_exempt = true
backoff_seconds = [5]

[own]
timeout_seconds = 30
claude_args = ["--b"]
overlap = "skip"

[tidy]
handler = "noop"
""",
    )
    registry = Registry.load(layout)
    own = registry.get("own")
    assert own is not None
    assert (own.timeout_seconds, own.max_attempts, own.model) == (30.0, 2, "claude-haiku")
    assert own.claude_args == ("--b",)  # replaced, not concatenated
    assert own.overlap == "skip" and own.budget_exempt is True and own.backoff_seconds == (5.0,)

    implicit = registry.get("implicit")
    assert implicit is not None
    assert (implicit.timeout_seconds, implicit.max_attempts, implicit.overlap) == (600.0, 2, "allow")
    assert implicit.claude_args == ("--a",)

    tidy = registry.get("tidy")
    assert tidy is not None and tidy.mode == "inline" and tidy.timeout_seconds == 600.0


@pytest.mark.parametrize("key", ["mode", "prompt", "handler", "guard", "schedule"])
def test_per_cadence_keys_rejected_in_defaults(layout: Layout, key: str) -> None:
    value = {"mode": '"inline"', "schedule": '"* * * * *"'}.get(key, '"noop"')
    message = load_error(layout, f"[defaults]\n{key} = {value}\n")
    assert f"[defaults] {key}: not allowed in [defaults]" in message


def test_defaults_values_are_validated(layout: Layout) -> None:
    message = load_error(layout, "[defaults]\nmax_attempts = 0\n")
    assert "[defaults] max_attempts: must be an integer >= 1, got 0" in message


# -- value validation ------------------------------------------------------------------

BAD_VALUES = [
    ("mode", '"fast"', 'must be one of "escalate", "inline", "guarded", got \'fast\''),
    ("prompt", '""', "must be a non-empty string, got ''"),
    ("prompt", "3", "must be a non-empty string, got 3"),
    ("handler", "1", 'must be a string: "noop", "module:function" or a command, got 1'),
    ("handler", '"  "', "must be a non-empty string, got '  '"),
    ("handler", "\"echo 'unclosed\"", "cannot split command: No closing quotation"),
    ("guard", "[]", "must be a string"),
    ("timeout_seconds", '"abc"', "must be a number > 0, got 'abc'"),
    ("timeout_seconds", "0", "must be a number > 0, got 0"),
    ("timeout_seconds", "-1.5", "must be a number > 0, got -1.5"),
    ("timeout_seconds", "true", "must be a number > 0, got True"),
    ("timeout_seconds", "inf", "must be a number > 0, got inf"),
    ("timeout_seconds", "nan", "must be a number > 0, got nan"),
    ("max_attempts", "0", "must be an integer >= 1, got 0"),
    ("max_attempts", "1.5", "must be an integer >= 1, got 1.5"),
    ("max_attempts", "true", "must be an integer >= 1, got True"),
    ("model", "5", "must be a non-empty string, got 5"),
    ("model", '""', "must be a non-empty string, got ''"),
    ("claude_args", '"--verbose"', "must be a list of strings, got '--verbose'"),
    ("claude_args", '["--a", 1]', "must be a list of strings, got ['--a', 1]"),
    ("schedule", '"* * * *"', "is not a valid schedule: expected 5 fields"),
    ("schedule", '"@reboot"', "is not a valid schedule: unknown macro"),
    ("schedule", '"61 * * * *"', "is not a valid schedule: minute field '61': 61 is out of range 0-59"),
    ("schedule", "5", "must be a cron expression"),
    ("overlap", '"queue"', 'must be one of "skip", "buffer_one", "allow", got \'queue\''),
    ("max_budget_usd", "0", "must be a number > 0, got 0"),
    ("max_budget_usd", "false", "must be a number > 0, got False"),
    ("budget_tokens_daily", "0", "must be an integer > 0, got 0"),
    ("budget_tokens_daily", "10.0", "must be an integer > 0, got 10.0"),
    ("budget_usd_daily", "-1", "must be a number > 0, got -1"),
    ("budget_usd_daily", '"5"', "must be a number > 0, got '5'"),
    ("reserve_tokens", "-1", "must be an integer >= 0, got -1"),
    ("reserve_tokens", "false", "must be an integer >= 0, got False"),
    ("reserve_usd", "-0.01", "must be a number >= 0, got -0.01"),
    ("reserve_usd", "true", "must be a number >= 0, got True"),
    ("budget_exempt", '"yes"', "must be true or false, got 'yes'"),
    ("budget_exempt", "1", "must be true or false, got 1"),
    ("backoff_seconds", "[]", "must be a non-empty list of numbers >= 0, got []"),
    ("backoff_seconds", "5", "must be a non-empty list of numbers >= 0, got 5"),
    ("backoff_seconds", "[1, -1]", "must be a non-empty list of numbers >= 0, got [1, -1]"),
    ("backoff_seconds", "[1, true]", "must be a non-empty list of numbers >= 0, got [1, True]"),
]


@pytest.mark.parametrize(("key", "value", "problem"), BAD_VALUES)
def test_bad_value_names_file_table_key_and_problem(
    layout: Layout, key: str, value: str, problem: str
) -> None:
    write_prompt(layout, "inbox")
    message = load_error(layout, f"[inbox]\n{key} = {value}\n")
    assert f"cadences.toml: [inbox] {key}: {problem}" in message


def test_unknown_key_suggests_the_right_one(layout: Layout) -> None:
    write_prompt(layout, "inbox")
    message = load_error(layout, "[inbox]\ntimeout_secs = 5\n")
    assert "[inbox] timeout_secs: unknown key (did you mean timeout_seconds?)" in message


def test_unknown_key_without_suggestion(layout: Layout) -> None:
    write_prompt(layout, "inbox")
    assert "[inbox] zzz: unknown key" in load_error(layout, "[inbox]\nzzz = 5\n")


def test_unknown_key_in_defaults(layout: Layout) -> None:
    assert "[defaults] retries: unknown key" in load_error(layout, "[defaults]\nretries = 5\n")


def test_dotted_table_name_hints_at_quoting(layout: Layout) -> None:
    message = load_error(layout, '[inbox.processor]\nhandler = "noop"\n')
    assert '[inbox] processor: unknown key (for a cadence named "inbox.processor", quote it' in message


def test_quoted_dotted_name_is_a_cadence(layout: Layout) -> None:
    write_toml(layout, '["inbox.processor"]\nhandler = "noop"\n')
    assert Registry.load(layout).names() == ["inbox.processor"]


@pytest.mark.parametrize("name", ["Inbox", "-lead", "has space", "a" * 65, "ünïcode"])
def test_bad_cadence_name(layout: Layout, name: str) -> None:
    message = load_error(layout, f'["{name}"]\nhandler = "noop"\n')
    assert f"[{name}] cadence name must match" in message


def test_top_level_scalar_is_an_error(layout: Layout) -> None:
    message = load_error(layout, "timeout_seconds = 5\n")
    assert "timeout_seconds: top-level keys must be tables" in message


def test_defaults_must_be_a_table(layout: Layout) -> None:
    assert "defaults: top-level keys must be tables" in load_error(layout, "defaults = 5\n")


def test_array_of_tables_is_an_error(layout: Layout) -> None:
    message = load_error(layout, '[[inbox]]\nhandler = "noop"\n')
    assert "inbox: top-level keys must be tables" in message


def test_name_regex_is_exported() -> None:
    assert CADENCE_RE.match("inbox-processor.v2_b")
    assert not CADENCE_RE.match("../x")
    assert CADENCE_RE.match("a" * 64)
    assert not CADENCE_RE.match("a" * 65)
    assert not CADENCE_RE.match("inbox\n")


def test_trailing_newline_in_table_name_rejected(layout: Layout) -> None:
    assert "cadence name must match" in load_error(layout, '["inbox\\n"]\nhandler = "noop"\n')


def test_a_schedule_is_checked_in_full_at_load_and_may_have_a_time_zone(tmp_path: Path) -> None:
    """`61 * * * *` used to pass load and doctor and fail only at `service print` (issue 17, item 6)."""
    from maestro_py.service import units as svc

    layout = Layout(tmp_path)
    (tmp_path / "cadences").mkdir()
    (tmp_path / "cadences" / "memo.md").write_text("hi")
    (tmp_path / "cadences.toml").write_text('[memo]\nschedule = "61 * * * *"\n')
    with pytest.raises(RegistryError, match="minute"):
        Registry.load(layout)
    (tmp_path / "cadences.toml").write_text('[memo]\nschedule = "@daily"\ntimezone = "Mars/Base"\n')
    with pytest.raises(RegistryError, match="IANA time zone"):
        Registry.load(layout)
    (tmp_path / "cadences.toml").write_text('[memo]\nschedule = "@daily"\ntimezone = "Europe/Paris"\n')
    registry = Registry.load(layout)
    assert registry.get("memo").schedule == "0 0 * * *" and registry.get("memo").timezone == "Europe/Paris"
    spec = svc.ServiceSpec(root=tmp_path, python="/usr/bin/python3", name="a", schedules=svc.schedules(registry),
                           stop_timeout=40, zones=svc.zones(registry))
    timer = [f for f in svc.systemd_files(spec) if f.name.endswith(".timer")][0]
    assert "OnCalendar=*-*-* 00:00:00 Europe/Paris" in timer.content
    with pytest.raises(svc.ServiceError, match="launchd has no per-job time zone"):
        svc.launchd_files(spec)
