"""The card's view model: every string the templates show, computed here, and written as JSON.

`build_view` turns the card's inputs (recipe, plan, reports) into a `CardView` of ready-made
strings; the Jinja2 templates in `templates/` only arrange them. The view is also the record of
what the card says: `publisher.card` writes it as `card.json` beside `README.md`, and verify
checks that data against the reports it came from, whatever headings a custom template uses.

The smoke-test and evaluation sections are built in `publisher.cardreports`, which verify also
uses to compute what a view should hold from `smoke.json` and `eval/results.json`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from publisher.cardreports import (
    EvalView,
    SmokeView,
    eval_view,
    fence,
    installed_version,
    smoke_view,
)
from publisher.evalresults import EvalSummary
from publisher.parents import ParentInfo
from publisher.recipe import Recipe
from publisher.recipe_paths import is_chat_template_path
from publisher.rundir import IMAGE_NAME, RunDir
from publisher.schedule import DEFAULT_GROUP, Plan, group_of
from publisher.smoke import SmokeReport
from publisher.weights import NEAR_T, WeightReport

VIEW_VERSION = 1
MERGEKIT_CONFIG = "mergekit_config.yml"
"""What `publisher.merge` writes beside the weights (parents pinned as `repo@sha`)."""
REPORTS = "publisher"
"""The model repo's folder of run records (`publisher.upload.REPORTS_DIR`)."""
BAR_CELLS = 10
"""Width of the inline t bars, in characters."""
VERSIONED_PACKAGES = ("publisher", "transformers", "torch", "huggingface_hub", "lm-eval")
"""Packages whose installed versions the reproducibility section lists (mergekit's comes from the plan)."""
_EIGHTHS = ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")
_FULL = "█"
_EMPTY = "░"


@dataclass
class CardInputs:
    """Everything the card shows.

    Attributes:
        recipe: the validated recipe (its text is shown verbatim, its `publish` block gives
            license, tags, language and description).
        plan: the layer-wise t plan, with the resolved parents.
        smoke: the smoke-test report, or `None` when the smoke stage did not run (then the card
            has no smoke-test section).
        evaluation: the merge's evaluation summary, or `None` (then no evaluation section).
        eval_results: the `model-index` entries (the merge's numbers only), e.g.
            `[EvalResult(task_type="text-generation", dataset_type="ai2_arc", ...)]`, or `None`.
        parent_evaluations: each parent's summary on the same suite and settings, by parent
            ref, e.g. `{"org/base": EvalSummary(...)}`; empty when the parents were not evaluated.
        model: what the merged model's files say (context length, prompt format, shards), or
            `None` before the merge.
        eval_commands: the `lm_eval` command lines that reproduce the evaluation.
        extra_warnings: more warnings to show in the card's warning block.
        weights: the weight check's report, or `None` when it did not run (then the card says
            nothing about what the weights can show).
    """

    recipe: Recipe
    plan: Plan
    smoke: SmokeReport | None = None
    evaluation: EvalSummary | None = None
    eval_results: list[Any] | None = None
    parent_evaluations: dict[str, EvalSummary] = field(default_factory=dict)
    model: ModelFacts | None = None
    eval_commands: list[str] = field(default_factory=list)
    extra_warnings: list[str] = field(default_factory=list)
    weights: WeightReport | None = None


@dataclass
class ShardView:
    """One published weight file and its sha256, e.g. `name="model.safetensors"`."""

    name: str
    sha256: str


@dataclass
class ModelFacts:
    """What the merged model's own files say.

    Attributes:
        context_length: `max_position_embeddings` of `config.json`, e.g. 32768, or `None`.
        prompt_format: e.g. `"the chat template in tokenizer_config.json (ChatML)"`.
        shards: the weight files with their sha256.
    """

    context_length: int | None
    prompt_format: str
    shards: list[ShardView] = field(default_factory=list)


