"""HTTP answers: errors that carry their status, and the headers every response gets."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

# Nothing the server sends may be framed, sniffed, cached by a proxy, or leak its URL (a `?…`) onwards.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
WWW_AUTHENTICATE = 'Bearer realm="maestro"'


class HttpError(Exception):
    """A request refused with `status`; `message` is one line for the client (never a secret)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None, *,
                 close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.close = close  # the request's body may be unread: the connection cannot carry another request


def json_answer(status: int, doc: Any, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON response with the security headers."""
    body = json.dumps(doc, ensure_ascii=False, default=str, indent=None).encode()
    return Response(body, status_code=status, media_type="application/json",
                    headers={**SECURITY_HEADERS, **(headers or {})})


def error_answer(err: HttpError) -> Response:
    """`{"error": …, "status": …}` for an HttpError; `Connection: close` when the body was left unread."""
    headers = dict(err.headers)
    if err.close:
        headers["Connection"] = "close"
    return json_answer(err.status, {"error": err.message, "status": err.status}, headers)


def text_answer(status: int, text: str, media_type: str = "text/plain; charset=utf-8",
                headers: Mapping[str, str] | None = None) -> Response:
    """A text response with the security headers."""
    return Response(text, status_code=status, media_type=media_type, headers={**SECURITY_HEADERS, **(headers or {})})
