"""`publisher run`: plan → merge → weights → smoke → eval → card → verify (→ push), over a run
directory.

Each stage reads and writes files in the run directory (see `publisher.rundir`), and records in
`manifest.json` (`publisher.manifest`) its status, timing and a hash of its inputs. A stage whose inputs are unchanged
since its last successful run is skipped; `force` redoes it. When a stage fails the run stops
there with one plain message, and no later stage runs: the card only shows reports whose stage
succeeded on the current inputs, and nothing is pushed unless verify passed.

The weight check (`weights`) runs right after the merge, so a merge that is not what the plan
says stops the run before the slow stages, and the card can say what the weights could not show.
Verify runs after the card so that it checks the very README that would be pushed; it takes the
weight check's report when it is current and re-runs the check when it is not.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from publisher.errors import PublisherError
from publisher.manifest import Manifest, StageRecord, hardware, hash_inputs, now, tool_versions
from publisher.parents import ParentInfo, resolve_parents
from publisher.recipe import Recipe
from publisher.recipe_paths import chat_template_text
from publisher.report import Log, Reporter, reporter
from publisher.rundir import RunDir
from publisher.settings import DEFAULT_STAGES, Settings


class StageError(PublisherError):
    """A stage failed; the message names the stage and says why."""

    def __init__(self, stage: str, message: str):
        self.stage = stage
        super().__init__(f"stage '{stage}' failed: {message}")


@dataclass
class StageResult:
    name: str
    status: str
    seconds: float


@dataclass
class RunContext:
    """What the stages share during one `publisher run`."""

    recipe: Recipe
    run: RunDir
    settings: Settings
    manifest: Manifest
    log: Reporter
    mounted_parents: Mapping[str, Path] = field(default_factory=dict)
    _parents: list[ParentInfo] | None = None
    _parent_dirs: dict[str, Path] | None = None

    @property
    def parents(self) -> list[ParentInfo]:
        if self._parents is None:
            self._parents = resolve_parents(self.recipe)
        return self._parents

    @property
    def parent_dirs(self) -> dict[str, Path]:
        """Local directories of the parents at their pinned revisions (mounted, or downloaded
        if needed)."""
        if self._parent_dirs is None:
            from publisher.hub import fetch_parents

            self._parent_dirs = fetch_parents(
                self.recipe, self.parents, log=self.log, mounted=self.mounted_parents
            )
        return self._parent_dirs

    @property
    def dtypes(self) -> tuple[str | None, str | None]:
        """The recipe's mergekit `dtype` (what the parents are cast to) and `out_dtype`."""
        return self.recipe.merge.get("dtype"), self.recipe.merge.get("out_dtype")

    def current(self, stage: str) -> bool:
        """Whether `stage` succeeded on the inputs it has now (its report can be trusted)."""
        rec = self.manifest.record(stage)
        return (
            rec is not None
            and rec.status in ("ok", "skipped")
            and rec.input_hash == (STAGE_INPUTS[stage](self))
        )


# ---------------------------------------------------------------------------------------------
# stage inputs (what makes a stage's output stale) and stage bodies


def _plan_inputs(ctx: RunContext) -> str:
    lock = ctx.recipe.lock_path
    return hash_inputs(
        "plan",
        ctx.recipe.sha256,
        lock if lock.exists() else None,
        [(p.ref, p.revision) for p in ctx.parents],
        tool_versions().get("mergekit"),
    )


def _merge_inputs(ctx: RunContext) -> str:
    settings = ctx.settings.merge.model_dump()
    chat = ctx.recipe.publish.chat_template
    # a chat template file counts by its text: editing it merges again
    text = chat_template_text(chat, ctx.recipe.path.parent) if chat else None
    return hash_inputs("merge", ctx.run.plan, settings, text)


def _weights_inputs(ctx: RunContext) -> str:
    return hash_inputs("weights", ctx.run.plan, ctx.run.merged, ctx.dtypes)


