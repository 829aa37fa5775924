"""The Hub stage: parents down at their pinned commits, the run up in one commit.

`push_run` publishes a verified run directory with huggingface_hub's `HfApi`: it creates the repo
if needed, compares what is there with what would be sent (LFS files by sha256, others by git
blob id), and, when anything differs, uploads the missing LFS objects and makes **one** commit
holding weights, tokenizer, card, schedule image, reports, recipe, lock and manifest. The commit
passes `parent_commit`, so it never overwrites a commit it has not seen; `create_pr` opens a Hub
pull request instead and leaves `main` untouched.

Retries are one policy over huggingface_hub's own (`publisher.hubretry`). The token comes from
huggingface_hub (`HF_TOKEN`, the saved login, or the Trusted Publishers exchange when
`HF_OIDC_RESOURCE` is set) and is never printed or written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from publisher.digests import sha256_file
from publisher.errors import PublisherError
from publisher.hubretry import (
    UPLOAD_ATTEMPTS,
    UploadsSpent,
    bounded_uploads,
    caused_by,
    http_message,
    is_transient,
    status_of,
    with_retries,
)
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

# Files that differ on every run (timings, statuses) without the published content changing.
VOLATILE = {f"{REPORTS_DIR}/manifest.json"}
# Files a run owns, as upload_folder's delete_patterns: stale weight shards of an earlier push
# are deleted, a user's other files kept.
DELETE_PATTERNS = ["*.safetensors", "model.safetensors.index.json"]


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
# parents


def fetch_parents(
    recipe: Recipe,
    parents: list[ParentInfo],
    log: Callable[[str], None] = print,
    mounted: Mapping[str, Path] | None = None,
) -> dict[str, Path]:
    """A local directory for every parent, at its pinned revision.

    Hub parents are downloaded with `snapshot_download` at the locked commit SHA into the shared
    HF cache (reused across runs): config, tokenizer and safetensors weights only. A Hub parent
    in `mounted` (ref -> directory: the repo mounted at its locked revision, as a Hugging Face
    Job's read-only model volume) is read there instead, with nothing downloaded. Pickle weights
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
        if mounted and parent.ref in mounted:
            dirs[parent.ref] = _mounted_parent(recipe, parent, Path(mounted[parent.ref]))
            log(
                f"  {repo_id}@{parent.revision[:12]} mounted at {mounted[parent.ref]} (no download)"
            )
            continue
        # Listing and downloads: huggingface_hub retries these itself (http_backoff).
        files = HfApi().list_repo_files(repo_id, revision=parent.revision)

        def read_index(name: str, repo_id: str = repo_id, parent: ParentInfo = parent) -> Any:
            from huggingface_hub import hf_hub_download

            local = hf_hub_download(repo_id, name, revision=parent.revision)
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
        path = snapshot_download(repo_id, revision=parent.revision, allow_patterns=wanted)
        # The snapshot holds what the merge reads: check it as a local parent is checked.
        dirs[parent.ref] = check_parent_dir(recipe, parent.ref, Path(path))
    return dirs


def _mounted_parent(recipe: Recipe, parent: ParentInfo, path: Path) -> Path:
    """A mounted Hub parent, checked as a downloaded one is, and against its lock: a volume at
    another revision (or none at all) must not be merged as this parent."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HubError(
            f"parent '{parent.ref}': no readable config.json at {path} ({exc})"
        ) from None
    if config != parent.config:
        raise HubError(
            f"parent '{parent.ref}': the config.json mounted at {path} is not the one locked at "
            f"{parent.revision}; mount the repo at that revision"
        )
    return check_parent_dir(recipe, parent.ref, path)


# ---------------------------------------------------------------------------------------------
# push


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
    for file in run.parent_evals():
        files[f"{REPORTS_DIR}/parents/{file.name}"] = file
    return files


def _remote_files(api: Any, repo_id: str, revision: str) -> dict[str, Any]:
    """`path -> RepoFile` on `revision` (empty for a new repo); the library retries the listing."""
    from huggingface_hub import RepoFile
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    try:
        tree = list(api.list_repo_tree(repo_id, revision=revision, recursive=True))
    except (EntryNotFoundError, RevisionNotFoundError):
        return {}
    return {e.path: e for e in tree if isinstance(e, RepoFile)}


def _matches(entry: Any, local: Path, local_sha256: str) -> bool:
    """Whether the Hub's file holds the local bytes: LFS by sha256, others by git blob id."""
    from huggingface_hub.utils.sha import git_hash

    if entry.lfs is not None:
        return entry.lfs.sha256 == local_sha256
    return entry.blob_id == git_hash(local.read_bytes())


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
    from huggingface_hub.utils import filter_repo_objects

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
        remote = _remote_files(api, repo_id, branch)
    except HfHubHTTPError as exc:
        raise HubError(http_message(exc, repo_id)) from None

    local_sha = {name: sha256_file(path) for name, path in files.items()}
    changed = [
        name
        for name, path in files.items()
        if name not in remote or not _matches(remote[name], path, local_sha[name])
    ]
    stale = [
        name
        for name in filter_repo_objects(remote, allow_patterns=DELETE_PATTERNS)
        if name not in files
    ]
    # What the library lacks: the manifest (timings, statuses) differs on every run, so a run
    # whose published content is unchanged makes no commit at all.
    if not [n for n in changed if n not in VOLATILE] and not stale:
        log(f"  {repo_id}@{branch} already holds this run ({head[:12]}): nothing to push")
        return PushResult(repo_id, repo_url, head, None, False, 0, 0)

    def open_pr_holding_run() -> tuple[str, str | None] | None:
        try:
            return _open_pr_holding(api, repo_id, files, local_sha, log)
        except HfHubHTTPError as exc:
            raise HubError(http_message(exc, repo_id)) from None

    if create_pr and (proposed := open_pr_holding_run()) is not None:
        log(f"  an open pull request already proposes this run: {proposed[1]}")
        return PushResult(repo_id, repo_url, proposed[0], proposed[1], False, 0, 0)

    manifest = json.loads(run.manifest.read_text()) if run.manifest.exists() else {}
    recipe_sha = str(manifest.get("recipe_sha256") or "")
    recipe_name = Path(str(manifest["recipe"])).name if manifest.get("recipe") else "run"
    message = f"publisher: {recipe_name} (recipe sha256 {recipe_sha[:12] or 'unknown'})"
    log(
        f"  pushing {len(changed)} changed file(s), deleting {len(stale)} stale, to {repo_id}"
        f"{' as a pull request' if create_pr else ''}"
    )
    try:
        with bounded_uploads(UPLOAD_ATTEMPTS) as uploads:
            # Every file goes in: create_commit leaves out the ones the Hub already holds.
            additions = [
                CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
                for name, path in files.items()
            ]
            deletions = [CommitOperationDelete(path_in_repo=name) for name in stale]
            # LFS objects go up first, with the library's own retries (bounded by `uploads`),
            # so that a retried commit below sends no weights again.
            api.preupload_lfs_files(repo_id, additions=additions, revision=branch)

            def commit() -> tuple[str, str | None]:
                # parent_commit guards a direct commit against overwriting one it has not
                # seen; with create_pr the pull request is opened from that commit.
                info = api.create_commit(
                    repo_id,
                    operations=[*additions, *deletions],
                    commit_message=message,
                    commit_description=_commit_description(files, run),
                    revision=branch,
                    parent_commit=head,
                    create_pr=create_pr,
                )
                return info.oid, info.pr_url

            # Opening a pull request is not idempotent: before retrying, look for the one the
            # failed attempt may have opened. A direct commit is guarded by parent_commit.
            commit_sha, pr_url = with_retries(
                "commit", commit, log, succeeded=open_pr_holding_run if create_pr else None
            )
    except HfHubHTTPError as exc:
        if status_of(exc) in (409, 412) and not create_pr:
            # A retried commit whose first attempt landed (its answer was lost) also meets a
            # moved head: then the repo already holds exactly this run, which is success.
            landed = _landed(api, repo_id, branch, files, local_sha, log)
            if landed is not None:
                log(f"  the commit had landed before the connection dropped: {landed[:12]}")
                return PushResult(repo_id, repo_url, landed, None, True, len(changed), 0)
            raise HubError(
                f"{repo_id}@{branch} changed while pushing (someone else committed); "
                "the repo was left as it was. Run the push again to publish on top of "
                "the new commit."
            ) from None
        raise HubError(http_message(exc, repo_id) + "; the repo was left as it was") from None
    except Exception as exc:
        # huggingface_hub reports a failed LFS upload as a RuntimeError caused by the real one.
        if (spent := caused_by(exc, UploadsSpent)) is not None:
            raise HubError(
                f"the Hub did not take the weights ({spent}); the commit is all-or-nothing, so "
                "the repo is unchanged: check https://status.huggingface.co and push again later"
            ) from None
        if (http := caused_by(exc, HfHubHTTPError)) is not None:
            raise HubError(http_message(http, repo_id) + "; the repo was left as it was") from None
        if is_transient(exc):
            raise HubError(
                f"the Hub did not answer ({type(exc).__name__}) after retries; the "
                "commit is all-or-nothing, so the repo is unchanged: push again "
                "later"
            ) from None
        raise
    log(f"  committed {commit_sha[:12]}" + (f", pull request {pr_url}" if pr_url else ""))
    return PushResult(
        repo_id, repo_url, commit_sha, pr_url, True, len(changed) + len(stale), len(uploads.stored)
    )


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
    remote = _remote_files(api, repo_id, branch)
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


def _commit_description(files: dict[str, Path], run: RunDir) -> str:
    lines = ["Published by publisher.", "", f"{len(files)} files:"]
    lines += [f"- {name}" for name in sorted(files)]
    return "\n".join(lines)
