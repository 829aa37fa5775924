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
    from publisher.recipe_schema import EVAL_SUITES, closest

    suite = publish.eval.suite
    if suite is not None and suite not in EVAL_SUITES:
        hint = closest(suite, list(EVAL_SUITES), " Known suites: " + ", ".join(EVAL_SUITES))
        return [at(("publish", "eval", "suite"), f"unknown eval suite '{suite}'.{hint}")]
    return []


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
