"""The local Hub's storage: repos, commits, refs and content-addressed blobs on disk.

Layout under the data directory (everything is plain files, so a new server over the same
directory sees the same repos):

```
blobs/<aa>/<sha256>            file contents, by sha256 (regular and LFS files alike)
repos/<namespace>/<name>/
  repo.json                    RepoState: visibility, branches, pull requests
  commits/<commit id>.json     Commit: parents, message, author, date, tree
tmp/                           uploads in progress (renamed into blobs/ once verified)
```

A commit id is the sha1 of the commit's canonical JSON, so it looks like a git commit id. A tree
maps each file path to its `TreeEntry`. One re-entrant lock serialises every change.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from publisher.hubserver.records import (
    Commit,
    CommitResult,
    FileDelete,
    Operation,
    PullRequest,
    RepoState,
    TreeEntry,
    UploadMode,
    git_blob_sha1,
    lfs_pointer,
    now_iso,
)

SYSTEM_AUTHOR = "system"
MAIN_BRANCH = "main"

LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
"""Files above this size (10 MB, the Hub's limit for regular files) always go to LFS."""

LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".gguf",
    ".h5",
    ".msgpack",
    ".onnx",
    ".npy",
    ".npz",
    ".pkl",
    ".zip",
    ".tar",
    ".gz",
    ".png",
    ".jpg",
    ".jpeg",
    ".gif",
    ".webp",
)
"""Suffixes the preupload endpoint always sends to LFS (the weights and images a card links)."""

