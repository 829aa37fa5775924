"""`publisher run RECIPE --on hf-jobs`: the GPU stages as Hugging Face Jobs, the same run
directory as a local run.

1. Locally: check the token and the flavor, validate and plan (`--stages plan`), then pack the
   **bundle**: the `publisher` package and default templates of this checkout, its
   `pyproject.toml`, the recipe, its lock, its templates and custom task directories, and local
   parent directories, with their relative layout kept. The bundle goes to the private staging
   repo `<namespace>/publisher-jobs` under `bundles/<digest>/`, so the job runs exactly this
   checkout's code whatever GitHub can see (a private repository works) and at a pinned commit.
2. The **build** job (`--flavor`, no credential) mounts the bundle at that commit read-only,
   a folder of the private bucket `<namespace>/publisher-jobs` read-write and each Hub parent
   at its locked revision read-only, installs the project's dependencies unless the image has
   them, and runs plan → verify there.
3. The **finish** job (`--push-flavor`, the token as the secret `HF_TOKEN`) mounts the same
   parents, verifies again from the recipe, pushes only if that passed (and `--push` or
   `publish.push` asked), and uploads the run record to the staging repo (`runs/<run id>/`).
4. Locally: the record (manifest, plan, smoke, eval results, verify, card, image; not the
   weights) is downloaded into the run directory.

Both jobs' logs stream here live. Ctrl-C or SIGTERM (a cancelled workflow) cancels the job that
is running. `publisher.jobbundle` prepares and packs the bundle; `publisher.jobrun` is the job side.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import publisher
from publisher.jobbundle import (
    Bundle,
    JobsError,
    Launch,
    check_hub_parents,
    make_bundle,
    prepare_launch,
)
from publisher.jobrun import BUNDLE_MOUNT, OUT_MOUNT, PARENTS_MOUNT, RECORD_FILES, JobSpec
from publisher.recipe import Recipe
from publisher.report import Log, reporter
from publisher.settings import Overrides, resolve_settings

# A Python image with uv; the job installs the project's pinned dependencies into it (PyPI's
# Linux torch wheels are CUDA builds). Pass --image for one that already has them.
# Where `publisher run --on` (and `publisher demo --on`) runs the GPU stages.
RUNS_ON = ("local", "hf-jobs")
DEFAULT_IMAGE = "ghcr.io/astral-sh/uv:python3.12-bookworm"
DEFAULT_FLAVOR = "a10g-large"
DEFAULT_PUSH_FLAVOR = "cpu-upgrade"
DEFAULT_TIMEOUT = "6h"
STAGING_NAME = "publisher-jobs"
TAIL_LINES = 20
# Fixed text: every value it uses comes from the environment the job was given, never from
# string interpolation here. It installs dependencies only when the image lacks them, then runs
# the bundled publisher (PYTHONPATH) rather than any installed one. The check finds the packages
# without importing them: importing torch, transformers and mergekit costs seconds of CPU, which
# `python -m publisher.jobrun` pays again right after.
BOOTSTRAP = """set -eu
bundle="${HF_JOB_ROOT:-}/bundle"
src="$bundle/$PUBLISHER_JOB_SRC"
if ! python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" \\
    mergekit lm_eval transformers torch ${PUBLISHER_JOB_EXTRA:-} 2>/dev/null; then
  echo "installing the publisher's dependencies from $PUBLISHER_JOB_SRC/pyproject.toml"
  uv pip install --system --quiet -r "$src/pyproject.toml" ${PUBLISHER_JOB_EXTRA:-}
fi
export PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}"
exec python -m publisher.jobrun "$1"
"""


class JobFailed(JobsError):
    """A job ended in error: names the failed stage and shows the last log lines."""


class JobTimedOut(JobsError):
    """A job ran past its `--timeout` and was stopped."""


@dataclass(frozen=True)
class JobOptions:
    """How the jobs run.

    Attributes:
        flavor: hardware of the build job, e.g. `"a10g-large"` (`hf jobs hardware` lists them).
        timeout: the build job's limit: seconds, or with a unit, e.g. `"90m"`, `"2h"`.
        push_flavor: hardware of the finish job (verify, push; CPU is enough).
        image: the container image, e.g. `"ghcr.io/astral-sh/uv:python3.12-bookworm"`.
        namespace: where the jobs, the staging repo and the bucket live (default: the token's
            user).
    """

    flavor: str = DEFAULT_FLAVOR
    timeout: str = DEFAULT_TIMEOUT
    push_flavor: str = DEFAULT_PUSH_FLAVOR
    image: str = DEFAULT_IMAGE
    namespace: str | None = None


@dataclass
class JobsRun:
    """What happened: the jobs' ids and final stages, and the local run directory."""

    run_id: str
    run_dir: Path
    jobs: dict[str, str] = field(default_factory=dict)  # role -> job id
    stages: dict[str, str] = field(default_factory=dict)  # role -> final job stage


