"""Recipes: a mergekit SLERP config, unchanged, plus an optional top-level `publish:` block.

`load_recipe` parses a recipe with mergekit's own `MergeConfiguration` and then applies the
service's rules. Every problem is reported as a `Problem` that points at the offending YAML node
(`FILE:LINE:COL: message`), with a hint how to fix it. Bad input never raises anything but
`RecipeError`, which carries the problems.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from publisher.errors import PublisherError
from publisher.licenses import HUB_LICENSES

PUBLISH_KEY = "publish"
NAMESPACE_ENV = "PUBLISHER_NAMESPACE"
KNOWN_DTYPES = ("float32", "float16", "bfloat16", "float64")
REPO_ID_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
EVAL_SUITES = ("openllm-v1", "leaderboard", "nous", "tiny")
# What a parameter such as `t` may be (mergekit's `ParameterSetting`), said once for every message.
SETTING_FORMS = (
    "a number in [0, 1], a list of numbers (anchors), or a list of {filter, value} entries"
)
# Filters that mergekit's `evaluate_setting` treats as matching every tensor.
CATCH_ALL_FILTERS = (None, "*", "")


class SmokePrompt(BaseModel):
    """One smoke-test conversation: an optional system message and a user message."""

    model_config = ConfigDict(extra="forbid")
    user: str
    system: str | None = None


DEFAULT_SMOKE_PROMPTS = [
    SmokePrompt(user="What is the capital of France?"),
    SmokePrompt(system="You are a helpful assistant.", user="Tell me a short story about a cat."),
]


class SmokeSettings(BaseModel):
    """How the merged model is smoke-tested through its chat template."""

    model_config = ConfigDict(extra="forbid")
    prompts: list[SmokePrompt] = Field(default_factory=lambda: list(DEFAULT_SMOKE_PROMPTS))
    max_new_tokens: int = Field(default=32, ge=1, le=4096)
    # A degenerate reply (empty, or one token repeated) is a warning on the card; strict fails.
    strict: bool = False


class EvalSettings(BaseModel):
    """Which lm-evaluation-harness tasks run, and how."""

    model_config = ConfigDict(extra="forbid")
    suite: str | None = None
    tasks: list[str] = Field(default_factory=list)
    limit: float | None = Field(default=None, gt=0)
    num_fewshot: int | None = Field(default=None, ge=0)
    batch_size: int | Literal["auto"] | None = None
    apply_chat_template: bool = False
    include_paths: list[str] = Field(default_factory=list)
    backend: Literal["hf", "vllm"] = "hf"
    # What lm-eval loads the merged weights as; "auto" keeps the checkpoint's dtype.
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    # Evaluate both parents the same way, so the card compares the merge with them.
    parents: bool = True


class MergeSettings(BaseModel):
    """Options passed to mergekit's `MergeOptions`."""

    model_config = ConfigDict(extra="forbid")
    cuda: bool = False
    lazy_unpickle: bool = False
    low_cpu_memory: bool = False
    out_shard_size: str | int = "5B"


