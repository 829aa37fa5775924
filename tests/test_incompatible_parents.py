"""Parents SLERP cannot merge (another architecture, other shapes, another vocabulary, tied
embeddings against untied ones) are refused from their config.json, before any weight is
downloaded: one `FILE:LINE:COL:` line at the other parent in the recipe, naming both parents and
the field, never mergekit's traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TWO_PARENT_RECIPE
from huggingface_hub import HfApi

from publisher.cli import main
from publisher.tiny_archs import build_arch_parent

CASES = {
    # case: (the field named first, how the other parent differs from a tiny Mistral)
    "architecture": ("architectures", {"arch": "qwen2"}),
    "shapes": ("intermediate_size", {"intermediate_size": 96}),
    "vocabulary": ("vocab_size", {"vocab_size": 300}),
    # a tied parent has no lm_head: mergekit would blend the other's lm_head with nothing
    "tied-embeddings": ("tie_word_embeddings", {"tie_word_embeddings": True}),
}


@pytest.fixture(scope="module")
def odd_parents(tmp_path_factory, arch_parents) -> dict[str, tuple[Path, Path]]:
    """Per case: (a tiny Mistral, a parent it cannot be merged with)."""
    base, _ = arch_parents("mistral")
    root = tmp_path_factory.mktemp("odd-parents")
    pairs = {}
    for case, (_, change) in CASES.items():
        change = dict(change)
        arch = change.pop("arch", "mistral")
        pairs[case] = (base, build_arch_parent(root / case, arch, seed=2, **change))
    return pairs


def run_refused(recipe: Path, base: str, other: str, field: str, capsys) -> str:
    """Run the recipe; assert the one clear refusal and return stderr."""
    assert main(["run", str(recipe), "--out", str(recipe.parent / "run")]) == 1
    captured = capsys.readouterr()
    err = captured.err
    text = recipe.read_text()
    line = text.splitlines().index(f"  - model: {other}") + 1
    where = f"{recipe}:{line}:{len('  - model: ') + 1}: "
    assert f"{where}parents '{base}' and '{other}' differ in {field} (" in err, err
    assert "by their config.json" in err and "Traceback" not in captured.out + err
    assert len(err.strip().splitlines()) == 1
    assert not (recipe.parent / "run" / "merged").exists()
    return err


@pytest.mark.parametrize("case", list(CASES))
def test_local_parents_are_refused(case, odd_parents, tmp_path, capsys):
    base, other = odd_parents[case]
    recipe = tmp_path / "odd.yaml"
    recipe.write_text(TWO_PARENT_RECIPE.format(base=base, other=other), encoding="utf-8")
    run_refused(recipe, str(base), str(other), CASES[case][0], capsys)


@pytest.mark.parametrize("case", list(CASES))
def test_hub_parents_are_refused_before_any_weight_is_downloaded(
    case, odd_parents, local_hub, tmp_path, capsys
):
    api = HfApi()
    ids = []
    for name, folder in zip(("base", case), odd_parents[case], strict=True):
        repo = f"tester/{name}"
        api.create_repo(repo)
        api.upload_folder(folder_path=str(folder), repo_id=repo)
        ids.append(repo)
    recipe = tmp_path / "odd.yaml"
    recipe.write_text(TWO_PARENT_RECIPE.format(base=ids[0], other=ids[1]), encoding="utf-8")
    assert main(["lock", str(recipe)]) == 0
    lock = json.loads((tmp_path / "odd.lock.json").read_text())
    assert all(lock["parents"][repo]["revision"] for repo in ids)
    local_hub.stats.reset()
    capsys.readouterr()  # the uploads' and the lock's progress
    err = run_refused(recipe, ids[0], ids[1], CASES[case][0], capsys)
    assert "mergekit" not in err
    # The lock reads safetensors headers with range requests (206); a download is a 200.
    downloads = [r for r in local_hub.stats.requests if r.status != 206]
    assert not [r.path for r in downloads if r.path.endswith(".safetensors")]
    assert not list((tmp_path / "hf-home").rglob("*.safetensors"))


def test_the_refusal_is_annotated_on_the_other_parents_line(
    odd_parents, tmp_path, monkeypatch, capsys
):
    """In GitHub Actions the refusal is an error annotation on the recipe's line, like a
    recipe problem, through the run's stage error too."""
    base, other = odd_parents["tied-embeddings"]
    recipe = tmp_path / "recipes" / "odd.yaml"
    recipe.parent.mkdir()
    recipe.write_text(TWO_PARENT_RECIPE.format(base=base, other=other), encoding="utf-8")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    for argv in (["plan", str(recipe)], ["run", str(recipe), "--out", str(tmp_path / "run")]):
        assert main(argv) == 1
        out = capsys.readouterr().out
        (line,) = [line for line in out.splitlines() if line.startswith("::error")]
        opts, _, message = line.removeprefix("::error ").partition("::")
        assert dict(kv.split("=", 1) for kv in opts.split(",")) == {
            "title": "publisher",
            "file": "recipes/odd.yaml",
            "line": "3",
            "col": "12",
        }
        assert message.startswith(f"parents '{base}' and '{other}' differ in tie_word_embeddings")
