"""The HTTP API of the local Hub: what huggingface_hub's `HfApi`, `hf_hub_download` and
`snapshot_download` call, for model repos, answered from a `HubStore`.

Revisions in URLs are percent-encoded by the client (`refs%2Fpr%2F1`); routes that carry one
read the raw request path so an encoded `/` is not mistaken for a path separator.

Uploads take the plain Git LFS route: preupload says `lfs` or `regular`, the LFS batch answer
offers only the `basic` transfer (no Xet, no multipart), the PUT goes to this server, which
checks the sha256 and size before storing the blob. Objects already stored get no upload action,
so nothing is re-sent. The client uploads through Xet whenever `hf_xet` is installed unless
`HF_HUB_DISABLE_XET=1` is set in its environment: this server cannot steer that choice.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from publisher.hubserver.faults import (
    FAULT_ACTIONS,
    CommitRecord,
    FaultInjector,
    FaultMiddleware,
    HubStats,
)
from publisher.hubserver.page import (
    PageFile,
    PageView,
    card_fields,
    eval_rows,
    render_index,
    render_markdown,
    render_page,
    split_front_matter,
)
from publisher.hubserver.store import (
    MAIN_BRANCH,
    Commit,
    EntryNotFound,
    FileAdd,
    FileDelete,
    HubStore,
    HubStoreError,
    InvalidRequest,
    Operation,
    RepoExists,
    RepoNotFound,
    RepoState,
    RevisionNotFound,
    TreeEntry,
    folder_oid,
    iter_folders,
    validate_path,
)

DEFAULT_USER = "publisher-demo"
"""The user name whoami answers for any accepted token."""

_INVALID_TOKEN = "Invalid credentials in Authorization header"


class Unauthorized(HubStoreError):
    status = 401


class Forbidden(HubStoreError):
    status = 403


# ---------------------------------------------------------------------------------------------
# app


def create_app(
    data_dir: Path,
    token: str | None = None,
    faults: FaultInjector | None = None,
    *,
    user: str = DEFAULT_USER,
    stats: HubStats | None = None,
    test_api: bool = False,
) -> FastAPI:
    """The local Hub as a FastAPI app storing everything under `data_dir`.

    Args:
        data_dir: where repos and blobs live; a new app over the same directory sees the same
            repos.
        token: when set, the only bearer token accepted; otherwise any token is accepted.
            Reads of public repos need no token, writes need one.
        faults: rules for injected failures (a fresh, empty `FaultInjector` if None).
        user: the user name of whoever holds an accepted token. Writes may go to any namespace.
        stats: counters to update (a fresh `HubStats` if None).
        test_api: serve `/_publisher/faults` and `/_publisher/stats` (tests and demos only).

    The app's `state` holds `store` (`HubStore`), `faults`, `stats` and `user`.
    """
    store = HubStore(Path(data_dir))
    faults = faults if faults is not None else FaultInjector()
    stats = stats if stats is not None else HubStats()
    app = FastAPI(title="publisher local Hub", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store, app.state.faults, app.state.stats, app.state.user = store, faults, stats, user
    app.add_middleware(FaultMiddleware, faults=faults, stats=stats)
    auth = _Auth(token, user)

    @app.exception_handler(HubStoreError)
    async def _store_error(request: Request, exc: HubStoreError) -> JSONResponse:
        return _error(exc.status, str(exc), exc.code)

    if test_api:
        _add_test_api(app, faults, stats)

    # -- account and repos ----------------------------------------------------------------------

    @app.get("/api/whoami-v2")
    def whoami(request: Request) -> dict[str, Any]:
        name = auth.require(request, "call whoami")
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
            "auth": {
                "type": "access_token",
                "accessToken": {"displayName": "local", "role": "write"},
            },
        }

    @app.post("/api/repos/create")
    async def create_repo(request: Request) -> JSONResponse:
        name = auth.require(request, "create a repo")
        body = await _json(request)
        repo_id = _repo_id_from_body(body, name)
        private = body.get("private")
        if private is None:
            private = body.get("visibility") == "private"
        url = f"{_base(request)}/{repo_id}"
        try:
            await run_in_threadpool(store.create_repo, repo_id, private=bool(private))
        except RepoExists as exc:  # the Hub's 409 names the repo: `exist_ok=True` reads `url`
            return _error(exc.status, str(exc), exc.code, body={"url": url})
        return JSONResponse({"url": url, "name": repo_id, "id": repo_id})

    @app.delete("/api/repos/delete")
    async def delete_repo(request: Request) -> Response:
        name = auth.require(request, "delete a repo")
        repo_id = _repo_id_from_body(await _json(request), name)
        await run_in_threadpool(store.delete_repo, repo_id)
        return Response(status_code=200)

    @app.put("/api/models/{ns}/{name}/settings")
    async def repo_settings(ns: str, name: str, request: Request) -> dict[str, Any]:
        auth.require(request, "change settings")
        body = await _json(request)
        repo_id = f"{ns}/{name}"
        private = body.get("private")
        if "visibility" in body:
            private = body["visibility"] == "private"
        if private is not None:
            await run_in_threadpool(store.set_private, repo_id, bool(private))
        return {"private": store.get_repo(repo_id).private}

    @app.post("/api/validate-yaml")
    async def validate_yaml(request: Request) -> JSONResponse:
        body = await _json(request)
        _, _, error = split_front_matter(str(body.get("content", "")))
        if error:
            return JSONResponse({"errors": [{"message": error}], "warnings": []}, status_code=400)
        return JSONResponse({"errors": [], "warnings": []})

    # -- model info, refs, trees, commits -------------------------------------------------------

    @app.get("/api/models/{ns}/{name}")
    def model_info(ns: str, name: str, request: Request) -> dict[str, Any]:
        repo_id = f"{ns}/{name}"
        state = auth.readable(request, store, repo_id)
        return _model_info(store, state, MAIN_BRANCH, request)

    @app.get("/api/models/{ns}/{name}/revision/{rest:path}")
    def model_info_at(ns: str, name: str, rest: str, request: Request) -> dict[str, Any]:
        repo_id = f"{ns}/{name}"
        state = auth.readable(request, store, repo_id)
        revision, _ = _revision_and_path(request, 5)
        return _model_info(store, state, revision, request)

    @app.get("/api/models/{ns}/{name}/refs")
    def refs(ns: str, name: str, request: Request) -> dict[str, Any]:
        state = auth.readable(request, store, f"{ns}/{name}")
        include_prs = request.query_params.get("include_prs") in ("1", "true", "True")
        out: dict[str, Any] = {
            "branches": [
                {"name": b, "ref": f"refs/heads/{b}", "targetCommit": c}
                for b, c in sorted(state.branches.items())
            ],
            "converts": [],
            "tags": [
                {"name": t, "ref": f"refs/tags/{t}", "targetCommit": c}
                for t, c in sorted(state.tags.items())
            ],
        }
        if include_prs:
            out["pullRequests"] = [
                {"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": c}
                for n, c in sorted(state.pull_heads.items(), key=lambda kv: int(kv[0]))
            ]
        return out

    @app.get("/api/models/{ns}/{name}/discussions")
    def discussions(ns: str, name: str, request: Request) -> dict[str, Any]:
        # Pull requests are the only discussions this server has; one page holds them all.
        repo_id = f"{ns}/{name}"
        state = auth.readable(request, store, repo_id)
        kind = request.query_params.get("type", "all")
        status = request.query_params.get("status", "all")
        pulls = [] if kind == "discussion" else sorted(state.pulls.values(), key=lambda p: -p.num)
        if status != "all":
            pulls = [p for p in pulls if p.status == status]
        items = [
            {
                "num": p.num,
                "title": p.title,
                "status": p.status,
                "isPullRequest": True,
                "createdAt": p.created_at,
                "author": {"name": p.author},
                "repo": {"name": repo_id, "type": "model"},
            }
            for p in pulls
        ]
        return {"discussions": items, "count": len(items), "start": 0, "numItemsPerPage": 50}

    @app.get("/api/models/{ns}/{name}/tree/{rest:path}")
    def tree(ns: str, name: str, rest: str, request: Request) -> list[dict[str, Any]]:
        repo_id = f"{ns}/{name}"
        auth.readable(request, store, repo_id)
        revision, path = _revision_and_path(request, 5)
        path = path.strip("/")
        commit = store.resolve(repo_id, revision)
        recursive = _truthy(request.query_params.get("recursive"))
        expand = _truthy(request.query_params.get("expand"))
        folders = set(iter_folders(commit.tree))
        if path and path not in folders:
            if path in commit.tree:
                raise InvalidRequest(f"{path} is a file, not a folder")
            raise _entry_not_found(path, revision)
        prefix = path + "/" if path else ""
        entries = []
        for folder in sorted(folders):
            if folder.startswith(prefix) and (recursive or "/" not in folder[len(prefix) :]):
                entries.append(_folder_json(store, repo_id, commit, folder, expand))
        for file_path, entry in commit.tree.items():
            if file_path.startswith(prefix) and (recursive or "/" not in file_path[len(prefix) :]):
                entries.append(_file_json(store, repo_id, commit, file_path, entry, expand))
        return entries

    @app.post("/api/models/{ns}/{name}/paths-info/{rest:path}")
    async def paths_info(ns: str, name: str, rest: str, request: Request) -> list[dict[str, Any]]:
        repo_id = f"{ns}/{name}"
        auth.readable(request, store, repo_id)
        revision, _ = _revision_and_path(request, 5)
        form = await _form_or_json(request)
        paths = form.get("paths", [])
        expand = _truthy((form.get("expand") or [None])[0])
        commit = await run_in_threadpool(store.resolve, repo_id, revision)
        folders = set(iter_folders(commit.tree))
        out = []
        for raw in paths:
            path = str(raw).strip("/")
            if path in commit.tree:
                out.append(_file_json(store, repo_id, commit, path, commit.tree[path], expand))
            elif path in folders:
                out.append(_folder_json(store, repo_id, commit, path, expand))
        return out

    @app.get("/api/models/{ns}/{name}/commits/{rest:path}")
    def commits(ns: str, name: str, rest: str, request: Request) -> list[dict[str, Any]]:
        repo_id = f"{ns}/{name}"
        auth.readable(request, store, repo_id)
        revision, _ = _revision_and_path(request, 5)
        return [
            {
                "id": c.id,
                "title": c.title,
                "message": c.message,
                "authors": [{"user": c.author, "avatar": None}],
                "date": c.date,
            }
            for c in store.history(repo_id, revision)
        ]

    # -- writing: preupload, commit, branches, tags, pull requests ------------------------------

    @app.post("/api/models/{ns}/{name}/preupload/{rest:path}")
    async def preupload(ns: str, name: str, rest: str, request: Request) -> dict[str, Any]:
        repo_id = f"{ns}/{name}"
        auth.require(request, "upload", repo_id=repo_id, store=store)
        revision, _ = _revision_and_path(request, 5)
        body = await _json(request)
        files = body.get("files")
        if not isinstance(files, list):
            raise InvalidRequest("preupload expects {'files': [{'path', 'sample', 'size'}, ...]}")
        modes = await run_in_threadpool(
            store.upload_modes, repo_id, revision, files, body.get("gitIgnore")
        )
        head = store.resolve(repo_id, revision)
        return {
            "files": [
                {
                    "path": m.path,
                    "uploadMode": m.mode,
                    "shouldIgnore": m.should_ignore,
                    "oid": m.oid,
                }
                for m in modes
            ],
            "commitOid": head.id,
        }

    @app.post("/api/models/{ns}/{name}/commit/{rest:path}")
    async def commit(ns: str, name: str, rest: str, request: Request) -> dict[str, Any]:
        repo_id = f"{ns}/{name}"
        author = auth.require(request, "commit", repo_id=repo_id, store=store)
        revision, _ = _revision_and_path(request, 5)
        header, operations = _parse_ndjson_commit(await request.body())
        create_pr = _truthy(request.query_params.get("create_pr"))
        result = await run_in_threadpool(
            lambda: store.commit(
                repo_id,
                revision,
                operations,
                title=str(header.get("summary") or "Upload files"),
                message=str(header.get("description") or ""),
                author=author,
                parent_commit=header.get("parentCommit"),
                create_pr=create_pr,
            )
        )
        stats.add_commit(
            CommitRecord(
                repo_id=repo_id,
                commit_id=result.commit.id,
                ref=result.ref,
                parents=list(result.commit.parents),
                title=result.commit.title,
                pr_num=result.pr_num,
                added=result.added,
                deleted=result.deleted,
            )
        )
        base = _base(request)
        return {
            "success": True,
            "commitOid": result.commit.id,
            "commitUrl": f"{base}/{repo_id}/commit/{result.commit.id}",
            "hookOutput": "",
            "pullRequestUrl": (
                f"{base}/{repo_id}/discussions/{result.pr_num}" if result.pr_num else None
            ),
            "pullRequestRevision": result.ref if result.pr_num else None,
        }

    @app.api_route("/api/models/{ns}/{name}/branch/{rest:path}", methods=["POST", "DELETE"])
    async def branch(ns: str, name: str, rest: str, request: Request) -> Response:
        repo_id = f"{ns}/{name}"
        auth.require(request, "change branches", repo_id=repo_id, store=store)
        branch_name, _ = _revision_and_path(request, 5, split_refs=False)
        if request.method == "DELETE":
            await run_in_threadpool(store.delete_branch, repo_id, branch_name)
        else:
            body = await _json(request, empty_ok=True)
            await run_in_threadpool(
                lambda: store.create_branch(
                    repo_id, branch_name, body.get("startingPoint"), exist_ok=False
                )
            )
        return Response(status_code=200)

    @app.post("/api/models/{ns}/{name}/tag/{rest:path}")
    async def tag(ns: str, name: str, rest: str, request: Request) -> Response:
        repo_id = f"{ns}/{name}"
        auth.require(request, "tag", repo_id=repo_id, store=store)
        revision, _ = _revision_and_path(request, 5)
        body = await _json(request)
        await run_in_threadpool(
            lambda: store.create_tag(repo_id, str(body.get("tag", "")), revision, exist_ok=False)
        )
        return Response(status_code=200)

    @app.post("/api/models/{ns}/{name}/discussions/{num}/{action}")
    async def discussion_change(ns: str, name: str, num: int, action: str, request: Request) -> Any:
        repo_id = f"{ns}/{name}"
        author = auth.require(request, "change pull requests", repo_id=repo_id, store=store)
        body = await _json(request, empty_ok=True)
        if action == "merge":
            merged = await run_in_threadpool(
                lambda: store.merge_pull_request(
                    repo_id, num, author=author, comment=str(body.get("comment") or "")
                )
            )
            return {"commitOid": merged.id}
        if action == "status" and body.get("status") in ("open", "closed"):
            await run_in_threadpool(store.set_pr_status, repo_id, num, body["status"])
            return {
                "newStatus": {
                    "id": hashlib.sha1(
                        f"{repo_id}{num}".encode(), usedforsecurity=False
                    ).hexdigest(),
                    "type": "status-change",
                    "createdAt": store.resolve(repo_id, MAIN_BRANCH).date,
                    "author": {"name": author},
                    "data": {"status": body["status"]},
                }
            }
        raise InvalidRequest(f"unsupported discussion action {action!r}")

    # -- Git LFS: batch, upload, verify ---------------------------------------------------------

    @app.post("/{ns}/{name}.git/info/lfs/objects/batch")
    async def lfs_batch(ns: str, name: str, request: Request) -> JSONResponse:
        repo_id = f"{ns}/{name}"
        auth.require(request, "upload", repo_id=repo_id, store=store)
        body = await _json(request)
        if body.get("operation") != "upload":
            raise InvalidRequest("only the 'upload' operation is served; download through resolve/")
        base = _base(request)
        objects = []
        for obj in body.get("objects") or []:
            oid, size = str(obj.get("oid", "")), obj.get("size")
            if not isinstance(size, int) or len(oid) != 64 or not _is_hex(oid):
                objects.append(
                    {
                        "oid": oid,
                        "size": size if isinstance(size, int) else 0,
                        "error": {"code": 422, "message": "oid must be a sha256 and size an int"},
                    }
                )
            elif store.has_blob(oid, size):
                objects.append({"oid": oid, "size": size})  # no actions: nothing to send
            else:
                href = f"{base}/{repo_id}.git/info/lfs/objects/{oid}?size={size}"
                objects.append(
                    {
                        "oid": oid,
                        "size": size,
                        "authenticated": True,
                        "actions": {
                            "upload": {"href": href},
                            "verify": {"href": f"{base}/{repo_id}.git/info/lfs/verify"},
                        },
                    }
                )
        return JSONResponse(
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
            media_type="application/vnd.git-lfs+json",
        )

    @app.put("/{ns}/{name}.git/info/lfs/objects/{oid}")
    async def lfs_upload(ns: str, name: str, oid: str, request: Request) -> JSONResponse:
        # huggingface_hub sends the PUT without credentials (it targets a pre-signed URL on the
        # Hub); the content is checked against its sha256, so nobody can store a wrong blob.
        if not store.repo_exists(f"{ns}/{name}"):
            raise RepoNotFound(f"Repository {ns}/{name} not found")
        expected = request.query_params.get("size")
        digest = hashlib.sha256()
        received = 0
        f, tmp = store.new_upload()
        try:
            with f:
                async for chunk in request.stream():
                    if chunk:
                        digest.update(chunk)
                        f.write(chunk)
                        received += len(chunk)
                        stats.add_lfs_bytes(len(chunk))
        except ClientDisconnect:
            store.discard_upload(tmp)
            raise
        if digest.hexdigest() != oid.lower() or (
            expected is not None and int(expected) != received
        ):
            store.discard_upload(tmp)
            raise InvalidRequest(
                f"uploaded content does not match the LFS object: sha256 {digest.hexdigest()} "
                f"size {received}, expected {oid} size {expected}"
            )
        await run_in_threadpool(store.finish_upload, tmp, oid.lower())
        stats.add_lfs_object()
        return JSONResponse({"oid": oid, "size": received})

    @app.post("/{ns}/{name}.git/info/lfs/verify")
    async def lfs_verify(ns: str, name: str, request: Request) -> JSONResponse:
        auth.require(request, "upload", repo_id=f"{ns}/{name}", store=store)
        body = await _json(request)
        oid, size = str(body.get("oid", "")), body.get("size")
        if not store.has_blob(oid, size if isinstance(size, int) else None):
            return _error(404, f"LFS object {oid} (size {size}) was not uploaded", None)
        return JSONResponse({"message": "ok"})

    # -- downloads and pages --------------------------------------------------------------------

    @app.api_route("/{ns}/{name}/resolve/{rest:path}", methods=["GET", "HEAD"])
    def resolve(ns: str, name: str, rest: str, request: Request) -> Response:
        repo_id = f"{ns}/{name}"
        auth.readable(request, store, repo_id)
        revision, path = _revision_and_path(request, 3)
        commit = store.resolve(repo_id, revision)
        entry = commit.tree.get(path.strip("/"))
        if entry is None:
            exc = _entry_not_found(path, revision)
            return _error(exc.status, str(exc), exc.code, {"X-Repo-Commit": commit.id})
        etag = entry.sha256 if entry.lfs else entry.blob_id
        headers = {
            "X-Repo-Commit": commit.id,
            "ETag": f'"{etag}"',
            "Cache-Control": "private, max-age=0",
        }
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        filename = path.rsplit("/", 1)[-1]
        return FileResponse(
            store.blob_path(entry.sha256),
            headers=headers,
            media_type=_media_type(filename),
            content_disposition_type="inline",
            filename=filename,
        )

    @app.get("/{ns}/{name}/discussions/{num}")
    def discussion_page(ns: str, name: str, num: int) -> RedirectResponse:
        return RedirectResponse(f"/{ns}/{name}?revision={quote(f'refs/pr/{num}', safe='')}")

    @app.get("/{ns}/{name}/commit/{oid}")
    def commit_page(ns: str, name: str, oid: str) -> RedirectResponse:
        return RedirectResponse(f"/{ns}/{name}?revision={oid}")

    def visible_repos(request: Request) -> list[str]:
        signed_in = auth.user(request) is not None
        return [r for r in store.list_repos() if signed_in or not store.get_repo(r).private]

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        return HTMLResponse(render_index(visible_repos(request)))

    @app.get("/{ns}/{name}", response_class=HTMLResponse)
    def model_page(ns: str, name: str, request: Request) -> HTMLResponse:
        repo_id = f"{ns}/{name}"
        revision = request.query_params.get("revision") or MAIN_BRANCH
        try:
            state = auth.readable(request, store, repo_id)
            view = _page_view(store, state, revision)
        except (RepoNotFound, RevisionNotFound) as exc:
            return HTMLResponse(render_index(visible_repos(request), str(exc)), status_code=404)
        return HTMLResponse(render_page(view))

    return app


# ---------------------------------------------------------------------------------------------
# auth


class _Auth:
    """Bearer tokens: any token is accepted (as `user`) unless a specific one is configured."""

    def __init__(self, token: str | None, user: str) -> None:
        self.token = token
        self.name = user

    def user(self, request: Request) -> str | None:
        """The user behind the request's token; None without one; 401 for a rejected one."""
        header = request.headers.get("authorization")
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            raise Unauthorized(_INVALID_TOKEN)
        if self.token is not None and not hmac.compare_digest(value, self.token):
            raise Unauthorized(_INVALID_TOKEN)
        return self.name

    def require(
        self,
        request: Request,
        what: str,
        *,
        repo_id: str | None = None,
        store: HubStore | None = None,
    ) -> str:
        """The user, or 401 when there is none; with `repo_id`, also 404 if it does not exist."""
        name = self.user(request)
        if name is None:
            raise Unauthorized(f"You must be authenticated to {what}: pass a token (HF_TOKEN)")
        if repo_id is not None and store is not None and not store.repo_exists(repo_id):
            raise RepoNotFound(f"Repository {repo_id} not found")
        return name

    def readable(self, request: Request, store: HubStore, repo_id: str) -> RepoState:
        """The repo's state if the request may read it; otherwise 404 (as the Hub hides private
        repos)."""
        if not store.repo_exists(repo_id):
            raise RepoNotFound(f"Repository {repo_id} not found")
        state = store.get_repo(repo_id)
        if state.private and self.user(request) is None:
            raise RepoNotFound(f"Repository {repo_id} not found")
        return state


