"""The GitHub Actions workflows: triggers, inputs, permissions, pins, and the linters over them."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from publisher.cli import build_parser

REPO_ROOT = Path(__file__).resolve().parent.parent
GITHUB_DIR = REPO_ROOT / ".github"
WORKFLOWS = GITHUB_DIR / "workflows"
SETUP_ACTION = GITHUB_DIR / "actions" / "setup-publisher" / "action.yml"
ACTIONS = sorted((GITHUB_DIR / "actions").glob("*/action.yml"))
GPU_RUNS_ON = "${{ vars.PUBLISHER_GPU_RUNNER || 'gpu' }}"
PR_GPU_RUNS_ON = "${{ vars.PUBLISHER_PR_GPU_RUNNER || vars.PUBLISHER_GPU_RUNNER || 'gpu' }}"
SHA_PIN = re.compile(r"^[\w.-]+/[\w.-]+(?:/[\w./-]+)?@[0-9a-f]{40}$")
VERSION_COMMENT = re.compile(r"#\s*v\d+\.\d+\.\d+\s*$")
# Write scopes, by workflow and job; everything else may only read.
ALLOWED_WRITES = {
    ("recipe-pr.yml", "comment"): {"pull-requests"},
    ("publish.yml", "push-oidc"): {"id-token"},
}


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    # YAML 1.1 reads the key `on` as True
    if True in data:
        data["on"] = data.pop(True)
    return data


WORKFLOW_FILES = sorted(WORKFLOWS.glob("*.yml"))


@pytest.fixture(params=WORKFLOW_FILES, ids=lambda p: p.name)
def workflow(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return request.param.name, load(request.param)


def steps_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    if "runs" in data:
        return list(data["runs"].get("steps", []))
    return [step for job in data["jobs"].values() for step in job.get("steps", [])]


def all_files() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, load(p)) for p in WORKFLOW_FILES] + [
        (f"{p.parent.name}/{p.name}", load(p)) for p in ACTIONS
    ]


def test_the_three_workflows_exist() -> None:
    assert {p.name for p in WORKFLOW_FILES} == {"ci.yml", "publish.yml", "recipe-pr.yml"}


# ---------------------------------------------------------------------------------------------
# triggers and inputs


def test_recipe_pr_triggers() -> None:
    on = load(WORKFLOWS / "recipe-pr.yml")["on"]
    assert set(on) == {"pull_request"}  # never pull_request_target with the PR's code
    assert on["pull_request"]["paths"] == ["recipes/**", "templates/**"]
    assert "labeled" in on["pull_request"]["types"]
    assert {"opened", "synchronize", "reopened"} <= set(on["pull_request"]["types"])


def test_publish_triggers_and_inputs() -> None:
    on = load(WORKFLOWS / "publish.yml")["on"]
    assert set(on) == {"workflow_dispatch", "push"}
    assert on["push"]["branches"] == ["main"]
    assert on["push"]["paths"] == ["recipes/**", "templates/**"]
    inputs = on["workflow_dispatch"]["inputs"]
    assert set(inputs) == {
        "recipe",
        "push",
        "create_pr",
        "eval_suite",
        "eval_limit",
        "runner",
        "flavor",
    }
    assert inputs["runner"]["options"] == ["", "self-hosted", "hf-jobs"]
    assert inputs["recipe"]["required"] is True
    assert inputs["push"]["type"] == "boolean" and inputs["push"]["default"] is False
    assert inputs["create_pr"]["type"] == "boolean"
    from publisher.evaluate import SUITES

    assert set(inputs["eval_suite"]["options"]) == {"", *SUITES}


def test_ci_runs_tests_and_linters() -> None:
    data = load(WORKFLOWS / "ci.yml")
    assert {"push", "pull_request"} <= set(data["on"])
    runs = "\n".join(s.get("run", "") for s in steps_of(data))
    assert "bash .ci/run" in runs
    assert "actionlint" in runs and "zizmor" in runs
    assert "requirements-lint.txt" in runs


# ---------------------------------------------------------------------------------------------
# permissions and concurrency


def test_permissions_are_empty_at_the_top_and_minimal_per_job(
    workflow: tuple[str, dict[str, Any]],
) -> None:
    name, data = workflow
    assert data["permissions"] == {}, f"{name}: top-level permissions must be {{}}"
    for job_id, job in data["jobs"].items():
        perms = job.get("permissions")
        assert isinstance(perms, dict), f"{name}/{job_id}: needs its own permissions"
        writes = {scope for scope, level in perms.items() if level == "write"}
        assert writes == ALLOWED_WRITES.get((name, job_id), set()), f"{name}/{job_id}: {perms}"
        assert set(perms.values()) <= {"read", "write"}


def test_concurrency() -> None:
    pr = load(WORKFLOWS / "recipe-pr.yml")
    assert "github.event.pull_request.number" in pr["concurrency"]["group"]
    assert pr["concurrency"]["cancel-in-progress"] is True
    jobs = load(WORKFLOWS / "publish.yml")["jobs"]
    for name in ("build", "push", "push-oidc", "hf-jobs"):
        assert "matrix.recipe" in jobs[name]["concurrency"]["group"], name
        assert jobs[name]["concurrency"]["cancel-in-progress"] is False  # never abandon a push
    assert jobs["push"]["concurrency"]["group"] == jobs["push-oidc"]["concurrency"]["group"]


# ---------------------------------------------------------------------------------------------
# actions and scripts


def test_actions_are_pinned_to_full_shas_with_a_version_comment() -> None:
    files = [*WORKFLOW_FILES, *ACTIONS]
    seen = 0
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            m = re.match(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$", line)
            if not m:
                continue
            seen += 1
            ref, rest = m.groups()
            if ref.startswith(("$/", "./")):
                continue  # this repository's own action, at the running commit
            assert SHA_PIN.match(ref), f"{path.name}:{number}: {ref} is not pinned to a SHA"
            assert VERSION_COMMENT.search(rest), f"{path.name}:{number}: add '# vX.Y.Z'"
    assert seen > 10


def test_checkout_never_persists_credentials() -> None:
    for name, data in all_files():
        for step in steps_of(data):
            if str(step.get("uses", "")).startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, name


def test_no_expressions_inside_run_scripts() -> None:
    """Inputs, event fields, matrix values reach scripts through `env:` only (no injection)."""
    for name, data in all_files():
        for step in steps_of(data):
            script = step.get("run")
            if script is not None:
                assert "${{" not in script, f"{name}: step {step.get('name')!r} interpolates"


def test_pull_request_jobs_get_no_secrets() -> None:
    """None, except the labelled full run on Hugging Face Jobs: one Jobs token, behind an
    environment (reviewers), and never a push."""
    data = load(WORKFLOWS / "recipe-pr.yml")
    assert "pull_request_target" not in data["on"]
    for job_id, job in data["jobs"].items():
        used = set(re.findall(r"\bsecrets\.(\w+)", yaml.safe_dump(job)))
        if job_id == "full-run-hf-jobs":
            assert used == {"HF_JOBS_TOKEN"} and job["environment"] == "hf-jobs-preview"
            assert "full-run" in job["if"] and "--no-push" in job["steps"][-2]["run"]
        else:
            assert not used, job_id


def test_gpu_jobs_use_the_runner_variable() -> None:
    jobs = load(WORKFLOWS / "recipe-pr.yml")["jobs"]
    pr, pr_hf = jobs["full-run"], jobs["full-run-hf-jobs"]
    publish = load(WORKFLOWS / "publish.yml")["jobs"]
    assert publish["build"]["runs-on"] == GPU_RUNS_ON
    # Pull requests' code gets a runner pool of its own where one is configured.
    assert pr["runs-on"] == PR_GPU_RUNS_ON
    # Without a GPU runner: ubuntu-latest, the GPU stages as Hugging Face Jobs.
    assert publish["hf-jobs"]["runs-on"] == pr_hf["runs-on"] == "ubuntu-latest"
    for job in (pr, pr_hf):
        assert "github.event.label.name == 'full-run'" in job["if"]
    assert "vars.PUBLISHER_RUNNER != 'hf-jobs'" in pr["if"]
    assert "vars.PUBLISHER_RUNNER == 'hf-jobs'" in pr_hf["if"]
    lint_config = yaml.safe_load((GITHUB_DIR / "actionlint.yaml").read_text(encoding="utf-8"))
    assert "gpu" in lint_config["self-hosted-runner"]["labels"]


def _hf_home_is_the_jobs_own(job: dict[str, Any]) -> None:
    cache = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/cache"))
    paths = [line.strip() for line in cache["with"]["path"].splitlines() if line.strip()]
    assert paths[0] == "${{ runner.temp }}/hf-home"
    assert "!${{ runner.temp }}/hf-home/token" in paths  # never a token in the cache
    runs = [s for s in job["steps"] if "publisher run" in s.get("run", "")]
    assert runs and all(s["env"]["HF_HOME"] == "${{ runner.temp }}/hf-home" for s in runs)
    # The parents' cached eval results travel in the same cache, in the job's own directory.
    assert "${{ runner.temp }}/publisher-cache" in paths
    assert all(
        s["env"]["PUBLISHER_CACHE_DIR"] == "${{ runner.temp }}/publisher-cache" for s in runs
    )


def test_the_build_job_holds_no_write_credential() -> None:
    """Recipe-controlled code (templates, tasks, chat templates) runs where no write token is."""
    text = (WORKFLOWS / "publish.yml").read_text(encoding="utf-8")
    jobs = load(WORKFLOWS / "publish.yml")["jobs"]
    build = jobs["build"]
    assert "environment" not in build and build["permissions"] == {"contents": "read"}
    secrets = set(re.findall(r"secrets\.(\w+)", yaml.safe_dump(build)))
    assert secrets == {"HF_READ_TOKEN"}, secrets
    run = next(s for s in build["steps"] if s.get("id") == "run")
    assert run["env"]["HF_TOKEN"] == "${{ secrets.HF_READ_TOKEN }}"
    assert "--no-push" in run["run"] and 'publisher push "$OUT" --check' in run["run"]
    assert "HF_OIDC_RESOURCE" not in yaml.safe_dump(build)
    _hf_home_is_the_jobs_own(build)
    _hf_home_is_the_jobs_own(load(WORKFLOWS / "recipe-pr.yml")["jobs"]["full-run"])
    upload = next(s for s in build["steps"] if s.get("with", {}).get("name", "").startswith("run-"))
    assert upload["with"]["path"] == "runs/${{ steps.name.outputs.name }}"
    assert upload["with"]["include-hidden-files"] is False
    # The write token: the push job's and the Hugging Face Jobs launcher's, nowhere else; both
    # install only the lock and run no recipe code (see the tests below).
    holders = {name for name, job in jobs.items() if "secrets.HF_TOKEN" in yaml.safe_dump(job)}
    assert holders == {"push", "hf-jobs"} and text.count("secrets.HF_TOKEN") == 2


def test_the_push_jobs_hold_the_credential_and_run_no_recipe_code() -> None:
    jobs = load(WORKFLOWS / "publish.yml")["jobs"]
    token, oidc = jobs["push"], jobs["push-oidc"]
    for job in (token, oidc):
        assert job["environment"]["name"] == "hub-publish"
        assert job["runs-on"] == "ubuntu-latest"  # never the GPU runner pull requests use
        assert "build" in job["needs"]
        uses = [s.get("uses", "") for s in job["steps"]]
        assert "$/.github/actions/push-run" in uses
        assert not any("setup-publisher" in u for u in uses)  # no unpinned install here
        assert job["outputs"]["repo_url"] == "${{ steps.push.outputs.repo_url }}"
    assert "vars.HF_OIDC_RESOURCE == ''" in token["if"]
    assert "vars.HF_OIDC_RESOURCE != ''" in oidc["if"]
    assert "id-token" not in token["permissions"]
    assert oidc["permissions"]["id-token"] == "write"
    push_step = next(s for s in token["steps"] if s.get("id") == "push")
    assert push_step["with"]["hf-token"] == "${{ secrets.HF_TOKEN }}"
    oidc_step = next(s for s in oidc["steps"] if s.get("id") == "push")
    assert "hf-token" not in oidc_step["with"]
    assert oidc_step["with"]["oidc-resource"] == "${{ vars.HF_OIDC_RESOURCE }}"
    action = load(GITHUB_DIR / "actions" / "push-run" / "action.yml")
    install = next(s for s in action["runs"]["steps"] if "pip install" in s.get("run", ""))
    assert "--require-hashes" in install["run"] and "requirements/publish.lock" in install["run"]
    assert "-e ." not in install["run"]


def _installs(job: dict[str, Any]) -> list[str]:
    """What a job's steps install: `pip install` lines, and this repository's own actions
    (setup-publisher installs the checkout, unpinned)."""
    found = []
    for step in job.get("steps", []):
        uses = str(step.get("uses", ""))
        if uses.startswith(("$/", "./")):
            action = load(REPO_ROOT / uses[2:] / "action.yml")
            found += [f"{uses}: {line}" for line in _installs(action["runs"])]
        found += [
            line.strip() for line in str(step.get("run", "")).splitlines() if "pip install" in line
        ]
    return found


def _privileged_jobs() -> dict[str, dict[str, Any]]:
    """Jobs that can write somewhere: a write scope, the publish environment, or a write token."""
    jobs = {}
    for path in WORKFLOW_FILES:
        for job_id, job in load(path)["jobs"].items():
            dumped = yaml.safe_dump(job)
            writes = "write" in (job.get("permissions") or {}).values()
            if writes or "hub-publish" in dumped or "secrets.HF_TOKEN" in dumped:
                jobs[f"{path.name}/{job_id}"] = job
    return jobs


def test_jobs_that_can_write_install_only_hash_pinned_packages() -> None:
    """Every job holding a write scope or credential installs from the hash-pinned lock only:
    no `pip install -e .`, no setup-publisher, nothing without --require-hashes."""
    jobs = _privileged_jobs()
    assert {
        "recipe-pr.yml/comment",
        "publish.yml/push",
        "publish.yml/push-oidc",
        "publish.yml/hf-jobs",
    } <= set(jobs)
    for name, job in jobs.items():
        installs = _installs(job)
        assert installs, name
        for line in installs:
            assert "setup-publisher" not in line, f"{name}: {line}"
            assert "--require-hashes" in line and "requirements/publish.lock" in line, name
            assert "--no-deps" in line and "--only-binary" in line, name


def test_the_hf_jobs_launcher_holds_the_token_but_loads_no_recipe() -> None:
    """Without a GPU runner the recipe is validated and planned in hf-jobs-prepare, with no
    credential; the job with the token starts the Jobs with `--launch` (the prepared file list,
    from its own checkout, recipe not loaded) and publisher from source."""
    jobs = load(WORKFLOWS / "publish.yml")["jobs"]
    prepare, launcher = jobs["hf-jobs-prepare"], jobs["hf-jobs"]
    assert "environment" not in prepare and prepare["permissions"] == {"contents": "read"}
    assert "secrets." not in yaml.safe_dump(prepare)
    assert "--prepare" in next(
        s["run"] for s in prepare["steps"] if "publisher run" in s.get("run", "")
    )
    assert "hf-jobs-prepare" in launcher["needs"] and "!cancelled()" in launcher["if"]
    assert launcher["environment"]["name"] == "hub-publish"
    run = next(s for s in launcher["steps"] if s.get("id") == "run")
    assert run["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    assert run["env"]["PYTHONPATH"] == "${{ github.workspace }}"
    assert "--launch" in run["run"] and 'python -m publisher run "$RECIPE"' in run["run"]
    download = next(s for s in launcher["steps"] if "download-artifact" in str(s.get("uses", "")))
    assert download["with"]["name"] == "launch-${{ steps.name.outputs.name }}"
    assert download["with"]["path"].startswith("${{ runner.temp }}/")


def test_the_comment_job_runs_no_pull_request_code() -> None:
    """The job with `pull-requests: write` runs the base commit's publisher and script; the
    pull request's previews are downloaded outside the checkout and only read."""
    job = load(WORKFLOWS / "recipe-pr.yml")["jobs"]["comment"]
    checkout = next(
        s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/checkout")
    )
    assert checkout["with"]["ref"] == "${{ github.event.pull_request.base.sha }}"
    download = next(s for s in job["steps"] if "download-artifact" in str(s.get("uses", "")))
    assert download["with"]["path"].startswith("${{ runner.temp }}/")
    step = next(s for s in job["steps"] if "publisher comment" in s.get("run", ""))
    assert step["env"]["PYTHONPATH"] == "${{ github.workspace }}"
    assert step["env"]["PREVIEWS"] == download["with"]["path"]
    commands = [
        line.strip()
        for s in job["steps"]
        for line in str(s.get("run", "")).splitlines()
        if line.strip().startswith(("python", "bash", "publisher"))
    ]
    assert [c.split()[:3] for c in commands] == [
        ["python", "-m", "pip"],
        ["bash", ".github/scripts/preview-comment.sh", '"$by_name"'],
        ["python", "-m", "publisher"],
    ]


