"""Reading a request body within a size and a time limit.

`Content-Length` over the limit is refused before a byte of the body is read; a body without one (chunked)
is refused as soon as it passes the limit. The whole body must arrive within the deadline, counted from
when its headers did, so a client that trickles it holds one connection for that long and no longer: the
server answers 408 and closes it. Either refusal leaves the rest unread, so the answer closes the connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from maestro_py.serve.http import HttpError

Receive = Callable[[], Awaitable[dict[str, Any]]]


def declared_length(headers: Mapping[str, str]) -> int | None:
    """The request's Content-Length, None if absent; a malformed one is a 400."""
    raw = headers.get("content-length")
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise HttpError(400, "Content-Length is not a number", close=True)
    return int(raw)


def check_length(headers: Mapping[str, str], limit: int) -> None:
    """413 at once when the declared length is over `limit` (nothing of the body is read)."""
    length = declared_length(headers)
    if length is not None and length > limit:
        raise HttpError(413, f"request body of {length} bytes is over the limit of {limit} bytes "
                             "(MAESTRO_SERVE_MAX_BODY_BYTES)", close=True)


async def read_body(receive: Receive, headers: Mapping[str, str], *, limit: int, deadline: float,
                    timeout: float) -> bytes:
    """The whole body, at most `limit` bytes, complete before `deadline` (time.monotonic()); else 413 / 408."""
    check_length(headers, limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _timed_out(timeout)
        try:
            message = await asyncio.wait_for(receive(), left)
        except asyncio.TimeoutError:
            raise _timed_out(timeout) from None
        if message["type"] == "http.disconnect":
            raise HttpError(400, "the client went away before sending the whole body", close=True)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"request body is over the limit of {limit} bytes (MAESTRO_SERVE_MAX_BODY_BYTES)",
                            close=True)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _timed_out(timeout: float) -> HttpError:
    return HttpError(408, f"the request body did not arrive within {timeout:g} s (MAESTRO_SERVE_TIMEOUT_SECONDS)",
                     close=True)