def parse_timeout(text: str) -> int:
    """`"90m"` → 5400 seconds; plain numbers are seconds. Raises `JobsError` when invalid."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(value) * units[unit]
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise JobsError(f"--timeout {text!r} is not a duration: use seconds or e.g. 90m, 2h")
    return int(seconds)


# -- checks before anything is started ------------------------------------------------------------


def require_token() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise JobsError(
            "no Hugging Face token: Jobs run under an account. Set HF_TOKEN (a token with the "
            "'job' and 'write' permissions) or run `hf auth login`"
        )
    return token


def check_flavors(api: Any, *flavors: str) -> None:
    """Each flavor must be in the Hub's hardware listing; the error lists the ones there are."""
    import difflib

    known = [hw.name for hw in _call(api.list_jobs_hardware)]
    for flavor in flavors:
        if flavor not in known:
            close = difflib.get_close_matches(flavor, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise JobsError(f"unknown flavor {flavor!r}{hint}; the Hub offers {', '.join(known)}")


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A Hub call, with quota and billing refusals turned into one plain error."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return fn(*args, **kwargs)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (402, 403, 429):
            what = {402: "billing", 403: "permission or quota", 429: "rate or quota limit"}
            raise JobsError(
                f"the Hub refused to run the job (HTTP {status}, {what[status]}): "
                f"{_server_message(exc)}. Check the account's billing and Jobs quota at "
                "https://huggingface.co/settings/billing and that the token may run jobs"
            ) from None
        if status == 401:
            raise JobsError("the Hub rejected the token (HTTP 401): set a valid HF_TOKEN") from None
        raise JobsError(f"the Hub answered HTTP {status}: {_server_message(exc)}") from None


def _server_message(exc: Any) -> str:
    return (getattr(exc, "server_message", None) or str(exc)).strip().splitlines()[0][:300]


# -- running -------------------------------------------------------------------------------------


def run_on_jobs(
    recipe: Recipe, run_dir: Path, given: Overrides, job: JobOptions, log: Log = print
) -> JobsRun:
    """`publisher run RECIPE --on hf-jobs`; raises a `JobsError` for each way it can fail."""
    report = reporter(log)
    resolve_settings(recipe, given)  # a bad flag fails here, before any job
    hub = _connect(job, report)
    launch, root = prepare_launch(recipe, run_dir, given, report)
    return _start(launch, root, run_dir, given, job, hub, report)


def launch_jobs(
    launch_file: Path,
    recipe: str,
    run_dir: Path,
    given: Overrides,
    job: JobOptions,
    log: Log = print,
) -> JobsRun:
    """`publisher run RECIPE --on hf-jobs --launch FILE`: start the jobs that a
    `--prepare` run listed, from this checkout, without loading the recipe (see `Launch`)."""
    report = reporter(log)
    launch = Launch.read(launch_file)
    root = Path(publisher.__file__).resolve().parent.parent
    if launch.src != ".":
        raise JobsError(
            f"{launch_file}: prepared outside a checkout ({launch.src!r}); prepare it in this one"
        )
    if (root / launch.recipe).resolve() != Path(recipe).resolve():
        raise JobsError(f"{launch_file} was prepared for {launch.recipe}, not {recipe}")
    check_hub_parents(launch, root)
    hub = _connect(job, report)
    return _start(launch, root, run_dir, given, job, hub, report)


@dataclass(frozen=True)
class _Hub:
    api: Any
    token: str
    namespace: str
    timeout: int


def _connect(job: JobOptions, report: Any) -> _Hub:
    """The token, the flavors and the namespace: checked before anything is started."""
    from huggingface_hub import HfApi

    token = require_token()
    report.mask(token)
    api = HfApi(token=token)
    timeout = parse_timeout(job.timeout)
    check_flavors(api, job.flavor, job.push_flavor)
    namespace = job.namespace or _call(api.whoami)["name"]
    return _Hub(api=api, token=token, namespace=namespace, timeout=timeout)


def _start(
    launch: Launch,
    root: Path,
    run_dir: Path,
    given: Overrides,
    job: JobOptions,
    hub: _Hub,
    report: Any,
) -> JobsRun:
    """Bundle, upload, run the build and finish jobs, bring the record back."""
    from huggingface_hub import Volume

    api, token, namespace, timeout = hub.api, hub.token, hub.namespace, hub.timeout
    staging = f"{namespace}/{STAGING_NAME}"
    run_id = (
        f"{Path(launch.recipe).stem[:40]}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-"
        f"{secrets.token_hex(3)}"
    )
    with tempfile.TemporaryDirectory(prefix="publisher-bundle-") as tmp:
        bundle = make_bundle(launch, root, Path(tmp))
        _call(api.create_repo, staging, private=True, exist_ok=True)
        commit = _call(
            api.upload_folder,
            repo_id=staging,
            folder_path=str(bundle.root),
            path_in_repo=f"bundles/{bundle.digest}",
            commit_message=f"publisher bundle {bundle.digest} for {run_id}",
        )
    _call(api.create_bucket, staging, private=True, exist_ok=True)
    report(f"bundle {bundle.digest} at {staging}@{commit.oid[:12]}; run {run_id}")
    parent_volumes = hub_parent_volumes(launch.hub_parents)
    spec = JobSpec(
        run_id=run_id,
        recipe=bundle.recipe,
        src=bundle.src,
        staging=staging,
        options=_job_options(given, bundle),
        push=launch.push if given.push is None else given.push,
        parent_mounts={ref: volume.mount_path for ref, volume in parent_volumes.items()},
    )
    bundle_volume = Volume(
        type="model",
        source=staging,
        revision=commit.oid,
        path=f"bundles/{bundle.digest}",
        mount_path=BUNDLE_MOUNT,
    )

    def out_volume(read_only: bool) -> Any:
        return Volume(
            type="bucket",
            source=staging,
            path=f"runs/{run_id}",
            mount_path=OUT_MOUNT,
            read_only=read_only,
        )

    result = JobsRun(run_id=run_id, run_dir=Path(run_dir))
    env = {"PUBLISHER_JOB_SRC": bundle.src}
    if launch.extra:
        env["PUBLISHER_JOB_EXTRA"] = launch.extra
    tail: deque[str] = deque(maxlen=TAIL_LINES)

    def start(role: str, flavor: str, read_only: bool, **job_secrets: str) -> Callable[[], Any]:
        # Called when the job starts: `spec` (record_only) is read then, not now.
        return lambda: api.run_job(
            image=job.image,
            command=["sh", "-c", BOOTSTRAP, "publisher-job", role],
            env={**env, "PUBLISHER_JOB": spec.to_env()},
            secrets=job_secrets or None,
            flavor=flavor,
            timeout=timeout,
            volumes=[bundle_volume, out_volume(read_only), *parent_volumes.values()],
            labels={"publisher-run": run_id, "publisher-role": role},
            namespace=namespace,
        )

    with _cancel_on_signal(api, namespace, result) as running:
        build = running("build", start("build", job.flavor, False), report, tail)
        spec.record_only = build.status.stage != "COMPLETED"
        finish = running(
            "finish",
            start("finish", job.push_flavor, True, HF_TOKEN=token),
            report,
            deque(maxlen=TAIL_LINES),
        )
    fetched = fetch_record(api, staging, spec.record_path, Path(run_dir))
    report(f"record: {len(fetched)} files back in {run_dir}")
    _raise_for(build, "build", timeout, tail, Path(run_dir), fetched)
    if finish.status.stage != "COMPLETED":
        stage = _failed_stage(Path(run_dir)) or "verify or push"
        raise JobFailed(
            f"the finish job ({finish.id}) ended {finish.status.stage}: {stage} did not pass; "
            f"nothing was pushed. Details: {Path(run_dir) / 'verify.json'}, {finish.url}"
        )
    return result


def hub_parent_volumes(hub_parents: dict[str, str]) -> dict[str, Any]:
    """Each Hub parent's repo (`{ref: locked revision}`) as a read-only model volume at that
    revision, by reference.

    Both jobs read the weights there: the build merges them and the finish job checks the merge
    against the same files, with no download in either (the Hub streams what is read).
    """
    from huggingface_hub import Volume

    return {
        ref: Volume(
            type="model",
            source=ref.partition("@")[0],
            revision=revision,
            mount_path=f"{PARENTS_MOUNT}/{number}",
            read_only=True,
        )
        for number, (ref, revision) in enumerate(hub_parents.items())
    }


def _job_options(given: Overrides, bundle: Bundle) -> dict[str, Any]:
    """The `Overrides` fields the job honours, with paths made bundle-relative: the job
    resolves the settings again against the bundle's recipe."""
    return {
        "eval_suite": given.eval_suite,
        "eval_limit": given.eval_limit,
        "eval_backend": given.eval_backend,
        "templates_dir": bundle.templates if given.templates_dir else None,
        "create_pr": given.create_pr,
        "repo_id": given.repo_id,
        "private": given.private,
        "merge": dict(given.merge),
    }


def _follow(api: Any, job: Any, namespace: str, log: Log, tail: deque[str]) -> Any:
    """Print the job's log lines as they come; return its final state."""
    from huggingface_hub.errors import HfHubHTTPError

    log(f"job {job.id} ({job.flavor}): {job.url}")
    try:
        for line in api.fetch_job_logs(job_id=job.id, namespace=namespace, follow=True):
            tail.append(line)
            log(f"  | {line}")
    except (HfHubHTTPError, OSError) as exc:  # the stream gave up: the job's state decides
        log(f"  (log stream lost: {exc}; waiting for the job)")
    except Exception as exc:  # httpx transport errors after huggingface_hub's retries
        log(f"  (log stream lost: {type(exc).__name__}; waiting for the job)")
    done = api.wait_for_job(job.id, namespace=namespace, poll_interval=1.0)
    log(
        f"job {job.id}: {done.status.stage}"
        + (f" ({done.status.message})" if done.status.message else "")
    )
    return done


@contextlib.contextmanager
def _cancel_on_signal(api: Any, namespace: str, result: JobsRun) -> Iterator[Callable[..., Any]]:
    """Yields `running(role, start, log, tail)`: starts a job, follows it to its end. Ctrl-C or
    SIGTERM meanwhile cancels the job and re-raises as `KeyboardInterrupt`."""
    current: dict[str, str] = {}

    def running(role: str, start: Callable[[], Any], log: Log, tail: deque[str]) -> Any:
        job = _call(start)
        current["id"] = job.id
        result.jobs[role] = job.id
        done = _follow(api, job, namespace, log, tail)
        result.stages[role] = str(done.status.stage)
        current.pop("id", None)
        return done

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = None
    with contextlib.suppress(ValueError):  # not the main thread: no handler, Ctrl-C only
        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield running
    except KeyboardInterrupt:
        job_id = current.get("id")
        if job_id:
            with contextlib.suppress(Exception):
                api.cancel_job(job_id=job_id, namespace=namespace)
            result.stages["cancelled"] = job_id
            print(f"cancelled job {job_id}", flush=True)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def fetch_record(api: Any, staging: str, record_path: str, run_dir: Path) -> list[str]:
    """Download the run record into `run_dir`; the names that came back."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    fetched = []
    run_dir.mkdir(parents=True, exist_ok=True)
    stale = dict.fromkeys(RECORD_FILES)
    for name in RECORD_FILES:
        try:
            path = hf_hub_download(
                staging, f"{record_path}/{name}", token=api.token, endpoint=api.endpoint
            )
        except (EntryNotFoundError, RepositoryNotFoundError):
            continue
        target = run_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        fetched.append(name)
        stale.pop(name)
    if "manifest.json" in fetched:  # what this run did not write is not this run's record
        for name in stale:
            (run_dir / name).unlink(missing_ok=True)
    return fetched


def _failed_stage(run_dir: Path) -> str | None:
    import json

    manifest = run_dir / "manifest.json"
    if not manifest.exists():
        return None
    stages = json.loads(manifest.read_text(encoding="utf-8")).get("stages") or {}
    for name, record in stages.items():
        if record.get("status") == "failed":
            return f"{name} ({record.get('error') or 'failed'})"
    return None


def _raise_for(
    build: Any, role: str, timeout: int, tail: deque[str], run_dir: Path, fetched: list[str]
) -> None:
    stage = str(build.status.stage)
    if stage == "COMPLETED":
        return
    message = build.status.message or ""
    last = "\n".join(f"  | {line}" for line in tail) or "  (no log lines)"
    where = f"the record is in {run_dir}" if fetched else "no record came back"
    if _timed_out(build, timeout):
        raise JobTimedOut(
            f"the {role} job ({build.id}) ran past its timeout of {timeout}s and was stopped; "
            f"{where}. Give it more time with --timeout (e.g. --timeout 4h) or a faster "
            f"--flavor. Last lines:\n{last}"
        )
    failed = _failed_stage(run_dir) or "no stage recorded a failure"
    raise JobFailed(
        f"the {role} job ({build.id}) ended {stage}{f' ({message})' if message else ''}; failed "
        f"stage: {failed}; nothing was pushed; {where}. Last lines:\n{last}"
    )


def _timed_out(job: Any, timeout: int) -> bool:
    message = (job.status.message or "").lower()
    if "timeout" in message or "timed out" in message:
        return True
    started, finished = job.started_at, job.finished_at
    return bool(started and finished and (finished - started).total_seconds() >= timeout)
