"""The command line's two streams: results on stdout, messages on stderr, and its exit codes.

Part of the CLI layer (`cli`, `cli_actions`): core modules report through a `log` or a
`publisher.report.Reporter` instead.
"""

from __future__ import annotations

import sys

from publisher.recipe_yaml import printable

EXIT_OK = 0
EXIT_FAIL = 1


def out(text: str = "") -> None:
    """One line of a command's output."""
    print(text, flush=True)


def err(text: str) -> None:
    """One message line, escaped."""
    # messages quote recipes, parents and servers: nothing in them may start a workflow
    # command (a newline, then `::error`) or drive the terminal
    print(printable(text), file=sys.stderr, flush=True)
