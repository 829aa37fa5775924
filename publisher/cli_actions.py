"""The commands only GitHub Actions workflows run: `publisher changed` and `publisher comment`.

Part of the CLI layer: `publisher.cli` adds them to its parser (`add_commands`); what they do with
git, the job summary and the GitHub API lives in `publisher.actions`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path, PurePosixPath

from publisher import actions
from publisher.console import EXIT_OK, out
from publisher.errors import CommandError


def cmd_changed(args: argparse.Namespace) -> int:
    recipes = actions.changed_recipes(args.base, args.head)
    unsafe = [r for r in recipes if not actions.SAFE_RECIPE_NAME.match(PurePosixPath(r).name)]
    for path in unsafe:
        actions.annotate_error(
            "rename this recipe: file names may use only letters, digits, '.', '_' and '-'",
            title=f"unsafe recipe name: {path}",
        )
    if unsafe:
        raise CommandError(
            "recipe file names may use only letters, digits, '.', '_' and '-': "
            + ", ".join(repr(r) for r in unsafe)
        )
    actions.set_output("recipes", json.dumps(recipes))
    actions.set_output("any", "true" if recipes else "false")
    if args.json:
        out(json.dumps(recipes))
    else:
        for path in recipes:
            out(path)
    actions.write_summary(
        "### Changed recipes\n\n"
        + ("\n".join(f"- `{r}`" for r in recipes) if recipes else "none")
        + "\n"
    )
    return EXIT_OK


def cmd_comment(args: argparse.Namespace) -> int:
    repo = os.environ.get("GITHUB_REPOSITORY", "").strip()
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise CommandError(
            "GITHUB_REPOSITORY is not set to owner/name; run in GitHub Actions or set it"
        )
    token = os.environ.get("GITHUB_TOKEN", "").strip()
    if not token:
        raise CommandError(
            "GITHUB_TOKEN is not set; pass it to the step (env: GITHUB_TOKEN: "
            "${{ github.token }}) with 'pull-requests: write' permission"
        )
    number = args.pr or actions.pr_number_from_event()
    if not number:
        raise CommandError("no pull request number: pass --pr N, or run on a pull_request event")
    parts = []
    for name in args.body_file:
        try:
            parts.append(Path(name).read_text(encoding="utf-8"))
        except OSError as exc:
            raise CommandError(f"cannot read {name}: {exc.strerror or exc}") from None
    api_url = os.environ.get("GITHUB_API_URL") or actions.DEFAULT_API_URL
    comments = actions.GitHubComments(api_url, repo, token)
    result = actions.upsert_comment(
        comments, number, actions.comment_body(parts, args.marker), args.marker
    )
    out(result.message + (f": {result.url}" if result.url else ""))
    if result.action == "forbidden":
        actions.annotate_notice(result.message, title="preview comment skipped")
    else:
        actions.set_output("comment_url", result.url or "")
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the Actions-facing subcommands (`changed`, `comment`) to the CLI's parser."""
    p = sub.add_parser(
        "changed",
        help="list the recipes changed against a git ref (sets the 'recipes' output in Actions)",
        description="List recipes/*.yaml that HEAD adds or changes compared with --base. A "
        "changed lock file counts for its recipe, a changed template for every recipe; deleted "
        "recipes are left out.",
    )
    p.add_argument("--base", required=True, help="commit or ref to compare with")
    p.add_argument("--head", default="HEAD", help="commit or ref to look at (default: HEAD)")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=cmd_changed)

    p = sub.add_parser(
        "comment",
        help="create or update the one pull-request comment that carries the marker",
        description="Post the body as the pull request's comment, or update the comment an "
        "earlier run posted (found by its hidden marker). Uses GITHUB_API_URL, "
        "GITHUB_REPOSITORY, GITHUB_TOKEN and the event payload at GITHUB_EVENT_PATH. A 403 "
        "(the read-only token of a fork's pull request) is a notice, not a failure.",
    )
    p.add_argument(
        "--body-file",
        action="append",
        required=True,
        metavar="FILE",
        help="markdown for the comment; repeat to join several files",
    )
    p.add_argument("--pr", type=int, help="pull request number (default: from the event)")
    p.add_argument(
        "--marker",
        default=actions.PREVIEW_MARKER,
        help=f"hidden marker (default: {actions.PREVIEW_MARKER})",
    )
    p.set_defaults(func=cmd_comment)
