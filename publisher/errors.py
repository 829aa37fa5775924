"""The one error family: every failure the user can act on is a `PublisherError`.

Each stage keeps its own subclass where it is raised (`recipe.RecipeError`, `merge.MergeError`,
`hub.HubError`, ...), so callers can catch one stage's failures, and the CLI catches the base:
one plain `error: ...` line (or `FILE:LINE:COL` lines for a recipe) and exit 1. Anything else
that escapes is a bug, shown as "unexpected".
"""

from __future__ import annotations


class PublisherError(Exception):
    """A failure the user can act on; the message says what happened and what to do."""


class CommandError(PublisherError):
    """A command's own input or environment is wrong (a flag, git, the GitHub API)."""