class PublishSettings(BaseModel):
    """The `publish:` block of a recipe. Every field has a default, so it may be left out."""

    model_config = ConfigDict(extra="forbid")
    repo_id: str | None = None
    license: str | None = None
    private: bool = False
    description: str | None = None
    tags: list[str] = Field(default_factory=list)
    # Claimed on the card only when the recipe gives it.
    language: list[str] = Field(default_factory=list)
    chat_template: str | None = None
    smoke: SmokeSettings = Field(default_factory=SmokeSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    merge: MergeSettings = Field(default_factory=MergeSettings)
    templates: str | None = None
    push: bool = False
    create_pr: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = False


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

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class RecipeError(PublisherError):
    """A recipe failed validation; `problems` says where and why."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass
class Recipe:
    """A validated recipe.

    Attributes:
        path: the recipe file, e.g. `recipes/strangemerges-34-7b-slerp.yaml`.
        name: the file's stem, e.g. `"strangemerges-34-7b-slerp"`.
        text: the exact file contents (shown verbatim on the card).
        sha256: hex digest of `text`'s bytes.
        merge: the mergekit part, as a plain dict (what `MergeConfiguration` parsed).
        publish: the publish settings, defaults filled in.
        repo_id: the Hub repo the model goes to, e.g. `"Gille/StrangeMerges_34-7B-slerp"`.
        warnings: non-fatal findings, e.g. a license inferred from the parents.
    """

    path: Path
    name: str
    text: str
    sha256: str
    merge: dict[str, Any]
    publish: PublishSettings
    repo_id: str
    warnings: list[str] = field(default_factory=list)

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(f"{self.name}.lock.json")

    def merge_configuration(self):
        """The mergekit `MergeConfiguration` of this recipe (a fresh object each call)."""
        from mergekit.config import MergeConfiguration

        return MergeConfiguration.model_validate(self.merge)

    def model_refs(self) -> list[str]:
        """Every parent as written in the recipe, base model first."""
        cfg = self.merge_configuration()
        refs = [str(m) for m in cfg.referenced_models()]
        base = str(cfg.base_model) if cfg.base_model else None
        ordered = sorted(set(refs), key=lambda r: (r != base, refs.index(r)))
        return ordered

    @property
    def base_model(self) -> str:
        return str(self.merge_configuration().base_model)

    def model_problem(self, ref: str, message: str) -> Problem:
        """A `Problem` at the first place the recipe names parent `ref` as a `model:`
        (else as `base_model:`, else at the top of the file)."""
        root = yaml.compose(self.text, Loader=yaml.SafeLoader)
        node = _model_node(root, ref, "model") or _model_node(root, ref, "base_model")
        if node is None:
            return Problem(str(self.path), 1, 1, message)
        return Problem(
            str(self.path), node.start_mark.line + 1, node.start_mark.column + 1, message
        )


def _model_node(node: yaml.Node | None, ref: str, key: str) -> yaml.Node | None:
    """The first scalar `key: ref` under `node`, depth first, in file order."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key and isinstance(v, yaml.ScalarNode) and v.value == ref:
                return v
            if (found := _model_node(v, ref, key)) is not None:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            if (found := _model_node(item, ref, key)) is not None:
                return found
    return None


# ---------------------------------------------------------------------------------------------
# YAML locations


class _Locator:
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
                    continue  # pydantic inserts union member names into locations: skip them
                is_last = index == len(path) - 1
                node = match[0] if (key and is_last) else match[1]
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(part, int)
                and 0 <= part < len(node.value)
            ):
                node = node.value[part]
            # other parts (type names in union errors) do not move the cursor
        return node

    def problem(self, path: tuple[Any, ...], message: str, key: bool = False) -> Problem:
        node = self.node(path, key=key)
        if node is None:
            return Problem(self.file, 1, 1, message)
        return Problem(self.file, node.start_mark.line + 1, node.start_mark.column + 1, message)


def _closest(word: str, options: list[str], otherwise: str = "") -> str:
    """ " Did you mean 'x'?" for the option closest to `word`, else `otherwise`."""
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" Did you mean '{match[0]}'?" if match else otherwise


def _known_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


# ---------------------------------------------------------------------------------------------
# Loading


def _default_repo_id(name: str) -> str:
    namespace = os.environ.get(NAMESPACE_ENV, "").strip()
    return f"{namespace}/{name}" if namespace else name


