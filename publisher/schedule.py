"""The layer-wise t plan: the interpolation factor of every output tensor, from mergekit's planner.

Nothing here evaluates a gradient or a filter itself. `build_plan` hands the recipe's
`MergeConfiguration` to mergekit's own `MergePlanner`, which builds one merge task per output
tensor; the `t` each task carries is the `t` the merge will use. This module only groups those
numbers for people: per layer, per filter group (`self_attn`, `mlp`, the default), and the tensors
outside the layer stack (embeddings, final norm, `lm_head`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from publisher.errors import PublisherError
from publisher.parents import ParentError, ParentInfo, resolved_config
from publisher.recipe import Recipe

DEFAULT_GROUP = "default"


@dataclass
class LayerRow:
    """One output layer of the plan.

    Attributes:
        index: output layer index, 0-based, e.g. 7.
        groups: t per filter group for this layer, e.g. `{"self_attn": 0.35, "mlp": 0.5, "default": 0.5}`.
        tensors: t per output tensor of this layer, e.g. `{"model.layers.7.mlp.up_proj.weight": 0.5}`.
        slice_index: which output slice of the recipe the layer comes from, e.g. 0.
        source_layers: the parents' input layer index for this output layer, e.g. `{"org/a": 7}`.
    """

    index: int
    groups: dict[str, float]
    tensors: dict[str, float] = field(default_factory=dict)
    slice_index: int = 0
    source_layers: dict[str, int] = field(default_factory=dict)


@dataclass
class Plan:
    """What the merge will do, tensor by tensor; serialises to `plan.json`.

    Attributes:
        tensors: t for every tensor the merge writes, in mergekit's planning order,
            e.g. `{"model.embed_tokens.weight": 0.5, ...}`.
        layers: one `LayerRow` per output layer.
        groups: the column names of the layer table in order, e.g. `["self_attn", "mlp", "default"]`.
        outside: t for the tensors outside the layer stack, e.g. `{"lm_head.weight": 0.5}`.
        base_model: the parent that t=0 selects, as written in the recipe.
        parents: the resolved parents, base first.
        architecture: the output architecture, e.g. `"MistralForCausalLM"`.
        num_layers: number of output layers, e.g. 32.
        mergekit_version: version of the planner that produced the numbers, e.g. `"0.1.5"`.
    """

    tensors: dict[str, float]
    layers: list[LayerRow]
    groups: list[str]
    outside: dict[str, float]
    base_model: str
    parents: list[ParentInfo]
    architecture: str
    num_layers: int
    mergekit_version: str
    recipe_sha256: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        data = dict(data)
        data["layers"] = [LayerRow(**row) for row in data["layers"]]
        data["parents"] = [ParentInfo(**p) for p in data["parents"]]
        return cls(**data)

    @classmethod
    def read(cls, path: Path) -> Plan:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def materialize_parents(parents: list[ParentInfo], workdir: Path) -> dict[str, str]:
    """Give mergekit a directory to read for every parent; return `ref -> absolute directory`.

    Local parents are used as they are. A parent known only from its lock gets a stub directory
    holding its `config.json` and a safetensors index of its tensor names: all mergekit's planner
    reads (weights are never touched while planning).
    """
    from mergekit.architecture import arch_info_for_config
    from transformers import AutoConfig

    mapping: dict[str, str] = {}
    for number, parent in enumerate(parents):
        if parent.path:
            mapping[parent.ref] = parent.path
            continue
        stub = Path(workdir) / f"parent-{number}"
        stub.mkdir(parents=True, exist_ok=True)
        config = resolved_config(parent)
        (stub / "config.json").write_text(json.dumps(config), encoding="utf-8")
        names = parent.tensor_names
        if names is None:
            # Unknown (unresolved parent): assume every tensor of its architecture is present.
            hf_config = AutoConfig.from_pretrained(stub)
            arch = arch_info_for_config(hf_config)
            if arch is None:
                raise ParentError(
                    f"parent '{parent.ref}': mergekit knows no architecture for "
                    f"{config.get('architectures')}"
                )
            names = [w.name for w in arch.all_weights(hf_config)]
        weight_map = {name: "model.safetensors" for name in names}
        (stub / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}), encoding="utf-8"
        )
        mapping[parent.ref] = str(stub.resolve())
    return mapping


def rewrite_model_refs(merge: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    """A copy of a mergekit config dict with every model reference replaced through `mapping`.

    Used to hand mergekit absolute local paths (a bare relative path is looked up on the Hub).
    """
    model_keys = {"model", "base_model", "tokenizer_source", "source"}

    def walk(value: Any, key: str | None = None) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, key) for v in value]
        if key in model_keys and isinstance(value, str) and value in mapping:
            return mapping[value]
        return value

    return walk(merge)


def build_plan(recipe: Recipe, parents: list[ParentInfo], workdir: Path | None = None) -> Plan:
    """Plan the recipe's merge with mergekit's `MergePlanner` and group the t values.

    `workdir` holds stub parent directories for parents known only from a lock (a temporary
    directory when not given).
    """
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="publisher-plan-") as tmp:
            return build_plan(recipe, parents, Path(tmp))

    import mergekit
    from mergekit.architecture import ConfiguredModelArchitecture, get_architecture_info
    from mergekit.config import MergeConfiguration
    from mergekit.io.tasks import LoaderCache, SaveTensor
    from mergekit.merge import _model_out_config  # mergekit's own output-config logic
    from mergekit.options import MergeOptions
    from mergekit.plan import MergePlanner

    check_layer_ranges(recipe, parents)
    mapping = materialize_parents(parents, workdir)
    config = MergeConfiguration.model_validate(rewrite_model_refs(recipe.merge, mapping))
    options = MergeOptions(quiet=True)
    try:
        arch_info = get_architecture_info(config, options)
        LoaderCache().setup(options)
        out_config = _model_out_config(config, arch_info)
        planner = MergePlanner(config, arch_info, options, out_model_config=out_config)
        # plan_to_disk only builds the task graph (nothing runs or writes until an executor
        # does); mergekit 0.1.5's plan_in_memory cannot build its ReturnTensor tasks.
        tasks = planner.plan_to_disk(out_path=str(Path(workdir) / "unused-output"))
    except (RuntimeError, ValueError, KeyError) as exc:
        raise PlanError(f"mergekit cannot plan this recipe: {exc}") from None

    tensors: dict[str, float] = {}
    for task in tasks:
        if isinstance(task, SaveTensor):
            tensors[task.tensor_name] = float(task.tensor_task.parameters["t"])

    configured = ConfiguredModelArchitecture(info=arch_info, config=out_config)
    module_names = list(arch_info.modules)
    group_filters = t_filters(recipe.merge)
    groups = [*group_filters, DEFAULT_GROUP]
    original = recipe.merge_configuration()  # the planner rewrites `config` into modules
    slice_spans = _slice_spans(original)
    layers: list[LayerRow] = []
    in_layers: set[str] = set()
    for module_name in module_names:
        module = configured.get_module(module_name)
        for index in range(module.num_layers()):
            names = [w.name for w in module.layer_weights(index) if w.name in tensors]
            in_layers.update(names)
            layer_tensors = {n: tensors[n] for n in names}
            slice_index, offset = slice_spans[index] if index < len(slice_spans) else (0, 0)
            if original.slices:
                sources = original.slices[slice_index].sources
                source_layers = {str(s.model): s.layer_range[0] + offset for s in sources}
            else:
                source_layers = {str(m.model): index for m in original.models or []}
            layers.append(
                LayerRow(
                    index=index,
                    groups=_group_values(layer_tensors, group_filters),
                    tensors=layer_tensors,
                    slice_index=slice_index,
                    source_layers=source_layers,
                )
            )
    outside = {n: t for n, t in tensors.items() if n not in in_layers}
    used_groups = [g for g in groups if any(g in row.groups for row in layers)]
    base = recipe.base_model
    return Plan(
        tensors=tensors,
        layers=layers,
        groups=used_groups,
        outside=outside,
        base_model=base,
        parents=parents,
        architecture=(
            arch_info.name()
            if hasattr(arch_info, "name")
            else str(resolved_config(parents[0]).get("architectures", ["?"])[0])
        ),
        num_layers=len(layers),
        mergekit_version=getattr(mergekit, "__version__", None) or _dist_version("mergekit"),
        recipe_sha256=recipe.sha256,
    )


class PlanError(PublisherError):
    """mergekit could not plan the recipe; the message says why."""


def check_layer_ranges(recipe: Recipe, parents: list[ParentInfo]) -> None:
    """Refuse a `layer_range` that runs past a parent's layers.

    mergekit plans such a slice without complaint (it only fails when the merge reads the
    missing tensors), so the preview card would show layers that cannot exist.
    """
    layers_of = {p.ref: (p.config or {}).get("num_hidden_layers") for p in parents}
    for number, slice_ in enumerate(recipe.merge_configuration().slices or []):
        for source in slice_.sources:
            ref = str(source.model)
            total = layers_of.get(ref)
            start, end = source.layer_range
            if isinstance(total, int) and end > total:
                raise PlanError(
                    f"slice {number}: layer_range [{start}, {end}] of '{ref}' runs past its "
                    f"{total} layers (num_hidden_layers in its config.json); end the range "
                    f"at {total} or less"
                )


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def t_filters(merge: dict[str, Any]) -> list[str]:
    """The filters written for `t` anywhere in the recipe, in order of first appearance.

    These only name the columns of the layer table; the values come from the planner.
    """
    found: list[str] = []

    def collect(setting: Any) -> None:
        if isinstance(setting, dict) and "filter" in setting:
            setting = [setting]
        if isinstance(setting, list):
            for entry in setting:
                if isinstance(entry, dict) and entry.get("filter") not in (None, "*"):
                    name = str(entry["filter"])
                    if name not in found:
                        found.append(name)

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            params = value.get("parameters")
            if isinstance(params, dict) and "t" in params:
                collect(params["t"])
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(merge)
    return found


def group_of(name: str, filters: list[str]) -> str:
    # Label a tensor by the first recipe filter its name contains (the table's columns).
    for f in filters:
        if f in name:
            return f
    return DEFAULT_GROUP


def _group_values(layer_tensors: dict[str, float], filters: list[str]) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    for name, t in layer_tensors.items():
        values.setdefault(group_of(name, filters), []).append(t)
    # Within one group mergekit gives every tensor the same t unless per-source settings
    # differ; show the mean then (each tensor's exact t is in `tensors`).
    ordered = [*filters, DEFAULT_GROUP]
    return {
        g: (values[g][0] if len(set(values[g])) == 1 else sum(values[g]) / len(values[g]))
        for g in ordered
        if g in values
    }


def _slice_spans(config) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for slice_index, out_slice in enumerate(config.slices or []):
        start, end = out_slice.sources[0].layer_range
        spans.extend((slice_index, offset) for offset in range(end - start))
    return spans


def write_plan(plan: Plan, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(plan.to_json(), encoding="utf-8")
    return path


def plan_contract(plan: Plan) -> dict[str, Any]:
    """The JSON printed by `publisher plan --json` (the documented contract plus extras)."""
    data = asdict(plan)
    for row in data["layers"]:
        row.pop("tensors", None)
    return data


def format_plan_text(recipe: Recipe, plan: Plan) -> str:
    """The plan as `publisher plan` prints it: the parents, then t per layer and group."""
    lines = [
        f"{recipe.path}: SLERP -> {recipe.repo_id} ({plan.architecture}, {plan.num_layers} layers)"
    ]
    for parent in plan.parents:
        rev = parent.revision[:12] if parent.revision else "unresolved"
        role = "base (t=0)" if parent.is_base else "other (t=1)"
        lines.append(f"  {role:12} {parent.ref} @ {rev}")
    width = max(9, *(len(g) for g in plan.groups))
    lines.append("  layer  " + "  ".join(f"{g:>{width}}" for g in plan.groups))
    for row in plan.layers:
        cells = "  ".join(
            f"{row.groups[g]:>{width}.3f}" if g in row.groups else f"{'-':>{width}}"
            for g in plan.groups
        )
        lines.append(f"  {row.index:>5}  {cells}")
    for name, t in plan.outside.items():
        lines.append(f"  {name}: t={t:.3f}")
    return "\n".join(lines)


def format_plan_markdown(recipe: Recipe, plan: Plan) -> str:
    """The plan as a Markdown table (the job summary of `publisher plan`)."""
    head = "| layer | " + " | ".join(plan.groups) + " |"
    rule = "|---:|" + "---:|" * len(plan.groups)
    rows = [
        f"| {row.index} | "
        + " | ".join(f"{row.groups[g]:.3f}" if g in row.groups else "-" for g in plan.groups)
        + " |"
        for row in plan.layers
    ]
    outside = [f"| `{name}` | {t:.3f} |" for name, t in plan.outside.items()]
    return "\n".join(
        [
            f"### Plan for `{recipe.path}` → `{recipe.repo_id}`",
            "",
            head,
            rule,
            *rows,
            "",
            "| tensor outside the layer stack | t |",
            "|---|---:|",
            *outside,
            "",
        ]
    )
