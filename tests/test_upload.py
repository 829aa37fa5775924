"""What a push may upload: the allow-list and the secret scan, both before any Hub call."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from conftest import LOCAL_HUB_TOKEN as TOKEN
from conftest import quiet
from huggingface_hub import HfApi

from publisher.hub import HubError, push_run, run_files
from publisher.rundir import RunDir
from publisher.upload import ALLOWED_FILES, check_allowed

REPO = "tester/tiny-run"

EXTRA_SECRET = "s3cr3t-read-key-0042"
HUB_SHAPED = "hf_" + "Ab1" * 12


def _vouch(run_dir: Path) -> None:
    """Record the run as verify would have seen it now (the file was there at verify time)."""
    report = json.loads((run_dir / "verify.json").read_text())
    report["verified_files"] = RunDir(run_dir).verified_files()
    (run_dir / "verify.json").write_text(json.dumps(report))


def _refused(run_dir: Path, hub, match: str) -> None:
    _vouch(run_dir)
    hub.stats.reset()
    with pytest.raises(HubError, match=match) as err:
        push_run(run_dir, REPO, log=quiet)
    assert "nothing was uploaded" in str(err.value)
    assert len(hub.stats.requests) == 0  # refused before any Hub call
    assert not HfApi().repo_exists(REPO)


@pytest.mark.parametrize(
    "stray",
    [
        "merged/.env",
        "merged/hf_token.txt",
        "merged/.cache/huggingface/download/x.lock",
        "notes.txt",
    ],
)
def test_files_off_the_allow_list_are_refused(tiny_run, local_hub, copy_run, stray):
    run_dir = copy_run(tiny_run[1])
    target = run_dir / stray
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("HF_TOKEN=whatever\n")
    if stray == "notes.txt":  # a file outside merged/ is not part of the upload at all
        push_run(run_dir, REPO, log=quiet)
        assert "notes.txt" not in HfApi().list_repo_files(REPO)
        return
    _refused(run_dir, local_hub, "may not: '" + stray.removeprefix("merged/"))


def test_symlinked_model_file_is_refused(tiny_run, local_hub, copy_run, tmp_path):
    run_dir = copy_run(tiny_run[1])
    outside = tmp_path / "environ"
    outside.write_text("PATH=/usr/bin\n")
    tokenizer = run_dir / "merged" / "tokenizer_config.json"
    tokenizer.unlink()
    tokenizer.symlink_to(outside)
    _refused(run_dir, local_hub, "tokenizer_config.json.*is a symlink")


def _card_with(run_dir: Path, text: str) -> None:
    card = run_dir / "README.md"
    card.write_text(card.read_text().replace("_Text you write", f"_Text you write {text}", 1))


@pytest.mark.parametrize(
    ("form", "leak"),
    [
        ("plain", lambda s: s),
        ("reversed", lambda s: s[::-1]),
        ("base64", lambda s: base64.b64encode(f"x{s}yz".encode()).decode()),
        ("urlsafe base64", lambda s: base64.urlsafe_b64encode(f"ab{s}".encode()).decode()),
    ],
)
def test_card_holding_the_token_is_refused(tiny_run, local_hub, copy_run, monkeypatch, form, leak):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    run_dir = copy_run(tiny_run[1])
    _card_with(run_dir, leak(TOKEN))
    _refused(run_dir, local_hub, "README.md holds the value of .*HF_TOKEN")


def test_secret_marked_by_name_is_refused_in_any_text_file(
    tiny_run, local_hub, copy_run, monkeypatch
):
    monkeypatch.setenv("HF_READ_KEY", EXTRA_SECRET)
    monkeypatch.setenv("PUBLISHER_SECRET_ENV", "HF_READ_KEY")
    run_dir = copy_run(tiny_run[1])
    config = run_dir / "merged" / "generation_config.json"
    data = json.loads(config.read_text())
    data["note"] = EXTRA_SECRET[::-1]
    config.write_text(json.dumps(data))
    _refused(run_dir, local_hub, "generation_config.json holds the value of reversed HF_READ_KEY")


def test_hub_token_shape_is_refused_even_when_not_in_the_environment(tiny_run, local_hub, copy_run):
    run_dir = copy_run(tiny_run[1])
    _card_with(run_dir, HUB_SHAPED)
    assert HUB_SHAPED not in os.environ.values()
    _refused(run_dir, local_hub, "README.md holds something shaped like a Hub token")


def test_a_verified_run_is_all_on_the_allow_list(tiny_run):
    files = run_files(tiny_run[1])
    check_allowed(files)  # raises if not
    assert {"model.safetensors", "config.json", "README.md", "publisher/verify.json"} <= set(files)
    assert len(ALLOWED_FILES) >= 8


def test_push_check_runs_the_checks_without_the_hub(tiny_run, local_hub, copy_run, capsys):
    """What the build job runs before uploading the run: the push's checks, no Hub call."""
    from publisher.cli import main

    run_dir = copy_run(tiny_run[1])
    local_hub.stats.reset()
    assert main(["push", str(run_dir), "--check"]) == 0
    assert "ready to push" in capsys.readouterr().out
    (run_dir / "merged" / ".env").write_text("HF_TOKEN=x\n")
    _vouch(run_dir)
    assert main(["push", str(run_dir), "--check"]) == 1
    assert "'.env'" in capsys.readouterr().err
    assert len(local_hub.stats.requests) == 0


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("HF_TOKEN", True),
        ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("HUB_AUTH", True),
        ("GIT_AUTHOR_NAME", False),
        ("HF_HOME", False),
        ("HF_READ_KEY", False),
    ],
)
def test_secret_names(name, secret, monkeypatch):
    from publisher.upload import is_secret_name

    monkeypatch.delenv("PUBLISHER_SECRET_ENV", raising=False)
    assert is_secret_name(name) is secret


def test_push_command_takes_create_pr_from_the_runs_settings(tiny_run, local_hub, copy_run, capsys):
    """The push job passes no flag on a push to main: the settings the run recorded (its
    recipe's publish.create_pr) decide."""
    import json

    from publisher.cli import main

    run_dir = copy_run(tiny_run[1])
    manifest = run_dir / "manifest.json"
    data = json.loads(manifest.read_text())
    data["settings"]["hub"]["create_pr"] = True  # as a recipe with publish.create_pr records
    manifest.write_text(json.dumps(data))
    assert main(["push", str(run_dir), "--repo-id", REPO]) == 0
    assert "pull request:" in capsys.readouterr().out
    assert "model.safetensors" not in HfApi().list_repo_files(REPO)  # main untouched
    assert main(["push", str(run_dir), "--repo-id", REPO, "--no-create-pr"]) == 0
    assert "pull request:" not in capsys.readouterr().out
    assert "model.safetensors" in HfApi().list_repo_files(REPO)
