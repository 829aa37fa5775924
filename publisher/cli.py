"""`publisher`: the command line, a thin layer over the stage modules.

Every known failure prints one plain line (`error: ...`) and exits 1; input errors of a recipe
print `FILE:LINE:COL: message` lines. No traceback reaches the user unless `--debug` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from publisher import __version__, actions, cli_actions, cli_hub
from publisher.console import EXIT_FAIL, EXIT_OK
from publisher.console import err as _err
from publisher.console import out as _out
from publisher.errors import CommandError, PublisherError
from publisher.evaluate import SUITES
from publisher.settings import DEVICES, EVAL_BACKENDS

__all__ = ["CommandError", "build_parser", "main"]

# ---------------------------------------------------------------------------------------------
# commands


def cmd_validate(args: argparse.Namespace) -> int:
    from publisher.recipe import RecipeError, load_recipe

    failed = 0
    lines: list[str] = []
    for path in args.files:
        try:
            recipe = load_recipe(path)
        except RecipeError as err:
            failed += 1
            for problem in err.problems:
                lines.append(str(problem))
                _err(str(problem))
                actions.annotate_problem(problem)
            continue
        _out(f"{path}: ok (SLERP of {len(recipe.model_refs())} parents -> {recipe.repo_id})")
    if failed:
        if args.markdown:
            Path(args.markdown).write_text(actions.problems_markdown(lines), encoding="utf-8")
        _err(f"{failed} of {len(args.files)} recipe(s) invalid")
        return EXIT_FAIL
    return EXIT_OK


def _load_plan(recipe_path: str):
    from publisher.parents import resolve_parents
    from publisher.recipe import load_recipe
    from publisher.schedule import build_plan

    recipe = load_recipe(recipe_path)
    parents = resolve_parents(recipe)
    return recipe, build_plan(recipe, parents)


def cmd_plan(args: argparse.Namespace) -> int:
    from publisher.schedule import format_plan_markdown, format_plan_text, plan_contract

    recipe, plan = _load_plan(args.recipe)
    if args.json:
        _out(json.dumps(plan_contract(plan), indent=2))
        return EXIT_OK
    _out(format_plan_text(recipe, plan))
    actions.write_summary(format_plan_markdown(recipe, plan))
    return EXIT_OK


def cmd_lock(args: argparse.Namespace) -> int:
    from publisher.parents import lock_parents, write_lock
    from publisher.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    parents = lock_parents(recipe)
    path = write_lock(recipe, parents)
    for parent in parents:
        state = parent.revision if parent.resolved else f"UNRESOLVED ({parent.note})"
        _out(f"  {parent.ref}: {state}")
    _out(f"wrote {path}")
    unresolved = [p.ref for p in parents if not p.resolved]
    if unresolved:
        _err(
            "warning: unresolved parents are not pinned: "
            + ", ".join(unresolved)
            + "; run 'publisher lock' where the Hub is reachable before publishing"
        )
    return EXIT_OK


def cmd_card(args: argparse.Namespace) -> int:
    from publisher.card import CardInputs, operator_notes, write_card

    recipe, plan = _load_plan(args.recipe)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    templates = Path(args.templates) if args.templates else None
    inputs = CardInputs(recipe=recipe, plan=plan)
    path = write_card(inputs, out, templates_dir=templates)
    _out(f"wrote {path} and {path.parent / 'schedule.png'}")
    notes = operator_notes(inputs)
    for note in notes:
        _out(f"note: {note}")
    # What the operator must do goes to the job summary, above the card, never onto the card.
    if notes:
        actions.write_summary(
            "**Before publishing:**\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
        )
    actions.write_card_summary(path.read_text(encoding="utf-8"))
    return EXIT_OK


def cmd_tiny(args: argparse.Namespace) -> int:
    from publisher.tiny import build_demo_parents

    base, other = build_demo_parents(Path(args.out))
    _out(f"tiny parents: {base} and {other}")
    return EXIT_OK


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def _shard_size(text: str) -> str:
    from publisher.merge import MergeError, parse_shard_size

    try:
        parse_shard_size(text)
    except MergeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1024:
        raise argparse.ArgumentTypeError(f"'{text}' is not a count from 1 to 1024")
    return int(text)


@contextmanager
def _summary_of(run_dir: Path) -> Iterator[None]:
    """However the run ends, its stage table goes to the Actions job summary."""
    try:
        yield
    finally:
        manifest = run_dir / "manifest.json"
        if manifest.exists():
            from publisher.manifest import stage_table

            actions.write_summary(stage_table(manifest))


def cmd_run(args: argparse.Namespace) -> int:
    from publisher.pipeline import default_run_dir, run_pipeline
    from publisher.recipe import load_recipe
    from publisher.settings import MERGE_FLAGS, resolve_settings

    if args.launch is not None:
        return _launch_on_jobs(args)
    recipe = load_recipe(args.recipe)
    run_dir = Path(args.out) if args.out else default_run_dir(recipe)
    if run_dir.exists() and not run_dir.is_dir():
        raise CommandError(f"--out {run_dir} is a file; give a directory for the run")
    given = _overrides(
        args, merge={n: v for n in MERGE_FLAGS if (v := getattr(args, n)) is not None}
    )
    settings = resolve_settings(recipe, given)
    if args.on == "hf-jobs":
        return _run_on_jobs(args, recipe, run_dir, given)
    with _summary_of(run_dir):
        if "push" in settings.stages and set(settings.stages) != {"push"}:
            settings = _build_apart(recipe, run_dir, settings)
        run_pipeline(recipe, run_dir, settings, log=actions.ActionsReporter(_out))
    _report_run(run_dir)
    return EXIT_OK


def _build_apart(recipe, run_dir: Path, settings):
    """A run that pushes, of a recipe that controls code: build in a child process without the
    Hub token (`publisher.isolation`); what is left for this process is the push."""
    from publisher.isolation import build_in_child, recipe_code

    code = recipe_code(recipe, settings)
    if not code:
        return settings
    _out(
        f"the recipe controls code ({'; '.join(code)}): building in a process without the Hub "
        "token, then pushing from this one"
    )
    build_in_child(recipe.path, run_dir, settings)
    return settings.model_copy(update={"stages": ("push",)})


def _job_options(args: argparse.Namespace):
    from publisher.jobs import JobOptions, JobsError

    if args.stages is not None or args.force:
        raise JobsError("--on hf-jobs runs every stage in a fresh job: drop --stages and --force")
    return JobOptions(
        flavor=args.flavor,
        timeout=args.timeout,
        push_flavor=args.push_flavor,
        image=args.image,
    )


def _run_on_jobs(args: argparse.Namespace, recipe, run_dir: Path, given) -> int:
    from publisher.jobbundle import prepare_launch
    from publisher.jobs import run_on_jobs

    job = _job_options(args)
    if args.prepare is not None:
        # The build side of a workflow: plan here, list what the jobs need; no token needed.
        launch, _ = prepare_launch(
            recipe, run_dir, replace(given, stages=None), log=actions.ActionsReporter(_out)
        )
        _out(f"launch file: {launch.write(Path(args.prepare))}")
        return EXIT_OK
    with _summary_of(run_dir):
        run_on_jobs(
            recipe,
            run_dir,
            replace(given, stages=None),
            job,
            log=actions.ActionsReporter(_out),
        )
    _report_run(run_dir)
    return EXIT_OK


def _launch_on_jobs(args: argparse.Namespace) -> int:
    """`--on hf-jobs --launch FILE`: start the jobs a `--prepare` run listed. What the job that
    holds the token runs: it neither loads the recipe nor plans (see `publisher.jobbundle.Launch`)."""
    from publisher.jobs import launch_jobs

    if args.on != "hf-jobs" or args.out is None:
        raise CommandError("--launch needs --on hf-jobs and --out RUN_DIR")
    run_dir = Path(args.out)
    with _summary_of(run_dir):
        launch_jobs(
            Path(args.launch),
            args.recipe,
            run_dir,
            _overrides(args, merge={}),
            _job_options(args),
            log=actions.ActionsReporter(_out),
        )
    _report_run(run_dir)
    return EXIT_OK


def _overrides(args: argparse.Namespace, **extra):
    """The flags as given (`None` where not given): `publisher.settings` weighs them."""
    from publisher.settings import Overrides

    names = [f for f in Overrides.__dataclass_fields__ if f not in extra]
    renamed = {"templates_dir": "templates"}
    return Overrides(
        **{n: getattr(args, renamed.get(n, n)) for n in names if hasattr(args, renamed.get(n, n))},
        **extra,
    )


def _report_run(run_dir: Path) -> None:
    card = run_dir / "README.md"
    _out(f"run directory: {run_dir.resolve()}")
    if card.exists():
        _out(f"model card:    {card.resolve()}")
        actions.write_card_summary(card.read_text(encoding="utf-8"))
    manifest = run_dir / "manifest.json"
    push = json.loads(manifest.read_text()).get("push") if manifest.exists() else None
    if push:
        _report_push(push)


def _report_push(push: dict) -> None:
    _out(
        f"published:     {push['repo_url']} @ {push['commit_sha'][:12]}"
        + ("" if push["changed"] else " (unchanged, no new commit)")
    )
    if push.get("pr_url"):
        _out(f"pull request:  {push['pr_url']}")
    actions.set_output("repo_url", push["repo_url"])
    actions.set_output("commit_sha", push["commit_sha"])
    actions.set_output("pr_url", push.get("pr_url") or "")
    actions.write_summary(
        f"Published to [{push['repo_id']}]({push['repo_url']}) at "
        f"`{push['commit_sha']}`"
        + (f", pull request {push['pr_url']}" if push.get("pr_url") else "")
    )


def cmd_push(args: argparse.Namespace) -> int:
    from publisher.hub import check_push, push_run
    from publisher.settings import push_target

    run_dir = Path(args.run_dir)
    if args.check:
        files = check_push(run_dir)
        _out(f"ready to push: {len(files)} files, all on the allow-list, no secrets found")
        return EXIT_OK
    target = push_target(run_dir / "manifest.json", _overrides(args))
    result = push_run(run_dir, **target.model_dump(), log=actions.ActionsReporter(_out))
    _report_push(result.as_dict())
    return EXIT_OK


def _add_common(parser: argparse.ArgumentParser, top: bool = False) -> None:
    # A subcommand's default must not overwrite `publisher --debug COMMAND`'s True: argparse
    # applies the subparser's defaults after the top level's, so only the top level has one.
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="show tracebacks for failures",
    )


def _add_jobs_flags(p: argparse.ArgumentParser) -> None:
    from publisher import jobs

    p.add_argument(
        "--on",
        choices=jobs.RUNS_ON,
        default="local",
        help="where the GPU stages run: here, or as Hugging Face Jobs (billed to the account)",
    )
    p.add_argument(
        "--flavor",
        default=jobs.DEFAULT_FLAVOR,
        help=f"hf-jobs: hardware of the build job (default: {jobs.DEFAULT_FLAVOR})",
    )
    p.add_argument(
        "--timeout",
        default=jobs.DEFAULT_TIMEOUT,
        help=f"hf-jobs: the build job's limit, e.g. 90m, 4h (default: {jobs.DEFAULT_TIMEOUT})",
    )
    p.add_argument(
        "--push-flavor",
        default=jobs.DEFAULT_PUSH_FLAVOR,
        help=f"hf-jobs: hardware of the verify-and-push job (default: {jobs.DEFAULT_PUSH_FLAVOR})",
    )
    p.add_argument("--image", default=jobs.DEFAULT_IMAGE, help="hf-jobs: the container image")


def _add_push_target_flags(p: argparse.ArgumentParser, default: str) -> None:
    """Where and how a push goes (`settings.HubTarget`), for `run` and `push` alike: `None`
    where not given, so that `publisher.settings` weighs them against `default`."""
    p.add_argument("--repo-id", help=f"Hub repo to push to (default: {default})")
    p.add_argument(
        "--create-pr",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"push as a Hub pull request, or not (default: {default})",
    )
    p.add_argument(
        "--private",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"create the repo private, or not; an existing repo keeps its visibility "
        f"(default: {default})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="publisher",
        description="Turn a mergekit SLERP recipe into a published Hugging Face model.",
    )
    parser.add_argument("--version", action="version", version=f"publisher {__version__}")
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "validate", help="check recipes; FILE:LINE:COL messages, exit 1 if any is invalid"
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument(
        "--markdown",
        metavar="FILE",
        help="also write the problems there as a Markdown block (the PR preview comment's)",
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "plan", help="the layer-wise t of every output tensor, from mergekit's planner"
    )
    p.add_argument("recipe")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "lock", help="pin each parent's commit SHA and config.json next to the recipe"
    )
    p.add_argument("recipe")
    p.set_defaults(func=cmd_lock)

    p = sub.add_parser(
        "card", help="render the preview model card (and schedule image) from the plan"
    )
    p.add_argument("recipe")
    p.add_argument("--out", required=True, help="directory for README.md and schedule.png")
    p.add_argument("--templates", help="templates directory to use instead of templates/")
    p.set_defaults(func=cmd_card)

    p = sub.add_parser("tiny", help="build the two tiny demo parents")
    p.add_argument("--out", default="build/demo-parents")
    p.set_defaults(func=cmd_tiny)

    p = sub.add_parser("run", help="plan, merge, smoke-test, evaluate, card, verify (and push)")
    p.add_argument("recipe")
    p.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    p.add_argument(
        "--device",
        choices=DEVICES,
        help="where smoke and eval run, and the merge (default: cpu; the merge follows "
        "publish.merge.cuda)",
    )
    p.add_argument(
        "--stages",
        help="comma-separated stages to run, e.g. smoke,eval "
        "(default: plan,merge,weights,smoke,eval,card,verify)",
    )
    p.add_argument("--force", action="store_true", help="redo stages whose inputs are unchanged")
    push_flags = p.add_mutually_exclusive_group()
    push_flags.add_argument(
        "--push", action="store_const", const=True, help="push to the Hub after verify passed"
    )
    push_flags.add_argument(
        "--no-push",
        dest="push",
        action="store_const",
        const=False,
        help="do not push even if the recipe sets publish.push",
    )
    _add_push_target_flags(p, "the recipe's publish block")
    for flag, what in (
        ("--lazy-unpickle", "mergekit's lazy unpickler (low memory for .bin parents)"),
        ("--low-cpu-memory", "keep merge results on the GPU (VRAM > RAM)"),
        ("--async-write", "write output shards on background threads"),
    ):
        p.add_argument(
            flag,
            action=argparse.BooleanOptionalAction,
            default=None,
            help=f"{what} (default: the recipe's publish.merge, else auto-tuned)",
        )
    p.add_argument(
        "--out-shard-size",
        type=_shard_size,
        help="bytes per output shard, e.g. 2B or 500M (default: the recipe's, else auto-tuned)",
    )
    for flag, what in (
        ("--write-threads", "threads writing shards with --async-write"),
        ("--num-threads", "torch CPU threads for the merge"),
    ):
        p.add_argument(flag, type=_count, help=f"{what} (default: the recipe's, else auto-tuned)")
    p.add_argument(
        "--parent-reads",
        choices=("mmap", "pread"),
        help="read safetensors parents memory-mapped, or copied tensor by tensor with pread "
        "(default: the recipe's, else auto-tuned)",
    )
    p.add_argument("--eval-suite", choices=SUITES, help="overrides the recipe's eval suite")
    p.add_argument(
        "--eval-limit",
        type=_positive_number,
        help="samples per task (a partial run; below 1: a fraction of each task)",
    )
    p.add_argument("--eval-backend", choices=EVAL_BACKENDS, help="lm-eval backend (vllm: GPU)")
    p.add_argument(
        "--parent-eval",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="evaluate both parents the same way, for the card's comparison "
        "(default: the recipe's publish.eval.parents, true)",
    )
    p.add_argument("--templates", help="card templates directory")
    _add_jobs_flags(p)
    hand_off = p.add_mutually_exclusive_group()
    hand_off.add_argument(
        "--prepare",
        metavar="DIR",
        help="hf-jobs, in two steps: validate, plan and write DIR/launch.json (no token needed)",
    )
    hand_off.add_argument(
        "--launch",
        metavar="FILE",
        help="hf-jobs, in two steps: start the jobs a --prepare run listed in FILE, from this "
        "checkout, without loading the recipe (needs only requirements/publish.lock)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("push", help="publish a verified run directory in one commit")
    p.add_argument("run_dir")
    _add_push_target_flags(p, "what the run recorded")
    p.add_argument("--revision", help="branch to commit to (default: main)")
    p.add_argument(
        "--check",
        action="store_true",
        help="only the checks before any Hub call (allow-list, secrets, verify); no upload",
    )
    p.set_defaults(func=cmd_push)

    nested = cli_hub.add_commands(sub)
    cli_actions.add_commands(sub)
    for sp in [*sub.choices.values(), *nested]:
        _add_common(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or bool(os.environ.get("PUBLISHER_DEBUG"))
    if not debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        with actions.masked_secrets():
            return int(args.func(args) or 0)
    except PublisherError as exc:
        if debug:
            raise
        from publisher.recipe import RecipeError

        if isinstance(exc, RecipeError):
            for problem in exc.problems:
                _err(str(problem))
                actions.annotate_problem(problem)
        else:
            _err(f"error: {exc}")
            for problem in exc.problems:
                actions.annotate_problem(problem, title="publisher")
            if not exc.problems:
                actions.annotate_error(str(exc))
        return EXIT_FAIL
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except Exception as exc:  # the last line of defence: a plain message, never a traceback
        if debug:
            raise
        _err(f"error: unexpected {type(exc).__name__}: {exc} (re-run with --debug for details)")
        actions.annotate_error(f"unexpected {type(exc).__name__}: {exc}")
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
