"""The plan is the t mergekit really uses: merge the tiny parents in float32, then re-merge every
tensor at the plan's t (it must be bit-for-bit what was written) and recover t from the merged
tensors themselves, and compare with `publisher plan --json`, tensor by tensor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from publisher.cli import main
from publisher.merge import run_merge_stage
from publisher.parents import local_revision, resolve_parents
from publisher.recipe import load_recipe
from publisher.schedule import build_plan
from publisher.weights import SafetensorsDir, check_weights, parent_tensor_names, recover_t

HEADER = """\
merge_method: slerp
base_model: {base}
dtype: float32
"""


def one_slice(base: str, other: str, layers: str = "[0, 2]") -> str:
    """A one-slice recipe with a scalar t, for tests about the parents rather than the schedule."""
    return (
        HEADER.replace("{base}", base)
        + f"""\
slices:
  - sources:
      - model: {base}
        layer_range: {layers}
      - model: {other}
        layer_range: {layers}
parameters:
  t: 0.5
"""
    )


RECIPES = {
    "gradients-and-filters": """\
slices:
  - sources:
      - model: {base}
        layer_range: [0, 4]
      - model: {other}
        layer_range: [0, 4]
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
""",
    "q-proj-filter-and-fallback": """\
slices:
  - sources:
      - model: {base}
        layer_range: [0, 4]
      - model: {other}
        layer_range: [0, 4]
parameters:
  t:
    - filter: q_proj
      value: [0.1, 0.9]
    - filter: mlp
      value: 0.8
    - value: [0.2, 0.4]
""",
    "scalar-t": """\
slices:
  - sources:
      - model: {base}
        layer_range: [0, 4]
      - model: {other}
        layer_range: [0, 4]
parameters:
  t: 0.3
""",
    "several-slices": """\
slices:
  - sources:
      - model: {base}
        layer_range: [0, 2]
      - model: {other}
        layer_range: [0, 2]
    parameters:
      t:
        - filter: self_attn
          value: [0, 1]
        - value: 0.25
  - sources:
      - model: {base}
        layer_range: [2, 4]
      - model: {other}
        layer_range: [1, 3]
    parameters:
      t:
        - filter: mlp
          value: [0.9, 0.6]
        - value: 0.75
parameters:
  t: 0.4
""",
    "models-syntax": """\
models:
  - model: {base}
  - model: {other}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.2, 0.8]
    - value: 0.6
