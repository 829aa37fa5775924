"""Verify before publishing: the weights match the plan, and the card matches its reports.

The card half lives in `publisher.cardcheck`; this module inverts the merge.

The weight check inverts SLERP. mergekit 0.1.5 interpolates each tensor as a whole (its batch
kernel flattens every tensor into one vector): `merged = c_a * a + c_b * b` with
`c_a = sin((1-t)θ)/sin θ`, `c_b = sin(tθ)/sin θ` and `θ` the angle between the parents' tensors
(plain linear interpolation when they are nearly collinear). Given the merged tensor and both
parents, least squares recovers `c_a` and `c_b`, and `t = atan2(c_b sin θ, c_a + c_b cos θ) / θ`.
That t must equal the plan's t, and the residual must be tiny (a corrupted tensor is no
interpolation of its parents).

For big models (over `FULL_CHECK_MAX_PARAMS` parameters) a documented sample is checked: every
tensor outside the layer stack, and in every layer one tensor of each filter group, each on its
first `SAMPLE_ROWS` rows.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from publisher.errors import PublisherError
from publisher.schedule import Plan, group_of

FULL_CHECK_MAX_PARAMS = 1_000_000_000
SAMPLE_ROWS = 256
DOT_THRESHOLD = 0.9995  # mergekit's slerp switches to linear interpolation above this
TOLERANCE = {"float32": 1e-3, "float64": 1e-6, "bfloat16": 2e-2, "float16": 5e-3}


class VerifyError(PublisherError):
    """Verification failed; the message lists what did not match."""


@dataclass
class TensorCheck:
    """The t recovered from one merged tensor, against the plan.

    Attributes:
        name: output tensor name, e.g. `"model.layers.0.mlp.up_proj.weight"`.
        planned: the plan's t, e.g. 0.25.
        recovered: the t recovered from the weights, e.g. 0.25000003.
        residual: relative part of the merged tensor that no interpolation of the parents
            explains, e.g. 3e-8 (large for a corrupted tensor).
        elements: number of values used, e.g. 8192.
        ok: whether `|recovered - planned| <= tolerance`.
    """

    name: str
    planned: float
    recovered: float
    residual: float
    elements: int
    ok: bool


@dataclass
class VerifyReport:
    """What `verify.json` holds; `verified_files` maps each file checked to its sha256."""

    passed: bool
    tolerance: float
    sampled: bool
    tensors: list[TensorCheck] = field(default_factory=list)
    card_checks: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    verified_files: dict[str, str] = field(default_factory=dict)

    def write(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return Path(path)


def recover_t(merged, base, other, whole: bool = True) -> tuple[float, float, int]:
    """Recover SLERP's t from a merged tensor and its two parents: (t, residual, elements).

    `whole` says the tensors are complete, so the angle between the parents is measured
    directly; for a sample of rows the angle is derived from the coefficients themselves
    (slerp's coefficients satisfy `c_a² + c_b² + 2 c_a c_b cos θ = 1`). `residual` is the
    relative size of what `c_a·a + c_b·b` leaves unexplained: near 0 for a genuine SLERP.
    """
    import torch

    m = merged.to(torch.float64).flatten()
    a = base.to(torch.float64).flatten()
    b = other.to(torch.float64).flatten()
    aa, bb, ab = float(a @ a), float(b @ b), float(a @ b)
    am, bm = float(a @ m), float(b @ m)
    det = aa * bb - ab * ab
    if aa == 0.0 or bb == 0.0 or det <= 1e-12 * aa * bb:
        # The parents are (nearly) collinear: SLERP is linear; t follows from m - a = t (b - a).
        diff = b - a
        denom = float(diff @ diff)
        if denom == 0.0:
            return math.nan, 0.0, int(m.numel())
        t = float((m - a) @ diff) / denom
        residual = float(torch.linalg.vector_norm(m - a - t * diff) / max(float(m.norm()), 1e-30))
        return t, residual, int(m.numel())
    c_a = (bb * am - ab * bm) / det
    c_b = (aa * bm - ab * am) / det
    residual = float(torch.linalg.vector_norm(m - c_a * a - c_b * b) / max(float(m.norm()), 1e-30))
    if whole:
        cos_theta = ab / math.sqrt(aa * bb)
    elif abs(c_a * c_b) > 1e-12:
        cos_theta = (1.0 - c_a * c_a - c_b * c_b) / (2.0 * c_a * c_b)
    else:
        cos_theta = 0.0  # one coefficient is zero: t is 0 or 1 whatever the angle
    cos_theta = max(-1.0, min(1.0, cos_theta))
    if abs(cos_theta) > DOT_THRESHOLD:
        return c_b, residual, int(m.numel())
    theta = math.acos(cos_theta)
    t = math.atan2(c_b * math.sin(theta), c_a + c_b * math.cos(theta)) / theta
    return t, residual, int(m.numel())


class SafetensorsDir:
    """Read tensors (or their first rows) from a directory of safetensors shards by name.

    A parent with pickle weights only (the recipe set `allow_pickle`) is read with torch's
    weights-only loader instead, so it is verified like any other.
    """

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = Path(path)
        self._files: dict[str, Any] = {}
        self.where: dict[str, str] = {}
        index = self.path / "model.safetensors.index.json"
        if index.exists():
            self.where = json.loads(index.read_text())["weight_map"]
        else:
            for file in sorted(self.path.glob("*.safetensors")):
                with safe_open(str(file), framework="pt") as fh:
                    for key in fh.keys():  # noqa: SIM118 (safe_open has no __iter__)
                        self.where[key] = file.name
        self._open = safe_open
        self._pickled: dict[str, Any] = {}
        if not self.where:
            from publisher.parents import load_pickle_weights

            self._pickled = load_pickle_weights(self.path)
            self.where = dict.fromkeys(self._pickled, "")

    def names(self) -> list[str]:
        return list(self.where)

    def get(self, name: str, rows: int | None = None):
        if self._pickled:
            return self._pickled[name][:rows]
        handle = self._handle(name)
        if rows is None:
            return handle.get_tensor(name)
        return handle.get_slice(name)[:rows]

    def num_params(self) -> int:
        return sum(math.prod(self.get_shape(name)) for name in self.where)

    def _handle(self, name: str) -> Any:
        file = self.where[name]
        if file not in self._files:
            self._files[file] = self._open(str(self.path / file), framework="pt")
        return self._files[file]

    def get_shape(self, name: str) -> list[int]:
        if self._pickled:
            return list(self._pickled[name].shape)
        return list(self._handle(name).get_slice(name).get_shape())


def sample_tensor_names(plan: Plan) -> list[str]:
    """The documented sample for big models: outside tensors, one tensor per group per layer."""
    names = list(plan.outside)
    for row in plan.layers:
        seen: set[str] = set()
        for name in row.tensors:
            group = group_of(name, [g for g in plan.groups if g != "default"])
            if group not in seen:
                seen.add(group)
                names.append(name)
    return names


def verify_weights(
    plan: Plan,
    merged_dir: Path,
    parent_dirs: dict[str, Path],
    dtype: str = "float32",
    sample: bool | None = None,
) -> list[TensorCheck]:
    """Recover t from every merged tensor (or the sample) and compare it with the plan."""
    merged = SafetensorsDir(merged_dir)
    base_ref = plan.base_model
    other_ref = next(p.ref for p in plan.parents if p.ref != base_ref)
    base = SafetensorsDir(parent_dirs[base_ref])
    other = SafetensorsDir(parent_dirs[other_ref])
    if sample is None:
        sample = merged.num_params() > FULL_CHECK_MAX_PARAMS
    names = sample_tensor_names(plan) if sample else list(plan.tensors)
    rows = SAMPLE_ROWS if sample else None
    tolerance = TOLERANCE.get(dtype, 1e-3)
    layer_of = {name: row for row in plan.layers for name in row.tensors}
    checks = []
    for name in names:
        if name not in merged.where:
            checks.append(TensorCheck(name, plan.tensors[name], math.nan, 0.0, 0, False))
            continue
        row = layer_of.get(name)
        base_name = other_name = name
        if row is not None and row.source_layers:
            # The parents' layer index can differ from the output's (slices of other ranges).
            base_name = name.replace(
                f"layers.{row.index}.", f"layers.{row.source_layers[base_ref]}.", 1
            )
            other_name = name.replace(
                f"layers.{row.index}.", f"layers.{row.source_layers[other_ref]}.", 1
            )
        t, residual, used = recover_t(
            merged.get(name, rows),
            base.get(base_name, rows),
            other.get(other_name, rows),
            whole=rows is None,
        )
        planned = plan.tensors[name]
        ok = not math.isnan(t) and abs(t - planned) <= tolerance and residual <= tolerance
        checks.append(TensorCheck(name, planned, t, residual, used, ok))
    return checks


def verify_run(
    run: Any,
    parent_dirs: dict[str, Path],
    dtype: str = "float32",
    expect_smoke: bool = True,
    expect_eval: bool = True,
    sample: bool | None = None,
    templates_dir: Path | None = None,
) -> VerifyReport:
    """Check a run directory before publishing: weights against the plan, card against reports
    (`publisher.cardcheck`; `templates_dir` is the card stage's, `None` for the default)."""
    from publisher.cardcheck import check_card
    from publisher.smoke import SmokeReport

    plan = Plan.read(run.plan)
    checks = verify_weights(plan, run.merged, parent_dirs, dtype=dtype, sample=sample)
    failures = [
        f"{c.name}: planned t={c.planned:.4f}, the weights say {c.recovered:.4f} "
        f"(residual {c.residual:.2g})"
        for c in checks
        if not c.ok
    ]
    card_checks: list[dict[str, Any]] = []
    if not run.card.exists():
        failures.append(f"{run.card} is missing")
    else:
        smoke = SmokeReport.read(run.smoke) if expect_smoke and run.smoke.exists() else None
        results = (
            json.loads(run.eval_results.read_text(encoding="utf-8"))
            if expect_eval and run.eval_results.exists()
            else None
        )
        suite = None
        manifest = run.manifest
        if manifest.exists():
            suite = (json.loads(manifest.read_text()).get("options") or {}).get("eval_suite")
        if suite is None and run.recipe.exists():
            import yaml

            publish = (yaml.safe_load(run.recipe.read_text()) or {}).get("publish") or {}
            suite = (publish.get("eval") or {}).get("suite")
        card_checks = check_card(run, plan, smoke, results, suite, templates_dir)
        failures += [
            f"card: {c['what']}: expected {c['expected']}, found {c['found']}"
            for c in card_checks
            if not c["ok"]
        ]
    sampled = bool(checks) and len(checks) < len(plan.tensors)
    return VerifyReport(
        passed=not failures,
        tolerance=TOLERANCE.get(dtype, 1e-3),
        sampled=sampled,
        tensors=checks,
        card_checks=card_checks,
        failures=failures,
        verified_files=run.verified_files(),
    )
