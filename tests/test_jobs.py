"""`publisher run --on hf-jobs` against the local Hub, whose Jobs run as local subprocesses:
the build job (no token) and the finish job (verify, push, record) for real, over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import TINY_SLERP
from huggingface_hub import HfApi

from publisher.cli import main
from publisher.hubserver import LocalHub, hub_client_env

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_jobs_test_token_0123456789"
USER = "jobs-tester"
RECIPE = (
    TINY_SLERP
    + """\
dtype: float32
publish:
  repo_id: jobs-tester/tiny-jobs
  license: apache-2.0
  smoke:
    prompts: [{user: "Hi"}]
    max_new_tokens: 2
  eval:
    tasks: [publisher_tiny_qa]
    limit: 2
"""
)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[LocalHub]:
    hub = LocalHub(tmp_path / "hub", token=TOKEN, user=USER).start()
    try:
        with hub_client_env(hub.endpoint, token=TOKEN, hf_home=tmp_path / "hf-home"):
            yield hub
    finally:
        hub.stop(wait=False)


@pytest.fixture
def recipe(tmp_path: Path, tiny_parents: tuple[Path, Path]) -> Path:
    """The recipe, with its local parents given relative to it (so they travel in the bundle)."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    base, other = (os.path.relpath(p, folder) for p in tiny_parents)
    path = folder / "tiny-jobs.yaml"
    path.write_text(RECIPE.replace("{base}", base).replace("{other}", other))
    return path


def run(recipe: Path, out: Path, *flags: str) -> int:
    return main(
        [
            "run",
            str(recipe),
            "--on",
            "hf-jobs",
            "--out",
            str(out),
            "--flavor",
            "cpu-upgrade",
            *flags,
        ]
    )


def jobs_of(hub: LocalHub) -> dict[str, object]:
    return {job.spec["labels"]["publisher-role"]: job for job in hub.jobs.list(USER)}


def model_commits(hub: LocalHub) -> list[str]:
    return [c.commit_id for c in hub.stats.commits if c.repo_id == "jobs-tester/tiny-jobs"]


def publish_step(job: str, name: str) -> str:
    """The script of a step of one of publish.yml's jobs."""
    data = yaml.safe_load((REPO_ROOT / ".github/workflows/publish.yml").read_text())
    return next(s["run"] for s in data["jobs"][job]["steps"] if s.get("name") == name)


def checkout_with(recipe: Path, tiny_parents: tuple[Path, Path], root: Path) -> Path:
    """A runner's checkout: this repository's package, templates and pyproject.toml, the recipe
    under recipes/ and its local parents under parents/."""
    root.mkdir()
    ignore = shutil.ignore_patterns("__pycache__")
    for name in ("publisher", "templates"):
        shutil.copytree(REPO_ROOT / name, root / name, ignore=ignore)
    shutil.copyfile(REPO_ROOT / "pyproject.toml", root / "pyproject.toml")
    for parent in tiny_parents:
        shutil.copytree(parent, root / "parents" / parent.name)
    (root / "recipes").mkdir()
    text = RECIPE.replace("{base}", "../parents/tiny-base").replace(
        "{other}", "../parents/tiny-other"
    )
    (root / "recipes" / recipe.name).write_text(text)
    return root


