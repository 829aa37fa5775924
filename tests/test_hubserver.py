"""The local Hub server, driven by the real huggingface_hub client over HTTP.

Every test talks to a `LocalHub` on 127.0.0.1 through an unmodified `HfApi` /
`hf_hub_download` / `snapshot_download`. The `client` fixture points huggingface_hub at the
server the way the demo must: environment variables (for subprocesses) **and** the
`huggingface_hub.constants` attributes that were frozen at import (see `client_constants`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
    constants,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import _http

from publisher.hubserver import (
    DEFAULT_USER,
    LocalHub,
    client_constants,
    client_environment,
    create_app,
    hub_client_env,
)

TOKEN = "hf_local_sentinel_token"
REPO = "publisher-demo/tiny-merge"
LFS_PUT = r"\.git/info/lfs/objects/[0-9a-f]{64}$"

CARD = """\
---
license: apache-2.0
base_model:
- parent/base-model
- parent/other-model
tags:
- merge
- slerp
model-index:
- name: tiny-merge
  results:
  - task:
      type: text-generation
      name: Text Generation
    dataset:
      name: AI2 Reasoning Challenge (25-Shot)
      type: ai2_arc
    metrics:
    - type: acc_norm
      name: normalized accuracy
      value: 0.6143
---
# tiny-merge

A SLERP merge.

| layer | t |
| --- | --- |
| 0 | 0.125 |
| 1 | 0.875 |

![t per layer](schedule.png)

<script>alert("card")</script>
"""


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[LocalHub]:
    with LocalHub(tmp_path / "hub-data") as hub:
        yield hub


def point_client_at(monkeypatch: pytest.MonkeyPatch, endpoint: str, hf_home: Path) -> None:
    """Environment and import-time constants of huggingface_hub → `endpoint`, restored after."""
    for name, value in client_environment(endpoint, token=TOKEN, hf_home=hf_home).items():
        monkeypatch.setenv(name, value)
    for name, value in client_constants(endpoint, hf_home=hf_home).items():
        monkeypatch.setattr(constants, name, value)
    _http.close_session()


@pytest.fixture
def client(hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HfApi]:
    """An `HfApi` (with no endpoint argument: it reads the patched constants, as library code
    deep inside transformers would)."""
    point_client_at(monkeypatch, hub.endpoint, tmp_path / "hf-home")
    yield HfApi()
    _http.close_session()


def model_folder(root: Path, weights: bytes | None = None) -> Path:
    """A small model folder: one regular file, one LFS weights file, a card and an image."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text('{"model_type": "mistral", "hidden_size": 8}\n')
    (root / "model.safetensors").write_bytes(
        weights if weights is not None else os.urandom(200_000)
    )
    (root / "README.md").write_text(CARD)
    (root / "schedule.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(500))
    return root


def lfs_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".safetensors", ".png"))


CHROMIUM = next(
    (b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
)


# ---------------------------------------------------------------------------------------------
# repos and auth


def test_whoami_create_and_delete_repo(client: HfApi) -> None:
    assert client.whoami()["name"] == DEFAULT_USER

    url = client.create_repo(REPO)
    assert url.repo_id == REPO and url.endpoint == constants.ENDPOINT
    with pytest.raises(HfHubHTTPError) as exc:
        client.create_repo(REPO)
    assert exc.value.response.status_code == 409
    assert client.create_repo(REPO, exist_ok=True).repo_id == REPO

    # no namespace: the user's; any other namespace is writable too
    assert client.create_repo("bare-name").repo_id == f"{DEFAULT_USER}/bare-name"
    assert client.create_repo("some-org/model").repo_id == "some-org/model"

    info = client.model_info(REPO)
    assert [s.rfilename for s in info.siblings or []] == [".gitattributes"]  # the initial commit
    assert client.list_repo_commits(REPO)[-1].title == "initial commit"

    client.delete_repo(REPO)
    with pytest.raises(RepositoryNotFoundError):
        client.model_info(REPO)
    client.delete_repo(REPO, missing_ok=True)


def test_configured_token_is_the_only_one_accepted(tmp_path: Path, monkeypatch) -> None:
    with LocalHub(tmp_path / "data", token="the-secret") as hub:
        point_client_at(monkeypatch, hub.endpoint, tmp_path / "hf")
        good = HfApi(token="the-secret")
        good.create_repo(REPO)
        good.create_repo("publisher-demo/hidden", private=True)
        with pytest.raises(HfHubHTTPError) as exc:
            HfApi(token="wrong").whoami()
        assert exc.value.response.status_code == 401

        anonymous = HfApi(token=False)
        assert anonymous.model_info(REPO).sha  # public: readable without a token
        with pytest.raises(RepositoryNotFoundError):
            anonymous.model_info("publisher-demo/hidden")  # private: hidden
        assert good.model_info("publisher-demo/hidden").private is True
        with pytest.raises(HfHubHTTPError):
            anonymous.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)


