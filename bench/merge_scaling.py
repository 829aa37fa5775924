"""Benchmark: merge time and peak memory as the parents grow, with a small output shard size.

For each size (default 50M, 200M, 800M parameters per parent) a pair of synthetic float32
Mistral parents is built once and cached under build/bench/parents-<size>; the merge then runs in
a fresh child process (the pipeline's merge stage by default, or bare `mergekit-yaml`) with
`out_shard_size` 100M, dtype float32, on the CPU. Peak memory is the child's own `ru_maxrss`
(`os.wait4` on its pid), cross-checked by polling /proc/<pid>/status, which also splits the peak
into anonymous memory (tensors) and file-backed pages (libraries, memory-mapped weights).

With a fixed shard size the merge should hold about one output shard plus the tensors being
merged, so peak memory should stay nearly flat rather than grow with the model. (mergekit 0.1.5
documents out_shard_size as parameters but compares it with tensor bytes: 100M gives ~100 MB
shards.) What this measures: the anonymous memory does stay flat, but `ru_maxrss` grows with the
model because mergekit memory-maps the parents' safetensors and the mapped pages it has read
count as resident (file-backed, reclaimable page cache) until the process exits.

    .venv/bin/python bench/merge_scaling.py                     # 50M,200M,800M
    .venv/bin/python bench/merge_scaling.py --sizes 50M,200M --runner bare
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import _benchlib as lib


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Merge time and peak RSS of the merge for growing synthetic parents.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--sizes", default="50M,200M,800M", help="comma-separated parameters per parent"
    )
    parser.add_argument(
        "--out-shard-size",
        default="100M",
        help="the recipe's out_shard_size; mergekit 0.1.5 compares it with tensor bytes, "
        "so 100M gives ~100 MB shards (~25M float32 parameters)",
    )
    parser.add_argument(
        "--runner",
        choices=("pipeline", "bare"),
        default="pipeline",
        help="pipeline: resolve_parents + publisher.merge.run_merge_stage; bare: mergekit-yaml",
    )
    parser.add_argument("--repeats", type=int, default=1, help="merges per size (median taken)")
    lib.add_measurement_args(
        parser,
        idle_help="before each merge, wait until other processes use fewer CPUs than this (0 = off)",
    )
    args = parser.parse_args()
    try:
        args.sizes = [(s.strip(), lib.parse_count(s)) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes: cannot read '{args.sizes}'; use e.g. 50M,200M")
    if not args.sizes:
        parser.error("--sizes is empty")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    print(f"machine: {lib.machine_summary()}")
    print(
        f"runner: {args.runner}; out_shard_size {args.out_shard_size}; dtype float32 "
        f"(parents written in float32); device cpu; {args.repeats} merge(s) per size\n",
        flush=True,
    )
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for label, target in args.sizes:
        spec = lib.spec_for_params(target)
        model_bytes = spec.expected_params() * lib.BYTES_PER_PARAM
        available = lib.available_memory_bytes()
        if available is not None and available < 3 * model_bytes:
            print(
                f"skipping {label}: building a parent needs about {lib.format_bytes(3 * model_bytes)}"
                f" of memory, {lib.format_bytes(available)} available"
            )
            continue
        out_needed = model_bytes * 1.1
        parents = lib.ensure_parents(label, spec, args.cache_dir)
        free = lib.free_disk_bytes(args.cache_dir)
        if free < out_needed:
            print(
                f"skipping {label}: the output needs about {lib.format_bytes(out_needed)}, "
                f"{lib.format_bytes(free)} free"
            )
            continue
        print(
            f"{label}: {parents.params:,} params per parent (hidden {spec.hidden_size}, "
            f"{spec.num_hidden_layers} layers, MLP {spec.intermediate_size}), "
            f"{lib.format_bytes(parents.bytes_on_disk)} on disk"
            + (f", built in {parents.built_seconds:.1f}s" if parents.built_seconds else ", cached"),
            flush=True,
        )
        measurements: list[lib.Measurement] = []
        with tempfile.TemporaryDirectory(prefix=f"scaling-{label}-", dir=args.cache_dir) as tmp:
            work = Path(tmp)
            recipe, config = lib.write_recipe_pair(work, parents, args.out_shard_size)
            out = work / "out"
            for repeat in range(args.repeats):
                if out.exists():
                    shutil.rmtree(out)
                log, report = work / "merge.log", work / "phases.json"
                if args.runner == "bare":
                    cmd = lib.bare_command(config, out, args.out_shard_size)
                else:
                    cmd = lib.pipeline_command(recipe, out, report)
                if args.idle_threshold > 0:
                    lib.wait_for_quiet(args.idle_threshold, args.idle_wait)
                m = lib.measure(cmd, log, report, args.sample_interval)
                lib.check_ok(m, f"{label} merge")
                shards = sorted(out.glob("*.safetensors"))
                out_params = lib.safetensors_param_count(out)
                largest_shard = max(f.stat().st_size for f in shards)
                print(
                    f"  merge {repeat + 1}: {m.seconds:.1f}s wall, "
                    f"{m.user_seconds + m.system_seconds:.1f}s CPU "
                    f"(others {m.other_cpu_seconds:.1f}s CPU), peak RSS "
                    f"{lib.format_bytes(m.maxrss_bytes)} (anon {lib.format_bytes(m.sampled_anon_bytes)}, "
                    f"file {lib.format_bytes(m.sampled_file_bytes)}), {len(shards)} shard(s), "
                    f"largest {lib.format_bytes(largest_shard)}",
                    flush=True,
                )
                if out_params != parents.params:
                    print(
                        f"  WARNING: output has {out_params:,} params, parents {parents.params:,}"
                    )
                measurements.append(m)
            shutil.rmtree(out, ignore_errors=True)

        def med(values: list[float]) -> float:
            return lib.median(values)

        rows.append(
            {
                "label": label,
                "params": parents.params,
                "parent_bytes": parents.bytes_on_disk,
                "model_bytes": parents.params * lib.BYTES_PER_PARAM,
                "shards": len(shards),
                "largest_shard_bytes": largest_shard,
                "seconds": med([m.seconds for m in measurements]),
                "resolve_seconds": (
                    med([m.report["resolve_parents"] for m in measurements])
                    if args.runner == "pipeline"
                    else None
                ),
                "stage_seconds": (
                    med([m.report["run_merge_stage"] for m in measurements])
                    if args.runner == "pipeline"
                    else None
                ),
                "maxrss_bytes": med([m.maxrss_bytes for m in measurements]),
                "anon_bytes": med([m.sampled_anon_bytes for m in measurements]),
                "file_bytes": med([m.sampled_file_bytes for m in measurements]),
                "cpu_seconds": med([m.user_seconds + m.system_seconds for m in measurements]),
                "others_share": med(
                    [
                        m.other_cpu_seconds / (m.seconds * (os.cpu_count() or 1))
                        for m in measurements
                    ]
                ),
            }
        )

    if not rows:
        print("nothing measured")
        return 0
    smallest = min(rows, key=lambda r: r["params"])
    print(
        f"\nSLERP merge, {args.runner} runner, out_shard_size {args.out_shard_size}, float32, "
        "CPU (wall clock of the whole child process; peak RSS = the child's ru_maxrss)\n"
    )
    headers = [
        "size",
        "params",
        "parent on disk",
        "shards",
        "merge s",
        "CPU s",
        "resolve_parents s",
        "run_merge_stage s",
        "peak RSS",
        "RSS / model bytes",
        "peak anon",
        "peak file-backed",
        "peak RSS vs smallest",
    ]
    table = []
    for r in rows:
        table.append(
            [
                r["label"],
                f"{r['params'] / 1e6:.1f}M",
                lib.format_bytes(r["parent_bytes"]),
                str(r["shards"]),
                f"{r['seconds']:.1f}",
                f"{r['cpu_seconds']:.1f}",
                f"{r['resolve_seconds']:.1f}" if r["resolve_seconds"] is not None else "-",
                f"{r['stage_seconds']:.1f}" if r["stage_seconds"] is not None else "-",
                lib.format_bytes(r["maxrss_bytes"]),
                f"{r['maxrss_bytes'] / r['model_bytes']:.2f}",
                lib.format_bytes(r["anon_bytes"]),
                lib.format_bytes(r["file_bytes"]),
                f"{r['maxrss_bytes'] / smallest['maxrss_bytes']:.2f}x",
            ]
        )
    lib.print_table(headers, table)
    if len(rows) > 1:
        largest = max(rows, key=lambda r: r["params"])
        growth = largest["params"] / smallest["params"]
        mem_growth = largest["maxrss_bytes"] / smallest["maxrss_bytes"]
        time_growth = largest["seconds"] / smallest["seconds"]
        print(
            f"\nfrom {smallest['label']} to {largest['label']}: params x{growth:.1f}, "
            f"peak RSS x{mem_growth:.2f}, wall time x{time_growth:.2f}"
        )
    share = lib.median([r["others_share"] for r in rows])
    print(
        f"\nother processes used a median {share:.0%} of the machine's CPU during the merges"
        + (" -- wall times are inflated by them; CPU s is steadier" if share > 0.1 else "")
    )
    print(
        "\n(model bytes = one parent's float32 weights; 'peak anon'/'peak file-backed' are the "
        "largest RssAnon/RssFile seen by polling /proc, so they may undershoot a short spike; "
        f"benchmark process peak RSS, a floor under every child's: "
        f"{lib.format_bytes(lib.self_maxrss_bytes())})"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