def repo_id_problem(repo_id: str) -> str | None:
    """Why the Hub would refuse `repo_id`, or None when it is fine."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        # huggingface_hub's messages repeat the id; the caller already quotes it
        return str(exc).replace(f": '{repo_id}'", "").replace(f" '{repo_id}'", "").rstrip(".")
    if not REPO_ID_RE.match(repo_id):
        # huggingface_hub's \w also lets non-ASCII letters and a leading '_' through
        return "use ASCII letters, digits, '-', '_' and '.', starting with a letter or digit"
    return None


def load_recipe(path: str | Path) -> Recipe:
    """Read, parse and validate a recipe. Raises `RecipeError` with every problem found.

    Nothing else escapes: `validate` goes on with the other files whatever this one holds.
    """
    file = str(path)
    try:
        return _load_recipe(Path(path))
    except RecipeError:
        raise
    except RecursionError:
        # PyYAML and the checks below recurse once per nesting level
        raise RecipeError(
            [
                Problem(
                    file,
                    1,
                    1,
                    "recipe is nested too deeply to read; flatten its lists and mappings",
                )
            ]
        ) from None
    except Exception as exc:  # a bug here must not hide the other files' problems
        raise RecipeError(
            [Problem(file, 1, 1, f"cannot validate recipe: unexpected {type(exc).__name__}: {exc}")]
        ) from None


def _load_recipe(path: Path) -> Recipe:
    file = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecipeError(
            [Problem(file, 1, 1, f"cannot read recipe: {exc.strerror or exc}")]
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(
            [Problem(file, 1, 1, f"recipe is not UTF-8 text ({exc.reason})")]
        ) from None
    if not text.strip():
        raise RecipeError(
            [Problem(file, 1, 1, "recipe is empty; write a mergekit SLERP config (see recipes/)")]
        )
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(
            [Problem(file, line, col, f"invalid YAML: {reason}; fix the syntax at this point")]
        ) from None
    loc = _Locator(file, root)
    if not isinstance(data, dict):
        kind = type(data).__name__ if data is not None else "nothing"
        raise RecipeError(
            [
                loc.problem(
                    (),
                    f"a recipe must be a mapping at the top (found {kind}); "
                    "start with keys like 'merge_method:' and 'slices:'",
                )
            ]
        )
    problems: list[Problem] = _duplicate_keys(file, root)
    merge = {k: v for k, v in data.items() if k != PUBLISH_KEY}
    publish_raw = data.get(PUBLISH_KEY) or {}

    publish = _validate_publish(publish_raw, loc, problems)
    config = _validate_merge(merge, loc, problems)
    if config is not None:
        _validate_slerp_rules(config, merge, loc, problems)

    name = path.stem
    repo_id = publish.repo_id or _default_repo_id(name)
    if publish.repo_id is None and (reason := repo_id_problem(repo_id)):
        # the file name is the only source of the id: point at the top of the file
        problems.append(
            Problem(
                file,
                1,
                1,
                f"the default repo id '{repo_id}' (from the file name) is not a valid Hub "
                f"repo id ({reason}); set publish.repo_id to 'namespace/name' or rename "
                "the file",
            )
        )
    if problems:
        # checks run part by part; the reader goes through the file top to bottom
        raise RecipeError(sorted(problems, key=lambda p: (p.line, p.column)))
    return Recipe(
        path=path,
        name=name,
        text=text,
        sha256=hashlib.sha256(raw).hexdigest(),
        merge=merge,
        publish=publish,
        repo_id=repo_id,
    )


def _duplicate_keys(file: str, root: yaml.Node | None) -> list[Problem]:
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


def validate_files(paths: list[str | Path]) -> list[Problem]:
    """Validate several recipes; return every problem (empty when all are valid)."""
    problems: list[Problem] = []
    for path in paths:
        try:
            load_recipe(path)
        except RecipeError as err:
            problems.extend(err.problems)
    return problems


def _validate_publish(raw: Any, loc: _Locator, problems: list[Problem]) -> PublishSettings:
    if not isinstance(raw, dict):
        problems.append(
            loc.problem(
                (PUBLISH_KEY,),
                "'publish' must be a mapping of settings (repo_id, license, tags, ...)",
            )
        )
        return PublishSettings()
    try:
        publish = PublishSettings.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            if err["type"] != "extra_forbidden":
                continue
            owner = _model_for_path(PublishSettings, err["loc"][:-1])
            word = str(err["loc"][-1])
            known = _known_keys(owner) if owner else []
            hint = _closest(word, known, " Known keys: " + ", ".join(known))
            problems.append(
                loc.problem(
                    (PUBLISH_KEY, *err["loc"]),
                    f"unknown key '{word}' in publish settings.{hint}",
                    key=True,
                )
            )
        others = [err for err in exc.errors() if err["type"] != "extra_forbidden"]
        problems.extend(_schema_problems(others, PublishSettings, (PUBLISH_KEY,), loc))
        return PublishSettings()
    if publish.repo_id is not None and (reason := repo_id_problem(publish.repo_id)):
        problems.append(
            loc.problem(
                (PUBLISH_KEY, "repo_id"),
                f"'{publish.repo_id}' is not a valid Hub repo id ({reason}); "
                "set publish.repo_id to 'namespace/name'",
            )
        )
    if publish.license is not None and publish.license not in HUB_LICENSES:
        hint = _closest(
            publish.license, sorted(HUB_LICENSES), " Use an id such as apache-2.0, mit or other."
        )
        problems.append(
            loc.problem(
                (PUBLISH_KEY, "license"),
                f"'{publish.license}' is not a Hub license id.{hint}",
            )
        )
    if publish.eval.suite is not None and publish.eval.suite not in EVAL_SUITES:
        hint = _closest(
            publish.eval.suite, list(EVAL_SUITES), " Known suites: " + ", ".join(EVAL_SUITES)
        )
        problems.append(
            loc.problem(
                (PUBLISH_KEY, "eval", "suite"),
                f"unknown eval suite '{publish.eval.suite}'.{hint}",
            )
        )
    if not publish.smoke.prompts:
        problems.append(
            loc.problem(
                (PUBLISH_KEY, "smoke", "prompts"),
                "smoke.prompts is empty; give at least one prompt or remove the key",
            )
        )
    return publish


def _model_for_path(model: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at `path` (for unknown-key suggestions)."""
    current: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(str(part))
        if info is None:
            return None
        current = _first_model(info.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _first_model(annotation: Any) -> Any:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _first_model(arg)
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------------------------------------
# pydantic errors, one line per YAML node

# Error kinds whose pydantic message already says what is wrong with an otherwise fine value.
_CONSTRAINT_ERRORS = {
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "multiple_of",
    "finite_number",
    "value_error",
    "assertion_error",
}


def _members(annotation: Any) -> list[Any]:
    """The alternatives of a type: unions and Optional flattened (None dropped)."""
    if get_origin(annotation) in (Union, types.UnionType):
        return [m for arg in get_args(annotation) for m in _members(arg)]
    return [] if annotation is type(None) else [annotation]


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _walk_loc(root: Any, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], list[Any], str | None]:
    """Follow a pydantic error location through the annotations of `root`.

    Returns the YAML path (union member names such as `list[str]` dropped: they are not in the
    file), the annotation expected at each prefix of that path (`[root, ...]`), and the name of
    the merge parameter the path enters, if any (`"t"` for `("parameters", "t", ...)`).
    """
    path: list[Any] = []
    annotations = [root]
    for part in loc:
        members = _members(annotations[-1])
        model = next((m for m in members if _is_model(m) and part in m.model_fields), None)
        seq = next((m for m in members if get_origin(m) in (list, tuple)), None)
        mapping = next((m for m in members if get_origin(m) is dict), None)
        if model is not None and isinstance(part, str):
            path.append(part)
            annotations.append(model.model_fields[part].annotation)
        elif seq is not None and isinstance(part, int):
            args = [a for a in get_args(seq) if a is not Ellipsis]
            fixed = get_origin(seq) is tuple and Ellipsis not in get_args(seq)
            path.append(part)
            annotations.append(args[part] if fixed and part < len(args) else args[0])
        elif mapping is not None:
            path.append(part)
            if path[-2:-1] == ["parameters"]:
                return tuple(path), annotations, str(part)
            annotations.append(get_args(mapping)[1])
        # anything else names a union member: it does not move in the file
    return tuple(path), annotations, None


