"""Recipe validation: every kind of broken recipe gets exit 1 and a FILE:LINE:COL message."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from publisher.cli import main
from publisher.recipe import load_recipe

VALID = """\
slices:
  - sources:
      - model: {base}
        layer_range: [0, 4]
      - model: {other}
        layer_range: [0, 4]
merge_method: slerp
base_model: {base}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 1]
    - value: 0.5
dtype: float32
"""

LINE_RE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<msg>.+)$")


def run_validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict], str]:
    code = main(["validate", str(path)])
    captured = capsys.readouterr()
    problems = [m.groupdict() for line in captured.err.splitlines() if (m := LINE_RE.match(line))]
    return code, problems, captured.out + captured.err


def test_valid_recipe_passes(write_recipe, capsys):
    code, problems, output = run_validate(write_recipe(VALID), capsys)
    assert code == 0, output
    assert problems == []
    assert "ok" in output


def test_any_wild_slerp_config_gets_defaults(write_recipe, monkeypatch):
    monkeypatch.setenv("PUBLISHER_NAMESPACE", "someone")
    recipe = load_recipe(write_recipe(VALID, name="my-merge.yaml"))
    assert recipe.repo_id == "someone/my-merge"
    assert recipe.publish.license is None
    assert len(recipe.publish.smoke.prompts) == 2
    monkeypatch.delenv("PUBLISHER_NAMESPACE")
    assert load_recipe(write_recipe(VALID, name="my-merge.yaml")).repo_id == "my-merge"


BROKEN = [
    # (id, text, expected line, message fragment)
    (
        "other-method",
        VALID.replace("merge_method: slerp", "merge_method: ties"),
        7,
        "not supported",
    ),
    (
        "three-sources",
        VALID.replace(
            "      - model: {other}\n        layer_range: [0, 4]\n",
            "      - model: {other}\n        layer_range: [0, 4]\n"
            "      - model: {other}\n        layer_range: [0, 4]\n",
        ),
        3,
        "exactly two",
    ),
    (
        "base-not-among-sources",
        VALID.replace("base_model: {base}", "base_model: {other}x"),
        8,
        "not among its sources",
    ),
    (
        "unequal-layer-counts",
        VALID.replace(
            "layer_range: [0, 4]\n      - model: {other}",
            "layer_range: [0, 3]\n      - model: {other}",
        ),
        3,
        "same number",
    ),
    (
        "descending-range",
        VALID.replace(
            "layer_range: [0, 4]\n      - model: {other}",
            "layer_range: [4, 0]\n      - model: {other}",
        ),
        4,
        "ascending",
    ),
    (
        "missing-t",
        VALID.replace("parameters:\n  t:", "parameters:\n  notes:").replace(
            "    - filter: self_attn\n      value: [0, 0.5, 1]\n    - value: 0.5\n", "    x\n"
        ),
        10,
        "unknown SLERP parameter",
    ),
    ("t-absent", VALID.split("parameters:")[0] + "dtype: float32\n", 1, "no 't' parameter"),
    ("t-out-of-range", VALID.replace("[0, 0.5, 1]", "[0, 1.5, 1]"), 12, "outside [0, 1]"),
    ("t-not-number", VALID.replace("- value: 0.5", "- value: lots"), 13, "not a number"),
    ("unknown-dtype", VALID.replace("dtype: float32", "dtype: float33"), 14, "float32"),
    ("missing-base", VALID.replace("base_model: {base}\n", ""), 1, "base_model"),
    ("bad-repo-id", VALID + "publish:\n  repo_id: not a/valid id\n", 16, "repo id"),
    ("unknown-license", VALID + "publish:\n  license: apache2\n", 16, "apache-2.0"),
    (
        "typo-top-level",
        VALID.replace("merge_method:", "merge_methd:"),
        7,
        "Did you mean 'merge_method'",
    ),
    ("typo-publish", VALID + "publish:\n  licence: mit\n", 16, "Did you mean 'license'"),
    (
        "typo-slice",
        VALID.replace(
            "        layer_range: [0, 4]\n      - model: {other}",
            "        layer_rnage: [0, 4]\n      - model: {other}",
        ),
        4,
        "Did you mean 'layer_range'",
    ),
    ("empty-file", "", 1, "empty"),
    ("whitespace-file", "\n\n   \n", 1, "empty"),
    ("not-a-mapping", "- just\n- a list\n", 1, "mapping at the top"),
    ("scalar-top", "slerp\n", 1, "mapping at the top"),
    ("bad-yaml", "slices:\n  - sources: [\n", 3, "invalid YAML"),
    ("publish-not-mapping", VALID + "publish: 3\n", 15, "must be a mapping"),
    (
        "models-three",
        """\
