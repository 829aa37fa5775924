"""Publishing with the real huggingface_hub client against the local Hub-compatible server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from conftest import LOCAL_HUB_TOKEN as TOKEN
from conftest import quiet
from huggingface_hub import HfApi, snapshot_download

from publisher import hubretry
from publisher.cli import main
from publisher.hub import HubError, push_run, run_files
from publisher.parents import ParentError

REPO = "tester/tiny-run"


def test_push_then_download_is_byte_identical(tiny_run, local_hub, tmp_path):
    _, run_dir, _ = tiny_run
    result = push_run(run_dir, REPO, log=quiet)
    assert result.changed and result.commit_sha
    assert HfApi().model_info(REPO).sha == result.commit_sha
    local = Path(snapshot_download(REPO, revision=result.commit_sha, cache_dir=tmp_path / "dl"))
    expected = run_files(run_dir)
    assert (
        "model.safetensors" in expected and "README.md" in expected and "schedule.png" in expected
    )
    assert "publisher/eval_results.json" in expected and "publisher/recipe.yaml" in expected
    got = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert got - {".gitattributes"} == set(expected)  # the Hub creates .gitattributes
    for name, path in expected.items():
        assert (local / name).read_bytes() == path.read_bytes(), name
    commits = HfApi().list_repo_commits(REPO)
    assert len(commits) == 2  # the repo's initial commit and exactly one commit of the run
    recipe_sha = json.loads((run_dir / "manifest.json").read_text())["recipe_sha256"]
    assert commits[0].title == f"publisher: tiny-run.yaml (recipe sha256 {recipe_sha[:12]})"


def test_second_push_makes_no_commit_and_sends_no_weights(tiny_run, local_hub):
    _, run_dir, _ = tiny_run
    first = push_run(run_dir, REPO, log=quiet)
    local_hub.stats.reset()
    second = push_run(run_dir, REPO, log=quiet)
    assert not second.changed and second.commit_sha == first.commit_sha
    assert local_hub.stats.lfs_bytes_uploaded == 0
    assert local_hub.stats.commits == []
    assert HfApi().model_info(REPO).sha == first.commit_sha


def test_create_pr_leaves_main_untouched(tiny_run, local_hub):
    _, run_dir, _ = tiny_run
    api = HfApi()
    api.create_repo(REPO)
    main_before = api.model_info(REPO).sha
    result = push_run(run_dir, REPO, create_pr=True, log=quiet)
    assert result.pr_url and result.pr_url.endswith("/discussions/1")
    assert api.model_info(REPO).sha == main_before
    assert "model.safetensors" not in api.list_repo_files(REPO)
    pr_files = api.list_repo_files(REPO, revision="refs/pr/1")
    assert "model.safetensors" in pr_files and "README.md" in pr_files
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert [r.ref for r in refs.pull_requests] == ["refs/pr/1"]

    # Proposing the same run again finds the open pull request instead of opening another.
    local_hub.stats.reset()
    again = push_run(run_dir, REPO, create_pr=True, log=quiet)
    assert not again.changed and again.pr_url == result.pr_url
    assert again.commit_sha == result.commit_sha
    assert local_hub.stats.commits == [] and local_hub.stats.lfs_bytes_uploaded == 0


def test_push_to_a_branch_leaves_main_untouched(tiny_run, local_hub):
    _, run_dir, _ = tiny_run
    api = HfApi()
    api.create_repo(REPO)
    main_before = api.model_info(REPO).sha
    api.create_branch(REPO, branch="staging")  # `publisher push --revision` commits to a branch
    result = push_run(run_dir, REPO, revision="staging", log=quiet)
    assert api.model_info(REPO, revision="staging").sha == result.commit_sha
    assert api.model_info(REPO).sha == main_before
    assert "model.safetensors" in api.list_repo_files(REPO, revision="staging")
    assert "model.safetensors" not in api.list_repo_files(REPO)


def test_pull_request_whose_answer_is_lost_is_opened_once(tiny_run, local_hub):
    _, run_dir, _ = tiny_run
    api = HfApi()
    api.create_repo(REPO)
    # The server opens the PR, then the connection drops: a blind retry would open a second.
    rule = local_hub.faults.add("POST", r"/commit/", "drop_after", times=1)
    result = push_run(run_dir, REPO, create_pr=True, log=quiet)
    assert rule.fired == 1
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert [r.ref for r in refs.pull_requests] == ["refs/pr/1"]
    assert result.pr_url and result.pr_url.endswith("/discussions/1")
    assert "model.safetensors" in api.list_repo_files(REPO, revision="refs/pr/1")


@pytest.mark.parametrize("fault", ["500", "429", "drop"])
def test_transient_upload_failures_are_retried(tiny_run, local_hub, fault):
    _, run_dir, _ = tiny_run
    rule = local_hub.faults.add("PUT", r"/info/lfs/objects/", fault, times=1)
    messages: list[str] = []
    result = push_run(run_dir, REPO, log=messages.append)
    assert rule.fired == 1
    assert result.changed
    local = HfApi().hf_hub_download(REPO, "model.safetensors")
    assert Path(local).read_bytes() == (run_dir / "merged" / "model.safetensors").read_bytes()


def test_failed_commit_leaves_the_repo_as_it_was(tiny_run, local_hub):
    _, run_dir, _ = tiny_run
    api = HfApi()
    api.create_repo(REPO)
    before = api.model_info(REPO).sha
    local_hub.faults.add("POST", r"/commit/", "500", times=100)
    with pytest.raises(HubError) as err:
        push_run(run_dir, REPO, log=quiet)
    assert "left as it was" in str(err.value) or "unchanged" in str(err.value)
    local_hub.faults.clear()
    assert api.model_info(REPO).sha == before
    assert "model.safetensors" not in api.list_repo_files(REPO)


def test_concurrent_commit_between_read_and_write_is_detected(tiny_run, local_hub):
    _, run_dir, _ = tiny_run
    api = HfApi()
    api.create_repo(REPO)

    def race(message: str) -> None:
        # Runs after push_run read the repo's head and before it commits: someone else commits.
        if message.strip().startswith("pushing"):
            api.upload_file(
                path_or_fileobj=b"someone else's change\n", path_in_repo="NOTES.md", repo_id=REPO
            )

    with pytest.raises(HubError) as err:
        push_run(run_dir, REPO, log=race)
    assert "changed while pushing" in str(err.value)
    files = api.list_repo_files(REPO)
    assert "NOTES.md" in files and "model.safetensors" not in files


def test_sentinel_token_appears_nowhere(tiny_run, local_hub, copy_run, capsys, monkeypatch):
    recipe, original, _ = tiny_run
    run_dir = copy_run(original)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    summary = run_dir.parent / "summary.md"
    outputs = run_dir.parent / "outputs.txt"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_OUTPUT", str(outputs))
    assert main(["run", str(recipe), "--out", str(run_dir), "--push"]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    # The only place the token may appear is the runner's mask command, which hides it.
    leftover = text.replace(f"::add-mask::{TOKEN}", "").replace(f"::add-mask ::{TOKEN}", "")
    assert TOKEN not in leftover
    assert "published:" in text
    for path in [*run_dir.rglob("*"), summary, outputs]:
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert "repo_url" in outputs.read_text()
    for name in HfApi().list_repo_files(REPO):
        assert TOKEN.encode() not in Path(HfApi().hf_hub_download(REPO, name)).read_bytes()


def test_card_with_broken_metadata_is_refused_before_any_upload(tiny_run, local_hub, copy_run):
    _, original, _ = tiny_run
    run_dir = copy_run(original)
    card = (run_dir / "README.md").read_text()
    (run_dir / "README.md").write_text(
        card.replace("license: apache-2.0", "license: [not, valid]", 1)
    )
    local_hub.stats.reset()
    with pytest.raises(HubError) as err:
        push_run(run_dir, REPO, log=quiet)
    assert "nothing was uploaded" in str(err.value)
    assert len(local_hub.stats.requests) == 0
    assert not HfApi().repo_exists(REPO)


def test_unverified_run_is_refused(tiny_run, local_hub, copy_run):
    _, original, _ = tiny_run
    run_dir = copy_run(original)
    report = json.loads((run_dir / "verify.json").read_text())
    report["passed"] = False
    (run_dir / "verify.json").write_text(json.dumps(report))
    with pytest.raises(HubError, match="did not pass"):
        push_run(run_dir, REPO, log=quiet)
    assert not HfApi().repo_exists(REPO)


def _flip_last_byte(data: bytes) -> bytes:
    return data[:-2] + bytes([data[-2] ^ 0xFF]) + data[-1:]


def _edit_notes(data: bytes) -> bytes:
    return data.replace(b"_Text you write", b"_Text I wrote", 1)


@pytest.mark.parametrize(
    ("changed", "edit"), [("README.md", _edit_notes), ("merged/model.safetensors", _flip_last_byte)]
)
def test_files_changed_after_verify_are_refused(tiny_run, local_hub, copy_run, changed, edit):
    _, original, _ = tiny_run
    run_dir = copy_run(original)
    target = run_dir / changed
    before = target.read_bytes()
    target.write_bytes(edit(before))  # after verify passed
    assert target.read_bytes() != before
    with pytest.raises(HubError, match=f"changed after verify passed \\({changed}\\)"):
        push_run(run_dir, REPO, log=quiet)
    assert not HfApi().repo_exists(REPO)


def test_model_page_shows_the_card(tiny_run, local_hub):
    _, run_dir, _ = tiny_run
    push_run(run_dir, REPO, log=quiet)
    page = requests.get(f"{local_hub.endpoint}/{REPO}", timeout=30)
    assert page.status_code == 200
    html = page.text
    plan = json.loads((run_dir / "plan.json").read_text())
    assert "<table" in html
    assert f"{plan['layers'][1]['groups']['self_attn']:.3f}" in html
    assert "schedule.png" in html and "<img" in html
    acc = json.loads((run_dir / "eval" / "results.json").read_text())["results"][
        "publisher_tiny_qa"
    ]["acc,none"]
    assert str(acc) in html
    image = requests.get(f"{local_hub.endpoint}/{REPO}/resolve/main/schedule.png", timeout=30)
    assert image.content == (run_dir / "schedule.png").read_bytes()


def test_push_command_reports_urls(tiny_run, local_hub, capsys):
    _, run_dir, _ = tiny_run
    assert main(["push", str(run_dir), "--repo-id", REPO]) == 0
    out = capsys.readouterr().out
    assert f"{local_hub.endpoint}/{REPO}" in out


def test_parents_are_downloaded_at_their_locked_commit(tiny_parents, local_hub, tmp_path):
    from publisher.hub import fetch_parents
    from publisher.parents import lock_parents, resolve_parents, write_lock
    from publisher.recipe import load_recipe

    api = HfApi()
    ids = []
    for path in tiny_parents:
        repo = f"tester/{path.name}"
        api.create_repo(repo)
        api.upload_folder(folder_path=str(path), repo_id=repo)
        ids.append(repo)
    first_sha = api.model_info(ids[0]).sha
    recipe_path = tmp_path / "hub-recipe.yaml"
    recipe_path.write_text(f"""\