def test_publish_workflow_on_hf_jobs_pushes_and_brings_the_record_back(
    hub: LocalHub, recipe: Path, tmp_path: Path, tiny_parents: tuple[Path, Path]
) -> None:
    """publish.yml's two hf-jobs steps, under a simulated runner with runner=hf-jobs: the
    prepare step (no token) lists what the Jobs need; the launcher, in a Python that has only
    requirements/publish.lock (so it cannot load the recipe), starts the build job and the
    finish job, the model is pushed, the record comes back to the runner. One parent travels
    in the bundle, the other is a Hub repo that both jobs mount at its locked revision and
    neither downloads."""
    from tests.lock_only import lock_only_env

    checkout = checkout_with(recipe, tiny_parents, tmp_path / "checkout")
    in_checkout = checkout / "recipes" / recipe.name
    hub_parent = f"{USER}/tiny-other"
    HfApi().create_repo(hub_parent)
    HfApi().upload_folder(folder_path=str(tiny_parents[1]), repo_id=hub_parent)
    in_checkout.write_text(in_checkout.read_text().replace("../parents/tiny-other", hub_parent))
    assert main(["lock", str(in_checkout)]) == 0
    lock = json.loads(in_checkout.with_name("tiny-jobs.lock.json").read_text())
    revision = lock["parents"][hub_parent]["revision"]
    hub.stats.reset()
    hub.faults.add("GET", r"/api/jobs/.+/logs$", "cut")  # the build's log stream breaks once
    out = tmp_path / "run"
    github = tmp_path / "github"
    github.mkdir()
    runner = {
        **{k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "PYTHONPATH")},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(checkout),
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(github / "output"),
        "GITHUB_STEP_SUMMARY": str(github / "summary.md"),
        "RECIPE": f"recipes/{recipe.name}",
        "EVAL_SUITE": "",
        "EVAL_LIMIT": "",
    }

    def step(job: str, name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", publish_step(job, name)],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    prepared = step(
        "hf-jobs-prepare",
        "Validate, plan and list what the Jobs need (no credential)",
        {**runner, "OUT": "runs/prepared", "LAUNCH": "launch/tiny-jobs"},
    )
    assert prepared.returncode == 0, prepared.stdout[-3000:] + prepared.stderr[-3000:]
    launch_file = tmp_path / "runner-temp" / "launch" / "launch.json"  # the downloaded artifact
    launch_file.parent.mkdir(parents=True)
    shutil.copyfile(checkout / "launch" / "tiny-jobs" / "launch.json", launch_file)
    launcher = lock_only_env(
        runner,
        checkout,
        HF_TOKEN=TOKEN,
        FLAVOR="cpu-upgrade",
        OUT=str(out),
        PUSH="true",
        CREATE_PR="",
        LAUNCH=str(launch_file),
    )
    done = step("hf-jobs", "Run on Hugging Face Jobs", launcher)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The record is back, the weights are not.
    for name in (
        "manifest.json",
        "plan.json",
        "smoke.json",
        "eval/results.json",
        "verify.json",
        "README.md",
        "schedule.png",
    ):
        assert (out / name).is_file(), name
    assert not (out / "merged").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["verify"]["status"] == "ok"
    assert json.loads((out / "verify.json").read_text())["passed"] is True
    # The recipe sets no publish.merge: the build job tuned every merge option on its machine.
    reasons = manifest["merge_options"]["reasons"]
    assert reasons and "set by the recipe or a flag" not in reasons.values()
    # Pushed once, from the finish job; the card on the Hub is the one that came back.
    assert len(model_commits(hub)) == 1 and manifest["push"]["repo_id"] == "jobs-tester/tiny-jobs"
    api = HfApi()
    card = api.hf_hub_download("jobs-tester/tiny-jobs", "README.md")
    assert Path(card).read_bytes() == (out / "README.md").read_bytes()
    assert "model.safetensors" in api.list_repo_files("jobs-tester/tiny-jobs")
    # The step's outputs and summary, as on a GPU runner.
    outputs = (github / "output").read_text()
    assert manifest["push"]["commit_sha"] in outputs and "repo_url" in outputs
    assert "verify" in (github / "summary.md").read_text()
    # The logs streamed live, each line once although the stream was cut and reconnected.
    assert done.stdout.count("build finished: every stage passed") == 1
    assert hub.stats.count("GET", r"/logs$") >= 3
    # The token went to the finish job only, as a secret: never in a command, env or log line.
    jobs = jobs_of(hub)
    assert "secrets" not in jobs["build"].spec
    assert jobs["finish"].spec["secrets"] == {"HF_TOKEN": TOKEN}
    # Neither job downloaded the Hub parent: both read it where it is mounted, at its lock.
    fetched = [r.path for r in hub.stats.requests if hub_parent in r.path and r.status != 206]
    assert not [path for path in fetched if path.endswith(".safetensors")], fetched
    mounted = {
        "type": "model",
        "source": hub_parent,
        "revision": revision,
        "mountPath": "/parents/0",
        "readOnly": True,
    }
    assert all(mounted in job.spec["volumes"] for job in jobs.values())
    assert done.stdout.count(f"{hub_parent}@{revision[:12]} mounted at") == 2
    for job in jobs.values():
        assert TOKEN not in json.dumps(job.spec["command"]) + json.dumps(job.spec["environment"])
        assert not any(TOKEN in line for _, line in job.lines)
        assert job.stage == "COMPLETED"
    shown = [line for line in done.stdout.splitlines() if not line.startswith("::add-mask")]
    assert not any(TOKEN in line for line in shown)