# ---------------------------------------------------------------------------------------------
# test API


def _add_test_api(app: FastAPI, faults: FaultInjector, stats: HubStats) -> None:
    @app.get("/_publisher/faults")
    def list_faults() -> dict[str, Any]:
        return faults.as_json()

    @app.post("/_publisher/faults")
    async def add_fault(request: Request) -> dict[str, Any]:
        body = await _json(request)
        action = str(body.get("action", ""))
        if action not in FAULT_ACTIONS:
            raise InvalidRequest(f"action must be one of {', '.join(FAULT_ACTIONS)}")
        try:
            rule = faults.add(
                body.get("method"),
                str(body.get("path", body.get("path_pattern", ""))),
                action,  # type: ignore[arg-type]
                int(body.get("times", 1)),
            )
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        return {"added": rule.__dict__}

    @app.delete("/_publisher/faults")
    def clear_faults() -> dict[str, Any]:
        faults.clear()
        return faults.as_json()

    @app.get("/_publisher/stats")
    def get_stats() -> dict[str, Any]:
        return stats.as_json()

    @app.delete("/_publisher/stats")
    def reset_stats() -> dict[str, Any]:
        stats.reset()
        return stats.as_json()


# ---------------------------------------------------------------------------------------------
# request parsing


def _segments(request: Request) -> list[str]:
    """The request path split on `/`, each segment percent-decoded afterwards (so `%2F` inside
    a segment stays inside it)."""
    raw = request.scope.get("raw_path")
    path = raw.decode("latin-1") if raw else quote(request.url.path)
    return [unquote(s) for s in path.split("?", 1)[0].split("/")[1:]]


