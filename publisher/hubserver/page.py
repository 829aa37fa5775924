"""The model page: a repo's README.md as HTML next to a metadata panel.

The README's markdown is rendered by markdown-it (CommonMark plus tables and strikethrough) with
`html=False`, so raw HTML in a card is shown as text, never run. Relative image and link targets
(`schedule.png`) are rewritten to the server's resolve URLs at the page's revision. The page itself
is `templates/hub/model_page.html.j2`, rendered by an autoescaping Jinja2 environment that gets
the markdown output as its only pre-escaped string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markdown_it import MarkdownIt
from markupsafe import Markup

TEMPLATES_DIR = Path(__file__).resolve().parent.parent.parent / "templates" / "hub"
"""`templates/hub/` of the source tree (an editable install finds it)."""

PAGE_TEMPLATE = "model_page.html.j2"
INDEX_TEMPLATE = "index.html.j2"

_FRONT_MATTER = re.compile(r"^(\s*---[\r\n]+)([\S\s]*?)([\r\n]+---(\r\n|\n|$))")


@dataclass(frozen=True)
class EvalRow:
    """One row of the eval results table, from the card's `model-index`.

    Attributes:
        task: task name or type. Example: `"Text Generation"`.
        dataset: dataset name. Example: `"AI2 Reasoning Challenge (25-Shot)"`.
        metric: metric name or type. Example: `"normalized accuracy"`.
        value: the value as written in the card. Example: `"0.6143"`.
        source: where the result comes from (a name or URL), may be empty.
    """

    task: str
    dataset: str
    metric: str
    value: str
    source: str = ""


@dataclass(frozen=True)
class PageFile:
    """A file in the page's file list: `path`, `size` in bytes, `lfs`, and its `url`."""

    path: str
    size: int
    lfs: bool
    url: str


@dataclass
class PageView:
    """What the model page template sees.

    Attributes:
        repo_id: e.g. `"publisher-demo/tiny-merge"`.
        revision: the revision shown. Example: `"main"` or `"refs/pr/1"`.
        commit: the commit id shown.
        last_modified: ISO 8601 date of that commit.
        private: whether the repo is private.
        card_html: the README body rendered to HTML (safe: markdown-it with html=False).
        has_card: whether the repo has a README.md.
        base_models: the card's `base_model` entries (the parents).
        license: the card's license id, or "".
        tags: the card's tags.
        eval_rows: the card's `model-index` results as rows.
        files: the files at this revision.
        pull_requests: open pull requests as (number, title) pairs.
        front_matter_error: why the front matter could not be read, or "".
    """

    repo_id: str
    revision: str
    commit: str
    last_modified: str
    private: bool
    card_html: Markup
    has_card: bool
    base_models: list[str] = field(default_factory=list)
    license: str = ""
    tags: list[str] = field(default_factory=list)
    eval_rows: list[EvalRow] = field(default_factory=list)
    files: list[PageFile] = field(default_factory=list)
    pull_requests: list[tuple[int, str]] = field(default_factory=list)
    front_matter_error: str = ""


def split_front_matter(text: str) -> tuple[dict[str, Any], str, str]:
    """Split a README into (metadata, body, error). `error` says why metadata is empty, if not
    simply absent. Raises nothing."""
    match = _FRONT_MATTER.match(text)
    if match is None:
        return {}, text, ""
    body = text[match.end() :]
    try:
        data = yaml.safe_load(match.group(2))
    except yaml.YAMLError as exc:
        return {}, body, f"the YAML front matter does not parse: {exc}"
    if data is None:
        return {}, body, ""
    if not isinstance(data, dict):
        return {}, body, "the YAML front matter is not a mapping"
    return data, body, ""


def eval_rows(card_data: dict[str, Any]) -> list[EvalRow]:
    """The results of the card's `model-index` as table rows; malformed entries are skipped."""
    rows = []
    for model in _as_list(card_data.get("model-index")):
        if not isinstance(model, dict):
            continue
        for result in _as_list(model.get("results")):
            if not isinstance(result, dict):
                continue
            task = result.get("task") or {}
            dataset = result.get("dataset") or {}
            source = result.get("source") or {}
            for metric in _as_list(result.get("metrics")):
                if not isinstance(metric, dict) or "value" not in metric:
                    continue
                rows.append(
                    EvalRow(
                        task=str(_pick(task, "name", "type")),
                        dataset=str(_pick(dataset, "name", "type")),
                        metric=str(_pick(metric, "name", "type")),
                        value=str(metric["value"]),
                        source=str(_pick(source, "name", "url")),
                    )
                )
    return rows


def render_markdown(body: str, resolve_base: str) -> Markup:
    """Render card markdown to HTML; relative image/link targets become `resolve_base + target`.

    Raw HTML in `body` is escaped (markdown-it `html=False`), and markdown-it drops
    `javascript:` and similar links, so the result is safe to insert as is.
    """
    md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])

    def rewrite(token: Any, attr: str) -> None:
        target = token.attrGet(attr)
        if isinstance(target, str) and _is_relative(target):
            token.attrSet(attr, resolve_base + quote(target.removeprefix("./"), safe="/#?=&%"))

    def image(self: Any, tokens: list[Any], idx: int, options: Any, env: Any) -> str:
        rewrite(tokens[idx], "src")
        return self.image(tokens, idx, options, env)

    def link_open(self: Any, tokens: list[Any], idx: int, options: Any, env: Any) -> str:
        rewrite(tokens[idx], "href")
        return self.renderToken(tokens, idx, options, env)

    md.add_render_rule("image", image)
    md.add_render_rule("link_open", link_open)
    return Markup(md.render(body))  # noqa: S704 - markdown-it with html=False escapes raw HTML


def render_page(view: PageView, templates_dir: Path | None = None) -> str:
    """The model page HTML for `view`, from `templates_dir/model_page.html.j2`."""
    return _environment(templates_dir).get_template(PAGE_TEMPLATE).render(page=view)


def render_index(repos: list[str], message: str = "", templates_dir: Path | None = None) -> str:
    """The front page listing `repos` (also the 404 page, with `message`)."""
    template = _environment(templates_dir).get_template(INDEX_TEMPLATE)
    return template.render(repos=repos, message=message)


def _environment(templates_dir: Path | None) -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(templates_dir or TEMPLATES_DIR)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["filesize"] = _filesize
    env.globals["quote"] = _quote_path
    return env


def card_fields(card_data: dict[str, Any]) -> tuple[list[str], str, list[str]]:
    """(base models, license, tags) from card metadata, each normalised to strings."""
    base_models = [str(b) for b in _as_list(card_data.get("base_model")) if b]
    license_id = card_data.get("license") or ""
    tags = [str(t) for t in _as_list(card_data.get("tags")) if t]
    return base_models, str(license_id), tags


def _is_relative(target: str) -> bool:
    parts = urlsplit(target)
    return not (parts.scheme or parts.netloc or target.startswith(("/", "#")))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _pick(data: Any, *keys: str) -> Any:
    if not isinstance(data, dict):
        return ""
    for key in keys:
        if data.get(key):
            return data[key]
    return ""


def _filesize(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def _quote_path(value: str) -> str:
    return quote(value, safe="/")
