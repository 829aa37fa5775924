"""Every parent passes the same checks, local directory or Hub repo: pickle, remote code, index."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import TWO_PARENT_RECIPE, quiet
from huggingface_hub import HfApi

from publisher.hub import fetch_parents
from publisher.parents import ParentError, ParentInfo, local_tensor_names, parent_files
from publisher.recipe import load_recipe
from publisher.schedule import Plan
from publisher.weights import check_weights

SHARDS = ["config.json", "model.safetensors.index.json", "model-00001-of-00001.safetensors"]


def _index(shard: str):
    return lambda name: {"weight_map": {"a": "model-00001-of-00001.safetensors", "b": shard}}


@pytest.mark.parametrize(
    ("shard", "match"),
    [
        ("*", "names the shard '\\*'"),
        ("../x.safetensors", "names the shard '../x.safetensors'"),
        ("model-00002-of-00001.safetensors", "not a file at the root"),
        ("pytorch_model.bin", "must not lead to pickle weights"),
    ],
)
def test_an_index_cannot_widen_the_download_or_smuggle_a_pickle(shard, match):
    listing = [*SHARDS, "pytorch_model.bin", "x.safetensors"]
    with pytest.raises(ParentError, match=match):
        parent_files("org/model", listing, _index(shard))


def test_odd_file_names_never_reach_the_download_filter():
    wanted, pickled = parent_files(
        "org/model", ["config.json", "*.safetensors", "[a].tiktoken", "model.safetensors"], dict
    )
    assert wanted == ["config.json", "model.safetensors"] and not pickled


def _local(ref: str, path: Path) -> ParentInfo:
    config = json.loads((path / "config.json").read_text())
    return ParentInfo(ref, "local", "0" * 64, True, config, path=str(path))


def _pickled_copy(parent: Path, into: Path) -> Path:
    """`parent` with its weights as a PyTorch pickle (`pytorch_model.bin`) instead."""
    import torch
    from safetensors.torch import load_file

    into.mkdir()
    for file in parent.iterdir():
        if not file.name.endswith(".safetensors"):
            shutil.copy(file, into / file.name)
    torch.save(load_file(str(parent / "model.safetensors")), into / "pytorch_model.bin")
    return into


@pytest.fixture
def pickled(tiny_parents, tmp_path) -> Path:
    return _pickled_copy(tiny_parents[0], tmp_path / "pickled")


def test_local_pickle_parent_needs_allow_pickle(write_recipe, tiny_parents, pickled):
    recipe = load_recipe(write_recipe(TWO_PARENT_RECIPE))
    with pytest.raises(ParentError, match="allow_pickle"):
        fetch_parents(recipe, [_local(str(pickled), pickled)], log=quiet)
    allowed = load_recipe(write_recipe(TWO_PARENT_RECIPE + "publish:\n  allow_pickle: true\n"))
    assert fetch_parents(allowed, [_local(str(pickled), pickled)], log=quiet) == {
        str(pickled): pickled
    }


def test_local_parent_needing_remote_code_is_refused(write_recipe, tiny_parents, tmp_path):
    custom = Path(shutil.copytree(tiny_parents[0], tmp_path / "custom"))
    config = json.loads((custom / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (custom / "config.json").write_text(json.dumps(config))
    recipe = load_recipe(write_recipe(TWO_PARENT_RECIPE))
    with pytest.raises(ParentError, match="config.json has auto_map.*trust_remote_code"):
        fetch_parents(recipe, [_local(str(custom), custom)], log=quiet)


def test_local_index_pointing_at_a_pickle_is_refused(write_recipe, tiny_parents, pickled):
    (pickled / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "pytorch_model.bin"}})
    )
    recipe = load_recipe(write_recipe(TWO_PARENT_RECIPE + "publish:\n  allow_pickle: true\n"))
    with pytest.raises(ParentError, match="must not lead to pickle weights"):
        fetch_parents(recipe, [_local(str(pickled), pickled)], log=quiet)


def test_hub_index_with_a_wildcard_shard_is_refused_before_download(
    tiny_parents, local_hub, write_recipe
):
    api = HfApi()
    repo = "tester/wild"
    api.create_repo(repo)
    api.upload_folder(folder_path=str(tiny_parents[0]), repo_id=repo)
    api.upload_file(
        path_or_fileobj=json.dumps({"weight_map": {"a": "*"}}).encode(),
        path_in_repo="model.safetensors.index.json",
        repo_id=repo,
    )
    info = ParentInfo(repo, "hub", api.model_info(repo).sha, True, {"model_type": "mistral"})
    recipe = load_recipe(write_recipe(TWO_PARENT_RECIPE))
    local_hub.stats.reset()
    with pytest.raises(ParentError, match="names the shard '\\*'"):
        fetch_parents(recipe, [info], log=quiet)
    downloads = [r for r in local_hub.stats.requests if "/resolve/" in str(r)]
    assert all("model.safetensors.index.json" in str(r) for r in downloads), downloads


def test_an_allowed_pickle_parent_is_verified(tiny_run, tiny_parents, pickled):
    """With allow_pickle, a .bin parent is read (weights only, no code) and checked like any."""
    base, other = tiny_parents
    assert local_tensor_names(pickled) == local_tensor_names(base)
    run_dir = tiny_run[1]
    plan = Plan.read(run_dir / "plan.json")
    dirs = {plan.base_model: pickled, str(other): other}
    report = check_weights(plan, run_dir / "merged", dirs, dtype="float32")
    assert report.passed and report.tensors and all(c.exact == 1.0 for c in report.tensors)