def _revision_and_path(request: Request, index: int, *, split_refs: bool = True) -> tuple[str, str]:
    """Revision at path segment `index` and the file path after it. An unencoded
    `refs/pr/N` (three segments) is taken as one revision too."""
    parts = _segments(request)[index:]
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


async def _json(request: Request, *, empty_ok: bool = False) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        if empty_ok:
            return {}
        raise InvalidRequest("expected a JSON body")
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"invalid JSON body: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("expected a JSON object")
    return data


async def _form_or_json(request: Request) -> dict[str, list[Any]]:
    """paths-info sends a urlencoded form (`paths=a&paths=b`); accept JSON as well."""
    body = await request.body()
    if request.headers.get("content-type", "").startswith("application/json"):
        data = json.loads(body or b"{}")
        return {k: v if isinstance(v, list) else [v] for k, v in data.items()}
    return {k: list(v) for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}


def _parse_ndjson_commit(body: bytes) -> tuple[dict[str, Any], list[Operation]]:
    """The commit payload: a `header` line, then `file`, `lfsFile`, `deletedFile` and
    `deletedFolder` lines."""
    header: dict[str, Any] | None = None
    operations: list[Operation] = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InvalidRequest(
                f"commit payload line {number} is not a {{key, value}} JSON object"
            ) from exc
        if key == "header":
            header = value
        elif key == "file":
            if value.get("encoding", "base64") != "base64":
                raise InvalidRequest(
                    f"unsupported encoding {value.get('encoding')!r} for {value.get('path')}"
                )
            try:
                content = base64.b64decode(value["content"], validate=True)
            except (ValueError, KeyError) as exc:
                raise InvalidRequest(f"bad base64 content for {value.get('path')}") from exc
            operations.append(FileAdd(path=validate_path(str(value["path"])), content=content))
        elif key == "lfsFile":
            if value.get("algo", "sha256") != "sha256":
                raise InvalidRequest("only sha256 LFS objects are supported")
            operations.append(
                FileAdd(
                    path=validate_path(str(value["path"])),
                    lfs_oid=str(value["oid"]),
                    lfs_size=value.get("size"),
                )
            )
        elif key in ("deletedFile", "deletedFolder"):
            operations.append(
                FileDelete(path=validate_path(str(value["path"])), folder=key == "deletedFolder")
            )
        else:
            raise InvalidRequest(f"unsupported commit operation {key!r} on line {number}")
    if header is None:
        raise InvalidRequest("commit payload has no header line")
    return header, operations


