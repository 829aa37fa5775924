"""The merge stage's own checks: missing parents, the recipe's chat template, mergekit's README
replaced. (Parents that cannot be merged are refused earlier: test_incompatible_parents.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TWO_PARENT_RECIPE
from safetensors.torch import load_file
from transformers import AutoTokenizer

from publisher.merge import MergeError, MergeRequest, run_merge_stage, safetensors_reads
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


def _mapped(path: Path) -> bool:
    return str(path.resolve()) in Path("/proc/self/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_pread_reads_parents_without_mapping_them(tiny_parents, tmp_path):
    from mergekit.io.loader import TensorLoader

    # A copy: earlier merges in this process may still hold the parents mapped (mergekit
    # caches its loaders).
    shard = Path(shutil.copy(tiny_parents[0] / "model.safetensors", tmp_path))
    with safetensors_reads("pread"):
        loader = TensorLoader.get(str(shard))
        names = loader.keys()  # a safetensors handle, not a dict
        tensors = [loader.get_tensor(name) for name in names]
        assert tensors and not _mapped(shard)
    del loader, tensors
    # Outside the block mergekit's own loader is back: safetensors maps the file.
    loader = TensorLoader.get(str(shard))
    tensor = loader.get_tensor(names[0])
    assert _mapped(shard)
    del loader, tensor


def test_pread_merge_writes_the_same_weights(write_recipe, tmp_path, tiny_parents):
    base, other = tiny_parents
    recipe = load_recipe(
        write_recipe(TWO_PARENT_RECIPE.replace("{base}", str(base)).replace("{other}", str(other)))
    )
    parents = resolve_parents(recipe)
    dirs = {p.ref: Path(p.path) for p in parents}
    merged = {
        reads: load_file(
            run_merge_stage(
                recipe, parents, dirs, tmp_path / reads, MergeRequest(parent_reads=reads)
            )
            / "model.safetensors"
        )
        for reads in ("mmap", "pread")
    }
    assert merged["mmap"].keys() == merged["pread"].keys()
    assert all(torch.equal(merged["mmap"][k], merged["pread"][k]) for k in merged["mmap"])


def test_num_threads_holds_during_the_merge_and_is_restored(
    write_recipe, tmp_path, tiny_parents, monkeypatch
):
    """mergekit's `run_merge` ignores `MergeOptions.num_threads` (only its command line applies
    it): the merge stage sets torch's threads for the merge itself."""
    import mergekit.merge

    seen: list[int] = []
    real_run_merge = mergekit.merge.run_merge

    def watched(*args, **kwargs):  # the real merge, with the threads it runs on noted
        seen.append(torch.get_num_threads())
        return real_run_merge(*args, **kwargs)

    monkeypatch.setattr(mergekit.merge, "run_merge", watched)
    base, other = tiny_parents
    recipe = load_recipe(
        write_recipe(TWO_PARENT_RECIPE.replace("{base}", str(base)).replace("{other}", str(other)))
    )
    parents = resolve_parents(recipe)
    dirs = {p.ref: Path(p.path) for p in parents}
    before = torch.get_num_threads()
    wanted = before + 1
    out = run_merge_stage(recipe, parents, dirs, tmp_path / "out", MergeRequest(num_threads=wanted))
    assert seen == [wanted] and (out / "model.safetensors").exists()
    assert torch.get_num_threads() == before
