"""What a recipe points at on disk: kept inside its repository, and free of code unless allowed.

A recipe names card templates (`publish.templates`), lm-eval task directories and files
(`publish.eval.include_paths`, `.yaml` entries of `publish.eval.tasks`) and may name a chat
template file (`publish.chat_template: chat.jinja`). All of them resolve, symlinks followed,
inside the recipe's repository, and so does every file under a named directory: a template
that links to `/proc/self/environ` would otherwise carry the job's environment onto the Hub.
Custom lm-eval tasks can run Python (`!function` hooks, `.py` files, remote dataset code) in
the process that runs the eval; they are refused unless the recipe sets
`publish.eval.allow_code: true`.

The same functions run when the recipe is validated and again where the files are used
(card.py's template loader, evaluate.py's task directories), so a file swapped in between is
still caught.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from jinja2 import FileSystemLoader
from jinja2.loaders import split_template_path

from publisher.errors import PublisherError

# Files looked at under one named directory: a task or template directory is small.
MAX_FILES = 2000
# Keys of an lm-eval task config whose value is Python, or lets a dataset run its own.
CODE_KEYS = ("process_docs", "process_results", "custom_dataset", "class")
TASK_SUFFIXES = (".yaml", ".yml")
CHAT_TEMPLATE_SUFFIXES = (".jinja", ".j2")
MAX_TEMPLATE_CHARS = 256 * 1024
MAX_TASK_CHARS = 1024 * 1024


class PathError(PublisherError, ValueError):
    """A recipe-controlled path leaves the repository or holds code; the message says which."""


LOCK_SUFFIX = ".lock.json"


def lock_path_for(recipe_path: Path) -> Path:
    """Where a recipe's lock file lives: `recipes/NAME.yaml` -> `recipes/NAME.lock.json`."""
    return recipe_path.with_name(recipe_path.stem + LOCK_SUFFIX)


def repository_root(start: Path) -> Path:
    """The nearest directory at or above `start` that holds `.git`, else `start` itself."""
    start = Path(start).resolve()
    for directory in (start, *start.parents):
        if (directory / ".git").exists():
            return directory
    return start


def outside(path: Path, root: Path) -> str | None:
    """Why `path`, symlinks resolved, is not inside `root`; None when it is."""
    try:
        real = Path(path).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        return f"it cannot be resolved ({exc})"
    root = Path(root).resolve()
    if real == root or root in real.parents:
        return None
    return f"it resolves to {real}, outside the repository {root}"


def contained(base: Path, given: str, root: Path) -> Path:
    """`given` (relative to `base`), which must stay inside `root`. Raises `PathError`."""
    if "\x00" in given:
        raise PathError("it holds a NUL character")
    path = Path(base) / Path(given).expanduser()
    if reason := outside(path, root):
        raise PathError(reason)
    return path.resolve()


