"""The Hub's HTTP conventions, shared by the routers: revisions in URL paths, JSON bodies, and
errors the way huggingface_hub reads them.

Revisions in URLs are percent-encoded by the client (`refs%2Fpr%2F1`); routes that carry one
read the raw request path so an encoded `/` is not mistaken for a path separator.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote, unquote

from fastapi.responses import JSONResponse
from starlette.requests import Request

from publisher.hubserver.store import InvalidRequest

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def segments(request: Request) -> list[str]:
    """The request path split on `/`, each segment percent-decoded afterwards (so `%2F` inside
    a segment stays inside it)."""
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if raw else quote(request.url.path)
    return [unquote(s) for s in path.split("?", 1)[0].split("/")[1:]]


def revision_and_path(request: Request, index: int, *, split_refs: bool = True) -> tuple[str, str]:
    """Revision at path segment `index` and the file path after it. An unencoded
    `refs/pr/N` (three segments) is taken as one revision too."""
    parts = segments(request)[index:]
    if not parts or not parts[0]:
        raise InvalidRequest("missing revision in URL")
    if (
        split_refs
        and len(parts) >= 3
        and parts[0] == "refs"
        and parts[1] in ("pr", "heads", "tags")
    ):
        return "/".join(parts[:3]), "/".join(parts[3:])
    return parts[0], "/".join(parts[1:])


async def json_body(request: Request, *, empty_ok: bool = False) -> dict[str, Any]:
    """The request's JSON object; 400 for an empty (unless `empty_ok`) or malformed body."""
    body = await request.body()
    if not body.strip():
        if empty_ok:
            return {}
        raise InvalidRequest("expected a JSON body")
    try:
        data = json.loads(body)
    except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for bytes not UTF-8
        raise InvalidRequest(f"invalid JSON body: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("expected a JSON object")
    return data


def error_response(
    status: int,
    message: str,
    code: str | None,
    headers: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
) -> JSONResponse:
    """An error as the Hub sends it: `{"error": message}` plus `X-Error-Message` and, where
    huggingface_hub maps it to an exception class, `X-Error-Code`."""
    out = dict(headers or {})
    out["X-Error-Message"] = header_safe(message)[:500]
    if code:
        out["X-Error-Code"] = code
    return JSONResponse({"error": message, **(body or {})}, status_code=status, headers=out)


def header_safe(text: str) -> str:
    """`text` as an HTTP header value: control characters (a NUL, a line break) and non-ASCII
    escaped. The server refuses to send a header holding them and drops the connection."""
    escaped = text.replace("\n", " ").encode("ascii", "backslashreplace").decode("ascii")
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", escaped)


def base_url(request: Request) -> str:
    """The server's own URL, as the client reached it (`http://127.0.0.1:8808`)."""
    return str(request.base_url).rstrip("/")


def truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "on")
