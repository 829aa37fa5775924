"""Bearer tokens on the local Hub: any token is accepted (as one user) unless a specific one is
configured. Reads of public repos need no token; writes always need one."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from publisher.hubserver.records import RepoState
from publisher.hubserver.store import HubStore, HubStoreError, RepoNotFound

DEFAULT_USER = "publisher-demo"
"""The user name whoami answers for any accepted token."""

_INVALID_TOKEN = "Invalid credentials in Authorization header"


class Unauthorized(HubStoreError):
    status = 401


class Auth:
    """Who a request is. `token`: the only token accepted, or None for any; `name`: the user
    an accepted token stands for."""

    def __init__(self, token: str | None, user: str) -> None:
        self.token = token
        self.name = user

    def user(self, request: Request) -> str | None:
        """The user behind the request's token; None without one; 401 for a rejected one."""
        header = request.headers.get("authorization")
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            raise Unauthorized(_INVALID_TOKEN)
        if self.token is not None and not hmac.compare_digest(value, self.token):
            raise Unauthorized(_INVALID_TOKEN)
        return self.name

    def require(
        self,
        request: Request,
        what: str,
        *,
        repo_id: str | None = None,
        store: HubStore | None = None,
    ) -> str:
        """The user, or 401 when there is none; with `repo_id`, also 404 if it does not exist."""
        name = self.user(request)
        if name is None:
            raise Unauthorized(f"You must be authenticated to {what}: pass a token (HF_TOKEN)")
        if repo_id is not None and store is not None and not store.repo_exists(repo_id):
            raise RepoNotFound(f"Repository {repo_id} not found")
        return name

    def readable(self, request: Request, store: HubStore, repo_id: str) -> RepoState:
        """The repo's state if the request may read it; otherwise 404 (as the Hub hides private
        repos)."""
        if not store.repo_exists(repo_id):
            raise RepoNotFound(f"Repository {repo_id} not found")
        state = store.get_repo(repo_id)
        if state.private and self.user(request) is None:
            raise RepoNotFound(f"Repository {repo_id} not found")
        return state
