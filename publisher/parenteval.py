"""The parents, evaluated like the merge, so the card can say whether the merge beat them.

Each parent runs through `evaluate.run_eval` on the same tasks, shots, limit, dtype, backend and
lm-eval version as the merge. A parent shared by many recipes is evaluated once: its results are
cached in `$PUBLISHER_CACHE_DIR/parent-evals/` (default `~/.cache/publisher`, which the
workflows restore from the Actions cache), keyed by everything that changes them (`cache_key`).
The run keeps a copy per parent in `eval/parents/`, which verify checks the card against and
the push publishes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from publisher.digests import cache_file, sha256_file
from publisher.evaluate import run_eval, task_plan
from publisher.parents import ParentInfo
from publisher.recipe import EvalSettings
from publisher.report import Log
from publisher.rundir import RunDir

CACHE_FOLDER = "parent-evals"


@dataclass
class ParentEval:
    """How one parent's results were obtained.

    Attributes:
        ref: the parent as the recipe names it, e.g. `"publisher-demo/tiny-base"`.
        path: its results in the run directory, e.g. `RUN/eval/parents/publisher-demo--tiny-base.json`.
        cached: whether the results came from the cache (no evaluation ran).
        seconds: time spent here, e.g. 0.01 when cached, 12.3 when evaluated.
        key: the cache key, 64 hex digits.
    """

    ref: str
    path: Path
    cached: bool
    seconds: float
    key: str

    def as_dict(self) -> dict[str, Any]:
        return {"cached": self.cached, "seconds": round(self.seconds, 3), "key": self.key}


def cache_dir() -> Path:
    """Where parent results are cached (beside the file-digest cache)."""
    return cache_file().parent / CACHE_FOLDER


def cache_key(
    parent: ParentInfo, settings: EvalSettings, device: str, lm_eval_version: str
) -> tuple[str, dict[str, Any]]:
    """The cache key of a parent's results and what it is made of: the parent (repo id and
    commit SHA, or a local directory's content sha256), the tasks with their shots, the limit,
    the dtype, backend, chat-template use, task directories' contents and lm-eval's version."""
    names, shots = task_plan(settings)
    parts = {
        "parent": parent.ref.partition("@")[0] if parent.source == "hub" else "local",
        "revision": parent.revision,
        "tasks": names,
        "shots": shots or settings.num_fewshot,
        "limit": settings.limit,
        "dtype": settings.dtype,
        "backend": settings.backend,
        "apply_chat_template": settings.apply_chat_template,
        "device": device.split(":")[0],
        "lm_eval": lm_eval_version,
        "task_dirs": [_tree_digest(Path(p)) for p in settings.include_paths],
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return digest, parts


def _tree_digest(folder: Path) -> str:
    # A custom task's YAML or data changing changes the results.
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []:
        digest.update(f"{file.relative_to(folder)}\0{sha256_file(file)}\0".encode())
    return digest.hexdigest()


def evaluate_parents(
    parents: list[ParentInfo],
    parent_dirs: dict[str, Path],
    settings: EvalSettings,
    run: RunDir,
    device: str = "cpu",
    parallel: Any = None,
    log: Log = print,
) -> list[ParentEval]:
    """Evaluate each parent (or take its cached results) into `run.parent_eval(ref)`, on the
    GPUs the way the merge was (`parallel`, a `publisher.parallel` choice)."""
    import lm_eval

    folder = run.eval_dir / "parents"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    done = []
    for parent in parents:
        started = time.monotonic()
        key, parts = cache_key(parent, settings, device, lm_eval.__version__)
        cached = cache_dir() / f"{key}.json"
        target = run.parent_eval(parent.ref)
        hit = cached.is_file()
        if not hit:
            work = folder / f".work-{target.stem}"
            run_eval(
                parent_dirs[parent.ref],
                settings,
                work,
                device=device,
                dtype=settings.dtype,
                backend=settings.backend,
                parallel=parallel,
                model_name=target.stem,
            )
            _store(work / "results.json", cached)
            shutil.rmtree(work, ignore_errors=True)
        shutil.copyfile(cached, target)
        seconds = time.monotonic() - started
        how = "cached results reused" if hit else "evaluated and cached"
        log(f"  parent {parent.ref}: {how} in {seconds:.1f}s (key {key[:12]})")
        done.append(ParentEval(parent.ref, target, hit, seconds, key))
    return done


def _store(results: Path, cached: Path) -> None:
    # Written whole, then renamed: a run killed mid-write never leaves a half file to reuse.
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(".partial")
    shutil.copyfile(results, partial)
    partial.replace(cached)


__all__ = ["ParentEval", "cache_dir", "cache_key", "evaluate_parents"]
