"""The parents of a merge: where they are, at which revision, and what their config says.

A parent is a local directory or a Hub repo id. `resolve_parents` turns each reference in a recipe
into a `ParentInfo` with its `config.json`, tensor names, license and pinned revision, from (in
this order) a local directory, the recipe's lock file, or the Hub (only `config.json` and the
safetensors headers are fetched). `write_lock` records them in `recipes/<name>.lock.json`, so plan
and card work offline and the merge later uses exactly those revisions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from publisher.digests import sha256_file
from publisher.errors import PublisherError
from publisher.recipe import Recipe
from publisher.recipe_yaml import Problem
from publisher.upload import MODEL_FILES

LOCK_VERSION = 1
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# A file a merge reads from a parent: a plain name at the root, no glob or path characters, so
# it can neither widen a download filter nor point outside the parent's directory.
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


@dataclass
class ParentInfo:
    """One parent model of the merge.

    Attributes:
        ref: the reference as the recipe writes it, e.g. `"Gille/StrangeMerges_30-7B-slerp"`.
        source: `"local"` (a directory) or `"hub"` (a repo id).
        revision: the pinned revision: a Hub commit SHA, or for a local directory the sha256 of
            its config and weight files; `None` when unresolved.
        resolved: whether `revision` and `config` come from the parent itself.
        config: the parent's `config.json` (or, for an unresolved parent, the architecture the
            lock declares; see `note`).
        tensor_names: the parent's tensor names, or `None` when unknown (then every tensor of the
            architecture is assumed present).
        license: the parent's license id from its card, e.g. `"apache-2.0"`, if known.
        is_base: whether this is the recipe's `base_model` (t=0).
        note: why a parent is unresolved or where its data came from.
        path: absolute directory for a local parent.
    """

    ref: str
    source: str
    revision: str | None
    resolved: bool
    config: dict[str, Any] | None
    tensor_names: list[str] | None = None
    license: str | None = None
    is_base: bool = False
    note: str = ""
    path: str | None = None

    @property
    def hub_url(self) -> str | None:
        if self.source != "hub":
            return None
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        return f"{endpoint}/{self.ref}"


class ParentError(PublisherError):
    """A parent cannot be resolved or merged; the message says which and what to do.

    Built from a `Problem` when one recipe line is at fault (`ParentError.at(...)`), so that
    the failure is annotated on that line like a recipe error.
    """

    @classmethod
    def at(cls, problem: Problem) -> ParentError:
        error = cls(str(problem))
        error.problems = (problem,)
        return error


def _local_candidate(ref: str, recipe_dir: Path) -> Path:
    # A relative path is relative to the recipe, as mergekit would not know.
    return (recipe_dir / Path(ref).expanduser()).resolve()


def _is_local(ref: str, recipe_dir: Path) -> Path | None:
    candidate = _local_candidate(ref, recipe_dir)
    return candidate if candidate.is_dir() else None


def _path_like(ref: str) -> bool:
    # A Hub id is `name` or `namespace/name` (optionally `@revision`); anything else is a path.
    repo_part = ref.partition("@")[0]
    return ref.startswith(("/", "./", "../", "~")) or repo_part.count("/") > 1


def _missing_local_parent(ref: str, recipe_dir: Path) -> str:
    return (
        f"'{ref}' looks like a local directory, but {_local_candidate(ref, recipe_dir)} does "
        "not exist; build or download the model there, or reference it by its Hub repo id"
    )


def local_revision(path: Path) -> str:
    """A content hash of a local parent: its config and weight files, by name and bytes.

    Per-file digests come from `publisher.digests`, so big parents are read once per version.
    """
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if (
            file.name == "config.json"
            or file.suffix in (".safetensors", ".bin")
            or file.name.endswith(".index.json")
        ):
            digest.update(file.name.encode())
            digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def local_tensor_names(path: Path) -> list[str]:
    """Tensor names of a local model directory, from its safetensors headers or index, else
    from its pickle weights (read with torch's weights-only loader, which runs no code)."""
    from safetensors import safe_open

    for index in (path / SAFETENSORS_INDEX, path / PICKLE_INDEX):
        if index.exists():
            return sorted(json.loads(index.read_text())["weight_map"])
    names: list[str] = []
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            names.extend(fh.keys())
    return sorted(names) or sorted(load_pickle_weights(path, device="meta"))


def load_pickle_weights(path: Path, device: str = "cpu") -> dict[str, Any]:
    """The tensors of the root pickle weights of `path` (`*.bin`, ...), by name.

    `torch.load(weights_only=True)` unpickles tensors and plain containers only, never code,
    and `mmap` leaves the bytes on disk until a tensor is read.
    """
    import torch

    tensors: dict[str, Any] = {}
    for file in sorted(f for f in path.iterdir() if f.name.endswith(PICKLE_SUFFIXES)):
        if file.name.startswith("consolidated"):
            continue  # Mistral's duplicate of the same weights
        try:
            data = torch.load(file, map_location=device, weights_only=True, mmap=device != "meta")
        except Exception as exc:  # torch says why in many exception types
            raise ParentError(f"{file} is not a weights-only PyTorch file ({exc})") from None
        tensors.update(data.get("state_dict", data) if isinstance(data, dict) else {})
    return tensors


def _card_license(readme: Path) -> str | None:
    if not readme.exists():
        return None
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(readme).data.license
    except Exception:  # an unparsable parent card just means "license unknown"
        return None


def _resolve_local(ref: str, path: Path, is_base: bool) -> ParentInfo:
    config_file = path / "config.json"
    if not config_file.exists():
        raise ParentError(
            f"parent '{ref}' ({path}) has no config.json; point the recipe at a "
            "model directory saved with save_pretrained"
        )
    return ParentInfo(
        ref=ref,
        source="local",
        revision=local_revision(path),
        resolved=True,
        config=json.loads(config_file.read_text(encoding="utf-8")),
        tensor_names=local_tensor_names(path),
        license=_card_license(path / "README.md"),
        is_base=is_base,
        note="local directory",
        path=str(path),
    )


def _resolve_hub(ref: str, is_base: bool, revision: str | None = None) -> ParentInfo:
    """Fetch a Hub parent's commit SHA, config.json, tensor names and license (no weights)."""
    from huggingface_hub import HfApi, hf_hub_download

    repo_id, _, rev = ref.partition("@")
    api = HfApi()
    info = api.model_info(repo_id, revision=revision or rev or None)
    sha = info.sha
    config_path = hf_hub_download(repo_id, "config.json", revision=sha)
    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    tensor_names: list[str] | None = None
    try:
        meta = api.get_safetensors_metadata(repo_id, revision=sha)
        tensor_names = sorted(name for fm in meta.files_metadata.values() for name in fm.tensors)
    except Exception:  # no safetensors: leave names unknown rather than guess
        tensor_names = None
    license_id = None
    card_data = getattr(info, "card_data", None)
    if card_data is not None:
        license_id = getattr(card_data, "license", None)
    return ParentInfo(
        ref=ref,
        source="hub",
        revision=sha,
        resolved=True,
        config=config,
        tensor_names=tensor_names,
        license=license_id,
        is_base=is_base,
        note="resolved on the Hub",
    )


# ---------------------------------------------------------------------------------------------
# the checks every parent passes, local directory or Hub repo


def parent_files(
    ref: str, files: list[str], read_index: Callable[[str], Any]
) -> tuple[list[str], bool]:
    """The files of parent `ref` a merge reads, and whether its weights are pickles.

    `files` lists the parent's files (repo paths, or names in its directory). Root-level files
    only: config, tokenizer and chat template, and one copy of the weights: the shards an index
    lists (`read_index(name)` returns the index's JSON), else the root `*.safetensors` files other
    than a `consolidated.*` duplicate (Mistral's repos ship both), else, the same way, the pickle
    weights (`.bin`, which `check_weights` may refuse). Raises `ParentError` when an index names
    a shard that is not a plain file of the parent, or a safetensors index names a pickle.
    """
    root = [f for f in files if FILE_NAME.fullmatch(f)]
    wanted = [f for f in MODEL_FILES if f in root]
    wanted += sorted(f for f in root if f.endswith(".tiktoken"))

    def weights(index: str, suffixes: tuple[str, ...]) -> list[str]:
        if index in root:
            return [index, *_index_shards(ref, index, read_index(index), root, suffixes)]
        return sorted(f for f in root if f.endswith(suffixes) and not f.startswith("consolidated"))

    safetensors = weights(SAFETENSORS_INDEX, (".safetensors",))
    if safetensors:
        return wanted + safetensors, False
    return wanted + weights(PICKLE_INDEX, PICKLE_SUFFIXES), True


def _index_shards(
    ref: str, index: str, data: Any, root: list[str], suffixes: tuple[str, ...]
) -> list[str]:
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ParentError(f"parent '{ref}': {index} has no weight_map; re-save the model")
    shards = sorted({str(shard) for shard in weight_map.values()})
    for shard in shards:
        if not FILE_NAME.fullmatch(shard) or shard not in root:
            raise ParentError(
                f"parent '{ref}': {index} names the shard {shard!r}, which is not a file at the "
                "root of the model; only the model's own shard files may be listed there"
            )
        if not shard.endswith(suffixes):
            raise ParentError(
                f"parent '{ref}': {index} names {shard!r}, not a {suffixes[0]} file; a "
                "safetensors index must not lead to pickle weights (set allow_pickle and ship "
                f"{PICKLE_INDEX} if the weights really are pickles)"
            )
    return shards


def check_remote_code(recipe: Recipe, ref: str, configs: dict[str, Any]) -> None:
    """Refuse a parent whose config or tokenizer config (`{file name: JSON}`) needs remote code.

    transformers runs a model's own Python when `auto_map` names it and remote code is trusted.
    """
    needs = sorted(name for name, data in configs.items() if (data or {}).get("auto_map"))
    if needs and not recipe.publish.trust_remote_code:
        raise ParentError(
            f"parent '{ref}' needs remote code ({', '.join(needs)} has auto_map); "
            "set 'publish: {trust_remote_code: true}' only if you trust it"
        )


def check_weights(recipe: Recipe, ref: str, wanted: list[str], pickled: bool) -> None:
    """Refuse a parent with no weights, or with pickle weights the recipe does not allow."""
    if not any(f.endswith((".safetensors", *PICKLE_SUFFIXES)) for f in wanted):
        raise ParentError(
            f"parent '{ref}' has no weight files at its root; is it a model saved with "
            "save_pretrained?"
        )
    if pickled and not recipe.publish.allow_pickle:
        raise ParentError(
            f"parent '{ref}' has no safetensors weights, only pickle files, which can "
            "run code when loaded; set 'publish: {allow_pickle: true}' to accept them"
        )


def check_parent_dir(recipe: Recipe, ref: str, path: Path) -> Path:
    """`path`, after the checks every parent passes on the files a merge will read there.

    A local parent is checked in its directory; a Hub parent in the snapshot just downloaded.
    """

    def read_json(name: str) -> Any:
        try:
            return json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ParentError(f"parent '{ref}': {path / name} is unreadable ({exc})") from None

    names = [entry.name for entry in path.iterdir() if entry.is_file()]
    wanted, pickled = parent_files(ref, names, read_json)
    check_weights(recipe, ref, wanted, pickled)
    configs = ("config.json", "tokenizer_config.json")
    check_remote_code(recipe, ref, {name: read_json(name) for name in configs if name in names})
    return path


def read_lock(recipe: Recipe) -> dict[str, ParentInfo]:
    """The parents recorded in the recipe's lock file (empty when there is none)."""
    path = recipe.lock_path
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {ref: ParentInfo(**entry) for ref, entry in data["parents"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise ParentError(
            f"{path}: unreadable lock file ({exc}); delete it and run "
            f"'publisher lock {recipe.path}'"
        ) from None


def resolve_parents(
    recipe: Recipe, *, use_lock: bool = True, online: bool | None = None
) -> list[ParentInfo]:
    """Resolve every parent of `recipe`, base model first.

    Local directories are read directly; Hub parents come from the lock when it has them, else
    from the Hub when online. Raises `ParentError` naming every parent that cannot be resolved,
    or the fields of config.json the parents must share and do not (`check_compatible`):
    so parents SLERP cannot merge are refused before any weight is downloaded.
    """
    if online is None:
        online = not _offline()
    recipe_dir = recipe.path.parent.resolve()
    locked = read_lock(recipe) if use_lock else {}
    base = recipe.base_model
    parents: list[ParentInfo] = []
    missing: list[str] = []
    for ref in recipe.model_refs():
        is_base = ref == base
        local = _is_local(ref, recipe_dir)
        if local is not None:
            parents.append(_resolve_local(ref, local, is_base))
        elif _path_like(ref):
            missing.append(_missing_local_parent(ref, recipe_dir))
        elif ref in locked and locked[ref].config is not None:
            entry = locked[ref]
            entry.is_base = is_base
            parents.append(entry)
        elif "/" not in ref.partition("@")[0] and not online:
            missing.append(f"'{ref}' is neither a directory (relative to {recipe_dir}) nor locked")
        elif online:
            try:
                parents.append(_resolve_hub(ref, is_base))
            except Exception as exc:
                missing.append(f"'{ref}': the Hub lookup failed ({type(exc).__name__}: {exc})")
        else:
            missing.append(
                f"'{ref}' is a Hub repo, this machine is offline and "
                f"{recipe.lock_path.name} does not lock it"
            )
    if missing:
        raise ParentError(
            "cannot resolve the parents: "
            + "; ".join(missing)
            + f". Run 'publisher lock {recipe.path}' where the Hub is reachable, "
            "or point the recipe at local directories."
        )
    check_compatible(recipe, parents)
    return parents


_SAME_SHAPES = "SLERP blends tensors of the same shapes; merge two fine-tunes of one base model"
MUST_SHARE: tuple[tuple[str, str], ...] = (
    (
        "architectures",
        "SLERP needs two models of the same architecture; pick parents of one family",
    ),
    (
        "vocab_size",
        "SLERP needs one vocabulary; merge parents that share a tokenizer, or resize one "
        "parent's embeddings to the other's vocabulary first",
    ),
    ("hidden_size", _SAME_SHAPES),
    ("intermediate_size", _SAME_SHAPES),
    ("num_attention_heads", _SAME_SHAPES),
    ("num_key_value_heads", _SAME_SHAPES),
    ("head_dim", _SAME_SHAPES),
    (
        # A tied parent stores no lm_head: mergekit would blend the untied parent's lm_head
        # with the tied one's embeddings, a pairing neither parent was trained with.
        "tie_word_embeddings",
        "SLERP needs both parents to tie their output layer to the input embeddings, or "
        "neither; merge two fine-tunes of one base model",
    ),
)
"""config.json fields two SLERP parents must share, each with what to do when they differ."""


def shared_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The `MUST_SHARE` fields of a parent's config.json, defaults filled in.

    transformers' config class for the `model_type` fills in what the file leaves out (a
    Llama's `head_dim` is `hidden_size / num_attention_heads` unless written); a config
    transformers cannot read is compared as written.
    """
    from transformers import AutoConfig

    try:
        full = AutoConfig.for_model(config["model_type"], **config).to_dict()
    except Exception:  # unknown model type, remote code, a field transformers refuses
        full = config
    return {key: full.get(key) for key, _ in MUST_SHARE}


def check_compatible(recipe: Recipe, parents: list[ParentInfo]) -> None:
    """Refuse parents SLERP cannot merge, from their config.json alone (no weights needed).

    Raises `ParentError` with one `FILE:LINE:COL:` line at the other parent in the recipe,
    naming both parents, every field that differs with both values, and what to do.
    """
    known = [p for p in parents if p.config is not None]
    base = next((p for p in known if p.is_base), None)
    for other in known:
        if base is None or other is base:
            continue
        ours, theirs = shared_fields(base.config or {}), shared_fields(other.config or {})
        differ = [key for key, _ in MUST_SHARE if ours[key] != theirs[key]]
        if not differ:
            continue
        listing = ", ".join(
            f"{key} ({json.dumps(ours[key])} vs {json.dumps(theirs[key])})" for key in differ
        )
        hint = dict(MUST_SHARE)[differ[0]]
        message = (
            f"parents '{base.ref}' and '{other.ref}' differ in {listing}, by their "
            f"config.json; {hint}"
        )
        raise ParentError.at(recipe.model_problem(other.ref, message))


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def lock_parents(recipe: Recipe, *, online: bool | None = None) -> list[ParentInfo]:
    """Resolve each parent afresh where possible, keeping old lock entries that cannot be redone.

    An entry that cannot be resolved (offline, Hub unreachable) stays as the lock had it, or, if
    the lock had none, is recorded as unresolved with no revision: SHAs are never invented.
    """
    if online is None:
        online = not _offline()
    recipe_dir = recipe.path.parent.resolve()
    locked = read_lock(recipe)
    base = recipe.base_model
    parents = []
    for ref in recipe.model_refs():
        is_base = ref == base
        local = _is_local(ref, recipe_dir)
        if local is not None:
            parents.append(_resolve_local(ref, local, is_base))
            continue
        if _path_like(ref):
            raise ParentError(_missing_local_parent(ref, recipe_dir))
        if online:
            try:
                parents.append(_resolve_hub(ref, is_base))
                continue
            except Exception as exc:
                reason = f"Hub lookup failed: {type(exc).__name__}: {exc}"
        else:
            reason = "offline when locked"
        if ref in locked:
            entry = locked[ref]
            entry.is_base = is_base
            parents.append(entry)
        else:
            parents.append(
                ParentInfo(
                    ref=ref,
                    source="hub",
                    revision=None,
                    resolved=False,
                    config=None,
                    is_base=is_base,
                    note=reason,  # why; the advice is the caller's to give, once
                )
            )
    return parents


def write_lock(recipe: Recipe, parents: list[ParentInfo]) -> Path:
    """Write `recipes/<name>.lock.json` for `recipe`."""
    data = {
        "lock_version": LOCK_VERSION,
        "recipe": recipe.path.name,
        "recipe_sha256": recipe.sha256,
        "parents": {p.ref: {k: v for k, v in asdict(p).items() if k != "is_base"} for p in parents},
    }
    path = recipe.lock_path
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def resolved_config(parent: ParentInfo) -> dict[str, Any]:
    if parent.config is None:
        raise ParentError(
            f"parent '{parent.ref}' has no config.json in the lock; run "
            "'publisher lock' where the Hub is reachable"
        )
    return parent.config


__all__ = [
    "ParentError",
    "check_compatible",
    "check_parent_dir",
    "check_remote_code",
    "check_weights",
    "parent_files",
    "ParentInfo",
    "lock_parents",
    "read_lock",
    "resolve_parents",
    "write_lock",
]
