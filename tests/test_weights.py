"""The weight check on parents like those of real merges: a tiny base model and a near copy of it
(a few optimizer steps), in bfloat16 and in float32.

Inverting SLERP to recover t is ill-conditioned for such parents; re-merging at the planned t
and comparing is exact. The check must still catch tampered weights, a tensor merged at the
wrong t, and swapped layers.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_SLERP
from safetensors.torch import load_file, save_file

from publisher.cli import main
from publisher.rundir import RunDir
from publisher.schedule import Plan
from publisher.verify import verify_run
from publisher.weights import (
    MAX_ULPS,
    SafetensorsDir,
    check_weights,
    near_t,
    parent_tensor_names,
    recover_t,
    remerge,
    sample_shows_t,
    t_observable,
)

NEAR_COPY_RECIPE = (
    TINY_SLERP
    + """\
dtype: {dtype}
publish:
  repo_id: tester/near-copy
  license: apache-2.0
  smoke:
    max_new_tokens: 4
"""
)


@pytest.fixture(scope="session")
def near_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, str]]:
    """Per dtype, one full default `publisher run` of near-copy parents: (recipe, run, stdout)."""
    from publisher.tiny import build_near_copy_parents

    runs = {}
    for dtype in ("bfloat16", "float32"):
        root = tmp_path_factory.mktemp(f"near-copy-{dtype}")
        base, other = build_near_copy_parents(root / "parents", dtype=dtype)
        recipe = root / "near-copy.yaml"
        text = NEAR_COPY_RECIPE.format(base=base, other=other, dtype=dtype)
        recipe.write_text(text, encoding="utf-8")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["run", str(recipe), "--out", str(root / "run")])
        assert code == 0, out.getvalue()
        runs[dtype] = (recipe, root / "run", out.getvalue())
    return runs


def _parent_dirs(run: Path) -> dict[str, Path]:
    return {p.ref: Path(p.path) for p in Plan.read(RunDir(run).plan).parents}


def _weights(run: Path) -> dict:
    return json.loads((run / "weights.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_near_copy_parents_pass_the_full_default_pipeline(near_runs, dtype):
    _, run, output = near_runs[dtype]
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert [stages[s]["status"] for s in stages] == ["ok"] * 7, stages
    verify = json.loads((run / "verify.json").read_text())
    assert verify["passed"] and verify["weights"]["dtype"] == dtype
    tensors = verify["weights"]["tensors"]
    assert len(tensors) == 39
    # Re-merged on the machine that merged: every tensor bit for bit.
    assert {(c["max_ulps"], c["exact"], c["ok"]) for c in tensors} == {(0.0, 1.0, True)}
    assert "39 tensors re-merged: 39 exact" in output


def test_inverting_slerp_is_off_where_re_merging_is_exact(near_runs):
    """Why verify re-merges: on bf16 near copies the recovered t misses the planned t."""
    _, run, _ = near_runs["bfloat16"]
    plan = Plan.read(RunDir(run).plan)
    dirs = _parent_dirs(run)
    stored = SafetensorsDir(RunDir(run).merged)
    base, other = (SafetensorsDir(dirs[p.ref]) for p in plan.parents)
    errors = []
    for name, t in plan.tensors.items():
        base_name, other_name = parent_tensor_names(plan, name)
        recovered, _ = recover_t(stored.get(name), base.get(base_name), other.get(other_name))
        if not math.isnan(recovered):  # nan: identical parents (the frozen embeddings)
            errors.append(abs(recovered - t))
    assert max(errors) > 0.02  # the old check's bf16 tolerance: it would have failed the run


def test_bf16_card_says_where_t_is_not_observable(near_runs):
    _, run, _ = near_runs["bfloat16"]
    report = _weights(run)
    # The fine-tune left the input embeddings alone: every t stores the same tensor.
    assert [c["name"] for c in report["tensors"] if not c["observable"]] == [
        "model.embed_tokens.weight"
    ]
    assert report["not_observable"] == 1 and report["bound_ulps"] == 0  # merged on the CPU
    verify = json.loads((run / "verify.json").read_text())
    assert verify["weights"]["not_observable"] == 1
    card = (run / "README.md").read_text(encoding="utf-8")
    assert (
        "In bfloat16, the weights of 1 of the 39 checked tensors cannot show t: the parents "
        "are so close there that a t 0.05 away would store the same values" in card
    )
    _, run32, _ = near_runs["float32"]
    assert _weights(run32)["not_observable"] == 0  # float32 keeps the rounding of (1-t)x + tx
    assert "cannot show t" not in (run32 / "README.md").read_text(encoding="utf-8")


def _edit_weights(run: Path, edit) -> None:
    path = run / "merged" / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_tampered_weights_fail_verify_naming_the_tensor(near_runs, copy_run, capsys):
    recipe, original, _ = near_runs["bfloat16"]
    run = copy_run(original)
    name = "model.layers.1.mlp.down_proj.weight"

    def tamper(tensors):
        tensors[name][0, :8] *= 1.5

    _edit_weights(run, tamper)
    # The card drew on the weight check of the old weights, so it is rendered again first.
    assert main(["run", str(recipe), "--out", str(run), "--stages", "card,verify"]) == 1
    err = capsys.readouterr().err
    assert "stage 'verify' failed" in err
    assert f"{name}: differs from the re-merge at the planned t by up to " in err
    assert "ulps of bfloat16; the bound is 0), 0.1% of 8192 elements differ" in err
    checks = json.loads((run / "verify.json").read_text())["weights"]["tensors"]
    assert [c["name"] for c in checks if not c["ok"]] == [name]
    # The full run re-checks the changed weights in the weights stage, before smoke and eval.
    assert main(["run", str(recipe), "--out", str(run)]) == 1
    assert f"stage 'weights' failed: {name}: differs" in capsys.readouterr().err


def _merged_on(run: Path, device: str) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["merged_on"] = device
    (run / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_bound_is_exact_for_a_cpu_merge_and_one_bf16_ulp_for_a_gpu_merge(
    near_runs, copy_run, device
):
    """The documented bound, exactly: what verify cannot see is a change within it."""
    _, original, _ = near_runs["bfloat16"]
    name = "model.layers.2.self_attn.q_proj.weight"
    results = {}
    for steps in (1, 2):
        run = copy_run(original, name=f"run-{steps}")
        _merged_on(run, device)

        def nudge(tensors, steps=steps):
            value = tensors[name][0, 0]
            for _ in range(steps):
                value = torch.nextafter(value, torch.tensor(1.0, dtype=value.dtype))
            tensors[name][0, 0] = value

        _edit_weights(run, nudge)
        report = verify_run(RunDir(run), _parent_dirs(run), expect_smoke=False, expect_eval=False)
        check = next(c for c in report.weights.tensors if c.name == name)
        results[steps] = (check.max_ulps, check.ok)
    assert MAX_ULPS["bfloat16"] == 1
    if device == "cpu":
        assert results == {1: (1.0, False), 2: (2.0, False)}
    else:
        assert results == {1: (1.0, True), 2: (2.0, False)}


def _check_after(run: Path, edit, merged_on: str = "cpu") -> dict[str, object]:
    _edit_weights(run, edit)
    plan = Plan.read(RunDir(run).plan)
    report = check_weights(plan, RunDir(run).merged, _parent_dirs(run), merged_on=merged_on)
    assert not report.passed
    return {c.name: c for c in report.tensors if not c.ok}


def test_a_tensor_merged_at_the_wrong_t_fails(near_runs, copy_run):
    _, original, _ = near_runs["bfloat16"]
    run = copy_run(original)
    plan = Plan.read(RunDir(run).plan)
    dirs = _parent_dirs(run)
    base, other = (SafetensorsDir(dirs[p.ref]) for p in plan.parents)
    name = "model.layers.2.mlp.up_proj.weight"
    wrong = plan.tensors[name] + 0.1
    merged_wrong = remerge(base.get(name), other.get(name), wrong, "bfloat16")
    failed = _check_after(run, lambda tensors: tensors.__setitem__(name, merged_wrong))
    assert list(failed) == [name]
    assert failed[name].recovered is not None  # the inversion is named as a diagnostic


def test_a_norm_whose_t_is_not_observable_still_fails_when_it_contradicts_the_plan(
    near_runs, copy_run
):
    _, original, _ = near_runs["bfloat16"]
    run = copy_run(original)
    _merged_on(run, "cuda")  # within 1 bf16 ulp, a t 0.05 away gives the same norms
    name = "model.layers.1.input_layernorm.weight"
    report = check_weights(
        Plan.read(RunDir(run).plan), RunDir(run).merged, _parent_dirs(run), merged_on="cuda"
    )
    assert report.passed and not next(c for c in report.tensors if c.name == name).observable
    other_norm = name.replace("input_layernorm", "post_attention_layernorm")
    failed = _check_after(
        run, lambda tensors: tensors.__setitem__(name, tensors[other_norm].clone()), "cuda"
    )
    assert list(failed) == [name]


def test_two_swapped_layers_fail(near_runs, copy_run):
    _, original, _ = near_runs["bfloat16"]
    run = copy_run(original)

    def swap(tensors):
        for name in [n for n in tensors if n.startswith("model.layers.1.")]:
            twin = name.replace("layers.1.", "layers.2.")
            tensors[name], tensors[twin] = tensors[twin], tensors[name]

    failed = _check_after(run, swap)
    # Every tensor of both layers fails, norms included (each layer's norms are its own).
    swapped = {n for n in failed if n.startswith(("model.layers.1.", "model.layers.2."))}
    assert swapped == set(failed) and len(swapped) == 18


def test_a_missing_tensor_and_an_unplanned_one_fail(near_runs, copy_run):
    _, original, _ = near_runs["float32"]
    run = copy_run(original)
    name = "model.layers.3.mlp.gate_proj.weight"

    def rename(tensors):
        tensors["model.layers.3.mlp.extra.weight"] = tensors.pop(name)

    _edit_weights(run, rename)
    report = check_weights(Plan.read(RunDir(run).plan), RunDir(run).merged, _parent_dirs(run))
    assert report.failures == [
        f"{name}: missing from the merged weights",
        "model.layers.3.mlp.extra.weight: written by the merge but not in the plan, so nothing "
        "vouches for it",
    ]


def test_near_copy_parents_are_deterministic(tmp_path):
    from publisher.tiny import build_near_copy_parents

    first = build_near_copy_parents(tmp_path / "a", dtype="bfloat16")
    second = build_near_copy_parents(tmp_path / "b", dtype="bfloat16")
    for one, two in zip(first, second, strict=True):
        assert (one / "model.safetensors").read_bytes() == (two / "model.safetensors").read_bytes()
    base, tuned = (load_file(p / "model.safetensors") for p in first)
    assert all(base[n].dtype == torch.bfloat16 for n in base)
    changed = sum(not torch.equal(base[n], tuned[n]) for n in base)
    assert changed == len(base) - 1  # every tensor moves a little, the frozen embeddings do not


def test_a_row_sample_settles_observability_only_where_t_clearly_shows():
    """The cheap path: 16 rows merged at t±0.05 settle "observable" only for a clear move;
    otherwise the whole neighbour is merged, and either way the answer is the whole tensor's."""
    torch.manual_seed(0)
    base = torch.randn(64, 32)
    far = torch.randn(64, 32)  # independent parents: t shows by far
    # A near copy, each value within 1e-4 of the base's: t moves it by ~5e-6 of itself at most.
    near = base * (1 + 1e-4 * torch.randn(64, 32))
    seen = {}
    for other, label in ((far, "far"), (near, "near")):
        for dtype in ("float32", "bfloat16"):
            stored = remerge(base, other, 0.3, dtype)
            neighbour = remerge(base, other, near_t(0.3), dtype)
            whole = not torch.equal(stored, neighbour)
            assert t_observable(stored, base, other, 0.3, dtype) is whole
            seen[label, dtype] = (
                sample_shows_t(stored, base, other, near_t(0.3), dtype, None, 0),
                whole,
            )
    assert seen == {
        ("far", "float32"): (True, True),
        ("far", "bfloat16"): (True, True),
        ("near", "float32"): (False, True),  # ~40 float32 ulps: observable, but not clearly
        ("near", "bfloat16"): (False, seen["near", "bfloat16"][1]),
    }