# ---------------------------------------------------------------------------------------------
# uploads, downloads, commits


def test_upload_then_snapshot_is_byte_identical(client: HfApi, hub: LocalHub, tmp_path) -> None:
    src = model_folder(tmp_path / "src")
    client.create_repo(REPO)
    commit = client.upload_folder(folder_path=src, repo_id=REPO, commit_message="Add the merge")

    assert hub.stats.lfs_bytes_uploaded == lfs_bytes(src)  # weights and png went through LFS
    assert hub.stats.lfs_objects_uploaded == 2
    info = client.model_info(REPO, files_metadata=True)
    assert info.sha == commit.oid
    files = {s.rfilename: s for s in info.siblings or []}
    assert files["model.safetensors"].lfs is not None
    assert (
        files["model.safetensors"].lfs.sha256
        == hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()
    )
    assert files["schedule.png"].lfs is not None
    assert files["config.json"].lfs is None
    assert info.card_data is not None and info.card_data.license == "apache-2.0"

    local = Path(snapshot_download(REPO))
    for path in src.iterdir():
        assert (local / path.name).read_bytes() == path.read_bytes(), path.name
    assert (local / ".gitattributes").exists()

    single = hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path / "other-cache")
    assert Path(single).read_bytes() == (src / "model.safetensors").read_bytes()

    record = hub.stats.commits[-1]
    assert record.commit_id == commit.oid and record.ref == "refs/heads/main"
    assert sorted(record.added) == sorted(p.name for p in src.iterdir())


def test_identical_content_sends_zero_lfs_bytes(client: HfApi, hub: LocalHub, tmp_path) -> None:
    src = model_folder(tmp_path / "src")
    client.create_repo(REPO)
    first = client.upload_folder(folder_path=src, repo_id=REPO)
    sent, puts = hub.stats.lfs_bytes_uploaded, hub.stats.count("PUT", LFS_PUT)

    # same files, same paths: preupload reports their oids, the client makes no commit at all
    again = client.upload_folder(folder_path=src, repo_id=REPO)
    assert again.oid == first.oid

    # same bytes under new paths: a real commit, but the LFS batch answer has no upload action
    moved = client.upload_folder(folder_path=src, repo_id=REPO, path_in_repo="copy")
    assert moved.oid != first.oid
    assert "copy/model.safetensors" in client.list_repo_files(REPO)
    assert hub.stats.lfs_bytes_uploaded == sent
    assert hub.stats.count("PUT", LFS_PUT) == puts


def test_readme_front_matter_is_validated_before_upload(client: HfApi) -> None:
    client.create_repo(REPO)
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        client.upload_file(
            path_or_fileobj=b"---\nlicense: [unclosed\n---\n# card\n",
            path_in_repo="README.md",
            repo_id=REPO,
        )
    assert client.list_repo_files(REPO) == [".gitattributes"]


def test_parent_commit_must_be_the_branch_head(client: HfApi) -> None:
    client.create_repo(REPO)
    head = client.model_info(REPO).sha
    assert head is not None
    client.upload_file(
        path_or_fileobj=b"one", path_in_repo="a.txt", repo_id=REPO, parent_commit=head
    )

    with pytest.raises(HfHubHTTPError) as exc:
        client.create_commit(
            REPO,
            operations=[CommitOperationAdd("b.txt", b"two")],
            commit_message="stale",
            parent_commit=head,  # no longer the head
        )
    assert exc.value.response.status_code == 412
    assert "b.txt" not in client.list_repo_files(REPO)


def test_create_pr_leaves_main_alone(client: HfApi, hub: LocalHub, tmp_path) -> None:
    client.create_repo(REPO)
    main_before = client.model_info(REPO).sha
    src = model_folder(tmp_path / "src")

    pr = client.upload_folder(
        folder_path=src, repo_id=REPO, create_pr=True, parent_commit=main_before
    )
    assert pr.pr_num == 1 and pr.pr_revision == "refs/pr/1"
    assert pr.pr_url == f"{hub.endpoint}/{REPO}/discussions/1"

    assert client.model_info(REPO).sha == main_before
    assert client.list_repo_files(REPO) == [".gitattributes"]
    on_pr = client.list_repo_files(REPO, revision="refs/pr/1")
    assert {"config.json", "model.safetensors", "README.md"} <= set(on_pr)
    weights = hf_hub_download(REPO, "model.safetensors", revision="refs/pr/1")
    assert Path(weights).read_bytes() == (src / "model.safetensors").read_bytes()

    refs = client.list_repo_refs(REPO, include_pull_requests=True)
    assert [b.name for b in refs.branches] == ["main"]
    assert refs.pull_requests is not None
    assert [(p.ref, p.target_commit) for p in refs.pull_requests] == [("refs/pr/1", pr.oid)]
    assert hub.stats.commits[-1].pr_num == 1

    # a second commit can go to the PR itself; then merging brings both into main
    client.upload_file(
        path_or_fileobj=b"more", path_in_repo="extra.txt", repo_id=REPO, revision="refs/pr/1"
    )
    client.merge_pull_request(REPO, 1)
    assert {"model.safetensors", "extra.txt"} <= set(client.list_repo_files(REPO))


