"""Verify's card check: the data the card was rendered from, against the files it came from.

The card stage writes `card.json` (the `CardView` and the front matter) beside `README.md`. This
check never reads the card's headings, so a custom template that words or orders the card its
own way is checked the same as the default one:

1. `README.md` is exactly what the templates render from `card.json` (so no number on the page
   differs from the data, wherever the template put it);
2. every number in `card.json` equals its source: each t with `plan.json`, the smoke section
   with `smoke.json`, the evaluation table with `eval/results.json` and each parent's results
   in `eval/parents/`, the weight files' sha256 with `merged/`, the count of tensors whose t the
   weights cannot show with the weight check's report;
3. the `model-index` equals the merge's results, per (dataset, metric).

`check_card` returns one record per item: `{"what", "expected", "found", "ok"}`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from publisher.cardreports import eval_view, smoke_view
from publisher.cardview import CardView, format_t, not_observable_view
from publisher.evalresults import EvalSummary, summarize, to_eval_results
from publisher.rundir import RunDir
from publisher.schedule import Plan
from publisher.weights import WeightReport

Add = Callable[..., None]


def _same(expected: Any, found: Any) -> bool:
    if isinstance(expected, float) and isinstance(found, float):
        return expected == found or (math.isnan(expected) and math.isnan(found))
    return expected == found


def check_card(
    run: RunDir,
    plan: Plan,
    smoke: Any | None,
    results: dict | None,
    suite: str | None,
    templates_dir: Path | None = None,
    weights: WeightReport | None = None,
) -> list[dict[str, Any]]:
    """Compare the card, its `card.json` and their sources (see the module docstring).

    `smoke` is the `SmokeReport` of `smoke.json` or `None`, `results` lm-eval's output or `None`
    (then the card may claim neither), `templates_dir` the directory the card stage used
    (`None`: the recipe's or the default), `weights` the weight check's report (`None`: not
    compared).
    """
    from publisher.card import CardError, read_card_data, render_view

    checks: list[dict[str, Any]] = []

    def add(what: str, expected: Any, found: Any, ok: bool | None = None) -> None:
        ok = _same(expected, found) if ok is None else ok
        checks.append({"what": what, "expected": expected, "found": found, "ok": ok})

    try:
        view, front_matter = read_card_data(run.card_data)
    except CardError as exc:
        add("card.json is the card's data", "a card view", str(exc), ok=False)
        return checks
    from publisher.card import DEFAULT_TEMPLATES_DIR

    card_text = run.card.read_bytes().decode("utf-8")
    try:
        rendered = render_view(view, front_matter, Path(templates_dir or DEFAULT_TEMPLATES_DIR))
    except CardError as exc:
        rendered = f"<the templates fail: {exc}>"
    add(
        "README.md is the templates' rendering of card.json",
        *_first_difference(rendered, card_text),
    )
    _check_t(add, view, plan)
    _check_parents(add, view, plan)
    _check_shards(add, view, run)
    if weights is not None:
        expected = not_observable_view(weights)
        add(
            "tensors whose t is not observable (weights.json; run the weights stage, then the card)",
            asdict(expected) if expected else None,
            asdict(view.t_not_observable) if view.t_not_observable else None,
        )
    if smoke is None:
        add("no smoke-test section without smoke.json", None, _shown(view.smoke))
    else:
        _check_fields(add, "smoke", asdict(smoke_view(smoke)), _shown(view.smoke) or {})
    card_results = _model_index(front_matter, add)
    if results is None:
        add("no evaluation section without results", None, _shown(view.evaluation))
        add("no evaluation claimed without results", [], [r.metric_value for r in card_results])
        return checks
    summary = summarize(results, suite)
    raw = results.get("results", {})
    for row in summary.rows:
        source = raw.get(row.task, {}).get(f"{row.metric},{row.filter}")
        add(f"eval {row.task} {row.metric} (summary vs results.json)", source, row.value)
    parents = _parent_summaries(run, view, plan, suite)
    expected = asdict(eval_view(summary, parents))
    _check_fields(add, "eval", expected, _shown(view.evaluation) or {})
    _check_model_index(add, card_results, to_eval_results(summary, "model"))
    return checks


def _shown(section: Any) -> Any:
    return asdict(section) if section is not None else None


def _first_difference(expected: str, found: str) -> tuple[str, str]:
    """(expected, found) at the first line where the two texts differ, or equal strings."""
    if expected == found:
        return "identical", "identical"
    wanted, got = expected.split("\n"), found.split("\n")
    for number, (a, b) in enumerate(zip(wanted, got, strict=False), start=1):
        if a != b:
            return f"line {number}: {a!r}", f"line {number}: {b!r}"
    number = min(len(wanted), len(got)) + 1
    return f"{len(wanted)} lines", f"{len(got)} lines (from line {number} on)"


def _check_fields(add: Add, prefix: str, expected: Any, found: Any) -> None:
    """One check per leaf field of `expected` (dicts and lists walked), against `found`."""
    if isinstance(expected, dict):
        found = found if isinstance(found, dict) else {}
        for key, value in expected.items():
            _check_fields(add, f"{prefix} {key}", value, found.get(key))
        extra = sorted(set(found) - set(expected))
        if extra:
            add(f"{prefix}: fields its source lacks", [], extra)
        return
    if isinstance(expected, list) and expected and isinstance(expected[0], dict):
        found = found if isinstance(found, list) else []
        add(f"{prefix}: entries", len(expected), len(found))
        for index, value in enumerate(expected):
            _check_fields(
                add, f"{prefix} {index + 1}", value, found[index] if index < len(found) else None
            )
        return
    add(prefix, expected, found)


def _check_t(add: Add, view: CardView, plan: Plan) -> None:
    """Each layer's t per group, from the table's columns or a constant group's sentence."""
    columns = [g.name for g in view.groups]
    constants = {g.name: g.constant.value for g in view.constant_groups if g.constant}
    rows = {row.index: row for row in view.layers}
    for layer in plan.layers:
        row = rows.get(layer.index)
        expected, found = [], []
        for group in plan.groups:
            if group not in layer.groups:
                continue
            expected.append(format_t(layer.groups[group]))
            if group in constants:
                found.append(constants[group])
            elif group in columns and row is not None and columns.index(group) < len(row.cells):
                found.append(row.cells[columns.index(group)].value)
            else:
                found.append(None)
        add(f"t of layer {layer.index}", expected, found)
    outside = {o.name: o.cell.value for o in view.outside}
    for name, t in plan.outside.items():
        add(f"t of {name}", format_t(t), outside.get(name))


def _check_parents(add: Add, view: CardView, plan: Plan) -> None:
    shown = {p.ref: p for p in view.parents}
    for parent in plan.parents:
        pinned = parent.revision if parent.resolved and parent.revision else "not pinned"
        entry = shown.get(parent.ref)
        add(f"revision of parent {parent.ref}", pinned, entry.revision if entry else None)


def _check_shards(add: Add, view: CardView, run: RunDir) -> None:
    from publisher.digests import sha256_file

    present = (
        sorted(f.name for f in run.merged.glob("*.safetensors")) if run.merged.is_dir() else []
    )
    if not present and not view.shards:
        return
    add("weight files listed", present, sorted(s.name for s in view.shards))

    for shard in view.shards:
        file = run.merged / shard.name
        actual = sha256_file(file) if file.is_file() and file.parent == run.merged else None
        add(f"sha256 of {shard.name}", actual, shard.sha256)


def _parent_summaries(
    run: RunDir, view: CardView, plan: Plan, suite: str | None
) -> list[tuple[str, EvalSummary]]:
    """The parents' summaries the card should show: each parent whose results are in the run."""
    names = {p.ref: p.name for p in view.parents}
    out = []
    for parent in plan.parents:
        path = run.parent_eval(parent.ref)
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            out.append((names.get(parent.ref, parent.ref), summarize(data, suite)))
    return out


def _model_index(front_matter: str, add: Add) -> list[Any]:
    from huggingface_hub import ModelCard

    try:
        return list(ModelCard(f"---\n{front_matter}\n---\n").data.eval_results or [])
    except Exception as exc:  # the front matter does not parse: nothing in it can be trusted
        add("model-index parses", True, f"{type(exc).__name__}: {exc}", ok=False)
        return []


def _check_model_index(add: Add, card_results: list[Any], expected_results: list[Any]) -> None:
    """The card's model-index against the summary's, per (dataset, metric)."""

    def key(result: Any) -> tuple[str, str]:
        return (str(result.dataset_name), str(result.metric_type))

    shown: dict[tuple[str, str], list[Any]] = {}
    for result in card_results:
        shown.setdefault(key(result), []).append(result)
    for result in expected_results:
        name, metric = key(result)
        found = shown.get((name, metric), [])
        one = found[0] if len(found) == 1 else None
        add(
            f"model-index {name} {metric} value",
            result.metric_value,
            one.metric_value if one else ([r.metric_value for r in found] or None),
        )
        add(
            f"model-index {name} {metric} shots/limit",
            result.dataset_args,
            one.dataset_args if one else None,
        )
    wanted = {key(r) for r in expected_results}
    add(
        "model-index entries not in results.json",
        [],
        [" ".join(key(r)) for r in card_results if key(r) not in wanted],
    )


__all__ = ["check_card"]
