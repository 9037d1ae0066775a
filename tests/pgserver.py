"""A real PostgreSQL server for the tests: a throwaway cluster in a temp folder on a free loopback port.

`initdb` refuses to run as root, and CI runs as root: then every server command runs as an unprivileged
user (Debian's `postgres`, else a system user this module creates). Trust authentication for 127.0.0.1
only, sockets in the temp folder, fsync off (a test cluster needs no durability).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "maestro"  # the cluster's superuser (no password: trust on loopback)
TIMEOUT = 60


def find_pg_bin() -> Path | None:
    """The folder with initdb, pg_ctl and postgres: PATH, else Debian's /usr/lib/postgresql/N/bin, newest first."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0, reverse=True)
    return versions[0].parent if versions else None


def _server_user() -> str | None:
    """Who runs the server: None (ourselves) unless we are root, then `postgres` or a created system user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "maestro-pg"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "maestro-pg"], check=True, timeout=TIMEOUT,
                   capture_output=True)
    return "maestro-pg"


def pg_available() -> str | None:
    """None if a server can be had here, else why not (one line)."""
    if find_pg_bin() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl): install Debian's postgresql package (.ci/run does)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: initdb refuses root and cannot be run as another user"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgServer:
    """One cluster: `start()`, `stop()` (the store goes down), `start()` again on the same port and data."""

    def __init__(self) -> None:
        self.bin = find_pg_bin()
        assert self.bin is not None, pg_available()
        self.user = _server_user()
        self.dir = Path(tempfile.mkdtemp(prefix="maestro-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        if self.user is not None:
            shutil.chown(self.dir, self.user)
            self.dir.chmod(0o700)
        self.running = False
        self._created = False  # the `maestro` database (self.url) is made on the first start
        try:
            self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", USER, "--no-sync", "-E", "UTF8")
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)  # no half-made cluster left in /tmp
            raise

    @property
    def url(self) -> str:
        """The `maestro` database, as the cluster's superuser over loopback TCP (trust: no password)."""
        return self.url_for("maestro")

    def url_for(self, dbname: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{dbname}"

    def _pg(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        assert self.bin is not None
        argv = [str(self.bin / tool), *args]
        if self.user is not None:
            argv = ["runuser", "-u", self.user, "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd=self.dir)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {(result.stderr or result.stdout)[-1500:]}")
        return result

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self.running = True  # before pg_ctl: a start that timed out may still have left a server to stop
        self._pg("pg_ctl", "-D", str(self.data), "-w", "-t", "30", "-o", options, "-l", str(self.dir / "server.log"),
                 "start")
        if not self._created:
            self._pg("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "maestro")
            self._created = True

    def stop(self) -> None:
        """Stop the server (fast: open sessions are cut). Teardown relies on it, so a failed fast stop falls
        back to an immediate one, then to SIGKILL of the postmaster: no server outlives the tests."""
        if not self.running:
            return
        try:
            self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            try:
                self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "10", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                self._kill_postmaster()
        self.running = False

    def _kill_postmaster(self) -> None:
        """The last resort: SIGKILL the pid in postmaster.pid (its children exit when the postmaster is gone)."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass  # no pid file or no such process: nothing running

    def restart(self) -> None:
        """Stop, then start again on the same port and data (the store goes down mid-run and comes back)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its temp folder (data, log, sockets)."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url_for("postgres"), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url_for("postgres"), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