def _plural(annotation: Any) -> str:
    members = _members(annotation)
    if len(members) != 1:
        return "values"
    member = members[0]
    names = {bool: "true/false values", int: "whole numbers", float: "numbers", str: "strings"}
    if member in names:
        return names[member]
    if _is_model(member):
        return f"mappings (keys: {', '.join(member.model_fields)})"
    return "values"


def _describe(annotation: Any) -> str:
    """What a value of `annotation` looks like in YAML, e.g. 'a list of strings'."""
    parts = []
    for member in _members(annotation):
        origin, args = get_origin(member), get_args(member)
        if member is bool:
            parts.append("true or false")
        elif member is int:
            parts.append("a whole number")
        elif member is float:
            parts.append("a number")
        elif member is str:
            parts.append("text")
        elif origin is Literal:
            parts.append(" or ".join(repr(a) for a in args))
        elif origin is tuple and Ellipsis not in args:
            parts.append(f"a list of {len(args)} {_plural(args[0])}")
        elif origin in (list, tuple):
            parts.append(f"a list of {_plural(args[0]) if args else 'values'}")
        elif origin is dict:
            parts.append("a mapping")
        elif _is_model(member) and member.__name__ == "ModelReference":
            parts.append("a model id such as org/name or a local path")
        elif _is_model(member):
            parts.append(f"a mapping with keys {', '.join(member.model_fields)}")
        else:
            parts.append(getattr(member, "__name__", str(member)))
    return " or ".join(dict.fromkeys(parts)) or "nothing (remove the key)"


def _example(annotation: Any, value: Any) -> str | None:
    """A YAML value of `annotation` to show in a hint, built from the user's `value` if it fits."""
    members = _members(annotation)
    member = members[0] if members else None
    origin, args = get_origin(member), get_args(member)
    if member is bool:
        return "true"
    if origin is Literal:
        return str(args[0])
    if origin is tuple and all(a is int for a in args):
        return "[0, 32]"
    if origin is list and args and args[0] in (str, int, float):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return f"[{value}]"  # a lone value needs the brackets
        return "[first, second]"
    return None


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "config"


