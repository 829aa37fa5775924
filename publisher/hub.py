"""The Hub stage: parents down at their pinned commits, the run up in one commit.

`push_run` publishes a verified run directory with huggingface_hub's `HfApi`: it creates the repo
if needed, compares what is there with what would be sent (LFS files by sha256, others by git
blob id), and, when anything differs, uploads the missing LFS objects and makes **one** commit
holding weights, tokenizer, card, schedule image, reports, recipe, lock and manifest. The commit
passes `parent_commit`, so it never overwrites a commit it has not seen; `create_pr` opens a Hub
pull request instead and leaves `main` untouched. Calls that are safe to repeat are retried with
backoff on 429, 5xx and dropped connections. The token comes from huggingface_hub (`HF_TOKEN`,
the saved login, or the Trusted Publishers exchange when `HF_OIDC_RESOURCE` is set) and is never
printed or written.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from publisher.digests import sha256_file
from publisher.errors import PublisherError
from publisher.parents import (
    ParentError,
    ParentInfo,
    check_parent_dir,
    check_remote_code,
    check_weights,
    parent_files,
)
from publisher.recipe import Recipe
from publisher.report import Log, reporter
from publisher.rundir import RunDir
from publisher.upload import REPORTS_DIR, UploadRefused, check_upload, scan_secrets

T = TypeVar("T")

RETRY_STATUS = {429, 500, 502, 503, 504}
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)
RETRY_AFTER_CAP = 60.0
# Files that differ on every run (timings, statuses) without the published content changing.
VOLATILE = {f"{REPORTS_DIR}/manifest.json"}


class HubError(PublisherError):
    """A Hub operation failed; the message says what happened and what to do."""


@dataclass
class PushResult:
    """What a push did.

    Attributes:
        repo_id: e.g. `"someone/my-merge"`.
        repo_url: e.g. `"https://huggingface.co/someone/my-merge"`.
        commit_sha: the commit holding the run (the existing one when nothing changed).
        pr_url: the Hub pull request, when one was opened.
        changed: whether a new commit was made.
        files: number of files in the commit.
        uploaded_lfs_files: LFS files whose bytes were sent.
    """

    repo_id: str
    repo_url: str
    commit_sha: str
    pr_url: str | None
    changed: bool
    files: int
    uploaded_lfs_files: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# retries


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _is_transient(exc: BaseException) -> bool:
    status = _status_of(exc)
    if status is not None:
        return status in RETRY_STATUS
    name = type(exc).__name__
    transient_names = (
        "ConnectionError",
        "ConnectError",
        "RemoteProtocolError",
        "ReadError",
        "ReadTimeout",
        "ConnectTimeout",
        "Timeout",
        "ProtocolError",
        "ChunkedEncodingError",
        "WriteError",
    )
    if isinstance(exc, (ConnectionError, TimeoutError)) or name in transient_names:
        return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and _is_transient(cause)


def _retry_after(exc: BaseException) -> float | None:
    # The Hub's 429 answers say how long to wait; honour that (capped) over our own backoff.
    response = getattr(exc, "response", None)
    value = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
    try:
        return min(float(value), RETRY_AFTER_CAP) if value is not None else None
    except ValueError:
        return None


def with_retries(
    what: str,
    call: Callable[[], T],
    log: Callable[[str], None] = print,
    delays: tuple[float, ...] | None = None,
    succeeded: Callable[[], T | None] | None = None,
) -> T:
    """Run `call`, retrying transient failures (429, 5xx, dropped connections) with backoff.

    Only for calls that are safe to repeat: reads, repo creation with `exist_ok`, uploads of
    content-addressed LFS objects, and commits guarded by `parent_commit`. For a call that is
    not (opening a Hub pull request), `succeeded` looks for its effect after a failure: when it
    returns a value, the first attempt landed although its answer was lost, and that value is
    returned instead of trying again. `delays` defaults to `RETRY_DELAYS`.
    """
    delays = RETRY_DELAYS if delays is None else delays
    for attempt in range(len(delays) + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == len(delays) or not _is_transient(exc):
                raise
            if succeeded is not None and (done := succeeded()) is not None:
                return done
            status = _status_of(exc)
            reason = f"HTTP {status}" if status else type(exc).__name__
            wait = _retry_after(exc) or delays[attempt]
            log(f"  {what}: {reason}, retrying in {wait:.0f}s ({attempt + 1}/{len(delays)})")
            time.sleep(wait)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# parents


def fetch_parents(
    recipe: Recipe, parents: list[ParentInfo], log: Callable[[str], None] = print
) -> dict[str, Path]:
    """A local directory for every parent, at its pinned revision.

    Hub parents are downloaded with `snapshot_download` at the locked commit SHA into the shared
    HF cache (reused across runs): config, tokenizer and safetensors weights only. Pickle weights
    are refused unless the recipe sets `publish.allow_pickle`; a parent that needs remote code is
    refused unless it sets `publish.trust_remote_code`.
    """
    from huggingface_hub import HfApi, snapshot_download

    dirs: dict[str, Path] = {}
    for parent in parents:
        if parent.path:
            dirs[parent.ref] = check_parent_dir(recipe, parent.ref, Path(parent.path))
            continue
        if not parent.resolved or not parent.revision:
            raise HubError(
                f"parent '{parent.ref}' is not pinned to a commit; run "
                f"'publisher lock {recipe.path}' where the Hub is reachable"
            )
        repo_id = parent.ref.partition("@")[0]
        # Refused from the lock's config alone before anything is listed or downloaded.
        check_remote_code(recipe, parent.ref, {"config.json": parent.config})
        files = with_retries(
            f"list {repo_id}",
            lambda repo_id=repo_id, parent=parent: HfApi().list_repo_files(
                repo_id, revision=parent.revision
            ),
            log,
        )

        def read_index(name: str, repo_id: str = repo_id, parent: ParentInfo = parent) -> Any:
            from huggingface_hub import hf_hub_download

            local = with_retries(
                f"download {repo_id}/{name}",
                lambda: hf_hub_download(repo_id, name, revision=parent.revision),
                log,
            )
            try:
                return json.loads(Path(local).read_text(encoding="utf-8"))
            except ValueError as exc:
                raise ParentError(f"parent '{parent.ref}': {name} is not JSON ({exc})") from None

        wanted, pickled = parent_files(parent.ref, files, read_index)
        check_weights(recipe, parent.ref, wanted, pickled)
        log(
            f"  downloading {repo_id}@{parent.revision[:12]} ({len(wanted)} files: config, "
            "tokenizer, weights)"
        )
        path = with_retries(
            f"download {repo_id}",
            lambda repo_id=repo_id, parent=parent, wanted=wanted: snapshot_download(
                repo_id, revision=parent.revision, allow_patterns=wanted
            ),
            log,
        )
        # The snapshot holds what the merge reads: check it as a local parent is checked.
        dirs[parent.ref] = check_parent_dir(recipe, parent.ref, Path(path))
    return dirs


# ---------------------------------------------------------------------------------------------
# push


def git_blob_sha1(data: bytes) -> str:
    """The id git (and the Hub) gives a regular file's content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 (git's id)


