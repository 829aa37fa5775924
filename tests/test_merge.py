"""The merge stage's own checks: missing parents, other architectures and vocabularies, the
recipe's chat template, mergekit's README replaced."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from publisher.merge import MergeError, run_merge_stage
from publisher.parents import resolve_parents
from publisher.recipe import load_recipe

RECIPE = """\
models:
  - model: {base}
  - model: {other}
merge_method: slerp
base_model: {base}
parameters:
  t: 0.5
dtype: float32
"""


def merge(write_recipe, tmp_path, base: Path, other: Path, extra: str = "") -> Path:
    path = write_recipe(RECIPE.replace("{base}", str(base)).replace("{other}", str(other)) + extra)
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
    path = write_recipe(RECIPE.replace("{base}", str(base)).replace("{other}", str(other)))
    recipe = load_recipe(path)
    parents = resolve_parents(recipe)
    dirs = {p.ref: Path(p.path) for p in parents}
    dirs[str(other)] = tmp_path / "gone"
    with pytest.raises(MergeError, match="is missing"):
        run_merge_stage(recipe, parents, dirs, tmp_path / "out")


def test_other_architecture_is_refused(write_recipe, tmp_path, tiny_parents):
    base, other = tiny_parents
    odd = Path(shutil.copytree(other, tmp_path / "odd"))
    config = json.loads((odd / "config.json").read_text())
    config["architectures"] = ["LlamaForCausalLM"]
    config["model_type"] = "llama"
    (odd / "config.json").write_text(json.dumps(config))
    with pytest.raises(MergeError, match="different architectures"):
        merge(write_recipe, tmp_path, base, odd)


def test_other_vocabulary_is_refused(write_recipe, tmp_path, tiny_parents):
    from publisher.tiny import TinyModelSpec, build_tiny_parent

    base, _ = tiny_parents
    small = build_tiny_parent(tmp_path / "small-vocab", seed=7, spec=TinyModelSpec(vocab_size=300))
    with pytest.raises(MergeError, match="vocabulary"):
        merge(write_recipe, tmp_path, base, small)
