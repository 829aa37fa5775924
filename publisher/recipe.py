"""Recipes: a mergekit SLERP config, unchanged, plus an optional top-level `publish:` block.

`load_recipe` reads the YAML with node positions, validates it against the strict schema in
`recipe_schema.py` (whose errors are paths into the file with finished messages), builds
mergekit's `MergeConfiguration` once, and applies the rules in `recipe_rules.py`. Every
problem is a `Problem` at the offending YAML node (`FILE:LINE:COL: message`) with a hint how
to fix it. Bad input never raises anything but `RecipeError`, which carries the problems.
"""

from __future__ import annotations

import hashlib
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from publisher.recipe_paths import lock_path_for
from publisher.recipe_rules import check_config, check_paths, check_publish
from publisher.recipe_schema import (
    KNOWN_DTYPES,
    MUST_BE,
    PUBLISH_KEY,
    RECIPE_ERROR,
    EvalSettings,
    MergeSettings,
    PublishSettings,
    SlerpConfig,
    SmokePrompt,
    SmokeSettings,
    closest,
    model_ref_text,
    model_refs_as_text,
    must_be,
    repo_id_problem,
)
from publisher.recipe_yaml import (
    Locator,
    Problem,
    RecipeError,
    duplicate_keys,
    parse,
    printable,
    read_text,
)

__all__ = [
    "KNOWN_DTYPES",
    "EvalSettings",
    "MergeSettings",
    "Problem",
    "PublishSettings",
    "Recipe",
    "RecipeError",
    "SmokePrompt",
    "SmokeSettings",
    "load_recipe",
    "printable",
    "repo_id_problem",
]

NAMESPACE_ENV = "PUBLISHER_NAMESPACE"


@dataclass
class Recipe:
    """A validated recipe.

    Attributes:
        path: the recipe file, e.g. `recipes/strangemerges-34-7b-slerp.yaml`.
        name: the file's stem, e.g. `"strangemerges-34-7b-slerp"`.
        text: the exact file contents (shown verbatim on the card).
        sha256: hex digest of `text`'s bytes.
        merge: the mergekit part, as the plain dict that was validated, with every model
            reference in mergekit's string form (`org/name@rev` for `{model: {path, revision}}`).
        config: mergekit's `MergeConfiguration` of `merge`, built once; do not change it.
        publish: the publish settings, defaults filled in.
        repo_id: the Hub repo the model goes to, e.g. `"Gille/StrangeMerges_34-7B-slerp"`.
        warnings: non-fatal findings, e.g. a license inferred from the parents.
    """

    path: Path
    name: str
    text: str
    sha256: str
    merge: dict[str, Any]
    config: Any
    publish: PublishSettings
    repo_id: str
    warnings: list[str] = field(default_factory=list)

    @property
    def lock_path(self) -> Path:
        return lock_path_for(self.path)

    def merge_configuration(self):
        """The mergekit `MergeConfiguration` of this recipe (shared: do not change it)."""
        return self.config

    def model_refs(self) -> list[str]:
        """Every parent as written in the recipe, base model first."""
        refs = [str(m) for m in self.config.referenced_models()]
        base = str(self.config.base_model) if self.config.base_model else None
        return sorted(set(refs), key=lambda r: (r != base, refs.index(r)))

    @property
    def base_model(self) -> str:
        return str(self.config.base_model)

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
    """The first `key: ref` under `node`, depth first, in file order (`ref` in its string
    form, whether the file writes it so or as mergekit's mapping)."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key and _ref_of(v) == ref:
                return v
            if (found := _model_node(v, ref, key)) is not None:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            if (found := _model_node(item, ref, key)) is not None:
                return found
    return None


def _ref_of(node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return node.value
    try:  # a validated recipe: mergekit's mapping form, read back as its string form
        return model_ref_text(yaml.SafeLoader("").construct_object(node, deep=True))
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------
# Loading


def _default_repo_id(name: str) -> str:
    namespace = os.environ.get(NAMESPACE_ENV, "").strip()
    return f"{namespace}/{name}" if namespace else name


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
        # PyYAML and pydantic recurse once per nesting level
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
    raw, text = read_text(path)
    root, data = parse(file, text)
    loc = Locator(file, root)
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
    problems: list[Problem] = duplicate_keys(file, root)
    merge = {k: v for k, v in data.items() if k != PUBLISH_KEY}
    publish = _validate(_PUBLISH, data.get(PUBLISH_KEY, {}), (PUBLISH_KEY,), loc, problems)
    if publish is not None:
        problems += check_publish(publish, loc.problem)
        problems += check_paths(publish, path.parent, loc.problem)
    config = None
    if _validate(_CONFIG, merge, (), loc, problems) is not None:
        merge = model_refs_as_text(merge)  # one spelling per parent, mergekit's string form
        config = _build_config(merge, loc, problems)
    if config is not None:
        problems += check_config(config, loc.problem)

    name = path.stem
    repo_id = (publish.repo_id if publish else None) or _default_repo_id(name)
    if (publish is None or publish.repo_id is None) and (reason := repo_id_problem(repo_id)):
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
    if problems or publish is None or config is None:
        # checks run part by part; the reader goes through the file top to bottom
        raise RecipeError(sorted(problems, key=lambda p: (p.line, p.column)))
    return Recipe(
        path=path,
        name=name,
        text=text,
        sha256=hashlib.sha256(raw).hexdigest(),
        merge=merge,
        config=config,
        publish=publish,
        repo_id=repo_id,
    )


def _build_config(merge: dict[str, Any], loc: Locator, problems: list[Problem]) -> Any:
    """mergekit's own config: after the schema it should always build; if mergekit still
    refuses (a newer mergekit, a tokenizer setting), say so at the top."""
    from mergekit.config import MergeConfiguration

    try:
        return MergeConfiguration.model_validate(merge)
    except ValidationError as exc:
        first = exc.errors()[0]
        problems.append(loc.problem(tuple(first["loc"]), f"mergekit rejects this: {first['msg']}"))
    except (RuntimeError, ValueError, TypeError) as exc:
        problems.append(loc.problem((), f"mergekit rejects this config: {exc}"))
    return None


# ---------------------------------------------------------------------------------------------
# schema errors, one line per YAML node

_PUBLISH = TypeAdapter(
    typing.Annotated[
        PublishSettings, must_be("a mapping of settings (repo_id, license, tags, ...)", dict)
    ]
)
_CONFIG = TypeAdapter(SlerpConfig)
_ROOTS = {id(_PUBLISH): PublishSettings, id(_CONFIG): SlerpConfig}

# What a value of a failed type is, by pydantic's error type.
_WHAT = {
    "string_type": "text",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _validate(
    adapter: TypeAdapter, value: Any, prefix: tuple[Any, ...], loc: Locator, problems: list
) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        problems.extend(_schema_problems(exc.errors(), _ROOTS[id(adapter)], prefix, loc))
    return None


def _schema_problems(
    errors: list[Any], root: type[BaseModel], prefix: tuple[Any, ...], loc: Locator
) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[tuple[int, bool]] = set()
    unknown = {(tuple(e["loc"][:-1]), str(e["loc"][-1])) for e in errors if _is_unknown(e)}
    for err in errors:
        path = tuple(err["loc"])
        owner = _owner(root, path[:-1])
        if err["type"] == "missing" and _suggested(owner, path, unknown):
            continue  # the misspelt key is reported, and its fix is this key
        key = _is_unknown(err)
        node = loc.node((*prefix, *path), key=key)
        if (id(node), key) in seen:
            continue
        seen.add((id(node), key))
        message = _message(err, (*prefix, *path), owner, prefix == ())
        problems.append(loc.problem((*prefix, *path), message, key=key))
    return problems


def _is_unknown(err: Any) -> bool:
    return err["type"] in ("extra_forbidden", "invalid_key")  # invalid: not a text key


def _owner(root: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The schema model that holds the key at the end of `path`."""
    current: Any = root
    for part in path:
        if isinstance(part, int):
            continue
        info = current.model_fields.get(str(part)) if _is_model(current) else None
        if info is None:
            return None
        current = current.NESTED.get(str(part)) or _model_in(info.annotation)
    return current if _is_model(current) else None


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _model_in(annotation: Any) -> Any:
    """The model inside `Annotated[list[Model], ...]`, `Model | None` and the like."""
    if _is_model(annotation):
        return annotation
    return next(
        (m for arg in typing.get_args(annotation) if (m := _model_in(arg)) is not None), None
    )