def _repo_id_from_body(body: dict[str, Any], user: str) -> str:
    repo_type = body.get("type") or "model"
    if repo_type != "model":
        raise InvalidRequest(f"this local Hub serves model repos only, not {repo_type!r}")
    name = str(body.get("name") or "")
    namespace = body.get("organization") or user
    return f"{namespace}/{name}"


# ---------------------------------------------------------------------------------------------
# responses


def _error(
    status: int,
    message: str,
    code: str | None,
    headers: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
) -> JSONResponse:
    """An error as the Hub sends it: `{"error": message}` plus `X-Error-Message` and, where
    huggingface_hub maps it to an exception class, `X-Error-Code`."""
    out = dict(headers or {})
    out["X-Error-Message"] = message.encode("ascii", "replace").decode().replace("\n", " ")[:500]
    if code:
        out["X-Error-Code"] = code
    return JSONResponse({"error": message, **(body or {})}, status_code=status, headers=out)


def _entry_not_found(path: str, revision: str) -> HubStoreError:
    return EntryNotFound(f"Entry not found: {path} at {revision}")


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _model_info(
    store: HubStore, state: RepoState, revision: str, request: Request
) -> dict[str, Any]:
    commit = store.resolve(state.repo_id, revision)
    card_data = _card_data(store, commit)
    blobs = _truthy(request.query_params.get("blobs"))
    siblings = []
    for path, entry in commit.tree.items():
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
        siblings.append(sibling)
    base_models, license_id, tags = card_fields(card_data)
    derived = [f"license:{license_id}"] if license_id else []
    derived += [f"base_model:{b}" for b in base_models]
    namespace = state.repo_id.split("/")[0]
    info: dict[str, Any] = {
        "_id": hashlib.sha1(state.repo_id.encode(), usedforsecurity=False).hexdigest()[:24],
        "id": state.repo_id,
        "modelId": state.repo_id,
        "author": namespace,
        "sha": commit.id,
        "lastModified": commit.date,
        "createdAt": state.created_at,
        "private": state.private,
        "disabled": False,
        "gated": False,
        "downloads": 0,
        "likes": 0,
        "tags": tags + [t for t in derived if t not in tags],
        "siblings": siblings,
        "usedStorage": sum(e.size for e in commit.tree.values()),
    }
    if card_data:
        info["cardData"] = card_data
    for key in ("library_name", "pipeline_tag"):
        if card_data.get(key):
            info[key] = card_data[key]
    if card_data.get("model-index"):
        info["model-index"] = card_data["model-index"]
    return info


