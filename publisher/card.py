"""The model card: front matter from huggingface_hub's `ModelCardData`, body from `templates/`.

`render_card` turns a recipe, its plan and (when they exist) the smoke and evaluation reports
into the README.md of the published model. Python computes every value the card shows and hands
the templates a view (`publisher.cardview.CardView`) of ready-made strings; the Jinja2 templates
in `templates/` only arrange them, so the card can be changed without touching this module. A
recipe's `publish.templates` (or the `templates_dir` argument) names another directory;
templates it does not hold come from the default directory.

The card is checked offline before it is returned or written (`validate_card`): the front
matter must parse back through `ModelCard` to the same metadata, and a `model-index` must parse
through `model_index_to_eval_results`. `write_card` also writes the view as `card.json` (what
verify checks, whatever the templates' headings), draws the schedule picture (`schedule.png`)
and keeps the text people wrote between the notes markers of an existing card.

The card is for the Hub's readers: what an operator must do (pin a parent, set a license) goes
to `operator_notes`, which the CLI prints and the Actions job summary shows, never to the card.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard import REGEX_YAML_BLOCK
from huggingface_hub.repocard_data import model_index_to_eval_results
from jinja2 import StrictUndefined, TemplateError, TemplateNotFound

from publisher.cardview import CardInputs, CardView, build_view, short_name
from publisher.errors import PublisherError
from publisher.licenses import HUB_LICENSES
from publisher.parents import ParentInfo
from publisher.recipe import Recipe, repo_id_problem
from publisher.recipe_paths import ContainedLoader
from publisher.rundir import CARD_DATA_NAME, CARD_NAME, IMAGE_NAME
from publisher.sandbox import BoundedEnvironment
from publisher.schedule import Plan
from publisher.settings import choose_templates_dir

DEFAULT_TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
"""The repository's `templates/` directory (found from the source tree, so an editable install works)."""

MAIN_TEMPLATE = "modelcard.md.j2"
NOTES_START = "<!-- publisher:notes:start -->"
NOTES_END = "<!-- publisher:notes:end -->"
DEFAULT_NOTES = (
    "\n_Text you write between these two markers is kept when the card is rendered again._\n"
)
BASE_TAGS = ("merge", "mergekit", "slerp")
PIPELINE_TAG = "text-generation"
FALLBACK_LICENSE = "other"
IMAGE_SIZE = (8.0, 4.5)
"""Size of `schedule.png` in inches (at `IMAGE_DPI`: 800 x 450 pixels)."""
IMAGE_DPI = 100
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


class CardError(PublisherError):
    """The card cannot be rendered or does not validate; the message says what to fix."""


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
    """Warnings for the card's readers about licenses: parents that disagree with each other or
    with the license the merge is published under.

    An unknown parent license is not a conflict by itself, but it is listed in any warning given.
    """
    known = {p.ref: p.license for p in parents if p.license}
    listing = ", ".join(f"{short_name(p.ref)}: {p.license or 'unknown'}" for p in parents)
    chosen = choose_license(recipe, parents)
    warnings: list[str] = []
    if len(set(known.values())) > 1:
        warnings.append(
            f"The parents' licenses differ ({listing}); this merge is published under "
            f"'{chosen}'. Each parent's own terms still apply to what it contributed."
        )
    if recipe.publish.license:
        differing = [ref for ref, lic in known.items() if lic != chosen]
        if differing:
            names = ", ".join(f"{short_name(ref)} ({known[ref]})" for ref in differing)
            warnings.append(
                f"This merge is published under '{chosen}', which differs from the license "
                f"of {names} (parents: {listing}). Read the parents' terms before use."
            )
    return warnings


def operator_notes(inputs: CardInputs) -> list[str]:
    """What the operator should know or do before publishing; for the CLI output and the Actions
    job summary, never for the card."""
    recipe, parents = inputs.recipe, inputs.plan.parents
    notes = []
    unpinned = [p for p in parents if not (p.resolved and p.revision)]
    if unpinned:
        # One note, so the advice is given once however many parents it concerns.
        notes.append(
            "; ".join(
                f"parent {p.ref} is not pinned to a revision ({p.note or 'unresolved'})"
                for p in unpinned
            )
            + f". Run 'publisher lock {recipe.path.name}' where the Hub is reachable: a run "
            "whose parents are not pinned cannot be pushed."
        )
    notes += [
        f"parent {p.ref} is a local directory: the card's base_model metadata leaves it out "
        "and the Hub cannot link it; publish it to the Hub and reference it by repo id."
        for p in parents
        if p.source == "local"
    ]
    if not recipe.publish.license and choose_license(recipe, parents) == FALLBACK_LICENSE:
        listing = ", ".join(f"{short_name(p.ref)}: {p.license or 'unknown'}" for p in parents)
        notes.append(
            "no license is set in publish.license and the parents do not share a known Hub "
            f"license id ({listing}), so the card says '{FALLBACK_LICENSE}'; set "
            "publish.license in the recipe."
        )
    return [*notes, *recipe.warnings]


