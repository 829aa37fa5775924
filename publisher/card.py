"""The model card: front matter from huggingface_hub's `ModelCardData`, body from `templates/`.

`render_card` turns a recipe, its plan and (when they exist) the smoke and evaluation reports
into the README.md of the published model. Python computes every value the card shows and hands
the templates a view (`CardView`) of ready-made strings; the Jinja2 templates in `templates/`
only arrange them, so the card can be changed without touching this module. A recipe's
`publish.templates` (or the `templates_dir` argument) names another directory; templates it
does not hold come from the default directory.

The card is checked offline before it is returned or written (`validate_card`): the front
matter must parse back through `ModelCard` to the same metadata, and a `model-index` must parse
through `model_index_to_eval_results`. `write_card` also draws the schedule picture
(`schedule.png`) and keeps the text people wrote between the notes markers of an existing card.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard import REGEX_YAML_BLOCK
from huggingface_hub.repocard_data import model_index_to_eval_results
from jinja2 import FileSystemLoader, StrictUndefined, TemplateError, TemplateNotFound
from jinja2.sandbox import SandboxedEnvironment

from publisher.errors import PublisherError
from publisher.evaluate import EvalRow, EvalSummary
from publisher.licenses import HUB_LICENSES
from publisher.parents import ParentInfo
from publisher.recipe import Recipe, repo_id_problem
from publisher.rundir import CARD_NAME, IMAGE_NAME
from publisher.schedule import DEFAULT_GROUP, Plan, group_of
from publisher.smoke import SmokeReport

DEFAULT_TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
"""The repository's `templates/` directory (found from the source tree, so an editable install works)."""

MAIN_TEMPLATE = "modelcard.md.j2"
NOTES_START = "<!-- publisher:notes:start -->"
NOTES_END = "<!-- publisher:notes:end -->"
DEFAULT_NOTES = (
    "\n_Text you write between these two markers is kept when the card is rendered again._\n"
)
BASE_TAGS = ("merge", "mergekit", "slerp")
FALLBACK_LICENSE = "other"
BAR_CELLS = 10
"""Width of the inline t bars, in characters."""
IMAGE_SIZE = (8.0, 4.5)
"""Size of `schedule.png` in inches (at `IMAGE_DPI`: 800 x 450 pixels)."""
IMAGE_DPI = 100
VERSIONED_PACKAGES = ("publisher", "transformers", "torch", "huggingface_hub", "lm-eval")
"""Packages whose installed versions the reproducibility section lists (mergekit's comes from the plan)."""
CHECKED_METADATA = (
    "license",
    "base_model",
    "base_model_relation",
    "tags",
    "library_name",
    "pipeline_tag",
    "language",
)
"""Front-matter keys `render_card` compares with what `build_card_data` produced."""

_EIGHTHS = ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")
_FULL = "█"
_EMPTY = "░"


class CardError(PublisherError):
    """The card cannot be rendered or does not validate; the message says what to fix."""


@dataclass
class CardInputs:
    """Everything the card shows.

    Attributes:
        recipe: the validated recipe (its text is shown verbatim, its `publish` block gives
            license, tags, language and description).
        plan: the layer-wise t plan, with the resolved parents.
        smoke: the smoke-test report, or `None` when the smoke stage did not run (then the card
            has no smoke-test section).
        evaluation: the evaluation summary, or `None` (then the card has no evaluation section).
        eval_results: the `model-index` entries, e.g.
            `[EvalResult(task_type="text-generation", dataset_type="ai2_arc", ...)]`, or `None`.
        extra_warnings: more warnings to show in the card's warning block, e.g.
            `["the merge ran on a partial checkpoint"]`.
    """

    recipe: Recipe
    plan: Plan
    smoke: SmokeReport | None = None
    evaluation: EvalSummary | None = None
    eval_results: list[EvalResult] | None = None
    extra_warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# The view the templates see: ready-made strings, no arithmetic left for the template.