def _smoke_inputs(ctx: RunContext) -> str:
    return hash_inputs("smoke", ctx.run.merged, ctx.recipe.publish.smoke.model_dump())


def _eval_inputs(ctx: RunContext) -> str:
    settings = ctx.settings.eval
    # A custom task's YAML or data changing changes the results, so its directory is an input.
    task_dirs = [Path(p) for p in settings.include_paths if Path(p).is_dir()]
    # How the work spreads over GPUs does not change the results: not an input.
    dumped = settings.model_dump(exclude={"parallel"})
    parents = [(p.ref, p.revision) for p in ctx.parents] if settings.parents else []
    return hash_inputs("eval", ctx.run.merged, dumped, parents, *task_dirs)


def _card_inputs(ctx: RunContext) -> str:
    templates = ctx.settings.templates_dir
    return hash_inputs(
        "card",
        ctx.run.plan,
        ctx.run.merged if ctx.current("merge") else None,
        ctx.run.smoke if ctx.current("smoke") else None,
        ctx.run.eval_results if ctx.current("eval") else None,
        ctx.run.weights if ctx.current("weights") else None,
        *(ctx.run.parent_evals() if ctx.current("eval") else []),
        templates,
        ctx.recipe.repo_id,
    )


def _verify_inputs(ctx: RunContext) -> str:
    return hash_inputs(
        "verify",
        ctx.run.plan,
        ctx.run.merged,
        ctx.run.weights,
        ctx.run.card,
        ctx.run.card_data,
        ctx.run.smoke,
        ctx.run.eval_results,
        *ctx.run.parent_evals(),
    )


def _push_inputs(ctx: RunContext) -> str:
    # Recorded for the manifest only: pushing is never skipped here, because the Hub itself
    # says whether anything changed (an unchanged run makes no commit).
    return hash_inputs("push", ctx.run.verify, ctx.run.card)


def _stage_plan(ctx: RunContext) -> list[Path]:
    from publisher.schedule import build_plan, write_plan

    shutil.copyfile(ctx.recipe.path, ctx.run.recipe)
    if ctx.recipe.lock_path.exists():
        shutil.copyfile(ctx.recipe.lock_path, ctx.run.lock)
    plan = build_plan(ctx.recipe, ctx.parents)
    write_plan(plan, ctx.run.plan)
    ctx.log(
        f"  {plan.num_layers} layers, {len(plan.tensors)} tensors, groups: {', '.join(plan.groups)}"
    )
    return [ctx.run.plan, ctx.run.recipe]


def _stage_merge(ctx: RunContext) -> list[Path]:
    from publisher.merge import run_merge_stage, tuned_merge_request

    unresolved = [p.ref for p in ctx.parents if not p.resolved]
    if unresolved:
        raise StageError(
            "merge",
            "parents are not pinned: "
            + ", ".join(unresolved)
            + f"; run 'publisher lock {ctx.recipe.path}' where the Hub is reachable",
        )
    request, tuning = tuned_merge_request(ctx.recipe, ctx.parent_dirs, settings=ctx.settings.merge)
    # What was chosen and why, beside the settings it was chosen from.
    ctx.manifest.data["merge_options"] = {
        "options": tuning.options,
        "reasons": tuning.reasons,
        "facts": tuning.facts,
    }
    ctx.manifest.save()
    ctx.log("  merge options: " + ", ".join(f"{k}={v}" for k, v in tuning.options.items()))
    run_merge_stage(ctx.recipe, ctx.parents, ctx.parent_dirs, ctx.run.merged, request)
    # The weight check reproduces a CPU merge exactly and a GPU merge within a bound.
    ctx.manifest.data["merged_on"] = request.device
    ctx.manifest.save()
    return [ctx.run.merged]


