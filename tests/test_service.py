"""`maestro service`: launchd plists (plistlib round trip), systemd units (`systemd-analyze verify`),
the CLI verbs with --dest, --now against fake launchctl/systemctl, and the committed examples in sync."""

from __future__ import annotations

import os
import plistlib
import pwd
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from maestro_py import cron
from maestro_py.paths import Layout
from maestro_py.registry import Registry
from maestro_py.service import units as svc
from tests.fakes import invoke, one_line_error
from tests.service_support import PY, REPO, SYSTEMD_ANALYZE, example_agent, fake_tool, needs_systemd, verify


@pytest.fixture
def agent(tmp_path: Path) -> Path:
    return example_agent(tmp_path / "agent")


def spec_for(root: Path, **changes: object) -> svc.ServiceSpec:
    registry = Registry.load(Layout(root))
    values: dict[str, object] = dict(root=root, python=PY, name=svc.agent_name(root.name),
                                     schedules=svc.schedules(registry), stop_timeout=50,
                                     watchdog_sec=svc.watchdog_sec(registry, 1800))
    values.update(changes)
    return svc.ServiceSpec(**values)  # type: ignore[arg-type]


def write(files: list[svc.ServiceFile], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).write_text(f.content)
    return [folder / f.name for f in files]


# -- inputs -----------------------------------------------------------------------


def test_schedules_come_from_the_registry(agent: Path) -> None:
    (agent / "cadences" / "unscheduled.md").write_text("hi")
    assert svc.schedules(Registry.load(Layout(agent))) == (
        ("heartbeat", "*/15 * * * *"), ("inbox-processor", "*/5 * * * *"), ("weekly-strategic-memo", "0 8 * * 1"))


@pytest.mark.parametrize("text, name", [
    ("chief-of-staff", "chief-of-staff"), ("Chief Of Staff", "chief-of-staff"), ("my_agent.v2", "my_agent.v2"),
    ("--weird@@name--", "weird-name"), ("!!!", "agent"), ("ÄÖÜ agent", "agent"),
])
def test_agent_name(text: str, name: str) -> None:
    assert svc.agent_name(text) == name


def test_stop_timeout_outlasts_the_drain() -> None:
    assert svc.stop_timeout(30, 5) == 50
    assert svc.stop_timeout(0.5, 0) == 16


@pytest.mark.parametrize("changes, fragment", [
    ({"root": Path("relative/agent")}, "agent root must be an absolute path"),
    ({"python": "python3"}, "interpreter must be an absolute path"),
    ({"python": "/usr/bin/py\nthon"}, "contains control characters"),
    ({"name": "Bad Name"}, "must match"),
])
def test_spec_refuses_bad_inputs(agent: Path, changes: dict[str, object], fragment: str) -> None:
    values: dict[str, object] = {"root": agent, "python": PY, "name": "agent", "schedules": (), "stop_timeout": 50}
    with pytest.raises(svc.ServiceError, match=fragment):
        svc.ServiceSpec(**{**values, **changes})  # type: ignore[arg-type]


# -- launchd ----------------------------------------------------------------------


def test_launchd_plists_round_trip(agent: Path) -> None:
    files = svc.launchd_files(spec_for(agent))
    assert [f.name for f in files] == [
        "com.maestro.agent.daemon.plist", "com.maestro.agent.enqueue.heartbeat.plist",
        "com.maestro.agent.enqueue.inbox-processor.plist", "com.maestro.agent.enqueue.weekly-strategic-memo.plist"]
    docs = {f.unit: plistlib.loads(f.content.encode()) for f in files}
    daemon = docs["com.maestro.agent.daemon"]
    assert daemon["Label"] == "com.maestro.agent.daemon"
    # --log-stderr: its events, one line each, in launchd-daemon.err.log (launchd has no journal)
    assert daemon["ProgramArguments"] == [PY, "-m", "maestro_py", "--root", str(agent), "run", "--log-stderr"]
    assert daemon["KeepAlive"] is True and daemon["RunAtLoad"] is True and daemon["ThrottleInterval"] == 10
    assert daemon["WorkingDirectory"] == str(agent)
    assert daemon["StandardOutPath"] == str(agent / "logs" / "launchd-daemon.out.log")
    assert daemon["StandardErrorPath"] == str(agent / "logs" / "launchd-daemon.err.log")
    assert daemon["ExitTimeOut"] == 50 > 30 + 5
    assert daemon["EnvironmentVariables"]["MAESTRO_AGENT_ROOT"] == str(agent)
    assert "StartCalendarInterval" not in daemon
    for cadence, expr in svc.schedules(Registry.load(Layout(agent))):
        doc = docs[f"com.maestro.agent.enqueue.{cadence}"]
        assert doc["ProgramArguments"] == [PY, "-m", "maestro_py", "--root", str(agent), "enqueue", cadence,
                                           "--source", "launchd"]
        assert doc["StartCalendarInterval"] == cron.to_calendar_intervals(expr)
        assert "KeepAlive" not in doc and doc["WorkingDirectory"] == str(agent)
        assert Path(doc["StandardErrorPath"]).parent == agent / "logs"
    assert docs["com.maestro.agent.enqueue.weekly-strategic-memo"]["StartCalendarInterval"] == {
        "Minute": 0, "Hour": 8, "Weekday": 1}


