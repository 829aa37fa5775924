"""Evaluation with lm-evaluation-harness (`simple_evaluate`, `TaskManager`).

Writes `eval/results.json` (lm-eval's full output) in the run directory; `publisher.evalresults`
reads it back for the card.

What runs is either a named suite (`SUITES`, each task with its own shots) or the recipe's explicit
`tasks` (with one `num_fewshot` for all of them, or each task's default). Tasks shipped with
publisher live in `publisher/tasks/` (e.g. `publisher_tiny_qa`); `run_eval` copies them next to the
results with their data paths made absolute, because the `json` loader of `datasets` resolves
relative paths against the current directory.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from publisher.errors import PublisherError
from publisher.parallel import EvalParallelism
from publisher.recipe_paths import TASK_SUFFIXES, PathError, check_tasks, repository_root

if TYPE_CHECKING:  # recipe validates suite names against SUITES: no import back at run time
    from publisher.recipe import EvalSettings

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
"""Where publisher's own lm-eval tasks (YAML + data) are shipped."""

TINY_TASK = "publisher_tiny_qa"
BACKENDS = ("hf", "vllm")
RESULTS_NAME = "results.json"
# Set by `accelerate launch` in each process it starts (0 is the main one).
_RANK_ENV = "RANK"
LOCAL_TASKS_NAME = "tasks"


@dataclass(frozen=True)
class TaskSpec:
    """One number a suite reports: an lm-eval task, its shots and metric, and how the card names it.

    Attributes:
        task: lm-eval task or group name, e.g. `"arc_challenge"`.
        num_fewshot: shots, e.g. 25.
        metric: lm-eval metric name, e.g. `"acc_norm"`.
        filter: lm-eval filter, e.g. `"none"` or `"strict-match"`.
        dataset_name: pretty dataset name for model-index, e.g. `"AI2 Reasoning Challenge (25-Shot)"`.
        dataset_type: Hub dataset id for model-index, e.g. `"ai2_arc"`.
        dataset_config: dataset config, e.g. `"ARC-Challenge"`, or `None`.
        dataset_split: split, e.g. `"test"`, or `None`.
        metric_name: pretty metric name, e.g. `"normalized accuracy"`, or `None`.
        metric_type: model-index metric id when it differs from lm-eval's name, e.g. `"mc2"` for
            TruthfulQA's `acc`; `None` means `metric`.
    """

    task: str
    num_fewshot: int
    metric: str
    filter: str = "none"
    dataset_name: str | None = None
    dataset_type: str | None = None
    dataset_config: str | None = None
    dataset_split: str | None = None
    metric_name: str | None = None
    metric_type: str | None = None


def _agieval(task: str) -> TaskSpec:
    return TaskSpec(
        task, 0, "acc_norm", dataset_name=f"AGIEval {task.removeprefix('agieval_')} (0-shot)",
        dataset_type=f"hails/agieval-{task.removeprefix('agieval_').replace('_', '-')}",
        dataset_split="test", metric_name="normalized accuracy",
    )  # fmt: skip


def _bigbench(subtask: str) -> TaskSpec:
    return TaskSpec(
        f"bigbench_{subtask}_multiple_choice", 0, "acc",
        dataset_name=f"BIG-bench {subtask} (0-shot)", dataset_type="hails/bigbench",
        dataset_config=f"{subtask}_zero_shot", dataset_split="default", metric_name="accuracy",
    )  # fmt: skip


