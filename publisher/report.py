"""How a stage talks to whoever runs it: progress lines, collapsible groups, secrets to mask.

Stages take a `log` argument. It is either a plain callable (`print`, `list.append`) or a
`Reporter`, which adds grouping and masking; `reporter(log)` gives every stage the full
interface either way. The CLI passes `actions.ActionsReporter` so that in GitHub Actions each
stage is a log group and an exchanged token is masked. Core modules never import the shells.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class Reporter(Protocol):
    """Progress, grouping and masking for one run."""

    def __call__(self, text: str) -> None:
        """One progress line, e.g. `"[2/6] merge ..."`."""

    def group(self, title: str) -> AbstractContextManager[None]:
        """Lines logged inside the block belong together (a collapsible group in Actions)."""

    def mask(self, secret: str) -> None:
        """`secret` (e.g. an exchanged Hub token) must never appear in any output."""


Log = Callable[[str], None] | Reporter


@dataclass(frozen=True)
class PlainReporter:
    """A `Reporter` over a plain callable: no groups, nothing to mask (no log is shared)."""

    log: Callable[[str], None] = print

    def __call__(self, text: str) -> None:
        self.log(text)

    def group(self, title: str) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def mask(self, secret: str) -> None:
        return None


def reporter(log: Log) -> Reporter:
    """`log` as a `Reporter` (a plain callable gets no-op groups and masking)."""
    return log if isinstance(log, Reporter) else PlainReporter(log)