def card_warnings(inputs: CardInputs) -> list[str]:
    """The warnings the card shows its readers."""
    local = [
        f"Parent {short_name(p.ref)} is a local model, not on the Hub, so this card cannot link it."
        for p in inputs.plan.parents
        if p.source == "local"
    ]
    items = [*license_warnings(inputs.recipe, inputs.plan.parents), *local, *inputs.extra_warnings]
    return list(dict.fromkeys(items))


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
            # No tag repeats the pipeline tag: the Hub shows that one already.
            tags=[
                t for t in dict.fromkeys([*BASE_TAGS, *recipe.publish.tags]) if t != PIPELINE_TAG
            ],
            library_name="transformers",
            pipeline_tag=PIPELINE_TAG,
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
    """The templates directory `choose_templates_dir` picks (the argument, else the recipe's
    `publish.templates`), else `DEFAULT_TEMPLATES_DIR`; `CardError` when it is missing."""
    chosen = choose_templates_dir(recipe, templates_dir)
    if chosen is None:
        return DEFAULT_TEMPLATES_DIR
    if not chosen.is_dir():
        origin = (
            "the templates directory" if templates_dir else f"publish.templates of {recipe.path}"
        )
        raise CardError(
            f"{origin} names {chosen}, which is not a directory; create it or fix the path"
        )
    return chosen


def _environment(templates_dir: Path) -> BoundedEnvironment:
    # Templates are recipe-controlled: an immutable sandbox with bounds on time and size.
    search = [str(templates_dir)]
    if templates_dir.resolve() != DEFAULT_TEMPLATES_DIR.resolve():
        search.append(str(DEFAULT_TEMPLATES_DIR))  # templates the custom directory lacks
    return BoundedEnvironment(
        loader=ContainedLoader(search),  # no template links out of the repository
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_view(view: CardView, front_matter: str, templates_dir: Path) -> str:
    """The README.md text the templates in `templates_dir` make of `view` and the front matter's
    YAML (no validation). Verify renders `card.json` again with this to compare."""
    env = _environment(templates_dir)
    try:
        template = env.get_template(MAIN_TEMPLATE)
        return env.render(
            template,
            card_data=front_matter,
            card=view,
            notes_start=NOTES_START,
            notes_end=NOTES_END,
        )
    except TemplateNotFound as exc:
        raise CardError(
            f"template {exc.name} is in neither {templates_dir} nor the defaults"
        ) from None
    except TemplateError as exc:
        where = f"{exc.filename}:{exc.lineno}" if getattr(exc, "lineno", None) else templates_dir
        raise CardError(f"the card template failed at {where}: {exc}") from None


def _render(
    inputs: CardInputs, templates_dir: Path | None, existing: str | None
) -> tuple[str, CardView, str]:
    data = build_card_data(inputs)
    notes = extract_notes(existing)
    view = build_view(
        inputs,
        license_id=str(data.license),
        warnings=card_warnings(inputs),
        notes=DEFAULT_NOTES if notes is None else notes,
        model_index=bool(data.eval_results),
    )
    directory = resolve_templates_dir(inputs.recipe, templates_dir)
    front_matter = data.to_yaml()
    text = render_view(view, front_matter, directory)
    card = validate_card(text)
    _check_matches(card, data, str(directory / MAIN_TEMPLATE))
    if notes is not None and extract_notes(text) != notes:
        raise CardError(
            f"the templates in {directory} do not keep the notes region "
            f"({NOTES_START} ... {NOTES_END}); the notes of the existing card would be lost"
        )
    return text, view, front_matter


def render_card(
    inputs: CardInputs, templates_dir: Path | None = None, existing: str | None = None
) -> str:
    """Render the full README.md text and validate it.

    `templates_dir` overrides the recipe's `publish.templates`; `existing` is the current
    README.md, whose notes region is carried over. Raises `CardError` when a template fails,
    the card does not validate, or the template would drop existing notes.
    """
    return _render(inputs, templates_dir, existing)[0]


def write_card(inputs: CardInputs, out_dir: Path, templates_dir: Path | None = None) -> Path:
    """Write `out_dir/README.md`, `out_dir/card.json` and `out_dir/schedule.png`; return the
    README path.

    The card is rendered and validated before anything is written, so an invalid card never
    replaces a valid one. The notes region of an existing README.md is kept. `card.json` is the
    view the card was rendered from, with its front matter: what verify checks.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    readme = out_dir / CARD_NAME
    existing = readme.read_text(encoding="utf-8") if readme.exists() else None
    text, view, front_matter = _render(inputs, templates_dir, existing)
    render_schedule_image(inputs.plan, out_dir / IMAGE_NAME)
    custom = resolve_templates_dir(inputs.recipe, templates_dir) != DEFAULT_TEMPLATES_DIR
    for name, content in (
        (CARD_DATA_NAME, view.to_json(front_matter, "custom" if custom else "default")),
        (CARD_NAME, text),
    ):
        partial = out_dir / f".{name}.partial"
        partial.write_text(content, encoding="utf-8", newline="\n")
        partial.replace(out_dir / name)
    return readme


def read_card_data(path: Path) -> tuple[CardView, str]:
    """`card.json` read back: the view and the front matter's YAML; `CardError` when it is not
    a card view this version wrote."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        return CardView.from_dict(record["view"]), str(record["front_matter"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CardError(f"{path} is not a card view written by publisher: {exc}") from None


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


__all__ = [
    "DEFAULT_TEMPLATES_DIR",
    "NOTES_END",
    "NOTES_START",
    "CardError",
    "CardInputs",
    "CardView",
    "build_card_data",
    "card_warnings",
    "choose_license",
    "extract_notes",
    "license_warnings",
    "operator_notes",
    "read_card_data",
    "render_card",
    "render_schedule_image",
    "render_view",
    "resolve_templates_dir",
    "validate_card",
    "write_card",
]