# One table per suite: what runs, and what the card and model-index call it. The Open LLM
# Leaderboard names follow the cards that leaderboard wrote; values stay as lm-eval reports them.
# fmt: off
SUITES: dict[str, list[TaskSpec]] = {
    "openllm-v1": [
        TaskSpec("arc_challenge", 25, "acc_norm", dataset_name="AI2 Reasoning Challenge (25-Shot)",
                 dataset_type="ai2_arc", dataset_config="ARC-Challenge", dataset_split="test",
                 metric_name="normalized accuracy"),
        TaskSpec("hellaswag", 10, "acc_norm", dataset_name="HellaSwag (10-Shot)",
                 dataset_type="hellaswag", dataset_split="validation",
                 metric_name="normalized accuracy"),
        TaskSpec("mmlu", 5, "acc", dataset_name="MMLU (5-Shot)", dataset_type="cais/mmlu",
                 dataset_config="all", dataset_split="test", metric_name="accuracy"),
        TaskSpec("truthfulqa_mc2", 0, "acc", dataset_name="TruthfulQA (0-shot)",
                 dataset_type="truthful_qa", dataset_config="multiple_choice",
                 dataset_split="validation", metric_name="mc2", metric_type="mc2"),
        TaskSpec("winogrande", 5, "acc", dataset_name="Winogrande (5-shot)",
                 dataset_type="winogrande", dataset_config="winogrande_xl",
                 dataset_split="validation", metric_name="accuracy"),
        TaskSpec("gsm8k", 5, "exact_match", "strict-match", dataset_name="GSM8k (5-shot)",
                 dataset_type="gsm8k", dataset_config="main", dataset_split="test",
                 metric_name="exact match (strict-match)"),
    ],
    # lm-eval's `leaderboard` group (Open LLM Leaderboard v2), one entry per sub-group.
    "leaderboard": [
        TaskSpec("leaderboard_ifeval", 0, "prompt_level_strict_acc", dataset_name="IFEval (0-Shot)",
                 dataset_type="HuggingFaceH4/ifeval", metric_name="prompt-level strict accuracy"),
        TaskSpec("leaderboard_ifeval", 0, "inst_level_strict_acc", dataset_name="IFEval (0-Shot)",
                 dataset_type="HuggingFaceH4/ifeval",
                 metric_name="instruction-level strict accuracy"),
        TaskSpec("leaderboard_bbh", 3, "acc_norm", dataset_name="BBH (3-Shot)", dataset_type="BBH",
                 metric_name="normalized accuracy"),
        TaskSpec("leaderboard_math_hard", 4, "exact_match", dataset_name="MATH Lvl 5 (4-Shot)",
                 dataset_type="hendrycks/competition_math", metric_name="exact match"),
        TaskSpec("leaderboard_gpqa", 0, "acc_norm", dataset_name="GPQA (0-shot)",
                 dataset_type="Idavidrein/gpqa", metric_name="normalized accuracy"),
        TaskSpec("leaderboard_musr", 0, "acc_norm", dataset_name="MuSR (0-shot)",
                 dataset_type="TAUR-Lab/MuSR", metric_name="normalized accuracy"),
        TaskSpec("leaderboard_mmlu_pro", 5, "acc", dataset_name="MMLU-PRO (5-shot)",
                 dataset_type="TIGER-Lab/MMLU-Pro", dataset_config="main", dataset_split="test",
                 metric_name="accuracy"),
    ],
    # The Nous suite (AGIEval, GPT4All, TruthfulQA, BIG-bench), zero-shot, with lm-eval 0.4 names.
    "nous": [
        *(_agieval(t) for t in (
            "agieval_aqua_rat", "agieval_logiqa_en", "agieval_lsat_ar", "agieval_lsat_lr",
            "agieval_lsat_rc", "agieval_sat_en", "agieval_sat_en_without_passage",
            "agieval_sat_math",
        )),
        TaskSpec("arc_challenge", 0, "acc_norm", dataset_name="ARC-Challenge (0-shot)",
                 dataset_type="ai2_arc", dataset_config="ARC-Challenge", dataset_split="test",
                 metric_name="normalized accuracy"),
        TaskSpec("arc_easy", 0, "acc_norm", dataset_name="ARC-Easy (0-shot)",
                 dataset_type="ai2_arc", dataset_config="ARC-Easy", dataset_split="test",
                 metric_name="normalized accuracy"),
        TaskSpec("boolq", 0, "acc", dataset_name="BoolQ (0-shot)", dataset_type="super_glue",
                 dataset_config="boolq", dataset_split="validation", metric_name="accuracy"),
        TaskSpec("hellaswag", 0, "acc_norm", dataset_name="HellaSwag (0-shot)",
                 dataset_type="hellaswag", dataset_split="validation",
                 metric_name="normalized accuracy"),
        TaskSpec("openbookqa", 0, "acc_norm", dataset_name="OpenBookQA (0-shot)",
                 dataset_type="openbookqa", dataset_config="main", dataset_split="test",
                 metric_name="normalized accuracy"),
        TaskSpec("piqa", 0, "acc_norm", dataset_name="PIQA (0-shot)", dataset_type="piqa",
                 dataset_split="validation", metric_name="normalized accuracy"),
        TaskSpec("winogrande", 0, "acc", dataset_name="Winogrande (0-shot)",
                 dataset_type="winogrande", dataset_config="winogrande_xl",
                 dataset_split="validation", metric_name="accuracy"),
        TaskSpec("truthfulqa_mc2", 0, "acc", dataset_name="TruthfulQA (0-shot)",
                 dataset_type="truthful_qa", dataset_config="multiple_choice",
                 dataset_split="validation", metric_name="mc2", metric_type="mc2"),
        *(_bigbench(t) for t in (
            "causal_judgment", "date_understanding", "disambiguation_qa", "geometric_shapes",
            "logical_deduction", "movie_recommendation", "navigate",
            "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection",
            "snarks", "sports_understanding", "temporal_sequences", "tracking_shuffled_objects",
        )),
    ],
    # publisher's own task (publisher/tasks/): runs offline in seconds, for the demo and the tests.
    "tiny": [
        TaskSpec(TINY_TASK, 0, "acc", dataset_name=TINY_TASK, dataset_type=TINY_TASK,
                 dataset_split="test", metric_name="accuracy"),
        TaskSpec(TINY_TASK, 0, "acc_norm", dataset_name=TINY_TASK, dataset_type=TINY_TASK,
                 dataset_split="test", metric_name="normalized accuracy"),
    ],
}
# fmt: on


