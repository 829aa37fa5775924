"""Writing: preupload, the NDJSON commit, branch creation and the Git LFS batch, upload and
verify calls, as `HfApi.create_commit`, `upload_folder` and `create_branch` make them.

Uploads take the plain Git LFS route: preupload says `lfs` or `regular`, the LFS batch answer
offers only the `basic` transfer (no Xet, no multipart), the PUT goes to this server, which
checks the sha256 and size before storing the blob. Objects already stored get no upload action,
so nothing is re-sent. The client uploads through Xet whenever `hf_xet` is installed unless
`HF_HUB_DISABLE_XET=1` is set in its environment: this server cannot steer that choice.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from publisher.hubserver.context import HubContext, hub_of
from publisher.hubserver.faults import CommitRecord
from publisher.hubserver.limits import PayloadTooLarge, content_length
from publisher.hubserver.protocol import (
    base_url,
    error_response,
    json_body,
    revision_and_path,
    truthy,
)
from publisher.hubserver.records import CommitResult, FileAdd, FileDelete, Operation
from publisher.hubserver.store import (
    InvalidRequest,
    RepoNotFound,
    validate_path,
)

router = APIRouter()


@router.post("/api/models/{ns}/{name}/preupload/{rest:path}")
async def preupload(ns: str, name: str, rest: str, request: Request) -> dict[str, Any]:
    hub, repo_id = hub_of(request), f"{ns}/{name}"
    hub.auth.require(request, "upload", repo_id=repo_id, store=hub.store)
    revision, _ = revision_and_path(request, 5)
    body = await json_body(request)
    files = _preupload_files(body.get("files"))
    modes = await run_in_threadpool(hub.store.upload_modes, repo_id, revision, files)
    head = hub.store.resolve(repo_id, revision)
    return {
        "files": [
            # No .gitignore rules here: publisher uploads an allow-list, never a .gitignore
            {"path": m.path, "uploadMode": m.mode, "shouldIgnore": False, "oid": m.oid}
            for m in modes
        ],
        "commitOid": head.id,
    }


def _preupload_files(files: Any) -> list[tuple[str, int, bytes]]:
    """(path, size, first bytes) of each file: what `_commit_api._fetch_upload_modes` sends."""
    shape = "preupload expects {'files': [{'path': str, 'size': int, 'sample': base64}, ...]}"
    if not isinstance(files, list):
        raise InvalidRequest(shape)
    out = []
    for item in files:
        if not isinstance(item, dict):
            raise InvalidRequest(shape)
        path, size, sample = item.get("path"), item.get("size", 0), item.get("sample") or ""
        if not isinstance(path, str) or not isinstance(size, int) or not isinstance(sample, str):
            raise InvalidRequest(shape)
        try:
            first_bytes = base64.b64decode(sample, validate=True)
        except ValueError as exc:
            raise InvalidRequest(f"bad base64 sample for {path}") from exc
        out.append((validate_path(path), size, first_bytes))
    return out


@router.post("/api/models/{ns}/{name}/commit/{rest:path}")
async def commit(ns: str, name: str, rest: str, request: Request) -> dict[str, Any]:
    hub, repo_id = hub_of(request), f"{ns}/{name}"
    author = hub.auth.require(request, "commit", repo_id=repo_id, store=hub.store)
    revision, _ = revision_and_path(request, 5)
    header, operations = parse_ndjson_commit(await request.body())
    result = await run_in_threadpool(
        lambda: hub.store.commit(
            repo_id,
            revision,
            operations,
            title=str(header.get("summary") or "Upload files"),
            message=str(header.get("description") or ""),
            author=author,
            parent_commit=_parent_commit(header),
            create_pr=truthy(request.query_params.get("create_pr")),
        )
    )
    _record(hub, result)
    base = base_url(request)
    pr_url = f"{base}/{repo_id}/discussions/{result.pr_num}" if result.pr_num else None
    return {
        "success": True,
        "commitOid": result.commit.id,
        "commitUrl": f"{base}/{repo_id}/commit/{result.commit.id}",
        "hookOutput": "",
        "pullRequestUrl": pr_url,
        "pullRequestRevision": result.ref if result.pr_num else None,
    }


def _parent_commit(header: dict[str, Any]) -> str | None:
    """The header's `parentCommit` (the store checks it names one commit), None without one."""
    parent = header.get("parentCommit")
    if parent is not None and not isinstance(parent, str):
        raise InvalidRequest(f"parentCommit must be a commit id, not {parent!r}")
    return parent


