"""Benchmark: the pipeline's merge stage against bare `mergekit-yaml` on the same SLERP merge.

Every merge runs in a fresh child process, so interpreter start-up and imports count the same for
each variant; the variants are interleaved (the order rotates every round) to spread drift:

    bare      .venv/bin/mergekit-yaml CONFIG OUT with the options run_merge_stage uses
    pipeline  load_recipe + resolve_parents + publisher.merge.run_merge_stage
              (what `publisher run --stages merge` does for local parents)
    stage     load_recipe + run_merge_stage only (parents handed over without content hashing)

Prints the median wall time of each and the ratios against bare, with a note against the
5% overhead target. Informational: always exits 0 unless a merge fails.

The machine may be shared: before each run the benchmark waits (up to --idle-wait seconds) until
other processes use fewer than --idle-threshold CPUs, and repeats a run during which they used
more (up to --retries times). The table reports how busy the rest of the machine was.

    .venv/bin/python bench/merge_overhead.py              # 50M-parameter parents, 5 runs
    .venv/bin/python bench/merge_overhead.py --runs 9 --size 200M
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import _benchlib as lib

VARIANTS = ("bare", "pipeline", "stage")
DESCRIPTIONS = {
    "bare": "mergekit-yaml CLI",
    "pipeline": "resolve_parents + run_merge_stage",
    "stage": "run_merge_stage only",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time the pipeline's merge stage against bare mergekit-yaml "
        "(fresh subprocess per run, interleaved).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--size", default="50M", help="parameters per synthetic parent")
    parser.add_argument("--runs", type=int, default=5, help="measured runs per variant")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs per variant first")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)} (bare is always included)",
    )
    parser.add_argument(
        "--out-shard-size", default="5B", help="out_shard_size for both (the recipe default)"
    )
    parser.add_argument("--target", type=float, default=0.05, help="overhead target (fraction)")
    lib.add_measurement_args(
        parser,
        idle_help="before each run, wait until other processes use fewer CPUs than this "
        "(0 = do not wait); a run during which they used more is repeated (see --retries)",
    )
    parser.add_argument(
        "--retries", type=int, default=2, help="repeats of a run disturbed by other processes"
    )
    args = parser.parse_args()
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(wanted) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s): {', '.join(unknown)}")
    args.variants = ["bare", *[v for v in VARIANTS if v in wanted and v != "bare"]]
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    spec = lib.spec_for_params(lib.parse_count(args.size))
    parents = lib.ensure_parents(args.size, spec, args.cache_dir)
    print(f"machine: {lib.machine_summary()}")
    print(
        f"parents: {lib.format_count(parents.params)} params each ({parents.params:,}), float32, "
        f"{lib.format_bytes(parents.bytes_on_disk)} each on disk; hidden {spec.hidden_size}, "
        f"{spec.num_hidden_layers} layers, MLP {spec.intermediate_size}"
        + (f"; built in {parents.built_seconds:.1f}s" if parents.built_seconds else "; cached")
    )
    print(
        f"runs: {args.warmup} warm-up + {args.runs} measured per variant, interleaved; "
        f"out_shard_size {args.out_shard_size}; dtype float32; device cpu\n",
        flush=True,
    )

    args.cache_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[lib.Measurement]] = {v: [] for v in args.variants}
    outputs_params: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="overhead-", dir=args.cache_dir) as tmp:
        work = Path(tmp)
        recipe, config = lib.write_recipe_pair(work, parents, args.out_shard_size)
        total_rounds = args.warmup + args.runs
        for round_no in range(total_rounds):
            shift = round_no % len(args.variants)
            order = args.variants[shift:] + args.variants[:shift]
            measured = round_no >= args.warmup
            for variant in order:
                out = work / f"out-{variant}"
                if out.exists():
                    shutil.rmtree(out)
                log = work / f"{variant}.log"
                report = work / f"{variant}.json"
                if variant == "bare":
                    cmd = lib.bare_command(config, out, args.out_shard_size)
                else:
                    cmd = lib.pipeline_command(recipe, out, report, resolve=variant == "pipeline")
                retries = args.retries if measured else 0
                for attempt in range(retries + 1):
                    if args.idle_threshold > 0:
                        lib.wait_for_quiet(args.idle_threshold, args.idle_wait)
                    if out.exists():
                        shutil.rmtree(out)
                    m = lib.measure(cmd, log, report, args.sample_interval)
                    lib.check_ok(m, f"{variant} merge")
                    busy_others = m.other_cpu_seconds / m.seconds
                    if args.idle_threshold <= 0 or busy_others < args.idle_threshold:
                        break
                    if attempt < retries:
                        print(
                            f"  ({variant}: other processes used {busy_others:.2f} CPUs "
                            "during the run; repeating it)",
                            flush=True,
                        )
                outputs_params.setdefault(variant, lib.safetensors_param_count(out))
                shutil.rmtree(out)
                tag = "run" if measured else "warm-up"
                print(
                    f"  {tag} {round_no - args.warmup + 1 if measured else round_no + 1}: "
                    f"{variant:8s} {m.seconds:7.2f}s wall, "
                    f"{m.user_seconds + m.system_seconds:6.2f}s CPU, "
                    f"others {m.other_cpu_seconds:5.1f}s CPU, "
                    f"peak RSS {lib.format_bytes(m.maxrss_bytes)}",
                    flush=True,
                )
                if measured:
                    results[variant].append(m)

    if len(set(outputs_params.values())) != 1:
        print(f"\nWARNING: the variants wrote different parameter counts: {outputs_params}")

    def cpu(m: lib.Measurement) -> float:
        return m.user_seconds + m.system_seconds

    def others_share(m: lib.Measurement) -> float:
        return m.other_cpu_seconds / (m.seconds * (os.cpu_count() or 1))

    bare_median = lib.median([m.seconds for m in results["bare"]])
    bare_min = min(m.seconds for m in results["bare"])
    bare_cpu = lib.median([cpu(m) for m in results["bare"]])
    print(
        f"\nmerge of two {lib.format_count(parents.params)}-parameter parents, "
        f"{args.runs} runs each (wall clock and CPU time of the whole child process)\n"
    )
    headers = [
        "variant",
        "what runs",
        "median s",
        "min s",
        "max s",
        "median CPU s",
        "peak RSS",
        "median vs bare",
        "min vs bare",
        "CPU vs bare",
        "others' CPUs",
        f"target <= +{args.target:.0%} (median)",
    ]
    rows = []
    for variant in args.variants:
        ms = results[variant]
        secs = [m.seconds for m in ms]
        med = lib.median(secs)
        ratio = med / bare_median
        if variant == "bare":
            note = "(baseline)"
        elif ratio - 1 <= args.target:
            note = "PASS"
        else:
            note = f"over target (+{ratio - 1:.1%})"
        rows.append(
            [
                variant,
                DESCRIPTIONS[variant],
                f"{med:.2f}",
                f"{min(secs):.2f}",
                f"{max(secs):.2f}",
                f"{lib.median([cpu(m) for m in ms]):.2f}",
                lib.format_bytes(lib.median([m.maxrss_bytes for m in ms])),
                f"{ratio:.3f}x",
                f"{min(secs) / bare_min:.3f}x",
                f"{lib.median([cpu(m) for m in ms]) / bare_cpu:.3f}x",
                f"{lib.median([m.other_cpu_seconds / m.seconds for m in ms]):.2f}",
                note,
            ]
        )
    lib.print_table(headers, rows)
    all_runs = [m for ms in results.values() for m in ms]
    share = lib.median([others_share(m) for m in all_runs])
    print(
        f"\nother processes used a median {share:.0%} of the machine's CPU during the runs"
        + (
            " -- the machine was busy, so wall times are noisy; the CPU-time ratio is the "
            "steadier comparison"
            if share > 0.1
            else ""
        )
    )

    phase_names = ["import", "load_recipe", "resolve_parents", "run_merge_stage"]
    breakdown = [v for v in args.variants if v != "bare"]
    if breakdown:
        print("\nwhere the pipeline variants spend their time (medians, seconds):\n")
        rows = []
        for variant in breakdown:
            reports = [m.report for m in results[variant]]
            walls = [m.seconds for m in results[variant]]
            inside = [r["total_in_process"] for r in reports]
            startup = lib.median([w - i for w, i in zip(walls, inside, strict=True)])
            rows.append(
                [variant, f"{startup:.2f}"]
                + [f"{lib.median([r[p] for r in reports]):.2f}" for p in phase_names]
            )
        lib.print_table(["variant", "interpreter+exit", *phase_names], rows)
        print(
            "\n(import includes torch, transformers and mergekit; resolve_parents pins local "
            "parents by sha256, reusing digests cached by file stat; 'stage' hands the parents "
            "over unhashed.)"
        )
    print(
        f"\nbenchmark process peak RSS (floor under every child's): "
        f"{lib.format_bytes(lib.self_maxrss_bytes())}"
    )

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "params": parents.params,
                    "runs": {
                        v: [
                            {
                                "seconds": m.seconds,
                                "maxrss_bytes": m.maxrss_bytes,
                                "user_seconds": m.user_seconds,
                                "system_seconds": m.system_seconds,
                                "other_cpu_seconds": m.other_cpu_seconds,
                                "phases": m.report,
                            }
                            for m in ms
                        ]
                        for v, ms in results.items()
                    },
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