class EvalError(PublisherError):
    """The evaluation cannot run or its results cannot be read; the message says why."""


# ---------------------------------------------------------------------------------------------
# Running


def sandbox_prompt_templates() -> None:
    """Render lm-eval's prompt templates (a task's `doc_to_text`, `doc_to_choice`, ...) in
    Jinja's sandbox.

    lm-eval renders them with a plain `jinja2.Environment` (`lm_eval.utils.env`), where a
    template reaches Python: `{{ cycler.__init__.__globals__.os.environ }}` in a custom task's
    YAML would run with `allow_code` off and validate passing. The sandbox refuses such access
    (`SecurityError`) and keeps lm-eval's settings and its `regex_replace` filter; it is not
    immutable, so lm-eval's own templates render as before."""
    from jinja2 import BaseLoader, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment
    from lm_eval import utils

    if isinstance(utils.env, SandboxedEnvironment):
        return
    env = SandboxedEnvironment(
        loader=BaseLoader, undefined=StrictUndefined, keep_trailing_newline=True
    )
    env.filters["regex_replace"] = utils.regex_replace
    utils.env = env


def run_eval(
    model_dir: Path,
    settings: EvalSettings,
    out_dir: Path,
    device: str = "cpu",
    dtype: str = "auto",
    backend: str = "hf",
    parallel: EvalParallelism | None = None,
    model_name: str = "merged",
) -> dict[str, Any]:
    """Evaluate the model in `model_dir` with lm-eval and write `OUT_DIR/results.json`.

    Explicit `settings.tasks` run with `settings.num_fewshot` (or each task's default); otherwise
    the tasks of `settings.suite` run, each with the suite's shots. Task names are checked first:
    an unknown one raises `EvalError` naming the closest known tasks.

    Args:
        model_dir: a transformers model directory.
        settings: the recipe's `publish.eval`.
        out_dir: where `results.json` goes (and `tasks/`, the copy of publisher's own tasks).
        device: torch device, e.g. `"cpu"` or `"cuda:0"`. lm-eval's own default is cuda, so it is
            always passed on for the `hf` backend.
        dtype: dtype lm-eval loads the model in, e.g. `"auto"` (the checkpoint's) or `"bfloat16"`.
        backend: `"hf"` (transformers) or `"vllm"`. vLLM needs the `vllm` extra
            (`pip install lm-eval[vllm]`) on a GPU runner; it picks its GPU itself, runs with
            `gpu_memory_utilization=0.8`, and is not exercised by the tests.
        parallel: how the GPUs are used (`publisher.parallel`): vLLM's tensor and data
            parallel sizes; for `hf`, `parallelize` and, with several copies, this same
            evaluation relaunched under `accelerate launch` (rank 0 writes the results).
        model_name: what `results.json` calls the model instead of its local path, e.g.
            `"merged"` (the run directory's) or a parent's name.

    Returns:
        lm-eval's output as written to `results.json` (per-sample logs left out, plus
        `lm_eval_version`), read back, so its numbers are the file's numbers.
    """
    import lm_eval
    from datasets.exceptions import DatasetsError
    from lm_eval.utils import handle_non_serializable

    sandbox_prompt_templates()
    if backend not in BACKENDS:
        raise EvalError(f"unknown eval backend '{backend}'; use one of: {', '.join(BACKENDS)}")
    names, shots = _requested(settings)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / RESULTS_NAME
    results_path.unlink(missing_ok=True)
    include = [write_local_tasks(out_dir / LOCAL_TASKS_NAME), *_include_paths(settings)]
    manager = _task_manager(include, names)

    if parallel is not None and parallel.processes(backend) > 1 and _RANK_ENV not in os.environ:
        return _launch_data_parallel(
            parallel, model_dir, settings, out_dir, device=device, dtype=dtype, backend=backend
        )
    model_args: dict[str, Any] = {"pretrained": str(Path(model_dir).resolve()), "dtype": dtype}
    if backend == "vllm":
        model_args["gpu_memory_utilization"] = 0.8
    if parallel is not None:
        model_args.update(parallel.model_args(backend))
    batch_size = settings.batch_size or (
        "auto" if backend == "vllm" or device.startswith("cuda") else 1
    )
    try:
        tasks = _with_shots(manager, names, shots) if shots else list(names)
        results = lm_eval.simple_evaluate(
            model=backend,
            model_args=model_args,
            tasks=tasks,
            num_fewshot=None if shots else settings.num_fewshot,
            limit=_limit(settings.limit),
            batch_size=batch_size,
            device=device if backend == "hf" else None,
            apply_chat_template=settings.apply_chat_template,
            fewshot_as_multiturn=settings.apply_chat_template,
            log_samples=False,
            task_manager=manager,
        )
    except (OSError, ValueError, KeyError, RuntimeError, ImportError, DatasetsError) as exc:
        # datasets' own errors (a task's data that will not load) say nothing of the task
        cause = exc.__cause__ if isinstance(exc, DatasetsError) and exc.__cause__ else exc
        raise EvalError(
            f"lm-eval failed on {', '.join(names)}: {type(exc).__name__}: {exc}"
            + (f" ({type(cause).__name__}: {cause})" if cause is not exc else "")
        ) from exc
    if results is None:
        if int(os.environ.get(_RANK_ENV, "0")) > 0:
            return {}  # another data-parallel process: rank 0 writes the results
        raise EvalError("lm-eval returned no results (not the main process?)")
    results.pop("samples", None)
    results.setdefault("lm_eval_version", lm_eval.__version__)
    text = json.dumps(results, indent=2, ensure_ascii=False, default=handle_non_serializable)
    # The file is published with the model: runner-local paths mean nothing to its readers
    # (and show the runner's layout), so they become paths relative to the run directory.
    for local, shown in ((Path(model_dir).resolve(), model_name), (out_dir.resolve(), "eval")):
        text = text.replace(str(local), shown)
    results_path.write_text(text + "\n", encoding="utf-8")
    return json.loads(text)


