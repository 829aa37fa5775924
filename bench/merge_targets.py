"""Benchmark: `publisher run --stages merge` against the tools people use, and the start-up gap.

Whole processes, each a fresh child, interleaved (the order rotates every round):

    ours      publisher run RECIPE --stages merge --force (auto-tuned merge options)
    same      mergekit-yaml with the options ours chose (from its manifest): the start-up gap
    bare      mergekit-yaml with its defaults
    lazy      LazyMergekit's CPU invocation: --allow-crimes --out-shard-size 1B --lazy-unpickle
    sweep:F   mergekit-yaml with the flags F (a small sweep; the best is the target's yardstick)

Cases: `startup` (5M-parameter float32 parents: the merge is negligible, start-up dominates;
ours and same only), `800M` (float32, bench's pair) and `1.2B-bf16`. Prints, per case, wall, CPU,
peak RSS and peak anonymous memory (medians), how busy the rest of the machine was, and which
targets hold:

    merge: ours >= 1.3x faster than lazy, with <= 0.8x its peak RSS; ours <= 1.05x the best sweep
    start-up: ours - same < 0.3 s (wall and CPU)

Informational: exits 0 unless a merge fails. Heavy cases need several GB of RAM and disk: run
them under `flock /tmp/publisher-heavy.lock` on a shared machine.

    .venv/bin/python bench/merge_targets.py --cases startup --runs 3
    flock /tmp/publisher-heavy.lock .venv/bin/python bench/merge_targets.py --cases 800M,1.2B-bf16
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import _benchlib as lib

CASES = {  # label: (parameters per parent, dtype)
    "startup": ("5M", "float32"),
    "800M": ("800M", "float32"),
    "1.2B-bf16": ("1.2B", "bfloat16"),
}
PUBLISHER = lib.MERGEKIT_YAML.with_name("publisher")
COMMON = ["--copy-tokenizer", "--no-write-model-card", "--safe-serialization"]
LAZY = ["--allow-crimes", "--out-shard-size", "1B", "--lazy-unpickle"]
DEFAULT_SWEEP = "200M;200M --async-write;500M --async-write"
TARGET_SPEEDUP, TARGET_RSS, TARGET_BEST, TARGET_GAP = 1.3, 0.8, 1.05, 0.3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--cases", default=",".join(CASES), help=f"of {', '.join(CASES)}")
    parser.add_argument("--runs", type=int, default=2, help="measured runs per variant")
    parser.add_argument("--startup-runs", type=int, default=5, help="runs for the startup case")
    parser.add_argument(
        "--sweep",
        default=DEFAULT_SWEEP,
        help="';'-separated flag sets: an out_shard_size, then extra mergekit-yaml flags",
    )
    lib.add_measurement_args(
        parser, idle_help="before each run, wait until other processes use fewer CPUs than this"
    )
    args = parser.parse_args()
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")
    return args


def sweep_flags(item: str) -> list[str]:
    size, *rest = item.split()
    return ["--out-shard-size", size, *rest]


def same_flags(manifest: Path) -> list[str]:
    """mergekit-yaml flags for the options `publisher run` chose (manifest.json merge_options)."""
    chosen = json.loads(manifest.read_text())["merge_options"]["options"]
    flags = ["--out-shard-size", str(chosen["out_shard_size"])]
    for name in ("async_write", "lazy_unpickle", "low_cpu_memory"):
        flag = "--" + name.replace("_", "-")
        flags.append(flag if chosen[name] else flag.replace("--", "--no-", 1))
    for name in ("write_threads", "num_threads"):
        if chosen.get(name) is not None:
            flags += ["--" + name.replace("_", "-"), str(chosen[name])]
    return flags


def warm_page_cache(parents: lib.Parents) -> None:
    """Read the parents once so that no variant pays the cold reads alone."""
    for path in [*parents.base.iterdir(), *parents.other.iterdir()]:
        with path.open("rb") as handle:
            while handle.read(1 << 24):
                pass


def run_case(label: str, args: argparse.Namespace) -> dict:
    params, dtype = CASES[label]
    spec = lib.spec_for_params(lib.parse_count(params))
    cache_label = params if dtype == "float32" else f"{params}-{dtype}"
    parents = lib.ensure_parents(cache_label, spec, args.cache_dir, dtype)
    print(
        f"\n## {label}: {lib.format_count(parents.params)} params each, {dtype}, "
        f"{lib.format_bytes(parents.bytes_on_disk)} per parent",
        flush=True,
    )
    runs = args.startup_runs if label == "startup" else args.runs
    with tempfile.TemporaryDirectory(prefix="targets-", dir=args.cache_dir) as tmp:
        work = Path(tmp)
        config = work / "mergekit.yaml"
        config.write_text(lib.slerp_config_yaml(parents, dtype), encoding="utf-8")
        recipe = work / "recipe.yaml"
        recipe.write_text(
            lib.slerp_config_yaml(parents, dtype)
            + "publish:\n  repo_id: bench/merge-targets\n  license: apache-2.0\n",
            encoding="utf-8",
        )
        run_dir = work / "run"
        ours = [str(PUBLISHER), "run", str(recipe), "--out", str(run_dir)]
        lib.check_ok(lib.measure([*ours, "--stages", "plan"], work / "plan.log"), "plan stage")
        warm_page_cache(parents)
        variants: dict[str, list[str] | None] = {"ours": [*ours, "--stages", "merge", "--force"]}
        variants["same"] = None  # known after ours' first run
        if label != "startup":
            variants["bare"] = [str(lib.MERGEKIT_YAML), str(config), "OUT", *COMMON]
            variants["lazy"] = [str(lib.MERGEKIT_YAML), str(config), "OUT", *COMMON, *LAZY]
            for item in args.sweep.split(";"):
                variants[f"sweep:{item.strip()}"] = [
                    str(lib.MERGEKIT_YAML),
                    str(config),
                    "OUT",
                    *COMMON,
                    *sweep_flags(item),
                ]
        results: dict[str, list[lib.Measurement]] = {name: [] for name in variants}
        names = list(variants)
        for round_no in range(runs):
            shift = round_no % len(names)
            order = names if round_no == 0 else names[shift:] + names[:shift]
            for name in order:
                if variants[name] is None:
                    flags = same_flags(run_dir / "manifest.json")
                    variants[name] = [str(lib.MERGEKIT_YAML), str(config), "OUT", *COMMON, *flags]
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                cmd = [str(out) if part == "OUT" else part for part in variants[name]]
                if args.idle_threshold > 0:
                    lib.wait_for_quiet(args.idle_threshold, args.idle_wait)
                m = lib.measure(cmd, work / "child.log", sample_interval=args.sample_interval)
                lib.check_ok(m, name)
                results[name].append(m)
                print(f"  round {round_no + 1}/{runs} {name}: {m.seconds:.1f}s", flush=True)
        shutil.rmtree(work / "out", ignore_errors=True)
        shutil.rmtree(run_dir / "merged", ignore_errors=True)
    return report_case(label, variants, results)


def summarize(ms: list[lib.Measurement]) -> dict[str, float]:
    return {
        "wall": lib.median([m.seconds for m in ms]),
        "cpu": lib.median([m.user_seconds + m.system_seconds for m in ms]),
        "rss": lib.median([m.maxrss_bytes for m in ms]),
        "anon": lib.median([m.sampled_anon_bytes for m in ms]),
        "others": lib.median([m.other_cpu_seconds / m.seconds for m in ms]),
        "others_max": max(m.other_cpu_seconds / m.seconds for m in ms),
        "wall_min": min(m.seconds for m in ms),
        "wall_max": max(m.seconds for m in ms),
    }


def report_case(label: str, variants: dict, results: dict[str, list[lib.Measurement]]) -> dict:
    stats = {name: summarize(ms) for name, ms in results.items()}
    lazy = stats.get("lazy")
    rows = []
    for name, s in stats.items():
        flags = " ".join(p for p in (variants[name] or [])[3:] if p not in COMMON)
        rows.append(
            [
                name,
                flags if name != "ours" else "auto-tuned",
                f"{s['wall']:.1f} ({s['wall_min']:.1f}-{s['wall_max']:.1f})",
                f"{s['cpu']:.1f}",
                lib.format_bytes(s["rss"]),
                lib.format_bytes(s["anon"]),
                f"{s['others']:.2f} (max {s['others_max']:.2f})",
                f"{lazy['wall'] / s['wall']:.2f}x" if lazy else "-",
                f"{s['rss'] / lazy['rss']:.2f}x" if lazy else "-",
            ]
        )
    headers = ["variant", "flags", "wall s (min-max)", "CPU s", "peak RSS", "peak anon",
               "others' CPUs", "speed vs lazy", "RSS vs lazy"]  # fmt: skip
    lib.print_table(headers, rows)
    ours, same = stats["ours"], stats["same"]
    verdicts = {
        "start-up gap wall": (ours["wall"] - same["wall"], TARGET_GAP, "s"),
        "start-up gap CPU": (ours["cpu"] - same["cpu"], TARGET_GAP, "s"),
    }
    if lazy:
        best_name = min(
            (n for n in stats if n.startswith("sweep:")), key=lambda n: stats[n]["wall"]
        )
        verdicts["speed vs lazy (>=)"] = (lazy["wall"] / ours["wall"], TARGET_SPEEDUP, "x")
        verdicts["peak RSS vs lazy (<=)"] = (ours["rss"] / lazy["rss"], TARGET_RSS, "x")
        verdicts[f"wall vs best sweep {best_name} (<=)"] = (
            ours["wall"] / stats[best_name]["wall"],
            TARGET_BEST,
            "x",
        )
    for what, (value, target, unit) in verdicts.items():
        holds = (
            value >= target
            if "(>=)" in what
            else value < target
            if "gap" in what
            else value <= target
        )
        print(f"  {label} {what}: {value:.2f}{unit} (target {target}{unit}) "
              f"{'HOLDS' if holds else 'MISSED'}")  # fmt: skip
    return {
        "stats": stats,
        "verdicts": {k: v[0] for k, v in verdicts.items()},
        "runs": {n: [asdict(m) | {"log": str(m.log)} for m in ms] for n, ms in results.items()},
    }


def main() -> int:
    args = parse_args()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {lib.machine_summary()}")
    print("others' CPUs: CPUs the rest of the machine kept busy during a run (median, max)")
    out = {label: run_case(label, args) for label in args.cases}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
