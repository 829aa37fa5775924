"""`make demo`: the main job, end to end, on this machine, with no network and no GPU.

1. builds the two tiny parents (`build/demo-parents`): a random-weight base and a near copy of
   it (a few fine-tuning steps), as the parents of real merges are;
2. starts the local Hub-compatible server (`publisher.hubserver`) and publishes the parents to it
   as Hub repos;
3. writes the demo recipe with the parents referenced by Hub ID, locks them to their commit SHAs;
4. runs the pipeline (plan, merge, smoke, eval, card, verify) and pushes the result to the server;
5. prints where the run directory, the card and the model page are, and stops the server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_RECIPE = REPO_ROOT / "recipes" / "tiny-demo-slerp.yaml"
DEMO_NAMESPACE = "publisher-demo"
# The local server accepts this token only; it is not a Hub credential.
DEMO_TOKEN = "publisher-demo-local-token"


def hub_recipe_text(text: str, parent_dirs: dict[str, str]) -> str:
    """The demo recipe with its local parent paths replaced by Hub repo ids."""
    for path, repo_id in parent_dirs.items():
        text = text.replace(path, repo_id)
    return text


def publish_parents(parents: list[Path], log: Callable[[str], None]) -> list[str]:
    """Upload the tiny parents to the current Hub endpoint (once: kept across demo runs)."""
    from huggingface_hub import HfApi

    api = HfApi()
    repo_ids = []
    for path in parents:
        repo_id = f"{DEMO_NAMESPACE}/{path.name}"
        if not api.repo_exists(repo_id):
            api.create_repo(repo_id)
            api.upload_folder(
                folder_path=str(path), repo_id=repo_id, commit_message=f"tiny parent {path.name}"
            )
            log(f"  published parent {repo_id}")
        else:
            log(f"  parent {repo_id} already on the local Hub")
        repo_ids.append(repo_id)
    return repo_ids


def run_demo(out: Path, log: Callable[[str], None] = print, on: str = "local") -> int:
    """The demo; `on="hf-jobs"` runs the stages as Jobs of the local Hub (`publisher.jobs`)."""
    from publisher.hubserver import LocalHub, hub_client_env
    from publisher.parents import lock_parents, write_lock
    from publisher.pipeline import run_pipeline
    from publisher.recipe import load_recipe
    from publisher.settings import Overrides, resolve_settings
    from publisher.tiny import build_demo_parents

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log("building the tiny parents ...")
    base, other = build_demo_parents(REPO_ROOT / "build" / "demo-parents")
    with (
        LocalHub(out / "hub-data", token=DEMO_TOKEN, user=DEMO_NAMESPACE) as hub,
        hub_client_env(hub.endpoint, token=DEMO_TOKEN, hf_home=out / "hf-home"),
    ):
        log(f"local Hub serving at {hub.endpoint}")
        base_id, other_id = publish_parents([base, other], log)
        recipe_path = out / "recipes" / DEMO_RECIPE.name
        recipe_path.parent.mkdir(parents=True, exist_ok=True)
        recipe_path.write_text(
            hub_recipe_text(
                DEMO_RECIPE.read_text(encoding="utf-8"),
                {
                    "../build/demo-parents/tiny-base": base_id,
                    "../build/demo-parents/tiny-tuned": other_id,
                },
            ),
            encoding="utf-8",
        )
        recipe = load_recipe(recipe_path)
        lock = write_lock(recipe, lock_parents(recipe, online=True))
        log(f"locked the parents in {lock}")
        run_dir = out / "run"
        if on == "hf-jobs":
            from publisher.jobs import JobOptions, run_on_jobs

            jobs = JobOptions(flavor="cpu-upgrade", push_flavor="cpu-basic", timeout="30m")
            run_on_jobs(recipe, run_dir, Overrides(push=True), jobs, log=log)
        else:
            settings = resolve_settings(recipe, Overrides(push=True))
            run_pipeline(recipe, run_dir, settings, log=log)
        page = f"{hub.endpoint}/{recipe.repo_id}"
        log("")
        log(f"run directory: {run_dir}")
        log(f"model card:    {run_dir / 'README.md'}")
        log(f"model page:    {page}")
        log("")
        log("stopping the local Hub; to browse the model page again run:")
        log(f"  .venv/bin/publisher hub serve --data {out / 'hub-data'}")
        log(f"  and open http://127.0.0.1:8808/{recipe.repo_id}")
    return 0
