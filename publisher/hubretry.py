"""How a Hub call fails: which failures are retried and how long to wait, how many times one
LFS object is sent, and what each failure tells the user to do.

huggingface_hub already retries what it sends with `http_backoff` (LFS batch and uploads,
preupload, downloads), so `with_retries` covers only what it sends once (metadata reads, repo
creation, the commit), and `bounded_uploads` stops the library's retry loop after
`UPLOAD_ATTEMPTS` sends of one LFS object: a permanent failure then costs at most twice the
upload, not the product of the layers. `publisher.hub` pushes through these.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

RETRY_STATUS = {408, 429, 500, 502, 503, 504}  # huggingface_hub's http_backoff's
RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)
RETRY_AFTER_CAP = 60.0
# Sends of one LFS object per push, the library's own retries included.
UPLOAD_ATTEMPTS = 2


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of a huggingface_hub error, else None."""
    from huggingface_hub.errors import HfHubHTTPError

    return exc.response.status_code if isinstance(exc, HfHubHTTPError) else None


def is_transient(exc: BaseException) -> bool:
    """429, 5xx, or the connection failed (httpx's transport errors: dropped, timed out)."""
    import httpx2

    status = status_of(exc)
    if status is not None:
        return status in RETRY_STATUS
    if isinstance(exc, (httpx2.TransportError, ConnectionError, TimeoutError)):
        return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and cause is not exc and is_transient(cause)


def caused_by(exc: BaseException | None, kind: type[E]) -> E | None:
    """`exc` or the first exception in its cause chain that is a `kind`."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        if isinstance(exc, kind):
            return exc
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return None


def _retry_after(exc: BaseException) -> float | None:
    # The Hub's 429 answers say how long to wait; honour that (capped) over our own backoff.
    response = getattr(exc, "response", None)
    value = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
    try:
        return min(float(value), RETRY_AFTER_CAP) if value is not None else None
    except ValueError:
        return None


def with_retries(
    what: str,
    call: Callable[[], T],
    log: Callable[[str], None] = print,
    delays: tuple[float, ...] | None = None,
    succeeded: Callable[[], T | None] | None = None,
) -> T:
    """Run `call`, retrying transient failures (429, 5xx, dropped connections) with backoff.

    Only for calls that huggingface_hub sends once (it retries the others itself) and that are
    safe to repeat: reads, repo creation with `exist_ok`, and commits guarded by
    `parent_commit`. For a call that is
    not (opening a Hub pull request), `succeeded` looks for its effect after a failure: when it
    returns a value, the first attempt landed although its answer was lost, and that value is
    returned instead of trying again. `delays` defaults to `RETRY_DELAYS`.
    """
    delays = RETRY_DELAYS if delays is None else delays
    for attempt in range(len(delays) + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == len(delays) or not is_transient(exc):
                raise
            if succeeded is not None and (done := succeeded()) is not None:
                return done
            status = status_of(exc)
            reason = f"HTTP {status}" if status else type(exc).__name__
            wait = _retry_after(exc) or delays[attempt]
            log(f"  {what}: {reason}, retrying in {wait:.0f}s ({attempt + 1}/{len(delays)})")
            time.sleep(wait)
    raise AssertionError("unreachable")


@dataclass
class _UploadBudget:
    """Counts the LFS uploads (PUTs) huggingface_hub sends and refuses one more than `limit`
    sends of one object, which ends the library's own retry loop (`http_backoff` retries only
    network errors and retryable statuses, not this)."""

    limit: int
    sent: dict[str, int] = field(default_factory=dict)
    stored: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_request(self, request: Any) -> None:
        if request.method != "PUT":
            return
        url = str(request.url)
        with self.lock:
            self.sent[url] = self.sent.get(url, 0) + 1
            if self.sent[url] > self.limit:
                raise UploadsSpent(url, self.limit)

    def on_response(self, response: Any) -> None:
        if response.request.method == "PUT" and response.status_code < 300:
            with self.lock:
                self.stored.add(str(response.request.url))


class UploadsSpent(Exception):
    """One LFS object was sent `limit` times without the Hub taking it."""

    def __init__(self, url: str, limit: int):
        super().__init__(f"the upload to {url} failed {limit} times")


@contextlib.contextmanager
def bounded_uploads(limit: int) -> Iterator[_UploadBudget]:
    """huggingface_hub's shared HTTP client, with the `_UploadBudget` hooked in for the block."""
    from huggingface_hub.utils import get_session

    budget = _UploadBudget(limit)
    session = get_session()
    hooks = session.event_hooks
    session.event_hooks = {
        "request": [*hooks.get("request", []), budget.on_request],
        "response": [*hooks.get("response", []), budget.on_response],
    }
    try:
        yield budget
    finally:
        session.event_hooks = {
            kind: [h for h in hs if h not in (budget.on_request, budget.on_response)]
            for kind, hs in session.event_hooks.items()
        }


def http_message(exc: Exception, repo_id: str) -> str:
    """What a failed Hub request means for `repo_id`, and what to do about it."""
    status = status_of(exc)
    if status == 401:
        return "the Hub rejected the token (401); check HF_TOKEN or your login"
    if status == 403:
        return f"the token may not write to {repo_id} (403); use a token with write access to it"
    if status == 404:
        return f"{repo_id} or its revision was not found on the Hub (404)"
    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if status == 429:
        return (
            f"the Hub is rate-limiting requests (429) and still was after retries: {first_line}. "
            "Wait a few minutes, then push again"
        )
    if status is not None and status >= 500:
        return (
            f"the Hub had a server error ({status}) and still did after retries: {first_line}. "
            "Check https://status.huggingface.co and push again later"
        )
    return f"Hub request failed ({status or 'no status'}): {first_line}"