def _record(hub: HubContext, result: CommitResult) -> None:
    hub.stats.add_commit(
        CommitRecord(
            repo_id=result.repo_id,
            commit_id=result.commit.id,
            ref=result.ref,
            parents=list(result.commit.parents),
            title=result.commit.title,
            pr_num=result.pr_num,
            added=result.added,
            deleted=result.deleted,
        )
    )


@router.post("/api/models/{ns}/{name}/branch/{rest:path}")
async def create_branch(ns: str, name: str, rest: str, request: Request) -> Response:
    hub, repo_id = hub_of(request), f"{ns}/{name}"
    hub.auth.require(request, "create a branch", repo_id=repo_id, store=hub.store)
    branch, _ = revision_and_path(request, 5, split_refs=False)
    starting_point = (await json_body(request, empty_ok=True)).get("startingPoint")
    if starting_point is not None and not isinstance(starting_point, str):
        raise InvalidRequest("'startingPoint' must be a revision")
    await run_in_threadpool(lambda: hub.store.create_branch(repo_id, branch, starting_point))
    return Response(status_code=200)


# -- Git LFS: batch, upload, verify ----------------------------------------------------------


@router.post("/{ns}/{name}.git/info/lfs/objects/batch")
async def lfs_batch(ns: str, name: str, request: Request) -> JSONResponse:
    hub, repo_id = hub_of(request), f"{ns}/{name}"
    hub.auth.require(request, "upload", repo_id=repo_id, store=hub.store)
    body = await json_body(request)
    if body.get("operation") != "upload":
        raise InvalidRequest("only the 'upload' operation is served; download through resolve/")
    objects = body.get("objects") or []
    if not isinstance(objects, list) or not all(isinstance(o, dict) for o in objects):
        raise InvalidRequest("'objects' must be a list of {'oid', 'size'}")
    base = f"{base_url(request)}/{repo_id}.git/info/lfs"
    return JSONResponse(
        {
            "transfer": "basic",
            "objects": [_batch_object(hub, base, obj) for obj in objects],
            "hash_algo": "sha256",
        },
        media_type="application/vnd.git-lfs+json",
    )


def _batch_object(hub: HubContext, base: str, obj: dict[str, Any]) -> dict[str, Any]:
    oid, size = str(obj.get("oid", "")), obj.get("size")
    if not isinstance(size, int) or len(oid) != 64 or not _is_hex(oid):
        return {
            "oid": oid,
            "size": size if isinstance(size, int) else 0,
            "error": {"code": 422, "message": "oid must be a sha256 and size an int"},
        }
    if hub.store.has_blob(oid, size):
        return {"oid": oid, "size": size}  # no actions: nothing to send
    hub.lfs_offers.offer(oid.lower(), size)
    return {
        "oid": oid,
        "size": size,
        "authenticated": True,
        "actions": {
            "upload": {"href": f"{base}/objects/{oid}"},
            "verify": {"href": f"{base}/verify"},
        },
    }


@router.put("/{ns}/{name}.git/info/lfs/objects/{oid}")
async def lfs_upload(ns: str, name: str, oid: str, request: Request) -> JSONResponse:
    # huggingface_hub sends the PUT without credentials (it targets a pre-signed URL on the
    # Hub). What bounds it: only an object the authenticated batch call offered, only up to the
    # size offered, and the content must hash to the oid.
    hub, oid = hub_of(request), oid.lower()
    if not hub.store.repo_exists(f"{ns}/{name}"):
        raise RepoNotFound(f"Repository {ns}/{name} not found")
    size = hub.lfs_offers.size_of(oid)
    if size is None:
        raise InvalidRequest(f"no upload of LFS object {oid} was offered: call the batch API first")
    declared = content_length(request.scope)
    if declared is not None and declared != size:
        raise InvalidRequest(f"LFS object {oid} has {size} bytes, not {declared}")
    received, digest = await _receive_upload(hub, request, oid, size)
    if digest != oid or received != size:
        raise InvalidRequest(
            f"uploaded content does not match the LFS object: sha256 {digest} size {received}, "
            f"expected {oid} size {size}"
        )
    hub.stats.add_lfs_object()
    return JSONResponse({"oid": oid, "size": received})