def _launch_data_parallel(
    parallel: EvalParallelism,
    model_dir: Path,
    settings: EvalSettings,
    out_dir: Path,
    **kwargs: str,
) -> dict[str, Any]:
    """Run this evaluation in `parallel.data_parallel` processes under `accelerate launch`;
    lm-eval splits the requests between them and rank 0 writes `results.json`."""
    import subprocess
    import sys

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    job = out_dir / "launch.json"
    job.write_text(
        json.dumps(
            {
                "model_dir": str(model_dir),
                "settings": settings.model_dump(),
                "out_dir": str(out_dir),
                "parallel": asdict(parallel),
                **kwargs,
            }
        ),
        encoding="utf-8",
    )
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    command += ["--num_processes", str(parallel.processes("hf")), "-m", "publisher.evaluate"]
    done = subprocess.run([*command, str(job)], check=False)  # noqa: S603 - our own module
    job.unlink(missing_ok=True)
    if done.returncode != 0:
        raise EvalError(f"lm-eval under accelerate launch failed (exit {done.returncode})")
    return json.loads((out_dir / RESULTS_NAME).read_text(encoding="utf-8"))


def _launched(path: str) -> None:
    """One process of `_launch_data_parallel`."""
    job = json.loads(Path(path).read_text(encoding="utf-8"))
    run_eval(
        Path(job["model_dir"]),
        EvalSettings.model_validate(job["settings"]),
        Path(job["out_dir"]),
        device=f"cuda:{os.environ.get('LOCAL_RANK', '0')}",
        dtype=job["dtype"],
        backend=job["backend"],
        parallel=EvalParallelism(**job["parallel"]),
    )


