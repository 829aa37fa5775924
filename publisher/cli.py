"""`publisher`: the command line, a thin layer over the stage modules.

Every known failure prints one plain line (`error: ...`) and exits 1; input errors of a recipe
print `FILE:LINE:COL: message` lines. No traceback reaches the user unless `--debug` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from publisher import __version__

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """A command failed for a reason the user can act on; the message says which."""


def _known_errors() -> tuple[type[BaseException], ...]:
    from publisher.parents import ParentError
    from publisher.recipe import RecipeError
    from publisher.schedule import PlanError

    errors: list[type[BaseException]] = [CommandError, ParentError, RecipeError, PlanError]
    for module, name in (
        ("publisher.card", "CardError"),
        ("publisher.merge", "MergeError"),
        ("publisher.smoke", "SmokeError"),
        ("publisher.evaluate", "EvalError"),
        ("publisher.verify", "VerifyError"),
        ("publisher.pipeline", "StageError"),
        ("publisher.hub", "HubError"),
    ):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _out(text: str = "") -> None:
    print(text, flush=True)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# commands


def cmd_validate(args: argparse.Namespace) -> int:
    from publisher import actions
    from publisher.recipe import load_recipe

    failed = 0
    for path in args.files:
        try:
            recipe = load_recipe(path)
        except _recipe_error() as err:
            failed += 1
            for problem in err.problems:
                _err(str(problem))
                actions.annotate_problem(problem)
            continue
        _out(f"{path}: ok (SLERP of {len(recipe.model_refs())} parents -> {recipe.repo_id})")
    if failed:
        _err(f"{failed} of {len(args.files)} recipe(s) invalid")
        return EXIT_FAIL
    return EXIT_OK


def _recipe_error() -> type[Exception]:
    from publisher.recipe import RecipeError

    return RecipeError


def _load_plan(recipe_path: str):
    from publisher.parents import resolve_parents
    from publisher.recipe import load_recipe
    from publisher.schedule import build_plan

    recipe = load_recipe(recipe_path)
    parents = resolve_parents(recipe)
    return recipe, build_plan(recipe, parents)


def cmd_plan(args: argparse.Namespace) -> int:
    from publisher import actions
    from publisher.schedule import plan_contract

    recipe, plan = _load_plan(args.recipe)
    if args.json:
        _out(json.dumps(plan_contract(plan), indent=2))
        return EXIT_OK
    _out(format_plan_text(recipe, plan))
    actions.write_summary(format_plan_markdown(recipe, plan))
    return EXIT_OK


def format_plan_text(recipe, plan) -> str:
    lines = [
        f"{recipe.path}: SLERP -> {recipe.repo_id} ({plan.architecture}, {plan.num_layers} layers)"
    ]
    for parent in plan.parents:
        rev = parent.revision[:12] if parent.revision else "unresolved"
        role = "base (t=0)" if parent.is_base else "other (t=1)"
        lines.append(f"  {role:12} {parent.ref} @ {rev}")
    width = max(9, *(len(g) for g in plan.groups))
    lines.append("  layer  " + "  ".join(f"{g:>{width}}" for g in plan.groups))
    for row in plan.layers:
        cells = "  ".join(
            f"{row.groups[g]:>{width}.3f}" if g in row.groups else f"{'-':>{width}}"
            for g in plan.groups
        )
        lines.append(f"  {row.index:>5}  {cells}")
    for name, t in plan.outside.items():
        lines.append(f"  {name}: t={t:.3f}")
    return "\n".join(lines)


def format_plan_markdown(recipe, plan) -> str:
    head = "| layer | " + " | ".join(plan.groups) + " |"
    rule = "|---:|" + "---:|" * len(plan.groups)
    rows = [
        f"| {row.index} | "
        + " | ".join(f"{row.groups[g]:.3f}" if g in row.groups else "-" for g in plan.groups)
        + " |"
        for row in plan.layers
    ]
    outside = [f"| `{name}` | {t:.3f} |" for name, t in plan.outside.items()]
    return "\n".join(
        [
            f"### Plan for `{recipe.path}` → `{recipe.repo_id}`",
            "",
            head,
            rule,
            *rows,
            "",
            "| tensor outside the layer stack | t |",
            "|---|---:|",
            *outside,
            "",
        ]
    )


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
    from publisher.card import CardInputs, write_card

    recipe, plan = _load_plan(args.recipe)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    templates = Path(args.templates) if args.templates else None
    path = write_card(CardInputs(recipe=recipe, plan=plan), out, templates_dir=templates)
    _out(f"wrote {path} and {path.parent / 'schedule.png'}")
    from publisher import actions

    actions.write_summary(path.read_text(encoding="utf-8"))
    return EXIT_OK


def cmd_tiny(args: argparse.Namespace) -> int:
    from publisher.tiny import build_tiny_parents

    base, other = build_tiny_parents(Path(args.out))
    _out(f"tiny parents: {base} and {other}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from publisher import demo

    return demo.run_demo(Path(args.out))


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks for failures")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="publisher",
        description="Turn a mergekit SLERP recipe into a published Hugging Face model.",
    )
    parser.add_argument("--version", action="version", version=f"publisher {__version__}")
    _add_common(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "validate", help="check recipes; FILE:LINE:COL messages, exit 1 if any is invalid"
    )
    p.add_argument("files", nargs="+", metavar="FILE")
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
    p.add_argument("--out", default="build/tiny-parents")
    p.set_defaults(func=cmd_tiny)

    p = sub.add_parser("demo", help="the main job on the embedded demo recipe")
    p.add_argument("--out", default="build/demo")
    p.set_defaults(func=cmd_demo)

    from publisher import actions

    for extend in (*_EXTENSIONS, actions.register_commands):
        extend(sub)
    for sp in sub.choices.values():
        _add_common(sp)
    return parser


# Later stages register their subcommands here (run, push, hub, changed).
_EXTENSIONS: list[Callable[[argparse._SubParsersAction], None]] = []


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or bool(os.environ.get("PUBLISHER_DEBUG"))
    from publisher import actions

    try:
        with actions.masked_secrets():
            return int(args.func(args) or 0)
    except _known_errors() as exc:
        if debug:
            raise
        from publisher.recipe import RecipeError

        if isinstance(exc, RecipeError):
            for problem in exc.problems:
                _err(str(problem))
                actions.annotate_problem(problem)
        else:
            _err(f"error: {exc}")
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