def test_launchd_refuses_what_it_cannot_express(tmp_path: Path) -> None:
    toml = '[memo]\nmode = "inline"\nhandler = "noop"\nschedule = "0 12 */2 * 1"\n'
    spec = spec_for(example_agent(tmp_path / "agent", toml))
    with pytest.raises(svc.ServiceError) as info:
        svc.launchd_files(spec)
    message = str(info.value)
    assert "cadence 'memo'" in message and "'0 12 */2 * 1'" in message and "launchd" in message
    assert "both Day and Weekday" in message
    assert "OnCalendar=Mon *-*-01/2 12:00:00" in svc.systemd_files(spec)[1].content  # systemd can


def test_an_invalid_schedule_names_the_cadence(tmp_path: Path) -> None:
    # The registry refuses such a schedule at load now; a spec built by hand is still checked.
    spec = svc.ServiceSpec(root=tmp_path, python="/usr/bin/python3", name="a", schedules=(("tick", "61 * * * *"),),
                           stop_timeout=40)
    for manager in (svc.LAUNCHD, svc.SYSTEMD):
        with pytest.raises(svc.ServiceError, match=r"cadence 'tick': schedule '61 \* \* \* \*' is not usable: "
                                                   r"minute field '61': 61 is out of range"):
            svc.generate(spec, manager)


# -- systemd ----------------------------------------------------------------------


def test_systemd_units(agent: Path) -> None:
    files = svc.systemd_files(spec_for(agent))
    assert [(f.name, f.unit) for f in files] == [
        ("maestro-agent.service", "maestro-agent.service"),
        ("maestro-agent-heartbeat.timer", "maestro-agent-heartbeat.timer"),
        ("maestro-agent-heartbeat.service", None),
        ("maestro-agent-inbox-processor.timer", "maestro-agent-inbox-processor.timer"),
        ("maestro-agent-inbox-processor.service", None),
        ("maestro-agent-weekly-strategic-memo.timer", "maestro-agent-weekly-strategic-memo.timer"),
        ("maestro-agent-weekly-strategic-memo.service", None),
        ("maestro-agent.trigger-failed@.service", None),  # what a trigger's OnFailure= starts
    ]
    daemon = files[0].content.splitlines()
    for line in ["Type=notify", "NotifyAccess=main", "WatchdogSec=330", "Restart=on-failure", "KillMode=mixed",
                 "TimeoutStopSec=50", f"WorkingDirectory={agent}", f"ExecStart={PY} -m maestro_py --root {agent} run",
                 f"Environment=MAESTRO_AGENT_ROOT={agent}", "WantedBy=default.target"]:
        assert line in daemon
    assert not any(line.startswith("User=") for line in daemon)
    timer = files[1].content.splitlines()
    assert "OnCalendar=*-*-* *:00/15:00" in timer and "Persistent=true" in timer and "WantedBy=timers.target" in timer
    oneshot = files[2].content.splitlines()
    assert "Type=oneshot" in oneshot
    assert f"ExecStart={PY} -m maestro_py --root {agent} enqueue heartbeat --source systemd" in oneshot


def test_cron_or_rule_becomes_two_oncalendar_lines(tmp_path: Path) -> None:
    toml = '[report]\nmode = "inline"\nhandler = "noop"\nschedule = "30 6 1 * mon"\n'
    timer = svc.systemd_files(spec_for(example_agent(tmp_path / "agent", toml)))[1].content.splitlines()
    assert [line for line in timer if line.startswith("OnCalendar=")] == [
        "OnCalendar=Mon *-*-* 06:30:00", "OnCalendar=*-*-01 06:30:00"]


