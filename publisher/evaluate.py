"""Evaluation with lm-evaluation-harness (`simple_evaluate`, `TaskManager`).

Writes `eval/results.json` (lm-eval's full output) in the run directory. `summarize` turns that
output into the rows the card shows; `to_eval_results` into huggingface_hub `EvalResult`s for the
card's `model-index`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
        dataset_name: pretty dataset name for model-index, e.g. `"AI2 Reasoning Challenge (25-Shot)"`.
        dataset_type: Hub dataset id, e.g. `"ai2_arc"`.
        dataset_config: dataset config, e.g. `"ARC-Challenge"`.
        dataset_split: split, e.g. `"test"`.
    """

    task: str
    metric: str
    filter: str
    value: float
    stderr: float | None
    num_fewshot: int | None
    limit: float | None = None
    dataset_name: str | None = None
    dataset_type: str | None = None
    dataset_config: str | None = None
    dataset_split: str | None = None


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
