"""The parents evaluated like the merge: cache keys, and turning the comparison off."""

from __future__ import annotations

import dataclasses
import json

from publisher.cli import main
from publisher.parenteval import cache_key
from publisher.parents import ParentInfo
from publisher.recipe import EvalSettings

PARENT = ParentInfo("org/base", "hub", "a" * 40, True, {}, is_base=True)
SETTINGS = EvalSettings(tasks=["publisher_tiny_qa"], limit=10)


def test_the_cache_key_changes_with_everything_that_changes_the_results():
    key, parts = cache_key(PARENT, SETTINGS, "cpu", "0.4.13")
    assert parts["parent"] == "org/base" and parts["revision"] == "a" * 40
    assert cache_key(PARENT, SETTINGS, "cpu", "0.4.13")[0] == key  # stable
    assert (
        cache_key(dataclasses.replace(PARENT, ref="org/base@main"), SETTINGS, "cpu", "0.4.13")[0]
        == key
    )  # the same repo and commit, however the recipe names it
    variants = [
        (dataclasses.replace(PARENT, revision="b" * 40), SETTINGS, "cpu", "0.4.13"),
        (dataclasses.replace(PARENT, ref="org/other"), SETTINGS, "cpu", "0.4.13"),
        (PARENT, SETTINGS.model_copy(update={"limit": 20}), "cpu", "0.4.13"),
        (PARENT, SETTINGS.model_copy(update={"num_fewshot": 5}), "cpu", "0.4.13"),
        (PARENT, SETTINGS.model_copy(update={"tasks": ["arc_easy"]}), "cpu", "0.4.13"),
        (PARENT, SETTINGS.model_copy(update={"dtype": "bfloat16"}), "cpu", "0.4.13"),
        (PARENT, SETTINGS.model_copy(update={"suite": "tiny", "tasks": []}), "cpu", "0.4.13"),
        (PARENT, SETTINGS, "cpu", "0.4.14"),
    ]
    keys = {cache_key(*variant)[0] for variant in variants}
    assert key not in keys and len(keys) == len(variants)


def test_no_parent_eval_drops_the_comparison_and_still_verifies(tiny_run, copy_run, capsys):
    recipe, original, output = tiny_run
    assert output.count("evaluated and cached") + output.count("cached results reused") == 2
    run_dir = copy_run(original)
    assert (run_dir / "eval" / "parents").is_dir()
    flags = ["--stages", "eval,card,verify", "--no-parent-eval"]
    assert main(["run", str(recipe), "--out", str(run_dir), *flags]) == 0, capsys.readouterr().err
    assert not (run_dir / "eval" / "parents").exists()
    card = (run_dir / "README.md").read_text(encoding="utf-8")
    assert "| task | metric | shots | this merge |\n" in card and "Δ" not in card
    view = json.loads((run_dir / "card.json").read_text())["view"]
    assert view["evaluation"]["parents"] == []
    assert json.loads((run_dir / "verify.json").read_text())["passed"]
