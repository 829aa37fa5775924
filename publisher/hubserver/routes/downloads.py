"""Downloads: `resolve`, the GET and HEAD that `hf_hub_download` and `snapshot_download` make
for each file, with the headers they read (`X-Repo-Commit`, `ETag`, `X-Linked-Etag`,
`X-Linked-Size`)."""

from __future__ import annotations

import mimetypes

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from publisher.hubserver.context import hub_of
from publisher.hubserver.protocol import error_response, revision_and_path
from publisher.hubserver.store import EntryNotFound

router = APIRouter()

ACTIVE_TYPES = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/xml",
        "application/xml",
        "text/javascript",
        "application/javascript",
    }
)
"""Media types a browser would render or run: served as attachments (downloaded, not opened)."""


@router.api_route("/{ns}/{name}/resolve/{rest:path}", methods=["GET", "HEAD"])
def resolve(ns: str, name: str, rest: str, request: Request) -> Response:
    hub, repo_id = hub_of(request), f"{ns}/{name}"
    hub.auth.readable(request, hub.store, repo_id)
    revision, path = revision_and_path(request, 3)
    commit = hub.store.resolve(repo_id, revision)
    entry = commit.tree.get(path.strip("/"))
    if entry is None:
        exc = EntryNotFound(f"Entry not found: {path} at {revision}")
        return error_response(exc.status, str(exc), exc.code, {"X-Repo-Commit": commit.id})
    etag = entry.sha256 if entry.lfs else entry.blob_id
    headers = {
        "X-Repo-Commit": commit.id,
        "ETag": f'"{etag}"',
        "Cache-Control": "private, max-age=0",
        "X-Content-Type-Options": "nosniff",  # the type below, never one guessed from content
    }
    if entry.lfs:
        headers["X-Linked-Etag"] = f'"{entry.sha256}"'
        headers["X-Linked-Size"] = str(entry.size)
    filename = path.rsplit("/", 1)[-1]
    kind = media_type(filename)
    return FileResponse(
        hub.store.blob_path(entry.sha256),
        headers=headers,
        media_type=kind,
        # Uploaded HTML or SVG opened from this origin could run script next to the pages.
        content_disposition_type="attachment" if kind in ACTIVE_TYPES else "inline",
        filename=filename,
    )


def media_type(filename: str) -> str:
    """The Content-Type a file is served with: text files as UTF-8 plain text."""
    if filename.endswith((".md", ".txt", ".yaml", ".yml", ".jinja")):
        return "text/plain; charset=utf-8"
    if filename.endswith(".json"):
        return "application/json"
    guessed, _ = mimetypes.guess_type(filename)
    return guessed or "application/octet-stream"