def walk_files(directory: Path) -> Iterator[Path]:
    """Every entry under `directory`, symlinks included but not followed (at most MAX_FILES)."""
    count = 0
    for top, dirs, files in os.walk(directory, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            count += 1
            if count > MAX_FILES:
                raise PathError(f"{directory} holds more than {MAX_FILES} files")
            yield Path(top) / name


def check_tree(directory: Path, root: Path) -> None:
    """Refuse a directory with an entry (a symlink) that resolves outside `root`."""
    for entry in walk_files(directory):
        if reason := outside(entry, root):
            raise PathError(f"{entry} is a link out of the repository: {reason.split(', ')[-1]}")


class ContainedLoader(FileSystemLoader):
    """Jinja's `FileSystemLoader`, refusing a template whose real path leaves the repository
    of its search directory (a link to `/proc/self/environ` would put the environment, and
    the Hub token in it, on the card)."""

    def get_source(self, environment, template):  # type: ignore[override]
        pieces = split_template_path(template)  # jinja's own refusal of '..' first
        for searchpath in self.searchpath:
            candidate = Path(searchpath, *pieces)
            if candidate.is_file() or candidate.is_symlink():
                if reason := outside(candidate, repository_root(Path(searchpath))):
                    raise PathError(
                        f"template '{template}' in {searchpath} is refused: {reason}; "
                        "templates must be files inside the repository, not links out of it"
                    )
                break
        return super().get_source(environment, template)


# ---------------------------------------------------------------------------------------------
# code in lm-eval tasks


class _TaskScanner(yaml.SafeLoader):
    """Reads a task YAML and notes every tag beyond plain YAML (`!function`, `!!python/...`)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.tags: list[tuple[int, str]] = []


def _note_tag(loader: _TaskScanner, suffix: str, node: yaml.Node) -> str:
    value = node.value if isinstance(node, yaml.ScalarNode) else ""
    loader.tags.append((node.start_mark.line + 1, f"{node.tag} {value}".strip()))
    return ""


_TaskScanner.add_multi_constructor("!", _note_tag)
_TaskScanner.add_multi_constructor("tag:yaml.org,2002:python/", _note_tag)


def task_code(path: Path, root: Path | None = None, seen: set[Path] | None = None) -> list[str]:
    """Where a task file runs Python, as `FILE:LINE: what` strings (empty: none), following
    its `include:`s as lm-eval does. An include that leaves `root` raises `PathError`."""
    if path.suffix == ".py":
        return [f"{path}: a Python file"]
    if path.suffix not in TASK_SUFFIXES or not path.is_file():
        return []
    seen = seen if seen is not None else {path.resolve()}
    try:
        with path.open(encoding="utf-8") as handle:
            text = handle.read(MAX_TASK_CHARS + 1)
        if len(text) > MAX_TASK_CHARS:
            return [f"{path}: longer than {MAX_TASK_CHARS} characters, too long to check"]
        scanner = _TaskScanner(text)
        try:
            node = scanner.get_single_node()
            data = scanner.construct_document(node) if node is not None else None
        finally:
            scanner.dispose()
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return [f"{path}: cannot be read as YAML ({str(exc).splitlines()[0]})"]
    found = [f"{path}:{line}: {tag}" for line, tag in scanner.tags]
    if not isinstance(data, dict):
        return found
    if root is not None:
        check_task_data(path, node, root)
    found += [f"{path}: '{key}'" for key in CODE_KEYS if data.get(key) not in (None, "")]
    kwargs = data.get("dataset_kwargs")
    if isinstance(kwargs, dict) and kwargs.get("trust_remote_code"):
        found.append(f"{path}: dataset_kwargs.trust_remote_code")
    for target in _includes(path, data.get("include")):
        if root is not None and (reason := outside(target, root)):
            raise PathError(f"{path}: include '{target}' is refused: {reason}")
        if target.resolve() not in seen:
            seen.add(target.resolve())
            found += task_code(target, root, seen)
    return found


def _mapping_value(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


def _scalars(node: yaml.Node | None) -> Iterator[yaml.ScalarNode]:
    """The strings of a value that may be one, a list, or a mapping of split -> one or a list."""
    if isinstance(node, yaml.ScalarNode):
        yield node
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _scalars(item)
    elif isinstance(node, yaml.MappingNode):
        for _, item in node.value:
            yield from _scalars(item)


def check_task_data(path: Path, node: yaml.Node, root: Path) -> None:
    """A task's local data (`dataset_kwargs.data_files`, `.data_dir`, a `dataset_path` that is a
    path) stays inside `root`: a task reading `/etc/passwd` or `~/.cache/huggingface/token`
    would put it in the eval's prompts, samples and logs. Remote files (`hf://`, `https://`)
    are not paths. Relative entries are taken from the task file's directory and may not climb
    out with `..` (datasets resolves them against the working directory)."""
    kwargs = _mapping_value(node, "dataset_kwargs")
    entries = [
        (f"dataset_kwargs.{key}", scalar)
        for key in ("data_files", "data_dir")
        for scalar in _scalars(_mapping_value(kwargs, key))
    ]
    dataset = _mapping_value(node, "dataset_path")
    if isinstance(dataset, yaml.ScalarNode) and dataset.value.startswith(("/", ".", "~")):
        entries.append(("dataset_path", dataset))
    for field, scalar in entries:
        given = str(scalar.value)
        if "://" in given:
            continue
        reason = None
        if "\x00" in given:
            reason = "it holds a NUL character"
        elif not Path(given).expanduser().is_absolute() and ".." in Path(given).parts:
            reason = "a relative path may not climb out with '..'"
        else:
            reason = outside(path.parent / Path(given).expanduser(), root)
        if reason:
            raise PathError(
                f"{path}:{scalar.start_mark.line + 1}: {field} '{given}' is refused: {reason}; "
                "keep task data inside the repository, or give an hf:// or https:// URL"
            )


def _includes(path: Path, include: Any) -> list[Path]:
    """The files an lm-eval `include:` names: one or a list, relative to the including file."""
    items = include if isinstance(include, list) else [] if include is None else [include]
    return [path.parent / str(item) for item in items]  # an absolute item stays absolute


def tasks_code(path: Path, root: Path | None = None) -> list[str]:
    """Where a task file, or any file under a task directory, runs Python."""
    if path.is_dir():
        return [hit for entry in walk_files(path) for hit in task_code(entry, root)]
    return task_code(path, root)


def check_tasks(path: Path, root: Path, allow_code: bool) -> None:
    """The check applied where tasks are used: inside `root` (includes too), and code only
    if allowed."""
    if reason := outside(path, root):
        raise PathError(f"{path}: {reason}")
    if path.is_dir():
        check_tree(path, root)
    hits = tasks_code(path, root)
    if hits and not allow_code:
        raise PathError(code_message(hits))


def code_message(hits: list[str]) -> str:
    shown = "; ".join(hits[:3]) + (f"; and {len(hits) - 3} more" if len(hits) > 3 else "")
    return (
        f"custom lm-eval tasks run Python ({shown}); remove it, or set "
        "'publish.eval.allow_code: true' if you trust this code to run next to the eval"
    )


def is_chat_template_path(value: str) -> bool:
    """Whether `publish.chat_template` names a file rather than holding a template."""
    return value.endswith(CHAT_TEMPLATE_SUFFIXES) and "{" not in value and "\n" not in value


def chat_template_text(value: str, recipe_dir: Path) -> str:
    """`publish.chat_template` as mergekit takes it: the file's text when it names a file
    (inside the recipe's repository), else the value itself (a template or a built-in name)."""
    if not is_chat_template_path(value):
        return value
    path = contained(recipe_dir, value, repository_root(recipe_dir))
    with path.open(encoding="utf-8") as handle:
        text = handle.read(MAX_TEMPLATE_CHARS + 1)
    if len(text) > MAX_TEMPLATE_CHARS:
        raise PathError(f"chat template {path} is longer than {MAX_TEMPLATE_CHARS} characters")
    return text
