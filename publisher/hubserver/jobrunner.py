"""The local Hub's Jobs: each job's command runs as a local subprocess, as in a fresh container.

What a Hugging Face Job gets, and what stands in for it here:

- the image: ignored. The command runs in this server's Python environment (its `bin/` first on
  `PATH`), as if the image held exactly that environment.
- volumes: a model repo is copied out at its revision (read-only files); a bucket is a directory
  under the server's data dir (`buckets/<namespace>/<name>/<path>`), linked in read-write. The
  Hub mounts them at absolute paths (`/bundle`); a local process cannot, so everything is placed
  under the job's own root directory, whose path is in `$HF_JOB_ROOT` (unset on the real Hub, so
  `"${HF_JOB_ROOT:-}/bundle"` names the mount in both places).
- the environment: a clean one (`HOME`, `HF_HOME` inside the job's root, `HF_ENDPOINT` pointing
  back at this server), plus the job's `environment` and its `secrets`. Secrets reach the process
  only as environment variables, never on its command line, and are never answered back.
- bounds: at most `max_running` jobs run at once (the others wait in `SCHEDULING`), each is killed
  with its whole process group at its `timeoutSeconds` (stage `ERROR`, message `Job timeout`) or
  on cancel (stage `CANCELED`), and its log keeps at most `max_log_lines` lines.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from publisher.hubserver.store import HubStore, InvalidRequest, validate_repo_id

TERMINAL_STAGES = ("COMPLETED", "CANCELED", "ERROR", "DELETED")
DEFAULT_TIMEOUT_S = 30 * 60  # the Hub's default for a job without `timeoutSeconds`
TIMEOUT_MESSAGE = "Job timeout"
JOB_ROOT_ENV = "HF_JOB_ROOT"
# Variables a local process needs that a container would have had from its image.
_PASSTHROUGH_ENV = ("LANG", "LC_ALL", "TMPDIR", "OMP_NUM_THREADS", "HF_DATASETS_OFFLINE")


@dataclass(frozen=True)
class Hardware:
    """One flavor of the hardware listing (`GET /api/jobs/hardware`).

    Prices are US dollars per hour as listed on https://huggingface.co/pricing (Spaces and Jobs
    hardware, 2025); the Hub answers them per minute in micro-dollars, and so does this server.
    """

    name: str
    pretty_name: str
    cpu: str
    ram: str
    usd_per_hour: float
    gpu: str | None = None
    gpus: int = 0
    vram: str | None = None

    def to_json(self) -> dict[str, Any]:
        micro = round(self.usd_per_hour * 1_000_000 / 60)
        accelerator = None
        if self.gpu:
            accelerator = {
                "type": "gpu",
                "model": self.gpu,
                "quantity": str(self.gpus),
                "vram": self.vram,
                "manufacturer": "Nvidia",
            }
        return {
            "name": self.name,
            "prettyName": self.pretty_name,
            "cpu": self.cpu,
            "ram": self.ram,
            "accelerator": accelerator,
            "unitCostMicroUSD": micro,
            "unitCostUSD": micro / 1_000_000,
            "unitLabel": "minute",
        }


HARDWARE: tuple[Hardware, ...] = (
    Hardware("cpu-basic", "CPU Basic", "2 vCPU", "16 GB", 0.01),
    Hardware("cpu-upgrade", "CPU Upgrade", "8 vCPU", "32 GB", 0.03),
    Hardware("t4-small", "Nvidia T4 - small", "4 vCPU", "15 GB", 0.40, "T4", 1, "16 GB"),
    Hardware("t4-medium", "Nvidia T4 - medium", "8 vCPU", "30 GB", 0.60, "T4", 1, "16 GB"),
    Hardware("l4x1", "1x Nvidia L4", "8 vCPU", "30 GB", 0.80, "L4", 1, "24 GB"),
    Hardware("l4x4", "4x Nvidia L4", "48 vCPU", "186 GB", 3.80, "L4", 4, "96 GB"),
    Hardware("a10g-small", "Nvidia A10G - small", "4 vCPU", "15 GB", 1.00, "A10G", 1, "24 GB"),
    Hardware("a10g-large", "Nvidia A10G - large", "12 vCPU", "46 GB", 1.50, "A10G", 1, "24 GB"),
    Hardware(
        "a10g-largex2", "2x Nvidia A10G - large", "24 vCPU", "92 GB", 3.00, "A10G", 2, "48 GB"
    ),
    Hardware(
        "a10g-largex4", "4x Nvidia A10G - large", "48 vCPU", "184 GB", 5.00, "A10G", 4, "96 GB"
    ),
    Hardware("l40sx1", "1x Nvidia L40S", "8 vCPU", "62 GB", 1.80, "L40S", 1, "48 GB"),
    Hardware("l40sx4", "4x Nvidia L40S", "48 vCPU", "382 GB", 8.30, "L40S", 4, "192 GB"),
    Hardware("l40sx8", "8x Nvidia L40S", "192 vCPU", "1534 GB", 23.50, "L40S", 8, "384 GB"),
    Hardware("a100-large", "Nvidia A100 - large", "12 vCPU", "142 GB", 2.50, "A100", 1, "80 GB"),
)


@dataclass
class LocalJob:
    """One job: its spec as the client sent it, its stage, its log, its process."""

    id: str
    owner: str
    spec: dict[str, Any]
    created_at: str
    stage: str = "SCHEDULING"
    message: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    lines: list[tuple[str, str]] = field(default_factory=list)  # (timestamp, text)
    dropped_lines: int = 0
    process: subprocess.Popen[bytes] | None = None
    cancel_requested: bool = False

    @property
    def done(self) -> bool:
        return self.stage in TERMINAL_STAGES

    def to_json(self) -> dict[str, Any]:
        spec = self.spec
        image_key = "spaceId" if "spaceId" in spec else "dockerImage"
        return {
            "id": self.id,
            "createdAt": self.created_at,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            image_key: spec.get(image_key),
            "command": spec.get("command"),
            "arguments": spec.get("arguments", []),
            "environment": spec.get("environment", {}),
            # The Hub never answers a secret's value back; the names say which were set.
            "secrets": {name: None for name in spec.get("secrets") or {}},
            "flavor": spec.get("flavor"),
            "labels": spec.get("labels"),
            "volumes": spec.get("volumes"),
            "timeoutSeconds": spec.get("timeoutSeconds"),
            "status": {"stage": self.stage, "message": self.message},
            "owner": {"id": _owner_id(self.owner), "name": self.owner, "type": "user"},
        }


class LocalJobs:
    """The jobs of one local Hub: create, inspect, log lines, cancel; thread-safe."""

    def __init__(
        self,
        data_dir: Path,
        store: HubStore,
        *,
        max_running: int = 2,
        max_log_lines: int = 100_000,
        kill_grace_s: float = 3.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.store = store
        self.max_log_lines = max_log_lines
        self.kill_grace_s = kill_grace_s
        self._jobs: dict[str, LocalJob] = {}
        self._slots = threading.Semaphore(max_running)
        self._changed = threading.Condition()

    # -- the API -----------------------------------------------------------------------------

    def hardware(self) -> list[dict[str, Any]]:
        return [hw.to_json() for hw in HARDWARE]

    def create(self, owner: str, spec: dict[str, Any], endpoint: str) -> LocalJob:
        """Check the spec, start the job in the background, return it (stage SCHEDULING)."""
        _check_spec(spec)
        job = LocalJob(id=secrets.token_hex(12), owner=owner, spec=spec, created_at=_now())
        with self._changed:
            self._jobs[job.id] = job
        thread = threading.Thread(
            target=self._run, args=(job, endpoint), name=f"local-job-{job.id}", daemon=True
        )
        thread.start()
        return job

    def get(self, owner: str, job_id: str) -> LocalJob | None:
        with self._changed:
            job = self._jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    def list(self, owner: str) -> list[LocalJob]:
        with self._changed:
            return [job for job in self._jobs.values() if job.owner == owner]

    def cancel(self, job: LocalJob) -> None:
        """Stop the job: kill its process group if it runs; stage CANCELED."""
        with self._changed:
            if job.done:
                return
            job.cancel_requested = True
            process = job.process
            if process is None:  # still waiting for a slot: it never starts
                self._finish(job, "CANCELED", None)
        if process is not None:
            self._kill(process)
            with self._changed:  # canceled once the process is gone, as the Hub answers next
                if not job.done:
                    self._finish(job, "CANCELED", None)

    def wait_for_lines(self, job: LocalJob, seen: int, timeout: float) -> tuple[list, bool]:
        """Lines after the first `seen`, waiting up to `timeout` for some; and whether the job is
        over (no more lines will come)."""
        with self._changed:
            if len(job.lines) <= seen and not job.done:
                self._changed.wait(timeout)
            return job.lines[seen:], job.done

    def shutdown(self) -> None:
        """Kill every running job (the server is stopping)."""
        with self._changed:
            running = [job for job in self._jobs.values() if not job.done]
        for job in running:
            self.cancel(job)

    # -- running one job ---------------------------------------------------------------------

    def _run(self, job: LocalJob, endpoint: str) -> None:
        with self._slots:
            with self._changed:
                if job.done:  # canceled while scheduling
                    return
            try:
                root = self._prepare(job)
                env = self._environment(job, root, endpoint)
                process = subprocess.Popen(  # noqa: S603 - the job's own command, as the Hub runs it
                    list(job.spec["command"]) + list(job.spec.get("arguments") or []),
                    cwd=root,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: killed whole
                )
            except (OSError, InvalidRequest, ValueError) as exc:
                with self._changed:
                    self._finish(job, "ERROR", f"Job failed to start: {exc}")
                return
            with self._changed:
                job.process, job.stage, job.started_at = process, "RUNNING", _now()
                self._append(job, f"===== Job started at {job.started_at} =====")
                if job.cancel_requested:
                    self._kill(process)
            reader = threading.Thread(target=self._read, args=(job, process), daemon=True)
            reader.start()
            timeout = float(job.spec.get("timeoutSeconds") or DEFAULT_TIMEOUT_S)
            timed_out = False
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                self._kill(process)
            reader.join(10)
            with self._changed:
                if job.done:  # canceled: `cancel` has already said so
                    return
                if job.cancel_requested:
                    self._finish(job, "CANCELED", None)
                elif timed_out:
                    self._finish(job, "ERROR", TIMEOUT_MESSAGE)
                elif process.returncode == 0:
                    self._finish(job, "COMPLETED", None)
                else:
                    self._finish(job, "ERROR", f"Job failed with exit code: {process.returncode}")

    def _read(self, job: LocalJob, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            with self._changed:
                self._append(job, raw.decode("utf-8", "replace").rstrip("\r\n"))

    def _append(self, job: LocalJob, text: str) -> None:
        """Add a log line (lock held) and wake the log streams."""
        if len(job.lines) >= self.max_log_lines:
            job.dropped_lines += 1
            return
        job.lines.append((_now(), text))
        self._changed.notify_all()

    def _finish(self, job: LocalJob, stage: str, message: str | None) -> None:
        job.stage, job.message, job.finished_at = stage, message, _now()
        self._changed.notify_all()

    def _kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM the job's process group, SIGKILL it after the grace period."""
        for sig, wait in ((signal.SIGTERM, self.kill_grace_s), (signal.SIGKILL, None)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, sig)
            if wait is None:
                return
            try:
                process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    # -- the job's root: volumes and environment ---------------------------------------------

    def _prepare(self, job: LocalJob) -> Path:
        root = self.data_dir / "jobs" / job.id / "root"
        (root / "home").mkdir(parents=True)
        for volume in job.spec.get("volumes") or []:
            target = root / _mount_relpath(volume.get("mountPath", ""))
            target.parent.mkdir(parents=True, exist_ok=True)
            if volume.get("type") == "bucket":
                source = self.bucket_dir(volume["source"]) / _subpath(volume.get("path"))
                source.mkdir(parents=True, exist_ok=True)
                target.symlink_to(source, target_is_directory=True)
            elif volume.get("type") == "model":
                self._copy_repo(volume, target)
            else:
                raise InvalidRequest(f"volume type {volume.get('type')!r} is not served here")
        return root

    def bucket_dir(self, bucket_id: str) -> Path:
        validate_repo_id(bucket_id)
        return self.data_dir / "buckets" / bucket_id

    def _copy_repo(self, volume: dict[str, Any], target: Path) -> None:
        """A model repo at its revision, `path` prefix only, as read-only files under `target`."""
        commit = self.store.resolve(volume["source"], volume.get("revision") or "main")
        prefix = str(_subpath(volume.get("path")))
        prefix = "" if prefix == "." else prefix.rstrip("/") + "/"
        target.mkdir(parents=True, exist_ok=True)
        for path, entry in commit.tree.items():
            if not path.startswith(prefix):
                continue
            dest = target / path[len(prefix) :]
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.store.blob_path(entry.sha256), dest)
            dest.chmod(0o444)

    def _environment(self, job: LocalJob, root: Path, endpoint: str) -> dict[str, str]:
        from publisher.hubserver.server import client_environment

        bin_dir = str(Path(sys.executable).parent)
        env = {name: os.environ[name] for name in _PASSTHROUGH_ENV if name in os.environ}
        env.update(client_environment(endpoint, hf_home=root / "home" / ".cache" / "huggingface"))
        env.update(
            PATH=os.pathsep.join([bin_dir, os.environ.get("PATH", "/usr/bin:/bin")]),
            HOME=str(root / "home"),
            JOB_ID=job.id,
            ACCELERATOR="",
            CPU_CORES=str(os.cpu_count() or 1),
        )
        env[JOB_ROOT_ENV] = str(root)
        env.update({k: str(v) for k, v in (job.spec.get("environment") or {}).items()})
        env.update({k: str(v) for k, v in (job.spec.get("secrets") or {}).items()})
        return env


