"""Account and repos: whoami, create and delete a repo, and reading one (model info, refs, tree,
paths-info, commit history), as `HfApi` calls them."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from publisher.hubserver.context import hub_of
from publisher.hubserver.page import card_fields, split_front_matter
from publisher.hubserver.protocol import (
    base_url,
    error_response,
    json_body,
    revision_and_path,
    truthy,
)
from publisher.hubserver.records import Commit, RepoState, TreeEntry, folder_oid, iter_folders
from publisher.hubserver.store import (
    MAIN_BRANCH,
    EntryNotFound,
    HubStore,
    InvalidRequest,
    RepoExists,
)

router = APIRouter()


@router.get("/api/whoami-v2")
def whoami(request: Request) -> dict[str, Any]:
    name = hub_of(request).auth.require(request, "call whoami")
    return {
        "type": "user",
        "id": hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:24],
        "name": name,
        "fullname": name,
        "email": f"{name}@localhost",
        "emailVerified": True,
        "isPro": False,
        "canPay": False,
        "orgs": [],
        "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
    }


@router.post("/api/repos/create")
async def create_repo(request: Request) -> JSONResponse:
    hub = hub_of(request)
    name = hub.auth.require(request, "create a repo")
    body = await json_body(request)
    repo_id = _repo_id_from_body(body, name)
    private = body.get("private")
    if private is None:
        private = body.get("visibility") == "private"
    url = f"{base_url(request)}/{repo_id}"
    try:
        await run_in_threadpool(hub.store.create_repo, repo_id, private=bool(private))
    except RepoExists as exc:  # the Hub's 409 names the repo: `exist_ok=True` reads `url`
        return error_response(exc.status, str(exc), exc.code, body={"url": url})
    return JSONResponse({"url": url, "name": repo_id, "id": repo_id})


@router.delete("/api/repos/delete")
async def delete_repo(request: Request) -> Response:
    hub = hub_of(request)
    name = hub.auth.require(request, "delete a repo")
    repo_id = _repo_id_from_body(await json_body(request), name)
    await run_in_threadpool(hub.store.delete_repo, repo_id)
    return Response(status_code=200)


@router.post("/api/validate-yaml")
async def validate_yaml(request: Request) -> JSONResponse:
    """`upload_file` and `upload_folder` send a README.md's text here before uploading it."""
    content = (await json_body(request)).get("content")
    if not isinstance(content, str):
        raise InvalidRequest("expected {'content': <README.md text>}")
    _, _, error = split_front_matter(content)
    if error:
        return JSONResponse({"errors": [{"message": error}], "warnings": []}, status_code=400)
    return JSONResponse({"errors": [], "warnings": []})


@router.get("/api/models/{ns}/{name}")
def model_info(ns: str, name: str, request: Request) -> dict[str, Any]:
    hub = hub_of(request)
    state = hub.auth.readable(request, hub.store, f"{ns}/{name}")
    return _model_info(hub.store, state, MAIN_BRANCH, request)


@router.get("/api/models/{ns}/{name}/revision/{rest:path}")
def model_info_at(ns: str, name: str, rest: str, request: Request) -> dict[str, Any]:
    hub = hub_of(request)
    state = hub.auth.readable(request, hub.store, f"{ns}/{name}")
    revision, _ = revision_and_path(request, 5)
    return _model_info(hub.store, state, revision, request)


@router.get("/api/models/{ns}/{name}/refs")
def refs(ns: str, name: str, request: Request) -> dict[str, Any]:
    hub = hub_of(request)
    state = hub.auth.readable(request, hub.store, f"{ns}/{name}")
    out: dict[str, Any] = {
        "branches": [
            {"name": b, "ref": f"refs/heads/{b}", "targetCommit": c}
            for b, c in sorted(state.branches.items())
        ],
        "converts": [],
        "tags": [],
    }
    if truthy(request.query_params.get("include_prs")):
        out["pullRequests"] = [
            {"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": c}
            for n, c in sorted(state.pull_heads.items(), key=lambda kv: int(kv[0]))
        ]
    return out


@router.get("/api/models/{ns}/{name}/tree/{rest:path}")
def tree(ns: str, name: str, rest: str, request: Request) -> list[dict[str, Any]]:
    hub, repo_id = hub_of(request), f"{ns}/{name}"
    hub.auth.readable(request, hub.store, repo_id)
    revision, path = revision_and_path(request, 5)
    path = path.strip("/")
    commit = hub.store.resolve(repo_id, revision)
    recursive = truthy(request.query_params.get("recursive"))
    folders = set(iter_folders(commit.tree))
    if path and path not in folders:
        if path in commit.tree:
            raise InvalidRequest(f"{path} is a file, not a folder")
        raise EntryNotFound(f"Entry not found: {path} at {revision}")
    prefix = path + "/" if path else ""

    def listed(p: str) -> bool:
        return p.startswith(prefix) and (recursive or "/" not in p[len(prefix) :])

    entries = [_folder_json(commit, f) for f in sorted(folders) if listed(f)]
    return entries + [_file_json(p, e) for p, e in commit.tree.items() if listed(p)]