def write_local_tasks(dest: Path) -> Path:
    """Copy publisher's own lm-eval tasks (`TASKS_DIR`) to `dest`, with data paths made absolute.

    Each YAML's relative `dataset_kwargs.data_files` entries are rewritten to the copied data
    files, so the copy works from any current directory. Returns `dest`, for `include_path`.
    """
    dest = Path(dest).resolve()
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for src in sorted(TASKS_DIR.iterdir()):
        if not src.is_file() or src.suffix == ".py":
            continue
        if src.suffix != ".yaml":
            shutil.copyfile(src, dest / src.name)
            continue
        config = yaml.safe_load(src.read_text(encoding="utf-8"))
        data_files = (config.get("dataset_kwargs") or {}).get("data_files")
        if data_files is not None:
            config["dataset_kwargs"]["data_files"] = _absolute(data_files, dest)
        header = f"# Written by publisher.evaluate from publisher/tasks/{src.name}; do not edit.\n"
        body = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
        (dest / src.name).write_text(header + body, encoding="utf-8")
    return dest


def _absolute(data_files: Any, base: Path) -> Any:
    if isinstance(data_files, str):
        return data_files if Path(data_files).is_absolute() else str(base / data_files)
    if isinstance(data_files, list):
        return [_absolute(f, base) for f in data_files]
    if isinstance(data_files, dict):
        return {split: _absolute(f, base) for split, f in data_files.items()}
    return data_files


def task_plan(settings: EvalSettings) -> tuple[list[str], dict[str, int]]:
    """The task names that run, and per-task shots (empty when the recipe lists its own tasks,
    which run with `settings.num_fewshot`); `EvalError` when nothing is set."""
    return _requested(settings)


def lm_eval_commands(
    settings: EvalSettings, model: str, device: str = "cpu", dtype: str = "auto"
) -> list[str]:
    """The `lm_eval` command lines that reproduce the evaluation of `model` (a repo id), one
    per number of shots (lm-eval's CLI takes one `--num_fewshot` per run)."""
    names, shots = task_plan(settings)
    groups: dict[int | None, list[str]] = {}
    for name in names:
        groups.setdefault(shots.get(name, settings.num_fewshot), []).append(name)
    batch = settings.batch_size or ("auto" if device.startswith("cuda") else 1)
    commands = []
    for count, tasks in groups.items():
        parts = [
            "lm_eval",
            f"--model {settings.backend}",
            f"--model_args pretrained={model},dtype={dtype}",
            f"--tasks {','.join(tasks)}",
        ]
        if count is not None:
            parts.append(f"--num_fewshot {count}")
        if settings.limit is not None:
            parts.append(f"--limit {_limit(settings.limit)}")
        parts += [f"--batch_size {batch}", f"--device {device}"]
        if settings.apply_chat_template:
            parts.append("--apply_chat_template --fewshot_as_multiturn")
        # Task directories by name only: a runner's paths mean nothing to the card's readers.
        if any(t.startswith("publisher_") for t in tasks):
            parts.append("--include_path publisher/tasks")
        parts += [f"--include_path {Path(p).name}" for p in settings.include_paths]
        commands.append(" ".join(parts))
    return commands


