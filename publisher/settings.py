"""What one run does, decided once: defaults < recipe < command-line flags or workflow inputs.

`resolve_settings(recipe, Overrides(...))` is the one place where a flag is weighed against the
recipe's `publish:` block. The result, a frozen `Settings`, is recorded in `manifest.json` and
handed to every stage; verify and `publisher push` read it back from there (`read_settings`),
never from the raw recipe. The shells (CLI, workflows) only say what was given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from publisher.errors import PublisherError
from publisher.evaluate import suite_specs
from publisher.recipe import EvalSettings, MergeSettings, Recipe
from publisher.recipe_paths import TASK_SUFFIXES

STAGES = ("plan", "merge", "weights", "smoke", "eval", "card", "verify", "push")
DEFAULT_STAGES = STAGES[:-1]
Device = Literal["cpu", "cuda"]
DEVICES: tuple[str, ...] = get_args(Device)
EVAL_BACKENDS: tuple[str, ...] = get_args(EvalSettings.model_fields["backend"].annotation)
# The `publish.merge` fields a flag may override (`cuda` follows --device).
MERGE_FLAGS = (
    "lazy_unpickle",
    "low_cpu_memory",
    "out_shard_size",
    "async_write",
    "write_threads",
    "num_threads",
    "parent_reads",
)

SectionT = TypeVar("SectionT", EvalSettings, MergeSettings)


class SettingsError(PublisherError):
    """A flag or workflow input is not valid; the message names it and the valid choices."""


class HubTarget(BaseModel):
    """Where and how a run is pushed.

    Attributes:
        repo_id: e.g. `"someone/my-merge"`.
        create_pr: open a Hub pull request instead of committing to the branch.
        private: create the repo private (an existing repo keeps its visibility).
        revision: the branch to commit to; `None` is `main`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    repo_id: str
    create_pr: bool = False
    private: bool = False
    revision: str | None = None


class Settings(BaseModel):
    """The resolved settings of one run (what `manifest.json` records under `settings`).

    Attributes:
        device: `"cpu"` or `"cuda"`: where smoke and eval run (the merge follows `merge.cuda`).
        stages: the stages to run, in pipeline order, `"push"` included when `push` is set.
        force: redo stages whose inputs are unchanged.
        push: push after verify (from --push/--no-push, else the recipe's `publish.push` when
            the stages were not chosen by hand).
        hub: where the push goes.
        eval: the recipe's `publish.eval` with the flags applied; `include_paths` and task
            files absolute.
        merge: the recipe's `publish.merge` with the flags applied (`cuda` from --device).
        templates_dir: absolute card templates directory, or `None` for `templates/`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    device: Device = "cpu"
    stages: tuple[str, ...] = DEFAULT_STAGES
    force: bool = False
    push: bool = False
    hub: HubTarget
    eval: EvalSettings
    merge: MergeSettings
    templates_dir: str | None = None


@dataclass(frozen=True)
class Overrides:
    """What the command line or a workflow input set; `None` (or empty) means "not given"."""

    device: str | None = None
    stages: str | Iterable[str] | None = None
    force: bool = False
    push: bool | None = None
    repo_id: str | None = None
    create_pr: bool | None = None
    private: bool | None = None
    revision: str | None = None
    templates_dir: str | None = None
    eval_suite: str | None = None
    eval_limit: float | None = None
    eval_backend: str | None = None
    parent_eval: bool | None = None
    merge: dict[str, Any] = field(default_factory=dict)


def parse_stages(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """`"merge,smoke"` → stages in pipeline order; unknown names or none at all are an error."""
    if text is None:
        return DEFAULT_STAGES
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise SettingsError(
            f"unknown stage(s) {', '.join(unknown)}; stages are {', '.join(STAGES)}"
        )
    if not names:
        raise SettingsError(f"no stage given; stages are {', '.join(STAGES)}")
    return tuple(s for s in STAGES if s in names)


def resolve_settings(recipe: Recipe, given: Overrides | None = None) -> Settings:
    """The run's settings: each flag given wins over the recipe, the recipe over the default."""
    given = given or Overrides()
    stages = parse_stages(given.stages)
    # Push when asked to, or when the recipe says so and the stages were not chosen by hand.
    # --no-push wins even over a hand-picked push stage.
    push = given.push if given.push is not None else recipe.publish.push and given.stages is None
    push = push or (given.push is None and "push" in stages)
    stages = tuple(s for s in STAGES if s in stages and s != "push" or s == "push" and push)
    recipe_dir = recipe.path.parent
    eval_updates: dict[str, Any] = {}
    if given.eval_suite:
        eval_updates.update(suite=given.eval_suite, tasks=[])
    if given.eval_limit is not None:
        eval_updates["limit"] = given.eval_limit
    if given.eval_backend:
        eval_updates["backend"] = given.eval_backend
    if given.parent_eval is not None:
        eval_updates["parents"] = given.parent_eval
    evaluation = _override("eval", recipe.publish.eval, eval_updates)
    if evaluation.suite is not None:
        suite_specs(evaluation.suite)  # an unknown name fails here, not after the merge
    # Task directories and task files are relative to the recipe, like publish.templates;
    # absolute, links kept: evaluate checks again where each one really leads.
    include = [os.path.abspath(recipe_dir / Path(p).expanduser()) for p in evaluation.include_paths]
    tasks = [
        os.path.abspath(recipe_dir / t) if t.endswith(TASK_SUFFIXES) else t
        for t in evaluation.tasks
    ]
    evaluation = evaluation.model_copy(update={"include_paths": include, "tasks": tasks})
    unknown = {k for k in given.merge if k not in MERGE_FLAGS}
    if unknown:
        raise SettingsError(f"no merge flag {', '.join(sorted(unknown))}")
    # --device moves the merge too; without it the recipe's publish.merge.cuda decides.
    device_update = {"cuda": given.device == "cuda"} if given.device else {}
    merge = _override("merge", recipe.publish.merge, {**given.merge, **device_update})
    templates = choose_templates_dir(recipe, given.templates_dir)
    try:
        return Settings(
            device=given.device or "cpu",
            stages=stages,
            force=given.force,
            push=push,
            hub=HubTarget(
                repo_id=given.repo_id or recipe.repo_id,
                create_pr=_first(given.create_pr, recipe.publish.create_pr),
                private=_first(given.private, recipe.publish.private),
                revision=given.revision,
            ),
            eval=evaluation,
            merge=merge,
            templates_dir=str(templates) if templates else None,
        )
    except ValidationError as exc:
        raise SettingsError(_pydantic_message("run", exc)) from None