models:
  - model: {ids[0]}
  - model: {ids[1]}
merge_method: slerp
base_model: {ids[0]}
parameters:
  t: 0.5
""")
    recipe = load_recipe(recipe_path)
    write_lock(recipe, lock_parents(recipe, online=True))
    lock = json.loads(recipe.lock_path.read_text())
    assert lock["parents"][ids[0]]["revision"] == first_sha
    # A later commit to the parent does not change what the run uses.
    api.upload_file(path_or_fileobj=b"later\n", path_in_repo="LATER.md", repo_id=ids[0])
    parents = resolve_parents(recipe)
    dirs = fetch_parents(recipe, parents, log=quiet)
    assert not (dirs[ids[0]] / "LATER.md").exists()
    assert (dirs[ids[0]] / "model.safetensors").read_bytes() == (
        tiny_parents[0] / "model.safetensors"
    ).read_bytes()
    assert not list(dirs[ids[0]].glob("*.md"))  # only config, tokenizer and weights


def test_pickle_only_parent_is_refused(tiny_parents, local_hub, tmp_path):
    from publisher.hub import fetch_parents
    from publisher.parents import lock_parents, write_lock
    from publisher.recipe import load_recipe

    api = HfApi()
    repo = "tester/pickled"
    api.create_repo(repo)
    api.upload_file(
        path_or_fileobj=str(tiny_parents[0] / "config.json"),
        path_in_repo="config.json",
        repo_id=repo,
    )
    api.upload_file(
        path_or_fileobj=b"not really a pickle", path_in_repo="pytorch_model.bin", repo_id=repo
    )
    recipe_path = tmp_path / "pickled.yaml"
    recipe_path.write_text(f"""\
