"""Pull requests: the discussions list (`get_repo_discussions`), merging
(`merge_pull_request`), and the discussion URL a commit answer links to."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from publisher.hubserver.context import hub_of
from publisher.hubserver.protocol import json_body

router = APIRouter()


@router.get("/api/models/{ns}/{name}/discussions")
def discussions(ns: str, name: str, request: Request) -> dict[str, Any]:
    # Pull requests are the only discussions this server has; one page holds them all.
    hub, repo_id = hub_of(request), f"{ns}/{name}"
    state = hub.auth.readable(request, hub.store, repo_id)
    kind = request.query_params.get("type", "all")
    status = request.query_params.get("status", "all")
    pulls = [] if kind == "discussion" else sorted(state.pulls.values(), key=lambda p: -p.num)
    if status != "all":
        pulls = [p for p in pulls if p.status == status]
    items = [
        {
            "num": p.num,
            "title": p.title,
            "status": p.status,
            "isPullRequest": True,
            "createdAt": p.created_at,
            "author": {"name": p.author},
            "repo": {"name": repo_id, "type": "model"},
        }
        for p in pulls
    ]
    return {"discussions": items, "count": len(items), "start": 0, "numItemsPerPage": 50}


@router.post("/api/models/{ns}/{name}/discussions/{num}/merge")
async def merge(ns: str, name: str, num: int, request: Request) -> dict[str, Any]:
    hub, repo_id = hub_of(request), f"{ns}/{name}"
    author = hub.auth.require(request, "merge pull requests", repo_id=repo_id, store=hub.store)
    body = await json_body(request, empty_ok=True)
    merged = await run_in_threadpool(
        lambda: hub.store.merge_pull_request(
            repo_id, num, author=author, comment=str(body.get("comment") or "")
        )
    )
    return {"commitOid": merged.id}


@router.get("/{ns}/{name}/discussions/{num}")
def discussion_page(ns: str, name: str, num: int) -> RedirectResponse:
    """The `pr_url` of a commit answer: the model page at the pull request's revision."""
    return RedirectResponse(f"/{ns}/{name}?revision={quote(f'refs/pr/{num}', safe='')}")