def test_branch_holds_its_own_commits(client: HfApi) -> None:
    client.create_repo(REPO)
    first = client.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id=REPO).oid
    client.upload_file(path_or_fileobj=b"2", path_in_repo="b.txt", repo_id=REPO)

    client.create_branch(REPO, branch="from-first", revision=first)
    client.create_branch(REPO, branch="staging")  # from main's head
    with pytest.raises(HfHubHTTPError) as exc:
        client.create_branch(REPO, branch="staging")
    assert exc.value.response.status_code == 409
    client.create_branch(REPO, branch="staging", exist_ok=True)

    client.upload_file(path_or_fileobj=b"s", path_in_repo="s.txt", repo_id=REPO, revision="staging")
    refs = {b.name: b.target_commit for b in client.list_repo_refs(REPO).branches}
    assert set(refs) == {"main", "from-first", "staging"} and refs["from-first"] == first
    assert client.list_repo_files(REPO, revision="from-first") == [".gitattributes", "a.txt"]
    assert "s.txt" in client.list_repo_files(REPO, revision="staging")
    assert "s.txt" not in client.list_repo_files(REPO)
    with pytest.raises(RevisionNotFoundError):
        client.create_branch(REPO, branch="x", revision="no-such-revision")


def test_tree_paths_info_commits_and_deletes(client: HfApi) -> None:
    client.create_repo(REPO)
    client.create_commit(
        REPO,
        operations=[
            CommitOperationAdd("a/b/c.txt", b"c"),
            CommitOperationAdd("a/d.bin", b"\0" * 100),
            CommitOperationAdd("top.txt", b"top"),
        ],
        commit_message="files",
    )
    tree = {e.path: e for e in client.list_repo_tree(REPO, recursive=True)}
    assert set(tree) == {".gitattributes", "a", "a/b", "a/b/c.txt", "a/d.bin", "top.txt"}
    assert getattr(tree["a/d.bin"], "lfs", None) is not None
    assert [e.path for e in client.list_repo_tree(REPO, path_in_repo="a")] == ["a/b", "a/d.bin"]

    infos = client.get_paths_info(REPO, ["top.txt", "a", "missing.txt"])
    assert [i.path for i in infos] == ["top.txt", "a"]

    client.delete_file("top.txt", REPO)
    client.delete_folder("a/b", REPO, commit_message="drop a/b")
    assert client.list_repo_files(REPO) == [".gitattributes", "a/d.bin"]
    assert [c.title for c in client.list_repo_commits(REPO)][:2] == [
        "drop a/b",
        "Delete top.txt with huggingface_hub",
    ]
    with pytest.raises(EntryNotFoundError):
        client.delete_file("nope.txt", REPO)
    with pytest.raises(RevisionNotFoundError):
        client.list_repo_files(REPO, revision="no-such-branch")


def test_concurrent_commits_all_land_or_get_412(client: HfApi, hub: LocalHub) -> None:
    client.create_repo(REPO)

    def commit(i: int, parent: str | None) -> int:
        try:
            client.create_commit(
                REPO,
                operations=[CommitOperationAdd(f"f{i}.bin", os.urandom(2000))],
                commit_message=f"c{i}",
                parent_commit=parent,
            )
            return 200
        except HfHubHTTPError as exc:
            return exc.response.status_code

    with ThreadPoolExecutor(8) as pool:
        free = list(pool.map(lambda i: commit(i, None), range(8)))
        head = client.model_info(REPO).sha
        racing = list(pool.map(lambda i: commit(100 + i, head), range(8)))
    assert free == [200] * 8
    assert sorted(racing) == [200] + [412] * 7  # the same parent: exactly one wins
    assert len(client.list_repo_commits(REPO)) == 1 + 8 + 1
    assert len([f for f in client.list_repo_files(REPO) if f.endswith(".bin")]) == 9


def test_stop_without_waiting_stops_serving(tmp_path: Path) -> None:
    """The tests' teardown: `stop(wait=False)` returns at once and the port closes soon."""
    import socket
    import time

    hub = LocalHub(tmp_path / "data").start()
    socket.create_connection((hub.host, hub.port), timeout=2).close()
    hub.stop(wait=False)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection((hub.host, hub.port), timeout=0.5).close()
        except OSError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the local Hub still accepts connections 5 s after stop(wait=False)")
    hub.stop(wait=False)  # idempotent