models:
  - model: {base}
  - model: {other}
  - model: {other}
merge_method: slerp
base_model: {base}
parameters:
  t: 0.5
""",
        2,
        "exactly two models",
    ),
    ("unknown-eval-suite", VALID + "publish:\n  eval:\n    suite: openllm\n", 17, "openllm-v1"),
    (
        "model-lora-mapping",
        VALID.replace("- model: {other}", "- model: {model: {path: {other}}, lora: me/adapter}"),
        5,
        "merge it into its model first",
    ),
    (
        "model-plus-lora",
        VALID.replace("- model: {other}", "- model: {other}+me/adapter"),
        5,
        "LoRA",
    ),
    (
        "model-path-without-model",  # mergekit's ModelPath where a ModelReference belongs
        VALID.replace("- model: {other}", "- model: {path: {other}}"),
        5,
        "or mergekit's mapping {model: {path: org/name, revision: main}}",
    ),
    ("wrong-type", VALID + "publish:\n  private: maybe\n", 16, "private"),
]


@pytest.mark.parametrize(
    ("text", "line", "fragment"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN]
)
def test_broken_recipe_is_reported_at_its_line(write_recipe, capsys, text, line, fragment):
    path = write_recipe(text)
    code, problems, output = run_validate(path, capsys)
    assert code == 1, output
    assert "Traceback" not in output
    assert problems, output
    assert all(p["file"] == str(path) for p in problems)
    matching = [p for p in problems if fragment in p["msg"]]
    assert matching, f"no message containing {fragment!r}: {problems}"
    assert int(matching[0]["line"]) == line, matching


def test_binary_garbage_never_tracebacks(tmp_path, capsys):
    path = tmp_path / "garbage.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    code, problems, output = run_validate(path, capsys)
    assert code == 1
    assert "Traceback" not in output
    assert problems and problems[0]["line"] == "1"


def test_missing_file_is_reported(tmp_path, capsys):
    code, problems, output = run_validate(tmp_path / "nope.yaml", capsys)
    assert code == 1
    assert "cannot read recipe" in output


def test_several_files_exit_1_if_any_invalid(write_recipe, capsys):
    good = write_recipe(VALID, name="good.yaml")
    bad = write_recipe(
        VALID.replace("merge_method: slerp", "merge_method: linear"), name="bad.yaml"
    )
    assert main(["validate", str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and f"{good}:" not in err


def test_shipped_recipes_are_valid(capsys):
    root = Path(__file__).resolve().parent.parent / "recipes"
    recipes = sorted(root.glob("*.yaml"))
    assert len(recipes) >= 2
    assert main(["validate", *map(str, recipes)]) == 0, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# audit: t entries, where t comes from, one line per node, repo ids, nesting, duplicate keys

TWO_SLICES = """\
slices:
  - sources:
      - model: {base}
        layer_range: [0, 2]
      - model: {other}
        layer_range: [0, 2]
    parameters:
      t: 0.5
  - sources:
      - model: {base}
        layer_range: [2, 4]
      - model: {other}
        layer_range: [2, 4]
merge_method: slerp
base_model: {base}
"""

MODELS = """\
models:
  - model: {base}
  - model: {other}