def run_files(run_dir: Path) -> dict[str, Path]:
    """The repo layout of a run: `path in repo -> file in the run directory`.

    Weights, config and tokenizer at the root (from `merged/`), the card and its image at the
    root, and the reports, recipe, lock and manifest under `publisher/`.
    """
    run = RunDir(Path(run_dir))
    files: dict[str, Path] = {}
    if run.merged.is_dir():
        # Every entry but directories, dotfiles and links included, for the allow-list to see;
        # mergekit's own card would be merged/README.md, which the run's card replaces.
        for file in sorted(run.merged.rglob("*")):
            if (file.is_symlink() or not file.is_dir()) and file != run.merged / "README.md":
                files[file.relative_to(run.merged).as_posix()] = file
    for file in (run.card, run.image):
        if file.exists():
            files[file.name] = file
    for repo_name, file in (
        ("recipe.yaml", run.recipe),
        ("recipe.lock.json", run.lock),
        ("plan.json", run.plan),
        ("card.json", run.card_data),
        ("smoke.json", run.smoke),
        ("eval_results.json", run.eval_results),
        ("verify.json", run.verify),
        ("manifest.json", run.manifest),
    ):
        if file.exists():
            files[f"{REPORTS_DIR}/{repo_name}"] = file
    return files


def _remote_files(api, repo_id: str, revision: str, log) -> dict[str, Any]:
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    def listing():
        try:
            return [
                e
                for e in api.list_repo_tree(repo_id, revision=revision, recursive=True)
                if getattr(e, "blob_id", None) is not None or hasattr(e, "size")
            ]
        except (EntryNotFoundError, RevisionNotFoundError):
            return []

    return {
        e.path: e
        for e in with_retries("list repo files", listing, log)
        if type(e).__name__ == "RepoFile"
    }


