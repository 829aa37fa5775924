"""Jobs: the part of the Hub's Jobs API that huggingface_hub calls (`run_job`, `inspect_job`,
`list_jobs`, `fetch_job_logs`, `cancel_job`, `list_jobs_hardware`), and bucket creation, which a
job's read-write bucket volume needs (`create_bucket`). Jobs run as local subprocesses: see
`publisher.hubserver.jobrunner`.

The log stream is Server-Sent Events, one `data: {"data": line, "timestamp": ...}` event per
line, replayed from the first line on every connection (the client skips what it already saw
when it reconnects) and closed once the job is over.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from publisher.hubserver.context import hub_of
from publisher.hubserver.jobrunner import LocalJob, LocalJobs
from publisher.hubserver.protocol import base_url, json_body
from publisher.hubserver.store import HubStoreError, validate_repo_id

router = APIRouter()

# How long one wait for new log lines lasts before the stream checks on its client again.
_LOG_POLL_S = 0.5


class JobNotFound(HubStoreError):
    status = 404


def _jobs(request: Request) -> LocalJobs:
    return request.app.state.jobs


def _user(request: Request, what: str) -> str:
    return hub_of(request).auth.require(request, what)


def _job(request: Request, ns: str, job_id: str) -> LocalJob:
    _user(request, "read a job")
    job = _jobs(request).get(ns, job_id)
    if job is None:
        raise JobNotFound(f"Job {job_id} not found")
    return job


@router.get("/api/jobs/hardware")
def hardware(request: Request) -> list[dict[str, Any]]:
    return _jobs(request).hardware()


@router.post("/api/jobs/{ns}")
async def create_job(ns: str, request: Request) -> dict[str, Any]:
    _user(request, "run a job")
    spec = await json_body(request)
    job = await run_in_threadpool(_jobs(request).create, ns, spec, base_url(request))
    return job.to_json()


@router.get("/api/jobs/{ns}")
def list_jobs(ns: str, request: Request) -> list[dict[str, Any]]:
    _user(request, "list jobs")
    return [job.to_json() for job in _jobs(request).list(ns)]


@router.get("/api/jobs/{ns}/{job_id}")
def inspect_job(ns: str, job_id: str, request: Request) -> dict[str, Any]:
    return _job(request, ns, job_id).to_json()


@router.post("/api/jobs/{ns}/{job_id}/cancel")
async def cancel_job(ns: str, job_id: str, request: Request) -> dict[str, Any]:
    job = _job(request, ns, job_id)
    await run_in_threadpool(_jobs(request).cancel, job)
    return job.to_json()


@router.get("/api/jobs/{ns}/{job_id}/logs")
def job_logs(ns: str, job_id: str, request: Request, tail: int | None = None) -> StreamingResponse:
    job = _job(request, ns, job_id)
    jobs = _jobs(request)

    async def events() -> AsyncIterator[bytes]:
        seen = max(0, len(job.lines) - tail) if tail is not None else 0
        while True:
            lines, done = await run_in_threadpool(jobs.wait_for_lines, job, seen, _LOG_POLL_S)
            seen += len(lines)
            if lines:
                yield b"".join(_event(ts, text) for ts, text in lines)
            if done and not lines:
                return
            if await request.is_disconnected():
                return

    return StreamingResponse(events(), media_type="text/event-stream")


@router.post("/api/buckets/{ns}/{name}")
def create_bucket(ns: str, name: str, request: Request) -> JSONResponse:
    _user(request, "create a bucket")
    bucket_id = validate_repo_id(f"{ns}/{name}")
    url = f"{base_url(request)}/buckets/{bucket_id}"
    directory = _jobs(request).bucket_dir(bucket_id)
    if directory.exists():
        return JSONResponse({"error": f"Bucket {bucket_id} already exists", "url": url}, 409)
    directory.mkdir(parents=True)
    return JSONResponse({"url": url, "name": bucket_id, "id": bucket_id})


def _event(timestamp: str, text: str) -> bytes:
    return b"data: " + json.dumps({"data": text, "timestamp": timestamp}).encode() + b"\n\n"