merge_method: slerp
base_model: {base}
"""

TYPO_ENTRY = "[{filtr: self_attn, value: [0, 1]}, {value: 0.5}]"

AUDIT = [
    # (id, text, expected line, message fragment)
    (
        "t-entry-typo-top",
        VALID.split("parameters:")[0] + f"parameters:\n  t: {TYPO_ENTRY}\n",
        10,
        "unknown key 'filtr' in a t entry. Did you mean 'filter'?",
    ),
    (
        "t-entry-typo-slice",
        TWO_SLICES.replace("      t: 0.5", f"      t: {TYPO_ENTRY}"),
        8,
        "Did you mean 'filter'?",
    ),
    (
        "t-entry-typo-model",
        MODELS.replace(
            "  - model: {other}\n",
            f"  - model: {{other}}\n    parameters:\n      t: {TYPO_ENTRY}\n",
        )
        + "parameters:\n  t: 0.5\n",
        5,
        "Did you mean 'filter'?",
    ),
    (
        "t-entry-typo-source",
        VALID.replace(
            "      - model: {other}\n        layer_range: [0, 4]\n",
            f"      - model: {{other}}\n        layer_range: [0, 4]\n"
            f"        parameters: {{t: {TYPO_ENTRY}}}\n",
        ),
        7,
        "Did you mean 'filter'?",
    ),
    ("t-empty-list", VALID.split("parameters:")[0] + "parameters:\n  t: []\n", 10, "empty list"),
    (
        "t-no-fallback",
        VALID.replace("    - value: 0.5\n", ""),
        11,
        "add e.g. '- value: 0.5' as the last entry",
    ),
    (
        "t-no-fallback-in-slice-or-top",
        TWO_SLICES.replace("      t: 0.5", "      t: [{filter: mlp, value: 1}]")
        + "parameters:\n  t: {filter: self_attn, value: 0.5}\n",
        17,
        "no entry without a filter",
    ),
    (
        "t-only-per-source",
        VALID.split("parameters:")[0].replace(
            "      - model: {other}\n        layer_range: [0, 4]\n",
            "      - model: {other}\n        layer_range: [0, 4]\n        parameters:\n"
            "          t: 0.5\n",
        ),
        8,
        "move it there",
    ),
    (
        "t-only-per-model",
        MODELS.replace(
            "  - model: {other}\n", "  - model: {other}\n    parameters:\n      t: 0.5\n"
        ),
        5,
        "top-level 'parameters:'; move it there",
    ),
    ("slice-without-t", TWO_SLICES, 9, "slice 1 gets no t"),
    (
        "t-entry-after-fallback",
        VALID.replace("    - filter: self_attn\n", "    - value: 0.1\n    - filter: self_attn\n"),
        12,
        "never used",
    ),
    ("t-null", VALID.split("parameters:")[0] + "parameters:\n  t:\n", 10, "t must be a number"),
    (
        "chat-template-not-text",
        VALID + "publish:\n  chat_template: [a, b]\n",
        16,
        "chat_template must be text; write one string",
    ),
    ("tags-not-a-list", VALID + "publish:\n  tags: abc\n", 16, "'tags: [abc]'"),
    ("repo-id-trailing-dash", VALID + "publish:\n  repo_id: Gille/foo-\n", 16, "repo id"),
    ("repo-id-dot-git", VALID + "publish:\n  repo_id: Gille/foo.git\n", 16, ".git"),
    ("duplicate-key", VALID + "dtype: bfloat16\n", 15, "duplicate key 'dtype' (first at line 14)"),
]


@pytest.mark.parametrize(
    ("text", "line", "fragment"), [a[1:] for a in AUDIT], ids=[a[0] for a in AUDIT]
)
def test_audit_findings_are_reported_at_their_line(write_recipe, capsys, text, line, fragment):
    test_broken_recipe_is_reported_at_its_line(write_recipe, capsys, text, line, fragment)


ONE_LINE = [
    # (id, text, message fragment): pydantic fails once per union member; one line is enough
    ("t-value-mapping", VALID.replace("- value: 0.5", "- value: {a: 1}"), "t value is a mapping"),
    (
        "t-mapping-in-list",
        VALID.split("parameters:")[0] + "parameters:\n  t: [{value: {a: 1}}]\n",
        "t value",
    ),
    ("t-null", VALID.split("parameters:")[0] + "parameters:\n  t:\n", "{filter, value} entries"),
    ("batch-size", VALID + "publish:\n  eval:\n    batch_size: x\n", "a whole number or 'auto'"),
    (
        "inverted-range",
        VALID.replace(
            "layer_range: [0, 4]\n      - model: {other}",
            "layer_range: [4, 0]\n      - model: {other}",
        ),
        "ascending",
    ),
]


@pytest.mark.parametrize(
    ("text", "fragment"), [o[1:] for o in ONE_LINE], ids=[o[0] for o in ONE_LINE]
)
def test_one_bad_node_gives_one_line(write_recipe, capsys, text, fragment):
    code, problems, output = run_validate(write_recipe(text), capsys)
    assert code == 1, output
    assert len(problems) == 1, output
    assert fragment in problems[0]["msg"]


def test_t_filtered_in_slice_falls_back_to_top_level(write_recipe, capsys):
    text = TWO_SLICES.replace("      t: 0.5", "      t: [{filter: mlp, value: 1}]")
    code, problems, output = run_validate(write_recipe(text + "parameters:\n  t: 0.3\n"), capsys)
    assert code == 0, output


def test_default_repo_id_from_file_name_is_checked(write_recipe, capsys):
    path = write_recipe(VALID, name="filename with space.yaml")
    code, problems, output = run_validate(path, capsys)
    assert code == 1, output
    assert [(p["line"], p["col"]) for p in problems] == [("1", "1")]
    assert "'filename with space'" in problems[0]["msg"]
    assert "set publish.repo_id" in problems[0]["msg"]
    ok = write_recipe(VALID + "publish:\n  repo_id: me/fine\n", name="filename with space.yaml")
    assert run_validate(ok, capsys)[0] == 0


def test_deep_nesting_is_a_problem_and_other_files_still_validate(write_recipe, tmp_path, capsys):
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 5000 + "\n", encoding="utf-8")
    good = write_recipe(VALID, name="good.yaml")
    assert main(["validate", str(deep), str(good)]) == 1
    captured = capsys.readouterr()
    assert f"{deep}:1:1: recipe is nested too deeply" in captured.err
    assert "RecursionError" not in captured.err
    assert f"{good}: ok" in captured.out


def test_schema_takes_the_parameters_mergekit_declares_for_slerp():
    from mergekit import merge_methods

    from publisher.recipe_schema import SLERP_PARAMETERS

    assert tuple(p.name for p in merge_methods.get("slerp").spec.parameters) == SLERP_PARAMETERS


def test_mergekit_config_is_built_once(write_recipe):
    from mergekit.config import MergeConfiguration

    recipe = load_recipe(write_recipe(VALID))
    assert isinstance(recipe.config, MergeConfiguration)
    assert recipe.merge_configuration() is recipe.config
    assert recipe.model_refs()[0] == recipe.base_model


SCHEMA = [
    # (id, text, expected line, message fragment): rules the strict schema adds
    ("slices-and-models", VALID + "models:\n  - model: a\n  - model: b\n", 16, "not both"),
    ("publish-null", VALID + "publish:\n", 15, "publish is empty (null)"),
    ("eval-null", VALID + "publish:\n  eval:\n", 16, "publish.eval is empty (null)"),
    ("modules", VALID + "modules: {}\n", 15, "'modules:' is not supported"),
    (
        "shadowed-filter",
        VALID.replace(
            "    - filter: self_attn\n",
            "    - filter: attn\n      value: 0.2\n    - filter: self_attn\n",
        ),
        13,
        "entry 0 above (filter 'attn') matches every tensor this one would",
    ),
    (
        "prompt-without-user",
        VALID + "publish:\n  smoke:\n    prompts: [{system: x}]\n",
        17,
        "this prompt has no 'user'",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "fragment"), [s[1:] for s in SCHEMA], ids=[s[0] for s in SCHEMA]
)
def test_schema_rules_are_reported_at_their_line(write_recipe, capsys, text, line, fragment):
    test_broken_recipe_is_reported_at_its_line(write_recipe, capsys, text, line, fragment)


def test_mergekit_mapping_model_references_are_accepted(write_recipe, tiny_parents, capsys):
    """mergekit's `{model: {path: ...}}` and `{model: ...}` forms mean what the plain strings
    mean: the same parents, the same plan."""
    from mergekit.common import ModelReference

    from publisher.recipe_schema import model_ref_text

    mapping = {"model": {"path": "org/a", "revision": "abc123"}}
    assert model_ref_text(mapping) == str(ModelReference.model_validate(mapping)) == "org/a@abc123"
    text = VALID.replace(
        "      - model: {other}\n", "      - model:\n          model:\n            path: {other}\n"
    ).replace("base_model: {base}", "base_model: {model: {base}}")
    plans = []
    for name, body in (("plain.yaml", VALID), ("mapping.yaml", text)):
        path = write_recipe(body, name=name)
        assert load_recipe(path).model_refs() == [str(p) for p in tiny_parents]
        assert main(["plan", str(path), "--json"]) == 0
        plan = json.loads(capsys.readouterr().out)
        plans.append({k: v for k, v in plan.items() if k != "recipe_sha256"})
    assert plans[0] == plans[1]