@dataclass
class ParentView:
    """One parent as the card lists it.

    Attributes:
        name: a short name, e.g. `"tiny-base"` or `"Gille/StrangeMerges_30-7B-slerp"`.
        ref: the reference as the recipe writes it.
        url: its Hub page, e.g. `"https://huggingface.co/Gille/StrangeMerges_30-7B-slerp"`,
            or `None` for a local directory.
        role: `"base (t = 0)"` or `"merged in (t = 1)"`.
        revision: the pinned revision, or `"unresolved"`.
        revision_kind: what the revision is, e.g. `"commit"` or `"content sha256"`.
        resolved: whether the revision was pinned.
        note: where the data came from, or why it is unresolved.
        license: the parent's license id, or `"unknown"`.
    """

    name: str
    ref: str
    url: str | None
    role: str
    revision: str
    revision_kind: str
    resolved: bool
    note: str
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
        cells: one `TCell` per group, in `CardView.groups` order (`"n/a"` when the layer has none).
        sources: the parents' input layers, e.g. `"3 / 3"` (in `CardView.parents` order).
    """

    index: int
    cells: list[TCell]
    sources: str


@dataclass
class GroupView:
    """One column of the layer table and the tensors it covers.

    Attributes:
        name: the recipe filter, or `"default"`, e.g. `"self_attn"`.
        covers: the kinds of tensor in it, e.g. `"self_attn.q_proj, self_attn.k_proj"`.
    """

    name: str
    covers: str


@dataclass
class OutsideView:
    """A tensor outside the layer stack, e.g. `name="lm_head.weight"`."""

    name: str
    cell: TCell


@dataclass
class TranscriptView:
    """One smoke-test conversation.

    Attributes:
        number: 1-based, e.g. 1.
        system: the system message as a Markdown quote, or `None`.
        user: the user message as a Markdown quote.
        rendered_prompt: what the chat template produced, verbatim.
        prompt_fence: a code fence longer than any backtick run in `rendered_prompt`, e.g. "```".
        reply: the reply, verbatim.
        reply_fence: likewise for `reply`.
        speed: e.g. `"16 tokens in 0.21 s (76.2 tokens/s)"`.
        note: how the prompt was rendered when that is worth knowing, or `None`.
    """

    number: int
    system: str | None
    user: str
    rendered_prompt: str
    prompt_fence: str
    reply: str
    reply_fence: str
    speed: str
    note: str | None = None


@dataclass
class SmokeView:
    """The smoke-test section.

    Attributes:
        status: `"passed"` or `"failed"`.
        error: the failure message as a Markdown quote, or `None`.
        settings: e.g. `"cpu, float32, at most 32 new tokens"`.
        transcripts: one per prompt.
    """

    status: str
    error: str | None
    settings: str
    transcripts: list[TranscriptView]


@dataclass
class EvalRowView:
    """One row of the evaluation table, e.g. `value="0.6212 ± 0.0142"`, `shots="25"`."""

    task: str
    metric: str
    value: str
    shots: str


@dataclass
class EvalView:
    """The evaluation section.

    Attributes:
        rows: the table rows.
        partial_label: e.g. `"partial run (limit=10)"`, or `None` for a full run.
        lm_eval_version: e.g. `"0.4.13"`.
        model_args: lm-eval's model arguments, e.g. `"pretrained=merged,dtype=float32"`.
    """

    rows: list[EvalRowView]
    partial_label: str | None
    lm_eval_version: str
    model_args: str


@dataclass
class FactView:
    """One row of the reproducibility table, e.g. `label="torch"`, `value="2.13.0"`."""

    label: str
    value: str


@dataclass
class CardView:
    """All the card shows, as strings ready to print.

    Attributes:
        repo_id: e.g. `"publisher-demo/tiny-demo-slerp"`.
        title: the repo name, e.g. `"tiny-demo-slerp"`.
        description: the recipe's description or a sentence naming the parents.
        license: the card's license id, e.g. `"apache-2.0"`.
        parents: base first.
        groups: the layer table's columns, in `Plan.groups` order.
        sources_header: the header of the source-layer column, e.g. `"source layer (tiny-base / tiny-other)"`.
        layers: one row per output layer.
        outside: the tensors outside the layer stack.
        image: the picture's relative path, e.g. `"schedule.png"`.
        image_alt: its alt text.
        recipe_file: the recipe's file name, e.g. `"tiny-demo-slerp.yaml"`.
        recipe_yaml: the recipe text, verbatim, without a trailing newline.
        recipe_fence: a code fence longer than any backtick run in the recipe.
        usage_messages: a Python literal for the usage snippet's `messages`.
        usage_dtype: a Python expression for the usage snippet's `dtype`, e.g. `"torch.float32"`.
        facts: the reproducibility table.
        smoke: the smoke-test section, or `None`.
        evaluation: the evaluation section, or `None`.
        model_index: whether the front matter has a `model-index` (evaluation results).
        warnings: shown in a warning block at the top, e.g. license conflicts.
        notes: the human-written text between the notes markers.
    """

    repo_id: str
    title: str
    description: str
    license: str
    parents: list[ParentView]
    groups: list[GroupView]
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
    facts: list[FactView]
    smoke: SmokeView | None
    evaluation: EvalView | None
    model_index: bool
    warnings: list[str]
    notes: str


# ---------------------------------------------------------------------------------------------
# Licenses


def choose_license(recipe: Recipe, parents: list[ParentInfo]) -> str:
    """The card's license: the recipe's, else the one Hub license id every parent has (all
    known), else `"other"`."""
    if recipe.publish.license:
        return recipe.publish.license
    licenses = {p.license for p in parents}
    common = licenses.pop() if len(licenses) == 1 else None
    if common is not None and common in HUB_LICENSES:
        return common
    return FALLBACK_LICENSE


def license_warnings(recipe: Recipe, parents: list[ParentInfo]) -> list[str]:
    """Warnings about licenses: parents that disagree with each other or with the recipe.

    An unknown parent license is not a conflict by itself, but it is listed in any warning given.
    """
    known = {p.ref: p.license for p in parents if p.license}
    listing = ", ".join(f"{_short_name(p.ref)}: {p.license or 'unknown'}" for p in parents)
    warnings: list[str] = []
    if len(set(known.values())) > 1:
        warnings.append(
            f"The parents' licenses differ ({listing}). Check that the merge may be "
            f"published under '{choose_license(recipe, parents)}'."
        )
    chosen = recipe.publish.license
    if chosen:
        differing = [ref for ref, lic in known.items() if lic != chosen]
        if differing:
            names = ", ".join(f"{_short_name(ref)} ({known[ref]})" for ref in differing)
            warnings.append(
                f"The recipe's license '{chosen}' differs from the license of {names} "
                f"(parents: {listing}). Check that the parents' terms allow it."
            )
    elif choose_license(recipe, parents) == FALLBACK_LICENSE:
        warnings.append(
            "No license is set in publish.license and the parents do not share a known Hub "
            f"license id ({listing}), so the card says '{FALLBACK_LICENSE}'. "
            "Set publish.license in the recipe."
        )
    return warnings


# ---------------------------------------------------------------------------------------------
# Front matter


def build_card_data(inputs: CardInputs) -> ModelCardData:
    """The card's front matter as huggingface_hub's `ModelCardData`.

    Raises `CardError` when huggingface_hub rejects it (for example eval results that are not
    `EvalResult`s).
    """
    recipe, plan = inputs.recipe, inputs.plan
    # The Hub accepts only model ids in `base_model`; local parents are named in the body.
    hub_ids = [_base_model_id(p) for p in plan.parents if p.source == "hub"]
    try:
        return ModelCardData(
            license=choose_license(recipe, plan.parents),
            base_model=hub_ids or None,
            tags=[*BASE_TAGS, *recipe.publish.tags],
            library_name="transformers",
            pipeline_tag="text-generation",
            language=list(recipe.publish.language) or None,
            model_name=recipe.repo_id,
            eval_results=list(inputs.eval_results) if inputs.eval_results else None,
            base_model_relation="merge" if hub_ids else None,
        )
    except ValueError as exc:
        raise CardError(
            f"the card metadata is invalid: {exc}. Pass eval_results as a list of "
            "huggingface_hub EvalResult"
        ) from None


def _base_model_id(parent: ParentInfo) -> str:
    # A Hub id without its '@revision'.
    return parent.ref.partition("@")[0]


# ---------------------------------------------------------------------------------------------
# Validation


def validate_card(text: str) -> ModelCard:
    """Check a card offline and return it parsed; raise `CardError` saying what is wrong.

    The front matter must be a YAML mapping that `ModelCard` parses, whose license, base models,
    tags and `base_model_relation: merge` read back unchanged (also after `ModelCard` writes it
    out again), and whose `model-index`, when present, `model_index_to_eval_results` parses into
    numeric values. Nothing is sent to the Hub.
    """
    match = REGEX_YAML_BLOCK.search(text)
    if match is None or match.start() != 0:
        raise CardError(
            "the card has no YAML front matter: it must start with '---', the metadata, and '---'"
        )
    try:
        raw = yaml.safe_load(match.group(2))
    except yaml.YAMLError as exc:
        raise CardError(f"the card's front matter is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise CardError("the card's front matter must be a YAML mapping of metadata keys")
    try:
        card = ModelCard(text)
        again = ModelCard(str(card))
    except (ValueError, TypeError, KeyError, yaml.YAMLError) as exc:
        raise CardError(f"huggingface_hub cannot read the card's metadata: {exc}") from None

    problems: list[str] = []
    license_id = raw.get("license")
    if not isinstance(license_id, str) or license_id not in HUB_LICENSES:
        problems.append(f"license {license_id!r} is not a Hub license id (e.g. apache-2.0, other)")
    base_model = raw.get("base_model")
    if base_model is None:
        # Allowed only when no parent is on the Hub; then there is nothing to relate to either.
        if "base_model_relation" in raw:
            problems.append("base_model_relation is set but base_model is missing")
    else:
        ids = [base_model] if isinstance(base_model, str) else base_model
        if not isinstance(ids, list) or not ids:
            problems.append(f"base_model {base_model!r} must list the parents' Hub ids")
        else:
            problems.extend(
                f"base_model entry {entry!r} is not a Hub model id (org/name); local "
                "parents belong in the card body, not the metadata"
                for entry in ids
                if not isinstance(entry, str) or not entry or repo_id_problem(entry)
            )
        if raw.get("base_model_relation") != "merge":
            problems.append(
                f"base_model_relation is {raw.get('base_model_relation')!r}, not 'merge'"
            )
    tags = raw.get("tags")
    if not isinstance(tags, list) or "merge" not in tags:
        problems.append(f"tags {tags!r} must be a list that includes 'merge'")
    for key in ("license", "base_model", "tags", "base_model_relation"):
        if card.data.get(key) != raw.get(key):
            problems.append(
                f"{key} does not round-trip: the YAML says {raw.get(key)!r}, "
                f"ModelCard reads {card.data.get(key)!r} (remove duplicates or odd types)"
            )
    if again.data.to_dict() != card.data.to_dict():
        problems.append("the metadata changes when ModelCard writes it out and reads it again")
    if "model-index" in raw:
        problems.extend(_model_index_problems(raw["model-index"]))
    if problems:
        raise CardError("the card's metadata does not validate: " + "; ".join(problems))
    return card


def _model_index_problems(model_index: Any) -> list[str]:
    if not isinstance(model_index, list) or not model_index:
        return ["model-index must be a non-empty list"]
    try:
        _, results = model_index_to_eval_results(model_index)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return [
            f"model-index cannot be parsed ({type(exc).__name__}: {exc}); every result needs "
            "task.type, dataset.type, dataset.name and metrics with type and value"
        ]
    problems = []
    for result in results:
        value = result.metric_value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(
                f"model-index value {value!r} of {result.dataset_type} {result.metric_type} "
                "is not a number"
            )
    return problems


def _check_matches(card: ModelCard, expected: ModelCardData, template: str) -> None:
    """The rendered front matter must be the one `build_card_data` made (a template may not edit it)."""
    mismatches = [key for key in CHECKED_METADATA if card.data.get(key) != expected.get(key)]
    found = [(r.metric_type, r.metric_value) for r in card.data.eval_results or []]
    wanted = [(r.metric_type, r.metric_value) for r in expected.eval_results or []]
    if found != wanted:
        mismatches.append("model-index")
    if mismatches:
        raise CardError(
            f"the front matter rendered by {template} differs from the card data in "
            f"{', '.join(mismatches)}; the template must print {{{{ card_data }}}} unchanged "
            "between the '---' lines"
        )


# ---------------------------------------------------------------------------------------------
# Notes region


def extract_notes(text: str | None) -> str | None:
    """The text between the notes markers of an existing card, or `None` when there is none."""
    if not text:
        return None
    start = text.find(NOTES_START)
    if start < 0:
        return None
    start += len(NOTES_START)
    end = text.find(NOTES_END, start)
    return None if end < 0 else text[start:end]


# ---------------------------------------------------------------------------------------------
# Rendering


def resolve_templates_dir(recipe: Recipe, templates_dir: Path | None = None) -> Path:
    """The templates directory: the argument, else the recipe's `publish.templates` (relative to
    the recipe file), else `DEFAULT_TEMPLATES_DIR`."""
    if templates_dir is not None:
        chosen, origin = Path(templates_dir), "the templates directory"
    elif recipe.publish.templates:
        chosen = recipe.path.parent / recipe.publish.templates
        origin = f"publish.templates of {recipe.path}"
    else:
        return DEFAULT_TEMPLATES_DIR
    if not chosen.is_dir():
        raise CardError(
            f"{origin} names {chosen}, which is not a directory; create it or fix the path"
        )
    return chosen.resolve()


def _environment(templates_dir: Path) -> SandboxedEnvironment:
    search = [str(templates_dir)]
    if templates_dir.resolve() != DEFAULT_TEMPLATES_DIR.resolve():
        search.append(str(DEFAULT_TEMPLATES_DIR))  # templates the custom directory lacks
    return SandboxedEnvironment(
        loader=FileSystemLoader(search),
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_card(
    inputs: CardInputs, templates_dir: Path | None = None, existing: str | None = None
) -> str:
    """Render the full README.md text and validate it.

    `templates_dir` overrides the recipe's `publish.templates`; `existing` is the current
    README.md, whose notes region is carried over. Raises `CardError` when a template fails,
    the card does not validate, or the template would drop existing notes.
    """
    data = build_card_data(inputs)
    notes = extract_notes(existing)
    view = build_view(inputs, data, DEFAULT_NOTES if notes is None else notes)
    directory = resolve_templates_dir(inputs.recipe, templates_dir)
    env = _environment(directory)
    try:
        template = env.get_template(MAIN_TEMPLATE)
        text = template.render(
            card_data=data.to_yaml(),
            card=view,
            notes_start=NOTES_START,
            notes_end=NOTES_END,
        )
    except TemplateNotFound as exc:
        raise CardError(f"template {exc.name} is in neither {directory} nor the defaults") from None
    except TemplateError as exc:
        where = f"{exc.filename}:{exc.lineno}" if getattr(exc, "lineno", None) else directory
        raise CardError(f"the card template failed at {where}: {exc}") from None
    card = validate_card(text)
    _check_matches(card, data, str(directory / MAIN_TEMPLATE))
    if notes is not None and extract_notes(text) != notes:
        raise CardError(
            f"the templates in {directory} do not keep the notes region "
            f"({NOTES_START} ... {NOTES_END}); the notes of the existing card would be lost"
        )
    return text


def write_card(inputs: CardInputs, out_dir: Path, templates_dir: Path | None = None) -> Path:
    """Write `out_dir/README.md` and `out_dir/schedule.png`; return the README path.

    The card is rendered and validated before anything is written, so an invalid card never
    replaces a valid one. The notes region of an existing README.md is kept.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    readme = out_dir / CARD_NAME
    existing = readme.read_text(encoding="utf-8") if readme.exists() else None
    text = render_card(inputs, templates_dir=templates_dir, existing=existing)
    render_schedule_image(inputs.plan, out_dir / IMAGE_NAME)
    partial = readme.with_name(f".{CARD_NAME}.partial")
    partial.write_text(text, encoding="utf-8", newline="\n")
    partial.replace(readme)
    return readme


