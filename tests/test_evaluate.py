"""Eval stage: lm-eval on the tiny parents with publisher's own tiny task; no mocks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

from publisher.evalresults import LM_EVAL_URL, summarize, to_eval_results
from publisher.evaluate import SUITES, TINY_TASK, EvalError, run_eval, write_local_tasks
from publisher.recipe import EvalSettings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

LIMIT = 10


@pytest.fixture(scope="module")
def tiny_eval(
    tiny_parents: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    """One lm-eval run of the `tiny` suite (limit 10), started from an unrelated directory."""
    out_dir = tmp_path_factory.mktemp("eval")
    elsewhere = tmp_path_factory.mktemp("cwd")
    cwd = Path.cwd()
    os.chdir(elsewhere)  # the shipped task must not depend on the current directory
    try:
        results = run_eval(tiny_parents[0], EvalSettings(suite="tiny", limit=LIMIT), out_dir)
    finally:
        os.chdir(cwd)
    return out_dir, results


def test_run_eval_writes_lm_eval_output(tiny_eval: tuple[Path, dict[str, Any]]) -> None:
    out_dir, results = tiny_eval
    written = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    assert written == results
    assert "samples" not in written
    assert written["lm_eval_version"] == "0.4.13"
    assert written["config"]["limit"] == LIMIT
    assert written["config"]["device"] == "cpu"
    assert written["n-shot"][TINY_TASK] == 0
    assert written["n-samples"][TINY_TASK] == {"original": 20, "effective": LIMIT}
    metrics = written["results"][TINY_TASK]
    assert 0.0 <= metrics["acc,none"] <= 1.0
    assert 0.0 <= metrics["acc_norm,none"] <= 1.0


def test_summarize_copies_the_numbers_exactly(tiny_eval: tuple[Path, dict[str, Any]]) -> None:
    out_dir, _ = tiny_eval
    results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    reported = results["results"][TINY_TASK]

    summary = summarize(results, "tiny")

    assert summary.partial
    assert summary.lm_eval_version == "0.4.13"
    assert summary.model_args == "dtype=auto"  # where the runner kept the weights is left out
    assert [(r.task, r.metric, r.filter) for r in summary.rows] == [
        (TINY_TASK, "acc", "none"),
        (TINY_TASK, "acc_norm", "none"),
    ]
    for row in summary.rows:
        assert row.value == reported[f"{row.metric},none"]
        assert row.stderr == reported[f"{row.metric}_stderr,none"]
        assert (row.num_fewshot, row.limit) == (0, LIMIT)
        assert row.spec and (row.spec.dataset_type, row.spec.dataset_split) == (TINY_TASK, "test")

    # without the suite, every metric lm-eval reports is shown, with the same numbers
    plain = summarize(results)
    assert [(r.metric, r.value, r.stderr) for r in plain.rows] == [
        (r.metric, r.value, r.stderr) for r in summary.rows
    ]
    assert all(r.spec is None for r in plain.rows)  # no suite: no model-index names


def test_eval_results_round_trip_through_model_index(
    tiny_eval: tuple[Path, dict[str, Any]],
) -> None:
    _, results = tiny_eval
    summary = summarize(results, "tiny")

    eval_results = to_eval_results(summary, "publisher-demo/tiny-demo-slerp")

    assert [e.metric_value for e in eval_results] == [r.value for r in summary.rows]
    first = eval_results[0]
    assert first.task_type == "text-generation"
    assert first.source_name == "lm-evaluation-harness 0.4.13"
    assert first.source_url == LM_EVAL_URL
    assert first.dataset_args == {"num_few_shot": 0, "limit": LIMIT}
    index = eval_results_to_model_index("publisher-demo/tiny-demo-slerp", eval_results)
    name, back = model_index_to_eval_results(index)
    assert name == "publisher-demo/tiny-demo-slerp"
    assert back == eval_results


def test_unknown_task_names_close_matches(tiny_parents: tuple[Path, Path], tmp_path: Path) -> None:
    # Every suite task rides along: lm-eval 0.4.13 must know them all, so only the typo is named.
    suite_tasks = [spec.task for specs in SUITES.values() for spec in specs]
    settings = EvalSettings(tasks=["arc_chalenge", *suite_tasks])
    with pytest.raises(
        EvalError, match=r"unknown lm-eval task 'arc_chalenge'.*arc_challenge"
    ) as info:
        run_eval(tiny_parents[0], settings, tmp_path)
    assert str(info.value).count("unknown lm-eval task") == 1
    assert "include_paths" in str(info.value)
    assert not (tmp_path / "results.json").exists()


def test_unknown_suite_and_nothing_to_run(tiny_parents: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="unknown eval suite 'opnellm-v1'.*openllm-v1"):
        run_eval(tiny_parents[0], EvalSettings(suite="opnellm-v1"), tmp_path)
    with pytest.raises(EvalError, match="nothing to evaluate"):
        run_eval(tiny_parents[0], EvalSettings(), tmp_path)
    with pytest.raises(EvalError, match="unknown eval backend"):
        run_eval(tiny_parents[0], EvalSettings(suite="tiny"), tmp_path, backend="onnx")


def test_local_tasks_get_absolute_data_paths(tmp_path: Path) -> None:
    tasks_dir = write_local_tasks(tmp_path / "tasks")
    config = yaml.safe_load((tasks_dir / f"{TINY_TASK}.yaml").read_text(encoding="utf-8"))
    data = Path(config["dataset_kwargs"]["data_files"]["test"])
    assert data.is_absolute() and data.parent == tasks_dir
    lines = data.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 20
    for line in lines:
        question = json.loads(line)
        assert 0 <= question["answer"] < len(question["choices"])


def test_suites_name_every_task_once_per_metric() -> None:
    assert set(SUITES) == {"openllm-v1", "leaderboard", "nous", "tiny"}
    for specs in SUITES.values():
        keys = [(s.task, s.metric, s.filter) for s in specs]
        assert len(keys) == len(set(keys))
        for spec in specs:  # one task, one shot count, one model-index dataset
            same = [s for s in specs if s.task == spec.task]
            assert {(s.num_fewshot, s.dataset_name, s.dataset_type) for s in same} == {
                (spec.num_fewshot, spec.dataset_name, spec.dataset_type)
            }
    arc = SUITES["openllm-v1"][0]
    assert (arc.task, arc.num_fewshot, arc.metric, arc.dataset_config) == (
        "arc_challenge",
        25,
        "acc_norm",
        "ARC-Challenge",
    )


def test_summarize_openllm_suite_output() -> None:
    # The shape lm-eval 0.4.13 writes for a group (mmlu) and filtered metrics (gsm8k).
    results = {
        "results": {
            "arc_challenge": {"alias": "arc_challenge", "acc,none": 0.5, "acc_stderr,none": 0.01,
                              "acc_norm,none": 0.55, "acc_norm_stderr,none": 0.02},
            "gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.25,
                      "exact_match_stderr,strict-match": 0.03,
                      "exact_match,flexible-extract": 0.3,
                      "exact_match_stderr,flexible-extract": 0.031},
            "mmlu": {"alias": "mmlu", "acc,none": 0.6, "acc_stderr,none": "N/A"},
            "mmlu_humanities": {"alias": " - humanities", "acc,none": 0.58},
            "truthfulqa_mc2": {"alias": "truthfulqa_mc2", "acc,none": 0.44,
                               "acc_stderr,none": 0.015},
            "lambada_openai": {"alias": "lambada_openai", "perplexity,none": 12.5,
                               "perplexity_stderr,none": 0.5, "acc,none": 0.4},
        },
        "group_subtasks": {"mmlu": ["mmlu_humanities"]},
        "n-shot": {"arc_challenge": 25, "gsm8k": 5, "mmlu": 5, "mmlu_humanities": 5,
                   "truthfulqa_mc2": 0, "lambada_openai": 0},
        "config": {"model_args": "pretrained=/m,dtype=auto,token=hf_secret", "limit": None},
        "lm_eval_version": "0.4.13",
    }  # fmt: skip

    summary = summarize(results, "openllm-v1")

    assert not summary.partial
    assert summary.model_args == "dtype=auto"  # no token, no runner path
    rows = {(r.task, r.metric, r.filter): r for r in summary.rows}
    assert list(rows) == [
        ("arc_challenge", "acc_norm", "none"),
        ("mmlu", "acc", "none"),
        ("truthfulqa_mc2", "acc", "none"),
        ("gsm8k", "exact_match", "strict-match"),
        ("lambada_openai", "perplexity", "none"),
        ("lambada_openai", "acc", "none"),
    ]
    assert rows["mmlu", "acc", "none"].stderr is None
    assert rows["gsm8k", "exact_match", "strict-match"].value == 0.25
    arc = rows["arc_challenge", "acc_norm", "none"].spec
    assert arc and arc.dataset_name == "AI2 Reasoning Challenge (25-Shot)"

    eval_results = to_eval_results(summary, "org/model")
    by_type = {(e.dataset_type, e.metric_type): e for e in eval_results}
    assert by_type["truthful_qa", "mc2"].metric_value == 0.44
    assert by_type["gsm8k", "exact_match"].dataset_args == {"num_few_shot": 5}
    assert by_type["lambada_openai", "perplexity"].dataset_name == "lambada_openai"
    _, back = model_index_to_eval_results(eval_results_to_model_index("org/model", eval_results))
    assert sorted(back, key=repr) == sorted(eval_results, key=repr)


def test_suite_names_are_ignored_for_other_shot_counts() -> None:
    results = {
        "results": {"arc_challenge": {"acc,none": 0.5, "acc_norm,none": 0.55}},
        "n-shot": {"arc_challenge": 0},
        "config": {"limit": 5},
    }
    summary = summarize(results, "openllm-v1")
    assert summary.partial
    assert [(r.metric, r.spec, r.num_fewshot) for r in summary.rows] == [
        ("acc", None, 0),
        ("acc_norm", None, 0),
    ]
