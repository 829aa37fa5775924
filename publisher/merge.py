"""The merge stage: mergekit's `run_merge` over the recipe, parents at their pinned revisions.

The parents are handed to mergekit as absolute local directories (a bare relative path would be
looked up on the Hub); Hub parents are downloaded first at their locked commit.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from publisher.errors import PublisherError
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
    """How to run one merge.

    Attributes:
        device: `"cpu"` or `"cuda"` (mergekit's `cuda` option).
        lazy_unpickle: mergekit's experimental lazy unpickler (low memory for `.bin` parents).
        low_cpu_memory: keep results on the accelerator (VRAM > RAM).
        out_shard_size: bytes per output shard, e.g. `"5B"` or 1_000_000 (mergekit's help
            says parameters, but its writer compares the value with tensor bytes).
        quiet: suppress mergekit's progress bars.
    """

    device: str = "cpu"
    lazy_unpickle: bool = False
    low_cpu_memory: bool = False
    out_shard_size: str | int = "5B"
    quiet: bool = False


def merge_request_for(
    recipe: Recipe, device: str | None = None, settings: MergeSettings | None = None
) -> MergeRequest:
    """The recipe's merge settings (or `settings`), with the `--device` flag taking precedence."""
    settings = settings or recipe.publish.merge
    return MergeRequest(
        device=device or ("cuda" if settings.cuda else "cpu"),
        lazy_unpickle=settings.lazy_unpickle,
        low_cpu_memory=settings.low_cpu_memory,
        out_shard_size=settings.out_shard_size,
    )


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
        quiet=request.quiet,
    )
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    try:
        run_merge(config, str(out_dir), options=options)
    except (RuntimeError, ValueError, OSError, TypeError) as exc:
        raise MergeError(f"mergekit failed: {exc}") from exc
    if not any(out_dir.glob("*.safetensors")):
        raise MergeError(f"mergekit wrote no safetensors into {out_dir}")
    write_mergekit_config(recipe, parents, out_dir)
    return out_dir


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
