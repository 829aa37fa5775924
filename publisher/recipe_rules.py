"""The service's rules that a schema cannot state alone, checked on mergekit's own config.

Parents must match across a slice, layer ranges must line up, and every tensor must get a
`t`. Where `t` comes from is asked of mergekit itself (`ConfigReader.parameter_sources` and
`resolve_parameter`, what its planner uses), so these checks follow mergekit's lookup order
instead of restating it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

# Where a problem is: a path of keys and indexes in the YAML, a message, and whether the
# problem is about the key itself (e.g. a key in the wrong place) rather than its value.
At = Callable[..., Any]
Path = tuple[Any, ...]
# A tensor name that no written filter matches: what embeddings and norms usually are.
UNMATCHED = "\x00"


def check_publish(publish: Any, at: At) -> list[Any]:
    """Rules on the publish settings that their models leave to the caller (the eval stage
    takes settings from the command line too, and says the same there)."""
    from publisher.evaluate import SUITES
    from publisher.recipe_schema import closest

    problems = []
    suite = publish.eval.suite
    if suite is not None and suite not in SUITES:
        hint = closest(suite, list(SUITES), " Known suites: " + ", ".join(SUITES))
        problems.append(at(("publish", "eval", "suite"), f"unknown eval suite '{suite}'.{hint}"))
    if (chat := publish.chat_template) is not None and (why := _chat_template_problem(chat)):
        problems.append(at(("publish", "chat_template"), why))
    return problems


def _chat_template_problem(value: str) -> str | None:
    """What mergekit's `_set_chat_template` would refuse only at merge time."""
    import importlib.resources

    from mergekit._data import chat_templates

    from publisher.recipe_paths import is_chat_template_path

    names = sorted(
        p.name.removesuffix(".jinja")
        for p in importlib.resources.files(chat_templates).iterdir()
        if p.name.endswith(".jinja")
    )
    if value in ("auto", *names) or is_chat_template_path(value):
        return None
    if len(value) >= 20 and "{" in value:  # Jinja text, as mergekit tells them apart
        return None
    return (
        f"chat_template '{value}' is neither a Jinja template, a .jinja file nor one of "
        f"mergekit's built-in names ({', '.join(['auto', *names])})"
    )


def check_config(config: Any, at: At) -> list[Any]:
    """Every rule broken by a validated mergekit `MergeConfiguration`."""
    problems: list[Any] = []
    base = config.base_model
    if config.models:
        if len(config.models) != 2:
            problems.append(
                at(
                    ("models",),
                    f"SLERP takes exactly two models, found "
                    f"{len(config.models)}; list the base and one other",
                )
            )
        elif base not in [m.model for m in config.models]:
            problems.append(
                at(
                    ("base_model",),
                    f"base_model '{base}' is not one of the two models; set it to one of them",
                )
            )
    for si, out_slice in enumerate(config.slices or []):
        problems += _check_slice(si, out_slice, base, at)
    problems += _check_t(config, at)
    return problems


