"""The card stage: the README.md and schedule.png rendered for the tiny demo recipe."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from huggingface_hub import EvalResult, ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from publisher.card import (
    DEFAULT_TEMPLATES_DIR,
    NOTES_END,
    NOTES_START,
    CardError,
    CardInputs,
    build_card_data,
    license_warnings,
    operator_notes,
    render_card,
    render_schedule_image,
    validate_card,
    write_card,
)
from publisher.cardview import t_bar
from publisher.demo import hub_recipe_text
from publisher.evalresults import EvalRow, EvalSummary
from publisher.parents import ParentInfo, resolve_parents
from publisher.recipe import Recipe, load_recipe
from publisher.schedule import Plan, build_plan
from publisher.smoke import SmokeReport, SmokeTranscript

REPO_ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def demo(
    tiny_parents: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Recipe, Plan]:
    """The tiny demo recipe, pointed at the session's tiny parents, and its plan (built once)."""
    text = (REPO_ROOT / "recipes" / "tiny-demo-slerp.yaml").read_text(encoding="utf-8")
    path = tmp_path_factory.mktemp("card-recipe") / "tiny-demo-slerp.yaml"
    base, other = (str(p) for p in tiny_parents)
    dirs = {"../build/demo-parents/tiny-base": base, "../build/demo-parents/tiny-tuned": other}
    path.write_text(hub_recipe_text(text, dirs), encoding="utf-8")
    recipe = load_recipe(path)
    return recipe, build_plan(recipe, resolve_parents(recipe))


@pytest.fixture
def recipe(demo: tuple[Recipe, Plan]) -> Recipe:
    return dataclasses.replace(demo[0], warnings=list(demo[0].warnings))


@pytest.fixture
def plan(demo: tuple[Recipe, Plan]) -> Plan:
    return demo[1]