@router.post("/api/models/{ns}/{name}/paths-info/{rest:path}")
async def paths_info(ns: str, name: str, rest: str, request: Request) -> list[dict[str, Any]]:
    hub, repo_id = hub_of(request), f"{ns}/{name}"
    hub.auth.readable(request, hub.store, repo_id)
    revision, _ = revision_and_path(request, 5)
    # huggingface_hub sends a urlencoded form: `paths=a&paths=b`
    form = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    commit = await run_in_threadpool(hub.store.resolve, repo_id, revision)
    folders = set(iter_folders(commit.tree))
    out = []
    for raw in form.get("paths", []):
        path = raw.strip("/")
        if path in commit.tree:
            out.append(_file_json(path, commit.tree[path]))
        elif path in folders:
            out.append(_folder_json(commit, path))
    return out


@router.get("/api/models/{ns}/{name}/commits/{rest:path}")
def commits(ns: str, name: str, rest: str, request: Request) -> list[dict[str, Any]]:
    hub, repo_id = hub_of(request), f"{ns}/{name}"
    hub.auth.readable(request, hub.store, repo_id)
    revision, _ = revision_and_path(request, 5)
    return [
        {
            "id": c.id,
            "title": c.title,
            "message": c.message,
            "authors": [{"user": c.author, "avatar": None}],
            "date": c.date,
        }
        for c in hub.store.history(repo_id, revision)
    ]


def _repo_id_from_body(body: dict[str, Any], user: str) -> str:
    repo_type = body.get("type") or "model"
    if repo_type != "model":
        raise InvalidRequest(f"this local Hub serves model repos only, not {repo_type!r}")
    name = body.get("name")
    namespace = body.get("organization") or user
    if not isinstance(name, str) or not name or not isinstance(namespace, str):
        raise InvalidRequest("expected {'name': <repo name>, 'organization': <namespace>?}")
    return f"{namespace}/{name}"


def _model_info(
    store: HubStore, state: RepoState, revision: str, request: Request
) -> dict[str, Any]:
    commit = store.resolve(state.repo_id, revision)
    card_data = card_data_of(store, commit)
    blobs = truthy(request.query_params.get("blobs"))
    base_models, license_id, tags = card_fields(card_data)
    derived = [f"license:{license_id}"] if license_id else []
    derived += [f"base_model:{b}" for b in base_models]
    info: dict[str, Any] = {
        "_id": hashlib.sha1(state.repo_id.encode(), usedforsecurity=False).hexdigest()[:24],
        "id": state.repo_id,
        "modelId": state.repo_id,
        "author": state.repo_id.split("/")[0],
        "sha": commit.id,
        "lastModified": commit.date,
        "createdAt": state.created_at,
        "private": state.private,
        "disabled": False,
        "gated": False,
        "downloads": 0,
        "likes": 0,
        "tags": tags + [t for t in derived if t not in tags],
        "siblings": [_sibling(path, entry, blobs) for path, entry in commit.tree.items()],
        "usedStorage": sum(e.size for e in commit.tree.values()),
    }
    if card_data:
        info["cardData"] = card_data
    for key in ("library_name", "pipeline_tag", "model-index"):
        if card_data.get(key):
            info[key] = card_data[key]
    return info


def _sibling(path: str, entry: TreeEntry, blobs: bool) -> dict[str, Any]:
    sibling: dict[str, Any] = {"rfilename": path}
    if blobs:
        sibling["size"] = entry.size
        sibling["blobId"] = entry.blob_id
        if entry.lfs:
            sibling["lfs"] = {
                "size": entry.size,
                "sha256": entry.sha256,
                "pointerSize": entry.pointer_size,
            }
    return sibling


def card_data_of(store: HubStore, commit: Commit) -> dict[str, Any]:
    """The front matter of the commit's README.md, {} when there is none."""
    entry = commit.tree.get("README.md")
    if entry is None:
        return {}
    data, _, _ = split_front_matter(store.read_blob(entry.sha256).decode("utf-8", "replace"))
    return data


def _file_json(path: str, entry: TreeEntry) -> dict[str, Any]:
    """A file as the tree and paths-info listings describe it (no `expand`: no client of
    publisher's asks for last commits)."""
    out: dict[str, Any] = {"type": "file", "oid": entry.blob_id, "size": entry.size, "path": path}
    if entry.lfs:
        out["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
    return out


def _folder_json(head: Commit, folder: str) -> dict[str, Any]:
    return {"type": "directory", "oid": folder_oid(head.tree, folder), "size": 0, "path": folder}
