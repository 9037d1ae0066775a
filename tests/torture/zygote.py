#!/usr/bin/env python3
"""A pre-imported launcher for daemon processes, driven by JSON lines on stdin (see `support.Launcher`).

Starting `python -m maestro_py run` costs ~0.25 s of imports on this machine; a torture with hundreds of
restarts would spend most of its time importing. This process imports the daemon once and `fork`s a fresh
child per daemon life, which then runs the real `maestro --root DIR run` code path (the same `cli.main`)
with its own environment, stderr file and pid. With `"exec": true` the child `execve`s
`python -m maestro_py` instead (a cold start, for runs by hand).

The launcher is a child subreaper: the `claude` sub-sessions a SIGKILLed daemon leaves behind are
reparented here and reaped, so no zombie or stray process outlives the test.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import logging  # noqa: E402,F401 - imported by `run`; preloaded so a fork starts warm

import maestro_py.cli as cli  # noqa: E402
import maestro_py.daemon.loop  # noqa: E402,F401
from maestro_py.session import proctree  # noqa: E402

proctree.become_subreaper()

daemons: dict[int, int | None] = {}  # pid -> exit code (None while running)


def reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in daemons:
            daemons[pid] = os.waitstatus_to_exitcode(status)


def child(req: dict) -> None:
    """In the forked child: become `maestro ARGS` and never return."""
    code = 1
    try:
        fd = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        os.chdir(req["cwd"])
        if req.get("exec"):
            os.execve(sys.executable, [sys.executable, "-m", "maestro_py", *req["args"]], req["env"])
        os.environ.clear()
        os.environ.update(req["env"])
        try:
            cli.cli.main(args=req["args"], prog_name="maestro")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - like an uncaught exception in `python -m maestro_py`
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(code)


def handle(req: dict) -> dict:
    cmd = req["cmd"]
    if cmd == "spawn":
        pid = os.fork()
        if pid == 0:
            child(req)
        daemons[pid] = None
        return {"pid": pid}
    if cmd == "wait":
        deadline = time.monotonic() + req["timeout"]
        while True:
            reap()
            code = daemons.get(req["pid"])
            if code is not None or time.monotonic() >= deadline:
                return {"code": code}
            time.sleep(0.002)
    if cmd == "children":  # every live child (daemons and adopted sub-sessions)
        reap()
        me = os.getpid()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me and fields[0] != "Z":
                pids.append(int(entry))
        return {"children": pids}
    raise ValueError(f"unknown command {cmd!r}")


def main() -> None:
    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "quit":
            break
        sys.stdout.write(json.dumps(handle(req)) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