def render_schedule_image(plan: Plan, path: Path) -> Path:
    """Plot t per layer for each group of the plan as a PNG at `path`; return `path`.

    The picture is deterministic: fixed size and dpi, matplotlib's default style, and no
    software or time stamp in the PNG metadata.
    """
    from matplotlib import style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    markers = ("o", "s", "^", "D", "v", "P", "X", "*")
    with style.context("default"):
        fig = Figure(figsize=IMAGE_SIZE, dpi=IMAGE_DPI)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        indexes = [row.index for row in plan.layers]
        for number, group in enumerate(plan.groups):
            points = [(row.index, row.groups[group]) for row in plan.layers if group in row.groups]
            ax.plot(
                [x for x, _ in points],
                [t for _, t in points],
                marker=markers[number % len(markers)],
                label=group,
                clip_on=False,
            )
        ax.set_ylim(0.0, 1.0)
        if indexes:
            ax.set_xlim(min(indexes) - 0.5, max(indexes) + 0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("output layer")
        ax.set_ylabel("t  (0 = base model, 1 = other parent)")
        ax.set_title(f"SLERP interpolation factor t per layer ({plan.num_layers} layers)")
        ax.grid(True, alpha=0.3)
        ax.legend(title="tensor group", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=IMAGE_DPI, metadata={"Software": None})
    return path


# ---------------------------------------------------------------------------------------------
# The view model


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


def _cell(t: float) -> TCell:
    return TCell(value=format_t(t), bar=t_bar(t))


def build_view(inputs: CardInputs, data: ModelCardData, notes: str = DEFAULT_NOTES) -> CardView:
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
    layers = [
        LayerView(
            index=row.index,
            cells=[
                _cell(row.groups[g]) if g in row.groups else TCell("n/a", "") for g in plan.groups
            ],
            sources=" / ".join(str(row.source_layers.get(p.ref, "?")) for p in plan.parents),
        )
        for row in plan.layers
    ]
    warnings = _unique(
        [
            *license_warnings(recipe, plan.parents),
            *(
                f"Parent {p.name} is not pinned to a revision: {p.note or 'unresolved'}."
                for p in parents
                if not p.resolved
            ),
            *(
                f"Parent `{p.ref}` is a local directory, so the card's `base_model` metadata "
                "leaves it out and the Hub cannot link it; publish it to the Hub and reference "
                "it by repo id to fix this."
                for p in plan.parents
                if p.source == "local"
            ),
            *recipe.warnings,
            *inputs.extra_warnings,
        ]
    )
    return CardView(
        repo_id=recipe.repo_id,
        title=recipe.repo_id.rsplit("/", 1)[-1],
        description=description,
        license=str(data.license),
        parents=parents,
        groups=[GroupView(g, _group_covers(plan, g, filters)) for g in plan.groups],
        sources_header=f"source layer ({' / '.join(p.name for p in parents)})",
        layers=layers,
        outside=[OutsideView(name, _cell(t)) for name, t in plan.outside.items()],
        image=IMAGE_NAME,
        image_alt=f"SLERP t per layer of {recipe.repo_id}",
        recipe_file=recipe.path.name,
        recipe_yaml=recipe.text.rstrip("\n"),
        recipe_fence=_fence(recipe.text),
        usage_messages=_usage_messages(recipe),
        usage_dtype=_usage_dtype(recipe),
        facts=_facts(recipe, plan),
        smoke=_smoke_view(inputs.smoke) if inputs.smoke is not None else None,
        evaluation=_eval_view(inputs.evaluation) if inputs.evaluation is not None else None,
        model_index=bool(data.eval_results),
        warnings=warnings,
        notes=notes,
    )


def _short_name(ref: str) -> str:
    path = Path(ref)
    if ref.startswith((".", "/", "~")) or path.is_absolute() or len(path.parts) > 2:
        return path.name or ref
    return ref


def _parent_view(parent: ParentInfo) -> ParentView:
    if parent.resolved and parent.revision:
        revision = parent.revision
        kind = "commit" if parent.source == "hub" else "content sha256"
    else:
        revision, kind = "unresolved", "not pinned"
    return ParentView(
        name=_short_name(parent.ref),
        ref=parent.ref,
        url=parent.hub_url,
        role="base (t = 0)" if parent.is_base else "merged in (t = 1)",
        revision=revision,
        revision_kind=kind,
        resolved=bool(parent.resolved and parent.revision),
        note=_table_text(parent.note),
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


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _facts(recipe: Recipe, plan: Plan) -> list[FactView]:
    facts = [
        FactView("recipe sha256", f"`{recipe.sha256}`"),
        FactView("mergekit (planner)", plan.mergekit_version),
        *(FactView(package, _version(package)) for package in VERSIONED_PACKAGES),
        FactView("architecture", plan.architecture),
        FactView("layers", str(plan.num_layers)),
        FactView("dtype", str(recipe.merge.get("dtype") or "not set (mergekit's default)")),
    ]
    if plan.recipe_sha256 and plan.recipe_sha256 != recipe.sha256:
        facts.append(FactView("plan made from recipe sha256", f"`{plan.recipe_sha256}`"))
    return facts


def _smoke_view(report: SmokeReport) -> SmokeView:
    transcripts = [
        TranscriptView(
            number=number,
            system=_quote(t.system) if t.system else None,
            user=_quote(t.user),
            rendered_prompt=t.rendered_prompt,
            prompt_fence=_fence(t.rendered_prompt),
            reply=t.reply,
            reply_fence=_fence(t.reply),
            speed=(
                f"{t.new_tokens} tokens in {t.seconds:.2f} s ({t.tokens_per_second:.1f} tokens/s)"
            ),
            note=t.note,
        )
        for number, t in enumerate(report.transcripts, start=1)
    ]
    return SmokeView(
        status="passed" if report.passed else "failed",
        error=_quote(report.error) if report.error else None,
        settings=f"{report.device}, {report.dtype}, at most {report.max_new_tokens} new tokens",
        transcripts=transcripts,
    )


def _eval_view(summary: EvalSummary) -> EvalView:
    limits = sorted({row.limit for row in summary.rows if row.limit is not None})
    partial_label = None
    if summary.partial or limits:
        shown = ", ".join(_number(limit) for limit in limits)
        partial_label = f"partial run (limit={shown})" if shown else "partial run"
    return EvalView(
        rows=[_eval_row(row) for row in summary.rows],
        partial_label=partial_label,
        lm_eval_version=summary.lm_eval_version or _version("lm-eval"),
        model_args=summary.model_args,
    )


def _eval_row(row: EvalRow) -> EvalRowView:
    metric = row.metric if row.filter in ("", "none") else f"{row.metric} ({row.filter})"
    value = f"{row.value:.4f}"
    if row.stderr is not None:
        value += f" ± {row.stderr:.4f}"
    shots = "n/a" if row.num_fewshot is None else str(row.num_fewshot)
    return EvalRowView(task=row.task, metric=metric, value=value, shots=shots)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _fence(text: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _quote(text: str) -> str:
    return "\n".join(f"> {line}".rstrip() for line in text.splitlines() or [""])


def _table_text(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


__all__ = [
    "DEFAULT_TEMPLATES_DIR",
    "NOTES_END",
    "NOTES_START",
    "CardError",
    "CardInputs",
    "CardView",
    "build_card_data",
    "build_view",
    "choose_license",
    "extract_notes",
    "license_warnings",
    "render_card",
    "render_schedule_image",
    "resolve_templates_dir",
    "validate_card",
    "write_card",
]
