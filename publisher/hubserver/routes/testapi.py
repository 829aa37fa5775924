"""The test API (`--test-api`): inject faults and read counters over HTTP, for tests and
demos in another process. Served only when asked for."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from publisher.hubserver.context import hub_of
from publisher.hubserver.faults import FAULT_ACTIONS
from publisher.hubserver.protocol import json_body
from publisher.hubserver.store import InvalidRequest

router = APIRouter(prefix="/_publisher")


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
    try:
        rule = faults.add(
            body.get("method"),
            str(body.get("path", body.get("path_pattern", ""))),
            action,  # type: ignore[arg-type]
            int(body.get("times", 1)),
        )
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(str(exc)) from exc
    return {"added": rule.__dict__}


@router.delete("/faults")
def clear_faults(request: Request) -> dict[str, Any]:
    faults = hub_of(request).faults
    faults.clear()
    return faults.as_json()


@router.get("/stats")
def get_stats(request: Request) -> dict[str, Any]:
    return hub_of(request).stats.as_json()


@router.delete("/stats")
def reset_stats(request: Request) -> dict[str, Any]:
    stats = hub_of(request).stats
    stats.reset()
    return stats.as_json()
