"""Benchmark: the weight check (verify's re-merge of every tensor) against the merge stage.

On one pair of synthetic parents (default 800M parameters each, float32, cached under
<cache-dir>/parents-<size>), the plan stage runs once, then each round runs two whole
processes, exactly what a user pays for each stage:

    merge     publisher run RECIPE --out RUN --stages merge --force     (auto-tuned options)
    weights   publisher run RECIPE --out RUN --stages weights --force   (the weight check)

`weights` is verify's weight check: every tensor re-merged with mergekit's SLERP at the planned t
and compared, plus whether t is observable; the verify stage reuses its `weights.json`. The
stage reads `plan.json` from the run directory and hashes the merged weights for the manifest,
as in any `publisher run`. Printed: wall time, CPU time and peak RSS (the child's own
`ru_maxrss`) of both, their medians, and the two ratios weights / merge; the target is <= 1 for
both (issue 9).

    .venv/bin/python bench/verify_cost.py                  # 800M, 3 rounds
    .venv/bin/python bench/verify_cost.py --size 50M --rounds 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import _benchlib as lib

PUBLISHER = lib.MERGEKIT_YAML.with_name("publisher")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time and peak RSS of the weight check against the merge stage.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--size", default="800M", help="parameters per parent")
    parser.add_argument("--rounds", type=int, default=3, help="merge + check rounds")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="the recipe's dtype (the parents are float32; mergekit casts them)",
    )
    parser.add_argument(
        "--out-shard-size",
        default="auto",
        help="the recipe's publish.merge.out_shard_size (bytes); auto: publisher tunes it",
    )
    lib.add_measurement_args(
        parser, idle_help="before each run, wait until other processes use fewer CPUs than this"
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def recipe_text(parents: lib.Parents, dtype: str, out_shard_size: str) -> str:
    text = lib.slerp_config_yaml(parents, dtype)
    text += "publish:\n  repo_id: bench/verify-cost\n  license: apache-2.0\n"
    if out_shard_size != "auto":
        text += f"  merge:\n    out_shard_size: {out_shard_size}\n"
    return text


def _row(what: str, m: lib.Measurement) -> list[str]:
    return [
        what,
        f"{m.seconds:.1f}",
        f"{m.user_seconds + m.system_seconds:.1f}",
        lib.format_bytes(m.maxrss_bytes),
        lib.format_bytes(m.sampled_anon_bytes),
        lib.format_bytes(m.sampled_file_bytes),
        f"{m.other_cpu_seconds / max(m.seconds, 1e-9):.2f}",
    ]


def _stage_seconds(run_dir: Path, stage: str) -> float:
    """The stage's own time as `manifest.json` records it (no interpreter start, no imports)."""
    return float(json.loads((run_dir / "manifest.json").read_text())["stages"][stage]["seconds"])


def main() -> int:
    args = parse_args()
    print(f"machine: {lib.machine_summary()}")
    spec = lib.spec_for_params(lib.parse_count(args.size))
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    parents = lib.ensure_parents(args.size, spec, args.cache_dir)
    print(
        f"{args.size}: {parents.params:,} params per parent, "
        f"{lib.format_bytes(parents.bytes_on_disk)} on disk; recipe dtype {args.dtype}, "
        f"out_shard_size {args.out_shard_size}; {args.rounds} round(s)\n",
        flush=True,
    )
    results: dict[str, list[lib.Measurement]] = {"merge": [], "weights": []}
    in_stage: dict[str, list[float]] = {"merge": [], "weights": []}
    rows: list[list[str]] = []
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="verify-cost-", dir=args.cache_dir) as tmp:
        work = Path(tmp)
        recipe = work / "recipe.yaml"
        recipe.write_text(recipe_text(parents, args.dtype, args.out_shard_size), encoding="utf-8")
        run_dir = work / "run"
        run = [str(PUBLISHER), "run", str(recipe), "--out", str(run_dir)]
        lib.check_ok(lib.measure([*run, "--stages", "plan"], work / "plan.log"), "the plan stage")
        for number in range(1, args.rounds + 1):
            for stage in ("merge", "weights"):
                lib.wait_for_quiet(args.idle_threshold, args.idle_wait)
                m = lib.measure(
                    [*run, "--stages", stage, "--force"],
                    work / f"{stage}.log",
                    sample_interval=args.sample_interval,
                )
                lib.check_ok(m, f"the {stage} stage")
                results[stage].append(m)
                in_stage[stage].append(_stage_seconds(run_dir, stage))
                rows.append(_row(f"{number} {stage}", m))
            report = json.loads((run_dir / "weights.json").read_text())
            merge, check = results["merge"][-1], results["weights"][-1]
            print(
                f"round {number}: merge {merge.seconds:.1f}s {lib.format_bytes(merge.maxrss_bytes)}"
                f", weights {check.seconds:.1f}s {lib.format_bytes(check.maxrss_bytes)} "
                f"({len(report['tensors'])} tensors, {report['not_observable']} with t not "
                "observable)",
                flush=True,
            )
    print()
    lib.print_table(
        ["round", "wall s", "CPU s", "peak RSS", "peak anon", "peak file", "others' CPUs"], rows
    )
    medians = {
        stage: {
            "wall": lib.median([m.seconds for m in ms]),
            "cpu": lib.median([m.user_seconds + m.system_seconds for m in ms]),
            "rss": lib.median([m.maxrss_bytes for m in ms]),
            "in_stage": lib.median(in_stage[stage]),
            "wall_min": min(m.seconds for m in ms),
            "wall_max": max(m.seconds for m in ms),
        }
        for stage, ms in results.items()
    }
    for stage, s in medians.items():
        print(
            f"median {stage:<8} {s['wall']:.1f} s wall ({s['wall_min']:.1f}-{s['wall_max']:.1f}), "
            f"{s['cpu']:.1f} s CPU, {s['in_stage']:.1f} s in the stage, "
            f"{lib.format_bytes(s['rss'])} peak RSS"
        )
    merge, check = medians["merge"], medians["weights"]
    ratios = {
        "time": check["wall"] / merge["wall"],
        "CPU": check["cpu"] / merge["cpu"],
        "in-stage time": check["in_stage"] / merge["in_stage"],
        "RSS": check["rss"] / merge["rss"],
    }
    for what, value in ratios.items():
        target = " (target <= 1: " + ("PASS" if value <= 1 else "over") + ")"
        print(f"weights / merge {what}: {value:.2f}x" + (target if what in ("time", "RSS") else ""))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "size": args.size,
                    "dtype": args.dtype,
                    "runs": {
                        stage: [m.__dict__ | {"log": str(m.log)} for m in ms]
                        for stage, ms in results.items()
                    },
                    "in_stage_seconds": in_stage,
                    "medians": medians,
                    "ratios": ratios,
                    "not_observable": report.get("not_observable"),
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
