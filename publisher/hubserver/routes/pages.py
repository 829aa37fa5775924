"""The HTML pages a browser sees: the index of repos, a model's page (its card next to a
metadata panel, at any revision) and the commit URL a commit answer links to."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from publisher.hubserver.context import HubContext, hub_of
from publisher.hubserver.page import (
    PageFile,
    PageView,
    card_fields,
    eval_rows,
    render_index,
    render_markdown,
    render_page,
    split_front_matter,
)
from publisher.hubserver.records import RepoState
from publisher.hubserver.store import (
    MAIN_BRANCH,
    HubStore,
    RepoNotFound,
    RevisionNotFound,
)

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def index(request: Request) -> HTMLResponse:
    return HTMLResponse(render_index(_visible_repos(hub_of(request), request)))


@router.get("/{ns}/{name}/commit/{oid}")
def commit_page(ns: str, name: str, oid: str) -> RedirectResponse:
    """The `commitUrl` of a commit answer: the model page at that commit."""
    return RedirectResponse(f"/{ns}/{name}?revision={quote(oid, safe='')}")


@router.get("/{ns}/{name}", response_class=HTMLResponse)
def model_page(ns: str, name: str, request: Request) -> HTMLResponse:
    hub = hub_of(request)
    revision = request.query_params.get("revision") or MAIN_BRANCH
    try:
        state = hub.auth.readable(request, hub.store, f"{ns}/{name}")
        view = _page_view(hub.store, state, revision)
    except (RepoNotFound, RevisionNotFound) as exc:
        return HTMLResponse(render_index(_visible_repos(hub, request), str(exc)), status_code=404)
    return HTMLResponse(render_page(view))


def _visible_repos(hub: HubContext, request: Request) -> list[str]:
    signed_in = hub.auth.user(request) is not None
    return [r for r in hub.store.list_repos() if signed_in or not hub.store.get_repo(r).private]


def _page_view(store: HubStore, state: RepoState, revision: str) -> PageView:
    commit = store.resolve(state.repo_id, revision)
    resolve_base = f"/{state.repo_id}/resolve/{quote(revision, safe='')}/"
    readme = commit.tree.get("README.md")
    card_data: dict[str, Any] = {}
    body, error = "", ""
    if readme is not None:
        text = store.read_blob(readme.sha256).decode("utf-8", "replace")
        card_data, body, error = split_front_matter(text)
    base_models, license_id, tags = card_fields(card_data)
    return PageView(
        repo_id=state.repo_id,
        revision=revision,
        commit=commit.id,
        last_modified=commit.date,
        private=state.private,
        card_html=render_markdown(body, resolve_base),
        has_card=readme is not None,
        base_models=base_models,
        license=license_id,
        tags=tags,
        eval_rows=eval_rows(card_data),
        files=[
            PageFile(path, e.size, e.lfs, resolve_base + quote(path, safe="/"))
            for path, e in sorted(commit.tree.items())
        ],
        pull_requests=[
            (pr.num, pr.title)
            for _, pr in sorted(state.pulls.items(), key=lambda kv: int(kv[0]))
            if pr.status == "open"
        ],
        front_matter_error=error,
    )
