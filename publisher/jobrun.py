"""What runs inside the Hugging Face Jobs that `publisher run --on hf-jobs` starts.

Two jobs per run, so that recipe-controlled code never runs next to the write credential:

- `build` (the GPU flavor, **no token**): the pipeline's stages on the recipe bundle, writing the
  run directory into a read-write bucket volume (`/out/run`). Templates and custom tasks run here.
Hub parents are mounted in both jobs as read-only model volumes at their locked revisions
(`/parents/<n>`), so neither downloads them: the finish job's weight check reads the very files
the build merged.

- `finish` (a small CPU flavor, the token as the job secret `HF_TOKEN`): reads the build's run
  directory from the same bucket, read-only, copies it, plans again from the recipe in the
  bundle (the plan in the bucket was written where recipe code ran, so it is not trusted), checks
  the weights against that plan and the card against the reports (`verify_run`) in a child
  process whose environment holds no token (it renders the recipe's card templates), pushes
  when asked and only if that passed, and uploads the run record (never the weights) to the private
  staging repo, where the local command fetches it. With `record_only` (the build failed or
  timed out) it uploads the record and does nothing else.

Both read their settings from `$PUBLISHER_JOB` (JSON, see `JobSpec`); nothing user-controlled is
on their command line. Mounts sit at `/bundle` and `/out`, under `$HF_JOB_ROOT` on the local Hub.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from publisher.recipe import Recipe
    from publisher.settings import Settings

SPEC_ENV = "PUBLISHER_JOB"
BUNDLE_MOUNT = "/bundle"
OUT_MOUNT = "/out"
# Hub parents, each mounted read-only at its locked revision under /parents/<n>.
PARENTS_MOUNT = "/parents"
RUN_SUBDIR = "run"
# The run record: what comes back to the local run directory (never `merged/`).
RECORD_FILES = (
    "manifest.json",
    "recipe.yaml",
    "recipe.lock.json",
    "plan.json",
    "smoke.json",
    "eval/results.json",
    "weights.json",
    "verify.json",
    "README.md",
    "card.json",
    "schedule.png",
)


@dataclass
class JobSpec:
    """Everything a job needs to know, passed as JSON in `$PUBLISHER_JOB`.

    Attributes:
        run_id: names the bucket folder and the record folder, e.g. `"tiny-demo-20260101-ab12cd"`.
        recipe: the recipe's path inside the bundle, e.g. `"recipes/tiny-demo-slerp.yaml"`.
        src: the directory inside the bundle that holds the `publisher` package, e.g. `"."`.
        staging: the private Hub repo holding bundles and records, e.g. `"me/publisher-jobs"`.
        options: `publisher.settings.Overrides` fields from the command line (paths relative
            to the bundle).
        push: push after verify passed (finish job).
        record_only: the build failed: bring the record back, verify and push nothing.
        parent_mounts: Hub parent reference -> where its repo is mounted, at the locked
            revision, e.g. `{"org/base": "/parents/0"}`; both jobs read the weights there.
    """

    run_id: str
    recipe: str
    src: str = "."
    staging: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    push: bool = False
    record_only: bool = False
    parent_mounts: dict[str, str] = field(default_factory=dict)

    def mounted_parents(self) -> dict[str, Path]:
        """The parents' mounts as paths in this job."""
        return {ref: mount(path) for ref, path in self.parent_mounts.items()}

    def to_env(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> JobSpec:
        raw = (os.environ if environ is None else environ).get(SPEC_ENV)
        if not raw:
            raise SystemExit(f"${SPEC_ENV} is not set: this module runs inside a publisher job")
        return cls(**json.loads(raw))

    @property
    def record_path(self) -> str:
        return f"runs/{self.run_id}"


def mount(path: str) -> Path:
    """A volume's path in this job: `/bundle`, or under `$HF_JOB_ROOT` on the local Hub."""
    return Path(os.environ.get("HF_JOB_ROOT", "") + path)


def _say(text: str) -> None:
    print(text, flush=True)


# -- build --------------------------------------------------------------------------------------


def build(spec: JobSpec) -> int:
    """Run plan → verify on the bundle; the run directory lands in the bucket. Exit 1 on failure
    (the manifest names the failed stage)."""
    from publisher.errors import PublisherError
    from publisher.pipeline import run_pipeline
    from publisher.recipe import load_recipe

    bundle = mount(BUNDLE_MOUNT)
    run_dir = mount(OUT_MOUNT) / RUN_SUBDIR
    device = _device()
    _say(f"publisher build job: {spec.recipe} on {device}, run {spec.run_id}")
    try:
        recipe = load_recipe(bundle / spec.recipe)
        settings = build_settings(spec, recipe, bundle, device)
        run_pipeline(recipe, run_dir, settings, log=_say, mounted_parents=spec.mounted_parents())
    except PublisherError as exc:
        _say(f"error: {exc}")
        return 1
    _say("build finished: every stage passed")
    return 0


def build_settings(spec: JobSpec, recipe: Recipe, bundle: Path, device: str) -> Settings:
    """The build job's `Settings`: the recipe in the bundle with the flags the command line
    gave, and nothing else. A merge option neither sets stays unset, so the merge stage tunes
    it for this job's hardware (`publisher.merge_tuning`) and records why in the manifest."""
    from publisher.settings import Overrides, resolve_settings

    options = dict(spec.options)
    if options.get("templates_dir"):
        options["templates_dir"] = str(bundle / options["templates_dir"])
    return resolve_settings(recipe, Overrides(**options, device=device, push=False))


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# -- finish -------------------------------------------------------------------------------------


def finish(spec: JobSpec) -> int:
    """Verify again (in a child process without the token), push if asked and verified, upload
    the record."""
    from huggingface_hub import get_token

    from publisher.errors import PublisherError

    token = get_token()
    if not token:
        _say("error: the finish job has no HF_TOKEN secret")
        return 1
    source = mount(OUT_MOUNT) / RUN_SUBDIR
    work = Path(tempfile.mkdtemp(prefix="publisher-finish-")) / RUN_SUBDIR
    if not source.is_dir():
        _say(f"error: the build left no run directory in the bucket ({source})")
        return 1
    shutil.copytree(source, work, symlinks=False)
    code = 0
    if not spec.record_only:
        try:
            code = _verify_without_token(work)
            if code == 0 and spec.push:
                _push(spec, work)
        except PublisherError as exc:
            _say(f"error: {exc}")
            code = 1
    try:
        _upload_record(spec, work, token)
    except PublisherError as exc:
        _say(f"error: the record was not uploaded: {exc}")
        return 1
    return code


def _verify_without_token(work: Path) -> int:
    """Run `_verify` in a child process whose environment holds no Hub token or other secret
    (`publisher.isolation.child_environment`): it renders the recipe's card templates, and
    recipe-controlled files never render where the write credential is."""
    from publisher.isolation import run_without_token

    return 0 if run_without_token(["-m", "publisher.jobrun", "verify", str(work)]) == 0 else 1


def _verify(spec: JobSpec, work: Path) -> int:
    """Plan again from the bundle's recipe, check the weights and the card (`verify_run`), and
    record the outcome in the run's manifest; 0 when verify passed."""
    from publisher.card import resolve_templates_dir
    from publisher.hub import fetch_parents
    from publisher.manifest import Manifest
    from publisher.parents import resolve_parents
    from publisher.recipe import load_recipe
    from publisher.rundir import RunDir
    from publisher.schedule import build_plan, write_plan
    from publisher.verify import verify_run

    bundle = mount(BUNDLE_MOUNT)
    recipe = load_recipe(bundle / spec.recipe)
    run = RunDir(work)
    manifest = Manifest(run.manifest)
    parents = resolve_parents(recipe)
    # The bucket's files were written where recipe code ran: the recipe, its lock and the plan
    # that verify reads come from the bundle instead.
    shutil.copyfile(recipe.path, run.recipe)
    if recipe.lock_path.exists():
        shutil.copyfile(recipe.lock_path, run.lock)
    write_plan(build_plan(recipe, parents), run.plan)
    passed = {
        name for name, rec in manifest.data["stages"].items() if rec.get("status") != "failed"
    }
    # No weights report from the bucket: verify re-merges itself. The card is rendered again
    # from card.json with the templates the build used (the recipe's, or the run's option).
    templates = spec.options.get("templates_dir")
    report = verify_run(
        run,
        fetch_parents(recipe, parents, log=_say, mounted=spec.mounted_parents()),
        dtype=recipe.merge.get("dtype"),  # the trusted recipe's, not the bucket's copy
        out_dtype=recipe.merge.get("out_dtype"),
        expect_smoke="smoke" in passed,
        expect_eval="eval" in passed,
        templates_dir=resolve_templates_dir(recipe, bundle / templates if templates else None),
    )
    report.write(run.verify)
    verify_record = manifest.data["stages"].get("verify") or {}
    verify_record.update(status="ok" if report.passed else "failed", error=None)
    if not report.passed:
        verify_record["error"] = "; ".join(report.failures[:5])
    manifest.data["stages"]["verify"] = verify_record
    manifest.save()
    _say(f"verify (push job): {'passed' if report.passed else 'FAILED'}")
    if not report.passed:
        for failure in report.failures[:5]:
            _say(f"  {failure}")
        return 1
    return 0


def _push(spec: JobSpec, work: Path) -> None:
    """Push the verified run as data (the upload's allow-list and secret scan)."""
    from publisher.hub import push_run
    from publisher.manifest import Manifest
    from publisher.recipe import load_recipe
    from publisher.rundir import RunDir
    from publisher.settings import Overrides, resolve_settings

    recipe = load_recipe(mount(BUNDLE_MOUNT) / spec.recipe)
    # Where to push comes from the trusted bundle's recipe and the command line, resolved
    # here: never from the manifest the build job wrote.
    given = {k: spec.options.get(k) for k in ("repo_id", "create_pr", "private")}
    target = resolve_settings(recipe, Overrides(**given)).hub
    result = push_run(work, **target.model_dump(), log=_say)
    manifest = Manifest(RunDir(work).manifest)
    manifest.data["push"] = result.as_dict()
    manifest.save()


def _upload_record(spec: JobSpec, work: Path, token: str) -> None:
    """The record files (no weights) to `staging/runs/<run_id>/`, in one commit."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from publisher.upload import environment_secrets, scan_secrets

    files = {name: work / name for name in RECORD_FILES if (work / name).is_file()}
    scan_secrets(files, {**environment_secrets(), "HF_TOKEN": token})
    HfApi(token=token).create_commit(
        repo_id=spec.staging,
        operations=[
            CommitOperationAdd(f"{spec.record_path}/{name}", str(path))
            for name, path in files.items()
        ],
        commit_message=f"publisher run record {spec.run_id}",
    )
    _say(f"record uploaded: {len(files)} files")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["build"], ["finish"]):
        spec = JobSpec.from_env()
        return build(spec) if args[0] == "build" else finish(spec)
    if len(args) == 2 and args[0] == "verify":  # finish's child, without the token
        from publisher.errors import PublisherError

        try:
            return _verify(JobSpec.from_env(), Path(args[1]))
        except PublisherError as exc:
            _say(f"error: {exc}")
            return 1
    _say("usage: python -m publisher.jobrun build|finish  (settings in $PUBLISHER_JOB)")
    return 2


if __name__ == "__main__":
    sys.exit(main())
