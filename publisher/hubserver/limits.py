"""Bounds on what a request may send, checked before the body is read.

- Every body but an LFS object's has a size limit (`body_limit`). A declared `Content-Length`
  over it is refused with 413 before a byte of the body is read; a chunked body is counted as it
  arrives and refused once it passes the limit. Nothing is buffered beyond the limit.
- An LFS object PUT (which huggingface_hub sends without credentials, as to a pre-signed URL) is
  accepted only for an object the authenticated batch call offered, and only up to the size it
  offered (`LfsOffers`, checked in `routes/commits.py`).
- Routes that write check the token before they read the body, so an unauthenticated body is
  never read at all.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from publisher.hubserver.protocol import error_response
from publisher.hubserver.store import HubStoreError

MAX_BODY = 16 * 1024 * 1024
"""JSON and form bodies (preupload lists, a README's text for validate-yaml, job specs): 16 MiB."""

MAX_COMMIT_BODY = 256 * 1024 * 1024
"""An NDJSON commit carries its regular files inline in base64 (each under the 10 MB LFS
threshold): 256 MiB."""

_LFS_OBJECT = re.compile(r"^/[^/]+/[^/]+\.git/info/lfs/objects/[^/]+$")
_COMMIT = re.compile(r"^/api/models/[^/]+/[^/]+/commit/")


class PayloadTooLarge(HubStoreError):
    status = 413


def body_limit(method: str, path: str) -> int | None:
    """The most bytes a request body may have; None where the route bounds it itself."""
    if method == "PUT" and _LFS_OBJECT.match(path):
        return None
    if method == "POST" and _COMMIT.match(path):
        return MAX_COMMIT_BODY
    return MAX_BODY


class BodyLimitMiddleware:
    """ASGI middleware enforcing `body_limit` on every request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = body_limit(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        length = content_length(scope)
        if length is not None and length > limit:
            too_large = PayloadTooLarge(f"request body of {length} bytes is over {limit}")
            response = error_response(too_large.status, str(too_large), None)
            await response(scope, receive, send)
            return
        await self.app(scope, _counted(receive, limit), send)


def content_length(scope: Scope) -> int | None:
    """The request's declared body size, None when it has none (chunked) or an unreadable one
    (the HTTP server refuses those itself)."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _counted(receive: Receive, limit: int) -> Receive:
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise PayloadTooLarge(f"request body is over {limit} bytes")
        return message

    return counted


class LfsOffers:
    """The LFS uploads the batch call offered: sha256 → size. Bounded: the oldest offers are
    forgotten past `capacity` (a client asks the batch API again before retrying)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def offer(self, oid: str, size: int) -> None:
        with self._lock:
            self._sizes[oid] = size
            self._sizes.move_to_end(oid)
            while len(self._sizes) > self._capacity:
                self._sizes.popitem(last=False)

    def size_of(self, oid: str) -> int | None:
        """The size offered for `oid`, None if no upload of it was offered."""
        with self._lock:
            return self._sizes.get(oid)
