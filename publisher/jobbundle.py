"""What the Hugging Face Jobs need from this checkout, and how it travels (`publisher.jobs`).

Where the recipe may be loaded (no token), `prepare_launch` plans and lists the files as a
`Launch`; where the token is, `make_bundle` copies exactly those files from the checkout,
refusing any that leaves it, and `check_hub_parents` holds the launch file's Hub parents to the
lock. The launch file is data: nothing here runs or renders what a recipe controls.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import publisher
from publisher.errors import PublisherError
from publisher.manifest import hash_inputs
from publisher.pipeline import run_pipeline
from publisher.recipe import Recipe
from publisher.report import Log
from publisher.settings import Overrides, resolve_settings


class JobsError(PublisherError):
    """`--on hf-jobs` could not run or finish; the message says what to do."""


@dataclass(frozen=True)
class Bundle:
    """A directory to upload, and where things are inside it (POSIX paths)."""

    root: Path
    recipe: str
    src: str
    templates: str | None
    digest: str


LAUNCH_FILE = "launch.json"


@dataclass(frozen=True)
class Launch:
    """What travels from the build side to the launcher: which files of the checkout the jobs
    need and two facts about the recipe (POSIX paths relative to `root`, the common directory
    of those files, which is the checkout in a workflow).

    It is data. The launcher (`publisher run --on hf-jobs --launch FILE`, in the workflow job
    that holds the token and has only the hash-pinned lock installed) neither loads the recipe
    nor plans: it copies these files from its own checkout, refusing any that leaves it, and its
    own flags decide where and whether to push.

    Attributes:
        recipe: the recipe, e.g. `"recipes/tiny.yaml"`.
        paths: every file and directory to bundle (the package, the templates, the recipe, its
            lock, its templates, tasks and chat template, local parents).
        src: the directory holding the `publisher` package, `"."` when `root` is the checkout.
        templates: the card templates directory the build used, or None for the defaults.
        push: the recipe's `publish.push` with the flags applied.
        extra: an extra for the jobs to install (`"vllm"` for that eval backend), or None.
        hub_parents: the Hub parents the lock pins, `{ref: revision}`: mounted into both jobs
            (the launcher checks them against the lock file in its checkout).
    """

    recipe: str
    paths: list[str]
    src: str
    templates: str | None = None
    push: bool = False
    extra: str | None = None
    hub_parents: dict[str, str] = field(default_factory=dict)

    def write(self, folder: Path) -> Path:
        import json

        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LAUNCH_FILE
        path.write_text(json.dumps(asdict(self), indent=1, sort_keys=True), encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: Path) -> Launch:
        import json

        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            launch = cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise JobsError(f"cannot read the launch file {path}: {exc}") from None
        if launch.extra not in (None, "vllm"):
            raise JobsError(f"{path}: unknown extra {launch.extra!r}")
        return launch


def prepare_launch(
    recipe: Recipe, run_dir: Path, given: Overrides, log: Log = print
) -> tuple[Launch, Path]:
    """Validate the settings, plan locally (the record starts in `run_dir`) and list what the
    jobs need: the `Launch` and the directory its paths are relative to."""
    from publisher.card import DEFAULT_TEMPLATES_DIR
    from publisher.parents import resolve_parents
    from publisher.recipe_paths import TASK_SUFFIXES, is_chat_template_path

    settings = resolve_settings(recipe, given)  # a bad flag fails here, before any job
    plan_only = resolve_settings(recipe, replace(given, stages="plan", push=False))
    run_pipeline(recipe, run_dir, plan_only, log=log)
    package = Path(publisher.__file__).resolve().parent
    checkout = package.parent
    templates = settings.templates_dir
    here = recipe.path.parent
    paths = [package, DEFAULT_TEMPLATES_DIR, recipe.path]
    paths += [p for p in (checkout / "pyproject.toml", recipe.lock_path) if p.exists()]
    paths += [Path(templates)] if templates else []
    paths += [Path(p) for p in settings.eval.include_paths]
    paths += [Path(t) for t in settings.eval.tasks if t.endswith(TASK_SUFFIXES)]
    chat = recipe.publish.chat_template
    if chat is not None and is_chat_template_path(chat):
        paths.append(here / chat)
    for parent in resolve_parents(recipe):
        if parent.source == "local":
            if Path(parent.ref).expanduser().is_absolute():
                raise JobsError(
                    f"parent {parent.ref!r} is an absolute path, which cannot travel into a job: "
                    "give it relative to the recipe, or publish it to the Hub and lock it"
                )
            paths.append(Path(parent.path))
    paths = [p.resolve() for p in paths]
    root = Path(os.path.commonpath([str(p) for p in paths]))
    root = root if root.is_dir() else root.parent

    def rel(path: Path) -> str:
        return path.resolve().relative_to(root).as_posix() or "."

    launch = Launch(
        recipe=rel(recipe.path),
        paths=sorted({rel(p) for p in paths}),
        src=rel(checkout),
        templates=rel(Path(templates)) if given.templates_dir else None,
        push=settings.push,
        extra="vllm" if settings.eval.backend == "vllm" else None,
        hub_parents=locked_hub_parents(recipe),
    )
    return launch, root


def make_bundle(launch: Launch, root: Path, dest: Path) -> Bundle:
    """Copy `launch.paths` from `root` into `dest`, keeping their layout. A path that leaves
    `root` (absolute, `..`, a link out) is refused: the launch file is data."""
    from publisher.recipe_paths import check_tree, outside

    for given in launch.paths:
        path = root / given
        if Path(given).is_absolute() or outside(path, root):
            raise JobsError(f"launch file: {given!r} is refused: it leaves {root}")
        if not path.exists():
            raise JobsError(f"launch file: {given!r} is not in {root}")
        target = dest / given
        if path.is_dir():
            check_tree(path, root)
            shutil.copytree(
                path, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    return Bundle(
        root=dest,
        recipe=launch.recipe,
        src=launch.src,
        templates=launch.templates,
        digest=hash_inputs(dest)[:16],
    )


def locked_hub_parents(recipe: Recipe) -> dict[str, str]:
    """The recipe's Hub parents that the lock pins: `{ref: revision}`."""
    from publisher.parents import resolve_parents

    return {p.ref: p.revision for p in resolve_parents(recipe) if p.source == "hub" and p.revision}


def check_hub_parents(launch: Launch, root: Path) -> None:
    """The launch file's Hub parents must be what the recipe's lock file in `root` pins: the
    token mounts them into the build job, so the launch file cannot name other repos."""
    import json

    from publisher.recipe_paths import lock_path_for

    lock_path = lock_path_for(root / launch.recipe)
    try:
        locked = json.loads(lock_path.read_text(encoding="utf-8")).get("parents") or {}
    except (OSError, ValueError):
        locked = {}
    for ref, revision in launch.hub_parents.items():
        entry = locked.get(ref) or {}
        if entry.get("source") != "hub" or entry.get("revision") != revision:
            raise JobsError(
                f"launch file: Hub parent {ref}@{revision} is not what {lock_path.name} pins"
            )
