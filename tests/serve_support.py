"""`maestro serve` in a real process on a free loopback port, and a plain HTTP client for it (http.client)."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maestro_py.paths import Layout
from tests.fakes import REPO, daemon_env, wait_for

TOKEN = "tok-SERVETOKEN-0123456789abcdef"
WEBHOOK_SECRET = "whs-WEBHOOKSECRET-0123456789abcdef"
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+) ")
TIMEOUT = 20.0  # every request of the tests is bounded


@dataclass
class Answer:
    """One HTTP response, read whole."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class Served:
    """A `maestro --root ROOT serve --port 0` process; its stderr goes to `log`."""

    def __init__(self, layout: Layout, tmp: Path, **env: Any) -> None:
        self.layout = layout
        self.log = tmp / f"serve-{time.monotonic_ns()}.log"
        self.env = daemon_env(tmp, **env)
        self._err = open(self.log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "maestro_py", "--root", str(layout.root), "serve",
                                      "--port", "0"], env=self.env, stdout=subprocess.DEVNULL, stderr=self._err,
                                     cwd=REPO)
        found = wait_for(lambda: LISTENING.search(self.log.read_text()) or self.proc.poll() is not None,
                         what="maestro serve to listen", timeout=30, explain=lambda: self.log.read_text())
        if not isinstance(found, re.Match):
            raise AssertionError(f"maestro serve exited {self.proc.returncode}: {self.log.read_text()}")
        self.port = int(found[1])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None, *, timeout: float = TIMEOUT) -> Answer:
        """One request on a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            chunked = (headers or {}).get("Transfer-Encoding") == "chunked"
            conn.request(method, path, body=body.encode() if isinstance(body, str) else body, headers=headers or {},
                         encode_chunked=chunked)
            resp = conn.getresponse()
            return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def post(self, cadence: str, doc: Any = None, headers: dict[str, str] | None = None, **kw: Any) -> Answer:
        """POST /v1/cadences/CADENCE/ticks with `doc` as JSON (None: no body)."""
        body = None if doc is None else json.dumps(doc)
        return self.request("POST", f"/v1/cadences/{cadence}/ticks", body, headers, **kw)

    def stop(self) -> int:
        """SIGTERM, then wait (uvicorn shuts down gracefully)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._err.close()
        return self.proc.returncode


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def github_signature(body: bytes, secret: str = WEBHOOK_SECRET) -> str:
    """X-Hub-Signature-256 as GitHub computes it: HMAC-SHA256 of the raw payload body, hex, prefixed `sha256=`."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), msg=body, digestmod=hashlib.sha256).hexdigest()
