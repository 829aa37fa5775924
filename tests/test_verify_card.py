"""Verify checks the data the card was rendered from (`card.json`), not the templates' headings.

Tamper tests edit a copy of the session's finished tiny run (`tiny_run`) and run `publisher run
RECIPE --out RUN --stages verify`, which must fail naming what was changed. Editing the page
alone breaks "README.md is the templates' rendering of card.json"; editing the data and the page
together (rendering the edited data) breaks the check of that datum against its source.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from publisher.card import read_card_data, render_view
from publisher.cli import main

TASK = "publisher_tiny_qa"
RENDERING = "README.md is the templates' rendering of card.json"


def _verify(recipe: Path, run: Path, *extra: str) -> int:
    return main(["run", str(recipe), "--out", str(run), "--stages", "verify", *extra])


def _report(run: Path) -> dict:
    return json.loads((run / "verify.json").read_text(encoding="utf-8"))


def _failed(run: Path) -> list[str]:
    return [c["what"] for c in _report(run)["card_checks"] if not c["ok"]]


def _fails_only_on(recipe: Path, run: Path, capsys, what: str, *extra: str) -> None:
    """verify exits 1, says `what`, and `what` is its only failed card check."""
    assert _verify(recipe, run, *extra) == 1
    err = capsys.readouterr().err
    assert "stage 'verify' failed" in err and what in err
    assert _failed(run) == [what]


def _edit_data(run: Path, edit, templates: Path | None = None) -> None:
    """Apply `edit` to card.json's view (a dict) and render README.md from the edited data, as
    a forger who knows the templates would."""
    from publisher.card import DEFAULT_TEMPLATES_DIR
    from publisher.cardview import CardView

    path = run / "card.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    before = json.dumps(record)
    edit(record["view"])
    assert json.dumps(record) != before, "the edit changed nothing"
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
    view, front = CardView.from_dict(record["view"]), record["front_matter"]
    text = render_view(view, front, templates or DEFAULT_TEMPLATES_DIR)
    (run / "README.md").write_text(text, encoding="utf-8", newline="\n")


@pytest.fixture
def run(tiny_run, copy_run) -> tuple[Path, Path]:
    recipe, run_dir, _ = tiny_run
    return recipe, copy_run(run_dir)


def test_untouched_run_verifies_its_card_data(run, capsys):
    recipe, run_dir = run
    assert _verify(recipe, run_dir, "--force") == 0, capsys.readouterr().err
    report = _report(run_dir)
    assert report["passed"] and report["failures"] == []
    checks = {c["what"]: c for c in report["card_checks"]}
    assert all(c["ok"] for c in checks.values())
    for what in (
        RENDERING,
        "t of layer 0",
        "eval rows 1 value",
        "eval rows 2 value",
        "eval partial_label",
        f"model-index {TASK} acc value",
        f"model-index {TASK} acc shots/limit",
        "smoke status",
        "smoke transcripts 1 reply",
        "smoke transcripts 2 speed",
        "sha256 of model.safetensors",
    ):
        assert what in checks, what
    acc = json.loads((run_dir / "eval" / "results.json").read_text())["results"][TASK]
    assert checks["eval rows 1 value"]["found"].startswith(f"{acc['acc,none']:.4f} ± ")


def test_a_number_changed_on_the_page_alone_fails_with_its_line(run, capsys):
    recipe, run_dir = run
    card = (run_dir / "README.md").read_text(encoding="utf-8")
    view, _ = read_card_data(run_dir / "card.json")
    value = view.evaluation.rows[0].value
    assert card.count(value) >= 1
    (run_dir / "README.md").write_text(card.replace(value, "0.9999", 1), encoding="utf-8")
    _fails_only_on(recipe, run_dir, capsys, RENDERING)
    check = next(c for c in _report(run_dir)["card_checks"] if c["what"] == RENDERING)
    assert value in check["expected"] and "0.9999" in check["found"]


@pytest.mark.parametrize(
    ("what", "edit"),
    [
        ("eval rows 1 value", lambda v: v["evaluation"]["rows"][0].update(value="0.9000")),
        ("eval rows 2 shots", lambda v: v["evaluation"]["rows"][1].update(shots="5")),
        ("eval partial_label", lambda v: v["evaluation"].update(partial_label=None)),
        ("smoke status", lambda v: v["smoke"].update(status="failed")),
        (
            "smoke transcripts 1 speed",
            lambda v: v["smoke"]["transcripts"][0].update(
                speed="8 tokens in 0.01 s (800.0 tokens/s)"
            ),
        ),
        (
            "smoke transcripts 1 rendered_prompt",
            lambda v: v["smoke"]["transcripts"][0].update(
                rendered_prompt=v["smoke"]["transcripts"][0]["rendered_prompt"].replace(
                    "user", "usar", 1
                )
            ),
        ),
        ("t of layer 2", lambda v: v["layers"][2]["cells"][0].update(value="0.999")),
        ("t of layer 1", lambda v: v["constant_groups"][0]["constant"].update(value="0.400")),
    ],
)
def test_changed_card_data_fails_on_that_datum(run, capsys, what, edit):
    recipe, run_dir = run
    _edit_data(run_dir, edit)
    assert _verify(recipe, run_dir) == 1
    err = capsys.readouterr().err
    assert what in err
    failed = _failed(run_dir)
    assert what in failed and RENDERING not in failed


def test_custom_templates_with_other_headings_verify_and_catch_a_wrong_number(
    tiny_run, copy_run, tmp_path, capsys
):
    """A template that renames every heading passes when its numbers are right, and fails when
    one is wrong: verify never reads the headings."""
    recipe, original, _ = tiny_run
    custom = tmp_path / "house-style"
    custom.mkdir()
    (custom / "modelcard.md.j2").write_text(
        "---\n{{ card_data }}\n---\n\n# {{ card.title }}\n\n"
        "### Scores\n\n{% for r in card.evaluation.rows %}"
        "- {{ r.task }} / {{ r.metric }}: **{{ r.value }}** ({{ r.shots }}-shot)\n{% endfor %}\n"
        "### Chat check: {{ card.smoke.status }}\n\n"
        "### Schedule\n\n{% for row in card.layers %}"
        "{{ row.index }}:{% for c in row.cells %} {{ c.value }}{% endfor %}\n{% endfor %}\n"
        "{{ notes_start }}{{ card.notes }}{{ notes_end }}\n",
        encoding="utf-8",
    )
    run_dir = copy_run(original)
    flags = ["--templates", str(custom)]
    stages = ["run", str(recipe), "--out", str(run_dir), "--stages", "card,verify", *flags]
    assert main(stages) == 0, capsys.readouterr().err
    card = (run_dir / "README.md").read_text(encoding="utf-8")
    assert "### Scores" in card and "## Evaluation" not in card and "## Smoke test" not in card
    assert _report(run_dir)["passed"]

    view, _ = read_card_data(run_dir / "card.json")
    value = view.evaluation.rows[0].value
    (run_dir / "README.md").write_text(card.replace(f"**{value}**", "**0.9999**"), "utf-8")
    _fails_only_on(recipe, run_dir, capsys, RENDERING, *flags)

    _edit_data(run_dir, lambda v: v["evaluation"]["rows"][0].update(value="0.9999"), custom)
    assert _verify(recipe, run_dir, *flags) == 1
    assert "eval rows 1 value" in capsys.readouterr().err


def test_swapped_model_index_values_fail(run, capsys):
    recipe, run_dir = run
    # The tiny run's acc and acc_norm can be equal; give them distinct values and re-render
    # the card from them (eval stays current: its inputs are the weights and settings).
    results_path = run_dir / "eval" / "results.json"
    results = json.loads(results_path.read_text())
    results["results"][TASK].update({"acc,none": 0.25, "acc_norm,none": 0.75})
    results_path.write_text(json.dumps(results, indent=2))
    stages = ["run", str(recipe), "--out", str(run_dir), "--stages", "card,verify"]
    assert main(stages) == 0, capsys.readouterr().err

    path = run_dir / "card.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    front = record["front_matter"]
    swapped = front.replace("value: 0.25\n", "value: @\n", 1)
    swapped = swapped.replace("value: 0.75\n", "value: 0.25\n", 1).replace(
        "value: @", "value: 0.75"
    )
    assert swapped != front
    record["front_matter"] = swapped
    path.write_text(json.dumps(record), encoding="utf-8")
    view, _ = read_card_data(path)
    from publisher.card import DEFAULT_TEMPLATES_DIR

    (run_dir / "README.md").write_text(render_view(view, swapped, DEFAULT_TEMPLATES_DIR), "utf-8")
    assert _verify(recipe, run_dir) == 1
    assert f"model-index {TASK} acc value" in capsys.readouterr().err
    assert set(_failed(run_dir)) == {
        f"model-index {TASK} acc value",
        f"model-index {TASK} acc_norm value",
    }


def test_missing_or_foreign_card_json_fails(run, capsys):
    recipe, run_dir = run
    (run_dir / "card.json").write_text('{"view": {"title": 1}}', encoding="utf-8")
    _fails_only_on(recipe, run_dir, capsys, "card.json is the card's data")
    (run_dir / "card.json").unlink()
    _fails_only_on(recipe, run_dir, capsys, "card.json is the card's data")


def test_check_card_without_reports_rejects_their_sections(run):
    from publisher.cardcheck import check_card
    from publisher.rundir import RunDir
    from publisher.schedule import Plan

    _, run_dir = run
    plan = Plan.read(run_dir / "plan.json")
    checks = {c["what"]: c for c in check_card(RunDir(run_dir), plan, None, None, None)}
    assert not checks["no evaluation section without results"]["ok"]
    assert not checks["no evaluation claimed without results"]["ok"]
    assert len(checks["no evaluation claimed without results"]["found"]) == 2
    assert not checks["no smoke-test section without smoke.json"]["ok"]
