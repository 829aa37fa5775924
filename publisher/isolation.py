"""`publisher run --push` where the recipe controls code: the build runs in a child process that
holds no Hub token; this process only pushes what the build left, as data.

A recipe controls code when it names card templates (`publish.templates`, `--templates`),
custom lm-eval tasks (`eval.include_paths`, task YAML files: prompt templates, and Python with
`allow_code`), a chat template, or lets parents run their own code (`trust_remote_code`). All of
it runs in the build stages (plan → verify). When the same invocation also pushes, those stages
run in a child process (`python -m publisher.isolation`) whose environment holds no Hub token
and no other secret (`publisher.upload.environment_secrets`), and where huggingface_hub finds
no stored token either. `HF_READ_TOKEN`, when set, becomes the child's `HF_TOKEN` (gated or
private parents), as in the publish workflow's build job. The parent then runs the push stage,
whose allow-list and secret scan treat the run directory as data.

A token saved by `hf auth login` is a file any process of the same user can open; the child is
not pointed at it, but code that goes looking can read it. For a recipe you did not write, run
where no write token is saved (see docs/actions.md: the publish workflow's build job).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from publisher.errors import PublisherError

# Where the child's huggingface_hub looks for a saved token: nowhere.
NO_TOKEN_FILE = os.devnull
READ_TOKEN_VAR = "HF_READ_TOKEN"
# Never secrets by name, but they pick the Hub credential: the child has no business with them.
CREDENTIAL_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_OIDC_ID_TOKEN")


class IsolatedBuildError(PublisherError):
    """The build in the child process failed; it printed why. Nothing was pushed."""


def recipe_code(recipe: Any, settings: Any) -> list[str]:
    """What the recipe (with the command line's settings) makes the build run or render, in
    words; empty when it runs only publisher's own templates and lm-eval's own tasks."""
    from publisher.recipe_paths import TASK_SUFFIXES

    found = []
    if settings.templates_dir is not None:
        found.append(f"card templates ({settings.templates_dir})")
    found += [f"lm-eval tasks ({p})" for p in settings.eval.include_paths]
    found += [
        f"an lm-eval task file ({t})" for t in settings.eval.tasks if t.endswith(TASK_SUFFIXES)
    ]
    if recipe.publish.chat_template is not None:
        found.append("a chat template (publish.chat_template)")
    if recipe.publish.trust_remote_code:
        found.append("parents' own code (trust_remote_code)")
    return found


def child_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """`environ` without any secret or Hub credential, with no saved token to find; the read
    token, if any, as `HF_TOKEN`."""
    from publisher.upload import is_secret_name

    environ = dict(os.environ if environ is None else environ)
    read_token = environ.get(READ_TOKEN_VAR, "").strip()
    env = {
        name: value
        for name, value in environ.items()
        if name not in CREDENTIAL_VARS and not is_secret_name(name)
    }
    env["HF_TOKEN_PATH"] = NO_TOKEN_FILE
    env["HF_STORED_TOKENS_PATH"] = NO_TOKEN_FILE
    if read_token:
        env["HF_TOKEN"] = read_token
    return env


def run_without_token(args: list[str], stdin: str | None = None) -> int:
    """`python ARGS` in a child process whose environment holds no credential
    (`child_environment`); its exit code. Its output goes where this process's goes."""
    sys.stdout.flush()
    done = subprocess.run(
        [sys.executable, *args], input=stdin, text=True, env=child_environment(), check=False
    )
    return done.returncode


def build_in_child(recipe_path: Path, run_dir: Path, settings: Any) -> None:
    """Run `settings`' stages except push in a child process without the token; raise
    `IsolatedBuildError` when it fails."""
    stages = tuple(s for s in settings.stages if s != "push")
    job = {
        "recipe": str(recipe_path),
        "run_dir": str(run_dir),
        "settings": settings.model_copy(update={"stages": stages, "push": False}).model_dump(
            mode="json"
        ),
    }
    if run_without_token(["-m", "publisher.isolation"], stdin=json.dumps(job)) != 0:
        raise IsolatedBuildError(
            f"the build ({', '.join(stages)}) failed in its process without the Hub token "
            "(see above); nothing was pushed"
        )


def main() -> int:
    """The child: the job from stdin, the stages it names, progress on stdout (plain lines: the
    shells' Actions reporter stays in the parent, which holds nothing to mask here anyway)."""
    from publisher.pipeline import run_pipeline
    from publisher.recipe import load_recipe
    from publisher.recipe_yaml import printable
    from publisher.settings import Settings

    job = json.loads(sys.stdin.read())
    try:
        recipe = load_recipe(job["recipe"])
        settings = Settings.model_validate(job["settings"])
        run_pipeline(recipe, Path(job["run_dir"]), settings, log=print)
    except PublisherError as exc:
        print(f"error: {printable(str(exc))}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