def test_systemd_refuses_an_interpreter_it_cannot_start(agent: Path) -> None:
    spec = spec_for(agent, python='/opt/py"3/bin/python')
    with pytest.raises(svc.ServiceError, match="systemd cannot start an interpreter whose path contains quotes"):
        svc.systemd_files(spec)
    assert plistlib.loads(svc.launchd_files(spec)[0].content.encode())["ProgramArguments"][0] == spec.python


def test_watchdog_can_be_turned_off(agent: Path) -> None:
    assert "WatchdogSec" not in svc.systemd_files(spec_for(agent, watchdog_sec=0))[0].content


@needs_systemd
def test_user_units_pass_systemd_analyze_verify(agent: Path, tmp_path: Path) -> None:
    verify(write(svc.systemd_files(spec_for(agent)), tmp_path / "units"), user=True, tmp=tmp_path)


@needs_systemd
def test_system_units_pass_systemd_analyze_verify(agent: Path, tmp_path: Path) -> None:
    me = pwd.getpwuid(os.getuid()).pw_name
    files = svc.systemd_files(spec_for(agent, user=False, run_as=me))
    assert f"User={me}" in files[0].content.splitlines() and "WantedBy=multi-user.target" in files[0].content
    verify(write(files, tmp_path / "units"), user=False, tmp=tmp_path)


@needs_systemd
def test_awkward_paths_are_escaped(tmp_path: Path) -> None:
    """Blanks, `%` (specifiers), `$` (variables) and quotes survive systemd's parsing of the unit."""
    venv = tmp_path / "py env %i $HOME" / "bin"
    venv.mkdir(parents=True)
    python = venv / "python 3"
    python.symlink_to(PY)
    root = example_agent(tmp_path / 'my "agent" $USER 100%')
    files = svc.systemd_files(spec_for(root, python=str(python)))
    assert files[0].name == "maestro-my-agent-user-100.service"
    lines = files[0].content.splitlines()
    exec_line = next(line for line in lines if line.startswith("ExecStart="))
    # argv[0] gets no variable expansion (so no `$$`); the other words do.
    assert exec_line.startswith(f'ExecStart="{tmp_path}/py env %%i $HOME/bin/python 3" -m maestro_py --root ')
    assert exec_line.endswith(f'"{tmp_path}/my \\"agent\\" $$USER 100%%" run')
    assert f'Environment="MAESTRO_AGENT_ROOT={tmp_path}/my \\"agent\\" $USER 100%%"' in lines
    assert f'WorkingDirectory={tmp_path}/my "agent" $USER 100%%' in lines
    verify(write(files, tmp_path / "units"), user=False, tmp=tmp_path)  # finds the interpreter: quoting is right
    broken = tmp_path / "broken"
    write([svc.ServiceFile(f.name, f.content.replace("%%i", "%i"), f.unit) for f in files[:1]], broken)
    result = subprocess.run([SYSTEMD_ANALYZE or "", "verify", "--man=no", str(broken / files[0].name)],
                            capture_output=True, text=True)
    assert result.returncode != 0  # the check above would notice a missing escape


# -- the CLI ----------------------------------------------------------------------


def test_print_writes_every_file_after_a_header(runner: CliRunner, agent: Path, tmp_path: Path) -> None:
    result = invoke(runner, agent, "service", "print", "--systemd", "--user")
    assert result.exit_code == 0, result.output
    dest = tmp_path / "home" / ".config" / "systemd" / "user"
    files = svc.systemd_files(spec_for(agent))
    expected = "\n".join(f"# ==> {dest / f.name} <==\n{f.content}" for f in files)
    assert result.stdout == expected
    assert not dest.exists()


def test_print_launchd_uses_the_default_folder(runner: CliRunner, agent: Path, tmp_path: Path) -> None:
    result = invoke(runner, agent, "service", "print", "--launchd")
    assert result.exit_code == 0, result.output
    assert f"# ==> {tmp_path}/home/Library/LaunchAgents/com.maestro.agent.daemon.plist <==" in result.stdout
    assert result.stdout.count("# ==> ") == 4


