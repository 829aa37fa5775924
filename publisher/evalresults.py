"""Reading lm-eval's results: the rows the card shows, and the card's `model-index` entries.

`summarize` turns lm-eval's output (`eval/results.json`, what `publisher.evaluate.run_eval`
writes) into an `EvalSummary`; `to_eval_results` turns that into huggingface_hub `EvalResult`s.
Suite tasks are named as their `publisher.evaluate.SUITES` entry names them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from huggingface_hub import EvalResult

from publisher.evaluate import EvalError, TaskSpec, suite_specs

LM_EVAL_NAME = "lm-evaluation-harness"
LM_EVAL_URL = "https://github.com/EleutherAI/lm-evaluation-harness"
TASK_TYPE = "text-generation"
TASK_NAME = "Text Generation"


@dataclass
class EvalRow:
    """One number of the evaluation table.

    Attributes:
        task: lm-eval task name, e.g. `"arc_challenge"`.
        metric: metric name without the filter, e.g. `"acc_norm"`.
        filter: lm-eval filter, e.g. `"none"` or `"strict-match"`.
        value: the score as lm-eval reported it, e.g. 0.6212.
        stderr: its standard error, or `None` when lm-eval gave none.
        num_fewshot: shots, e.g. 25.
        limit: the per-task sample limit, or `None` for a full run.
        spec: the suite entry the row reports, whose model-index names (dataset, split, pretty
            metric name) the card uses, or `None` for a task outside the suite.
        higher_is_better: as lm-eval's `higher_is_better` says (true when it says nothing).
    """

    task: str
    metric: str
    filter: str
    value: float
    stderr: float | None
    num_fewshot: int | None
    limit: float | None = None
    spec: TaskSpec | None = None
    higher_is_better: bool = True


@dataclass
class EvalSummary:
    """The evaluation, as the card presents it.

    Attributes:
        rows: one per (task, metric) shown.
        partial: true when any task ran with a `limit` (a partial run is labelled so).
        lm_eval_version: e.g. `"0.4.13"`.
        model_args: what lm-eval was given as model arguments, token-free.
    """

    rows: list[EvalRow] = field(default_factory=list)
    partial: bool = False
    lm_eval_version: str = ""
    model_args: str = ""


_NOT_METRICS = {"alias", "name", "sample_len", "sample_count", "samples"}


def summarize(results: dict[str, Any], suite: str | None = None) -> EvalSummary:
    """The card's rows from lm-eval's output (`results.json`).

    Suite tasks (run with the suite's shots) give the suite's metrics, named as the suite names
    them; any other top-level task or group gives every metric lm-eval reports for it. Values and
    standard errors are copied as they are; `"N/A"` errors become `None`.
    """
    if "results" not in results:
        raise EvalError("not lm-eval output: there is no 'results' key")
    specs: dict[str, list[TaskSpec]] = {}
    for spec in suite_specs(suite) if suite else []:
        specs.setdefault(spec.task, []).append(spec)
    config = results.get("config") or {}
    limit = config.get("limit")
    n_shot = results.get("n-shot") or {}
    reported = results["results"]
    subtasks = {s for subs in (results.get("group_subtasks") or {}).values() for s in subs}
    top = [name for name in reported if name not in subtasks]
    order = list(specs) + [name for name in top if name not in specs]

    rows: list[EvalRow] = []
    for name in order:
        if name not in reported:
            continue
        metrics = reported[name]
        shots = n_shot.get(name)
        matching = [s for s in specs.get(name, []) if shots is None or s.num_fewshot == shots]
        if matching:
            rows.extend(_spec_row(name, metrics, spec, shots, limit) for spec in matching)
        else:
            rows.extend(_plain_rows(name, metrics, shots, limit))
    return EvalSummary(
        rows=rows,
        partial=limit is not None,
        lm_eval_version=str(results.get("lm_eval_version", "")),
        model_args=_model_args_text(config.get("model_args")),
    )


def _spec_row(
    name: str, metrics: dict[str, Any], spec: TaskSpec, shots: int | None, limit: Any
) -> EvalRow:
    key = f"{spec.metric},{spec.filter}"
    if not _is_number(metrics.get(key)):
        found = ", ".join(k for k in metrics if k not in _NOT_METRICS and "_stderr," not in k)
        raise EvalError(f"lm-eval results for '{name}' have no '{key}' (found: {found})")
    return EvalRow(
        task=name,
        metric=spec.metric,
        filter=spec.filter,
        value=metrics[key],
        stderr=_stderr(metrics, spec.metric, spec.filter),
        num_fewshot=spec.num_fewshot if shots is None else shots,
        limit=limit,
        spec=spec,
    )


def _plain_rows(name: str, metrics: dict[str, Any], shots: int | None, limit: Any) -> list[EvalRow]:
    rows = []
    for key, value in metrics.items():
        metric, comma, filter_ = key.partition(",")
        if key in _NOT_METRICS or not comma or "_stderr" in metric or not _is_number(value):
            continue
        rows.append(
            EvalRow(
                task=name,
                metric=metric,
                filter=filter_,
                value=value,
                stderr=_stderr(metrics, metric, filter_),
                num_fewshot=shots,
                limit=limit,
            )
        )
    return rows


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _stderr(metrics: dict[str, Any], metric: str, filter_: str) -> float | None:
    value = metrics.get(f"{metric}_stderr,{filter_}")
    return value if _is_number(value) else None


def _model_args_text(model_args: Any) -> str:
    if isinstance(model_args, dict):
        items = [(str(k), v) for k, v in model_args.items()]
    elif isinstance(model_args, str) and model_args:
        items = [tuple(part.split("=", 1)) for part in model_args.split(",") if "=" in part]
    else:
        return ""
    # `pretrained` names where the runner kept the weights: on the card, the model is this one.
    return ",".join(f"{k}={v}" for k, v in items if "token" not in k.lower() and k != "pretrained")


def to_eval_results(summary: EvalSummary, model_name: str) -> list[EvalResult]:
    """The summary as huggingface_hub `EvalResult`s, for the card's `model-index`.

    `model_name` is the name the model-index will carry (e.g. the repo id); it must not be empty.
    Values are the raw numbers lm-eval reported, so the card matches `results.json`. Tasks without
    model-index names (local or unknown tasks) use the task name as dataset name and type. Shots go
    in `dataset_args.num_few_shot`; a partial run also records its `limit` there.
    """
    if not model_name:
        raise EvalError("`model_name` must be set to build model-index eval results")
    source = f"{LM_EVAL_NAME} {summary.lm_eval_version}".strip()
    out = []
    for row in summary.rows:
        args: dict[str, Any] = {}
        if row.num_fewshot is not None:
            args["num_few_shot"] = row.num_fewshot
        if row.limit is not None:
            args["limit"] = row.limit
        spec = row.spec or TaskSpec(row.task, 0, row.metric, row.filter)  # no names of its own
        out.append(
            EvalResult(
                task_type=TASK_TYPE,
                task_name=TASK_NAME,
                dataset_type=spec.dataset_type or row.task,
                dataset_name=spec.dataset_name or row.task,
                dataset_config=spec.dataset_config,
                dataset_split=spec.dataset_split,
                dataset_args=args or None,
                metric_type=spec.metric_type or row.metric,
                metric_value=row.value,
                metric_name=spec.metric_name or _metric_label(row),
                source_name=source,
                source_url=LM_EVAL_URL,
            )
        )
    return out


def _metric_label(row: EvalRow) -> str:
    return row.metric if row.filter == "none" else f"{row.metric} ({row.filter})"