def _schema_message(err: dict[str, Any], path: tuple[Any, ...], annotations: list[Any]) -> str:
    dotted = _dotted(path)
    if err["type"] == "missing" and path:
        parent = _dotted(path[:-1])
        if isinstance(path[-1], int):
            return f"{parent} is too short: it must be {_describe(annotations[-2])}"
        return f"{parent}: missing '{path[-1]}'; add it ({_describe(annotations[-1])})"
    if err["type"] in _CONSTRAINT_ERRORS:
        return f"{dotted}: {err['msg']}"
    expected = annotations[-1]
    message = f"{dotted} must be {_describe(expected)}"
    field = next((p for p in reversed(path) if isinstance(p, str)), dotted)
    if _members(expected) == [str]:
        value = err.get("input")
        if isinstance(value, (list, dict)):
            return (
                f"{message}; write one string (for several lines: '{field}: |', then indent them)"
            )
        return f"{message}; quote it, e.g. '{field}: \"{value}\"'"
    example = _example(expected, err.get("input"))
    return f"{message}; e.g. '{field}: {example}'" if example else message


def _schema_problems(
    errors: list[dict[str, Any]], root: type[BaseModel], prefix: tuple[Any, ...], loc: _Locator
) -> list[Problem]:
    """Turn pydantic's errors into one problem per YAML node.

    A union type fails once per member (mergekit's `t` up to 22 times for one value); the
    user needs one line saying what the node may be, not why each member refused it.
    """
    problems: list[Problem] = []
    seen: set[int] = set()
    for err in errors:
        path, annotations, param = _walk_loc(root, tuple(err["loc"]))
        where = (*prefix, *path)
        node = loc.node(where)
        if id(node) in seen:
            continue
        seen.add(id(node))
        if param is not None:
            message = f"{_dotted(where)}: {param} must be {SETTING_FORMS}"
        else:
            message = _schema_message(err, where, annotations)
        problems.append(loc.problem(where, message))
    return problems


def _check_unknown_keys(
    value: Any, model: Any, path: tuple[Any, ...], loc: _Locator, problems: list[Problem]
) -> None:
    """Walk the mergekit part against mergekit's pydantic models and report keys they ignore."""
    import typing

    model = _first_model(model)
    if model is None:
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_unknown_keys(item, model, (*path, i), loc, problems)
        return
    if not isinstance(value, dict):
        return
    known = _known_keys(model)
    for key, item in value.items():
        if key == "parameters":
            _check_parameters(item, (*path, key), loc, problems)
            continue
        if str(key) not in known:
            hint = _closest(
                str(key),
                known + ([PUBLISH_KEY] if path == () else []),
                " Known keys: " + ", ".join(known),
            )
            problems.append(
                loc.problem(
                    (*path, key),
                    f"unknown key '{key}'.{hint}",
                    key=True,
                )
            )
            continue
        annotation = model.model_fields[str(key)].annotation
        for arg in (annotation, *typing.get_args(annotation)):
            sub = _first_model(arg)
            if sub is not None:
                _check_unknown_keys(item, sub, (*path, key), loc, problems)
                break


def _slerp_parameter_names() -> list[str]:
    from mergekit import merge_methods

    method = merge_methods.get("slerp")
    return [p.name for p in method.spec.parameters]


def _check_parameters(
    params: Any, path: tuple[Any, ...], loc: _Locator, problems: list[Problem]
) -> None:
    """Check a `parameters:` mapping: known names, and settings mergekit can use.

    mergekit's pydantic models ignore unknown keys and report a bad setting once per union
    member, so the shape of each setting is checked here first, one problem per node.
    """
    if params is None:
        return
    if not isinstance(params, dict):
        problems.append(
            loc.problem(path, "'parameters' must be a mapping of SLERP parameters, e.g. {t: 0.5}")
        )
        return
    names = _slerp_parameter_names()
    for key, setting in params.items():
        if key not in names:
            hint = _closest(str(key), names, " SLERP takes: " + ", ".join(names))
            problems.append(
                loc.problem(
                    (*path, key),
                    f"unknown SLERP parameter '{key}'.{hint}",
                    key=True,
                )
            )
            continue
        _check_setting(setting, (*path, key), str(key), loc, problems)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