def test_install_and_uninstall_with_dest(runner: CliRunner, agent: Path, tmp_path: Path) -> None:
    dest = tmp_path / "units"
    dest.mkdir()
    (dest / "someone-else.service").write_text("[Service]\n")
    result = invoke(runner, agent, "service", "install", "--systemd", "--user", "--dest", str(dest))
    assert result.exit_code == 0, result.output
    expected = {f.name: f.content for f in svc.systemd_files(spec_for(agent))}
    assert {p.name: p.read_text() for p in dest.iterdir() if p.name != "someone-else.service"} == expected
    assert (dest / "maestro-agent.service").stat().st_mode & 0o777 == 0o644
    assert "systemctl --user daemon-reload" in result.stdout
    assert f"note: {dest} is not a folder the service manager reads" in result.stdout  # the commands need it first
    assert ("systemctl --user enable --now maestro-agent.service maestro-agent-heartbeat.timer "
            "maestro-agent-inbox-processor.timer maestro-agent-weekly-strategic-memo.timer") in result.stdout
    again = invoke(runner, agent, "service", "install", "--systemd", "--user", "--dest", str(dest))
    assert again.exit_code == 0  # reinstalling replaces
    removed = invoke(runner, agent, "service", "uninstall", "--systemd", "--user", "--dest", str(dest))
    assert removed.exit_code == 0, removed.output
    assert [p.name for p in dest.iterdir()] == ["someone-else.service"]
    assert removed.stdout.count("removed ") == 8
    assert "systemctl --user disable --now maestro-agent.service" in removed.stdout
    twice = invoke(runner, agent, "service", "uninstall", "--systemd", "--user", "--dest", str(dest))
    assert twice.exit_code == 0 and twice.stdout.count("not installed: ") == 8


def test_install_launchd_with_dest(runner: CliRunner, agent: Path, tmp_path: Path) -> None:
    dest = tmp_path / "agents"
    result = invoke(runner, agent, "service", "install", "--launchd", "--dest", str(dest))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in dest.iterdir()) == sorted(f.name for f in svc.launchd_files(spec_for(agent)))
    for path in dest.iterdir():
        assert plistlib.loads(path.read_bytes())["Label"] == path.name.removesuffix(".plist")
    assert f"launchctl bootstrap gui/{os.getuid()} {dest}/com.maestro.agent.daemon.plist" in result.stdout
    assert (agent / "logs").is_dir()  # launchd would not create the log folder
    assert invoke(runner, agent, "service", "uninstall", "--launchd", "--dest", str(dest)).exit_code == 0
    assert list(dest.iterdir()) == []


def test_system_units_run_as_the_roots_owner(runner: CliRunner, agent: Path, tmp_path: Path) -> None:
    owner = pwd.getpwuid(agent.stat().st_uid).pw_name
    result = invoke(runner, agent, "service", "print", "--systemd", "--dest", str(tmp_path / "u"))
    assert result.exit_code == 0 and f"\nUser={owner}\n" in result.stdout
    result = invoke(runner, agent, "service", "print", "--systemd", "--run-as", "maestro")
    assert result.exit_code == 0 and "\nUser=maestro\n" in result.stdout


def test_placeholders_for_packaging(runner: CliRunner, agent: Path) -> None:
    result = invoke(runner, agent, "service", "print", "--systemd", "--user", "--python", "/opt/x/bin/python",
                    "--deploy-root", "/srv/agents/cos", "--name", "cos", "--stop-timeout", "99", "--watchdog-sec", "20")
    assert result.exit_code == 0, result.output
    assert "ExecStart=/opt/x/bin/python -m maestro_py --root /srv/agents/cos run" in result.stdout
    assert "maestro-cos-heartbeat.timer" in result.stdout and "TimeoutStopSec=99" in result.stdout
    assert "WatchdogSec=20" in result.stdout and str(agent) not in result.stdout


def test_stop_timeout_follows_the_settings(runner: CliRunner, agent: Path) -> None:
    env = {"MAESTRO_STOP_GRACE_SECONDS": "100", "MAESTRO_KILL_GRACE_SECONDS": "10"}
    result = invoke(runner, agent, "service", "print", "--systemd", env=env)
    assert "TimeoutStopSec=125" in result.stdout
    result = invoke(runner, agent, "service", "print", "--launchd", env=env)
    assert "<key>ExitTimeOut</key>\n\t<integer>125</integer>" in result.stdout