def _check_slice(si: int, out_slice: Any, base: Any, at: At) -> list[Any]:
    problems = []
    sources = out_slice.sources
    if len(sources) != 2:
        problems.append(
            at(
                ("slices", si, "sources"),
                f"slice {si} has {len(sources)} "
                "sources; SLERP needs exactly two (the base and one other)",
            )
        )
    slice_base = out_slice.base_model or base
    if slice_base not in [s.model for s in sources]:
        where = ("slices", si, "base_model") if out_slice.base_model else ("base_model",)
        problems.append(
            at(
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
                at(
                    ("slices", si, "sources", ri, "layer_range"),
                    f"layer_range [{start}, {end}] must be ascending "
                    "(start < end) and start at 0 or more",
                )
            )
        lengths.append(end - start)
    # a broken range already has its line; its "length" (e.g. -32) would only confuse
    if len(problems) == 0 and len(set(lengths)) > 1:
        problems.append(
            at(
                ("slices", si, "sources"),
                f"slice {si}: the sources' "
                f"layer ranges cover {lengths} layers; they must cover the same number",
            )
        )
    return problems


# ---------------------------------------------------------------------------------------------
# t: asked of mergekit


def _t_spec() -> Any:
    from mergekit import merge_methods

    return next(p for p in merge_methods.get("slerp").spec.parameters if p.name == "t")


def _parameter_paths(config: Any) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every `parameters:` mapping of the config with its YAML path."""
    if config.parameters is not None:
        yield ("parameters",), config.parameters
    for i, model in enumerate(config.models or []):
        if model.parameters is not None:
            yield ("models", i, "parameters"), model.parameters
    for si, out_slice in enumerate(config.slices or []):
        if out_slice.parameters is not None:
            yield ("slices", si, "parameters"), out_slice.parameters
        for ri, src in enumerate(out_slice.sources):
            if src.parameters is not None:
                yield ("slices", si, "sources", ri, "parameters"), src.parameters


def _read_chains(config: Any, spec: Any) -> list[tuple[int | None, list[dict[str, Any]]]]:
    """Per output slice (None: the `models:` form), the settings mergekit reads `t` from,
    most precedent first: `ConfigReader.parameter_sources`, as the planner calls it."""
    from mergekit.config import ConfigReader
    from mergekit.merge_methods.base import ParameterScope

    reader = ConfigReader(config=config, t=0)
    slices = list(enumerate(config.slices or [])) or [(None, None)]
    chains = []
    for si, out_slice in slices:
        sliced = reader.for_out_slice(out_slice) if out_slice is not None else reader
        models = [None] if spec.scope == ParameterScope.SHARED else _models(out_slice, config)
        read = [s for m in models for s in sliced.parameter_sources(m) if s is not None]
        chains.append((si, read))
    return chains


def _models(out_slice: Any, config: Any) -> list[Any]:
    if out_slice is not None:
        return [s.model for s in out_slice.sources]
    return [m.model for m in config.models or []]


def _check_t(config: Any, at: At) -> list[Any]:
    from mergekit.config import evaluate_setting
    from mergekit.parameter_resolver import resolve_parameter

    spec = _t_spec()
    paths = {id(params): where for where, params in _parameter_paths(config)}
    chains = _read_chains(config, spec)
    read = {id(s) for _, chain in chains for s in chain}
    problems = []
    for where, params in _parameter_paths(config):
        if "t" in params and id(params) not in read:
            target = "the top-level" if where[0] == "models" else "the slice's or the top-level"
            problems.append(
                at(
                    (*where, "t"),
                    "t here is ignored: SLERP's t is shared by both inputs, so mergekit reads "
                    f"it only from {target} 'parameters:'; move it there",
                    key=True,
                )
            )
    if not any("t" in s for _, chain in chains for s in chain):
        problems.append(
            at(
                (),
                "no 't' parameter: SLERP needs 'parameters: {t: ...}' "
                "(a number, a list of anchors, or filtered values)",
            )
        )
        return problems
    reported: set[Path] = set()
    for si, chain in chains:
        with_t = [s for s in chain if "t" in s]
        if not with_t:
            problems.append(
                at(
                    ("slices", si),
                    f"slice {si} gets no t; add 't' to its 'parameters:' or to the "
                    "top-level 'parameters:'",
                )
            )
            continue
        try:
            resolve_parameter(spec, chain, tensor_name=UNMATCHED)
        except RuntimeError:
            where = (*paths[id(with_t[-1])], "t")  # the fallback goes where mergekit looks last
            if where not in reported:
                reported.add(where)
                problems.append(
                    at(
                        where,
                        "t has no entry without a filter, so tensors that no filter matches "
                        "(embeddings, norms, lm_head) get no t and the merge fails; add e.g. "
                        "'- value: 0.5' as the last entry",
                    )
                )
    for where, params in _parameter_paths(config):
        if id(params) in read and isinstance(params.get("t"), list):
            problems += _unreachable_entries(params["t"], (*where, "t"), evaluate_setting, at)
    return problems


def _unreachable_entries(setting: list[Any], where: Path, evaluate: Any, at: At) -> list[Any]:
    """Entries that an earlier entry always wins over.

    mergekit's `evaluate_setting` uses the first entry that matches a tensor. An entry can only
    matter for tensors its own filter matches; if an earlier entry already matches a tensor
    named by that filter (no filter, `*`, or a part of it), it matches every such tensor.
    """
    from mergekit.config import ConditionalParameter

    if not all(isinstance(e, ConditionalParameter) for e in setting):
        return []
    problems = []
    for j, entry in enumerate(setting):
        probe = entry.filter if entry.filter not in (None, "*", "") else UNMATCHED
        winner = next(
            (i for i in range(j) if evaluate(probe, [setting[i]], validate=_any) is not None),
            None,
        )
        if winner is None:
            continue
        if setting[winner].filter in (None, "*", ""):
            why = "has no filter and matches every tensor first"
            fix = "move the entry without a filter to the end"
        else:
            why = f"(filter '{setting[winner].filter}') matches every tensor this one would"
            fix = "put the more specific filter first"
        problems.append(
            at((*where, j), f"this t entry is never used: entry {winner} above {why}; {fix}")
        )
    return problems


def _any(value: Any) -> Any:
    return value


# ---------------------------------------------------------------------------------------------
# files the recipe points at


def check_paths(publish: Any, recipe_dir: Any, at: At) -> list[Any]:
    """Templates, task directories and files, and a chat template file: each inside the
    recipe's repository (symlinks resolved), present, and tasks free of code unless allowed."""
    from publisher.recipe_paths import (
        TASK_SUFFIXES,
        is_chat_template_path,
        repository_root,
    )

    root = repository_root(recipe_dir)
    targets: list[tuple[Path, str, str]] = []  # (YAML path, the path given, kind)
    if publish.templates is not None:
        targets.append((("publish", "templates"), publish.templates, "dir"))
    for i, given in enumerate(publish.eval.include_paths):
        targets.append((("publish", "eval", "include_paths", i), given, "tasks"))
    for i, given in enumerate(publish.eval.tasks):
        if given.endswith(TASK_SUFFIXES):
            targets.append((("publish", "eval", "tasks", i), given, "task"))
    chat = publish.chat_template
    if chat is not None and is_chat_template_path(chat):
        targets.append((("publish", "chat_template"), chat, "file"))
    problems = []
    for where, given, kind in targets:
        if message := _path_problem(recipe_dir, given, kind, root, publish.eval.allow_code):
            problems.append(at(where, message))
    return problems


def _path_problem(recipe_dir: Any, given: str, kind: str, root: Any, allow_code: bool) -> str:
    from publisher.recipe_paths import PathError, check_tasks, check_tree, contained

    try:
        path = contained(recipe_dir, given, root)
    except PathError as exc:
        return (
            f"'{given}' leaves the recipe's repository ({exc}); give a path inside "
            f"{root}, relative to the recipe"
        )
    wants_dir = kind in ("dir", "tasks")
    if not (path.is_dir() if wants_dir else path.is_file()):
        what = "a directory" if wants_dir else "a file"
        return f"'{given}' names {path}, which is not {what}; create it or fix the path"
    try:
        if kind == "dir":
            check_tree(path, root)
        elif kind in ("tasks", "task"):
            check_tasks(path, root, allow_code)
    except PathError as exc:
        return str(exc)
    return ""
