"""A local Hub-compatible server that the unmodified huggingface_hub client talks to.

Point a client at it with `HF_ENDPOINT=<endpoint>` and `HF_HUB_DISABLE_XET=1` (or, in-process,
with `hub_client_env`, which also patches the settings huggingface_hub froze at import). It serves
model repos: create/delete, model info, refs, tree and paths-info listings, commit history,
preupload, the Git LFS batch/upload/verify API, NDJSON commits (with `parentCommit` checks and
`create_pr`), branch creation, PR merge, file downloads (`resolve`) and HTML pages.

Modules: `store` (repos, commits, refs, blobs on disk), `records` (what it stores), `app`
(`create_app`, which wires the routers of `routes/`: `repos`, `commits`, `downloads`, `prs`,
`jobs`, `pages`, `testapi`), `auth` (tokens), `context` (what a handler reaches through the
request), `protocol` (the Hub's URL, body and error conventions), `limits` (request body bounds),
`faults` (fault injection and counters), `page` (the model page), `jobrunner` (jobs as local
subprocesses), `server` (running it).
"""

from publisher.hubserver.app import create_app
from publisher.hubserver.auth import DEFAULT_USER
from publisher.hubserver.faults import (
    CommitRecord,
    FaultInjector,
    FaultRule,
    FiredFault,
    HubStats,
    RequestRecord,
)
from publisher.hubserver.server import (
    LocalHub,
    client_constants,
    client_environment,
    hub_client_env,
    main_serve,
    serve,
)
from publisher.hubserver.store import HubStore

__all__ = [
    "DEFAULT_USER",
    "CommitRecord",
    "FaultInjector",
    "FaultRule",
    "FiredFault",
    "HubStats",
    "HubStore",
    "LocalHub",
    "RequestRecord",
    "client_constants",
    "client_environment",
    "create_app",
    "hub_client_env",
    "main_serve",
    "serve",
]