def _card_data(store: HubStore, commit: Commit) -> dict[str, Any]:
    entry = commit.tree.get("README.md")
    if entry is None:
        return {}
    data, _, _ = split_front_matter(store.read_blob(entry.sha256).decode("utf-8", "replace"))
    return data


def _file_json(
    store: HubStore, repo_id: str, head: Commit, path: str, entry: TreeEntry, expand: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "file", "oid": entry.blob_id, "size": entry.size, "path": path}
    if entry.lfs:
        out["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
    if expand:
        out["lastCommit"] = _last_commit_json(store.last_commit_touching(repo_id, head, path))
    return out


def _folder_json(
    store: HubStore, repo_id: str, head: Commit, folder: str, expand: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "directory",
        "oid": folder_oid(head.tree, folder),
        "size": 0,
        "path": folder,
    }
    if expand:
        out["lastCommit"] = _last_commit_json(store.last_commit_touching(repo_id, head, folder))
    return out


def _last_commit_json(commit: Commit) -> dict[str, Any]:
    return {"id": commit.id, "title": commit.title, "date": commit.date}


def _page_view(store: HubStore, state: RepoState, revision: str) -> PageView:
    commit = store.resolve(state.repo_id, revision)
    resolve_base = f"/{state.repo_id}/resolve/{quote(revision, safe='')}/"
    readme = commit.tree.get("README.md")
    card_data: dict[str, Any] = {}
    body, error = "", ""
    if readme is not None:
        text = store.read_blob(readme.sha256).decode("utf-8", "replace")
        card_data, body, error = split_front_matter(text)
    base_models, license_id, tags = card_fields(card_data)
    return PageView(
        repo_id=state.repo_id,
        revision=revision,
        commit=commit.id,
        last_modified=commit.date,
        private=state.private,
        card_html=render_markdown(body, resolve_base),
        has_card=readme is not None,
        base_models=base_models,
        license=license_id,
        tags=tags,
        eval_rows=eval_rows(card_data),
        files=[
            PageFile(path, e.size, e.lfs, resolve_base + quote(path, safe="/"))
            for path, e in sorted(commit.tree.items())
        ],
        pull_requests=[
            (pr.num, pr.title)
            for _, pr in sorted(state.pulls.items(), key=lambda kv: int(kv[0]))
            if pr.status == "open"
        ],
        front_matter_error=error,
    )


def _media_type(filename: str) -> str:
    import mimetypes

    guessed, _ = mimetypes.guess_type(filename)
    if filename.endswith((".md", ".txt", ".yaml", ".yml", ".jinja")):
        return "text/plain; charset=utf-8"
    if filename.endswith(".json"):
        return "application/json"
    return guessed or "application/octet-stream"


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "on")


def _is_hex(value: str) -> bool:
    return all(c in "0123456789abcdef" for c in value.lower())