def _kind(value: Any) -> str:
    if value is None:
        return "empty (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def _check_setting(
    setting: Any, where: tuple[Any, ...], name: str, loc: _Locator, problems: list[Problem]
) -> None:
    """One parameter's setting: a scalar, a list of anchors, or {filter, value} entries."""
    if isinstance(setting, dict):
        _check_entry(setting, where, name, loc, problems)
    elif isinstance(setting, list):
        if not setting:
            # mergekit resolves an empty list to "not set" and stops at the first tensor
            problems.append(
                loc.problem(where, f"{name} is an empty list; {name} must be {SETTING_FORMS}")
            )
        elif all(isinstance(e, dict) for e in setting):
            for i, entry in enumerate(setting):
                _check_entry(entry, (*where, i), name, loc, problems)
        elif any(isinstance(e, dict) for e in setting):
            problems.append(
                loc.problem(
                    where,
                    f"{name} mixes {{filter, value}} entries with plain values; "
                    f"{name} must be {SETTING_FORMS}",
                )
            )
        else:
            _check_anchors(setting, where, name, loc, problems)
    elif not _is_scalar(setting):
        problems.append(
            loc.problem(where, f"{name} is {_kind(setting)}; {name} must be {SETTING_FORMS}")
        )


def _check_anchors(
    values: list[Any], where: tuple[Any, ...], name: str, loc: _Locator, problems: list[Problem]
) -> None:
    for i, value in enumerate(values):
        if not _is_scalar(value):
            problems.append(
                loc.problem(
                    (*where, i),
                    f"{name} anchor is {_kind(value)}; anchors are plain numbers, e.g. [0, 0.5, 1]",
                )
            )


def _check_entry(
    entry: Any, where: tuple[Any, ...], name: str, loc: _Locator, problems: list[Problem]
) -> None:
    """One `{filter, value}` entry (mergekit's `ConditionalParameter`, which drops unknown keys:
    a misspelt `filter` would silently apply the entry to every tensor)."""
    from mergekit.config import ConditionalParameter

    known = _known_keys(ConditionalParameter)
    unknown = [key for key in entry if str(key) not in known]
    for key in unknown:
        hint = _closest(str(key), known, " Entries take: " + ", ".join(known))
        problems.append(
            loc.problem(
                (*where, key),
                f"unknown key '{key}' in a {name} entry.{hint}",
                key=True,
            )
        )
    if "value" not in entry:
        if not unknown:  # a misspelt 'value' is already reported at this node
            problems.append(
                loc.problem(where, f"this {name} entry has no 'value'; add one, e.g. 'value: 0.5'")
            )
    elif isinstance(entry["value"], list):
        if not entry["value"]:
            problems.append(
                loc.problem(
                    (*where, "value"),
                    f"{name} value is an empty list; give a number or anchors, e.g. [0, 0.5, 1]",
                )
            )
        _check_anchors(entry["value"], (*where, "value"), name, loc, problems)
    elif not _is_scalar(entry["value"]):
        problems.append(
            loc.problem(
                (*where, "value"),
                f"{name} value is {_kind(entry['value'])}; it must be a number in [0, 1] "
                "or a list of numbers (anchors)",
            )
        )
    if entry.get("filter") is not None and not isinstance(entry["filter"], str):
        problems.append(
            loc.problem(
                (*where, "filter"),
                "filter must be text found in tensor names, e.g. 'self_attn' or 'mlp'",
            )
        )


def _validate_merge(merge: dict[str, Any], loc: _Locator, problems: list[Problem]):
    from mergekit.config import MergeConfiguration

    before = len(problems)
    _check_unknown_keys(merge, MergeConfiguration, (), loc, problems)
    method = merge.get("merge_method")
    if method is None:
        problems.append(
            loc.problem(
                (),
                "missing 'merge_method'; this service publishes SLERP "
                "merges: add 'merge_method: slerp'",
            )
        )
    elif method != "slerp":
        problems.append(
            loc.problem(
                ("merge_method",),
                f"merge_method '{method}' is not supported: this service "
                "publishes SLERP merges only; use 'merge_method: slerp'",
            )
        )
    if len(problems) > before:
        return None
    try:
        return MergeConfiguration.model_validate(merge)
    except ValidationError as exc:
        problems.extend(_schema_problems(exc.errors(), MergeConfiguration, (), loc))
    except (RuntimeError, ValueError, TypeError) as exc:
        problems.append(loc.problem((), f"mergekit rejects this config: {exc}"))
    return None


