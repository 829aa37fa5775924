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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from publisher.licenses import HUB_LICENSES

PUBLISH_KEY = "publish"
NAMESPACE_ENV = "PUBLISHER_NAMESPACE"
KNOWN_DTYPES = ("float32", "float16", "bfloat16", "float64")
REPO_ID_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
EVAL_SUITES = ("openllm-v1", "leaderboard", "nous", "tiny")


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
    language: list[str] = Field(default_factory=lambda: ["en"])
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


class RecipeError(Exception):
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
                    if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                        match = (k, v)
                        break
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


def _closest(word: str, options: list[str]) -> str:
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" Did you mean '{match[0]}'?" if match else ""


def _known_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


# ---------------------------------------------------------------------------------------------
# Loading


def _default_repo_id(name: str) -> str:
    namespace = os.environ.get(NAMESPACE_ENV, "").strip()
    return f"{namespace}/{name}" if namespace else name


def load_recipe(path: str | Path) -> Recipe:
    """Read, parse and validate a recipe. Raises `RecipeError` with every problem found."""
    path = Path(path)
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
    problems: list[Problem] = []
    merge = {k: v for k, v in data.items() if k != PUBLISH_KEY}
    publish_raw = data.get(PUBLISH_KEY) or {}

    publish = _validate_publish(publish_raw, loc, problems)
    config = _validate_merge(merge, loc, problems)
    if config is not None:
        _validate_slerp_rules(config, merge, loc, problems)
    if problems:
        raise RecipeError(problems)

    name = path.stem
    repo_id = publish.repo_id or _default_repo_id(name)
    return Recipe(
        path=path,
        name=name,
        text=text,
        sha256=hashlib.sha256(raw).hexdigest(),
        merge=merge,
        publish=publish,
        repo_id=repo_id,
    )


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
            where = (PUBLISH_KEY, *err["loc"])
            if err["type"] == "extra_forbidden":
                owner = _model_for_path(PublishSettings, err["loc"][:-1])
                word = str(err["loc"][-1])
                hint = _closest(word, _known_keys(owner)) if owner else ""
                known = ", ".join(_known_keys(owner)) if owner else ""
                problems.append(
                    loc.problem(
                        where,
                        f"unknown key '{word}' in publish settings."
                        f"{hint or ' Known keys: ' + known}",
                        key=True,
                    )
                )
            else:
                dotted = ".".join(str(p) for p in where)
                problems.append(loc.problem(where, f"{dotted}: {err['msg']}"))
        return PublishSettings()
    if publish.repo_id is not None and not REPO_ID_RE.match(publish.repo_id):
        problems.append(
            loc.problem(
                (PUBLISH_KEY, "repo_id"),
                f"'{publish.repo_id}' is not a valid Hub repo id; use "
                "'namespace/name' with letters, digits, '-', '_' and '.'",
            )
        )
    if publish.repo_id is not None and (".." in publish.repo_id or "--" in publish.repo_id):
        problems.append(
            loc.problem(
                (PUBLISH_KEY, "repo_id"),
                f"'{publish.repo_id}' is not a valid Hub repo id: '--' and '..' are not allowed",
            )
        )
    if publish.license is not None and publish.license not in HUB_LICENSES:
        hint = _closest(publish.license, sorted(HUB_LICENSES))
        problems.append(
            loc.problem(
                (PUBLISH_KEY, "license"),
                f"'{publish.license}' is not a Hub license id.{hint or ' Use an id such as apache-2.0, mit or other.'}",
            )
        )
    if publish.eval.suite is not None and publish.eval.suite not in EVAL_SUITES:
        hint = _closest(publish.eval.suite, list(EVAL_SUITES))
        problems.append(
            loc.problem(
                (PUBLISH_KEY, "eval", "suite"),
                f"unknown eval suite '{publish.eval.suite}'.{hint or ' Known suites: ' + ', '.join(EVAL_SUITES)}",
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
        if key == "parameters" and path == () or key == "parameters":
            _check_parameter_names(item, (*path, key), loc, problems)
            continue
        if str(key) not in known:
            hint = _closest(str(key), known + ([PUBLISH_KEY] if path == () else []))
            problems.append(
                loc.problem(
                    (*path, key),
                    f"unknown key '{key}'.{hint or ' Known keys: ' + ', '.join(known)}",
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


def _check_parameter_names(
    params: Any, path: tuple[Any, ...], loc: _Locator, problems: list[Problem]
) -> None:
    if not isinstance(params, dict):
        return
    names = _slerp_parameter_names()
    for key in params:
        if key not in names:
            hint = _closest(str(key), names)
            problems.append(
                loc.problem(
                    (*path, key),
                    f"unknown SLERP parameter '{key}'.{hint or ' SLERP takes: ' + ', '.join(names)}",
                    key=True,
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
        for err in exc.errors():
            where = tuple(err["loc"])
            dotted = ".".join(str(p) for p in where) or "config"
            problems.append(
                loc.problem(where, f"{dotted}: {err['msg']} (mergekit's config schema)")
            )
    except (RuntimeError, ValueError, TypeError) as exc:
        problems.append(loc.problem((), f"mergekit rejects this config: {exc}"))
    return None


def _validate_slerp_rules(
    config, merge: dict[str, Any], loc: _Locator, problems: list[Problem]
) -> None:
    from mergekit.config import ConditionalParameter

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
        hint = _closest(config.dtype, list(KNOWN_DTYPES))
        problems.append(
            loc.problem(
                ("dtype",),
                f"unknown dtype '{config.dtype}'.{hint or ' Use one of: ' + ', '.join(KNOWN_DTYPES)}",
            )
        )
    if config.out_dtype is not None and config.out_dtype not in KNOWN_DTYPES:
        problems.append(
            loc.problem(
                ("out_dtype",),
                f"unknown out_dtype '{config.out_dtype}'; use one of: {', '.join(KNOWN_DTYPES)}",
            )
        )

    t_found = False
    scopes: list[tuple[tuple[Any, ...], Any]] = []
    if config.parameters and "t" in config.parameters:
        scopes.append((("parameters", "t"), config.parameters["t"]))
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
        for i, m in enumerate(config.models):
            if m.parameters and "t" in m.parameters:
                scopes.append((("models", i, "parameters", "t"), m.parameters["t"]))
    for si, out_slice in enumerate(config.slices or []):
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
        for ri, src in enumerate(sources):
            start, end = src.layer_range
            if not (0 <= start < end):
                problems.append(
                    loc.problem(
                        ("slices", si, "sources", ri, "layer_range"),
                        f"layer_range [{start}, {end}] must be ascending "
                        "(start < end) and start at 0 or more",
                    )
                )
            lengths.append(end - start)
            if src.parameters and "t" in src.parameters:
                scopes.append(
                    (("slices", si, "sources", ri, "parameters", "t"), src.parameters["t"])
                )
        if len(set(lengths)) > 1:
            problems.append(
                loc.problem(
                    ("slices", si, "sources"),
                    f"slice {si}: the sources' "
                    f"layer ranges cover {lengths} layers; they must cover the same number",
                )
            )
        if out_slice.parameters and "t" in out_slice.parameters:
            scopes.append((("slices", si, "parameters", "t"), out_slice.parameters["t"]))
    t_found = bool(scopes)
    if not t_found:
        problems.append(
            loc.problem(
                (),
                "no 't' parameter: SLERP needs 'parameters: {t: ...}' "
                "(a number, a list of anchors, or filtered values)",
            )
        )
    for where, setting in scopes:
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