def choose_templates_dir(recipe: Recipe, given: str | Path | None = None) -> Path | None:
    """The card templates directory, absolute: `given` (the flag), else the recipe's
    `publish.templates` (relative to the recipe file), else `None` (the default `templates/`)."""
    if given:
        return Path(given).resolve()
    if recipe.publish.templates:
        return (recipe.path.parent / recipe.publish.templates).resolve()
    return None


def read_settings(manifest: Path) -> Settings | None:
    """The settings a run recorded in its `manifest.json`; `None` when it recorded none."""
    try:
        data = json.loads(Path(manifest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    raw = data.get("settings") if isinstance(data, dict) else None
    if raw is None:
        return None
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise SettingsError(
            f"{manifest} records settings this version cannot read "
            f"({_pydantic_message('settings', exc)}); run the pipeline again"
        ) from None


def push_target(manifest: Path, given: Overrides | None = None) -> HubTarget:
    """Where `publisher push` sends a run: the recorded target, with the push flags on top."""
    given = given or Overrides()
    base = _recorded_target(manifest)
    repo_id = given.repo_id or (base.repo_id if base else None)
    if not repo_id:
        raise SettingsError(
            f"no repo id: pass --repo-id or push a run directory made by 'publisher run' "
            f"({manifest} records no settings)"
        )
    return HubTarget(
        repo_id=repo_id,
        create_pr=_first(given.create_pr, base.create_pr if base else False),
        private=_first(given.private, base.private if base else False),
        revision=given.revision or (base.revision if base else None),
    )


def _recorded_target(manifest: Path) -> HubTarget | None:
    # Only the push's own part: the push job has neither mergekit nor lm-eval to validate the
    # rest with (requirements/publish.lock).
    try:
        data = json.loads(Path(manifest).read_text(encoding="utf-8"))
        raw = data["settings"]["hub"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        return HubTarget.model_validate(raw)
    except ValidationError as exc:
        raise SettingsError(
            f"{manifest} records a push target this version cannot read "
            f"({_pydantic_message('settings', exc)}); run the pipeline again"
        ) from None


def _first(given: bool | None, otherwise: bool) -> bool:
    return otherwise if given is None else given


def _override(what: str, section: SectionT, updates: dict[str, Any]) -> SectionT:
    # model_copy(update=...) skips validation; a bad flag must fail here, not inside mergekit
    # or lm-eval.
    if not updates:
        return section
    try:
        # What the recipe set plus the flags: fields neither sets stay unset, so that the merge
        # auto-tunes them (publisher.merge_tuning) instead of taking them as explicit.
        return type(section).model_validate({**section.model_dump(exclude_unset=True), **updates})
    except ValidationError as exc:
        raise SettingsError(_pydantic_message(what, exc)) from None


def _pydantic_message(what: str, exc: ValidationError) -> str:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return f"invalid {what} option: {problems}"
