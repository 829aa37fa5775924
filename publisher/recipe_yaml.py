"""The recipe file: read with bounds, parsed as YAML with positions, problems located.

A recipe is a regular file of at most `MAX_RECIPE_BYTES`, opened without blocking (a named
pipe or /dev/zero is refused, not read). Its YAML is composed once into nodes, which keep line
and column for every message, and its aliases may expand it to at most `MAX_YAML_NODES`
values (a 1 KB "alias bomb" would otherwise expand to a billion). Every `Problem` escapes the
characters it quotes, so a key cannot smuggle a newline (a GitHub workflow command) or an
escape code into the output.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from publisher.errors import PublisherError

# A recipe is a few KB; anything near this is a mistake or an attack (50 MB of tags).
MAX_RECIPE_BYTES = 512 * 1024
# Values in the YAML with every alias written out; a real recipe has a few hundred.
MAX_YAML_NODES = 50_000


def printable(text: str) -> str:
    """`text` with every character that is not printable escaped (`\\n`, `\\x1b`, ...).

    Messages quote the recipe's keys and values; a raw newline followed by `::error` would be
    read by GitHub Actions as a workflow command, and escape codes would rewrite the terminal.
    """
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a recipe, located at a YAML node.

    Attributes:
        file: the recipe path as given, e.g. `"recipes/x.yaml"`.
        line: 1-based line, e.g. 12.
        column: 1-based column, e.g. 5.
        message: what is wrong and how to fix it.
    """

    file: str
    line: int
    column: int
    message: str

    def __post_init__(self) -> None:
        # every message is made safe once, here, whatever it quotes
        object.__setattr__(self, "file", printable(self.file))
        object.__setattr__(self, "message", printable(self.message))

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class RecipeError(PublisherError):
    """A recipe failed validation; `problems` says where and why."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class Locator:
    """Maps a path of keys and indexes in the parsed YAML to the node's line and column."""

    def __init__(self, file: str, root: yaml.Node | None):
        self.file = file
        self.root = root

    def node(self, path: tuple[Any, ...], key: bool = False) -> yaml.Node | None:
        node = self.root
        for index, part in enumerate(path):
            if isinstance(node, yaml.MappingNode):
                match = None
                for k, v in node.value:
                    # no break: with a duplicate key the parsed data holds the last one
                    if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                        match = (k, v)
                if match is None:
                    break  # a missing key: point at the mapping that lacks it
                is_last = index == len(path) - 1
                node = match[0] if (key and is_last) else match[1]
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(part, int)
                and 0 <= part < len(node.value)
            ):
                node = node.value[part]
            else:
                break
        return node

    def problem(self, path: tuple[Any, ...], message: str, key: bool = False) -> Problem:
        node = self.node(path, key=key)
        if node is None:
            return Problem(self.file, 1, 1, message)
        return Problem(self.file, node.start_mark.line + 1, node.start_mark.column + 1, message)


def read_text(path: Path) -> tuple[bytes, str]:
    """The recipe's bytes and text: a regular file of at most MAX_RECIPE_BYTES.

    Opened without blocking and checked on the open file, so a named pipe, a device such as
    /dev/zero or a file swapped in after a check never hangs or fills memory.
    """
    file = str(path)

    def refuse(message: str) -> RecipeError:
        return RecipeError([Problem(file, 1, 1, message)])

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise refuse(f"cannot read recipe: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise refuse(
                f"recipe is not a regular file (it is {_file_kind(mode)}); give a YAML file"
            )
        raw = handle.read(MAX_RECIPE_BYTES + 1)
    if len(raw) > MAX_RECIPE_BYTES:
        raise refuse(
            f"recipe is larger than {MAX_RECIPE_BYTES // 1024} KiB; a recipe is a short config: "
            "keep long texts and lists out of it"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(f"recipe is not UTF-8 text ({exc.reason})") from None
    if not text.strip():
        raise refuse("recipe is empty; write a mergekit SLERP config (see recipes/)")
    return raw, text


def _file_kind(mode: int) -> str:
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def parse(file: str, text: str) -> tuple[yaml.Node | None, Any]:
    """The YAML's node tree (for positions) and its data, built from the same tree."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # its reader checks every character here
        root = loader.get_single_node()
        _check_aliases(file, text, root)
        data = loader.construct_document(root) if root is not None else None
    except yaml.reader.ReaderError as exc:
        # a character YAML does not allow (a control character): at its own line
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise RecipeError(
            [
                Problem(
                    file,
                    line,
                    col,
                    f"invalid YAML: the control character {_codepoint(exc.character)} is not "
                    "allowed in a recipe; remove it (or write it as an escape in quotes)",
                )
            ]
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(
            [Problem(file, line, col, f"invalid YAML: {reason}; fix the syntax at this point")]
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    return root, data


def _codepoint(character: int | str) -> str:
    return f"U+{character if isinstance(character, int) else ord(character):04X}"


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _expanded_size(root: yaml.Node) -> int | None:
    """How many nodes the tree holds with every alias written out (None: an alias cycle).

    Aliases share nodes, so the tree is small; written out, it can grow ~9x per level (an
    "alias bomb"). Counted once per node, capped past the budget, without recursion.
    """
    size: dict[int, int] = {}
    path: set[int] = set()  # nodes entered and not finished: the current path
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        if finished:
            path.discard(id(node))
            total = 1 + sum(size[id(c)] for c in _children(node))
            size[id(node)] = min(total, MAX_YAML_NODES + 1)
        elif id(node) in path:
            return None
        elif id(node) not in size:
            path.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in _children(node))
    return size[id(root)]


def _check_aliases(file: str, text: str, root: yaml.Node | None) -> None:
    if root is None or "*" not in text:
        return
    size = _expanded_size(root)
    if size is not None and size <= MAX_YAML_NODES:
        return
    first = next(
        (e for e in yaml.parse(text, Loader=yaml.SafeLoader) if isinstance(e, yaml.AliasEvent)),
        None,
    )
    line, col = (first.start_mark.line + 1, first.start_mark.column + 1) if first else (1, 1)
    why = (
        "refers to a mapping or list that contains it"
        if size is None
        else f"and the others expand the recipe to more than {MAX_YAML_NODES} values"
    )
    raise RecipeError(
        [Problem(file, line, col, f"this YAML alias {why}; write the values out instead")]
    )


def duplicate_keys(file: str, root: yaml.Node | None) -> list[Problem]:
    """Every repeated key of a mapping: YAML loaders silently keep the last one."""
    problems: list[Problem] = []
    stack = [root] if root is not None else []
    seen: set[int] = set()  # aliases share nodes, and anchors can make cycles
    while stack:  # a loop, not recursion: nesting depth is the user's to choose
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], yaml.Node] = {}
            for key, value in node.value:
                stack.extend((key, value))
                if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                    continue
                if (key.tag, key.value) in first:
                    earlier = first[(key.tag, key.value)].start_mark.line + 1
                    mark = key.start_mark
                    problems.append(
                        Problem(
                            file,
                            mark.line + 1,
                            mark.column + 1,
                            f"duplicate key '{key.value}' (first at line {earlier}); remove one",
                        )
                    )
                else:
                    first[(key.tag, key.value)] = key
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return problems