def _matches(entry: Any, local: Path, local_sha256: str | None) -> bool:
    lfs = getattr(entry, "lfs", None)
    if lfs is not None:
        sha = getattr(lfs, "sha256", None) or (lfs.get("sha256") if isinstance(lfs, dict) else None)
        return sha == local_sha256
    return entry.blob_id == git_blob_sha1(local.read_bytes())


def check_push(run_dir: Path) -> dict[str, Path]:
    """Everything a push checks before any Hub call; the files it would upload.

    The card validates, verify passed and nothing changed since, the parents are pinned, every
    file is on the upload allow-list and none holds a secret of this environment. The build job
    runs it (`publisher push RUN_DIR --check`) before uploading the run; the push runs it again.
    """
    from publisher.card import CardError, validate_card

    run = RunDir(Path(run_dir))
    if not run.card.exists():
        raise HubError(f"{run.card} does not exist; run the card stage first")
    try:
        validate_card(run.card.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise HubError(
            f"{run.card} is not UTF-8 text ({exc.reason} at byte {exc.start}); nothing was "
            "uploaded. Render it again (publisher run RECIPE --stages card,verify)"
        ) from None
    except CardError as exc:
        raise HubError(
            f"the card's metadata does not validate, nothing was uploaded: {exc}"
        ) from None
    verify = json.loads(run.verify.read_text()) if run.verify.exists() else None
    if not verify or not verify.get("passed"):
        raise HubError(
            f"{run.verify} is missing or did not pass; nothing was uploaded "
            "(run the verify stage first)"
        )
    vouched = verify.get("verified_files") or {}
    now = run.verified_files()
    changed_since = sorted(
        name for name in set(vouched) | set(now) if vouched.get(name) != now.get(name)
    )
    if not vouched or changed_since:
        raise HubError(
            "the run directory changed after verify passed "
            f"({', '.join(changed_since[:5]) or 'no record of what was verified'}); nothing was "
            "uploaded. Run the verify stage again (publisher run RECIPE --stages verify)"
        )
    unpinned = _unpinned_parents(run)
    if unpinned:
        raise HubError(
            f"the parents {', '.join(unpinned)} are not pinned to a revision, so nobody could "
            "reproduce the merge; nothing was uploaded. Run 'publisher lock RECIPE' where the "
            "Hub is reachable, then run the pipeline again"
        )

    files = run_files(run.root)
    try:
        check_upload(files)
    except UploadRefused as exc:
        raise HubError(str(exc)) from None
    return files


def push_run(
    run_dir: Path,
    repo_id: str,
    create_pr: bool = False,
    private: bool = False,
    revision: str | None = None,
    log: Log = print,
) -> PushResult:
    """Publish a verified run directory to `repo_id` in one commit (see the module docstring)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if "/" not in repo_id:
        raise HubError(
            f"repo id '{repo_id}' has no namespace; set publish.repo_id in the recipe "
            "or PUBLISHER_NAMESPACE"
        )
    run = RunDir(Path(run_dir))
    files = check_push(run.root)
    try:
        token = get_token()
    except Exception as exc:  # e.g. HF_OIDC_RESOURCE set but no id token available
        raise HubError(f"cannot get a Hub token: {exc}") from None
    if not token:
        raise HubError(
            "no Hub token: set HF_TOKEN, run 'hf auth login', or configure Trusted "
            "Publishers (HF_OIDC_RESOURCE)"
        )
    try:
        scan_secrets(files, {"the Hub token": token})
    except UploadRefused as exc:
        raise HubError(str(exc)) from None
    # An exchanged Trusted Publishers token is not in the environment the runner masks.
    reporter(log).mask(token)
    # No fixed token: HfApi asks huggingface_hub for it on every request, which refreshes an
    # exchanged token that expires during a long upload.
    api = HfApi()
    branch = revision or "main"
    try:
        repo_url = str(
            with_retries(
                "create repo",
                lambda: api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model"),
                log,
            )
        )
        head = with_retries("read repo", lambda: api.model_info(repo_id, revision=branch), log).sha
        remote = _remote_files(api, repo_id, branch, log)
    except HfHubHTTPError as exc:
        raise HubError(_http_message(exc, repo_id)) from None

    local_sha = {name: sha256_file(path) for name, path in files.items()}
    changed = [
        name
        for name, path in files.items()
        if name not in remote or not _matches(remote[name], path, local_sha[name])
    ]
    stale = [name for name in remote if name not in files and _managed(name)]
    if not [n for n in changed if n not in VOLATILE] and not stale:
        # Only the manifest (timings, statuses) differs: the published content is the same.
        log(f"  {repo_id}@{branch} already holds this run ({head[:12]}): nothing to push")
        return PushResult(repo_id, repo_url, head, None, False, 0, 0)

    def open_pr_holding_run() -> tuple[str, str | None] | None:
        try:
            return _open_pr_holding(api, repo_id, files, local_sha, log)
        except HfHubHTTPError as exc:
            raise HubError(_http_message(exc, repo_id)) from None

    if create_pr and (proposed := open_pr_holding_run()) is not None:
        log(f"  an open pull request already proposes this run: {proposed[1]}")
        return PushResult(repo_id, repo_url, proposed[0], proposed[1], False, 0, 0)

    manifest = json.loads(run.manifest.read_text()) if run.manifest.exists() else {}
    recipe_sha = str(manifest.get("recipe_sha256") or "")
    recipe_name = Path(str(manifest["recipe"])).name if manifest.get("recipe") else "run"
    message = f"publisher: {recipe_name} (recipe sha256 {recipe_sha[:12] or 'unknown'})"
    operations: list[Any] = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(files[name])) for name in changed
    ]
    operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
    additions = [op for op in operations if isinstance(op, CommitOperationAdd)]
    log(
        f"  pushing {len(changed)} changed file(s), deleting {len(stale)} stale, to {repo_id}"
        f"{' as a pull request' if create_pr else ''}"
    )
    try:
        # LFS objects are content-addressed: uploading them again is harmless, so retry freely.
        with_retries(
            "upload LFS files",
            lambda: api.preupload_lfs_files(repo_id, additions=additions, revision=branch),
            log,
        )
        uploaded = sum(
            1
            for op in additions
            if getattr(op, "_upload_mode", None) == "lfs"
            and not getattr(op, "_should_ignore", False)
        )

        def commit() -> tuple[str, str | None]:
            # parent_commit guards a direct commit against overwriting one it has not seen;
            # with create_pr the pull request is opened from that commit, the one compared.
            info = api.create_commit(
                repo_id,
                operations=operations,
                commit_message=message,
                commit_description=_commit_description(files, run),
                revision=branch,
                parent_commit=head,
                create_pr=create_pr,
            )
            return getattr(info, "oid", None) or "", getattr(info, "pr_url", None)

        # Opening a pull request is not idempotent: before retrying, look for the one the
        # failed attempt may have opened. A direct commit is guarded by parent_commit instead.
        commit_sha, pr_url = with_retries(
            "commit", commit, log, succeeded=open_pr_holding_run if create_pr else None
        )
    except HfHubHTTPError as exc:
        if _status_of(exc) in (409, 412) and not create_pr:
            # A retried commit whose first attempt landed (its answer was lost) also meets a
            # moved head: then the repo already holds exactly this run, which is success.
            landed = _landed(api, repo_id, branch, files, local_sha, log)
            if landed is not None:
                log(f"  the commit had landed before the connection dropped: {landed[:12]}")
                return PushResult(repo_id, repo_url, landed, None, True, len(operations), 0)
            raise HubError(
                f"{repo_id}@{branch} changed while pushing (someone else committed); "
                "the repo was left as it was. Run the push again to publish on top of "
                "the new commit."
            ) from None
        raise HubError(_http_message(exc, repo_id) + "; the repo was left as it was") from None
    except Exception as exc:
        if _is_transient(exc):
            raise HubError(
                f"the Hub did not answer ({type(exc).__name__}) after retries; the "
                "commit is all-or-nothing, so the repo is unchanged: push again "
                "later"
            ) from None
        raise
    log(f"  committed {commit_sha[:12]}" + (f", pull request {pr_url}" if pr_url else ""))
    return PushResult(repo_id, repo_url, commit_sha, pr_url, True, len(operations), uploaded)


def _landed(
    api: Any,
    repo_id: str,
    branch: str,
    files: dict[str, Path],
    local_sha: dict[str, str],
    log: Callable[[str], None],
) -> str | None:
    """The head commit if `branch` now holds exactly `files`, else None."""
    head = with_retries("read repo", lambda: api.model_info(repo_id, revision=branch), log).sha
    remote = _remote_files(api, repo_id, branch, log)
    differs = [
        name
        for name, path in files.items()
        if name not in VOLATILE
        and (name not in remote or not _matches(remote[name], path, local_sha[name]))
    ]
    return None if differs else head


def _open_pr_holding(
    api: Any,
    repo_id: str,
    files: dict[str, Path],
    local_sha: dict[str, str],
    log: Callable[[str], None],
) -> tuple[str, str | None] | None:
    """(head commit, URL) of an open pull request that holds exactly `files`, else None."""
    pulls = with_retries(
        "list pull requests",
        lambda: list(
            api.get_repo_discussions(
                repo_id, discussion_type="pull_request", discussion_status="open"
            )
        ),
        log,
    )
    for pr in pulls:
        held = _landed(api, repo_id, f"refs/pr/{pr.num}", files, local_sha, log)
        if held is not None:
            return held, pr.url
    return None


def _unpinned_parents(run: RunDir) -> list[str]:
    from publisher.schedule import Plan

    if not run.plan.exists():
        return ["(no plan.json)"]
    return [p.ref for p in Plan.read(run.plan).parents if not (p.resolved and p.revision)]


def _managed(name: str) -> bool:
    # Files a run owns: stale weight shards from an earlier push are removed, user files kept.
    return name.endswith(".safetensors") or name == "model.safetensors.index.json"


def _commit_description(files: dict[str, Path], run: RunDir) -> str:
    lines = ["Published by publisher.", "", f"{len(files)} files:"]
    lines += [f"- {name}" for name in sorted(files)]
    return "\n".join(lines)


def _http_message(exc: Exception, repo_id: str) -> str:
    status = _status_of(exc)
    if status == 401:
        return "the Hub rejected the token (401); check HF_TOKEN or your login"
    if status == 403:
        return f"the token may not write to {repo_id} (403); use a token with write access to it"
    if status == 404:
        return f"{repo_id} or its revision was not found on the Hub (404)"
    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if status == 429:
        return (
            f"the Hub is rate-limiting requests (429) and still was after retries: {first_line}. "
            "Wait a few minutes, then push again"
        )
    if status is not None and status >= 500:
        return (
            f"the Hub had a server error ({status}) and still did after retries: {first_line}. "
            "Check https://status.huggingface.co and push again later"
        )
    return f"Hub request failed ({status or 'no status'}): {first_line}"