def _stage_weights(ctx: RunContext) -> list[Path]:
    from publisher.schedule import Plan
    from publisher.weights import check_weights

    dtype, out_dtype = ctx.dtypes
    report = check_weights(
        Plan.read(ctx.run.plan),
        ctx.run.merged,
        ctx.parent_dirs,
        dtype,
        out_dtype,
        merged_on=ctx.run.merged_on(),
        log=ctx.log,
    )
    report.write(ctx.run.weights)
    if not report.passed:
        raise StageError("weights", _failures_text(report.failures, ctx.run.weights))
    return [ctx.run.weights]


def _failures_text(failures: list[str], details: Path) -> str:
    more = f" (+{len(failures) - 5} more)" if len(failures) > 5 else ""
    return "; ".join(failures[:5]) + more + f". Details in {details}"


def _stage_smoke(ctx: RunContext) -> list[Path]:
    from publisher.smoke import SmokeError, run_smoke

    try:
        # run_dir: smoke.json is written whether the test passes or fails (for inspection).
        report = run_smoke(
            ctx.run.merged,
            ctx.recipe.publish.smoke,
            device=ctx.settings.device,
            run_dir=ctx.run.root,
        )
    except SmokeError as exc:
        raise StageError("smoke", str(exc)) from None
    for transcript in report.transcripts:
        ctx.log(
            f"  {transcript.user!r} -> {transcript.reply[:60]!r} "
            f"({transcript.tokens_per_second:.1f} tok/s)"
        )
    return [ctx.run.smoke]


def _stage_eval(ctx: RunContext) -> list[Path]:
    from publisher.evaluate import run_eval

    settings = ctx.settings.eval
    if not settings.tasks and not settings.suite:
        ctx.log("  no eval suite or tasks configured: nothing to evaluate")
        if ctx.run.eval_results.exists():
            ctx.run.eval_results.unlink()
        return []
    parallel = None
    if ctx.settings.device.startswith("cuda"):
        from publisher.parallel import choose_parallelism, detect

        found = detect(ctx.run.merged)
        try:
            parallel = choose_parallelism(settings.parallel, **found)
        except PublisherError as exc:
            raise StageError("eval", str(exc)) from None
        ctx.log(f"  eval on {parallel.describe()} ({settings.backend})")
    run_eval(
        ctx.run.merged,
        settings,
        ctx.run.eval_dir,
        device=ctx.settings.device,
        dtype=settings.dtype,
        backend=settings.backend,
        parallel=parallel,
    )
    if not settings.parents:
        shutil.rmtree(ctx.run.eval_dir / "parents", ignore_errors=True)
        ctx.manifest.data.pop("parent_eval", None)
        return [ctx.run.eval_results]
    from publisher.parenteval import evaluate_parents

    done = evaluate_parents(
        ctx.parents,
        ctx.parent_dirs,
        settings,
        ctx.run,
        device=ctx.settings.device,
        parallel=parallel,
        log=ctx.log,
    )
    ctx.manifest.data["parent_eval"] = {d.ref: d.as_dict() for d in done}
    return [ctx.run.eval_results, *(d.path for d in done)]


def card_inputs_for(ctx: RunContext):
    """The card's inputs: the plan, plus each report whose stage succeeded on current inputs."""
    from publisher.card import CardInputs
    from publisher.cardview import read_model_facts
    from publisher.evalresults import summarize, to_eval_results
    from publisher.evaluate import lm_eval_commands
    from publisher.schedule import Plan
    from publisher.smoke import SmokeReport
    from publisher.weights import WeightReport

    plan = Plan.read(ctx.run.plan)
    smoke = (
        SmokeReport.read(ctx.run.smoke) if ctx.current("smoke") and ctx.run.smoke.exists() else None
    )
    summary = eval_results = None
    parent_evaluations = {}
    settings = ctx.settings.eval
    if ctx.current("eval") and ctx.run.eval_results.exists():
        results = json.loads(ctx.run.eval_results.read_text(encoding="utf-8"))
        summary = summarize(results, settings.suite)
        eval_results = to_eval_results(summary, ctx.recipe.repo_id)
        for parent in plan.parents:
            path = ctx.run.parent_eval(parent.ref)
            if settings.parents and path.exists():
                data = json.loads(path.read_text(encoding="utf-8"))
                parent_evaluations[parent.ref] = summarize(data, settings.suite)
    model = read_model_facts(ctx.run.merged) if ctx.current("merge") else None
    weights = (
        WeightReport.read(ctx.run.weights)
        if ctx.current("weights") and ctx.run.weights.exists()
        else None
    )
    return CardInputs(
        recipe=ctx.recipe,
        plan=plan,
        smoke=smoke,
        evaluation=summary,
        eval_results=eval_results,
        parent_evaluations=parent_evaluations,
        model=model,
        weights=weights,
        eval_commands=(
            lm_eval_commands(settings, ctx.recipe.repo_id, ctx.settings.device, settings.dtype)
            if summary is not None
            else []
        ),
    )


