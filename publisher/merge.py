"""The merge stage: mergekit's `run_merge` over the recipe, parents at their pinned revisions.

The parents are handed to mergekit as absolute local directories (a bare relative path would be
looked up on the Hub); Hub parents are downloaded first at their locked commit.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from publisher.errors import PublisherError
from publisher.merge_tuning import MergeTuning, choose_merge_options, measure_facts
from publisher.parents import ParentInfo, check_compatible
from publisher.recipe import MergeSettings, Recipe
from publisher.recipe_paths import chat_template_text
from publisher.schedule import rewrite_model_refs

MERGEKIT_CONFIG = "mergekit_config.yml"
"""The merge's own mergekit config, parents pinned, published at the repo's root."""


class MergeError(PublisherError):
    """The merge cannot run or failed; the message says why and what to do."""


@dataclass(frozen=True)
class MergeRequest:
    """How to run one merge (mergekit `MergeOptions` field names).

    Attributes:
        device: `"cpu"` or `"cuda"` (mergekit's `cuda` option).
        lazy_unpickle: mergekit's experimental lazy unpickler (low memory for `.bin` parents).
        low_cpu_memory: keep results on the accelerator (VRAM > RAM).
        out_shard_size: bytes per output shard, e.g. `"5B"` or 1_000_000 (mergekit's help
            says parameters, but its writer compares the value with tensor bytes).
        async_write: write output shards on background threads.
        write_threads: how many threads write shards when `async_write`, e.g. 1.
        num_threads: torch's CPU threads (None: torch's default).
        quiet: suppress mergekit's progress bars.
        parent_reads: how safetensors parents are read: `"mmap"` (safetensors' default: the
            files are mapped, and every page read stays resident until the merge ends) or
            `"pread"` (each tensor copied into memory freed once it is merged).
    """

    device: str = "cpu"
    lazy_unpickle: bool = False
    low_cpu_memory: bool = False
    out_shard_size: str | int = "5B"
    async_write: bool = False
    write_threads: int = 1
    num_threads: int | None = None
    quiet: bool = False
    parent_reads: str = "mmap"


def merge_request_for(
    recipe: Recipe, device: str | None = None, settings: MergeSettings | None = None
) -> MergeRequest:
    """The recipe's merge settings (or `settings`) as given, the `--device` flag first.

    No auto-tuning: `tuned_merge_request` chooses what the settings leave out.
    """
    settings = settings or recipe.publish.merge
    fields = settings.model_dump(exclude={"cuda"})
    return MergeRequest(device=device or ("cuda" if settings.cuda else "cpu"), **fields)


def tuned_merge_request(
    recipe: Recipe,
    local_dirs: dict[str, Path],
    device: str | None = None,
    settings: MergeSettings | None = None,
) -> tuple[MergeRequest, MergeTuning]:
    """The merge request with every option the settings leave unset chosen for this machine.

    Explicitly set options (the recipe's `publish.merge` or a flag) are kept as given.
    """
    settings = settings or recipe.publish.merge
    request = merge_request_for(recipe, device, settings)
    explicit = settings.model_dump(include=settings.model_fields_set - {"cuda"})
    base = recipe.base_model
    dirs = sorted(local_dirs.items(), key=lambda item: item[0] != base)  # base parent first
    out_dtype = recipe.merge.get("out_dtype") or recipe.merge.get("dtype")
    facts = measure_facts([Path(d) for _, d in dirs], out_dtype, request.device)
    tuning = choose_merge_options(facts, explicit)
    tuning.facts = asdict(facts)
    return replace(request, **tuning.options), tuning


def run_merge_stage(
    recipe: Recipe,
    parents: list[ParentInfo],
    local_dirs: dict[str, Path],
    out_dir: Path,
    request: MergeRequest | None = None,
) -> Path:
    """Merge into `out_dir` (replaced if it exists) and return it.

    `local_dirs` maps each parent reference to the directory holding its files at the pinned
    revision. mergekit's own README is replaced later by the card, so it is not written.
    """
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    request = request or MergeRequest()
    check_compatible(recipe, parents)  # from config.json: before mergekit reads any weight
    for parent in parents:
        path = local_dirs.get(parent.ref)
        if path is None or not (Path(path) / "config.json").exists():
            raise MergeError(
                f"parent '{parent.ref}' is missing: no model directory at "
                f"{path or '(not downloaded)'}"
            )
    mapping = {ref: str(Path(p).resolve()) for ref, p in local_dirs.items()}
    merge = rewrite_model_refs(recipe.merge, mapping)
    if recipe.publish.chat_template:
        merge["chat_template"] = chat_template_text(
            recipe.publish.chat_template, recipe.path.parent
        )
    config = MergeConfiguration.model_validate(merge)
    options = MergeOptions(
        cuda=request.device.startswith("cuda"),
        device=request.device,
        lazy_unpickle=request.lazy_unpickle,
        low_cpu_memory=request.low_cpu_memory,
        out_shard_size=parse_shard_size(request.out_shard_size),
        copy_tokenizer=True,
        write_model_card=False,
        safe_serialization=True,
        trust_remote_code=recipe.publish.trust_remote_code,
        async_write=request.async_write,
        write_threads=request.write_threads,
        num_threads=request.num_threads,
        quiet=request.quiet,
    )
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    try:
        with safetensors_reads(request.parent_reads), torch_threads(request.num_threads):
            run_merge(config, str(out_dir), options=options)
    except (RuntimeError, ValueError, OSError, TypeError) as exc:
        raise MergeError(f"mergekit failed: {exc}") from exc
    if not any(out_dir.glob("*.safetensors")):
        raise MergeError(f"mergekit wrote no safetensors into {out_dir}")
    write_mergekit_config(recipe, parents, out_dir)
    return out_dir


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """While open, torch computes on `count` threads (None: as it was); restored after.

    `MergeOptions.num_threads` only takes effect through `apply_global_options`, which
    mergekit's command line calls and `run_merge` does not (it also sets the inter-op threads,
    which torch refuses once any parallel work has run in the process).
    """
    if count is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def safetensors_reads(backend: str) -> Iterator[None]:
    """While open, mergekit reads safetensors parents with safetensors' `backend`.

    mergekit's `TensorLoader.get` opens each safetensors shard with `safe_open` and no backend,
    i.e. memory-mapped, and offers no option for it; its other loaders (pickled weights) are
    left as they are. `"mmap"` changes nothing.
    """
    if backend == "mmap":
        yield
        return
    import safetensors
    from mergekit.io.loader import TensorLoader

    original = TensorLoader.__dict__["get"]

    def get(cls, shard_path: str, use_lazy_unpickle: bool = False, device: str | None = None):
        if shard_path.lower().endswith(".safetensors"):
            return safetensors.safe_open(
                shard_path, framework="pt", device=device or "cpu", backend=backend
            )
        return original.__func__(cls, shard_path, use_lazy_unpickle, device)

    TensorLoader.get = classmethod(get)
    try:
        yield
    finally:
        TensorLoader.get = original


def write_mergekit_config(recipe: Recipe, parents: list[ParentInfo], out_dir: Path) -> Path:
    """Write `OUT_DIR/mergekit_config.yml`: the recipe's mergekit config with each Hub parent
    pinned as `repo@sha`, so `mergekit-yaml mergekit_config.yml out/` downloads exactly the
    parents that were merged and reproduces the weights. Serialized by mergekit itself."""
    from mergekit.config import MergeConfiguration

    pins = {
        p.ref: f"{p.ref.partition('@')[0]}@{p.revision}"
        for p in parents
        if p.source == "hub" and p.resolved and p.revision
    }
    merge = rewrite_model_refs(recipe.merge, pins)
    if recipe.publish.chat_template:
        merge["chat_template"] = recipe.publish.chat_template
    path = Path(out_dir) / MERGEKIT_CONFIG
    text = MergeConfiguration.model_validate(merge).to_yaml()
    path.write_text(text, encoding="utf-8", newline="\n")
    return path


def parse_shard_size(value: str | int) -> int:
    from mergekit.common import parse_kmb

    try:
        return parse_kmb(value)
    except ValueError:
        raise MergeError(
            f"out_shard_size '{value}' is not a size like 5B, 500M or 1000000"
        ) from None