def test_repos_survive_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    src = model_folder(tmp_path / "src")
    with LocalHub(data) as hub:
        point_client_at(monkeypatch, hub.endpoint, tmp_path / "hf-1")
        HfApi().create_repo(REPO)
        commit = HfApi().upload_folder(folder_path=src, repo_id=REPO, create_pr=False)
        HfApi().create_commit(
            REPO,
            operations=[CommitOperationAdd("pr.txt", b"pr")],
            commit_message="pr",
            create_pr=True,
        )

    with LocalHub(data) as hub:  # a new server, most likely on another port
        point_client_at(monkeypatch, hub.endpoint, tmp_path / "hf-2")
        api = HfApi()
        assert api.model_info(REPO).sha == commit.oid
        refs = api.list_repo_refs(REPO, include_pull_requests=True)
        assert [p.ref for p in refs.pull_requests or []] == ["refs/pr/1"]
        local = Path(snapshot_download(REPO))
        assert (local / "model.safetensors").read_bytes() == (
            src / "model.safetensors"
        ).read_bytes()

    app = create_app(data)  # and the app alone, over the same directory
    assert app.state.store.list_repos() == [REPO]


# ---------------------------------------------------------------------------------------------
# faults: what huggingface_hub does about them


@pytest.mark.parametrize("action", ["500", "429", "drop"])
def test_lfs_upload_is_retried_after_one_fault(
    client: HfApi, hub: LocalHub, backoff_sleeps: list[float], action: Any
) -> None:
    client.create_repo(REPO)
    weights = os.urandom(100_000)
    rule = hub.faults.add("PUT", LFS_PUT, action)

    client.upload_file(path_or_fileobj=weights, path_in_repo="model.safetensors", repo_id=REPO)

    assert rule.fired == 1
    statuses = [r.status for r in hub.stats.requests if r.method == "PUT"]
    assert statuses == [int(action) if action != "drop" else "dropped", 200]
    assert backoff_sleeps == [1]  # http_backoff: one retry after 1 s
    assert hub.stats.lfs_bytes_uploaded == len(weights)  # the faulted PUT never reached the store
    path = hf_hub_download(REPO, "model.safetensors")
    assert Path(path).read_bytes() == weights


def test_lfs_upload_gives_up_after_five_retries(
    client: HfApi, hub: LocalHub, backoff_sleeps: list[float]
) -> None:
    client.create_repo(REPO)
    hub.faults.add("PUT", LFS_PUT, "500", times=0)  # forever
    with pytest.raises(RuntimeError, match="Error while uploading 'model.safetensors'"):
        client.upload_file(
            path_or_fileobj=os.urandom(1000), path_in_repo="model.safetensors", repo_id=REPO
        )
    assert backoff_sleeps == [1, 2, 4, 8, 8]
    assert client.list_repo_files(REPO) == [".gitattributes"]


@pytest.mark.parametrize("path", ["/preupload/", r"/info/lfs/objects/batch$", r"/info/lfs/verify$"])
def test_upload_api_calls_are_retried(
    client: HfApi, hub: LocalHub, backoff_sleeps: list[float], path: str
) -> None:
    client.create_repo(REPO)
    hub.faults.add("POST", path, "drop")
    client.upload_file(path_or_fileobj=os.urandom(1000), path_in_repo="w.safetensors", repo_id=REPO)
    assert len(hub.faults.fired) == 1 and backoff_sleeps == [1]


def test_commit_is_not_retried(client: HfApi, hub: LocalHub, backoff_sleeps: list[float]) -> None:
    client.create_repo(REPO)
    head = client.model_info(REPO).sha

    hub.faults.add("POST", "/commit/", "500")
    with pytest.raises(HfHubHTTPError) as exc:
        client.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id=REPO)
    assert exc.value.response.status_code == 500

    hub.faults.add("POST", "/commit/", "drop")
    with pytest.raises(httpx2.RemoteProtocolError):  # raw httpx2 error, not HfHubHTTPError
        client.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id=REPO)
    assert client.model_info(REPO).sha == head and backoff_sleeps == []

    # the commit lands but its answer is lost
    hub.faults.add("POST", "/commit/", "drop_after")
    with pytest.raises(httpx2.RemoteProtocolError):
        client.create_commit(
            REPO,
            operations=[CommitOperationAdd("a.txt", b"1")],
            commit_message="c",
            parent_commit=head,
        )
    landed = client.model_info(REPO).sha
    assert landed != head and hub.stats.commits[-1].commit_id == landed
    # retrying the same content is a no-op: preupload reports a.txt already has that blob
    retry = client.create_commit(
        REPO, operations=[CommitOperationAdd("a.txt", b"1")], commit_message="c", parent_commit=head
    )
    assert retry.oid == landed and len(hub.stats.commits) == 1
    # other content on the stale parent is refused
    with pytest.raises(HfHubHTTPError) as exc:
        client.create_commit(
            REPO,
            operations=[CommitOperationAdd("a.txt", b"2")],
            commit_message="c",
            parent_commit=head,
        )
    assert exc.value.response.status_code == 412


