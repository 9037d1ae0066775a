"""Who may trigger a run and who may look: a bearer token, a GitHub-style body signature, or loopback.

- With `MAESTRO_SERVE_TOKEN` set, every request but `/healthz` needs `Authorization: Bearer <token>`; the
  page and the read endpoints also take it as the password of HTTP Basic auth (what a browser can send, and
  re-sends on each auto-refresh), never in the URL (a `?token=` ends up in histories and proxy logs).
  Basic auth is never accepted for a trigger: a browser attaches it to a cross-site form post by itself.
- With `MAESTRO_WEBHOOK_SECRET` set, a trigger may instead carry `X-Hub-Signature-256: sha256=<hex>`, the
  HMAC-SHA256 of the raw body, as GitHub computes it; the body is then the event (see triggers.py).
- With neither set, access is open, but only to a request that comes from a loopback address, names loopback in
  its Host (a web page that rebinds a name to 127.0.0.1 gets 403) and carries no proxy header (`Forwarded`,
  `X-Forwarded-*`, `X-Real-IP`, `Via`): a reverse proxy on this machine connects from loopback and, by default,
  sends `Host: 127.0.0.1:PORT`, so without that last rule anyone reaching the proxy would be "local". The server
  also refuses to listen elsewhere without a token.
- Reads (the page, a tick, /metrics) need the token whenever any credential is set: a webhook secret alone does
  not open them to everyone.
- A trigger a browser sends from another origin is refused (403) whatever its credentials.
- Credentials the server cannot check (a signature with no secret set, a token with no token set) get 403:
  the sender believes the request is protected, and it would not be.
Every comparison is constant-time (`hmac.compare_digest`).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import urlsplit

from maestro_py.loopback import is_loopback, loopback_host
from maestro_py.serve.http import WWW_AUTHENTICATE, HttpError
from maestro_py.serve.options import ServeOptions

SIGNATURE_HEADER = "x-hub-signature-256"
BASIC_REALM = 'Basic realm="maestro", charset="UTF-8"'


class Access(str, enum.Enum):
    """How a request was let in."""

    TOKEN = "token"
    WEBHOOK = "webhook"  # provisionally: the signature is checked once the body is read
    OPEN = "open"


def trigger_access(headers: Mapping[str, str], options: ServeOptions, peer: str | None) -> Access:
    """Decide from the headers alone (before the body is read) how a trigger is authenticated, or refuse it."""
    refuse_cross_site(headers)
    if SIGNATURE_HEADER in headers:
        if options.webhook_secret is None:
            raise HttpError(403, "X-Hub-Signature-256 was sent but MAESTRO_WEBHOOK_SECRET is not set here: the "
                                 "signature cannot be checked")
        return Access.WEBHOOK
    if "authorization" in headers:
        if options.token is None:
            raise HttpError(403, "an Authorization header was sent but MAESTRO_SERVE_TOKEN is not set here: the "
                                 "token cannot be checked")
        if not bearer_matches(headers["authorization"], options.token):
            raise HttpError(401, "bad credentials", {"WWW-Authenticate": WWW_AUTHENTICATE})
        return Access.TOKEN
    if options.token is not None or options.webhook_secret is not None:
        raise HttpError(401, "credentials required: Authorization: Bearer <token>, or an X-Hub-Signature-256 "
                             "webhook signature", {"WWW-Authenticate": WWW_AUTHENTICATE})
    require_loopback(headers, peer)
    return Access.OPEN


def verify_signature(body: bytes, header: str, secret: str) -> None:
    """401 unless `header` is `sha256=` + the hex HMAC-SHA256 of `body` under `secret` (GitHub's scheme)."""
    scheme, _, given = header.strip().partition("=")
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if scheme.lower() != "sha256" or not hmac.compare_digest(given.strip().lower().encode(), expected.encode()):
        raise HttpError(401, "the X-Hub-Signature-256 signature does not match the body",
                        {"WWW-Authenticate": WWW_AUTHENTICATE})


def read_access(headers: Mapping[str, str], options: ServeOptions, peer: str | None, *, page: bool = False) -> None:
    """Let a GET of the page, a tick or /metrics through: the token (bearer or Basic) when any credential is set,
    else only a direct local request (`require_loopback`)."""
    if options.token is None and options.webhook_secret is None:
        require_loopback(headers, peer)
        return
    given = headers.get("authorization", "")
    if options.token is not None and (bearer_matches(given, options.token) or basic_matches(given, options.token)):
        return
    if options.token is None:
        raise HttpError(401, "reads need MAESTRO_SERVE_TOKEN: only MAESTRO_WEBHOOK_SECRET is set here, which "
                             "authenticates triggers, not readers", {"WWW-Authenticate": WWW_AUTHENTICATE})
    challenge = BASIC_REALM if page else WWW_AUTHENTICATE  # a browser asks for Basic credentials itself
    raise HttpError(401, "credentials required: Authorization: Bearer <token>", {"WWW-Authenticate": challenge})


def bearer_matches(header: str, token: str) -> bool:
    """`Bearer <token>` with exactly this token (constant-time)."""
    scheme, _, given = header.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def basic_matches(header: str, token: str) -> bool:
    """HTTP Basic credentials whose password is the token (any user name; constant-time)."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    _, sep, password = decoded.partition(b":")
    return bool(sep) and hmac.compare_digest(password, token.encode())


def refuse_cross_site(headers: Mapping[str, str]) -> None:
    """403 for a request a browser sends on behalf of another site's page (a form post, a fetch)."""
    if headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site"):
        raise HttpError(403, "cross-site requests are refused")
    origin = headers.get("origin")
    if origin is None:
        return  # curl, GitHub and other non-browser clients send none
    if origin.strip().lower() == "null" or urlsplit(origin.strip()).netloc.lower() != headers.get("host", "").lower():
        raise HttpError(403, "requests from another origin are refused")


PROXY_HEADERS = ("forwarded", "via", "x-real-ip")  # and every `x-forwarded-*`


def require_loopback(headers: Mapping[str, str], peer: str | None) -> None:
    """Open access (no credentials configured) is for direct local requests only: from a loopback address, to a
    loopback Host, and not relayed by a proxy (whose peer address is loopback whoever sent the request)."""
    relayed = sorted(name for name in headers if name.lower() in PROXY_HEADERS or name.lower().startswith("x-forwarded-"))
    if relayed:
        raise HttpError(403, f"a proxied request ({relayed[0]}) needs MAESTRO_SERVE_TOKEN: without it only direct "
                             "requests from this machine are served")
    if peer is None or not is_loopback(peer):
        raise HttpError(403, "without MAESTRO_SERVE_TOKEN set, only requests from this machine are served")
    if not loopback_host(headers.get("host", "")):
        raise HttpError(403, "without MAESTRO_SERVE_TOKEN set, only requests addressed to 127.0.0.1, ::1 or "
                             "localhost are served")
