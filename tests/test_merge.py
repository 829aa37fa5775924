"""The merge stage's own checks: missing parents, the recipe's chat template, mergekit's README
replaced. (Parents that cannot be merged are refused earlier: test_incompatible_parents.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TWO_PARENT_RECIPE
from transformers import AutoTokenizer

from publisher.merge import MergeError, run_merge_stage
from publisher.parents import resolve_parents
from publisher.recipe import load_recipe


def merge(write_recipe, tmp_path, base: Path, other: Path, extra: str = "") -> Path:
    path = write_recipe(
        TWO_PARENT_RECIPE.replace("{base}", str(base)).replace("{other}", str(other)) + extra
    )
    recipe = load_recipe(path)
    parents = resolve_parents(recipe)
    return run_merge_stage(
        recipe, parents, {p.ref: Path(p.path) for p in parents}, tmp_path / "out"
    )


def test_merged_model_carries_tokenizer_and_no_mergekit_readme(
    write_recipe, tmp_path, tiny_parents
):
    out = merge(write_recipe, tmp_path, *tiny_parents)
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    assert not (out / "README.md").exists()  # our card replaces mergekit's
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert "<|im_start|>" in tokenizer.chat_template


def test_recipe_chat_template_is_applied(write_recipe, tmp_path, tiny_parents):
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    extra = "publish:\n  chat_template: " + json.dumps(template) + "\n"
    out = merge(write_recipe, tmp_path, *tiny_parents, extra=extra)
    tokenizer = AutoTokenizer.from_pretrained(out)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert rendered == "[user] hi\n"


def test_missing_parent_is_a_clear_error(write_recipe, tmp_path, tiny_parents):
    base, other = tiny_parents
    path = write_recipe(
        TWO_PARENT_RECIPE.replace("{base}", str(base)).replace("{other}", str(other))
    )
    recipe = load_recipe(path)
    parents = resolve_parents(recipe)
    dirs = {p.ref: Path(p.path) for p in parents}
    dirs[str(other)] = tmp_path / "gone"
    with pytest.raises(MergeError, match="is missing"):
        run_merge_stage(recipe, parents, dirs, tmp_path / "out")