def front_matter(text: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "the card starts with YAML front matter"
    return yaml.safe_load(match.group(1))


def sample_smoke() -> SmokeReport:
    return SmokeReport(
        passed=True,
        transcripts=[
            SmokeTranscript(
                user="What is the capital of France?",
                system=None,
                rendered_prompt="<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                "<|im_start|>assistant\n",
                reply="Paris is the capital of France.",
                new_tokens=8,
                seconds=0.25,
                tokens_per_second=32.0,
            ),
            SmokeTranscript(
                user="Show code",
                system="You are a helpful assistant.",
                rendered_prompt="<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
                reply="Here:\n```python\nprint(1)\n```",
                note="the system message was folded into the user turn",
                new_tokens=12,
                seconds=0.5,
                tokens_per_second=24.0,
            ),
        ],
        max_new_tokens=16,
    )


def sample_eval() -> tuple[EvalSummary, list[EvalResult]]:
    rows = [
        EvalRow("arc_challenge", "acc_norm", "none", 0.6212, 0.0142, 25, limit=10),
        EvalRow("gsm8k", "exact_match", "strict-match", 0.5, None, 5, limit=10),
    ]
    summary = EvalSummary(rows=rows, partial=True, lm_eval_version="0.4.13")
    results = [
        EvalResult(
            task_type="text-generation",
            dataset_type="ai2_arc",
            dataset_name="AI2 Reasoning Challenge (25-Shot)",
            dataset_config="ARC-Challenge",
            dataset_split="test",
            metric_type="acc_norm",
            metric_value=0.6212,
        ),
        EvalResult(
            task_type="text-generation",
            dataset_type="gsm8k",
            dataset_name="GSM8k (5-shot)",
            dataset_config="main",
            dataset_split="test",
            metric_type="exact_match",
            metric_value=0.5,
        ),
    ]
    return summary, results


def with_parents(plan: Plan, **changes_by_ref: dict) -> Plan:
    parents = [dataclasses.replace(p, **changes_by_ref.get(p.ref, {})) for p in plan.parents]
    return dataclasses.replace(plan, parents=parents)


# ---------------------------------------------------------------------------------------------


def test_every_layer_row_shows_the_plans_t_values(recipe: Recipe, plan: Plan) -> None:
    text = render_card(CardInputs(recipe=recipe, plan=plan))
    # The demo's `default` group is 0.5 in every layer: a sentence, not a column. Its layers
    # come from the same layers of both parents: a sentence, not a source-layer column.
    varying = [g for g in plan.groups if g != "default"]
    assert "`default` tensors use t = 0.500 in every layer." in text
    assert "Each output layer comes from the same layer of both parents." in text
    header = next(line for line in text.splitlines() if line.startswith("| layer |"))
    assert [g.strip(" `") for g in header.split("|")[2:-1]] == varying
    rows = {int(m.group(1)): m.group(0) for m in re.finditer(r"^\| (\d+) \|.*$", text, re.M)}
    assert sorted(rows) == [row.index for row in plan.layers]
    for layer in plan.layers:
        cells = [c.strip() for c in rows[layer.index].split("|")[2:-1]]
        assert len(cells) == len(varying)
        for group, cell in zip(varying, cells, strict=True):
            t = layer.groups[group]
            assert cell == f"{t:.3f} `{t_bar(t)}`"
    # The demo schedule: self_attn rises from 0 to 1, mlp falls from 1 to 0.
    assert rows[0] == "| 0 | 0.000 `░░░░░░░░░░` | 1.000 `██████████` |"
    for name, t in plan.outside.items():
        assert f"| `{name}` | {t:.3f} `{t_bar(t)}` |" in text


def test_tables_parse_as_markdown_tables(recipe: Recipe, plan: Plan) -> None:
    from markdown_it import MarkdownIt

    tokens = (
        MarkdownIt("commonmark")
        .enable("table")
        .parse(render_card(CardInputs(recipe=recipe, plan=plan)))
    )
    tables: list[list[list[str]]] = []
    inside = False
    for token in tokens:
        if token.type == "table_open":
            tables.append([])
            inside = True
        elif token.type == "table_close":
            inside = False
        elif inside and token.type == "tr_open":
            tables[-1].append([])
        elif inside and token.type == "inline":
            tables[-1][-1].append(token.content)
    layer_table = next(t for t in tables if t[0][0] == "layer")
    assert len(layer_table) == 1 + plan.num_layers
    assert {len(row) for row in layer_table} == {len(plan.groups)}  # `default` is a sentence
    assert [row[0] for row in layer_table[1:]] == [str(row.index) for row in plan.layers]
    outside = next(t for t in tables if t[0] == ["tensor", "t"])
    assert [row[0] for row in outside[1:]] == [f"`{name}`" for name in plan.outside]


def test_card_passes_the_verify_stages_card_check(
    recipe: Recipe, plan: Plan, tmp_path: Path
) -> None:
    from publisher.cardcheck import check_card
    from publisher.rundir import RunDir

    write_card(CardInputs(recipe=recipe, plan=plan), tmp_path)
    checks = check_card(RunDir(tmp_path), plan, None, None, None)
    assert len(checks) > plan.num_layers
    assert all(c["ok"] for c in checks), [c for c in checks if not c["ok"]]


def test_t_bar_is_fixed_width_and_proportional() -> None:
    assert t_bar(0.0) == "░" * 10
    assert t_bar(1.0) == "█" * 10
    assert t_bar(0.5) == "█████░░░░░"
    assert t_bar(0.433) == "████▍░░░░░"
    assert {len(t_bar(i / 97)) for i in range(98)} == {10}


def test_write_card_writes_a_referenced_deterministic_png(
    recipe: Recipe, plan: Plan, tmp_path: Path
) -> None:
    readme = write_card(CardInputs(recipe=recipe, plan=plan), tmp_path / "run")
    image = readme.parent / "schedule.png"
    assert readme.name == "README.md"
    assert image.read_bytes()[:8] == PNG_MAGIC
    assert re.search(r"!\[[^\]]+\]\(schedule\.png\)", readme.read_text(encoding="utf-8"))
    again = render_schedule_image(plan, tmp_path / "again.png")
    assert again.read_bytes() == image.read_bytes()
    assert b"Software" not in image.read_bytes()


def test_metadata_round_trips_through_model_card(recipe: Recipe, plan: Plan) -> None:
    text = render_card(CardInputs(recipe=recipe, plan=plan))
    assert text.startswith("---\n")
    card = ModelCard(text)
    assert card.data.license == "apache-2.0"
    # Local parents are no Hub ids: the body names them, the metadata leaves them out.
    assert card.data.get("base_model") is None
    assert card.data.get("base_model_relation") is None
    for parent in plan.parents:
        assert f"Parent {Path(parent.ref).name} is a local model, not on the Hub" in text
        # A local path means nothing to the card's readers: only the verbatim recipe holds it.
        assert parent.ref not in text.replace(recipe.text.rstrip("\n"), "")
    assert card.data.tags == ["merge", "mergekit", "slerp", "demo", "tiny"]
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    assert card.data.get("language") is None  # the recipe gives none: nothing is claimed
    assert card.data.model_name == recipe.repo_id
    assert front_matter(text) == card.data.to_dict()
    assert "model-index" not in front_matter(text)


def test_no_tag_repeats_the_pipeline_tag_and_language_is_the_recipes(
    recipe: Recipe, plan: Plan
) -> None:
    publish = recipe.publish.model_copy(
        update={"tags": ["merge", "text-generation", "chat"], "language": ["fr"]}
    )
    data = build_card_data(CardInputs(dataclasses.replace(recipe, publish=publish), plan))
    assert data.tags == ["merge", "mergekit", "slerp", "chat"]
    assert data.pipeline_tag == "text-generation" and data.language == ["fr"]


def test_hub_and_unresolved_parents(recipe: Recipe, plan: Plan) -> None:
    base, other = plan.parents
    sha = "0123456789abcdef0123456789abcdef01234567"
    hub_plan = with_parents(
        plan,
        **{
            base.ref: {"source": "hub", "ref": "org/base-7b", "revision": sha, "path": None},
            other.ref: {
                "source": "hub",
                "ref": "org/other-7b@main",
                "revision": None,
                "resolved": False,
                "note": "offline when locked",
                "path": None,
            },
        },
    )
    inputs = CardInputs(recipe=recipe, plan=hub_plan)
    text = render_card(inputs)
    # Relative links resolve on whatever Hub serves the card.
    assert f"[org/base-7b](/org/base-7b) | base (t = 0) | commit `{sha[:12]}`" in text
    assert "[org/other-7b@main](/org/other-7b) | merged in (t = 1) | not pinned |" in text
    # What to do about it is the operator's business: the CLI and job summary, not the card.
    assert "offline when locked" not in text and "publisher lock" not in text
    notes = operator_notes(inputs)
    assert any("org/other-7b@main is not pinned" in n and "cannot be pushed" in n for n in notes)
    assert ModelCard(text).data.base_model == ["org/base-7b", "org/other-7b"]
    assert ModelCard(text).data.base_model_relation == "merge"
    assert "is a local model" not in text

    half_local = with_parents(plan, **{base.ref: {"source": "hub", "ref": "org/base-7b"}})
    text = render_card(CardInputs(recipe=recipe, plan=half_local))
    assert ModelCard(text).data.base_model == ["org/base-7b"]
    assert "Parent tiny-other is a local model, not on the Hub" in text


def test_notes_region_survives_a_rerender(recipe: Recipe, plan: Plan, tmp_path: Path) -> None:
    inputs = CardInputs(recipe=recipe, plan=plan)
    readme = write_card(inputs, tmp_path)
    first = readme.read_text(encoding="utf-8")
    assert f"{NOTES_START}\n_Text you write" in first
    notes = "\nBenchmarked by hand: *great* at | pipes | and\n\n```\ncode\n```\n"
    edited = re.sub(
        f"{re.escape(NOTES_START)}.*?{re.escape(NOTES_END)}",
        lambda _: f"{NOTES_START}{notes}{NOTES_END}",
        first,
        flags=re.S,
    ).replace("# tiny-demo-slerp", "# hand-edited title")
    readme.write_text(edited, encoding="utf-8")

    write_card(inputs, tmp_path)
    second = readme.read_text(encoding="utf-8")
    assert f"{NOTES_START}{notes}{NOTES_END}" in second
    assert "# tiny-demo-slerp" in second and "hand-edited title" not in second
    start, end = first.index(NOTES_START), first.index(NOTES_END) + len(NOTES_END)
    assert second == first[:start] + f"{NOTES_START}{notes}{NOTES_END}" + first[end:]


def test_smoke_and_eval_sections_absent_without_reports(recipe: Recipe, plan: Plan) -> None:
    text = render_card(CardInputs(recipe=recipe, plan=plan))
    assert "## Smoke test" not in text
    assert "## Evaluation" not in text
    assert "partial run" not in text


def test_smoke_and_eval_sections_with_reports(recipe: Recipe, plan: Plan) -> None:
    summary, results = sample_eval()
    smoke = sample_smoke()
    text = render_card(
        CardInputs(recipe=recipe, plan=plan, smoke=smoke, evaluation=summary, eval_results=results)
    )
    assert "## Smoke test" in text and "Result: **passed**" in text
    assert "Passed means: the chat template rendered each prompt" in text
    assert f"<summary>Transcripts ({len(smoke.transcripts)})</summary>" in text
    for transcript in smoke.transcripts:
        assert transcript.rendered_prompt in text
        assert transcript.reply in text
    assert "8 tokens in 0.25 s (32.0 tokens/s)" in text
    # A reply holding a ``` fence is shown in a longer fence, so the card's Markdown holds.
    assert "````text\nHere:\n```python\nprint(1)\n```\n````" in text
    assert "> You are a helpful assistant." in text
    assert "(the system message was folded into the user turn)" in text

    assert "## Evaluation" in text
    assert "**⚠️ partial run (limit=10)**" in text
    assert "| task | metric | shots | this merge |" in text
    assert "| arc_challenge | acc_norm | 25 | 0.6212 ± 0.0142 |" in text
    assert "| gsm8k | exact_match (strict-match) | 5 | 0.5000 |" in text

    model_index = front_matter(text)["model-index"]
    name, parsed = model_index_to_eval_results(model_index)
    assert name == recipe.repo_id
    assert [(r.dataset_type, r.metric_type, r.metric_value) for r in parsed] == [
        (r.dataset_type, r.metric_type, r.metric_value) for r in results
    ]
    assert parsed == ModelCard(text).data.eval_results


def test_eval_results_from_the_evaluate_stage_validate(recipe: Recipe, plan: Plan) -> None:
    from publisher.evalresults import to_eval_results

    summary, _ = sample_eval()
    results = to_eval_results(summary, recipe.repo_id)
    text = render_card(
        CardInputs(recipe=recipe, plan=plan, evaluation=summary, eval_results=results)
    )
    parsed = ModelCard(text).data.eval_results
    assert [r.metric_value for r in parsed] == [row.value for row in summary.rows]


def test_full_eval_run_has_no_partial_label(recipe: Recipe, plan: Plan) -> None:
    summary, results = sample_eval()
    full = EvalSummary(
        rows=[dataclasses.replace(r, limit=None) for r in summary.rows], partial=False
    )
    text = render_card(CardInputs(recipe=recipe, plan=plan, evaluation=full, eval_results=results))
    assert "## Evaluation" in text and "partial run" not in text


def test_failed_smoke_shows_the_error(recipe: Recipe, plan: Plan) -> None:
    smoke = SmokeReport(passed=False, error="the chat template has no generation prompt")
    text = render_card(CardInputs(recipe=recipe, plan=plan, smoke=smoke))
    assert "Result: **failed**" in text
    assert "> the chat template has no generation prompt" in text


def test_usage_snippet_runs_against_a_local_model(
    recipe: Recipe, plan: Plan, tiny_parents: tuple[Path, Path]
) -> None:
    text = render_card(CardInputs(recipe=recipe, plan=plan))
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert "add_generation_prompt=True" in snippet and 'return_tensors="pt"' in snippet
    assert f'model_id = "{recipe.repo_id}"' in snippet
    local = snippet.replace(f'"{recipe.repo_id}"', repr(str(tiny_parents[0]))).replace(
        "max_new_tokens=128", "max_new_tokens=3"
    )
    printed: list[str] = []
    exec(compile(local, "usage-snippet", "exec"), {"print": printed.append})
    assert len(printed) == 1 and isinstance(printed[0], str)


def test_custom_templates_dir_overrides_some_templates(
    recipe: Recipe, plan: Plan, tmp_path: Path
) -> None:
    custom = tmp_path / "mytemplates"
    (custom / "partials").mkdir(parents=True)
    (custom / "partials" / "usage.md.j2").write_text(
        "## Usage\n\nAsk {{ card.repo_id }} nicely.\n", encoding="utf-8"
    )
    text = render_card(CardInputs(recipe=recipe, plan=plan), templates_dir=custom)
    assert "Ask publisher-demo/tiny-demo-slerp nicely." in text
    assert "apply_chat_template" not in text
    assert "<summary>Layer-wise t table</summary>" in text  # the others come from the defaults


def test_recipe_names_its_templates_dir(recipe: Recipe, plan: Plan, tmp_path: Path) -> None:
    custom = tmp_path / "card-templates"
    custom.mkdir()
    (custom / "modelcard.md.j2").write_text(
        "---\n{{ card_data }}\n---\n\n# {{ card.title }} (custom)\n\n"
        "{% include 'partials/schedule_table.md.j2' %}\n"
        "{{ notes_start }}{{ card.notes }}{{ notes_end }}\n",
        encoding="utf-8",
    )
    recipe_path = tmp_path / "recipe.yaml"
    publish = recipe.publish.model_copy(update={"templates": "card-templates"})
    custom_recipe = dataclasses.replace(recipe, path=recipe_path, publish=publish)
    text = render_card(CardInputs(recipe=custom_recipe, plan=plan))
    assert "# tiny-demo-slerp (custom)" in text
    assert "## Usage" not in text
    assert "| 3 | 1.000 `██████████` | 0.000 `░░░░░░░░░░` |" in text


def test_missing_templates_dir_is_an_error(recipe: Recipe, plan: Plan, tmp_path: Path) -> None:
    with pytest.raises(CardError, match="not a directory"):
        render_card(CardInputs(recipe=recipe, plan=plan), templates_dir=tmp_path / "nope")


@pytest.mark.parametrize(
    ("main", "message"),
    [
        ("---\n{{ card_data }}\n---\n{{ card.no_such_field }}\n", "no_such_field"),
        ("---\n{{ card_data }}\n---\n{{ card.__class__.__mro__ }}\n", "template failed"),
        ("# no front matter\n", "no YAML front matter"),
        (
            "---\nlicense: mit\nbase_model: [a]\ntags: [merge]\nbase_model_relation: merge\n---\n",
            "differs from the card data",
        ),
        ("---\n{{ card_data }}\n---\n{% if %}\n", "template failed"),
    ],
)
def test_bad_templates_raise_card_error(
    recipe: Recipe, plan: Plan, tmp_path: Path, main: str, message: str
) -> None:
    (tmp_path / "modelcard.md.j2").write_text(main, encoding="utf-8")
    with pytest.raises(CardError, match=message):
        render_card(CardInputs(recipe=recipe, plan=plan), templates_dir=tmp_path)


def test_template_that_drops_notes_would_lose_them(
    recipe: Recipe, plan: Plan, tmp_path: Path
) -> None:
    (tmp_path / "modelcard.md.j2").write_text("---\n{{ card_data }}\n---\nbody\n", "utf-8")
    existing = f"---\nlicense: mit\n---\n{NOTES_START}\nmine\n{NOTES_END}\n"
    with pytest.raises(CardError, match="notes"):
        render_card(CardInputs(recipe=recipe, plan=plan), tmp_path, existing=existing)


def test_invalid_eval_results_raise_and_nothing_is_written(
    recipe: Recipe, plan: Plan, tmp_path: Path
) -> None:
    _, results = sample_eval()
    broken = [dataclasses.replace(results[0], metric_value=None)]
    readme = write_card(CardInputs(recipe=recipe, plan=plan), tmp_path)
    before = readme.read_text(encoding="utf-8")
    with pytest.raises(CardError, match="model.index"):
        write_card(CardInputs(recipe=recipe, plan=plan, eval_results=broken), tmp_path)
    assert readme.read_text(encoding="utf-8") == before

    with pytest.raises(CardError, match="EvalResult"):
        build_card_data(CardInputs(recipe=recipe, plan=plan, eval_results=[{"acc": 1.0}]))  # type: ignore[list-item]
    text_value = [dataclasses.replace(results[0], metric_value="high")]
    with pytest.raises(CardError, match="not a number"):
        render_card(CardInputs(recipe=recipe, plan=plan, eval_results=text_value))


@pytest.mark.parametrize(
    ("front", "message"),
    [
        ("license: mit\ntags: [merge]\nbase_model_relation: merge", "base_model is missing"),
        (
            "license: mit\nbase_model: [../parents/base]\ntags: [merge]\n"
            "base_model_relation: merge",
            "not a Hub model id",
        ),
        ("license: mit\nbase_model: []\ntags: [merge]\nbase_model_relation: merge", "Hub ids"),
        (
            "license: not-a-license\nbase_model: [a]\ntags: [merge]\nbase_model_relation: merge",
            "Hub license",
        ),
        ("license: mit\nbase_model: [a]\ntags: [merge]", "base_model_relation"),
        (
            "license: mit\nbase_model: [a]\ntags: [merge, merge]\nbase_model_relation: merge",
            "round-trip",
        ),
        ("license: mit\nbase_model: [a]\ntags: [x]\nbase_model_relation: merge", "'merge'"),
        ("- just\n- a list", "mapping"),
        ("license: [unclosed", "not valid YAML"),
        (
            "license: mit\nbase_model: [a]\ntags: [merge]\nbase_model_relation: merge\n"
            "model-index:\n- name: x\n  results:\n  - task: {type: t}\n    metrics: []",
            "model.index",
        ),
    ],
)
def test_validate_card_rejects_bad_metadata(front: str, message: str) -> None:
    with pytest.raises(CardError, match=message):
        validate_card(f"---\n{front}\n---\n# body\n")


def test_validate_card_accepts_a_minimal_card() -> None:
    card = validate_card(
        "---\nlicense: mit\nbase_model: [a/b, c/d]\ntags: [merge]\nbase_model_relation: merge\n"
        "---\n# body\n"
    )
    assert card.data.base_model == ["a/b", "c/d"]


def test_license_warning_when_a_parent_differs(recipe: Recipe, plan: Plan) -> None:
    other = plan.parents[1].ref
    mixed = with_parents(plan, **{other: {"license": "cc-by-nc-4.0"}})
    warnings = license_warnings(recipe, mixed.parents)
    assert len(warnings) == 2
    assert "tiny-base: apache-2.0, tiny-other: cc-by-nc-4.0" in warnings[0]
    assert (
        "'apache-2.0', which differs from the license of tiny-other (cc-by-nc-4.0)" in warnings[1]
    )
    text = render_card(CardInputs(recipe=recipe, plan=mixed))
    assert all(f"> ⚠️ {w}" in text for w in warnings)
    assert "tiny-other (cc-by-nc-4.0)." in text


def test_unknown_license_is_listed_not_warned(recipe: Recipe, plan: Plan) -> None:
    other = plan.parents[1].ref
    unknown = with_parents(plan, **{other: {"license": None}})
    assert license_warnings(recipe, unknown.parents) == []
    text = render_card(CardInputs(recipe=recipe, plan=unknown))
    assert not re.search(r"^> ⚠️ .*licen", text, re.MULTILINE)
    assert "tiny-other (unknown)." in text


def test_license_falls_back_to_parents_then_other(recipe: Recipe, plan: Plan) -> None:
    no_license = dataclasses.replace(
        recipe, publish=recipe.publish.model_copy(update={"license": None})
    )
    assert build_card_data(CardInputs(no_license, plan)).license == "apache-2.0"
    assert license_warnings(no_license, plan.parents) == []

    other = plan.parents[1].ref
    mixed = with_parents(plan, **{other: {"license": "mit"}})
    inputs = CardInputs(no_license, mixed, extra_warnings=["look here"])
    text = render_card(inputs)
    assert ModelCard(text).data.license == "other"
    assert "publish.license" not in text
    assert any("so the card says 'other'; set publish.license" in n for n in operator_notes(inputs))
    assert "> ⚠️ look here" in text


def test_default_templates_dir_is_the_repositorys() -> None:
    assert DEFAULT_TEMPLATES_DIR == REPO_ROOT / "templates"
    assert (DEFAULT_TEMPLATES_DIR / "modelcard.md.j2").is_file()
    assert (
        (DEFAULT_TEMPLATES_DIR / "modelcard.md.j2")
        .read_text(encoding="utf-8")
        .startswith("---\n{{ card_data }}\n---")
    )


def test_parent_info_license_round_trip_is_used(plan: Plan) -> None:
    # The tiny parents' own cards say apache-2.0: resolve_parents read them.
    assert {p.license for p in plan.parents} == {"apache-2.0"}
    assert isinstance(plan.parents[0], ParentInfo) and plan.parents[0].is_base
