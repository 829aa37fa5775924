"""The one error family: every failure the user can act on is a `PublisherError`.

Each stage keeps its own subclass where it is raised (`recipe.RecipeError`, `merge.MergeError`,
`hub.HubError`, ...), so callers can catch one stage's failures, and the CLI catches the base:
one plain `error: ...` line (or `FILE:LINE:COL` lines for a recipe) and exit 1. Anything else
that escapes is a bug, shown as "unexpected".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from publisher.recipe_yaml import Problem


class PublisherError(Exception):
    """A failure the user can act on; the message says what happened and what to do.

    Attributes:
        problems: where in a recipe the failure is, when it is there (e.g. the line naming a
            parent that cannot be merged); the CLI annotates each on its file and line in
            GitHub Actions. Empty for a failure that no recipe line causes.
    """

    problems: Sequence[Problem] = ()


class CommandError(PublisherError):
    """A command's own input or environment is wrong (a flag, git, the GitHub API)."""
