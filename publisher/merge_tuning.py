"""Merge auto-tuning: mergekit's performance options chosen from the model's size, RAM and device.

`choose_merge_options` is a pure function of what it is told (sizes in bytes, the device, the
CPU count and whether the parents hold pickled weights), so it is tested without a machine of
each kind; `measure_inputs` reads those facts from the parents' files and `/proc/meminfo`
without loading a weight or probing CUDA. A setting the recipe (`publish.merge`) or a flag gives
is never changed: only the unset ones are chosen, each with the reason it got its value.

Only `out_shard_size` changes the merged files (how they are split), and it depends on the
model's size alone, so the same inputs always give the same files whatever the machine's
free memory; the other options change speed and memory, never bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MB = 1000**2
GB = 1000**3
# Measured on this project's CPU benches (bench/README.md): 200M shards merged the 1.2B bf16 and
# 800M float32 pairs as fast as 1B shards or faster, and faster than mergekit's 5B, with half
# the heap memory or less, because the writer holds one shard's tensors before writing it.
SMALL_SHARD_BYTES = 200 * MB
# More shards than this would clutter the repository; very large models get larger shards.
MAX_SHARDS = 100
MAX_SHARD_BYTES = 5 * GB
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
TUNED = (
    "out_shard_size",
    "async_write",
    "write_threads",
    "num_threads",
    "lazy_unpickle",
    "low_cpu_memory",
    "parent_reads",
)
HALF_DTYPES = ("bfloat16", "float16")
# safetensors' `backend="pread"` (reads tensor bytes into memory of their own, no file mapping)
# first shipped in safetensors 0.8.
PREAD_SAFETENSORS = (0, 8)


@dataclass(frozen=True)
class MergeFacts:
    """What the choice depends on.

    Attributes:
        output_bytes: bytes of the merged weights, e.g. 2_400_000_000 for 1.2B params in bf16.
        free_ram_bytes: memory available to the merge (`MemAvailable`), e.g. 20_000_000_000.
        device: `"cpu"` or `"cuda"`.
        cpus: CPUs this process may run on, e.g. 2.
        pickled_parents: some parent ships `.bin`/`.pt` (pickle) weights, not safetensors.
        gpu_bytes: accelerator memory when known (None on CPU or when not probed).
        pread_available: the installed safetensors can read with `pread` instead of `mmap`.
        parent_bytes: bytes of all parents' weight files together.
        out_dtype: the merged weights' dtype, e.g. `"bfloat16"`.
    """

    output_bytes: int
    free_ram_bytes: int
    device: str = "cpu"
    cpus: int = 1
    pickled_parents: bool = False
    gpu_bytes: int | None = None
    pread_available: bool = False
    parent_bytes: int = 0
    out_dtype: str = "float32"


@dataclass
class MergeTuning:
    """The chosen options (mergekit `MergeOptions` field names) and why each has its value."""

    options: dict[str, Any] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def set(self, name: str, value: Any, reason: str) -> None:
        self.options[name] = value
        self.reasons[name] = reason


def choose_merge_options(facts: MergeFacts, explicit: dict[str, Any] | None = None) -> MergeTuning:
    """Options for one merge: `explicit` ones kept as given, the others chosen from `facts`."""
    explicit = explicit or {}
    tuning = MergeTuning()
    for name, value in explicit.items():
        if name in TUNED:
            tuning.set(name, value, "set by the recipe or a flag")
    choices = {
        "out_shard_size": _shard_size,
        "async_write": _async_write,
        "lazy_unpickle": _lazy_unpickle,
        "low_cpu_memory": _low_cpu_memory,
        "parent_reads": _parent_reads,
    }
    for name, choose in choices.items():
        if name not in explicit:
            tuning.set(name, *choose(facts))
    writers = 0
    if tuning.options["async_write"]:
        writers = tuning.options.get("write_threads") or min(2, max(1, facts.cpus - 1))
    if "write_threads" not in explicit:
        tuning.set("write_threads", max(1, writers), "one writer per spare CPU, at most 2")
    if "num_threads" not in explicit:
        tuning.set("num_threads", *_num_threads(facts, writers))
    return tuning


def _shard_size(facts: MergeFacts) -> tuple[int, str]:
    if facts.output_bytes <= SMALL_SHARD_BYTES * MAX_SHARDS:
        return SMALL_SHARD_BYTES, (
            "200M shards: the writer holds one shard in memory; measured faster and lower "
            "peak memory than 1B or 5B (bench/README.md)"
        )
    size = min(MAX_SHARD_BYTES, -(-facts.output_bytes // MAX_SHARDS))
    return size, f"at most {MAX_SHARDS} shards for {facts.output_bytes / GB:.1f} GB of output"


def _num_threads(facts: MergeFacts, writers: int) -> tuple[int, str]:
    # torch defaults to the machine's physical cores, more than a container or a CI runner's
    # CPU affinity may give this process; oversubscribed threads only contend. Background
    # writers serialize and copy whole shards: on 2 CPUs, 1 merge thread beside 1 writer was
    # 1.15x faster than 2 beside it (800M float32, bench/README.md).
    if writers and facts.cpus > writers:
        return facts.cpus - writers, (
            f"the {facts.cpus} CPU(s) this process may run on, less {writers} for the writer(s)"
        )
    return max(1, facts.cpus), f"the {facts.cpus} CPU(s) this process may run on"


def _async_write(facts: MergeFacts) -> tuple[bool, str]:
    # Writing in the background overlaps disk with compute but keeps one more shard in memory.
    spare = facts.free_ram_bytes - 2 * SMALL_SHARD_BYTES
    if facts.cpus < 2:
        return False, "one CPU: a writer thread would only take turns with the merge"
    if facts.device == "cpu" and facts.out_dtype in HALF_DTYPES and facts.cpus < 4:
        # mergekit computes SLERP in float32 and casts back: per byte written, a half-precision
        # merge is twice the compute. At 1.2B bf16 on 2 CPUs, 200M shards written in line on 2
        # merge threads were 1.10-1.27x faster than a writer beside 1 thread (bench/README.md).
        return False, (
            f"{facts.out_dtype} output on {facts.cpus} CPUs: the merge, not the writing, is the "
            "bottleneck, so every CPU merges"
        )
    if spare < facts.output_bytes // 4:
        return False, "little free memory: shards are written one at a time"
    return True, f"{facts.cpus} CPUs and free memory for a shard in flight"


def _lazy_unpickle(facts: MergeFacts) -> tuple[bool, str]:
    if facts.pickled_parents:
        return True, "pickled (.bin) parents: read tensor by tensor instead of whole files"
    return False, "safetensors parents are memory-mapped already"


def _low_cpu_memory(facts: MergeFacts) -> tuple[bool, str]:
    if not facts.device.startswith("cuda"):
        return False, "CPU merge: results stay in RAM either way"
    if facts.gpu_bytes is not None and facts.gpu_bytes >= 2 * facts.output_bytes:
        return True, "the GPU holds twice the output: results stay on it"
    return False, "GPU memory unknown or too small to keep the results on it"


def _parent_reads(facts: MergeFacts) -> tuple[str, str]:
    # A memory-mapped parent stays mapped while mergekit reads it, so every page it has touched
    # counts in the process's RSS until the merge ends: both parents whole. Those are clean
    # page-cache pages, and a cgroup is charged for the page cache that pread fills too, so
    # pread lowers peak RSS (0.15x at 1.2B bf16, bench/README.md) more than real memory use,
    # and it cost 1.35x the wall time there (copies instead of mapped pages). So mmap, unless
    # the parents and the output do not fit in free memory together: then pread lets the
    # kernel drop what was read instead of keeping it mapped. GPU loads keep mmap.
    if facts.device.startswith("cuda"):
        return "mmap", "GPU merge: safetensors' default loader"
    if facts.pickled_parents:
        return "mmap", "pickled parents: pread applies to safetensors files only"
    if facts.free_ram_bytes >= facts.parent_bytes + 2 * facts.output_bytes:
        return "mmap", (
            "free memory holds the mapped parents and the output: mmap, measured faster "
            "than pread (bench/README.md)"
        )
    if not facts.pread_available:
        return "mmap", "this safetensors has no pread backend (0.8 or later has)"
    return "pread", (
        "the mapped parents would not fit beside the output in free memory; pread holds "
        "only the tensors in flight"
    )


# ---------------------------------------------------------------------------------------------
# facts from the machine and the parents' files (no weights read, no CUDA probed)


def measure_facts(parent_dirs: list[Path], out_dtype: str | None, device: str) -> MergeFacts:
    """The facts for merging these parent directories into `out_dtype` on `device`."""
    base = Path(parent_dirs[0])
    weights = [
        p for d in parent_dirs for p in Path(d).iterdir() if p.name.endswith(WEIGHT_SUFFIXES)
    ]
    base_bytes = sum(p.stat().st_size for p in weights if p.parent == base)
    parent_dtype = _config_dtype(base)
    scale = DTYPE_BYTES.get(out_dtype or parent_dtype, 4) / DTYPE_BYTES.get(parent_dtype, 4)
    return MergeFacts(
        out_dtype=out_dtype or parent_dtype,
        output_bytes=int(base_bytes * scale),
        free_ram_bytes=free_ram_bytes(),
        device=device,
        cpus=available_cpus(),
        pickled_parents=any(not p.name.endswith(".safetensors") for p in weights),
        gpu_bytes=_gpu_bytes() if device.startswith("cuda") else None,
        pread_available=safetensors_has_pread(),
        parent_bytes=sum(p.stat().st_size for p in weights),
    )


def _config_dtype(model_dir: Path) -> str:
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "float32"
    return str(config.get("torch_dtype") or config.get("dtype") or "float32")


def free_ram_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def safetensors_has_pread() -> bool:
    """Whether `safetensors.safe_open` takes `backend="pread"` (imported by mergekit anyway)."""
    import safetensors

    try:
        version = tuple(int(part) for part in safetensors.__version__.split(".")[:2])
    except (AttributeError, ValueError):
        return False
    return version >= PREAD_SAFETENSORS


def _gpu_bytes() -> int | None:
    # Only on a CUDA merge, which initialises CUDA anyway.
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(0).total_memory)
