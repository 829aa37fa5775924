"""Shared helpers for the merge benchmarks: synthetic parents, recipes, and measured subprocesses.

This module is imported by the benchmark scripts, which must stay light: it imports neither torch
nor mergekit nor `publisher`, so that a child process started from a benchmark does not inherit a
large memory high-water mark from it (Linux copies the parent's peak RSS into a child's
`ru_maxrss` when the child is spawned with vfork). Everything heavy runs in a child process
(`bench/_child.py`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CACHE_ROOT = REPO_ROOT / "build" / "bench"
CHILD = BENCH_DIR / "_child.py"
PYTHON = sys.executable
MERGEKIT_YAML = Path(sys.executable).with_name("mergekit-yaml")

# Bump when the way parents are built changes, so stale caches are rebuilt.
PARENT_CACHE_VERSION = 1
PARENT_NAMES = ("base", "other")
PARENT_SEEDS = (1, 2)
BYTES_PER_PARAM = 4  # parents are written in float32 (publisher.tiny builds float32 models)
VOCAB_SIZE = 384
NUM_LAYERS = 16
HEAD_DIM = 64

# Every child gets the same environment: offline, no telemetry, quiet transformers.
CHILD_ENV_OVERRIDES = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
}


# ---------------------------------------------------------------------------------------------
# sizes and model shapes


def parse_count(text: str) -> int:
    """`"50M"` -> 50_000_000; also `K`, `B` and plain integers."""
    text = text.strip().upper().replace("_", "")
    factors = {"K": 1_000, "M": 1_000_000, "B": 1_000_000_000}
    if text and text[-1] in factors:
        return int(float(text[:-1]) * factors[text[-1]])
    return int(text)


def format_count(value: float) -> str:
    """1_234_567 -> `"1.23M"`."""
    for factor, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return str(int(value))


def format_bytes(value: float) -> str:
    """Bytes in binary units, e.g. `"1.50 GiB"`."""
    for factor, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {suffix}"
    return f"{int(value)} B"


@dataclass(frozen=True)
class ParentSpec:
    """The shape of a synthetic Mistral parent (the fields of `publisher.tiny.TinyModelSpec`)."""

    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int = VOCAB_SIZE

    def expected_params(self) -> int:
        """Parameter count of the MistralForCausalLM (untied embeddings), before BPE trimming."""
        h, i = self.hidden_size, self.intermediate_size
        kv_dim = self.num_key_value_heads * (h // self.num_attention_heads)
        per_layer = 2 * h * h + 2 * h * kv_dim + 3 * h * i + 2 * h
        return self.num_hidden_layers * per_layer + 2 * self.vocab_size * h + h


def spec_for_params(target: int, layers: int = NUM_LAYERS) -> ParentSpec:
    """A 16-layer Mistral shape near `target` parameters (head dim 64, GQA 2:1, MLP ~3x hidden).

    With intermediate = 3 * hidden and kv = heads / 2, one layer has about 12 * hidden^2
    parameters; hidden is rounded to a multiple of 128 and the MLP width then tuned to the target.
    50M -> hidden 512 / MLP 1536, 200M -> 1024 / 3072, 800M -> 2048 / 6080.
    """
    per_layer = target / layers
    hidden = max(128, int(round(math.sqrt(per_layer / 12) / 128)) * 128)
    heads = hidden // HEAD_DIM
    kv_heads = max(1, heads // 2)
    attn = 2 * hidden * hidden + 2 * hidden * kv_heads * HEAD_DIM
    intermediate = max(64, int(round((per_layer - attn) / (3 * hidden) / 64)) * 64)
    return ParentSpec(
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
    )


# ---------------------------------------------------------------------------------------------
# model directories


def safetensors_param_count(model_dir: Path) -> int:
    """Parameters in a model directory, summed from its safetensors headers (no torch needed)."""
    total = 0
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with file.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            total += math.prod(info["shape"])
    return total


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def free_disk_bytes(path: Path) -> int:
    path = Path(path)
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, or None where there is no /proc."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class Parents:
    """A cached pair of synthetic parents."""

    root: Path
    spec: ParentSpec
    base: Path
    other: Path
    params: int
    bytes_on_disk: int  # one parent's directory
    built_seconds: float | None  # None when reused from the cache


def ensure_parents(
    label: str, spec: ParentSpec, cache_root: Path = CACHE_ROOT, dtype: str = "float32"
) -> Parents:
    """Build (in a child process) or reuse the parent pair for `spec` under `cache_root`.

    The cache directory is `parents-<label>`; it is rebuilt when its recorded spec differs.
    `dtype` "bfloat16" stores the weights in bf16 (built in float32, then converted).
    """
    root = cache_root / f"parents-{label}"
    marker = root / "spec.json"
    wanted = {"version": PARENT_CACHE_VERSION, "dtype": dtype, "spec": asdict(spec)}
    base, other = (root / name for name in PARENT_NAMES)
    built_seconds = None
    cached = (
        marker.exists()
        and json.loads(marker.read_text()) == wanted
        and all((d / "config.json").exists() for d in (base, other))
    )
    if not cached:
        needed = 2 * spec.expected_params() * BYTES_PER_PARAM
        free = free_disk_bytes(cache_root)
        if free < needed * 1.2:
            raise SystemExit(
                f"not enough disk for the {label} parents: need about {format_bytes(needed)}, "
                f"{format_bytes(free)} free under {cache_root}"
            )
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        print(
            f"building {label} parents ({format_count(spec.expected_params())} params each, "
            f"{dtype}) in {root} ...",
            flush=True,
        )
        start = time.perf_counter()
        cmd = [PYTHON, str(CHILD), "build-parents", str(root), json.dumps(asdict(spec))]
        cmd += ["--dtype", dtype]
        result = subprocess.run(cmd, env=child_env(), capture_output=True, text=True)
        if result.returncode != 0:
            sys.stderr.write(result.stdout + result.stderr)
            raise SystemExit(f"building the {label} parents failed (exit {result.returncode})")
        built_seconds = time.perf_counter() - start
        marker.write_text(json.dumps(wanted, indent=2) + "\n")
    return Parents(
        root=root,
        spec=spec,
        base=base.resolve(),
        other=other.resolve(),
        params=safetensors_param_count(base),
        bytes_on_disk=dir_bytes(base),
        built_seconds=built_seconds,
    )


# ---------------------------------------------------------------------------------------------
# recipes


def slerp_config_yaml(parents: Parents, dtype: str = "float32") -> str:
    """The mergekit SLERP config (no `publish:` block), with absolute parent paths.

    Same schedule shape as recipes/tiny-demo-slerp.yaml, over all layers of the parents.
    """
    layers = parents.spec.num_hidden_layers
    return (
        "slices:\n"
        "  - sources:\n"
        f"      - model: {parents.base}\n"
        f"        layer_range: [0, {layers}]\n"
        f"      - model: {parents.other}\n"
        f"        layer_range: [0, {layers}]\n"
        "merge_method: slerp\n"
        f"base_model: {parents.base}\n"
        "parameters:\n"
        "  t:\n"
        "    - filter: self_attn\n"
        "      value: [0, 0.5, 0.3, 0.7, 1]\n"
        "    - filter: mlp\n"
        "      value: [1, 0.5, 0.7, 0.3, 0]\n"
        "    - value: 0.5\n"
        f"dtype: {dtype}\n"
    )


def recipe_yaml(parents: Parents, out_shard_size: str, dtype: str = "float32") -> str:
    """The publisher recipe: the mergekit config plus a `publish:` block with the shard size."""
    return slerp_config_yaml(parents, dtype) + (
        "\npublish:\n"
        "  repo_id: bench/merge-bench\n"
        "  license: apache-2.0\n"
        "  merge:\n"
        f"    out_shard_size: {out_shard_size}\n"
    )


def write_recipe_pair(
    workdir: Path, parents: Parents, out_shard_size: str, dtype: str = "float32"
) -> tuple[Path, Path]:
    """Write the publisher recipe and the equivalent bare mergekit config into `workdir`."""
    recipe = workdir / "bench-recipe.yaml"
    config = workdir / "bench-mergekit.yaml"
    recipe.write_text(recipe_yaml(parents, out_shard_size, dtype), encoding="utf-8")
    config.write_text(slerp_config_yaml(parents, dtype), encoding="utf-8")
    return recipe, config


# ---------------------------------------------------------------------------------------------
# commands for the two ways of merging


def pipeline_command(recipe: Path, out_dir: Path, report: Path, resolve: bool = True) -> list[str]:
    """A child running `publisher.merge.run_merge_stage` on `recipe` (see `_child.py`)."""
    cmd = [PYTHON, str(CHILD), "pipeline-merge", str(recipe), str(out_dir), "--report", str(report)]
    if not resolve:
        cmd.append("--no-resolve")
    return cmd


def bare_command(config: Path, out_dir: Path, out_shard_size: str) -> list[str]:
    """`mergekit-yaml` with the options `run_merge_stage` uses (see publisher/merge.py).

    run_merge_stage sets: cpu, no lazy unpickle, no low-cpu-memory, copy_tokenizer, no model
    card, safetensors, no remote code, progress bars on (quiet=False), the recipe's shard size.
    """
    return [
        str(MERGEKIT_YAML),
        str(config),
        str(out_dir),
        "--device",
        "cpu",
        "--no-cuda",
        "--no-lazy-unpickle",
        "--no-low-cpu-memory",
        "--copy-tokenizer",
        "--no-write-model-card",
        "--safe-serialization",
        "--no-trust-remote-code",
        "--no-quiet",
        "--out-shard-size",
        out_shard_size,
    ]


# ---------------------------------------------------------------------------------------------
# measured child processes


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(CHILD_ENV_OVERRIDES)
    return env


@dataclass
class Measurement:
    """One child process: wall time and memory.

    Attributes:
        seconds: wall-clock from spawn to reap.
        maxrss_bytes: the child's own `ru_maxrss` (from `os.wait4` on its pid, so only this
            process and anything it waited for), anonymous and file-backed pages together.
        sampled_rss_bytes: the largest VmRSS seen by polling /proc/<pid>/status.
        sampled_anon_bytes: the largest RssAnon seen (heap: tensors, Python objects).
        sampled_file_bytes: the largest RssFile seen (mapped files: libraries, mmapped weights).
        user_seconds / system_seconds: CPU time of the child.
        returncode: exit status.
        other_cpu_seconds: CPU time the rest of the machine used while the child ran (all
            busy time in /proc/stat minus the child's own); other work on a small machine
            inflates wall time, while the child's CPU time is less affected.
        log: where stdout and stderr went.
        report: what the child wrote as its JSON report, if anything.
    """

    seconds: float
    maxrss_bytes: int
    sampled_rss_bytes: int
    sampled_anon_bytes: int
    sampled_file_bytes: int
    user_seconds: float
    system_seconds: float
    returncode: int
    other_cpu_seconds: float
    log: Path
    report: dict = field(default_factory=dict)


class _ProcSampler(threading.Thread):
    """Polls /proc/<pid>/status for the peaks of VmRSS, RssAnon and RssFile."""

    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        self.path = Path(f"/proc/{pid}/status")
        self.interval = interval
        self.peaks = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                text = self.path.read_text()
            except OSError:
                return
            for line in text.splitlines():
                key, _, rest = line.partition(":")
                if key in self.peaks:
                    self.peaks[key] = max(self.peaks[key], int(rest.split()[0]) * 1024)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def measure(
    cmd: Sequence[str], log: Path, report: Path | None = None, sample_interval: float = 0.05
) -> Measurement:
    """Run `cmd` as a child, wait for exactly that child with `os.wait4`, and measure it."""
    if report is not None and report.exists():
        report.unlink()
    busy_before = busy_cpu_seconds()
    with log.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=child_env())
        sampler = _ProcSampler(proc.pid, sample_interval) if sample_interval > 0 else None
        if sampler is not None:
            sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    busy = busy_cpu_seconds() - busy_before
    proc.returncode = os.waitstatus_to_exitcode(status)
    peaks = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    if sampler is not None:
        sampler.stop()
        peaks = sampler.peaks
    data = {}
    if report is not None and report.exists():
        data = json.loads(report.read_text())
    return Measurement(
        seconds=seconds,
        maxrss_bytes=usage.ru_maxrss * 1024,  # kilobytes on Linux
        sampled_rss_bytes=peaks["VmRSS"],
        sampled_anon_bytes=peaks["RssAnon"],
        sampled_file_bytes=peaks["RssFile"],
        user_seconds=usage.ru_utime,
        system_seconds=usage.ru_stime,
        returncode=proc.returncode,
        other_cpu_seconds=max(0.0, busy - usage.ru_utime - usage.ru_stime),
        log=log,
        report=data,
    )


def check_ok(m: Measurement, what: str) -> None:
    if m.returncode != 0:
        tail = "".join(m.log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise SystemExit(f"{what} failed (exit {m.returncode}); last lines of {m.log}:\n{tail}")


def busy_cpu_seconds() -> float:
    """Machine-wide non-idle CPU seconds since boot, from /proc/stat (0.0 where missing)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return 0.0
    # user nice system idle iowait irq softirq steal guest guest_nice: guest time is already
    # counted in user/nice, idle and iowait are not busy.
    values = [int(v) for v in fields[:8]]
    busy = sum(values) - values[3] - values[4]
    return busy / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(threshold: float, max_wait: float, window: float = 1.0) -> float:
    """Wait until other processes use under `threshold` CPUs (averaged over `window` seconds).

    Gives up after `max_wait` seconds. Returns the last measured busy CPUs (0.0 = idle); the
    benchmark process itself is idle meanwhile, so what is measured is everyone else.
    """
    deadline = time.monotonic() + max_wait
    while True:
        before = busy_cpu_seconds()
        time.sleep(window)
        busy = (busy_cpu_seconds() - before) / window
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def self_maxrss_bytes() -> int:
    """This (benchmark) process's own peak RSS: a floor under every child's `ru_maxrss`."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------------------------
# output


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def median_interval(values: Sequence[float], confidence: float = 0.9) -> tuple[float, float, float]:
    """A distribution-free interval for the median of `values`: the order statistics
    (k, n + 1 - k) with the largest k whose binomial coverage is at least `confidence` (or the
    whole range when no k reaches it). Returns (low, high, coverage)."""
    ordered = sorted(values)
    n = len(ordered)
    best, coverage, tail = 1, 1 - 2 / 2**n, 0.0  # tail: P(X <= k - 1), X ~ Binomial(n, 1/2)
    for k in range(1, n // 2 + 1):
        tail += math.comb(n, k - 1) / 2**n
        if 1 - 2 * tail < confidence:
            break
        best, coverage = k, 1 - 2 * tail
    return ordered[best - 1], ordered[n - best], coverage


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain-text table with right-aligned columns (Markdown-compatible pipes)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |")


def machine_summary() -> str:
    """One line: CPU count, memory and Python."""
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    parts = [f"{os.cpu_count()} CPUs" + (f" ({cpu})" if cpu else "")]
    if mem:
        parts.append(f"{format_bytes(mem)} RAM")
    parts.append(f"Python {sys.version.split()[0]}")
    return ", ".join(parts)


def add_measurement_args(parser: argparse.ArgumentParser, idle_help: str) -> None:
    """The options both benchmarks share: parent cache, memory sampling, idle gate, JSON."""
    parser.add_argument(
        "--cache-dir", type=Path, default=CACHE_ROOT, help="where parents are cached"
    )
    parser.add_argument(
        "--sample-interval",
        type=float,
        default=0.05,
        help="seconds between /proc memory samples (0 = off)",
    )
    parser.add_argument("--idle-threshold", type=float, default=0.25, help=idle_help)
    parser.add_argument(
        "--idle-wait", type=float, default=60.0, help="longest wait for a quiet machine (s)"
    )
    parser.add_argument("--json", type=Path, help="also write the raw measurements here")
