"""The local Hub as a FastAPI app: what huggingface_hub's `HfApi`, `hf_hub_download` and
`snapshot_download` call, for model repos, answered from a `HubStore`.

`create_app` wires the routers of `publisher.hubserver.routes`, one per concern: `repos`
(account, repo info, listings), `commits` (preupload, commit, branches, Git LFS), `downloads`
(resolve), `prs` (pull requests), `jobs` (Jobs, run as local subprocesses), `pages` (HTML).
Handlers reach the store through `context.hub_of(request)`; a `HubStoreError` anywhere
becomes the Hub's JSON error answer, and a body that is not JSON a 400.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from publisher.hubserver.auth import DEFAULT_USER, Auth
from publisher.hubserver.context import HubContext
from publisher.hubserver.faults import FaultInjector, FaultMiddleware, HubStats
from publisher.hubserver.jobrunner import LocalJobs
from publisher.hubserver.limits import BodyLimitMiddleware
from publisher.hubserver.protocol import error_response
from publisher.hubserver.routes import commits, downloads, jobs, pages, prs, repos, testapi
from publisher.hubserver.store import HubStore, HubStoreError

__all__ = ["DEFAULT_USER", "create_app"]


def create_app(
    data_dir: Path,
    token: str | None = None,
    faults: FaultInjector | None = None,
    *,
    user: str = DEFAULT_USER,
    stats: HubStats | None = None,
    test_api: bool = False,
) -> FastAPI:
    """The local Hub as a FastAPI app storing everything under `data_dir`.

    Args:
        data_dir: where repos and blobs live; a new app over the same directory sees the same
            repos.
        token: when set, the only bearer token accepted; otherwise any token is accepted.
            Reads of public repos need no token, writes need one.
        faults: rules for injected failures (a fresh, empty `FaultInjector` if None).
        user: the user name of whoever holds an accepted token. Writes may go to any namespace.
        stats: counters to update (a fresh `HubStats` if None).
        test_api: serve `/_publisher/faults` and `/_publisher/stats` (tests and demos only).

    The app's `state` holds `hub` (`HubContext`) and, for short, `store`, `faults`, `stats`
    and `user`; and `jobs` (`LocalJobs`: `jobs.shutdown()` when the server stops).
    """
    hub = HubContext(
        store=HubStore(Path(data_dir)),
        auth=Auth(token, user),
        faults=faults if faults is not None else FaultInjector(),
        stats=stats if stats is not None else HubStats(),
    )
    app = FastAPI(title="publisher local Hub", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.hub = hub
    app.state.store, app.state.faults, app.state.stats = hub.store, hub.faults, hub.stats
    app.state.user = user
    app.state.jobs = LocalJobs(Path(data_dir), hub.store)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(FaultMiddleware, faults=hub.faults, stats=hub.stats)  # the outer one
    app.add_exception_handler(HubStoreError, _store_error)  # type: ignore[arg-type]
    for malformed in (json.JSONDecodeError, UnicodeDecodeError):  # from `request.json()`
        app.add_exception_handler(malformed, _malformed_body)  # type: ignore[arg-type]
    if test_api:
        app.include_router(testapi.router)
    # The HTML pages come last: `/{ns}/{name}` would otherwise match `/_publisher/stats`.
    for module in (repos, commits, downloads, prs, jobs, pages):
        app.include_router(module.router)
    return app


async def _store_error(request: Request, exc: HubStoreError) -> JSONResponse:
    return error_response(exc.status, str(exc), exc.code)


async def _malformed_body(request: Request, exc: ValueError) -> JSONResponse:
    return error_response(400, f"the request body is not valid JSON: {exc}", None)