DEFAULT_GITATTRIBUTES = "".join(
    f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES
)
"""The `.gitattributes` of a new repo's initial commit, as on the Hub."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_BRANCH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{7,40}$")
_PR_REF_RE = re.compile(r"^refs/pr/(\d+)$")


# ---------------------------------------------------------------------------------------------
# errors: each maps to one HTTP status and, where huggingface_hub reads it, an X-Error-Code


class HubStoreError(Exception):
    """A request the store cannot satisfy; `status` and `code` become the HTTP answer."""

    status = 400
    code: str | None = None


class RepoNotFound(HubStoreError):
    status, code = 404, "RepoNotFound"


class RevisionNotFound(HubStoreError):
    status, code = 404, "RevisionNotFound"


class EntryNotFound(HubStoreError):
    status, code = 404, "EntryNotFound"


class RepoExists(HubStoreError):
    status = 409


class ParentMismatch(HubStoreError):
    status = 412


class InvalidRequest(HubStoreError):
    status = 400


class MissingLfsObject(HubStoreError):
    status = 422


def validate_repo_id(repo_id: str) -> str:
    """Return `repo_id` if it is `<namespace>/<name>` with Hub-valid parts, else raise."""
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_NAME_RE.match(p) and ".." not in p for p in parts):
        raise InvalidRequest(
            f"invalid repo id {repo_id!r}: expected '<namespace>/<name>' with letters, digits, '-', '_', '.'"
        )
    if parts[1].endswith(".git"):
        raise InvalidRequest(f"invalid repo id {repo_id!r}: the name cannot end with '.git'")
    return repo_id


def validate_path(path: str) -> str:
    """Return a normalised file path inside a repo, or raise for one that could escape it."""
    path = path.strip("/")
    parts = path.split("/")
    if not path or any(p in ("", ".", "..") for p in parts) or parts[0] == ".git" or "\0" in path:
        raise InvalidRequest(f"invalid path in repo: {path!r}")
    return path


def should_go_lfs(path: str, size: int, sample: bytes) -> bool:
    """The preupload rule: big files, weight/image suffixes and binary content go to LFS."""
    return size > LFS_SIZE_THRESHOLD or path.lower().endswith(LFS_SUFFIXES) or b"\0" in sample


def _commit_id(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha1(
        b"commit %d\0" % len(canonical) + canonical, usedforsecurity=False
    ).hexdigest()


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# the store


class HubStore:
    """Repos, commits, refs and blobs under `data_dir`. Thread safe; survives restarts."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.blobs_dir = self.data_dir / "blobs"
        self.repos_dir = self.data_dir / "repos"
        self.tmp_dir = self.data_dir / "tmp"
        # Partial uploads and half-written JSON from a server that was killed: nothing reads
        # them, and one server at a time serves a data directory.
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        for leftover in self.repos_dir.glob("*/*/**/.tmp-*.json"):
            leftover.unlink(missing_ok=True)
        for d in (self.blobs_dir, self.repos_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()

    # -- blobs --------------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        if not _SHA256_RE.match(sha256):
            raise InvalidRequest(f"not a sha256: {sha256!r}")
        return self.blobs_dir / sha256[:2] / sha256

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        try:
            path = self.blob_path(sha256)
        except InvalidRequest:
            return False
        return path.is_file() and (size is None or path.stat().st_size == size)

    def put_bytes(self, data: bytes) -> str:
        """Store `data`, return its sha256."""
        sha256 = hashlib.sha256(data).hexdigest()
        if not self.has_blob(sha256, len(data)):
            path = self.blob_path(sha256)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.tmp_dir)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return sha256

    def new_upload(self) -> tuple[BinaryIO, Path]:
        """A temporary file for a streamed upload; pass it to `finish_upload` or `discard_upload`."""
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix="upload-")
        return os.fdopen(fd, "wb"), Path(tmp)

    def finish_upload(self, tmp: Path, sha256: str) -> None:
        """Move a verified upload into the blob store."""
        path = self.blob_path(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)

    @staticmethod
    def discard_upload(tmp: Path) -> None:
        tmp.unlink(missing_ok=True)

    def read_blob(self, sha256: str) -> bytes:
        return self.blob_path(sha256).read_bytes()

    # -- repos --------------------------------------------------------------------------------

    def _repo_dir(self, repo_id: str) -> Path:
        return self.repos_dir / validate_repo_id(repo_id)

    def _load(self, repo_id: str) -> RepoState:
        path = self._repo_dir(repo_id) / "repo.json"
        if not path.is_file():
            raise RepoNotFound(f"Repository {repo_id} not found")
        return RepoState.from_json(json.loads(path.read_text(encoding="utf-8")))

    def _save(self, state: RepoState) -> None:
        _write_json(self._repo_dir(state.repo_id) / "repo.json", state.to_json())

    def repo_exists(self, repo_id: str) -> bool:
        try:
            return (self._repo_dir(repo_id) / "repo.json").is_file()
        except InvalidRequest:
            return False

    def get_repo(self, repo_id: str) -> RepoState:
        with self._lock:
            return self._load(repo_id)

    def list_repos(self) -> list[str]:
        with self._lock:
            return sorted(
                f"{p.parent.parent.name}/{p.parent.name}"
                for p in self.repos_dir.glob("*/*/repo.json")
            )

    def create_repo(self, repo_id: str, *, private: bool = False) -> RepoState:
        """Create a repo whose `main` holds the Hub's initial commit (a `.gitattributes`)."""
        with self._lock:
            if self.repo_exists(repo_id):
                raise RepoExists(f"You already created this model repo: {repo_id}")
            validate_repo_id(repo_id)
            data = DEFAULT_GITATTRIBUTES.encode()
            entry = TreeEntry(
                self.put_bytes(data), len(data), lfs=False, blob_id=git_blob_sha1(data)
            )
            commit = self._new_commit(
                repo_id, [], "initial commit", "", SYSTEM_AUTHOR, {".gitattributes": entry}
            )
            state = RepoState(
                repo_id=repo_id,
                private=private,
                created_at=commit.date,
                branches={MAIN_BRANCH: commit.id},
            )
            self._save(state)
            return state

    def delete_repo(self, repo_id: str) -> None:
        """Delete a repo's refs and commits (blobs stay: they may be shared)."""
        with self._lock:
            self._load(repo_id)
            shutil.rmtree(self._repo_dir(repo_id))

    # -- commits and refs ---------------------------------------------------------------------

    def _new_commit(
        self,
        repo_id: str,
        parents: list[str],
        title: str,
        message: str,
        author: str,
        tree: dict[str, TreeEntry],
    ) -> Commit:
        commit = Commit("", parents, title, message, author, now_iso(), dict(sorted(tree.items())))
        body = commit.to_json()
        del body["id"]
        commit.id = _commit_id(body)
        _write_json(self._repo_dir(repo_id) / "commits" / f"{commit.id}.json", commit.to_json())
        return commit

    def get_commit(self, repo_id: str, commit_id: str) -> Commit:
        path = self._repo_dir(repo_id) / "commits" / f"{commit_id}.json"
        if not _COMMIT_RE.match(commit_id) or not path.is_file():
            raise RevisionNotFound(f"Invalid rev id: {commit_id}")
        return Commit.from_json(json.loads(path.read_text(encoding="utf-8")))

    def resolve(self, repo_id: str, revision: str) -> Commit:
        """The commit a revision names: a branch, `refs/heads/...`, `refs/pr/N`,
        or a (possibly abbreviated, at least 7 digits) commit id."""
        with self._lock:
            state = self._load(repo_id)
            return self.get_commit(repo_id, self._resolve_id(state, revision))

    def _resolve_id(self, state: RepoState, revision: str) -> str:
        if revision.startswith("refs/heads/"):
            name = revision[len("refs/heads/") :]
            if name in state.branches:
                return state.branches[name]
        elif match := _PR_REF_RE.match(revision):
            if match[1] in state.pull_heads:
                return state.pull_heads[match[1]]
        elif revision in state.branches:
            return state.branches[revision]
        elif _COMMIT_RE.match(revision):
            commits_dir = self._repo_dir(state.repo_id) / "commits"
            if len(revision) == 40 and (commits_dir / f"{revision}.json").is_file():
                return revision
            found = [p.stem for p in commits_dir.glob(f"{revision}*.json")]
            if len(found) == 1:
                return found[0]
        raise RevisionNotFound(f"Invalid rev id: {revision}")

    def _commit_with_prefix(self, state: RepoState, prefix: str) -> str | None:
        """The full id of the one commit whose id starts with `prefix`, None when no commit or
        more than one does. A prefix has 5 to 40 hex digits, as the client checks a
        `parent_commit` (`constants.REGEX_COMMIT_OID`): an empty one must not match them all."""
        prefix = prefix.lower()
        if not re.fullmatch(r"[0-9a-f]{5,40}", prefix):
            raise InvalidRequest(f"parentCommit must be 5 to 40 hex digits, not {prefix!r}")
        found = [
            p.stem for p in (self._repo_dir(state.repo_id) / "commits").glob(f"{prefix}*.json")
        ]
        return found[0] if len(found) == 1 else None

    def history(self, repo_id: str, revision: str) -> list[Commit]:
        """Commits reachable from `revision` by first parents, newest first."""
        with self._lock:
            commit = self.resolve(repo_id, revision)
            out = [commit]
            while commit.parents:
                commit = self.get_commit(repo_id, commit.parents[0])
                out.append(commit)
            return out

    def commit(
        self,
        repo_id: str,
        revision: str,
        operations: Iterable[Operation],
        *,
        title: str,
        message: str = "",
        author: str,
        parent_commit: str | None = None,
        create_pr: bool = False,
    ) -> CommitResult:
        """Apply `operations` on top of `revision` (a branch or `refs/pr/N`) in one commit.

        With `parent_commit` (a commit id, or a unique prefix of 5 or more hex digits), refuses
        (`ParentMismatch`, HTTP 412) unless the commit it names is the current head of
        `revision`. With `create_pr`, `revision` is left alone and the commit goes to a new
        `refs/pr/<N>`; the result carries the PR number. As on the Hub, `create_pr` with
        `parent_commit` opens the pull request from that commit, which need not be the head.
        """
        operations = list(operations)
        with self._lock:
            state = self._load(repo_id)
            ref, head_id = self._writable_ref(state, revision, create_pr)
            if parent_commit is not None:
                parent_id = self._commit_with_prefix(state, parent_commit)
                if create_pr:  # the pull request is opened from the parent, head or not
                    if parent_id is None:
                        raise RevisionNotFound(f"Invalid rev id: {parent_commit}")
                    head_id = parent_id
                elif parent_id != head_id:  # the full ids, not a prefix of the head's
                    raise ParentMismatch(
                        f"A commit has happened since. Please refresh and try again. "
                        f"(parent commit {parent_commit} is not the head {head_id} of {revision})"
                    )
            head = self.get_commit(repo_id, head_id)
            tree = dict(head.tree)
            added, deleted = self._apply(tree, operations)
            commit = self._new_commit(repo_id, [head.id], title, message, author, tree)
            pr_num = None
            if create_pr:
                pr_num = self._next_pr_number(state)
                state.pulls[str(pr_num)] = PullRequest(
                    num=pr_num,
                    title=title,
                    description=message,
                    author=author,
                    target_branch=ref.removeprefix("refs/heads/"),
                    base_commit=head.id,
                    status="open",
                    created_at=commit.date,
                )
                state.pull_heads[str(pr_num)] = commit.id
                ref = f"refs/pr/{pr_num}"
            elif ref.startswith("refs/pr/"):
                state.pull_heads[ref.split("/")[-1]] = commit.id
            else:
                state.branches[ref.removeprefix("refs/heads/")] = commit.id
            self._save(state)
            return CommitResult(repo_id, commit, ref, pr_num, added, deleted)

    def _writable_ref(self, state: RepoState, revision: str, create_pr: bool) -> tuple[str, str]:
        name = revision.removeprefix("refs/heads/")
        if name in state.branches:
            return f"refs/heads/{name}", state.branches[name]
        if (match := _PR_REF_RE.match(revision)) and match[1] in state.pull_heads:
            if create_pr:
                raise InvalidRequest("cannot open a pull request from a pull request ref")
            pr = state.pulls[match[1]]
            if pr.status != "open":
                raise InvalidRequest(f"pull request #{pr.num} is {pr.status}")
            return revision, state.pull_heads[match[1]]
        raise RevisionNotFound(
            f"Invalid rev id: {revision} (commits go to a branch or an open refs/pr/<num>)"
        )

    @staticmethod
    def _next_pr_number(state: RepoState) -> int:
        return max((int(n) for n in state.pulls), default=0) + 1

    def _apply(
        self, tree: dict[str, TreeEntry], operations: list[Operation]
    ) -> tuple[list[str], list[str]]:
        added: list[str] = []
        deleted: list[str] = []
        for op in operations:
            path = validate_path(op.path)
            if isinstance(op, FileDelete):
                if op.folder:
                    prefix = path + "/"
                    gone = [p for p in tree if p.startswith(prefix)]
                    if not gone:
                        raise EntryNotFound(f"A folder with this name doesn't exist: {path}")
                else:
                    if path not in tree:
                        raise EntryNotFound(f"A file with this name doesn't exist: {path}")
                    gone = [path]
                for p in gone:
                    del tree[p]
                deleted.extend(gone)
                continue
            if op.content is not None:
                sha256 = self.put_bytes(op.content)
                entry = TreeEntry(sha256, len(op.content), False, git_blob_sha1(op.content))
            elif op.lfs_oid is not None:
                oid = op.lfs_oid.lower()
                if not self.has_blob(oid):
                    raise MissingLfsObject(
                        f"LFS object {oid} for {path} was not uploaded: upload it through the LFS "
                        "batch API before committing"
                    )
                size = self.blob_path(oid).stat().st_size
                if op.lfs_size is not None and op.lfs_size != size:
                    raise InvalidRequest(f"size mismatch for {path}: {op.lfs_size} != {size}")
                entry = TreeEntry(oid, size, True, git_blob_sha1(lfs_pointer(oid, size)))
            else:
                raise InvalidRequest(f"no content for {path}")
            for existing in list(tree):  # a file replaces a folder of the same name and back
                if existing.startswith(path + "/") or path.startswith(existing + "/"):
                    raise InvalidRequest(f"{path} conflicts with existing {existing}")
            tree[path] = entry
            added.append(path)
        return added, deleted

    def create_branch(self, repo_id: str, branch: str, revision: str | None) -> None:
        """A new branch at `revision` (default: the head of main); 409 if it exists."""
        with self._lock:
            state = self._load(repo_id)
            if branch in state.branches:
                raise RepoExists(f"Reference already exists: refs/heads/{branch}")
            if (
                not _BRANCH_RE.match(branch)
                or branch.startswith("refs/")
                or any(bad in branch for bad in ("..", "//", "/."))
                or branch.endswith((".lock", "/"))
            ):
                raise InvalidRequest(
                    f"invalid branch name {branch!r}: letters, digits, '.', '_', '-' and '/'"
                )
            state.branches[branch] = self._resolve_id(state, revision or MAIN_BRANCH)
            self._save(state)

    def merge_pull_request(
        self, repo_id: str, num: int, *, author: str, comment: str = ""
    ) -> Commit:
        """Merge PR `num` into its target branch: the PR's changes since its base, applied on
        the branch's current head, in one commit with two parents."""
        with self._lock:
            state = self._load(repo_id)
            pr = state.pulls.get(str(num))
            if pr is None:
                raise EntryNotFound(f"Discussion #{num} not found")
            if pr.status != "open":
                raise InvalidRequest(f"pull request #{num} is {pr.status}")
            base = self.get_commit(repo_id, pr.base_commit)
            pr_head = self.get_commit(repo_id, state.pull_heads[str(num)])
            target = self.get_commit(repo_id, state.branches[pr.target_branch])
            tree = dict(target.tree)
            for path in set(base.tree) | set(pr_head.tree):
                before, after = base.tree.get(path), pr_head.tree.get(path)
                if before == after:
                    continue
                if after is None:
                    tree.pop(path, None)
                else:
                    tree[path] = after
            commit = self._new_commit(
                repo_id,
                [target.id, pr_head.id],
                f"Merge pull request #{num}: {pr.title}",
                comment,
                author,
                tree,
            )
            state.branches[pr.target_branch] = commit.id
            pr.status = "merged"
            self._save(state)
            return commit

    # -- reading trees ------------------------------------------------------------------------

    def upload_modes(
        self, repo_id: str, revision: str, files: list[tuple[str, int, bytes]]
    ) -> list[UploadMode]:
        """The preupload answer: LFS or regular, and the current oid, for each file given as
        (path, size, first bytes)."""
        with self._lock:
            commit = self.resolve(repo_id, revision)
        out = []
        for path, size, sample in files:
            path = validate_path(path)
            lfs = should_go_lfs(path, size, sample)
            existing = commit.tree.get(path)
            oid = None
            if existing is not None:
                oid = existing.sha256 if existing.lfs else existing.blob_id
            out.append(UploadMode(path, "lfs" if lfs else "regular", oid))
        return out
