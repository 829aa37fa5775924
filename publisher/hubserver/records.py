"""What the local Hub stores: commits and their trees, pull requests, a repo's refs, and the
operations and answers that change and describe them. Plain dataclasses that round-trip through
the JSON files of `store.HubStore`."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal


@dataclass(frozen=True)
class TreeEntry:
    """One file of a commit.

    Attributes:
        sha256: sha256 of the content, the key of the blob in `blobs/`.
            Example: `"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"`.
        size: size of the content in bytes. Example: `4`.
        lfs: whether the file is stored with Git LFS (the Hub then serves a pointer in git).
        blob_id: the git blob sha1: of the content for a regular file, of the LFS pointer file
            for an LFS file (what the Hub calls the file's `oid`).
    """

    sha256: str
    size: int
    lfs: bool
    blob_id: str

    @property
    def pointer_size(self) -> int:
        """Size of the LFS pointer file that stands for this file in git."""
        return len(lfs_pointer(self.sha256, self.size))


@dataclass
class Commit:
    """A commit of a repo.

    Attributes:
        id: 40 hex digits, the sha1 of the commit's canonical JSON.
        parents: ids of the parent commits (empty for the initial commit).
        title: first line of the message. Example: `"Upload folder using huggingface_hub"`.
        message: the rest of the message (the commit description), may be empty.
        author: user name of the committer. Example: `"publisher-demo"`.
        date: ISO 8601 UTC timestamp. Example: `"2025-01-01T12:00:00.000000Z"`.
        tree: file path → `TreeEntry`, for every file in the repo at this commit.
    """

    id: str
    parents: list[str]
    title: str
    message: str
    author: str
    date: str
    tree: dict[str, TreeEntry]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["tree"] = {path: asdict(entry) for path, entry in sorted(self.tree.items())}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Commit:
        tree = {path: TreeEntry(**entry) for path, entry in data["tree"].items()}
        return cls(**{**data, "tree": tree})


@dataclass
class PullRequest:
    """A Hub pull request: a `refs/pr/<num>` ref proposed for merging into a branch.

    Attributes:
        num: the discussion number. Example: `1`.
        title: title of the PR (the summary of the commit that opened it).
        description: body of the PR.
        author: who opened it.
        target_branch: the branch it proposes to change. Example: `"main"`.
        base_commit: head of `target_branch` when the PR was opened.
        status: `"open"`, `"merged"` or `"closed"`.
        created_at: ISO 8601 UTC timestamp.
    """

    num: int
    title: str
    description: str
    author: str
    target_branch: str
    base_commit: str
    status: Literal["open", "merged", "closed"]
    created_at: str

    @property
    def ref(self) -> str:
        return f"refs/pr/{self.num}"


@dataclass
class RepoState:
    """Everything about a repo except its commits: what `repo.json` holds.

    Attributes:
        repo_id: `"<namespace>/<name>"`. Example: `"publisher-demo/tiny-merge"`.
        private: whether only authenticated users see it.
        created_at: ISO 8601 UTC timestamp.
        branches: branch name → head commit id. Example: `{"main": "3f2a..."}`.
        pulls: pull requests by number (as a string, for JSON).
        pull_heads: PR number (as a string) → head commit id of `refs/pr/<num>`.
    """

    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)
    pulls: dict[str, PullRequest] = field(default_factory=dict)
    pull_heads: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["pulls"] = {num: asdict(pr) for num, pr in self.pulls.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RepoState:
        pulls = {num: PullRequest(**pr) for num, pr in data.get("pulls", {}).items()}
        data = {k: v for k, v in data.items() if k != "tags"}  # written by older versions
        return cls(**{**data, "pulls": pulls})


@dataclass(frozen=True)
class FileAdd:
    """A commit operation adding or replacing a file.

    Attributes:
        path: path in the repo. Example: `"model.safetensors"`.
        content: the bytes of a regular file (the NDJSON `file` line), or None for LFS.
        lfs_oid: sha256 of an LFS file already uploaded (the NDJSON `lfsFile` line).
        lfs_size: the size the client announced for the LFS file, checked when given.
    """

    path: str
    content: bytes | None = None
    lfs_oid: str | None = None
    lfs_size: int | None = None


@dataclass(frozen=True)
class FileDelete:
    """A commit operation deleting a file, or a folder when `folder` is true."""

    path: str
    folder: bool = False


Operation = FileAdd | FileDelete


@dataclass(frozen=True)
class CommitResult:
    """What `HubStore.commit` did.

    Attributes:
        repo_id: the repo. Example: `"publisher-demo/tiny-merge"`.
        commit: the new commit.
        ref: the ref that now points to it. Example: `"refs/heads/main"` or `"refs/pr/1"`.
        pr_num: number of the pull request opened by the commit, if any.
        added: paths added or changed by the commit.
        deleted: paths the commit removed.
    """

    repo_id: str
    commit: Commit
    ref: str
    pr_num: int | None
    added: list[str]
    deleted: list[str]


@dataclass(frozen=True)
class UploadMode:
    """Answer of the preupload endpoint for one file.

    Attributes:
        path: path in the repo.
        mode: `"lfs"` or `"regular"`.
        oid: what the client compares with its local hash to skip unchanged files: the sha256 of
            an existing LFS file, the git blob sha1 of an existing regular file, None if absent.
    """

    path: str
    mode: Literal["lfs", "regular"]
    oid: str | None


def now_iso() -> str:
    """Now, in the Hub's date format (what huggingface_hub's `parse_datetime` reads)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob with this content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The Git LFS pointer file that stands for a file in git."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def iter_folders(tree: dict[str, TreeEntry]) -> Iterator[str]:
    """Every folder path implied by the files of a tree, e.g. `"a"` and `"a/b"` for `"a/b/c"`."""
    seen: set[str] = set()
    for path in tree:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            folder = "/".join(parts[:i])
            if folder not in seen:
                seen.add(folder)
                yield folder


def folder_oid(tree: dict[str, TreeEntry], folder: str) -> str:
    """A stable sha1 for a folder: changes whenever any file under it changes."""
    prefix = folder.rstrip("/") + "/" if folder else ""
    h = hashlib.sha1(usedforsecurity=False)
    for path, entry in sorted(tree.items()):
        if path.startswith(prefix):
            h.update(f"{path[len(prefix) :]}\0{entry.blob_id}\n".encode())
    return h.hexdigest()