def _stage_card(ctx: RunContext) -> list[Path]:
    from publisher.card import operator_notes, write_card

    inputs = card_inputs_for(ctx)
    path = write_card(inputs, ctx.run.root, templates_dir=_path_or_none(ctx.settings.templates_dir))
    for note in operator_notes(inputs):
        ctx.log(f"  note: {note}")
    return [path, ctx.run.card_data, ctx.run.image]


def _stage_verify(ctx: RunContext) -> list[Path]:
    from publisher.verify import verify_run
    from publisher.weights import WeightReport

    # The weight check's report when it describes the current weights; else verify re-runs it.
    current = ctx.current("weights") and ctx.run.weights.exists()
    weights = WeightReport.read(ctx.run.weights) if current else None
    report = verify_run(
        ctx.run,
        ctx.parent_dirs,
        weights=weights,
        expect_smoke=ctx.current("smoke"),
        expect_eval=ctx.current("eval"),
    )
    report.write(ctx.run.verify)
    checked = len(report.weights.tensors)
    ctx.log(
        f"  {checked} tensors re-merged{' (sample)' if report.weights.sampled else ''}"
        f"{'' if weights is None else ' (by the weights stage)'}, "
        f"{len(report.card_checks)} card checks"
    )
    if not report.passed:
        raise StageError("verify", _failures_text(report.failures, ctx.run.verify))
    return [ctx.run.verify]


def _stage_push(ctx: RunContext) -> list[Path]:
    from publisher.hub import push_run

    if not ctx.current("verify"):
        raise StageError(
            "push", "verify has not passed on the current run directory; nothing was pushed"
        )
    result = push_run(ctx.run.root, **ctx.settings.hub.model_dump(), log=ctx.log)
    ctx.manifest.data["push"] = result.as_dict()
    ctx.manifest.save()
    return []


STAGE_INPUTS: dict[str, Callable[[RunContext], str]] = {
    "plan": _plan_inputs,
    "merge": _merge_inputs,
    "weights": _weights_inputs,
    "smoke": _smoke_inputs,
    "eval": _eval_inputs,
    "card": _card_inputs,
    "verify": _verify_inputs,
    "push": _push_inputs,
}
STAGE_BODIES: dict[str, Callable[[RunContext], list[Path]]] = {
    "plan": _stage_plan,
    "merge": _stage_merge,
    "weights": _stage_weights,
    "smoke": _stage_smoke,
    "eval": _stage_eval,
    "card": _stage_card,
    "verify": _stage_verify,
    "push": _stage_push,
}
STAGE_NEEDS: dict[str, tuple[str, ...]] = {
    "merge": ("plan",),
    "weights": ("merge",),
    "smoke": ("merge",),
    "eval": ("merge",),
    "card": ("plan",),
    "verify": ("merge", "card"),
    "push": ("verify",),
}


