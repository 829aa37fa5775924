"""Benchmark: the weight check (verify's re-merge of every tensor) against the merge itself.

On one pair of synthetic parents (default 800M parameters each, float32, cached under
build/bench/parents-<size>), each round runs, in fresh child processes and in alternating
order: the pipeline's merge stage (`resolve_parents` + `run_merge_stage`, the recipe's default
out_shard_size 5B unless `--out-shard-size` is given), then the weight check on that merge's
output (`load_recipe` + `resolve_parents` + `build_plan` + `publisher.weights.check_weights`,
what `publisher run --stages weights` does). It prints both wall times and peak RSS (the
child's own `ru_maxrss`), their medians, and the two ratios verify / merge; the target is <= 1
for both.

    .venv/bin/python bench/verify_cost.py                  # 800M, 3 rounds
    .venv/bin/python bench/verify_cost.py --size 50M --rounds 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import _benchlib as lib


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
        "--out-shard-size", default="5B", help="the recipe's out_shard_size (bytes)"
    )
    lib.add_measurement_args(
        parser, idle_help="before each run, wait until other processes use fewer CPUs than this"
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


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
    merges: list[lib.Measurement] = []
    checks: list[lib.Measurement] = []
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="verify-cost-", dir=args.cache_dir) as tmp:
        work = Path(tmp)
        recipe, _ = lib.write_recipe_pair(work, parents, args.out_shard_size, args.dtype)
        out = work / "merged"
        for number in range(1, args.rounds + 1):
            if out.exists():
                shutil.rmtree(out)
            lib.wait_for_quiet(args.idle_threshold, args.idle_wait)
            merge = lib.measure(
                lib.pipeline_command(recipe, out, work / "merge.json"),
                work / "merge.log",
                work / "merge.json",
                args.sample_interval,
            )
            lib.check_ok(merge, "the merge")
            lib.wait_for_quiet(args.idle_threshold, args.idle_wait)
            check = lib.measure(
                lib.weight_check_command(recipe, out, work / "check.json"),
                work / "check.log",
                work / "check.json",
                args.sample_interval,
            )
            lib.check_ok(check, "the weight check")
            merges.append(merge)
            checks.append(check)
            rows += [_row(f"{number} merge", merge), _row(f"{number} verify", check)]
            print(
                f"round {number}: merge {merge.seconds:.1f}s {lib.format_bytes(merge.maxrss_bytes)}"
                f", verify {check.seconds:.1f}s {lib.format_bytes(check.maxrss_bytes)} "
                f"({check.report.get('tensors')} tensors, {check.report.get('exact')} exact)",
                flush=True,
            )
    print()
    lib.print_table(
        ["round", "wall s", "CPU s", "peak RSS", "peak anon", "peak file", "others' CPUs"], rows
    )
    merge_s = lib.median([m.seconds for m in merges])
    check_s = lib.median([m.seconds for m in checks])
    merge_rss = lib.median([m.maxrss_bytes for m in merges])
    check_rss = lib.median([m.maxrss_bytes for m in checks])
    phases = checks[-1].report
    print(
        f"\nverify phases (last round, s): import {phases.get('import', 0):.1f}, "
        f"recipe+plan {phases.get('load_recipe_and_plan', 0):.1f}, "
        f"check_weights {phases.get('check_weights', 0):.1f}"
    )
    print(f"median merge:  {merge_s:.1f} s, {lib.format_bytes(merge_rss)} peak RSS")
    print(f"median verify: {check_s:.1f} s, {lib.format_bytes(check_rss)} peak RSS")
    time_ratio, rss_ratio = check_s / merge_s, check_rss / merge_rss
    print(
        f"verify / merge time: {time_ratio:.2f}x  (target <= 1: {'PASS' if time_ratio <= 1 else 'over'})"
    )
    print(
        f"verify / merge RSS:  {rss_ratio:.2f}x  (target <= 1: {'PASS' if rss_ratio <= 1 else 'over'})"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "size": args.size,
                    "dtype": args.dtype,
                    "merge": [m.__dict__ | {"log": str(m.log)} for m in merges],
                    "verify": [m.__dict__ | {"log": str(m.log)} for m in checks],
                    "time_ratio": time_ratio,
                    "rss_ratio": rss_ratio,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