def _publisher_commands(script: str) -> list[list[str]]:
    """The `publisher ...` command lines of a script, with shell variables filled in."""
    commands = []
    for line in script.splitlines():
        line = line.strip().removeprefix("python -m ")
        if not line.startswith("publisher "):
            continue
        words = shlex.split(line.replace('"${args[@]}"', ""))[1:]
        commands.append([("recipes/x.yaml" if w.startswith("$") else w) for w in words])
    return commands


def test_publisher_commands_in_workflows_parse() -> None:
    """Every `publisher` command line the workflows run is one the CLI accepts."""
    from publisher.settings import parse_stages

    parser = build_parser()
    seen = set()
    for _, data in all_files():
        for step in steps_of(data):
            for argv in _publisher_commands(step.get("run") or ""):
                if argv[0].startswith("-"):
                    continue  # publisher --version
                args = parser.parse_args(argv)
                seen.add(argv[0])
                if argv[0] == "run" and args.stages:
                    assert "push" not in parse_stages(args.stages)
    assert {"changed", "validate", "plan", "card", "comment", "run", "push"} <= seen
    # the flags publish.yml adds to its argument array
    parser.parse_args(
        shlex.split(
            "run recipes/x.yaml --device cuda --out runs/x --push --create-pr "
            "--eval-suite tiny --eval-limit 10"
        )
    )
    args = parser.parse_args(
        shlex.split("run recipes/x.yaml --out runs/x --on hf-jobs --flavor l40sx4")
    )
    assert (args.on, args.flavor) == ("hf-jobs", "l40sx4")