async def _receive_upload(
    hub: HubContext, request: Request, oid: str, size: int
) -> tuple[int, str]:
    """Stream the body into `tmp/`, at most `size` bytes; store it as `oid` if it hashes to it.
    Returns (bytes received, their sha256)."""
    digest = hashlib.sha256()
    received = 0
    f, tmp = hub.store.new_upload()
    try:
        with f:
            async for chunk in request.stream():
                received += len(chunk)
                if received > size:
                    raise PayloadTooLarge(f"LFS object {oid} is over the {size} bytes offered")
                digest.update(chunk)
                f.write(chunk)
                hub.stats.add_lfs_bytes(len(chunk))
        if digest.hexdigest() == oid and received == size:
            await run_in_threadpool(hub.store.finish_upload, tmp, oid)
    finally:
        hub.store.discard_upload(tmp)  # a no-op once stored
    return received, digest.hexdigest()


@router.post("/{ns}/{name}.git/info/lfs/verify")
async def lfs_verify(ns: str, name: str, request: Request) -> JSONResponse:
    hub = hub_of(request)
    hub.auth.require(request, "upload", repo_id=f"{ns}/{name}", store=hub.store)
    body = await json_body(request)
    oid, size = str(body.get("oid", "")), body.get("size")
    if not hub.store.has_blob(oid, size if isinstance(size, int) else None):
        return error_response(404, f"LFS object {oid} (size {size}) was not uploaded", None)
    return JSONResponse({"message": "ok"})


# -- the commit payload ----------------------------------------------------------------------


def parse_ndjson_commit(body: bytes) -> tuple[dict[str, Any], list[Operation]]:
    """The commit payload: a `header` line, then `file`, `lfsFile`, `deletedFile` and
    `deletedFolder` lines (what `_commit_api._prepare_commit_payload` writes)."""
    header: dict[str, Any] | None = None
    operations: list[Operation] = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        key, value = _ndjson_item(line, number)
        if key == "header":
            header = value
        else:
            operations.append(_operation(key, value, number))
    if header is None:
        raise InvalidRequest("commit payload has no header line")
    return header, operations


def _ndjson_item(line: bytes, number: int) -> tuple[str, dict[str, Any]]:
    try:
        item = json.loads(line)
        key, value = item["key"], item["value"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise InvalidRequest(
            f"commit payload line {number} is not a {{key, value}} JSON object"
        ) from exc
    if not isinstance(key, str) or not isinstance(value, dict):
        raise InvalidRequest(f"commit payload line {number}: 'value' must be a JSON object")
    return key, value


def _operation(key: str, value: dict[str, Any], number: int) -> Operation:
    path = value.get("path")
    if not isinstance(path, str):
        raise InvalidRequest(f"commit payload line {number}: {key} has no 'path'")
    if key == "file":
        if value.get("encoding", "base64") != "base64":
            raise InvalidRequest(f"unsupported encoding {value.get('encoding')!r} for {path}")
        try:
            content = base64.b64decode(value["content"], validate=True)
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidRequest(f"bad base64 content for {path}") from exc
        return FileAdd(path=validate_path(path), content=content)
    if key == "lfsFile":
        oid, size = value.get("oid"), value.get("size")
        if value.get("algo", "sha256") != "sha256" or not isinstance(oid, str):
            raise InvalidRequest(f"commit payload line {number}: lfsFile needs a sha256 'oid'")
        if size is not None and not isinstance(size, int):
            raise InvalidRequest(f"commit payload line {number}: 'size' must be an integer")
        return FileAdd(path=validate_path(path), lfs_oid=oid, lfs_size=size)
    if key in ("deletedFile", "deletedFolder"):
        return FileDelete(path=validate_path(path), folder=key == "deletedFolder")
    raise InvalidRequest(f"unsupported commit operation {key!r} on line {number}")


def _is_hex(value: str) -> bool:
    return all(c in "0123456789abcdef" for c in value.lower())