""",
}


def plan_json(path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["plan", "--json", str(path)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_plan_matches_the_t_recovered_from_merged_weights(name, write_recipe, tmp_path, capsys):
    path = write_recipe(HEADER + RECIPES[name], name=f"{name}.yaml")
    contract = plan_json(path, capsys)
    recipe = load_recipe(path)
    parents = resolve_parents(recipe)
    merged = run_merge_stage(
        recipe, parents, {p.ref: Path(p.path) for p in parents}, tmp_path / "merged"
    )

    plan = build_plan(recipe, parents)
    assert plan.tensors == contract["tensors"]

    written = set(SafetensorsDir(merged).names())
    assert written == set(contract["tensors"]), "the plan must list every tensor the merge writes"
    for name_out in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert name_out in contract["tensors"]
    dirs = {p.ref: Path(p.path) for p in parents}
    report = check_weights(plan, merged, dirs, dtype="float32")
    assert report.passed and len(report.tensors) == len(written)
    assert {c.exact for c in report.tensors} == {1.0}  # same kernel, same machine: bit for bit
    base, other = (SafetensorsDir(dirs[ref]) for ref in (plan.base_model, plan.parents[1].ref))
    stored = SafetensorsDir(merged)
    for name_out, t in contract["tensors"].items():
        base_name, other_name = parent_tensor_names(plan, name_out)
        recovered, _ = recover_t(stored.get(name_out), base.get(base_name), other.get(other_name))
        assert recovered == pytest.approx(t, abs=1e-3), name_out


def test_plan_json_contract_shape(write_recipe, capsys):
    contract = plan_json(write_recipe(HEADER + RECIPES["gradients-and-filters"]), capsys)
    assert contract["groups"] == ["self_attn", "mlp", "default"]
    assert [row["index"] for row in contract["layers"]] == [0, 1, 2, 3]
    first, last = contract["layers"][0]["groups"], contract["layers"][-1]["groups"]
    assert first == {"self_attn": 0.0, "mlp": 1.0, "default": 0.5}
    assert last == {"self_attn": 1.0, "mlp": 0.0, "default": 0.5}
    # Interior layers interpolate the anchors at i/(L-1): layer 1 sits at 1/3 of [0,.5,.3,.7,1].
    assert contract["layers"][1]["groups"]["self_attn"] == pytest.approx(
        0.5 - (1 / 3 * 4 - 1) * 0.2
    )
    assert contract["tensors"]["model.layers.2.mlp.down_proj.weight"] == pytest.approx(
        contract["layers"][2]["groups"]["mlp"]
    )


def test_several_slices_record_source_layers(write_recipe, capsys):
    contract = plan_json(write_recipe(HEADER + RECIPES["several-slices"]), capsys)
    base, other = sorted(
        contract["layers"][2]["source_layers"].items(), key=lambda kv: "other" in kv[0]
    )
    assert base[1] == 2 and other[1] == 1
    assert [row["slice_index"] for row in contract["layers"]] == [0, 0, 1, 1]


def test_seed_recipe_plans_offline_from_its_lock(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = Path(__file__).resolve().parent.parent
    contract = plan_json(root / "recipes" / "strangemerges-34-7b-slerp.yaml", capsys)
    assert len(contract["layers"]) == 32
    attn = [row["groups"]["self_attn"] for row in contract["layers"]]
    mlp = [row["groups"]["mlp"] for row in contract["layers"]]
    assert min(attn) == 0 and max(attn) == pytest.approx(0.7)
    assert min(mlp) == 0 and max(mlp) == pytest.approx(1.0)
    assert {row["groups"]["default"] for row in contract["layers"]} == {0.5}
    assert all(p["revision"] is None and not p["resolved"] for p in contract["parents"])
    assert "lm_head.weight" in contract["tensors"]


def test_unresolvable_hub_parent_offline_says_so(tmp_path, capsys, monkeypatch):
    path = tmp_path / "hub.yaml"
    path.write_text(one_slice("org/base-model", "org/other-model"))
    assert main(["plan", str(path)]) == 1
    err = capsys.readouterr().err
    assert "org/base-model" in err and "publisher lock" in err and "Traceback" not in err


def test_lock_offline_gives_its_advice_once(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1 at start-up
    path = tmp_path / "hub.yaml"
    path.write_text(one_slice("org/base-model", "org/other-model"))
    assert main(["lock", str(path)]) == 0
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    # Each parent says why it is not pinned; what to do is said once, for both.
    assert "org/base-model: UNRESOLVED (offline when locked)" in printed
    assert printed.count("publisher lock") == 1


def test_local_revision_follows_content_and_reuses_cached_digests(tmp_path, monkeypatch):
    import hashlib
    import os

    from publisher import digests

    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("PUBLISHER_CACHE_DIR", str(cache_dir))
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "config.json").write_text('{"model_type": "mistral"}')
    weights = parent / "model.safetensors"
    weights.write_bytes(b"A" * 4096)
    (parent / "notes.txt").write_text("not part of the revision")
    hour_ago = 1_000_000_000 * 3600
    for file in parent.iterdir():
        stamp = file.stat().st_mtime_ns - hour_ago
        os.utime(file, ns=(stamp, stamp))

    first = local_revision(parent)
    assert digests.sha256_file(weights) == hashlib.sha256(b"A" * 4096).hexdigest()
    assert local_revision(parent) == first
    (parent / "notes.txt").write_text("edited")
    assert local_revision(parent) == first

    # Both digests persisted; a poisoned entry, read by a fresh process, proves the file is used.
    cache_file = cache_dir / "file-sha256.json"
    cache = json.loads(cache_file.read_text())
    assert set(cache) == {str((parent / "config.json").resolve()), str(weights.resolve())}
    cache[str(weights.resolve())]["sha256"] = "0" * 64
    cache_file.write_text(json.dumps(cache))
    monkeypatch.setattr(digests, "_cache", None)  # as in a new process
    assert local_revision(parent) != first

    # New bytes give a new stamp, so the revision follows the content, not the stale entry.
    weights.write_bytes(b"B" * 4096)
    assert local_revision(parent) != first
    weights.write_bytes(b"A" * 4096)
    assert local_revision(parent) == first


def test_layer_range_past_the_parents_layers_is_refused(write_recipe, capsys):
    recipe = write_recipe(one_slice("{base}", "{other}", layers="[2, 8]"))
    assert main(["plan", str(recipe), "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # no bogus table
    assert "layer_range [2, 8]" in captured.err and "runs past its 4 layers" in captured.err


@pytest.mark.parametrize("command", ["plan", "lock"])
def test_missing_local_parent_is_named_as_a_directory(command, tmp_path, capsys):
    path = tmp_path / "local.yaml"
    path.write_text(one_slice("./parents/base", "./parents/other"))
    assert main([command, str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'parents' / 'base'} does not exist" in err
    assert "Hub lookup" not in err and "Traceback" not in err
    assert not (tmp_path / "local.lock.json").exists()
