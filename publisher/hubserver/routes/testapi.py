"""The test API (`--test-api`): inject faults and read counters over HTTP, for tests and
demos in another process. Served only when asked for, and only to a request with an accepted
token."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, Request

from publisher.hubserver.context import hub_of
from publisher.hubserver.faults import FAULT_ACTIONS
from publisher.hubserver.protocol import json_body
from publisher.hubserver.store import InvalidRequest


def _authenticated(request: Request) -> None:
    hub_of(request).auth.require(request, "use the test API")


router = APIRouter(prefix="/_publisher", dependencies=[Depends(_authenticated)])


@router.get("/faults")
def list_faults(request: Request) -> dict[str, Any]:
    return hub_of(request).faults.as_json()


@router.post("/faults")
async def add_fault(request: Request) -> dict[str, Any]:
    faults = hub_of(request).faults
    body = await json_body(request)
    action = str(body.get("action", ""))
    if action not in FAULT_ACTIONS:
        raise InvalidRequest(f"action must be one of {', '.join(FAULT_ACTIONS)}")
    method, path = body.get("method"), body.get("path", body.get("path_pattern", ""))
    times = body.get("times", 1)
    if not isinstance(method, (str, type(None))) or not isinstance(path, str):
        raise InvalidRequest("'method' and 'path' must be strings")
    if not isinstance(times, int):
        raise InvalidRequest("'times' must be an integer")
    try:
        rule = faults.add(method, path, action, times)  # type: ignore[arg-type]
    except re.error as exc:
        raise InvalidRequest(f"'path' is not a regular expression: {exc}") from exc
    return {"added": rule.__dict__}


@router.get("/stats")
def get_stats(request: Request) -> dict[str, Any]:
    return hub_of(request).stats.as_json()