def _validate_slerp_rules(
    config, merge: dict[str, Any], loc: _Locator, problems: list[Problem]
) -> None:
    base = config.base_model
    if base is None:
        problems.append(
            loc.problem(
                (),
                "missing 'base_model'; SLERP needs it (t=0 gives the base "
                "model): add 'base_model: <one of the two parents>'",
            )
        )
    if config.modules:
        problems.append(
            loc.problem(
                ("modules",),
                "'modules:' is not supported by this service; use 'slices:' or 'models:'",
            )
        )
        return
    if config.dtype is not None and config.dtype not in KNOWN_DTYPES:
        hint = _closest(config.dtype, list(KNOWN_DTYPES), " Use one of: " + ", ".join(KNOWN_DTYPES))
        problems.append(
            loc.problem(
                ("dtype",),
                f"unknown dtype '{config.dtype}'.{hint}",
            )
        )
    if config.out_dtype is not None and config.out_dtype not in KNOWN_DTYPES:
        problems.append(
            loc.problem(
                ("out_dtype",),
                f"unknown out_dtype '{config.out_dtype}'; use one of: {', '.join(KNOWN_DTYPES)}",
            )
        )
    if config.models:
        if len(config.models) != 2:
            problems.append(
                loc.problem(
                    ("models",),
                    f"SLERP takes exactly two models, found "
                    f"{len(config.models)}; list the base and one other",
                )
            )
        elif base is not None and base not in [m.model for m in config.models]:
            problems.append(
                loc.problem(
                    ("base_model",),
                    f"base_model '{base}' is not one of the two models; set it to one of them",
                )
            )
    for si, out_slice in enumerate(config.slices or []):
        _check_slice(si, out_slice, base, loc, problems)
    _check_t(config, loc, problems)


def _check_slice(si: int, out_slice, base, loc: _Locator, problems: list[Problem]) -> None:
    sources = out_slice.sources
    if len(sources) != 2:
        problems.append(
            loc.problem(
                ("slices", si, "sources"),
                f"slice {si} has {len(sources)} "
                "sources; SLERP needs exactly two (the base and one other)",
            )
        )
    slice_base = out_slice.base_model or base
    if slice_base is not None and slice_base not in [s.model for s in sources]:
        where = ("slices", si, "base_model") if out_slice.base_model else ("base_model",)
        problems.append(
            loc.problem(
                where,
                f"slice {si}: base_model "
                f"'{slice_base}' is not among its sources; add it or fix base_model",
            )
        )
    lengths = []
    ranges_ok = True
    for ri, src in enumerate(sources):
        start, end = src.layer_range
        if not (0 <= start < end):
            ranges_ok = False
            problems.append(
                loc.problem(
                    ("slices", si, "sources", ri, "layer_range"),
                    f"layer_range [{start}, {end}] must be ascending "
                    "(start < end) and start at 0 or more",
                )
            )
        lengths.append(end - start)
    # a broken range already has its line; its "length" (e.g. -32) would only confuse
    if ranges_ok and len(set(lengths)) > 1:
        problems.append(
            loc.problem(
                ("slices", si, "sources"),
                f"slice {si}: the sources' "
                f"layer ranges cover {lengths} layers; they must cover the same number",
            )
        )


def _t_at(
    params: dict[str, Any] | None, path: tuple[Any, ...]
) -> list[tuple[tuple[Any, ...], Any]]:
    """`[(yaml path of t, its setting)]` when `params` sets t, else `[]`."""
    return [((*path, "t"), params["t"])] if params and "t" in params else []