def test_download_faults(client: HfApi, hub: LocalHub, tmp_path: Path) -> None:
    client.create_repo(REPO)
    client.upload_file(path_or_fileobj=b"hello", path_in_repo="a.txt", repo_id=REPO)

    hub.faults.add("HEAD", "/resolve/", "500")  # metadata call: retried once more at once
    assert Path(hf_hub_download(REPO, "a.txt", cache_dir=tmp_path / "c1")).read_bytes() == b"hello"

    hub.faults.add("GET", "/resolve/", "drop")  # body download: resumed after 1 s
    assert Path(hf_hub_download(REPO, "a.txt", cache_dir=tmp_path / "c2")).read_bytes() == b"hello"

    hub.faults.add("HEAD", "/resolve/", "drop")  # a dropped metadata call is not retried
    with pytest.raises(httpx2.RemoteProtocolError):
        hf_hub_download(REPO, "a.txt", cache_dir=tmp_path / "c3")


def test_faults_and_stats_over_http_need_the_token(tmp_path: Path, monkeypatch) -> None:
    with LocalHub(tmp_path / "data", token=TOKEN) as hub:
        point_client_at(monkeypatch, hub.endpoint, tmp_path / "hf")
        client = HfApi()
        client.create_repo(REPO)
        test_api = httpx2.Client(
            base_url=f"{hub.endpoint}/_publisher", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        rule = {"method": "GET", "path": "/api/models/", "action": "500", "times": 1}
        for anonymous in (
            httpx2.post(f"{hub.endpoint}/_publisher/faults", json=rule),
            httpx2.get(f"{hub.endpoint}/_publisher/faults"),
            httpx2.get(f"{hub.endpoint}/_publisher/stats"),
        ):
            assert anonymous.status_code == 401
        assert not hub.faults.rules

        assert test_api.post("/faults", json=rule).status_code == 200
        with pytest.raises(HfHubHTTPError) as exc:
            client.model_info(REPO)
        assert exc.value.response.status_code == 500
        assert client.model_info(REPO).sha

        stats = test_api.get("/stats").json()
        assert {"lfs_bytes_uploaded", "commits", "requests"} <= set(stats)
        assert test_api.get("/faults").json()["fired"][0]["action"] == "500"
        assert test_api.post("/faults", json={"action": "boom"}).status_code == 400


def test_test_api_is_off_unless_asked(tmp_path: Path) -> None:
    with LocalHub(tmp_path / "d", test_api=False) as hub:
        response = httpx2.post(f"{hub.endpoint}/_publisher/faults", json={"action": "500"})
        assert response.status_code in (404, 405)


# ---------------------------------------------------------------------------------------------
# protocol details huggingface_hub relies on


def test_lfs_endpoints_reject_bad_uploads_and_never_offer_xet(hub: LocalHub, client: HfApi) -> None:
    client.create_repo(REPO)
    data = b"weights" * 100
    oid = hashlib.sha256(data).hexdigest()
    batch = httpx2.post(
        f"{hub.endpoint}/{REPO}.git/info/lfs/objects/batch",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={
            "operation": "upload",
            "transfers": ["basic", "multipart", "xet"],
            "objects": [{"oid": oid, "size": len(data)}],
            "hash_algo": "sha256",
        },
    ).json()
    assert batch["transfer"] == "basic"
    upload = batch["objects"][0]["actions"]["upload"]
    assert "chunk_size" not in (upload.get("header") or {})  # single PUT, no multipart

    wrong = httpx2.put(upload["href"], content=b"not the weights")
    assert wrong.status_code == 400
    assert not hub.data_dir.joinpath("blobs", oid[:2], oid).exists()
    assert httpx2.put(upload["href"], content=data).status_code == 200
    verify = batch["objects"][0]["actions"]["verify"]["href"]
    ok = httpx2.post(
        verify, json={"oid": oid, "size": len(data)}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert ok.status_code == 200


def test_resolve_headers(hub: LocalHub, client: HfApi) -> None:
    client.create_repo(REPO)
    commit = client.create_commit(
        REPO,
        operations=[
            CommitOperationAdd("w.safetensors", b"\1" * 64),
            CommitOperationAdd("dir/r.txt", b"regular"),
        ],
        commit_message="two files",
    )
    lfs = httpx2.head(f"{hub.endpoint}/{REPO}/resolve/main/w.safetensors")
    assert lfs.headers["X-Repo-Commit"] == commit.oid
    assert lfs.headers["X-Linked-Etag"].strip('"') == hashlib.sha256(b"\1" * 64).hexdigest()
    assert lfs.headers["X-Linked-Size"] == "64" and lfs.headers["Content-Length"] == "64"

    regular = httpx2.get(f"{hub.endpoint}/{REPO}/resolve/{commit.oid}/dir/r.txt")
    assert regular.content == b"regular"
    assert regular.headers["ETag"].strip('"') == hashlib.sha1(b"blob 7\0regular").hexdigest()

    ranged = httpx2.get(
        f"{hub.endpoint}/{REPO}/resolve/main/dir/r.txt", headers={"Range": "bytes=2-"}
    )
    assert ranged.status_code == 206 and ranged.content == b"gular"

    missing = httpx2.head(f"{hub.endpoint}/{REPO}/resolve/main/nope.txt")
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "EntryNotFound"
    assert missing.headers["X-Repo-Commit"] == commit.oid


def test_uploaded_html_and_svg_download_as_attachments(hub: LocalHub, client: HfApi) -> None:
    client.create_repo(REPO)
    files = {
        "page.html": b"<script>alert(1)</script>",
        "logo.svg": b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>',
        "notes.txt": b"<script>alert(1)</script>",
        "schedule.png": b"\x89PNG\r\n\x1a\n",
    }
    client.create_commit(
        REPO,
        operations=[CommitOperationAdd(name, data) for name, data in files.items()],
        commit_message="files",
    )
    for name, data in files.items():
        got = httpx2.get(f"{hub.endpoint}/{REPO}/resolve/main/{name}")
        disposition = got.headers["Content-Disposition"].split(";")[0]
        active = name.endswith((".html", ".svg"))
        assert disposition == ("attachment" if active else "inline"), name
        assert got.headers["X-Content-Type-Options"] == "nosniff" and got.content == data
    assert Path(hf_hub_download(REPO, "page.html")).read_bytes() == files["page.html"]


# ---------------------------------------------------------------------------------------------
# hardening: every malformed request is a 4xx, bodies are bounded, leftovers are cleaned


def test_malformed_requests_get_a_4xx(hub: LocalHub, client: HfApi) -> None:
    client.create_repo(REPO)
    api = f"/api/models/{REPO}"
    commit = f"{api}/commit/main"

    def ndjson(*lines: Any) -> bytes:
        return b"\n".join(json.dumps(line).encode() for line in lines)

    header = {"key": "header", "value": {"summary": "x"}}
    job = b'{"dockerImage": "python:3.12", "command": ["true"]'
    cases: list[tuple[str, str, bytes]] = [
        ("POST", "/api/repos/create", b"{not json"),
        ("POST", "/api/repos/create", b"\x80 not utf-8"),
        ("POST", "/api/repos/create", b"[]"),
        ("POST", "/api/repos/create", b'{"name": 5}'),
        ("POST", "/api/repos/create", b'{"name": "a\\u0000b"}'),
        ("DELETE", "/api/repos/delete", b"{not json"),
        ("POST", "/api/validate-yaml", b'{"content": 5}'),
        ("POST", f"{api}/preupload/main", b'{"files": [{}]}'),
        ("POST", f"{api}/preupload/main", b'{"files": [{"path": "a", "size": "big"}]}'),
        ("POST", f"{api}/preupload/main", b'{"files": [{"path": "a", "sample": "!!"}]}'),
        ("POST", commit, b"not ndjson"),
        ("POST", commit, ndjson({"key": "header", "value": "not an object"})),
        ("POST", commit, ndjson(header, {"key": "file", "value": {"content": "aGk="}})),
        ("POST", commit, ndjson(header, {"key": "file", "value": {"path": "a", "content": "!"}})),
        ("POST", commit, ndjson(header, {"key": "lfsFile", "value": {"path": "a.bin"}})),
        ("POST", commit, ndjson({"key": "header", "value": {"parentCommit": 5}})),
        ("POST", f"{api}/branch/dev", b'{"startingPoint": 5}'),
        ("POST", f"/{REPO}.git/info/lfs/objects/batch", b'{"operation": "upload", "objects": 1}'),
        ("POST", f"{api}/discussions/1/merge", b"{not json"),
        ("POST", f"/api/jobs/{DEFAULT_USER}", b"{not json"),
        ("POST", f"/api/jobs/{DEFAULT_USER}", b"[]"),
        ("POST", f"/api/jobs/{DEFAULT_USER}", job + b', "volumes": [5]}'),
        ("POST", f"/api/jobs/{DEFAULT_USER}", job + b', "environment": 5}'),
        ("POST", f"/api/jobs/{DEFAULT_USER}", job + b', "secrets": [1]}'),
        ("POST", "/_publisher/faults", b'{"action": "500", "path": "("}'),
        ("POST", "/_publisher/faults", b'{"action": "500", "method": 5}'),
    ]
    # a NUL, a line break, DEL, bytes that are not UTF-8 or not ASCII, in a repo id or a path
    for bad in ("a%00b", "a%0D%0Ab", "a%7Fb", "a%FFb", "%E2%98%83"):
        cases += [
            ("GET", f"/api/models/{bad}/model", b""),
            ("GET", f"/api/models/{REPO}/revision/{bad}", b""),
            ("GET", f"/api/models/{REPO}/tree/main/{bad}", b""),
            ("HEAD", f"/{bad}/model/resolve/main/config.json", b""),
            ("GET", f"/{REPO}/resolve/main/{bad}", b""),
            ("POST", f"{api}/branch/{bad}", b"{}"),
        ]
    with httpx2.Client(base_url=hub.endpoint, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        statuses = {
            (method, path, body[:40]): http.request(method, path, content=body).status_code
            for method, path, body in cases
        }
    assert {case: s for case, s in statuses.items() if not 400 <= s < 500} == {}
    assert client.list_repo_files(REPO) == [".gitattributes"]


def _raw_request(endpoint: str, head: str, body: bytes, *, chunked: bool = False) -> int:
    """Send `head` and then `body` (as one chunk of a chunked body if `chunked`), never the
    rest a Content-Length announces; return the status the server answered."""
    host, port = endpoint.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            head.encode() + (b"Transfer-Encoding: chunked\r\n" if chunked else b"") + b"\r\n"
        )
        with contextlib.suppress(OSError):  # the server may close before it read everything
            sock.sendall(b"%x\r\n%s\r\n" % (len(body), body) if chunked else body)
        status_line = sock.makefile("rb").readline()
    return int(status_line.split()[1])


def test_request_bodies_are_bounded_before_they_are_read(hub: LocalHub, client: HfApi) -> None:
    client.create_repo(REPO)
    half_gb = 512 * 1024 * 1024
    for path in ("/api/repos/create", f"/api/models/{REPO}/commit/main", "/api/validate-yaml"):
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {half_gb}\r\n"
        assert _raw_request(hub.endpoint, head, b"{" * 65536) == 413, path
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\n"
    assert _raw_request(hub.endpoint, head, b" " * (17 * 1024 * 1024), chunked=True) == 413
    # an LFS object PUT carries no token: only an upload the batch call offered, at its size
    oid = hashlib.sha256(b"weights").hexdigest()
    put = f"PUT /{REPO}.git/info/lfs/objects/{oid} HTTP/1.1\r\nHost: x\r\n"
    assert _raw_request(hub.endpoint, put + f"Content-Length: {half_gb}\r\n", b"w" * 65536) == 400
    offered = httpx2.post(
        f"{hub.endpoint}/{REPO}.git/info/lfs/objects/batch",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={"operation": "upload", "objects": [{"oid": oid, "size": 7}]},
    )
    assert offered.json()["objects"][0]["actions"]["upload"]["href"].endswith(oid)
    assert _raw_request(hub.endpoint, put + f"Content-Length: {half_gb}\r\n", b"w" * 65536) == 400
    assert _raw_request(hub.endpoint, put, b"w" * 65536, chunked=True) == 413
    assert _raw_request(hub.endpoint, put + "Content-Length: 7\r\n", b"weights") == 200
    assert hub.stats.lfs_bytes_uploaded == 7 and not list((hub.data_dir / "tmp").iterdir())


def test_partial_uploads_are_cleaned_at_start(tmp_path: Path) -> None:
    store = create_app(tmp_path).state.store
    store.create_repo(REPO)
    partial = tmp_path / "tmp" / "upload-killed"
    partial.write_bytes(b"half an upload")
    half_json = tmp_path / "repos" / REPO / "commits" / ".tmp-killed.json"
    half_json.write_text("{")
    assert create_app(tmp_path).state.store.list_repos() == [REPO]
    assert not partial.exists() and not half_json.exists()


def test_parent_commit_is_compared_in_full(hub: LocalHub, client: HfApi) -> None:
    client.create_repo(REPO)
    head = client.model_info(REPO).sha or ""
    client.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id=REPO)
    new_head = client.model_info(REPO).sha or ""
    # the client's own shorthand (5 to 40 hex digits) names a commit: a stale one is refused
    with pytest.raises(HfHubHTTPError) as exc:
        client.upload_file(
            path_or_fileobj=b"2", path_in_repo="b.txt", repo_id=REPO, parent_commit=head[:7]
        )
    assert exc.value.response.status_code == 412
    client.upload_file(
        path_or_fileobj=b"2", path_in_repo="b.txt", repo_id=REPO, parent_commit=new_head[:7]
    )
    stale = client.model_info(REPO).sha or ""
    client.upload_file(path_or_fileobj=b"3", path_in_repo="c.txt", repo_id=REPO)
    # what the client never sends must not skip the check: an empty or a 1-digit parent
    for parent in ("", stale[:1], stale[:4]):
        line = {"key": "header", "value": {"summary": "x", "parentCommit": parent}}
        answer = httpx2.post(
            f"{hub.endpoint}/api/models/{REPO}/commit/main",
            content=json.dumps(line).encode(),
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert answer.status_code == 400, parent
    assert len(client.list_repo_commits(REPO)) == 4


def test_hub_client_env_restores_everything(tmp_path: Path) -> None:
    before = (
        constants.ENDPOINT,
        constants.HUGGINGFACE_CO_URL_TEMPLATE,
        constants.HF_HUB_DISABLE_XET,
    )
    env_before = os.environ.get("HF_ENDPOINT")
    with hub_client_env("http://127.0.0.1:1", token="t", hf_home=tmp_path) as env:
        assert constants.ENDPOINT == "http://127.0.0.1:1" == os.environ["HF_ENDPOINT"]
        assert constants.HF_HUB_DISABLE_XET is True and env["HF_HUB_DISABLE_XET"] == "1"
        assert str(tmp_path / "hub") == constants.HF_HUB_CACHE
    after = (
        constants.ENDPOINT,
        constants.HUGGINGFACE_CO_URL_TEMPLATE,
        constants.HF_HUB_DISABLE_XET,
    )
    assert after == before and os.environ.get("HF_ENDPOINT") == env_before


def test_hub_serve_without_the_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from publisher import cli

    for name in [m for m in sys.modules if m.startswith("publisher.hubserver")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if the extra were not installed
    assert cli.main(["hub", "serve", "--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "pip install 'publisher[hub]'" in err and "fastapi is not installed" in err
    assert "unexpected" not in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# the model page


def test_model_page_renders_card_and_metadata(client: HfApi, hub: LocalHub, tmp_path) -> None:
    src = model_folder(tmp_path / "src")
    client.create_repo(REPO)
    client.upload_folder(folder_path=src, repo_id=REPO)

    page = httpx2.get(f"{hub.endpoint}/{REPO}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<table>" in html and "<td>0.875</td>" in html  # the card's markdown table
    image = f"/{REPO}/resolve/main/schedule.png"
    assert f'<img src="{image}" alt="t per layer"' in html
    assert "&lt;script&gt;" in html and '<script>alert("card")' not in html  # raw HTML escaped
    assert 'href="/parent/base-model"' in html and "apache-2.0" in html  # parents, license
    assert "AI2 Reasoning Challenge (25-Shot)" in html and "0.6143" in html  # eval results
    assert '<span class="tag">slerp</span>' in html

    png = httpx2.get(hub.endpoint + image)
    assert png.headers["content-type"] == "image/png"
    assert png.content == (src / "schedule.png").read_bytes()

    # a pull request's card, its images resolved at the PR's revision
    pr = client.upload_file(
        path_or_fileobj=b"# PR card\n\n![new](img/new.png)\n",
        path_in_repo="README.md",
        repo_id=REPO,
        create_pr=True,
    )
    pr_page = httpx2.get(f"{hub.endpoint}/{REPO}", params={"revision": "refs/pr/1"}).text
    assert "PR card" in pr_page and f'src="/{REPO}/resolve/refs%2Fpr%2F1/img/new.png"' in pr_page
    assert "Open pull requests" in httpx2.get(f"{hub.endpoint}/{REPO}").text

    assert f'href="/{REPO}"' in httpx2.get(hub.endpoint + "/").text
    # the URLs a commit answer carries open the page at that revision
    for url, revision in ((pr.commit_url, pr.oid), (pr.pr_url, "refs/pr/1")):
        opened = httpx2.get(str(url), follow_redirects=True)
        assert opened.status_code == 200 and f"revision <code>{revision}</code>" in opened.text
    assert httpx2.get(f"{hub.endpoint}/{REPO}", params={"revision": "nope"}).status_code == 404
    assert httpx2.get(f"{hub.endpoint}/nobody/nothing").status_code == 404


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium here (not a project dependency)")
def test_model_page_screenshot_shows_card_and_image(client: HfApi, hub: LocalHub, tmp_path) -> None:
    from PIL import Image

    src = model_folder(tmp_path / "src")
    Image.new("RGB", (400, 200), (255, 0, 0)).save(src / "schedule.png")
    client.create_repo(REPO)
    client.upload_folder(folder_path=src, repo_id=REPO)

    shot = tmp_path / "page.png"
    subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,2000",
            f"--screenshot={shot}",
            f"{hub.endpoint}/{REPO}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    page = Image.open(shot).convert("RGB")
    assert page.size == (1280, 2000)
    counts = {color: n for n, color in page.getcolors(maxcolors=1 << 22) or []}
    # The schedule image was fetched through resolve and drawn at its own size.
    assert counts.get((255, 0, 0), 0) >= 400 * 200 * 0.95
    # Text and tables were drawn too: anti-aliased glyphs give many shades.
    assert len(counts) > 50


def test_no_function_in_the_local_hub_is_over_80_lines() -> None:
    import ast

    import publisher.hubserver

    root = Path(publisher.hubserver.__file__).parent
    long = []
    for source in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 80:
                    long.append(f"{source.relative_to(root)}:{node.lineno} {node.name} ({length})")
    assert not long, long