models:
  - model: {repo}
  - model: {tiny_parents[1]}
merge_method: slerp
base_model: {repo}
parameters:
  t: 0.5
""")
    recipe = load_recipe(recipe_path)
    parents = lock_parents(recipe, online=True)
    write_lock(recipe, parents)
    with pytest.raises(ParentError, match="allow_pickle"):
        fetch_parents(recipe, parents, log=quiet)


def test_commit_whose_answer_is_lost_is_not_reported_as_a_conflict(tiny_run, local_hub):
    _, run_dir, _ = tiny_run
    api = HfApi()
    api.create_repo(REPO)
    # The commit lands on the server, then the connection drops before the client hears back;
    # the retry meets a moved head, finds the run already there, and reports success.
    rule = local_hub.faults.add("POST", r"/commit/", "drop_after", times=1)
    result = push_run(run_dir, REPO, log=quiet)
    assert rule.fired == 1
    assert result.changed
    assert len(local_hub.stats.commits) == 1
    assert api.model_info(REPO).sha == result.commit_sha
    assert "model.safetensors" in api.list_repo_files(REPO)


def test_dropped_commit_is_retried(tiny_run, local_hub):
    _, run_dir, _ = tiny_run
    rule = local_hub.faults.add("POST", r"/commit/", "drop", times=1)
    result = push_run(run_dir, REPO, log=quiet)
    assert rule.fired == 1 and result.changed
    assert "README.md" in HfApi().list_repo_files(REPO)


MISTRAL_REPO_FILES = [
    ".gitattributes",
    "README.md",
    "config.json",
    "generation_config.json",
    "consolidated.safetensors",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "model.safetensors.index.json",
    "pytorch_model-00001-of-00002.bin",
    "pytorch_model-00002-of-00002.bin",
    "pytorch_model.bin.index.json",
    "params.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "original/model.safetensors",
    "onnx/config.json",
]


def test_parent_download_is_one_copy_of_weights_and_the_tokenizer():
    from publisher.parents import parent_files

    indexes: list[str] = []

    def read_index(name: str) -> dict:
        indexes.append(name)
        shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
        return {"weight_map": {"a": shards[0], "b": shards[1], "c": shards[1]}}

    wanted, pickled = parent_files("org/model", MISTRAL_REPO_FILES, read_index)
    assert not pickled and indexes == ["model.safetensors.index.json"]
    assert sorted(wanted) == sorted(
        [
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "tokenizer.model",
            "special_tokens_map.json",
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ]
    )
    # Without an index: the root safetensors, never Mistral's consolidated duplicate.
    plain = [f for f in MISTRAL_REPO_FILES if "index" not in f and "model-0" not in f]
    wanted, pickled = parent_files("org/model", plain + ["model.safetensors"], read_index)
    assert not pickled
    assert [f for f in wanted if f.endswith(".safetensors")] == ["model.safetensors"]
    # Pickles only: reported as such, so the caller can refuse them.
    pickles = ["config.json", "tokenizer.json", "pytorch_model.bin"]
    assert parent_files("org/model", pickles, read_index) == (pickles, True)


def test_parent_needing_remote_code_is_refused(write_recipe):
    from publisher.hub import fetch_parents
    from publisher.parents import ParentInfo
    from publisher.recipe import load_recipe

    recipe = load_recipe(
        write_recipe("""\
            models:
              - model: org/custom-arch
              - model: {other}
            merge_method: slerp
            base_model: org/custom-arch
            parameters:
              t: 0.5
            """)
    )
    custom = ParentInfo(
        ref="org/custom-arch",
        source="hub",
        revision="0" * 40,
        resolved=True,
        config={"auto_map": {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}},
        is_base=True,
    )
    # Refused from the lock's config alone: nothing is listed or downloaded first.
    with pytest.raises(ParentError, match="trust_remote_code"):
        fetch_parents(recipe, [custom], log=quiet)


def _pushed_recipe(tiny_run, copy_run, tmp_path, publish: str) -> tuple[Path, Path]:
    recipe, original, _ = tiny_run
    pushing = tmp_path / "tiny-run.yaml"
    pushing.write_text(recipe.read_text().replace("publish:\n", "publish:\n" + publish, 1))
    return pushing, copy_run(original)


def test_no_push_and_chosen_stages_override_the_recipes_push(
    tiny_run, local_hub, copy_run, tmp_path
):
    recipe, run_dir = _pushed_recipe(tiny_run, copy_run, tmp_path, "  push: true\n")
    assert main(["run", str(recipe), "--out", str(run_dir), "--no-push"]) == 0
    assert main(["run", str(recipe), "--out", str(run_dir), "--stages", "card,verify"]) == 0
    assert "push" not in json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert not HfApi().repo_exists(REPO)
    assert main(["run", str(recipe), "--out", str(run_dir)]) == 0  # the recipe's push: true
    assert "model.safetensors" in HfApi().list_repo_files(REPO)


def test_no_create_pr_overrides_the_recipes_create_pr(tiny_run, local_hub, copy_run, tmp_path):
    recipe, run_dir = _pushed_recipe(tiny_run, copy_run, tmp_path, "  create_pr: true\n")
    assert main(["run", str(recipe), "--out", str(run_dir), "--push", "--no-create-pr"]) == 0
    api = HfApi()
    assert "model.safetensors" in api.list_repo_files(REPO)  # on main
    assert api.list_repo_refs(REPO, include_pull_requests=True).pull_requests == []


def test_push_command_follows_the_settings_the_run_recorded(
    tiny_run, local_hub, copy_run, tmp_path
):
    recipe, run_dir = _pushed_recipe(tiny_run, copy_run, tmp_path, "  create_pr: true\n")
    assert main(["run", str(recipe), "--out", str(run_dir), "--no-push"]) == 0
    # The run directory's recipe copy is not what decides: the manifest's settings are.
    (run_dir / "recipe.yaml").write_text("not: a recipe\n")
    assert main(["push", str(run_dir)]) == 0  # no --repo-id, no --create-pr
    api = HfApi()
    assert len(api.list_repo_refs(REPO, include_pull_requests=True).pull_requests) == 1
    assert "model.safetensors" not in api.list_repo_files(REPO)  # main untouched
    assert main(["push", str(run_dir), "--no-create-pr"]) == 0  # a flag wins over the record
    assert "model.safetensors" in api.list_repo_files(REPO)


def test_retries_wait_as_long_as_retry_after_says(monkeypatch):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    sleeps: list[float] = []
    monkeypatch.setattr(hubretry.time, "sleep", sleeps.append)
    answers = iter([429, 503, 200])

    def call() -> str:
        status = next(answers)
        if status == 200:
            return "done"
        response = httpx2.Response(
            status,
            headers={"Retry-After": "7" if status == 429 else "999"},
            request=httpx2.Request("GET", "http://hub.invalid/api/models/x"),
        )
        raise HfHubHTTPError(f"HTTP {status}", response=response)

    assert hubretry.with_retries("read", call, log=quiet, delays=(1.0, 2.0)) == "done"
    assert sleeps == [7.0, hubretry.RETRY_AFTER_CAP]


def test_card_that_is_not_utf8_is_refused_plainly(tiny_run, local_hub, copy_run):
    _, original, _ = tiny_run
    run_dir = copy_run(original)
    card = run_dir / "README.md"
    card.write_bytes(card.read_bytes() + b"\xc1\xff")
    with pytest.raises(HubError, match="is not UTF-8 text"):
        push_run(run_dir, REPO, log=quiet)
    assert not HfApi().repo_exists(REPO)


def test_stale_shards_are_deleted_and_other_files_kept(tiny_run, local_hub):
    from huggingface_hub import CommitOperationAdd

    _, run_dir, _ = tiny_run
    push_run(run_dir, REPO, log=quiet)
    api = HfApi()
    # An earlier push sharded the weights; a person added notes of their own.
    api.create_commit(
        REPO,
        operations=[
            CommitOperationAdd("model-00002-of-00002.safetensors", b"old shard bytes"),
            CommitOperationAdd("model.safetensors.index.json", b'{"weight_map": {}}'),
            CommitOperationAdd("NOTES.md", b"kept\n"),
        ],
        commit_message="an earlier, sharded push",
    )
    result = push_run(run_dir, REPO, log=quiet)
    assert result.changed
    files = set(api.list_repo_files(REPO))
    assert "model-00002-of-00002.safetensors" not in files
    assert "model.safetensors.index.json" not in files
    assert {"model.safetensors", "NOTES.md"} <= files


def test_a_permanent_upload_failure_sends_each_file_at_most_twice(tiny_run, local_hub):
    # huggingface_hub retries an upload itself; publisher must not multiply that by its own.
    _, run_dir, _ = tiny_run
    local_hub.faults.add("PUT", r"/info/lfs/objects/", "500", times=0)  # every upload, forever
    with pytest.raises(HubError, match="did not take the weights"):
        push_run(run_dir, REPO, log=quiet)
    puts = [r.path for r in local_hub.stats.requests if r.method == "PUT"]
    assert puts and all(puts.count(path) <= 2 for path in puts)
    assert local_hub.stats.commits == [] or all(
        "publisher:" not in c.message for c in local_hub.stats.commits
    )


def test_a_mounted_parent_is_read_in_place_only_at_its_locked_config(write_recipe, tiny_parents):
    """A Hub parent mounted at its revision (a Job's model volume) is read where it is, with no
    Hub call; a mount whose config.json is not the locked one is refused."""
    from publisher.hub import fetch_parents
    from publisher.parents import ParentInfo
    from publisher.recipe import load_recipe

    recipe = load_recipe(
        write_recipe(
            "models: [{model: {base}}, {model: {other}}]\n"
            "merge_method: slerp\nbase_model: {base}\nparameters: {t: 0.5}\n"
        )
    )
    mount = tiny_parents[1]
    config = json.loads((mount / "config.json").read_text())
    parent = ParentInfo(
        ref="org/other", source="hub", revision="a" * 40, resolved=True, config=config
    )
    lines: list[str] = []
    assert fetch_parents(recipe, [parent], lines.append, {"org/other": mount}) == {
        "org/other": mount
    }
    assert lines == [f"  org/other@{'a' * 12} mounted at {mount} (no download)"]
    parent.config = {**config, "hidden_size": 1}
    with pytest.raises(HubError, match="is not the one locked at a{40}; mount the repo at that"):
        fetch_parents(recipe, [parent], lines.append, {"org/other": mount})