def test_stage_failing_in_the_job_names_it_and_pushes_nothing(
    hub: LocalHub, recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe.write_text(
        recipe.read_text() + "  chat_template: \"{{ raise_exception('boom in the job') }}\"\n"
    )
    out = tmp_path / "run"
    assert run(recipe, out, "--push") == 1
    err = capsys.readouterr().err
    assert "failed stage: smoke" in err and "boom in the job" in err and "nothing was pushed" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["smoke"]["status"] == "failed"
    assert "push" not in manifest and model_commits(hub) == []
    assert jobs_of(hub)["build"].stage == "ERROR"


def test_ctrl_c_cancels_the_running_job(
    hub: LocalHub, recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupt_once_running() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(job.stage == "RUNNING" for job in hub.jobs.list(USER)):
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    # Ctrl-C as in a terminal: a shell's background job (nohup, some CI runners) starts with
    # SIGINT ignored, and Python then leaves it ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        watcher = threading.Thread(target=interrupt_once_running, daemon=True)
        watcher.start()
        assert run(recipe, tmp_path / "run", "--push") == 130
        watcher.join()
    finally:
        signal.signal(signal.SIGINT, previous)
    jobs = jobs_of(hub)
    assert list(jobs) == ["build"] and jobs["build"].stage == "CANCELED"
    assert "cancelled job" in capsys.readouterr().out
    assert model_commits(hub) == []


def test_job_past_its_timeout(
    hub: LocalHub, recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(recipe, tmp_path / "run", "--push", "--timeout", "1") == 1
    err = capsys.readouterr().err
    assert "ran past its timeout of 1s" in err and "--timeout" in err
    assert jobs_of(hub)["build"].message == "Job timeout" and model_commits(hub) == []


def test_refusals_before_any_job(
    hub: LocalHub,
    recipe: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert run(recipe, tmp_path / "run", "--flavor", "a10g-larg") == 1
    assert "unknown flavor 'a10g-larg' (did you mean 'a10g-large'?)" in capsys.readouterr().err
    for status, what in (("402", "billing"), ("403", "quota"), ("429", "quota")):
        hub.faults.add("POST", r"^/api/jobs/[^/]+$", status)
        assert run(recipe, tmp_path / "run") == 1
        err = capsys.readouterr().err
        assert f"HTTP {status}" in err and what in err and "settings/billing" in err
    assert hub.jobs.list(USER) == []
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert run(recipe, tmp_path / "run") == 1
    assert "no Hugging Face token" in capsys.readouterr().err


def test_the_launch_file_is_data(tmp_path: Path) -> None:
    """The launcher bundles only files of its own checkout and mounts only locked parents,
    whatever the launch file (made where the token is not) says."""
    from publisher.jobbundle import JobsError, Launch, check_hub_parents, make_bundle

    root = tmp_path / "checkout"
    (root / "recipes").mkdir(parents=True)
    (root / "recipes" / "r.yaml").write_text("recipe\n")
    locked = {"org/a": {"ref": "org/a", "source": "hub", "revision": "a" * 40}}
    (root / "recipes" / "r.lock.json").write_text(json.dumps({"parents": locked}))
    (tmp_path / "secret.txt").write_text("not for the bundle\n")
    (root / "link").symlink_to(tmp_path / "secret.txt")

    def launch(**fields: object) -> Launch:
        return Launch(**{"recipe": "recipes/r.yaml", "paths": ["recipes"], "src": ".", **fields})

    bundle = make_bundle(launch(), root, tmp_path / "ok")
    assert (bundle.root / "recipes" / "r.yaml").read_text() == "recipe\n"
    for paths in (["../secret.txt"], [str(tmp_path / "secret.txt")], ["link"]):
        with pytest.raises(JobsError, match="refused"):
            make_bundle(launch(paths=paths), root, tmp_path / "bad")
    assert not (tmp_path / "bad" / "link").exists()
    check_hub_parents(launch(hub_parents={"org/a": "a" * 40}), root)
    # Where to push is not the launch file's to say: the finish job reads the bundle's recipe.
    written = launch().write(tmp_path / "launch")
    data = json.loads(written.read_text())
    written.write_text(json.dumps({**data, "target": {"repo_id": "someone/else"}}))
    with pytest.raises(JobsError, match="cannot read the launch file"):
        Launch.read(written)
    for parents in ({"org/a": "b" * 40}, {"org/private": "c" * 40}):
        with pytest.raises(JobsError, match="not what r.lock.json pins"):
            check_hub_parents(launch(hub_parents=parents), root)
