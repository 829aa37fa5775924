"""What every router of the local Hub reaches through the request: the store, the auth rule,
fault rules and counters (`hub_of(request)`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request

from publisher.hubserver.auth import Auth
from publisher.hubserver.faults import FaultInjector, HubStats
from publisher.hubserver.limits import LfsOffers
from publisher.hubserver.store import HubStore


@dataclass(frozen=True)
class HubContext:
    """The state one app serves from.

    Attributes:
        store: repos, commits, refs and blobs on disk.
        auth: which token is accepted, and as whom.
        faults: injected failures (the test API adds rules).
        stats: counters tests assert on.
        lfs_offers: the LFS uploads the batch call offered, the only ones a PUT may send.
    """

    store: HubStore
    auth: Auth
    faults: FaultInjector
    stats: HubStats
    lfs_offers: LfsOffers = field(default_factory=LfsOffers)


def hub_of(request: Request) -> HubContext:
    """The `HubContext` of the app serving `request`."""
    return request.app.state.hub