def read_model_facts(model_dir: Path) -> ModelFacts:
    """Context length, prompt format and weight files of a merged model directory."""
    from publisher.digests import sha256_file

    model_dir = Path(model_dir)
    config = _json_file(model_dir / "config.json")
    length = config.get("max_position_embeddings")
    tokenizer = _json_file(model_dir / "tokenizer_config.json")
    template = tokenizer.get("chat_template")
    if (model_dir / "chat_template.jinja").is_file():
        template = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if not template:
        prompt_format = "plain text (the tokenizer has no chat template)"
    else:
        style = next((name for mark, name in _TEMPLATE_STYLES if mark in str(template)), None)
        prompt_format = "the tokenizer's chat template" + (f" ({style})" if style else "")
    shards = [
        ShardView(file.name, sha256_file(file)) for file in sorted(model_dir.glob("*.safetensors"))
    ]
    return ModelFacts(length if isinstance(length, int) else None, prompt_format, shards)


_TEMPLATE_STYLES = (
    ("<|im_start|>", "ChatML"),
    ("[INST]", "Mistral/Llama-2 [INST]"),
    ("<|start_header_id|>", "Llama 3"),
    ("<start_of_turn>", "Gemma"),
)


def _json_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------------------------------
# The view the templates see: ready-made strings, no arithmetic left for the template.


@dataclass
class ParentView:
    """One parent as the card lists it.

    Attributes:
        name: a short name, e.g. `"tiny-base"` or `"Gille/StrangeMerges_30-7B-slerp"`.
        ref: the reference as the recipe writes it.
        url: a link that resolves on whatever Hub serves the card, e.g.
            `"/Gille/StrangeMerges_30-7B-slerp"`, or `None` for a local directory.
        role: `"base (t = 0)"` or `"merged in (t = 1)"`.
        revision: the pinned revision, or `"not pinned"`.
        revision_kind: what the revision is, e.g. `"commit"` or `"content sha256"`.
        resolved: whether the revision was pinned.
        license: the parent's license id, or `"unknown"`.
    """

    name: str
    ref: str
    url: str | None
    role: str
    revision: str
    revision_kind: str
    resolved: bool
    license: str


@dataclass
class TCell:
    """One t value, e.g. `value="0.433"`, `bar="████▍░░░░░"`."""

    value: str
    bar: str


@dataclass
class LayerView:
    """One row of the layer table.

    Attributes:
        index: output layer index, e.g. 3.
        cells: one `TCell` per varying group, in `CardView.groups` order (`"n/a"` when the
            layer has none).
        sources: the parents' input layers, e.g. `"3 / 3"` (in `CardView.parents` order).
    """

    index: int
    cells: list[TCell]
    sources: str


@dataclass
class GroupView:
    """A tensor group of the plan and the tensors it covers.

    Attributes:
        name: the recipe filter, or `"default"`, e.g. `"self_attn"`.
        covers: the kinds of tensor in it, e.g. `"self_attn.q_proj, self_attn.k_proj"`.
        constant: the one t every layer gives the group, or `None` when it varies (then it is
            a column of the layer table).
    """

    name: str
    covers: str
    constant: TCell | None = None


@dataclass
class OutsideView:
    """A tensor outside the layer stack, e.g. `name="lm_head.weight"`."""

    name: str
    cell: TCell


@dataclass
class FactView:
    """One row of the reproducibility table, e.g. `label="torch"`, `value="2.13.0"`."""

    label: str
    value: str


@dataclass
class ObservabilityView:
    """Checked tensors whose weights cannot show t, e.g. `tensors=1, checked=39,
    dtype="bfloat16", near="0.05"` (a t `near` away would store the same values)."""

    tensors: int
    checked: int
    dtype: str
    near: str


