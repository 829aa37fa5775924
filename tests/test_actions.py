"""The commands the workflows run, under a simulated GitHub Actions environment.

`GITHUB_ACTIONS=true`, `GITHUB_OUTPUT` and `GITHUB_STEP_SUMMARY` point at files in tmp, the event
payload is a real-shaped `pull_request` event, recipes live in a git repository with a base and a
head commit, and the GitHub REST API is a small HTTP server on 127.0.0.1 that records requests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from publisher import actions
from publisher.cli import main

REPO_ROOT = Path(__file__).resolve().parent.parent
OWNER_REPO = "octo-org/merges"
PR_NUMBER = 7
GH_SENTINEL = "sentinel-gh-7f3a9c2e51d04b6b"
HF_SENTINEL = "sentinel-hf-0c1d2e3f4a5b6c7d"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}

GOOD_RECIPE = """\
slices:
  - sources:
      - model: {base}
        layer_range: [0, 4]
      - model: {other}
        layer_range: [0, 4]
merge_method: slerp
base_model: {base}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 1]
    - filter: mlp
      value: [1, 0.5, 0]
    - value: 0.5
dtype: float32
publish:
  repo_id: octo-org/good-slerp
  license: apache-2.0
"""

# Line 14, column 3: the misspelt key the annotation must point at.
BROKEN_RECIPE = """\
slices:
  - sources:
      - model: {base}
        layer_range: [0, 4]
      - model: {other}
        layer_range: [0, 4]
merge_method: slerp
base_model: {base}
parameters:
  t:
    - value: 0.5
dtype: float32
publish:
  licence: apache-2.0
