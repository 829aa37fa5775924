"""The architectures people merge, end to end: validate, plan, merge, smoke, card and verify on
tiny random-weight parents of each family in `publisher.tiny_archs`, and the plan checked against
the t recovered from the float32 merged weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from publisher.cli import main
from publisher.schedule import Plan
from publisher.settings import DEFAULT_STAGES
from publisher.tiny_archs import ARCHITECTURES
from publisher.weights import SafetensorsDir, recover_t

RECIPE = """\
slices:
  - sources:
      - model: {base}
        layer_range: [0, 3]
      - model: {other}
        layer_range: [0, 3]
merge_method: slerp
base_model: {base}
parameters:
  t:
    - filter: self_attn
      value: [0.2, 0.8]
    - filter: mlp
      value: [0.9, 0.4]
    - value: 0.3
dtype: float32
publish:
  repo_id: tester/tiny-{arch}
  license: apache-2.0
  smoke:
    max_new_tokens: 4
"""
# Every default stage but eval (lm-eval has its own tests; a random model scores nothing).
STAGES = [s for s in DEFAULT_STAGES if s != "eval"]
# The t of each filter group in each of the 3 layers: the recipe's anchors, interpolated.
GROUP_T = {"self_attn": [0.2, 0.5, 0.8], "mlp": [0.9, 0.65, 0.4], "default": [0.3, 0.3, 0.3]}

# Where each tensor of a layer belongs (names after `model.layers.N.`), written out by hand.
ATTN = [f"self_attn.{p}_proj.weight" for p in "qkvo"]
MLP = [f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
NORMS = ["input_layernorm.weight", "post_attention_layernorm.weight"]
LAYER_GROUPS = {
    "llama-tied": {"self_attn": ATTN, "mlp": MLP, "default": NORMS},
    "qwen2": {
        "self_attn": ATTN + [f"self_attn.{p}_proj.bias" for p in "qkv"],
        "mlp": MLP,
        "default": NORMS,
    },
    "gemma2": {
        "self_attn": ATTN,
        "mlp": MLP,
        "default": NORMS
        + ["pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight"],
    },
    "phi3": {
        "self_attn": ["self_attn.qkv_proj.weight", "self_attn.o_proj.weight"],
        "mlp": ["mlp.gate_up_proj.weight", "mlp.down_proj.weight"],
        "default": NORMS,
    },
    "mistral": {"self_attn": ATTN, "mlp": MLP, "default": NORMS},
}
TIED = {"llama-tied", "gemma2"}  # no lm_head tensor: the output layer is the embedding


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def arch_run(request, arch_parents, tmp_path_factory):
    """A validated, verified run of one architecture: (arch, parents, run dir, validate output)."""
    import contextlib
    import io

    arch = request.param
    base, other = arch_parents(arch)
    root = tmp_path_factory.mktemp(f"run-{arch}")
    recipe = root / f"tiny-{arch}.yaml"
    recipe.write_text(RECIPE.format(base=base, other=other, arch=arch), encoding="utf-8")
    run_dir = root / "run"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        validated = main(["validate", str(recipe)])
        ran = main(["run", str(recipe), "--out", str(run_dir), "--stages", ",".join(STAGES)])
    assert (validated, ran) == (0, 0), buffer.getvalue()
    return arch, (base, other), run_dir, buffer.getvalue()


def test_every_stage_passes(arch_run):
    arch, (base, _), run_dir, output = arch_run
    assert f"{run_dir.parent / f'tiny-{arch}.yaml'}: ok" in output  # validate
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [manifest["stages"][s]["status"] for s in STAGES] == ["ok"] * len(STAGES)
    assert json.loads((run_dir / "smoke.json").read_text())["passed"]
    report = json.loads((run_dir / "verify.json").read_text())
    assert report["passed"] and report["failures"] == []
    merged_config = json.loads((run_dir / "merged" / "config.json").read_text())
    parent_config = json.loads((base / "config.json").read_text())
    assert merged_config["architectures"] == parent_config["architectures"]
    assert Plan.read(run_dir / "plan.json").architecture == parent_config["architectures"][0]


def test_tensors_land_in_their_filter_groups(arch_run):
    arch, _, run_dir, _ = arch_run
    plan = Plan.read(run_dir / "plan.json")
    assert plan.groups == ["self_attn", "mlp", "default"] and len(plan.layers) == 3
    for row in plan.layers:
        prefix = f"model.layers.{row.index}."
        expected = {g: sorted(prefix + n for n in names) for g, names in LAYER_GROUPS[arch].items()}
        # mergekit's own t for each tensor says which filter it matched: group by that.
        by_t = {
            g: sorted(n for n, t in row.tensors.items() if math.isclose(t, GROUP_T[g][row.index]))
            for g in GROUP_T
        }
        assert by_t == expected
        assert row.groups == pytest.approx({g: GROUP_T[g][row.index] for g in GROUP_T})
    outside = ["model.embed_tokens.weight", "model.norm.weight"]
    outside += [] if arch in TIED else ["lm_head.weight"]
    assert plan.outside == pytest.approx(dict.fromkeys(outside, 0.3))


def test_plan_matches_t_recovered_from_merged_weights(arch_run):
    _, (base, other), run_dir, _ = arch_run
    plan = Plan.read(run_dir / "plan.json")
    merged, a, b = (SafetensorsDir(Path(d)) for d in (run_dir / "merged", base, other))
    assert sorted(merged.names()) == sorted(plan.tensors) == sorted(a.names())
    for name, planned in plan.tensors.items():
        t, residual = recover_t(merged.get(name), a.get(name), b.get(name))
        assert abs(t - planned) < 1e-4 and residual < 1e-5, (name, planned, t, residual)
