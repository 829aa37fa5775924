"""GitHub Actions integration through github-action-toolkit: a shell module, like `cli`.

Every reporting function is a no-op outside Actions (`GITHUB_ACTIONS` unset), so the CLI calls
them unconditionally: annotations for recipe problems, grouped logs, the step summary, outputs,
and masking of the Hub and GitHub tokens. Stages never import this module: the CLI hands them an
`ActionsReporter` as their `log`.

The CLI's `changed` and `comment` commands (see docs/actions.md) are built on `changed_recipes`
and `upsert_comment` here.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from publisher.errors import CommandError
from publisher.recipe_paths import LOCK_SUFFIX

if TYPE_CHECKING:
    import requests

    from publisher.recipe import Problem

SECRET_ENV_VARS = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_OIDC_ID_TOKEN",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    "ACTIONS_RUNTIME_TOKEN",
)

RECIPES_DIR = "recipes"
TEMPLATES_DIR = "templates"
RECIPE_SUFFIXES = (".yaml", ".yml")
# A recipe's file name becomes a matrix value, an artifact name and the default Hub repo name:
# keep it to characters that are safe in all three.
SAFE_RECIPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

PREVIEW_MARKER = "<!-- publisher:preview -->"
DEFAULT_API_URL = "https://api.github.com"
# GitHub rejects comment bodies over 65536 characters; leave room for the truncation note.
COMMENT_LIMIT = 65_000
HTTP_TIMEOUT_S = 30.0
MAX_COMMENT_PAGES = 100


def in_actions() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"


def _escape(message: str) -> str:
    """Make a workflow-command message safe to print: characters that are not printable
    (escape codes, U+2028) escaped line by line, then `%`, CR and LF encoded the way GitHub
    decodes them, so that a newline cannot end the command early."""
    from github_action_toolkit.print_messages import escape_data

    from publisher.recipe_yaml import printable

    return escape_data("\n".join(printable(line) for line in message.split("\n")))


def problems_markdown(lines: list[str]) -> str:
    """Problem lines as a Markdown code block, fenced longer than any run of backticks in them
    (a recipe's key can hold backticks; they must not end the block)."""
    longest = max((len(run) for line in lines for run in re.findall(r"`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    return "\n".join([f"{fence}text", *lines, fence]) + "\n"


def _workspace_path(file: str) -> str:
    """`file` relative to the checkout (`GITHUB_WORKSPACE`), which annotations need."""
    workspace = os.environ.get("GITHUB_WORKSPACE")
    path = Path(file)
    if workspace and path.is_absolute():
        with contextlib.suppress(ValueError):
            return path.resolve().relative_to(Path(workspace).resolve()).as_posix()
    return file


def annotate_problem(problem: Problem, title: str = "invalid recipe") -> None:
    """An error annotation on the recipe's file and line."""
    if not in_actions():
        return
    import github_action_toolkit as gat

    gat.error(
        _escape(problem.message),
        title=title,
        file=_workspace_path(problem.file),
        line=problem.line,
        col=problem.column,
    )


def annotate_error(message: str, title: str = "publisher") -> None:
    if not in_actions():
        return
    import github_action_toolkit as gat

    gat.error(_escape(message), title=title)


def annotate_notice(message: str, title: str = "publisher") -> None:
    """A notice annotation: something the reader should know that did not fail the step."""
    if not in_actions():
        return
    import github_action_toolkit as gat

    gat.notice(_escape(message), title=title)


def write_summary(markdown: str) -> None:
    """Append markdown to the job summary (when the step has one)."""
    if not in_actions() or not os.environ.get("GITHUB_STEP_SUMMARY"):
        return
    import github_action_toolkit as gat

    gat.append_job_summary(markdown)


def card_for_display(card: str) -> str:
    """A model card as GitHub shows it well in a summary or comment.

    The YAML front matter becomes a fenced `yaml` block (as markdown, its closing `---` would
    turn the lines above it into a heading), and the relative `schedule.png` image, which a
    summary cannot load, becomes a note.
    """
    lines = card.splitlines()
    if lines and lines[0].strip() == "---" and "---" in (line.strip() for line in lines[1:]):
        end = next(i for i, line in enumerate(lines[1:], 1) if line.strip() == "---")
        lines = ["```yaml", *lines[1:end], "```", *lines[end + 1 :]]
    lines = [
        "_(schedule image: `schedule.png` beside the card)_"
        if re.match(r"^!\[[^\]]*\]\(schedule\.png\)", line)
        else line
        for line in lines
    ]
    return "\n".join(lines) + "\n"


def write_card_summary(card: str) -> None:
    """Append a model card to the job summary (see `card_for_display`)."""
    write_summary(card_for_display(card))


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


def mask(value: str) -> None:
    """Ask the runner to mask a secret that is not in the environment (an exchanged token)."""
    if value and in_actions():
        import github_action_toolkit as gat

        gat.add_mask(value)


@dataclass(frozen=True)
class ActionsReporter:
    """The `publisher.report.Reporter` for GitHub Actions: each stage a log group, tokens masked."""

    log: Callable[[str], None] = print

    def __call__(self, text: str) -> None:
        self.log(text)

    def group(self, title: str) -> contextlib.AbstractContextManager[None]:
        return group(title)

    def mask(self, secret: str) -> None:
        mask(secret)


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


# ---------------------------------------------------------------------------------------------
# Which recipes changed


def _git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        raise CommandError("git is not installed; 'publisher changed' needs it") from None
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()
        raise CommandError(
            f"git {args[0]} failed: {detail[0] if detail else f'exit {done.returncode}'}"
        )
    return done.stdout


def _is_recipe_path(path: str) -> bool:
    p = PurePosixPath(path)
    return (
        str(p.parent) == RECIPES_DIR
        and p.suffix in RECIPE_SUFFIXES
        and not p.name.endswith(LOCK_SUFFIX)
    )


def recipes_at(ref: str, repo: Path = Path(".")) -> list[str]:
    """Every recipe file (`recipes/*.yaml`, lock files excluded) in the tree of `ref`."""
    out = _git(repo, "ls-tree", "--name-only", "-z", ref, "--", f"{RECIPES_DIR}/")
    return sorted(p for p in out.split("\0") if p and _is_recipe_path(p))


def changed_recipes(base: str, head: str = "HEAD", repo: Path = Path(".")) -> list[str]:
    """The recipes that `head` adds or changes compared with `base`, sorted.

    Compares like a pull request's "Files changed": from the merge base of `base` and `head`.
    A changed lock file (`recipes/NAME.lock.json`) counts as a change of its recipe, a change
    under `templates/` as a change of every recipe; recipes that `head` deletes are left out. A
    `base` of all zeros (a push that created the branch) counts every recipe as changed.

    Args:
        base: a commit or ref, e.g. the pull request's base SHA or a push's "before" SHA.
        head: the commit to look at, e.g. `"HEAD"` or the pull request's head SHA.
        repo: any directory inside the git checkout.

    Returns:
        Paths relative to the repository root, e.g. `["recipes/tiny-demo-slerp.yaml"]`.
    """
    null_base = not base.strip("0")
    for ref in (head,) if null_base else (base, head):
        try:
            _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        except Exception:
            raise CommandError(
                f"'{ref}' is not a commit in this checkout; in Actions, fetch the full history "
                "(actions/checkout with fetch-depth: 0)"
            ) from None
    present = recipes_at(head, repo)
    if null_base:
        return present
    out = _git(repo, "diff", "--name-only", "--no-renames", "-z", f"{base}...{head}")
    by_stem = {PurePosixPath(p).stem: p for p in present}
    chosen: set[str] = set()
    for path in filter(None, out.split("\0")):
        p = PurePosixPath(path)
        if p.parts and p.parts[0] == TEMPLATES_DIR:
            return present
        if str(p.parent) != RECIPES_DIR:
            continue
        if p.name.endswith(LOCK_SUFFIX):
            stem = p.name[: -len(LOCK_SUFFIX)]
            if stem in by_stem:
                chosen.add(by_stem[stem])
        elif path in present:
            chosen.add(path)
    return sorted(chosen)


# ---------------------------------------------------------------------------------------------
# The one pull-request comment


@dataclass(frozen=True)
class CommentResult:
    """What `upsert_comment` did.

    Attributes:
        action: `"created"`, `"updated"`, `"unchanged"` (the comment already said this) or
            `"forbidden"` (403, e.g. the read-only token of a pull request from a fork).
        url: the comment's page, e.g. `"https://github.com/o/r/pull/7#issuecomment-1"`; `None`
            when forbidden.
        message: a sentence for the log, e.g. `"updated comment 1 on pull request #7"`.
    """

    action: Literal["created", "updated", "unchanged", "forbidden"]
    url: str | None
    message: str


class _Forbidden(Exception):
    """GitHub answered 403 (a fork's read-only token, or a missing permission)."""


class GitHubComments:
    """The few REST calls for one pull request's comments, against `api_url`.

    Plain `requests` rather than the toolkit's `GitHubAPIClient`: that client takes a 403
    without an `X-RateLimit-Remaining` header for rate limiting and retries it once a second
    until Python's recursion limit, and its retry adapter re-sends a POST after a 5xx, which can
    duplicate the comment.
    """

    def __init__(
        self, api_url: str, repo: str, token: str, session: requests.Session | None = None
    ) -> None:
        import requests

        from publisher import __version__

        self.api_url = api_url.rstrip("/")
        self.repo = repo
        self.session: requests.Session = session or requests.Session()
        self.session.headers.update(
            {
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
                "User-Agent": f"publisher/{__version__}",
            }
        )

    def _call(self, method: str, url: str, body: dict[str, Any] | None = None) -> requests.Response:
        import requests

        if not url.startswith(("http://", "https://")):
            url = f"{self.api_url}{url}"
        try:
            response = self.session.request(method, url, json=body, timeout=HTTP_TIMEOUT_S)
        except requests.RequestException as exc:
            raise CommandError(
                f"GitHub API {method} {url}: {type(exc).__name__}; is GITHUB_API_URL right?"
            ) from None
        if response.status_code == 403:
            raise _Forbidden(_api_message(response))
        if response.status_code >= 400:
            raise CommandError(
                f"GitHub API {method} {url} answered {response.status_code}: "
                f"{_api_message(response)}"
            )
        return response

    def find(self, number: int, marker: str) -> dict[str, Any] | None:
        """The first comment on pull request `number` by a bot whose body starts with `marker`.

        Only a bot's (the workflow token posts as `github-actions[bot]`): a person who pastes
        the marker neither gets their comment overwritten nor blocks the preview with a 403.
        """
        url: str | None = f"/repos/{self.repo}/issues/{number}/comments?per_page=100"
        for _ in range(MAX_COMMENT_PAGES):
            if url is None:
                break
            response = self._call("GET", url)
            for comment in response.json():
                by_bot = (comment.get("user") or {}).get("type") == "Bot"
                if by_bot and str(comment.get("body") or "").lstrip().startswith(marker):
                    return comment
            url = response.links.get("next", {}).get("url")
        return None

    def create(self, number: int, body: str) -> dict[str, Any]:
        url = f"/repos/{self.repo}/issues/{number}/comments"
        return self._call("POST", url, {"body": body}).json()

    def update(self, comment_id: int, body: str) -> dict[str, Any]:
        url = f"/repos/{self.repo}/issues/comments/{comment_id}"
        return self._call("PATCH", url, {"body": body}).json()


def _api_message(response: requests.Response) -> str:
    try:
        message = str(response.json().get("message") or "")
    except ValueError:
        message = response.text[:200]
    if response.headers.get("X-RateLimit-Remaining") == "0":
        message = f"rate limit exhausted ({message})"
    return message or response.reason or "no message"


def comment_body(parts: Sequence[str], marker: str = PREVIEW_MARKER) -> str:
    """The comment's text: the hidden marker, then the parts, cut to GitHub's size limit."""
    body = marker + "\n" + "\n\n".join(p.strip("\n") for p in parts) + "\n"
    if len(body) > COMMENT_LIMIT:
        note = "\n\n…cut to fit a GitHub comment; the full preview is in the job summary.\n"
        body = body[: COMMENT_LIMIT - len(note)] + note
    return body


def upsert_comment(
    comments: GitHubComments, number: int, body: str, marker: str = PREVIEW_MARKER
) -> CommentResult:
    """Update the pull request's comment that starts with `marker`, or create it if none does.

    `body` must start with `marker` (`comment_body` does that), so later runs find the comment.
    """
    if not body.startswith(marker):
        raise ValueError("the comment body must start with its marker")
    try:
        existing = comments.find(number, marker)
        if existing is None:
            made = comments.create(number, body)
            return CommentResult(
                "created", made.get("html_url"), f"created a comment on pull request #{number}"
            )
        if existing.get("body") == body:
            return CommentResult(
                "unchanged",
                existing.get("html_url"),
                f"comment {existing['id']} on pull request #{number} is already up to date",
            )
        made = comments.update(existing["id"], body)
        return CommentResult(
            "updated",
            made.get("html_url"),
            f"updated comment {existing['id']} on pull request #{number}",
        )
    except _Forbidden as exc:
        return CommentResult(
            "forbidden",
            None,
            f"cannot comment on pull request #{number}: GitHub answered 403 ({exc}). A pull "
            "request from a fork gets a read-only token; the preview is in the job summary.",
        )


def pr_number_from_event() -> int | None:
    """The pull request number in the event payload at `GITHUB_EVENT_PATH`, if it has one."""
    import github_action_toolkit as gat

    path = os.environ.get("GITHUB_EVENT_PATH")
    if not path or not Path(path).is_file():
        return None
    data = gat.EventPayload().get_payload()
    number = (data.get("pull_request") or {}).get("number")
    if number is None and (data.get("issue") or {}).get("pull_request"):
        number = data["issue"].get("number")  # an issue_comment event on a pull request
    return int(number) if number is not None else None