def run_pipeline(
    recipe: Recipe,
    run_dir: Path,
    settings: Settings,
    log: Log = print,
    mounted_parents: Mapping[str, Path] | None = None,
) -> list[StageResult]:
    """Run the chosen stages in order; raise `StageError` at the first failure.

    `log` gets progress lines; a `publisher.report.Reporter` also groups each stage's lines.
    `mounted_parents` maps Hub parents to their repos mounted at the locked revisions (a
    Hugging Face Job's volumes): those are read in place, not downloaded.
    """
    report = reporter(log)
    run = RunDir(Path(run_dir)).ensure()
    manifest = Manifest(run.manifest)
    manifest.data.update(
        {
            "recipe": str(recipe.path),
            "recipe_sha256": recipe.sha256,
            "repo_id": settings.hub.repo_id,
            "tool_versions": tool_versions(),
            "hardware": hardware("cuda" if settings.merge.cuda else settings.device),
            "settings": settings.model_dump(mode="json"),
        }
    )
    manifest.data.pop("options", None)  # what runs before settings were recorded wrote
    manifest.save()
    ctx = RunContext(
        recipe=recipe,
        run=run,
        settings=settings,
        manifest=manifest,
        log=report,
        mounted_parents=dict(mounted_parents or {}),
    )
    stages = list(settings.stages)
    results: list[StageResult] = []
    for number, stage in enumerate(stages, start=1):
        for need in STAGE_NEEDS.get(stage, ()):
            if need not in stages and not ctx.current(need):
                raise StageError(
                    stage,
                    f"needs the '{need}' stage's output, which is missing or "
                    f"stale in {run.root}; run it first (--stages {need},{stage})",
                )
        try:
            input_hash = STAGE_INPUTS[stage](ctx)
        except Exception as exc:
            raise _as_stage_error(stage, exc) from None
        if not settings.force and stage != "push" and manifest.is_current(stage, input_hash):
            report(f"[{number}/{len(stages)}] {stage}: unchanged, skipped")
            rec = manifest.record(stage)
            assert rec is not None
            rec.status = "skipped"
            manifest.set(stage, rec)
            results.append(StageResult(stage, "skipped", 0.0))
            continue
        report(f"[{number}/{len(stages)}] {stage} ...")
        if stage not in ("verify", "push") and run.verify.exists():
            # Whatever this stage changes has not been verified: no earlier pass may let a
            # push through until verify runs again.
            run.verify.unlink()
        started = time.monotonic()
        with report.group(stage):
            try:
                outputs = STAGE_BODIES[stage](ctx)
            except Exception as exc:
                seconds = time.monotonic() - started
                error = _as_stage_error(stage, exc)
                manifest.set(
                    stage, StageRecord("failed", input_hash, round(seconds, 3), now(), str(error))
                )
                raise error from None
        seconds = time.monotonic() - started
        # Record the hash of the inputs as they are after the stage (a stage may write its
        # own inputs' copies, e.g. the plan stage copies the recipe).
        manifest.set(
            stage,
            StageRecord(
                "ok",
                STAGE_INPUTS[stage](ctx) if stage != "push" else input_hash,
                round(seconds, 3),
                now(),
                None,
                [str(p.relative_to(run.root)) for p in outputs],
            ),
        )
        report(f"[{number}/{len(stages)}] {stage}: done in {seconds:.1f}s")
        results.append(StageResult(stage, "ok", seconds))
    stale = [
        s for s in DEFAULT_STAGES if s not in stages and manifest.record(s) and not ctx.current(s)
    ]
    if stale:
        report(
            f"note: {', '.join(stale)} now describe older inputs; run them again "
            f"(--stages {','.join(stale)}) before publishing"
        )
    return results


def _as_stage_error(stage: str, exc: BaseException) -> StageError:
    if isinstance(exc, StageError):
        return exc
    error = StageError(stage, f"{exc}" if str(exc) else type(exc).__name__)
    if isinstance(exc, PublisherError):
        error.problems = exc.problems  # still annotated on the recipe line at fault
    return error


def default_run_dir(recipe: Recipe) -> Path:
    return Path("runs") / recipe.name


def _path_or_none(path: str | None) -> Path | None:
    return Path(path) if path else None


__all__ = ["StageError", "default_run_dir", "run_pipeline"]