@pytest.mark.parametrize("args, fragment", [
    (["print"], "give exactly one of --launchd or --systemd"),
    (["print", "--launchd", "--systemd"], "give exactly one of --launchd or --systemd"),
    (["install", "--launchd", "--user"], "--user is for --systemd"),
    (["print", "--systemd", "--user", "--run-as", "bob"], "--run-as is only for system-wide units"),
    (["print", "--launchd", "--run-as", "bob"], "--run-as is only for system-wide units"),
    (["install", "--systemd", "--user", "--now", "--dest", "/tmp/x"], "--now cannot be combined with --dest"),
    (["print", "--systemd", "--python", "python3"], "--python needs a path"),
    (["print", "--systemd", "--name", "Not Valid"], "agent name 'Not Valid' must match"),
    (["print", "--systemd", "--watchdog-sec", "-1"], "--watchdog-sec"),
    (["print", "--systemd", "--now"], "No such option"),
])
def test_bad_combinations_exit_2(runner: CliRunner, agent: Path, args: list[str], fragment: str) -> None:
    result = invoke(runner, agent, "service", *args)
    assert result.exit_code == 2, result.output
    assert fragment in one_line_error(result)


def test_an_inexpressible_schedule_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    toml = '[memo]\nmode = "inline"\nhandler = "noop"\nschedule = "0 12 */2 * 1"\n'
    root = example_agent(tmp_path / "agent", toml)
    result = invoke(runner, root, "service", "install", "--launchd", "--dest", str(tmp_path / "d"))
    assert result.exit_code == 2
    assert "cadence 'memo': schedule '0 12 */2 * 1' cannot be expressed for launchd" in one_line_error(result)
    assert not (tmp_path / "d").exists()


def test_an_invalid_registry_exits_78(runner: CliRunner, tmp_path: Path) -> None:
    root = example_agent(tmp_path / "agent", "[x]\nbogus = 1\n")
    result = invoke(runner, root, "service", "print", "--systemd")
    assert result.exit_code == 78 and "unknown key" in one_line_error(result)


def test_install_and_uninstall_now_run_systemctl(runner: CliRunner, agent: Path, tmp_path: Path) -> None:
    dest = tmp_path / "home" / ".config" / "systemd" / "user"
    log = tmp_path / "calls.log"
    fake_tool(tmp_path / "bin", "systemctl", log, dest)
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    result = invoke(runner, agent, "service", "install", "--systemd", "--user", "--now", env=env)
    assert result.exit_code == 0, result.output
    assert len(list(dest.iterdir())) == 8
    result = invoke(runner, agent, "service", "uninstall", "--systemd", "--user", "--now", env=env)
    assert result.exit_code == 0, result.output
    timers = ("maestro-agent-heartbeat.timer maestro-agent-inbox-processor.timer "
              "maestro-agent-weekly-strategic-memo.timer")
    assert log.read_text().splitlines() == [
        "--user daemon-reload [8]",
        f"--user enable --now maestro-agent.service {timers} [8]",
        f"--user disable --now maestro-agent.service {timers} [8]",  # stopped while the files still exist
        "--user daemon-reload [0]",
    ]


def test_now_without_the_tool_installs_and_says_so(runner: CliRunner, agent: Path, tmp_path: Path) -> None:
    empty = tmp_path / "nobin"
    empty.mkdir()
    result = invoke(runner, agent, "service", "install", "--systemd", "--user", "--now", env={"PATH": str(empty)})
    assert result.exit_code == 1
    assert "systemctl is not on PATH" in one_line_error(result)
    assert "systemctl --user enable --now maestro-agent.service" in result.stdout
    assert len(list((tmp_path / "home" / ".config" / "systemd" / "user").iterdir())) == 8


def test_launchd_now_tolerates_a_job_that_is_not_loaded(runner: CliRunner, agent: Path, tmp_path: Path) -> None:
    dest = tmp_path / "home" / "Library" / "LaunchAgents"
    log = tmp_path / "calls.log"
    fake_tool(tmp_path / "bin", "launchctl", log, dest, fail_on="bootout")
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    result = invoke(runner, agent, "service", "install", "--launchd", "--now", env=env)
    assert result.exit_code == 0, result.output
    calls = log.read_text().splitlines()
    uid = os.getuid()
    assert calls[0] == f"bootout gui/{uid}/com.maestro.agent.daemon [4]"
    assert calls[4] == f"bootstrap gui/{uid} {dest}/com.maestro.agent.daemon.plist [4]"
    assert len(calls) == 8
    result = invoke(runner, agent, "service", "uninstall", "--launchd", "--now", env=env)
    assert result.exit_code == 0, result.output
    assert log.read_text().splitlines()[8:] == [
        f"bootout gui/{uid}/{label} [4]" for label in (
            "com.maestro.agent.daemon", "com.maestro.agent.enqueue.heartbeat",
            "com.maestro.agent.enqueue.inbox-processor", "com.maestro.agent.enqueue.weekly-strategic-memo")]
    assert list(dest.iterdir()) == []