def test_publish_runner_choice() -> None:
    """The runner comes from the input, else the variable PUBLISHER_RUNNER, else self-hosted;
    the per-recipe concurrency group holds for both."""
    data = load(WORKFLOWS / "publish.yml")
    step = next(s for s in data["jobs"]["recipes"]["steps"] if s.get("id") == "runner")
    assert step["env"]["RUNNER"] == "${{ inputs.runner || vars.PUBLISHER_RUNNER || 'self-hosted' }}"
    assert data["jobs"]["recipes"]["outputs"]["runner"] == "${{ steps.runner.outputs.runner }}"
    jobs = data["jobs"]
    hf = jobs["hf-jobs"]
    # Exactly one path runs: the GPU build and its pushes, or the Hugging Face Jobs job.
    for name in ("build", "push", "push-oidc"):
        assert "needs.recipes.outputs.runner != 'hf-jobs'" in jobs[name]["if"], name
    for name in ("hf-jobs-prepare", "hf-jobs"):
        assert "needs.recipes.outputs.runner == 'hf-jobs'" in jobs[name]["if"], name
    # One publish of a recipe at a time, whichever path: the push jobs' group.
    assert hf["concurrency"] == jobs["push"]["concurrency"]
    assert hf["environment"]["name"] == "hub-publish" and hf["permissions"] == {"contents": "read"}
    run = next(s for s in hf["steps"] if s.get("id") == "run")
    assert "--on hf-jobs" in run["run"] and "PUBLISHER_HF_FLAVOR" in run["env"]["FLAVOR"]
    for value, ok in (("self-hosted", True), ("hf-jobs", True), ("gpu", False)):
        done = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", step["run"]],
            env={**os.environ, "RUNNER": value, "GITHUB_OUTPUT": os.devnull},
            capture_output=True,
            text=True,
        )
        assert (done.returncode == 0) is ok, value


# ---------------------------------------------------------------------------------------------
# the linters


def _tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def _lint_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"GH_TOKEN", "GITHUB_TOKEN"}}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_actionlint() -> None:
    tool = _tool("actionlint")
    if tool is None:
        pytest.skip("actionlint is not installed: pip install -r .github/requirements-lint.txt")
    done = subprocess.run(
        [tool, "-color=false"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=_lint_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_zizmor() -> None:
    tool = _tool("zizmor")
    if tool is None:
        pytest.skip("zizmor is not installed: pip install -r .github/requirements-lint.txt")
    done = subprocess.run(
        [tool, "--offline", "--persona", "pedantic", "--format", "plain", str(GITHUB_DIR)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=_lint_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No findings to report" in done.stdout
