"""Child processes of the merge benchmarks (not a benchmark itself).

python bench/_child.py build-parents ROOT SPEC_JSON [--dtype bfloat16]
    Build two synthetic Mistral parents, ROOT/base (seed 1) and ROOT/other (seed 2), with
    `publisher.tiny.build_tiny_parent` (float32), converted to `--dtype` when given.

python bench/_child.py pipeline-merge RECIPE OUT_DIR [--report FILE] [--no-resolve]
    What `publisher run --stages merge` does for local parents: load the recipe, resolve the
    parents (content-hashing their weights), and run `publisher.merge.run_merge_stage` with the
    recipe's merge settings. With --no-resolve the parents are handed over without hashing,
    so only `run_merge_stage` itself is measured. --report writes phase timings as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

_START = time.perf_counter()


def build_parents(root: Path, spec_json: str, dtype: str = "float32") -> None:
    from publisher.tiny import TinyModelSpec, build_tiny_parent

    spec = TinyModelSpec(**json.loads(spec_json))
    for seed, name in ((1, "base"), (2, "other")):
        build_tiny_parent(root / name, seed=seed, spec=spec)
        if dtype != "float32":
            convert_weights(root / name, dtype)


def convert_weights(model_dir: Path, dtype: str) -> None:
    """Rewrite a model directory's safetensors (and config) in `dtype`, one file at a time."""
    import torch
    from safetensors.torch import load_file, save_file

    torch_dtype = getattr(torch, dtype)
    total = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        tensors = {k: v.to(torch_dtype) for k, v in load_file(path).items()}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, path, metadata={"format": "pt"})
        del tensors
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data.setdefault("metadata", {})["total_size"] = total
        index.write_text(json.dumps(data, indent=2))
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = dtype
    config_path.write_text(json.dumps(config, indent=2))


def pipeline_merge(recipe_path: Path, out_dir: Path, report: Path | None, resolve: bool) -> None:
    phases: dict[str, float] = {}
    mark = _START

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = now - mark
        mark = now

    import mergekit.merge  # noqa: F401  (imported by run_merge_stage; timed here as import)

    from publisher.merge import merge_request_for, run_merge_stage
    from publisher.parents import ParentInfo, resolve_parents
    from publisher.recipe import load_recipe

    lap("import")
    recipe = load_recipe(recipe_path)
    lap("load_recipe")
    if resolve:
        parents = resolve_parents(recipe)
    else:
        base = recipe.base_model
        parents = [
            ParentInfo(
                ref=ref,
                source="local",
                revision=None,
                resolved=True,
                config=json.loads((Path(ref) / "config.json").read_text()),
                is_base=ref == base,
                path=ref,
            )
            for ref in recipe.model_refs()
        ]
    # For local parents the pipeline's fetch_parents is exactly this mapping.
    local_dirs = {p.ref: Path(p.path) for p in parents if p.path}
    lap("resolve_parents")
    run_merge_stage(recipe, parents, local_dirs, out_dir, merge_request_for(recipe))
    lap("run_merge_stage")
    phases["total_in_process"] = time.perf_counter() - _START
    if report is not None:
        report.write_text(json.dumps(phases, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build-parents")
    p.add_argument("root", type=Path)
    p.add_argument("spec_json")
    p.add_argument("--dtype", default="float32")
    p = sub.add_parser("pipeline-merge")
    p.add_argument("recipe", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--report", type=Path)
    p.add_argument("--no-resolve", action="store_true")
    args = parser.parse_args()
    if args.command == "build-parents":
        build_parents(args.root, args.spec_json, args.dtype)
    else:
        pipeline_merge(args.recipe, args.out_dir, args.report, resolve=not args.no_resolve)


if __name__ == "__main__":
    main()
