"""Fault injection and traffic counters for the local Hub, as one ASGI middleware.

A `FaultInjector` holds rules: "the next `times` requests whose method is `method` and whose
path matches `path_pattern` get `action`". Actions:

- `"500"`, `"429"`, `"402"`, `"403"`: answer that status with a JSON error, without running the
  endpoint (402 and 403 are how the Hub refuses a job for billing or quota).
- `"drop"`: read the first chunk of the request body (mid-upload for a PUT), then close the
  connection without a response. The endpoint never runs; the client sees "Server disconnected
  without sending a response" (httpx: `RemoteProtocolError`), or a write error mid-upload.
- `"drop_after"`: run the endpoint (the change happens), then close the connection the same way:
  the response is lost. This is the case where a retried commit would commit twice.
- `"cut"`: run the endpoint, send its status and the first chunk of its body, then close the
  connection mid-body: a stream (a job's log) that breaks off after some events.

`HubStats` counts what tests want to assert: LFS bytes the upload endpoint received, every commit
made, and every request with the status it got (or `"dropped"`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("publisher.hubserver")

FaultAction = Literal["500", "429", "402", "403", "drop", "drop_after", "cut"]
FAULT_ACTIONS: tuple[str, ...] = ("500", "429", "402", "403", "drop", "drop_after", "cut")
_STATUS_ACTIONS = ("500", "429", "402", "403")


@dataclass
class FaultRule:
    """One injected fault.

    Attributes:
        method: HTTP method to match (`"PUT"`), or None for any.
        path_pattern: regular expression searched (`re.search`) in the URL-decoded request path.
            Example: `r"\\.git/info/lfs/objects/[0-9a-f]{64}$"` (an LFS upload).
        action: an HTTP status (`"500"`, `"429"`, `"402"`, `"403"`), `"drop"`, `"drop_after"` or
            `"cut"` (see the module docstring).
        times: how many matching requests get the fault; 0 or less means every one, forever.
        fired: how many requests got it so far.
    """

    method: str | None
    path_pattern: str
    action: FaultAction
    times: int = 1
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return re.search(self.path_pattern, path) is not None

    @property
    def exhausted(self) -> bool:
        return self.times > 0 and self.fired >= self.times


@dataclass(frozen=True)
class FiredFault:
    """A fault that was applied: `method`, `path`, `action`."""

    method: str
    path: str
    action: FaultAction


class FaultInjector:
    """Thread-safe list of `FaultRule`s; the first live matching rule fires on a request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rules: list[FaultRule] = []
        self.fired: list[FiredFault] = []

    def add(
        self,
        method: str | None,
        path_pattern: str,
        action: FaultAction,
        times: int = 1,
    ) -> FaultRule:
        """Add a rule: the next `times` requests matching `method` and `path_pattern` get
        `action`. Returns the rule, whose `fired` counts how often it applied."""
        if action not in FAULT_ACTIONS:
            raise ValueError(
                f"unknown fault action {action!r}: use one of {', '.join(FAULT_ACTIONS)}"
            )
        re.compile(path_pattern)  # fail now, not on the first request
        rule = FaultRule(method.upper() if method else None, path_pattern, action, times)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule (the `fired` log stays)."""
        with self._lock:
            self.rules.clear()

    def take(self, method: str, path: str) -> FaultRule | None:
        """The rule that applies to this request, counted as fired; None when none does."""
        with self._lock:
            for rule in self.rules:
                if not rule.exhausted and rule.matches(method, path):
                    rule.fired += 1
                    self.fired.append(FiredFault(method, path, rule.action))
                    return rule
        return None

    def as_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "rules": [asdict(r) for r in self.rules],
                "fired": [asdict(f) for f in self.fired],
            }


@dataclass(frozen=True)
class CommitRecord:
    """A commit the server made.

    Attributes:
        repo_id: e.g. `"publisher-demo/tiny-merge"`.
        commit_id: 40 hex digits.
        ref: the ref it landed on: `"refs/heads/main"`, `"refs/pr/1"`, ...
        parents: its parent commit ids.
        title: the commit summary.
        pr_num: the pull request it opened, if any.
        added: paths added or changed.
        deleted: paths removed.
    """

    repo_id: str
    commit_id: str
    ref: str
    parents: list[str]
    title: str
    pr_num: int | None
    added: list[str]
    deleted: list[str]


@dataclass(frozen=True)
class RequestRecord:
    """A request the server saw: `method`, URL-decoded `path`, and `status` (an HTTP status, or
    `"dropped"` when the connection was closed on purpose)."""

    method: str
    path: str
    status: int | str


@dataclass
class HubStats:
    """Counters for tests. Reset with `reset()`.

    Attributes:
        lfs_bytes_uploaded: bytes of LFS content read by the LFS upload endpoint (PUT), whether
            or not the upload then verified. Zero after a commit means no LFS bytes were re-sent.
        lfs_objects_uploaded: LFS objects stored after their sha256 and size checked out.
        commits: every commit made (`CommitRecord`), oldest first.
        requests: the last 10,000 requests (`RequestRecord`), oldest first.
    """

    lfs_bytes_uploaded: int = 0
    lfs_objects_uploaded: int = 0
    commits: list[CommitRecord] = field(default_factory=list)
    requests: deque[RequestRecord] = field(default_factory=lambda: deque(maxlen=10_000))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_lfs_bytes(self, n: int) -> None:
        with self._lock:
            self.lfs_bytes_uploaded += n

    def add_lfs_object(self) -> None:
        with self._lock:
            self.lfs_objects_uploaded += 1

    def add_commit(self, record: CommitRecord) -> None:
        with self._lock:
            self.commits.append(record)

    def add_request(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)

    def count(self, method: str, path_pattern: str) -> int:
        """How many requests with `method` had a path matching `path_pattern` (`re.search`)."""
        with self._lock:
            return sum(
                1 for r in self.requests if r.method == method and re.search(path_pattern, r.path)
            )

    def reset(self) -> None:
        with self._lock:
            self.lfs_bytes_uploaded = 0
            self.lfs_objects_uploaded = 0
            self.commits.clear()
            self.requests.clear()

    def as_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "lfs_bytes_uploaded": self.lfs_bytes_uploaded,
                "lfs_objects_uploaded": self.lfs_objects_uploaded,
                "commits": [asdict(c) for c in self.commits],
                "requests": [asdict(r) for r in self.requests],
            }


class FaultMiddleware:
    """ASGI middleware: records every request in `stats` and applies `faults`."""

    def __init__(self, app: ASGIApp, faults: FaultInjector, stats: HubStats) -> None:
        self.app = app
        self.faults = faults
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        status: dict[str, int | str] = {"status": 0}

        def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["status"] = message["status"]

        rule = self.faults.take(method, path)
        try:
            if rule is None:
                await self.app(scope, receive, _tap(send, record))
            elif rule.action in _STATUS_ACTIONS:
                code = int(rule.action)
                logger.info("fault injected: %s %s -> %d", method, path, code)
                await _send_json(send, code, {"error": f"Injected fault: HTTP {code}"})
                status["status"] = code
            elif rule.action == "drop":
                logger.info("fault injected: %s %s -> connection dropped", method, path)
                await receive()  # the first chunk of the body: the upload is cut mid-way
                await _drop(send)
                status["status"] = "dropped"
            elif rule.action == "cut":
                logger.info("fault injected: %s %s -> cut after the first chunk", method, path)
                try:
                    await self.app(scope, receive, _cut_after_first_chunk(send, record))
                except Exception as exc:  # the endpoint stopped by `_Cut`, maybe in a group
                    if not _is_cut(exc):
                        raise
                status["status"] = "cut"
            else:  # drop_after: the endpoint runs, its answer is lost
                logger.info("fault injected: %s %s -> ran, then connection dropped", method, path)

                async def swallow(message: Message) -> None:
                    record(message)

                await self.app(scope, receive, swallow)
                await _drop(send)
                status["status"] = "dropped"
        except BaseException:
            status["status"] = status["status"] or 500
            raise
        finally:
            self.stats.add_request(RequestRecord(method, path, status["status"]))


class _Cut(Exception):
    """Raised into the endpoint to stop it once its first body chunk went out."""


def _is_cut(exc: BaseException) -> bool:
    inner = getattr(exc, "exceptions", None)  # an (anyio) exception group, Python 3.10 too
    if isinstance(inner, (list, tuple)) and inner:
        return all(_is_cut(e) for e in inner)
    return isinstance(exc, _Cut)


def _cut_after_first_chunk(send: Send, observe: Callable[[Message], None]) -> Send:
    """A `send` that passes the response start and one body chunk (marked as not the last),
    then stops the endpoint: the server closes the unfinished response. It closes at once, not
    at the endpoint's next chunk, so a silent stream (a job waiting) breaks off too."""

    async def cut(message: Message) -> None:
        observe(message)
        if message["type"] != "http.response.body":
            await send(message)
            return
        await send({**message, "more_body": True})
        raise _Cut

    return cut


def _tap(send: Send, observe: Callable[[Message], None]) -> Send:
    async def tapped(message: Message) -> None:
        observe(message)
        await send(message)

    return tapped


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _drop(send: Send) -> None:
    """Close the connection without a response.

    The response is marked started with an informational status that HTTP/1.1 servers cannot
    send as a final one: uvicorn's h11 protocol refuses it before writing a byte, and uvicorn
    then closes the connection of a response that was started but never completed ("ASGI
    callable returned without completing response"). The client sees "Server disconnected
    without sending a response" (httpx: `RemoteProtocolError`).
    """
    with contextlib.suppress(Exception):
        await send({"type": "http.response.start", "status": 100, "headers": []})