@dataclass
class CardView:
    """All the card shows, as strings ready to print (written as `card.json`).

    Attributes:
        repo_id: e.g. `"publisher-demo/tiny-demo-slerp"`.
        title: the repo name, e.g. `"tiny-demo-slerp"`.
        description: the recipe's description or a sentence naming the parents.
        license: the card's license id, e.g. `"apache-2.0"`.
        parents: base first.
        groups: the layer table's columns (groups whose t varies), in `Plan.groups` order.
        constant_groups: groups with one t in every layer, said in a sentence.
        same_layers: whether every output layer comes from the same layer of both parents
            (then the table has no source-layer column).
        sources_header: the header of the source-layer column.
        layers: one row per output layer.
        outside: the tensors outside the layer stack.
        image: the picture's relative path, e.g. `"schedule.png"`.
        image_alt: its alt text.
        recipe_file: the recipe's file name, e.g. `"tiny-demo-slerp.yaml"`.
        recipe_yaml: the recipe text, verbatim, without a trailing newline.
        recipe_fence: a code fence longer than any backtick run in the recipe.
        usage_messages: a Python literal for the usage snippet's `messages`.
        usage_dtype: a Python expression for the usage snippet's `dtype`, e.g. `"torch.float32"`.
        context_length: e.g. `"32768 tokens"`, or `None` when unknown.
        prompt_format: e.g. `"the chat template in tokenizer_config.json"`, or `None`.
        shards: the weight files with their sha256 (after the merge).
        merge_command: the one command that merges again, e.g.
            `"mergekit-yaml mergekit_config.yml ./merged"`.
        eval_commands: the `lm_eval` command lines that evaluate again.
        records: links to the published records, e.g. `label="merge plan"`,
            `value="publisher/plan.json"` (paths in the model repo).
        facts: the reproducibility table.
        smoke: the smoke-test section, or `None`.
        evaluation: the evaluation section, or `None`.
        model_index: whether the front matter has a `model-index` (evaluation results).
        warnings: shown in a warning block near the top, e.g. license conflicts.
        notes: the human-written text between the notes markers.
        t_not_observable: the tensors whose weights cannot show t, or `None` when every checked
            tensor shows it (or the weight check did not run).
    """

    repo_id: str
    title: str
    description: str
    license: str
    parents: list[ParentView]
    groups: list[GroupView]
    constant_groups: list[GroupView]
    same_layers: bool
    sources_header: str
    layers: list[LayerView]
    outside: list[OutsideView]
    image: str
    image_alt: str
    recipe_file: str
    recipe_yaml: str
    recipe_fence: str
    usage_messages: str
    usage_dtype: str
    context_length: str | None
    prompt_format: str | None
    shards: list[ShardView]
    merge_command: str
    eval_commands: list[str]
    records: list[FactView]
    facts: list[FactView]
    smoke: SmokeView | None
    evaluation: EvalView | None
    model_index: bool
    warnings: list[str]
    notes: str
    t_not_observable: ObservabilityView | None = None

    def to_json(self, front_matter: str, templates: str) -> str:
        """The view as `card.json`: the view, the front matter's YAML and the templates used."""
        record = {
            "version": VIEW_VERSION,
            "templates": templates,
            "front_matter": front_matter,
            "view": asdict(self),
        }
        return json.dumps(record, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CardView:
        """Rebuild a view from its JSON form (`card.json`'s `view`), checking every field's type."""
        from pydantic import TypeAdapter

        return TypeAdapter(cls).validate_python(data)


# ---------------------------------------------------------------------------------------------
# Building the view


def t_bar(t: float, cells: int = BAR_CELLS) -> str:
    """A bar of `cells` characters for t in [0, 1]: full blocks, one eighth block, then '░'.

    For example `t_bar(0.433)` is `"████▍░░░░░"`.
    """
    eighths = round(min(max(t, 0.0), 1.0) * cells * 8)
    full, rest = divmod(eighths, 8)
    bar = _FULL * full + _EIGHTHS[rest]
    return bar + _EMPTY * (cells - len(bar))


def format_t(t: float) -> str:
    """t to 3 decimals, e.g. `"0.433"` (never `"-0.000"`)."""
    value = f"{t:.3f}"
    return "0.000" if value == "-0.000" else value


def t_cell(t: float) -> TCell:
    return TCell(value=format_t(t), bar=t_bar(t))


def build_view(
    inputs: CardInputs, license_id: str, warnings: list[str], notes: str, model_index: bool
) -> CardView:
    """Compute every string the templates show."""
    recipe, plan = inputs.recipe, inputs.plan
    parents = [_parent_view(p) for p in plan.parents]
    base = next((p for p in parents if p.role.startswith("base")), parents[0] if parents else None)
    others = [p.name for p in parents if p is not base]
    description = recipe.publish.description or (
        f"A SLERP merge of {', '.join(others) or 'the parents'} into "
        f"{base.name if base else 'its base model'}, made with mergekit."
    )
    filters = [g for g in plan.groups if g != DEFAULT_GROUP]
    constants = {g: _constant(plan, g) for g in plan.groups}
    varying = [g for g in plan.groups if constants[g] is None]
    layers = [
        LayerView(
            index=row.index,
            cells=[t_cell(row.groups[g]) if g in row.groups else TCell("n/a", "") for g in varying],
            sources=" / ".join(str(row.source_layers.get(p.ref, "?")) for p in plan.parents),
        )
        for row in plan.layers
    ]
    same_layers = all(
        set(row.source_layers.values()) <= {row.index} and row.source_layers for row in plan.layers
    )
    groups = [GroupView(g, _group_covers(plan, g, filters), constants[g]) for g in plan.groups]
    model = inputs.model
    return CardView(
        repo_id=recipe.repo_id,
        title=recipe.repo_id.rsplit("/", 1)[-1],
        description=" ".join(description.split()),
        license=license_id,
        parents=parents,
        groups=[g for g in groups if g.constant is None],
        constant_groups=[g for g in groups if g.constant is not None],
        same_layers=same_layers,
        sources_header=f"source layer ({' / '.join(p.name for p in parents)})",
        layers=layers,
        outside=[OutsideView(name, t_cell(t)) for name, t in plan.outside.items()],
        image=IMAGE_NAME,
        image_alt=f"SLERP t per layer of {recipe.repo_id}",
        recipe_file=recipe.path.name,
        recipe_yaml=recipe.text.rstrip("\n"),
        recipe_fence=fence(recipe.text),
        usage_messages=_usage_messages(recipe),
        usage_dtype=_usage_dtype(recipe),
        context_length=_context_length(model, plan),
        prompt_format=model.prompt_format if model else _planned_prompt_format(recipe),
        shards=list(model.shards) if model else [],
        merge_command=(
            f"mergekit-yaml {MERGEKIT_CONFIG} ./merged"
            if model
            else f"mergekit-yaml {recipe.path.name} ./merged"
        ),
        eval_commands=list(inputs.eval_commands),
        records=_records(inputs),
        facts=_facts(recipe, plan),
        smoke=smoke_view(inputs.smoke) if inputs.smoke is not None else None,
        evaluation=(
            eval_view(inputs.evaluation, _parent_summaries(inputs, parents))
            if inputs.evaluation is not None
            else None
        ),
        model_index=model_index,
        warnings=warnings,
        notes=notes,
        t_not_observable=not_observable_view(inputs.weights),
    )


def not_observable_view(weights: WeightReport | None) -> ObservabilityView | None:
    """What the card says about tensors whose t the weights cannot show (None: nothing)."""
    if weights is None or not weights.not_observable:
        return None
    return ObservabilityView(
        weights.not_observable, len(weights.tensors), weights.dtype, f"{NEAR_T:g}"
    )


def _constant(plan: Plan, group: str) -> TCell | None:
    # A group whose t is the same in every layer says nothing as a column: one sentence instead.
    values = {format_t(row.groups[group]) for row in plan.layers if group in row.groups}
    present = all(group in row.groups for row in plan.layers)
    if len(values) == 1 and present and len(plan.layers) > 1:
        (value,) = values
        return t_cell(float(value))
    return None


def _parent_summaries(inputs: CardInputs, parents: list[ParentView]) -> list[tuple[str, Any]]:
    return [
        (p.name, inputs.parent_evaluations[p.ref])
        for p in parents
        if p.ref in inputs.parent_evaluations
    ]


def short_name(ref: str) -> str:
    """A parent's name for the card: a Hub id as it is, a local directory by its last part."""
    path = Path(ref)
    if ref.startswith((".", "/", "~")) or path.is_absolute() or len(path.parts) > 2:
        return path.name or ref
    return ref


def _parent_view(parent: ParentInfo) -> ParentView:
    if parent.resolved and parent.revision:
        revision = parent.revision
        kind = "commit" if parent.source == "hub" else "content sha256"
    else:
        revision, kind = "not pinned", "not pinned"
    repo_id = parent.ref.partition("@")[0]
    return ParentView(
        name=short_name(parent.ref),
        ref=parent.ref,
        # Relative: it resolves on whatever Hub serves the card (huggingface.co or a mirror).
        url=f"/{repo_id}" if parent.source == "hub" else None,
        role="base (t = 0)" if parent.is_base else "merged in (t = 1)",
        revision=revision,
        revision_kind=kind,
        resolved=bool(parent.resolved and parent.revision),
        license=parent.license or "unknown",
    )


def _group_covers(plan: Plan, group: str, filters: list[str]) -> str:
    kinds: list[str] = []
    for row in plan.layers:
        for name in row.tensors:
            if group_of(name, filters) != group:
                continue
            kind = name.split(f".{row.index}.", 1)[-1].removesuffix(".weight")
            if kind not in kinds:
                kinds.append(kind)
    return ", ".join(kinds) if kinds else "no tensors"


def _usage_messages(recipe: Recipe) -> str:
    prompt = recipe.publish.smoke.prompts[0]
    lines = ["["]
    if prompt.system:
        lines.append(f'    {{"role": "system", "content": {_py_str(prompt.system)}}},')
    lines.append(f'    {{"role": "user", "content": {_py_str(prompt.user)}}},')
    lines.append("]")
    return "\n".join(lines)


def _py_str(text: str) -> str:
    # A JSON string is a valid Python string literal.
    return json.dumps(text, ensure_ascii=False)


def _usage_dtype(recipe: Recipe) -> str:
    dtype = recipe.merge.get("dtype")
    return f"torch.{dtype}" if isinstance(dtype, str) and dtype else '"auto"'


def _context_length(model: ModelFacts | None, plan: Plan) -> str | None:
    length = model.context_length if model else None
    if length is None:
        base = next((p for p in plan.parents if p.is_base), None)
        value = (base.config or {}).get("max_position_embeddings") if base else None
        length = value if isinstance(value, int) else None
    return f"{length} tokens" if length else None


def _planned_prompt_format(recipe: Recipe) -> str | None:
    template = recipe.publish.chat_template
    if template is None:
        return "the base model's chat template"
    if is_chat_template_path(template):
        return f"the chat template in the recipe's file `{template}`"
    if "{" not in template:
        return f"mergekit's built-in `{template}` chat template"
    return "the chat template the recipe gives"


def _records(inputs: CardInputs) -> list[FactView]:
    # Paths in the model repo, as `publisher.hub.run_files` lays the run out.
    records = [FactView("merge plan (t of every tensor)", f"{REPORTS}/plan.json")]
    if inputs.recipe.lock_path.exists():
        records.append(FactView("parents' lock", f"{REPORTS}/recipe.lock.json"))
    if inputs.evaluation is not None:
        records.append(FactView("eval results (lm-eval output)", f"{REPORTS}/eval_results.json"))
    for parent in inputs.plan.parents:
        if parent.ref in inputs.parent_evaluations:
            name = RunDir(Path(".")).parent_eval(parent.ref).name
            records.append(
                FactView(f"eval results of {short_name(parent.ref)}", f"{REPORTS}/parents/{name}")
            )
    if inputs.model is not None:
        records.append(FactView("verify report", f"{REPORTS}/verify.json"))
    return records


def _facts(recipe: Recipe, plan: Plan) -> list[FactView]:
    facts = [
        FactView("recipe sha256", f"`{recipe.sha256}`"),
        FactView("mergekit (planner)", plan.mergekit_version),
        *(FactView(package, installed_version(package)) for package in VERSIONED_PACKAGES),
        FactView("architecture", plan.architecture),
        FactView("layers", str(plan.num_layers)),
        FactView("dtype", str(recipe.merge.get("dtype") or "not set (mergekit's default)")),
    ]
    if plan.recipe_sha256 and plan.recipe_sha256 != recipe.sha256:
        facts.append(FactView("plan made from recipe sha256", f"`{plan.recipe_sha256}`"))
    return facts


__all__ = [
    "CardInputs",
    "CardView",
    "ModelFacts",
    "ShardView",
    "build_view",
    "format_t",
    "read_model_facts",
    "short_name",
    "t_bar",
    "t_cell",
]