"""


# ---------------------------------------------------------------------------------------------
# the simulated runner


@dataclass
class Runner:
    """The files and variables a step gets from the Actions runner."""

    root: Path
    output: Path
    summary: Path
    event: Path
    env: dict[str, str] = field(default_factory=dict)

    def outputs(self) -> dict[str, str]:
        """Parse `GITHUB_OUTPUT` (`name<<DELIM` heredocs, as the runner does)."""
        values: dict[str, str] = {}
        lines = self.output.read_text(encoding="utf-8").splitlines() if self.output.exists() else []
        i = 0
        while i < len(lines):
            name, _, delim = lines[i].partition("<<")
            end = lines.index(delim, i + 1)
            values[name] = "\n".join(lines[i + 1 : end])
            i = end + 1
        return values

    def new_step(self) -> None:
        """Each step gets fresh output and summary files."""
        self.output.write_text("", encoding="utf-8")
        self.summary.write_text("", encoding="utf-8")


def pull_request_event(number: int = PR_NUMBER) -> dict[str, Any]:
    """The parts of a real `pull_request` event payload that the commands read."""
    repo = {"full_name": OWNER_REPO, "name": "merges", "owner": {"login": "octo-org"}}
    return {
        "action": "synchronize",
        "number": number,
        "pull_request": {
            "number": number,
            "title": "Add a recipe; $(touch /tmp/pwned) `whoami`",
            "head": {"ref": "feature/new-recipe", "sha": "b" * 40, "repo": repo},
            "base": {"ref": "main", "sha": "a" * 40, "repo": repo},
            "labels": [{"name": "full-run"}],
            "user": {"login": "contributor"},
        },
        "repository": repo,
        "sender": {"login": "contributor"},
    }


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Runner:
    runner_dir = tmp_path / "runner"
    runner_dir.mkdir()
    r = Runner(
        root=tmp_path,
        output=runner_dir / "output",
        summary=runner_dir / "step_summary.md",
        event=runner_dir / "event.json",
    )
    r.event.write_text(json.dumps(pull_request_event()), encoding="utf-8")
    r.new_step()
    for name in actions.SECRET_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    r.env = {
        "GITHUB_ACTIONS": "true",
        "CI": "true",
        "GITHUB_OUTPUT": str(r.output),
        "GITHUB_STEP_SUMMARY": str(r.summary),
        "GITHUB_EVENT_NAME": "pull_request",
        "GITHUB_EVENT_PATH": str(r.event),
        "GITHUB_REPOSITORY": OWNER_REPO,
        "GITHUB_WORKSPACE": str(tmp_path / "repo"),
    }
    for key, value in r.env.items():
        monkeypatch.setenv(key, value)
    return r


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@dataclass
class History:
    repo: Path
    base: str  # main when the branch was made
    main: str  # main later, with a change of its own
    head: str  # the pull request's head


@pytest.fixture
def history(runner: Runner, monkeypatch: pytest.MonkeyPatch) -> History:
    """main with four recipes; a branch that edits, deletes, adds and re-locks some of them."""
    repo = runner.root / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for name in ("keep", "edit", "gone", "locked"):
        write(repo / "recipes" / f"{name}.yaml", f"# {name}\nmerge_method: slerp\n")
    write(repo / "recipes" / "locked.lock.json", '{"lock_version": 1}\n')
    write(repo / "templates" / "modelcard.md.j2", "# {{ name }}\n")
    write(repo / "README.md", "recipes\n")
    base = commit_all(repo, "base")

    git(repo, "checkout", "-q", "-b", "feature")
    write(repo / "recipes" / "edit.yaml", "# edit, changed\nmerge_method: slerp\n")
    (repo / "recipes" / "gone.yaml").unlink()
    write(repo / "recipes" / "new.yaml", "# new\nmerge_method: slerp\n")
    write(repo / "recipes" / "locked.lock.json", '{"lock_version": 1, "parents": {}}\n')
    write(repo / "recipes" / "notes.txt", "not a recipe\n")
    write(repo / "recipes" / "drafts" / "nested.yaml", "# not a top-level recipe\n")
    write(repo / "README.md", "recipes, documented\n")
    head = commit_all(repo, "pull request")

    git(repo, "checkout", "-q", "main")
    write(repo / "recipes" / "keep.yaml", "# keep, changed on main\nmerge_method: slerp\n")
    main_sha = commit_all(repo, "main moves on")
    git(repo, "checkout", "-q", "feature")
    monkeypatch.chdir(repo)
    return History(repo=repo, base=base, main=main_sha, head=head)


def annotations(stdout: str, kind: str = "error") -> list[dict[str, str]]:
    """`::error k=v,k=v::message` lines as dicts (message under "message")."""
    found = []
    for line in stdout.splitlines():
        m = re.match(rf"^::{kind}(?: (?P<opts>[^:]*))?::(?P<message>.*)$", line)
        if m:
            opts = dict(kv.split("=", 1) for kv in (m["opts"] or "").split(",") if kv)
            found.append({**opts, "message": m["message"]})
    return found


# ---------------------------------------------------------------------------------------------
# publisher changed


def test_changed_lists_added_modified_and_relocked_recipes(
    history: History, runner: Runner, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["changed", "--base", history.main, "--head", history.head, "--json"]) == 0
    expected = ["recipes/edit.yaml", "recipes/locked.yaml", "recipes/new.yaml"]
    # deleted gone.yaml, main's own change to keep.yaml, notes.txt and drafts/ are left out
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == expected
    outputs = runner.outputs()
    assert json.loads(outputs["recipes"]) == expected
    assert outputs["any"] == "true"
    assert "`recipes/new.yaml`" in runner.summary.read_text(encoding="utf-8")


def test_changed_plain_output_and_defaults_to_head(
    history: History, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["changed", "--base", history.base]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["recipes/edit.yaml", "recipes/locked.yaml", "recipes/new.yaml"]


def test_changed_template_means_every_recipe(
    history: History, runner: Runner, capsys: pytest.CaptureFixture[str]
) -> None:
    write(history.repo / "templates" / "modelcard.md.j2", "# {{ name }}, restyled\n")
    head = commit_all(history.repo, "restyle the card")
    assert main(["changed", "--base", history.head, "--head", head, "--json"]) == 0
    every = ["recipes/edit.yaml", "recipes/keep.yaml", "recipes/locked.yaml", "recipes/new.yaml"]
    assert json.loads(runner.outputs()["recipes"]) == every


def test_changed_nothing_and_a_new_branch(
    history: History, runner: Runner, capsys: pytest.CaptureFixture[str]
) -> None:
    write(history.repo / "README.md", "only docs\n")
    head = commit_all(history.repo, "docs")
    assert main(["changed", "--base", history.head, "--head", head, "--json"]) == 0
    assert runner.outputs() == {"recipes": "[]", "any": "false"}
    runner.new_step()
    # a push that created the branch has an all-zero "before": every recipe counts
    assert main(["changed", "--base", "0" * 40, "--json"]) == 0
    assert len(json.loads(runner.outputs()["recipes"])) == 4


def test_changed_unknown_base_says_to_fetch_history(
    history: History, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["changed", "--base", "f" * 40]) == 1
    err = capsys.readouterr().err
    assert "is not a commit in this checkout" in err and "fetch-depth: 0" in err
    assert "Traceback" not in err


def test_changed_rejects_unsafe_recipe_names(
    history: History, capsys: pytest.CaptureFixture[str]
) -> None:
    write(history.repo / "recipes" / "x;$(id).yaml", "merge_method: slerp\n")
    head = commit_all(history.repo, "hostile name")
    assert main(["changed", "--base", history.head, "--head", head]) == 1
    captured = capsys.readouterr()
    assert "unsafe recipe name" in captured.out  # the annotation
    assert "file names may use only" in captured.err


# ---------------------------------------------------------------------------------------------
# validate, plan, card: the preview job's steps


@pytest.fixture
def recipes(history: History, tiny_parents: tuple[Path, Path]) -> Path:
    """recipes/good.yaml and recipes/broken.yaml (tiny parents), in the checkout."""
    base, other = tiny_parents
    for name, text in (("good", GOOD_RECIPE), ("broken", BROKEN_RECIPE)):
        write(
            history.repo / "recipes" / f"{name}.yaml",
            text.format(base=base, other=other),
        )
    return history.repo


def test_validate_annotates_the_exact_line(
    recipes: Path, runner: Runner, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", "recipes/good.yaml", "recipes/broken.yaml"]) == 1
    captured = capsys.readouterr()
    errors = annotations(captured.out)
    assert len(errors) == 1
    (error,) = errors
    assert error["file"] == "recipes/broken.yaml"
    assert (error["line"], error["col"]) == ("14", "3")
    assert "licence" in error["message"] and "license" in error["message"]
    assert "recipes/broken.yaml:14:3: unknown key 'licence'" in captured.err


def test_annotation_paths_are_relative_to_the_workspace(
    recipes: Path, runner: Runner, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(recipes / "recipes" / "broken.yaml")]) == 1
    (error,) = annotations(capsys.readouterr().out)
    assert error["file"] == "recipes/broken.yaml"


def test_annotation_messages_cannot_inject_workflow_commands(
    runner: Runner, capsys: pytest.CaptureFixture[str]
) -> None:
    actions.annotate_error("first line\n::warning::injected")
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "%0A::warning::injected" in out


def test_plan_writes_the_t_table_to_the_summary(
    recipes: Path, runner: Runner, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "recipes/good.yaml"]) == 0
    summary = runner.summary.read_text(encoding="utf-8")
    assert "### Plan for `recipes/good.yaml` → `octo-org/good-slerp`" in summary
    assert "| layer | self_attn | mlp | default |" in summary
    rows = [line for line in summary.splitlines() if re.match(r"^\| \d+ \|", line)]
    assert len(rows) == 4
    # first and last layer: the ends of the gradients
    assert rows[0] == "| 0 | 0.000 | 1.000 | 0.500 |"
    assert rows[-1] == "| 3 | 1.000 | 0.000 | 0.500 |"


def _preview_step(recipe: str, out: Path, runner: Runner) -> None:
    """The preview job: plan (copy the step summary to plan.md), then the card."""
    runner.new_step()
    assert main(["plan", recipe]) == 0
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.md").write_text(runner.summary.read_text(encoding="utf-8"), encoding="utf-8")
    runner.new_step()
    assert main(["card", recipe, "--out", str(out)]) == 0


@pytest.fixture
def stub() -> Iterator[GitHubStub]:
    server = GitHubStub()
    try:
        yield server
    finally:
        server.close()


def test_preview_card_summary_and_comment(
    recipes: Path,
    runner: Runner,
    stub: GitHubStub,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("publisher.card")
    previews = runner.root / "by-name"
    _preview_step("recipes/good.yaml", previews / "good", runner)
    card_summary = runner.summary.read_text(encoding="utf-8")
    assert "library_name: transformers" in card_summary  # the card went to the summary
    assert (previews / "good" / "README.md").is_file()
    assert (previews / "good" / "schedule.png").is_file()
    failed = previews / "broken"
    failed.mkdir()
    (failed / "failed.md").write_text("### ❌ `recipes/broken.yaml`\n", encoding="utf-8")

    body = subprocess.run(
        ["bash", str(REPO_ROOT / ".github" / "scripts" / "preview-comment.sh"), str(previews)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HEAD_SHA": "b" * 40, "RUN_URL": "https://github.invalid/run/1"},
    ).stdout
    assert "| layer | self_attn | mlp | default |" in body
    assert "### ❌ `recipes/broken.yaml`" in body
    # The front matter is fenced, not rendered as headings.
    first_metadata_line = (previews / "good" / "README.md").read_text().split("\n")[1]
    assert f"```yaml\n{first_metadata_line}\n" in body
    assert "](schedule.png)" not in body
    # One folded card per recipe; the card's own folded sections nest inside it.
    assert body.count("<details><summary>Model card preview") == 1
    assert body.count("<details>") == body.count("</details>") > 1

    (runner.root / "comment.md").write_text(body, encoding="utf-8")
    monkeypatch.setenv("GITHUB_TOKEN", GH_SENTINEL)
    monkeypatch.setenv("GITHUB_API_URL", stub.url)
    runner.new_step()
    assert main(["comment", "--body-file", str(runner.root / "comment.md")]) == 0
    (posted,) = stub.comments
    assert posted["body"].startswith(actions.PREVIEW_MARKER + "\n## Recipe preview")
    assert runner.outputs()["comment_url"] == posted["html_url"]


# ---------------------------------------------------------------------------------------------
# publisher comment against a local GitHub API


class GitHubStub:
    """Just enough of the GitHub REST API for one pull request's comments.

    Lists comments `page_size` at a time with a `Link: <...>; rel="next"` header, creates and
    updates them, and records every request. `forbidden = True` answers writes with 403, as
    GitHub does for the read-only token of a pull request from a fork.
    """

    def __init__(self, page_size: int = 2) -> None:
        self.page_size = page_size
        self.forbidden = False
        self.comments: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self._next_id = 1000
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-RateLimit-Remaining", "4999")
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> tuple[str, dict[str, list[str]], Any]:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                parts = urlsplit(self.path)
                stub.requests.append(
                    {
                        "method": self.command,
                        "path": parts.path,
                        "query": parse_qs(parts.query),
                        "headers": dict(self.headers),
                        "body": body,
                    }
                )
                return parts.path, parse_qs(parts.query), body

            def do_GET(self) -> None:
                path, query, _ = self._record()
                m = re.fullmatch(r"/repos/([^/]+/[^/]+)/issues/(\d+)/comments", path)
                if not m or m[1] != OWNER_REPO:
                    return self._send(404, {"message": "Not Found"})
                page = int(query.get("page", ["1"])[0])
                start = (page - 1) * stub.page_size
                items = stub.comments[start : start + stub.page_size]
                headers = {}
                if start + stub.page_size < len(stub.comments):
                    nxt = f"{stub.url}{path}?per_page=100&page={page + 1}"
                    headers["Link"] = f'<{nxt}>; rel="next", <{stub.url}{path}?page=1>; rel="first"'
                return self._send(200, items, headers)

            def do_POST(self) -> None:
                path, _, body = self._record()
                m = re.fullmatch(r"/repos/([^/]+/[^/]+)/issues/(\d+)/comments", path)
                if not m or m[1] != OWNER_REPO:
                    return self._send(404, {"message": "Not Found"})
                if stub.forbidden:
                    return self._send(403, {"message": "Resource not accessible by integration"})
                stub._next_id += 1
                comment = {
                    "id": stub._next_id,
                    "body": body["body"],
                    "html_url": f"https://github.invalid/{OWNER_REPO}/pull/{m[2]}#issuecomment-{stub._next_id}",
                    "user": {"login": "github-actions[bot]", "type": "Bot"},
                }
                stub.comments.append(comment)
                return self._send(201, comment)

            def do_PATCH(self) -> None:
                path, _, body = self._record()
                m = re.fullmatch(r"/repos/([^/]+/[^/]+)/issues/comments/(\d+)", path)
                if not m or m[1] != OWNER_REPO:
                    return self._send(404, {"message": "Not Found"})
                if stub.forbidden:
                    return self._send(403, {"message": "Resource not accessible by integration"})
                for comment in stub.comments:
                    if comment["id"] == int(m[2]):
                        comment["body"] = body["body"]
                        return self._send(200, comment)
                return self._send(404, {"message": "Not Found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # shutdown() waits for the next poll: the default 0.5 s, at every test's teardown
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def writes(self) -> list[tuple[str, str]]:
        return [(r["method"], r["path"]) for r in self.requests if r["method"] != "GET"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def comment_env(runner: Runner, stub: GitHubStub, monkeypatch: pytest.MonkeyPatch) -> Runner:
    monkeypatch.setenv("GITHUB_TOKEN", GH_SENTINEL)
    monkeypatch.setenv("GITHUB_API_URL", stub.url)
    return runner


def _body(runner: Runner, text: str) -> str:
    path = runner.root / "comment.md"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_comment_is_created_once_then_updated_in_place(
    comment_env: Runner, stub: GitHubStub, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = comment_env
    # other people's comments first, so ours lands on a later page
    for n in range(3):
        stub.comments.append({"id": n + 1, "body": f"looks good {n}", "html_url": "x"})

    assert main(["comment", "--body-file", _body(runner, "## Preview\n\nfirst")]) == 0
    assert stub.writes() == [("POST", f"/repos/{OWNER_REPO}/issues/{PR_NUMBER}/comments")]
    ours = [c for c in stub.comments if c["body"].startswith(actions.PREVIEW_MARKER)]
    assert len(ours) == 1 and ours[0]["body"].endswith("first\n")
    assert "created a comment on pull request #7" in capsys.readouterr().out

    stub.requests.clear()
    runner.new_step()
    assert main(["comment", "--body-file", _body(runner, "## Preview\n\nsecond")]) == 0
    assert stub.writes() == [("PATCH", f"/repos/{OWNER_REPO}/issues/comments/{ours[0]['id']}")]
    pages = [r["query"].get("page", ["1"])[0] for r in stub.requests if r["method"] == "GET"]
    assert pages == ["1", "2"]  # followed the Link header to the page with our comment
    assert len(stub.comments) == 4
    assert ours[0]["body"].endswith("second\n")
    assert runner.outputs()["comment_url"] == ours[0]["html_url"]

    stub.requests.clear()
    assert main(["comment", "--body-file", _body(runner, "## Preview\n\nsecond")]) == 0
    assert stub.writes() == []  # already up to date: nothing written
    assert "already up to date" in capsys.readouterr().out


def test_comment_request_shape(
    comment_env: Runner, stub: GitHubStub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["comment", "--body-file", _body(comment_env, "hello")]) == 0
    post = next(r for r in stub.requests if r["method"] == "POST")
    assert post["headers"]["Authorization"] == f"Bearer {GH_SENTINEL}"
    assert post["headers"]["Accept"] == "application/vnd.github+json"
    assert post["body"] == {"body": f"{actions.PREVIEW_MARKER}\nhello\n"}


def test_comment_pr_number_flag_and_custom_marker(
    comment_env: Runner, stub: GitHubStub, capsys: pytest.CaptureFixture[str]
) -> None:
    body = _body(comment_env, "x")
    assert main(["comment", "--body-file", body, "--pr", "12", "--marker", "<!-- m2 -->"]) == 0
    assert stub.writes() == [("POST", f"/repos/{OWNER_REPO}/issues/12/comments")]
    assert stub.comments[0]["body"].startswith("<!-- m2 -->\n")


def test_comment_on_a_fork_is_a_notice_not_a_failure(
    comment_env: Runner, stub: GitHubStub, capsys: pytest.CaptureFixture[str]
) -> None:
    stub.forbidden = True
    assert main(["comment", "--body-file", _body(comment_env, "preview")]) == 0
    out = capsys.readouterr().out
    notices = annotations(out, "notice")
    assert len(notices) == 1 and "403" in notices[0]["message"]
    assert "fork" in notices[0]["message"]
    assert stub.comments == []
    assert "comment_url" not in comment_env.outputs()


def test_comment_cuts_a_long_body(
    comment_env: Runner, stub: GitHubStub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["comment", "--body-file", _body(comment_env, "x" * 100_000)]) == 0
    (posted,) = stub.comments
    assert len(posted["body"]) <= 65_536
    assert posted["body"].rstrip().endswith("the full preview is in the job summary.")


def test_comment_needs_a_token_and_a_pull_request(
    runner: Runner, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    body = _body(runner, "x")
    assert main(["comment", "--body-file", body]) == 1
    assert "error: GITHUB_TOKEN is not set" in capsys.readouterr().err
    monkeypatch.setenv("GITHUB_TOKEN", GH_SENTINEL)
    runner.event.write_text(json.dumps({"ref": "refs/heads/main", "commits": []}))
    assert main(["comment", "--body-file", body]) == 1
    assert "no pull request number" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# secrets


def _run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "publisher", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def test_tokens_are_masked_first_and_never_printed(comment_env: Runner, stub: GitHubStub) -> None:
    env = {
        **os.environ,
        "GITHUB_TOKEN": GH_SENTINEL,
        "HF_TOKEN": HF_SENTINEL,
        "PYTHONPATH": str(REPO_ROOT),
    }
    body = _body(comment_env, "preview")
    runs = [
        _run_cli(["comment", "--body-file", body], env, comment_env.root),
        # a failure that prints the API URL: still no token
        _run_cli(
            ["comment", "--body-file", body],
            {**env, "GITHUB_API_URL": "http://127.0.0.1:9"},
            comment_env.root,
        ),
    ]
    assert [r.returncode for r in runs] == [0, 1]
    for done in runs:
        lines = done.stdout.splitlines()
        # the toolkit writes `::add-mask ::VALUE`; the runner reads the command name up to the
        # space, as it does for `::error file=...::`
        masked = [re.fullmatch(r"::add-mask ?::(.*)", line) for line in lines[:2]]
        assert [m[1] if m else None for m in masked] == [HF_SENTINEL, GH_SENTINEL]
        rest = "\n".join(lines[2:]) + done.stderr
        assert HF_SENTINEL not in rest and GH_SENTINEL not in rest
    assert "error: GitHub API GET http://127.0.0.1:9/" in runs[1].stderr
    for path in (comment_env.output, comment_env.summary):
        text = path.read_text(encoding="utf-8")
        assert HF_SENTINEL not in text and GH_SENTINEL not in text
    # the token was used where it belongs: in the Authorization header of the API calls
    assert {r["headers"]["Authorization"] for r in stub.requests} == {f"Bearer {GH_SENTINEL}"}


def test_masking_is_silent_outside_actions(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.setenv("HF_TOKEN", HF_SENTINEL)
    with actions.masked_secrets():
        actions.write_summary("x")
        actions.set_output("x", "y")
        actions.annotate_error("y")
    assert capsys.readouterr().out == ""


def test_the_preview_script_is_plain_bash(tmp_path: Path) -> None:
    empty = tmp_path / "none"
    empty.mkdir()
    done = subprocess.run(
        ["bash", str(REPO_ROOT / ".github" / "scripts" / "preview-comment.sh"), str(empty)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "No preview was produced" in done.stdout
    assert textwrap.dedent(done.stdout).startswith("## Recipe preview")


def test_card_for_display_fences_front_matter(
    runner: Runner, capsys: pytest.CaptureFixture[str]
) -> None:
    card = "---\nlicense: mit\ntags:\n- merge\n---\n\n# name\n\n![t per layer](schedule.png)\n"
    shown = actions.card_for_display(card)
    assert shown.startswith("```yaml\nlicense: mit\ntags:\n- merge\n```\n\n# name\n")
    assert "](schedule.png)" not in shown
    assert actions.card_for_display("# no front matter\n") == "# no front matter\n"
    actions.write_card_summary(card)
    assert runner.summary.read_text(encoding="utf-8").startswith("```yaml\n")


def test_comment_ignores_a_persons_comment_that_quotes_the_marker(
    comment_env: Runner, stub: GitHubStub, capsys: pytest.CaptureFixture[str]
) -> None:
    quoted = f"{actions.PREVIEW_MARKER}\nI copied the bot's comment"
    stub.comments.append(
        {"id": 1, "body": quoted, "html_url": "x", "user": {"login": "someone", "type": "User"}}
    )
    assert main(["comment", "--body-file", _body(comment_env, "preview")]) == 0
    assert stub.writes() == [("POST", f"/repos/{OWNER_REPO}/issues/{PR_NUMBER}/comments")]
    assert stub.comments[0]["body"] == quoted  # the person's comment is untouched
    assert stub.comments[1]["body"] == f"{actions.PREVIEW_MARKER}\npreview\n"


def _workflow_step(workflow: str, job: str, name: str) -> str:
    import yaml

    data = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / workflow).read_text())
    return next(s["run"] for s in data["jobs"][job]["steps"] if s.get("name") == name)


def test_comment_job_posts_the_previews_as_data_with_only_the_lock(
    runner: Runner, stub: GitHubStub, tmp_path: Path
) -> None:
    """recipe-pr.yml's comment step, as the runner runs it: the base commit's script and
    publisher, only the hash-pinned lock installed, and previews whose text tries to run
    commands, which end up in the comment as text."""
    from tests.lock_only import lock_only_env

    hostile = "$(touch PWNED) `touch PWNED` ${GITHUB_TOKEN} ::add-mask::x"
    previews = tmp_path / "previews"
    (previews / "preview-good").mkdir(parents=True)
    (previews / "preview-good" / "plan.md").write_text(f"| layer | t |\n{hostile}\n")
    (previews / "preview-broken").mkdir()
    (previews / "preview-broken" / "failed.md").write_text("### ❌ `recipes/broken.yaml`\n")
    temp = tmp_path / "runner-temp"
    temp.mkdir()
    base = {k: v for k, v in os.environ.items() if k not in actions.SECRET_ENV_VARS}
    env = lock_only_env(
        {**base, **runner.env},
        GITHUB_TOKEN=GH_SENTINEL,
        GITHUB_API_URL=stub.url,
        HEAD_SHA="b" * 40,
        RUN_URL="https://github.invalid/run/1",
        PREVIEWS=str(previews),
        RUNNER_TEMP=str(temp),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    script = _workflow_step("recipe-pr.yml", "comment", "Create or update the preview comment")
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (posted,) = stub.comments
    assert hostile in posted["body"] and "### ❌ `recipes/broken.yaml`" in posted["body"]
    assert not (REPO_ROOT / "PWNED").exists() and not (tmp_path / "PWNED").exists()
    assert GH_SENTINEL not in posted["body"]
    assert hostile in runner.summary.read_text()