def _check_t(config, loc: _Locator, problems: list[Problem]) -> None:
    """Where each tensor's t comes from.

    mergekit's SLERP declares t as `BatchParameter(float)` with the default SHARED scope: one t
    per tensor for both inputs, resolved from the slice's `parameters:`, then the top-level
    ones (`ConfigReader.parameter_sources(None)`). A t under `models[i]` or a slice's
    `sources[j]` is never read, and a tensor that no setting gives a t fails the merge with
    "Missing required parameter t".
    """
    for where in _ignored_t_paths(config):
        target = "the top-level" if where[0] == "models" else "the slice's or the top-level"
        problems.append(
            loc.problem(
                where,
                "t here is ignored: SLERP's t is shared by both inputs, so mergekit reads it "
                f"only from {target} 'parameters:'; move it there",
                key=True,
            )
        )
    top = _t_at(config.parameters, ("parameters",))
    chains = [
        _t_at(out_slice.parameters, ("slices", si, "parameters")) + top
        for si, out_slice in enumerate(config.slices or [])
    ] or [top]
    scopes = list({where: setting for chain in chains for where, setting in chain}.items())
    if not scopes:
        problems.append(
            loc.problem(
                (),
                "no 't' parameter: SLERP needs 'parameters: {t: ...}' "
                "(a number, a list of anchors, or filtered values)",
            )
        )
        return
    reported: set[tuple[Any, ...]] = set()
    for si, chain in enumerate(chains):
        if not chain:
            problems.append(
                loc.problem(
                    ("slices", si),
                    f"slice {si} gets no t; add 't' to its 'parameters:' or to the top-level "
                    "'parameters:'",
                )
            )
        elif not any(_covers_every_tensor(setting) for _, setting in chain):
            where = chain[-1][0]  # the fallback belongs in the last place mergekit looks
            if where not in reported:
                reported.add(where)
                problems.append(
                    loc.problem(
                        where,
                        "t has no entry without a filter, so tensors that no filter matches "
                        "(embeddings, norms, lm_head) get no t and the merge fails; add e.g. "
                        "'- value: 0.5' as the last entry",
                    )
                )
    for where, setting in scopes:
        _check_unreachable_entries(setting, where, loc, problems)
        _check_t_values(setting, where, loc, problems)


def _ignored_t_paths(config) -> list[tuple[Any, ...]]:
    paths = [
        ("models", i, "parameters", "t")
        for i, model in enumerate(config.models or [])
        if model.parameters and "t" in model.parameters
    ]
    for si, out_slice in enumerate(config.slices or []):
        paths += [
            ("slices", si, "sources", ri, "parameters", "t")
            for ri, src in enumerate(out_slice.sources)
            if src.parameters and "t" in src.parameters
        ]
    return paths


def _conditional_entries(setting: Any) -> list[Any] | None:
    """The `{filter, value}` entries of a setting, or None for a number or anchor list."""
    from mergekit.config import ConditionalParameter

    if isinstance(setting, ConditionalParameter):
        return [setting]
    if (
        isinstance(setting, list)
        and setting
        and all(isinstance(e, ConditionalParameter) for e in setting)
    ):
        return setting
    return None


def _covers_every_tensor(setting: Any) -> bool:
    entries = _conditional_entries(setting)
    if entries is None:
        return setting != []
    return any(e.filter in CATCH_ALL_FILTERS for e in entries)


def _check_unreachable_entries(
    setting: Any, where: tuple[Any, ...], loc: _Locator, problems: list[Problem]
) -> None:
    """mergekit uses the first matching entry: anything after a filter-less one is dead."""
    entries = _conditional_entries(setting)
    if entries is None or not isinstance(setting, list):
        return
    first = next((i for i, e in enumerate(entries) if e.filter in CATCH_ALL_FILTERS), None)
    if first is None:
        return
    for i in range(first + 1, len(entries)):
        problems.append(
            loc.problem(
                (*where, i),
                f"this t entry is never used: entry {first} above has no filter and matches "
                "every tensor first; move the entry without a filter to the end",
            )
        )


def _check_t_values(
    setting: Any, where: tuple[Any, ...], loc: _Locator, problems: list[Problem]
) -> None:
    from mergekit.config import ConditionalParameter

    for sub_path, value in _scalar_values(setting, where, ConditionalParameter):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(
                loc.problem(
                    sub_path, f"t value {value!r} is not a number; use numbers between 0 and 1"
                )
            )
        elif not 0.0 <= float(value) <= 1.0:
            problems.append(
                loc.problem(
                    sub_path,
                    f"t value {value} is outside [0, 1]; "
                    "0 keeps the base model, 1 takes the other parent",
                )
            )


def _scalar_values(setting: Any, where: tuple[Any, ...], conditional: type):
    """Yield (yaml path, value) for every scalar anchor of a parameter setting."""
    if isinstance(setting, conditional):
        setting = [setting]
    if isinstance(setting, list):
        if all(isinstance(e, conditional) for e in setting):
            for i, cond in enumerate(setting):
                yield from _scalar_values(cond.value, (*where, i, "value"), conditional)
            return
        for i, e in enumerate(setting):
            yield (*where, i), e
        return
    yield where, setting


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML file that must be a mapping (used by tests and tools)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a mapping")
    return data