def _check_spec(spec: dict[str, Any]) -> None:
    command = spec.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
        raise InvalidRequest("command must be a non-empty list of strings")
    if not (spec.get("dockerImage") or spec.get("spaceId")):
        raise InvalidRequest("dockerImage or spaceId is required")
    flavor = spec.get("flavor") or "cpu-basic"
    if flavor not in {hw.name for hw in HARDWARE}:
        raise InvalidRequest(f"Invalid flavor: {flavor}")
    timeout = spec.get("timeoutSeconds")
    if timeout is not None and (not isinstance(timeout, int) or timeout <= 0):
        raise InvalidRequest("timeoutSeconds must be a positive integer")
    for key in ("environment", "secrets"):
        if not isinstance(spec.get(key) or {}, dict):
            raise InvalidRequest(f"{key} must be an object of names to values")
    volumes = spec.get("volumes") or []
    if not isinstance(volumes, list) or not all(isinstance(v, dict) for v in volumes):
        raise InvalidRequest("volumes must be a list of objects")
    for volume in volumes:
        _mount_relpath(str(volume.get("mountPath", "")))
        if volume.get("type") == "model":
            validate_repo_id(str(volume.get("source", "")))


def _mount_relpath(mount_path: str) -> Path:
    """`/bundle` → `bundle`; refuses relative paths and `..`."""
    pure = PurePosixPath(mount_path)
    if not pure.is_absolute() or ".." in pure.parts or len(pure.parts) < 2:
        raise InvalidRequest(f"Invalid mountPath {mount_path!r}: an absolute path like /data")
    return Path(*pure.parts[1:])


def _subpath(path: str | None) -> Path:
    pure = PurePosixPath(path or ".")
    if pure.is_absolute() or ".." in pure.parts:
        raise InvalidRequest(f"Invalid volume path {path!r}")
    return Path(pure)


def _owner_id(name: str) -> str:
    import hashlib

    return hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:24]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
