"""Recipe validation: every kind of broken recipe gets exit 1 and a FILE:LINE:COL message."""

from __future__ import annotations

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