def _suggested(owner: Any, path: tuple[Any, ...], unknown: set[tuple[Any, str]]) -> bool:
    if owner is None:
        return False
    known = list(owner.model_fields)
    return any(
        closest(word, known) == f" Did you mean '{path[-1]}'?"
        for where, word in unknown
        if where == path[:-1]
    )


def _message(err: Any, path: tuple[Any, ...], owner: Any, top: bool) -> str:
    kind, value, dotted = err["type"], err.get("input"), _dotted(path)
    name = str(path[-1]) if path else ""
    if kind == RECIPE_ERROR:
        return err["msg"]
    if _is_unknown(err):
        known = list(owner.model_fields) if owner else []
        candidates = known + ([PUBLISH_KEY] if top and len(path) == 1 else [])
        hint = closest(name, candidates, (owner.UNKNOWN_HINT if owner else "") + ", ".join(known))
        noun, where = (owner.NOUN, owner.IN) if owner else ("key", "")
        return f"unknown {noun} '{name}'{where}.{hint}"
    if kind == "missing":
        custom = owner.MISSING.get(name) if owner else None
        return custom or f"{_dotted(path[:-1])}: missing '{name}'; add it"
    field = next((str(p) for p in reversed(path) if isinstance(p, str)), dotted)
    what = _WHAT.get(kind)
    if kind == MUST_BE:
        what = err["ctx"]["what"]
    elif kind == "literal_error":
        what = err["ctx"]["expected"]
    if what is None:
        return f"{dotted}: {err['msg']}"  # a constraint: pydantic's words say it well
    if value is None:
        info = owner.model_fields.get(name) if owner else None
        remove = "" if info is not None and info.is_required() else " or remove the key"
        return f"{dotted} is empty (null); give {what}{remove}"
    return f"{dotted} must be {what}{_example(kind, field, value, what)}"


def _example(kind: str, field: str, value: Any, what: str) -> str:
    scalar = isinstance(value, (str, int, float)) and not isinstance(value, bool)
    if "e.g." in what:
        return ""
    if kind == "string_type":
        if isinstance(value, (list, dict)):
            return f"; write one string (for several lines: '{field}: |', then indent them)"
        return f"; quote it, e.g. '{field}: \"{value}\"'"
    if what == "a list of strings":
        return f"; e.g. '{field}: [{value}]'" if scalar else f"; e.g. '{field}: [first, second]'"
    if kind in ("bool_type", "bool_parsing"):
        return f"; e.g. '{field}: true'"
    if kind == "literal_error":
        first = re.findall(r"'([^']*)'", what)[:1] or ["..."]
        return f"; e.g. '{field}: {first[0]}'"
    return ""


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "config"
