"""A secret in a URL is masked in every form a URL can carry one, wherever maestro shows it (issue: a PostgreSQL
password given as a query parameter was shown in clear text in status, consumer.json, events, stderr, alerts and
doctor)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from maestro_py.redact import Redactor, mask_url, url_secrets
from tests.fakes import REPO, FakeReceiver, daemon_env, write_agent

PW = "TopSecretPw123"


@pytest.mark.parametrize("url, shown", [
    (f"postgresql://maestro:{PW}@db.example:5432/gov", "postgresql://maestro:***@db.example:5432/gov"),
    (f"postgresql://maestro@127.0.0.1:1/gov?password={PW}&sslmode=disable",
     "postgresql://maestro@127.0.0.1:1/gov?password=***&sslmode=disable"),
    (f"postgresql://maestro@h/gov?sslmode=require&sslpassword={PW}", "postgresql://maestro@h/gov?sslmode=require&sslpassword=***"),
    (f"postgresql://h/gov?auth_token={PW}&application_name=maestro", "postgresql://h/gov?auth_token=***&application_name=maestro"),
    (f"postgresql://u:{PW}@h/gov?PASSWORD={PW}", "postgresql://u:***@h/gov?PASSWORD=***"),
    ("sqlite:////srv/maestro/governor.db", "sqlite:////srv/maestro/governor.db"),
])
def test_mask_url_hides_every_form_a_url_carries_a_secret_in(url: str, shown: str) -> None:
    assert mask_url(url) == shown
    assert PW not in mask_url(url)


def test_url_secrets_finds_them_as_written_and_decoded() -> None:
    url = "postgresql://u:p%40ss%2Fword@h/db?password=Top%20Secret%2B1&sslmode=disable"
    assert {"p%40ss%2Fword", "p@ss/word", "Top%20Secret%2B1", "Top Secret+1"} <= url_secrets(url)
    masked = Redactor({"MAESTRO_GOVERNOR_URL": url}).text(f"could not connect: password Top Secret+1 for p@ss/word")
    assert "Top Secret" not in masked and "p@ss/word" not in masked


def test_a_query_password_never_reaches_status_files_events_stderr_alerts_or_doctor(tmp_path: Path) -> None:
    """The issue's steps: the store URL with `?password=`, a daemon that cannot reach it (port 1), a tick queued."""
    layout = write_agent(tmp_path / "agent", prompts={"memo": "Write the memo."})
    url = f"postgresql://maestro@127.0.0.1:1/gov?password={PW}&sslmode=disable&connect_timeout=2"
    receiver = FakeReceiver()
    try:
        env = daemon_env(tmp_path, MAESTRO_GOVERNOR_URL=url, MAESTRO_NOTIFY_URLS=receiver.url())

        def maestro(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "maestro_py", "--root", str(layout.root), *args], env=env,
                                  capture_output=True, text=True, timeout=120, cwd=REPO)

        assert maestro("enqueue", "memo").returncode == 0
        run = maestro("run", "--once", "--log-stderr")
        outputs = {"run stdout": run.stdout, "run stderr": run.stderr}
        for args in (("status", "--json"), ("status",), ("doctor",), ("doctor", "--offline"), ("budget",),
                     ("dry-run", "memo"), ("governor", "show"), ("logs", "-n", "100")):
            done = maestro(*args)
            outputs[" ".join(args)] = done.stdout + done.stderr
        receiver.wait(1, timeout=20)
        outputs["alerts"] = receiver.raw().decode()
    finally:
        receiver.stop()
    for folder in (layout.state_dir, layout.root / "logs"):
        for path in folder.rglob("*"):
            if path.is_file():
                outputs[str(path)] = path.read_bytes().decode(errors="replace")
    leaked = [where for where, text in outputs.items() if PW in text]
    assert leaked == [], f"the password is shown in: {leaked}"
    shown = json.loads(outputs["status --json"]) if outputs["status --json"].lstrip().startswith("{") else {}
    assert "password=***" in json.dumps(shown) or "password=***" in outputs["doctor --offline"]
    assert "governor unavailable" in outputs["alerts"]  # the alert went out, masked