def _requested(settings: EvalSettings) -> tuple[list[str], dict[str, int]]:
    """Task names to run, and per-task shots (empty when the recipe lists its own tasks)."""
    if settings.tasks:
        return list(dict.fromkeys(settings.tasks)), {}
    if settings.suite is None:
        raise EvalError("nothing to evaluate: set 'publish.eval.suite' or 'publish.eval.tasks'")
    specs = suite_specs(settings.suite)
    shots = {spec.task: spec.num_fewshot for spec in specs}
    return list(shots), shots


def suite_specs(suite: str) -> list[TaskSpec]:
    """The `TaskSpec`s of a suite; `EvalError` for an unknown suite name."""
    if suite not in SUITES:
        match = difflib.get_close_matches(suite, list(SUITES), n=1)
        hint = f" Did you mean '{match[0]}'?" if match else ""
        raise EvalError(f"unknown eval suite '{suite}'.{hint} Known: {', '.join(SUITES)}")
    return SUITES[suite]


def _include_paths(settings: EvalSettings) -> list[Path]:
    paths = [Path(p).expanduser() for p in settings.include_paths]
    missing = [str(p) for p in paths if not p.is_dir()]
    if missing:
        raise EvalError(
            f"eval include_paths not found: {', '.join(missing)}; give directories of task YAML"
        )
    # checked again here, where lm-eval reads them: a file swapped in since validate is caught
    task_files = [Path(t) for t in settings.tasks if t.endswith(TASK_SUFFIXES)]
    for path in [*paths, *task_files]:
        try:
            check_tasks(path, repository_root(path.parent), settings.allow_code)
        except PathError as exc:
            raise EvalError(f"eval tasks refused: {exc}") from None
    return paths


def _task_manager(include: list[Path], names: list[str]) -> Any:
    """A `TaskManager` that knows `names`; `EvalError` listing close matches for unknown ones.

    Indexing lm-eval's own ~15,000 tasks takes about 20 s, so the include paths are tried alone
    first: tasks that live there (publisher's own, the recipe's) do not need the full index.
    """
    from lm_eval.tasks import TaskManager

    local = TaskManager(include_path=[str(p) for p in include], include_defaults=False)
    if all(_known(local, name) for name in names):
        return local
    manager = TaskManager(include_path=[str(p) for p in include])
    unknown = [name for name in names if not _known(manager, name)]
    if unknown:
        lines = []
        for name in unknown:
            close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            lines.append(f"unknown lm-eval task '{name}'.{hint}")
        raise EvalError(
            " ".join(lines)
            + " Custom tasks need their YAML directory in 'publish.eval.include_paths'."
        )
    return manager


def _known(manager: Any, name: str) -> bool:
    return name in manager.task_index or (name.endswith(".yaml") and Path(name).is_file())


def _with_shots(manager: Any, names: list[str], shots: dict[str, int]) -> list[Any]:
    """Load each task or group and set its leaf tasks' shots (lm-eval takes one value per run)."""
    objects: list[Any] = []
    for name in names:
        loaded = manager.load([name])
        for task in loaded["tasks"].values():
            task.set_config(key="num_fewshot", value=shots[name])
        groups = loaded.get("groups", {})
        objects.extend([groups[name]] if name in groups else loaded["tasks"].values())
    return objects


def _limit(limit: float | None) -> int | float | None:
    if limit is not None and limit >= 1 and float(limit).is_integer():
        return int(limit)
    return limit


if __name__ == "__main__":
    import sys

    _launched(sys.argv[1])
