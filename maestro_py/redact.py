"""Keep secrets out of every file the daemon writes (events, ledger, status, tick history)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

SERVE_SECRETS = ("MAESTRO_SERVE_TOKEN", "MAESTRO_WEBHOOK_SECRET")  # `maestro serve`'s inbound credentials
SECRET_VARS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN", *SERVE_SECRETS)
URL_VARS = ("MAESTRO_GOVERNOR_URL",)  # settings whose value may carry a password (`url_secrets`: userinfo, query)
# Apprise URLs carry their tokens anywhere (slack://TokenA/TokenB/TokenC, tgram://bottoken/chatid): each URL
# is a secret whole, and so is each token in it.
NOTIFY_VARS = ("MAESTRO_NOTIFY_URLS",)
MASK = "[REDACTED]"
# Anthropic keys (sk-ant-api…) and OAuth tokens (sk-ant-oat…, from `claude setup-token`) have a recognisable
# prefix; catch them even when not in the env.
_KEY_PATTERN = re.compile(r"sk-ant-[A-Za-z0-9_\-]{6,}")


class Redactor:
    """Replaces known secret values (and anything shaped like an Anthropic key) with a mask."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.update(os.environ if env is None else env)

    def update(self, env: Mapping[str, str]) -> None:
        """Mask the secrets of `env` from now on (in place: everyone holding this redactor sees them)."""
        # Short values (placeholders, "x") would mask ordinary words; real secrets are long.
        values = {env[name] for name in SECRET_VARS if len(env.get(name, "")) >= 8}
        for name in URL_VARS:  # as written in the URL, and decoded
            values |= {pw for pw in url_secrets(env.get(name, "")) if len(pw) >= 4}
        for name in NOTIFY_VARS:
            values |= notify_secrets(env.get(name, ""))
        # Each secret as it is and as it reads inside a JSON string (quotes, backslashes, control
        # characters escaped), so masking an encoded JSON line is as safe as masking each value.
        forms = values | {json.dumps(v, ensure_ascii=False)[1:-1] for v in values}
        self._values = sorted(forms, key=len, reverse=True)

    def text(self, value: str) -> str:
        """`value` with every secret masked (also usable on a JSON document's text)."""
        for secret in self._values:
            if secret in value:
                value = value.replace(secret, MASK)
        return _KEY_PATTERN.sub(MASK, value) if "sk-ant-" in value else value

    def data(self, value: Any) -> Any:
        """A JSON-like structure with every string masked."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.data(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.data(v) for v in value]
        return value

    def json_line(self, value: Any) -> str:
        """`value` as one line of JSON with every secret masked: cheaper than `data()` then encoding."""
        return self.text(json.dumps(value, ensure_ascii=False, default=str))

    def bytes(self, value: bytes) -> bytes:
        """Raw output with every secret masked (used on sub-session logs after exit)."""
        for secret in self._values:
            value = value.replace(secret.encode(), MASK.encode())
        return re.sub(_KEY_PATTERN.pattern.encode(), MASK.encode(), value)


# A query parameter whose key names a secret: libpq's `password` and `sslpassword`, and any `…token…`, `…secret…`,
# `…key…` or `…auth…` a driver may take (a key that merely names a file, `sslkey`, is masked too: harmless).
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|auth|cred", re.IGNORECASE)
URL_MASK = "***"


def url_secrets(url: str) -> set[str]:
    """Every secret `url` carries, as written and decoded: the password of its userinfo (`user:pw@host`) and the
    value of each query parameter whose key names a secret (`?password=…`, `&sslpassword=…`, `?token=…`)."""
    from urllib.parse import unquote

    out: set[str] = set()
    for value in _secret_parts(url):
        out |= {value, unquote(value), unquote(value.replace("+", " "))}
    return {v for v in out if v}


def mask_url(url: str) -> str:
    """`url` as it may be shown anywhere (status, events, errors, doctor, alerts): every secret `url_secrets` finds
    replaced by `***`, the rest as written. The one masking function for URLs."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "(unparsable URL)"
    if not _secret_parts(url):
        return url  # as written (urlunsplit would rewrite `sqlite:////abs` as `sqlite://abs`)
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:{URL_MASK}@{hostport}"
    query = "&".join(f"{key}={URL_MASK}" if sep and _SECRET_KEY.search(key) else f"{key}{sep}{value}"
                     for key, sep, value in (pair.partition("=") for pair in parts.query.split("&") if pair))
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _secret_parts(url: str) -> list[str]:
    """The raw (still percent-encoded) secret values in `url`."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    out = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        if ":" in userinfo:
            out.append(userinfo.partition(":")[2])
    for key, sep, value in (pair.partition("=") for pair in parts.query.split("&") if pair):
        if sep and _SECRET_KEY.search(key):
            out.append(value)
    return out


_URL_SPLIT = re.compile(r"\s+|,(?=\s*[A-Za-z][A-Za-z0-9+.\-]*://)")  # a comma inside a URL's query stays


def split_urls(text: str) -> list[str]:
    """The URLs of a list separated by spaces or commas (a comma followed by `scheme://` starts a new one)."""
    return [url.strip(",") for url in _URL_SPLIT.split(text.strip()) if url.strip(",")]


def notify_secrets(text: str) -> set[str]:
    """What to mask of a list of notification URLs: each URL whole, and each of its user, password, path and
    query segments of 8+ characters (as written and decoded). A host is masked too when it is a token (no
    dot, not `localhost`): apprise puts tokens there (`slack://TokenA/…`), while a real host name is no secret."""
    from urllib.parse import unquote

    out: set[str] = set()
    for url in split_urls(text):
        out.add(url)
        rest = url.split("://", 1)[-1]
        rest, _, query = rest.partition("?")
        netloc, _, path = rest.partition("/")
        userinfo, at, host = netloc.rpartition("@")
        pieces = userinfo.split(":") if at else []
        pieces += [part for part in host.split(":") if "." not in part and part.lower() != "localhost"]
        pieces += path.replace("#", "/").split("/")
        pieces += [pair.partition("=")[2] for pair in query.split("&")]
        out |= {form for piece in pieces for form in (piece, unquote(piece)) if len(form) >= 8}
    return out
