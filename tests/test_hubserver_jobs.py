"""The local Hub's Jobs API, driven by huggingface_hub's own `run_job`, `fetch_job_logs`,
`wait_for_job`, `cancel_job` and `list_jobs_hardware` over HTTP."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import HfApi, Volume
from huggingface_hub.errors import HfHubHTTPError

from publisher.hubserver import LocalHub, hub_client_env

TOKEN = "hf_local_jobs_token"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[LocalHub]:
    hub = LocalHub(tmp_path / "hub-data", token=TOKEN).start()
    yield hub
    hub.stop(wait=False)


@pytest.fixture
def api(hub: LocalHub, tmp_path: Path) -> Iterator[HfApi]:
    with hub_client_env(hub.endpoint, token=TOKEN, hf_home=tmp_path / "hf-home"):
        yield HfApi()


def test_hardware_listing_parses_with_prices(api: HfApi) -> None:
    flavors = {hw.name: hw for hw in api.list_jobs_hardware()}
    assert flavors["a10g-large"].accelerator.model == "A10G"
    assert flavors["l40sx8"].accelerator.quantity == "8"
    assert flavors["cpu-basic"].accelerator is None
    assert flavors["a100-large"].unit_label == "minute"
    assert round(flavors["a100-large"].unit_cost_usd * 60, 2) == 2.50


class _TouchOnRetry(logging.Handler):
    """Creates `marker` when huggingface_hub announces it will reconnect a broken log stream."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = marker

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Retrying"):
            self.marker.touch()


def test_job_runs_with_secret_in_env_only_and_logs_survive_a_cut_stream(
    api: HfApi, hub: LocalHub, tmp_path: Path
) -> None:
    secret = "s3cret-value-123"
    reconnecting = tmp_path / "reconnecting"
    # "two" waits until the client, having seen the cut and the job still running, says it will
    # reconnect: it stops following a job that finished meanwhile, so a timed sleep here made the
    # test depend on the machine's load.
    wait = f"until [ -e {reconnecting} ]; do sleep 0.05; done"
    job = api.run_job(
        image="python:3.12",
        command=["sh", "-c", f'echo one; printf "%s" "$MY_SECRET" | wc -c; {wait}; echo two'],
        secrets={"MY_SECRET": secret},
        env={"PLAIN": "x"},
        timeout=60,
    )
    assert secret not in str(job) and job.secrets == {"MY_SECRET": None}
    hub.faults.add("GET", r"/api/jobs/.+/logs$", "cut")  # the first stream breaks off
    hf_api_logger = logging.getLogger("huggingface_hub.hf_api")
    handler = _TouchOnRetry(reconnecting)
    hf_api_logger.addHandler(handler)
    try:
        lines = list(api.fetch_job_logs(job_id=job.id, follow=True))
    finally:
        hf_api_logger.removeHandler(handler)
    assert lines == ["one", str(len(secret)), "two"]  # each line once, though it reconnected
    assert hub.stats.count("GET", r"/logs$") >= 2
    done = api.inspect_job(job_id=job.id)
    assert done.status.stage == "COMPLETED" and done.finished_at is not None
    assert secret not in str(done)


def test_failed_job_is_error_with_exit_code(api: HfApi) -> None:
    job = api.run_job(image="x", command=["sh", "-c", "echo boom; exit 3"])
    done = api.wait_for_job(job.id, timeout=20, poll_interval=0.1)
    assert done.status.stage == "ERROR" and "exit code: 3" in done.status.message


def test_job_past_its_timeout_is_killed(api: HfApi) -> None:
    start = time.monotonic()
    job = api.run_job(image="x", command=["sh", "-c", "echo start; sleep 30"], timeout=1)
    done = api.wait_for_job(job.id, timeout=20, poll_interval=0.1)
    assert done.status.stage == "ERROR" and done.status.message == "Job timeout"
    assert time.monotonic() - start < 10


def test_cancel_kills_the_process_group(api: HfApi, tmp_path: Path) -> None:
    marker = tmp_path / "child-survived"
    # A child process of the job's shell must die with it.
    script = f"(sleep 1; touch {marker}) & echo started; wait"
    job = api.run_job(image="x", command=["sh", "-c", script])
    api.wait_for_job(job.id, stages=["RUNNING"], timeout=20, poll_interval=0.05)
    api.cancel_job(job_id=job.id)
    assert api.wait_for_job(job.id, timeout=20, poll_interval=0.1).status.stage == "CANCELED"
    time.sleep(1.3)
    assert not marker.exists()


def test_volumes_repo_at_revision_read_only_and_bucket_read_write(
    api: HfApi, hub: LocalHub
) -> None:
    api.create_repo("publisher-demo/inputs", private=True)
    first = api.upload_file(
        path_or_fileobj=b"v1", path_in_repo="sub/a.txt", repo_id="publisher-demo/inputs"
    )
    api.upload_file(
        path_or_fileobj=b"v2", path_in_repo="sub/a.txt", repo_id="publisher-demo/inputs"
    )
    api.create_bucket("publisher-demo/out", exist_ok=True, private=True)
    volumes = [
        Volume(
            type="model",
            source="publisher-demo/inputs",
            revision=first.oid,
            path="sub",
            mount_path="/in",
        ),
        Volume(type="bucket", source="publisher-demo/out", path="run1", mount_path="/out"),
    ]
    script = 'cat "${HF_JOB_ROOT:-}/in/a.txt" > "${HF_JOB_ROOT:-}/out/copy.txt"'
    job = api.run_job(image="x", command=["sh", "-c", script], volumes=volumes)
    assert api.wait_for_job(job.id, timeout=20, poll_interval=0.1).status.stage == "COMPLETED"
    assert (hub.data_dir / "buckets/publisher-demo/out/run1/copy.txt").read_text() == "v1"


def test_refusals(api: HfApi) -> None:
    with pytest.raises(HfHubHTTPError) as err:
        api.run_job(image="x", command=["true"], flavor="h100x9")
    assert err.value.response.status_code == 400
    with pytest.raises(HfHubHTTPError) as err:
        api.inspect_job(job_id="0" * 24)
    assert err.value.response.status_code == 404
    with pytest.raises(HfHubHTTPError) as err:
        api.run_job(image="x", command=["true"], token=False, namespace="publisher-demo")
    assert err.value.response.status_code == 401