def test_a_failing_systemctl_is_an_error(runner: CliRunner, agent: Path, tmp_path: Path) -> None:
    fake_tool(tmp_path / "bin", "systemctl", tmp_path / "log", tmp_path, fail_on="--user")
    result = invoke(runner, agent, "service", "install", "--systemd", "--user", "--now",
                    env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"})
    assert result.exit_code == 1
    assert "`systemctl --user daemon-reload` exited 3" in one_line_error(result)


# -- the committed examples ---------------------------------------------------------


def test_committed_examples_are_in_sync(tmp_path: Path) -> None:
    """launchd/ and systemd/ are exactly what scripts/gen-service-examples.sh produces."""
    subprocess.run(["bash", str(REPO / "scripts" / "gen-service-examples.sh"), str(tmp_path)], check=True,
                   capture_output=True, env={**os.environ, "PYTHON": PY})
    for folder in ("launchd", "systemd"):
        fresh = {p.name: p.read_text() for p in (tmp_path / folder).iterdir()}
        committed = {p.name: p.read_text() for p in (REPO / folder).iterdir()}
        assert committed == fresh, f"{folder}/ is stale: run scripts/gen-service-examples.sh"


def test_committed_plists_load() -> None:
    for path in sorted((REPO / "launchd").glob("*.plist")):
        doc = plistlib.loads(path.read_bytes())
        assert doc["Label"] == path.name.removesuffix(".plist")
        assert doc["ProgramArguments"][:5] == ["/opt/maestro/.venv/bin/python", "-m", "maestro_py", "--root",
                                               "/opt/maestro/examples/agent"]


@needs_systemd
def test_committed_units_verify_once_the_placeholders_exist(tmp_path: Path) -> None:
    root = example_agent(tmp_path / "agent")
    units = tmp_path / "units"
    units.mkdir()
    for path in (REPO / "systemd").iterdir():
        text = path.read_text().replace("/opt/maestro/.venv/bin/python", PY)
        (units / path.name).write_text(text.replace("/opt/maestro/examples/agent", str(root)))
    verify(sorted(units.iterdir()), user=True, tmp=tmp_path)


def test_watchdog_outlasts_the_longest_inline_call(tmp_path: Path) -> None:
    def registry(toml: str, name: str) -> Registry:
        return Registry.load(Layout(example_agent(tmp_path / name, toml)))

    assert svc.watchdog_sec(registry("", "empty"), 1800) == 60
    fast = '[a]\nmode = "inline"\nhandler = "noop"\ntimeout_seconds = 10\n'
    assert svc.watchdog_sec(registry(fast, "fast"), 1800) == 60
    assert svc.watchdog_sec(registry('[a]\nmode = "inline"\nhandler = "noop"\n', "default"), 1800) == 1830
    slow_guard = ('[g]\nmode = "guarded"\nguard = "noop"\nprompt = "cadences/inbox-processor.md"\n'
                  "timeout_seconds = 95.5\n")
    assert svc.watchdog_sec(registry(slow_guard, "guard"), 1800) == 126
    escalate = '[e]\nprompt = "cadences/inbox-processor.md"\ntimeout_seconds = 5000\n'
    assert svc.watchdog_sec(registry(escalate, "escalate"), 1800) == 60  # sub-sessions do not block the loop


def test_cli_watchdog_default_comes_from_the_registry(runner: CliRunner, agent: Path) -> None:
    result = invoke(runner, agent, "service", "print", "--systemd", "--user")
    assert "\nWatchdogSec=330\n" in result.stdout  # the example's inline/guarded cadences: timeout 300
    result = invoke(runner, agent, "service", "print", "--systemd", "--user", "--watchdog-sec", "0")
    assert "WatchdogSec" not in result.stdout
