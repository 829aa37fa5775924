"""The weight check: every merged tensor is what mergekit's SLERP gives at the planned t.

For each checked tensor the check merges again: it reads the two parents' tensors, casts them to
the recipe's `dtype` as mergekit's loader does, calls mergekit's own SLERP kernel (through
`mergekit.merge_methods.api.merge_tensors`, the path `run_merge` takes for one tensor, computing
in float32) at the plan's t, casts to the output dtype, and compares the result with the stored
tensor element by element. A merge that ran on the CPU must be reproduced exactly; one that ran
elsewhere (`merged_on="cuda"`) may differ by at most `MAX_ULPS` units in the last place of the
output dtype. `weights.json` records per tensor the largest difference
in ulps and the share of elements that are bit-for-bit equal.

Why exact on the CPU: the re-merge runs the same kernel on the same inputs (and CPU results do
not depend on the thread count). Why a bound for a GPU merge: the GPU adds
up the float32 dot product and norms that give the angle between the parents in another order,
and may fuse `c_a·x + c_b·y`; that moves the float32 result by a float32 ulp or two, which lands
on the neighbouring bfloat16/float16 value at most (1 ulp), or a few float32 ulps (4). A
difference is counted in ulps of the output dtype at the magnitude of the larger of the stored
value and the two parents' values, so that parents which cancel to near zero are not held to a
tighter standard than the numbers the value was computed from.

What the weights cannot show: where the parents are so close that the merge at a t `NEAR_T` away
(t + `NEAR_T`, or t - `NEAR_T` above 1 - `NEAR_T`) stores the same tensor (within the bound), no
check of the weights can tell the planned t from a nearby one. Such a tensor is marked "t not
observable in <dtype>"; it still passes only if the re-merge at the planned t matches, and a
tensor that contradicts the planned t fails whatever its observability. The count goes into the
report and a sentence onto the card. Observability is judged only for a tensor that matched,
first on `SAMPLE_ROWS` rows merged at the neighbouring t (`sample_shows_t`: a value that moves
clearly past the bound settles it, as for parents far apart);
only where the sample shows no clear move is the whole neighbour merged and compared.

Recovering t by inverting SLERP (`recover_t`) is ill-conditioned for nearly collinear parents
and rounded weights, so it is only a diagnostic in failure messages.

Cost: tensors are read one at a time (each file is opened with `safe_open`, which maps it, for
one tensor and closed again, so no mapped pages stay resident) and compared in chunks; the check
holds the two parents' tensors, the stored one and one re-merged one at a time, like the merge
itself. Per tensor it runs mergekit's SLERP once, like the merge, plus the neighbour's: on 16 rows
where they show t, on the whole tensor where they do not (near copies). Models up to
`FULL_CHECK_MAX_PARAMS` parameters are checked tensor by tensor, every tensor; above that a
documented sample: every tensor outside the layer stack, and in every layer the first tensor of
each t group (`sample_tensor_names`), each checked whole.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from publisher.schedule import Plan, group_of

FULL_CHECK_MAX_PARAMS = 1_000_000_000
NEAR_T = 0.05
"""How far a "clearly different" t is: a tensor whose stored values are also what a t NEAR_T away
gives cannot show t (one neighbour is merged, not two, see `near_t`)."""
SAMPLE_ROWS = 16
"""Rows of a tensor merged at the neighbouring t first: where they show t (the common case,
parents that are not near copies) the whole-tensor neighbour merge is skipped."""
SAMPLE_SLACK = 2.0**-11
"""How much of a value's magnitude a row sample's merge may differ from the whole tensor's by
(rounding of the norms and dot product summed in another order), with a factor 2 to spare."""
MAX_ULPS = {"bfloat16": 1, "float16": 1, "float32": 4, "float64": 4}
"""The largest difference allowed for a merge that ran on another device than the CPU, in ulps of
the output dtype (see the module docstring); a CPU merge must be reproduced exactly."""


def bound_ulps(dtype: str, merged_on: str = "cpu") -> int:
    """The largest difference allowed, in ulps of `dtype`, for a merge run on `merged_on`."""
    return 0 if merged_on == "cpu" else MAX_ULPS.get(dtype, 4)


_CHUNK = 1 << 20  # elements compared at a time: bounds the scratch to a few MiB
_FIRST_CHUNK = 1 << 12  # a small first chunk, so that a clear difference stops a scan early
_FRACTION_BITS = {"bfloat16": 7, "float16": 10, "float32": 23, "float64": 52}
_MIN_EXPONENT = {"bfloat16": -126, "float16": -14, "float32": -126, "float64": -1022}


@dataclass
class TensorCheck:
    """One merged tensor against mergekit's SLERP at the planned t.

    Attributes:
        name: output tensor name, e.g. `"model.layers.0.mlp.up_proj.weight"`.
        planned: the plan's t, e.g. 0.25.
        max_ulps: the largest difference from the re-merge, in ulps of the output dtype, e.g.
            0.0 (`inf` where the stored tensor is missing or of another shape or dtype).
        max_abs: the largest absolute difference from the re-merge, e.g. 0.0 or 3.1e-4.
        exact: share of elements equal to the re-merge bit for bit, e.g. 1.0.
        elements: number of values compared, e.g. 8192.
        observable: whether a t `NEAR_T` away would store another tensor (False: "t not
            observable").
        ok: whether `max_ulps` is within the bound.
        problem: what is wrong, for a failed tensor, e.g. `"missing from the merged weights"`.
        recovered: for a failed tensor, the t that inverting SLERP gives (a diagnostic), e.g. 0.31.
    """

    name: str
    planned: float
    max_ulps: float
    max_abs: float
    exact: float
    elements: int
    observable: bool
    ok: bool
    problem: str = ""
    recovered: float | None = None


@dataclass
class WeightReport:
    """What `weights.json` holds.

    Attributes:
        passed: every checked tensor is within the bound and no unplanned tensor was written.
        dtype: the output dtype of the weights, e.g. `"bfloat16"`.
        bound_ulps: the largest difference allowed, e.g. 0 (a CPU merge) or 1.
        sampled: whether only the documented sample was checked (models over
            `FULL_CHECK_MAX_PARAMS` parameters).
        not_observable: how many checked tensors cannot show t in `dtype`, e.g. 9.
        tensors: one check per tensor, in plan order.
        failures: one line per failed tensor, naming it and the size of the difference.
    """

    passed: bool
    dtype: str
    bound_ulps: int
    sampled: bool
    not_observable: int = 0
    tensors: list[TensorCheck] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def write(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return Path(path)

    @classmethod
    def read(cls, path: Path) -> WeightReport:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        data["tensors"] = [TensorCheck(**c) for c in data.get("tensors", [])]
        return cls(**data)


class SafetensorsDir:
    """Tensors of a directory of safetensors shards, read one at a time by name.

    Each read opens the tensor's file and closes it again: `safe_open` memory-maps the file, and
    pages of a long-lived mapping would stay resident (and count as the process's memory) long
    after their tensor is gone. A parent with pickle weights only (the recipe set
    `allow_pickle`) is read whole with torch's weights-only loader instead, so it is verified
    like any other.
    """

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = Path(path)
        self._open = safe_open
        self.where: dict[str, str] = {}
        index = self.path / "model.safetensors.index.json"
        if index.exists():
            self.where = json.loads(index.read_text())["weight_map"]
        else:
            for file in sorted(self.path.glob("*.safetensors")):
                with safe_open(str(file), framework="pt") as fh:
                    for key in fh.keys():  # noqa: SIM118 (safe_open has no __iter__)
                        self.where[key] = file.name
        self._pickled: dict[str, Any] = {}
        if not self.where:
            from publisher.parents import load_pickle_weights

            self._pickled = load_pickle_weights(self.path)
            self.where = dict.fromkeys(self._pickled, "")

    def names(self) -> list[str]:
        return list(self.where)

    def get(self, name: str):
        if self._pickled:
            return self._pickled[name]
        with self._open(str(self.path / self.where[name]), framework="pt") as fh:
            return fh.get_tensor(name)

    def shape(self, name: str) -> list[int]:
        if self._pickled:
            return list(self._pickled[name].shape)
        with self._open(str(self.path / self.where[name]), framework="pt") as fh:
            return list(fh.get_slice(name).get_shape())

    def num_params(self) -> int:
        return sum(math.prod(self.shape(name)) for name in self.where)


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


def parent_tensor_names(plan: Plan, name: str) -> tuple[str, str]:
    """The names of `name`'s inputs in the base and the other parent (layer indices differ when
    a slice takes other layers of a parent)."""
    base_ref = plan.base_model
    other_ref = next(p.ref for p in plan.parents if p.ref != base_ref)
    row = next((r for r in plan.layers if name in r.tensors), None)
    if row is None or not row.source_layers:
        return name, name
    prefix = f"layers.{row.index}."
    return (
        name.replace(prefix, f"layers.{row.source_layers[base_ref]}.", 1),
        name.replace(prefix, f"layers.{row.source_layers[other_ref]}.", 1),
    )


def remerge(base, other, t: float, dtype: str | None = None, out_dtype: str | None = None):
    """What mergekit writes for one tensor: its SLERP of `base` and `other` at `t`, the inputs
    cast to `dtype` (the recipe's `dtype`; None keeps the parents' common dtype), the result
    cast to `out_dtype` (None: the compute dtype)."""
    import torch
    from mergekit.merge_methods.api import merge_tensors

    compute = getattr(torch, dtype) if dtype else None
    out = getattr(torch, out_dtype) if out_dtype else None
    with torch.no_grad():
        return merge_tensors(
            [base, other], "slerp", parameters={"t": t}, base_index=0, dtype=compute, out_dtype=out
        )


def compare(
    stored, expected, base, other, stop_above: float = math.inf
) -> tuple[float, float, int]:
    """(largest difference in ulps, largest absolute difference, number of bit-equal elements)
    of `stored` against `expected`, both in the output dtype; ulps are taken at the magnitude of
    the larger of the stored, expected and parents' values. Stops early once the difference
    exceeds `stop_above` ulps (then the figures cover only the chunks compared)."""
    import torch

    if torch.equal(stored, expected):
        return 0.0, 0.0, stored.numel()
    name = str(stored.dtype).removeprefix("torch.")
    bits, emin = _FRACTION_BITS.get(name, 52), _MIN_EXPONENT.get(name, -1022)
    # float32 holds every bfloat16, float16 and float32 value exactly.
    work = torch.float64 if stored.dtype == torch.float64 else torch.float32
    flat = [x.reshape(-1) for x in (stored, expected, base, other)]
    worst, largest, equal = 0.0, 0.0, 0
    total, start, size = flat[0].numel(), 0, _FIRST_CHUNK
    while start < total:
        s, e, a, b = (x[start : start + size].to(work) for x in flat)
        start, size = start + size, _CHUNK
        both_nan = s.isnan() & e.isnan()
        equal += int(((s == e) | both_nan).sum())
        scale = torch.maximum(torch.maximum(s.abs(), e.abs()), torch.maximum(a.abs(), b.abs()))
        ulp = _ulp(scale, bits, emin)
        diff = torch.where(both_nan, 0.0, (s - e).abs()).nan_to_num(math.inf)
        largest = max(largest, float(diff.max()))
        worst = max(worst, float((diff / ulp).max()))
        if worst > stop_above:
            break
    return worst, largest, equal


def _ulp(scale, bits: int, emin: int):
    """The unit in the last place, with `bits` fraction bits, at each magnitude in `scale`."""
    import torch

    _, exponent = torch.frexp(scale)
    exponent = torch.where(scale > 0, exponent - 1, emin).clamp(min=emin)
    return torch.ldexp(torch.ones_like(scale), exponent - bits)


def near_t(planned: float) -> float:
    """The clearly different t that decides observability: `NEAR_T` above, or below near 1."""
    return planned + NEAR_T if planned + NEAR_T <= 1.0 else planned - NEAR_T


def t_observable(
    stored, base, other, planned: float, dtype=None, out_dtype=None, bound: int = 0
) -> bool:
    """Whether the merge at `near_t(planned)` stores a tensor more than `bound` ulps away from
    `stored` (which matched the re-merge at `planned`).

    First on `SAMPLE_ROWS` rows: if the neighbour merge of those rows alone moves some value
    clearly past the bound, t shows and the answer is yes. Otherwise the whole neighbour is
    merged and compared, as for the planned t. See `sample_shows_t` for what "clearly" means.
    """
    import torch

    near = near_t(planned)
    if sample_shows_t(stored, base, other, near, dtype, out_dtype, bound):
        return True
    neighbour = remerge(base, other, near, dtype, out_dtype)
    if bound == 0:
        return not torch.equal(stored, neighbour)
    return compare(stored, neighbour, base, other, stop_above=bound)[0] > bound


def sample_shows_t(stored, base, other, near: float, dtype, out_dtype, bound: int) -> bool:
    """Whether mergekit's SLERP at `near`, run on a sample of rows, puts some value further
    from `stored` than the bound plus anything the sampling itself could explain.

    mergekit's SLERP works row by row (each row of a weight gets its own angle), so merging a
    few rows gives those rows' values up to the float32 rounding of the norms and dot product,
    which are summed in another order over fewer rows. That changes a value by far less than
    `SAMPLE_SLACK` of the largest magnitude involved (a 2^-12 relative change of the
    coefficients, about 4096 float32 ulps, needs a sum of thousands of terms rounding the
    same way). A value that moves by more than `(bound + 1)` ulps plus that slack (ulps taken
    at twice the magnitude, so a change of binade cannot shrink them) therefore also moves
    past the bound in the whole-tensor merge. A sample that shows no such move proves nothing,
    and the caller merges the whole tensor.
    """
    import torch

    if stored.dim() == 0 or stored.shape[0] <= SAMPLE_ROWS:
        return False
    rows = torch.linspace(0, stored.shape[0] - 1, SAMPLE_ROWS).round().long().unique()
    s, a, b = (x.index_select(0, rows) for x in (stored, base, other))
    n = remerge(a, b, near, dtype, out_dtype)
    if n.dtype != s.dtype or n.shape != s.shape:
        return False
    name = str(s.dtype).removeprefix("torch.")
    bits, emin = _FRACTION_BITS.get(name, 52), _MIN_EXPONENT.get(name, -1022)
    work = torch.float64 if s.dtype == torch.float64 else torch.float32
    s, n, a, b = (x.to(work) for x in (s, n, a, b))
    scale = torch.maximum(torch.maximum(s.abs(), n.abs()), torch.maximum(a.abs(), b.abs()))
    slack = (bound + 1) * _ulp(2 * scale, bits, emin) + SAMPLE_SLACK * scale
    return bool(((s - n).abs() > slack).any())


def check_tensor(
    name: str,
    planned: float,
    stored,
    base,
    other,
    dtype: str | None = None,
    out_dtype: str | None = None,
    merged_on: str = "cpu",
) -> TensorCheck:
    """Check one stored tensor against the re-merge at `planned`, and whether t shows in it."""
    expected = remerge(base, other, planned, dtype, out_dtype)
    out_name = str(expected.dtype).removeprefix("torch.")
    bound = bound_ulps(out_name, merged_on)
    if stored.dtype != expected.dtype or stored.shape != expected.shape:
        problem = (
            f"stored as {str(stored.dtype).removeprefix('torch.')} {list(stored.shape)}, "
            f"the merge makes {out_name} {list(expected.shape)}"
        )
        return _failed(name, planned, problem, stored.numel())
    worst, largest, equal = compare(stored, expected, base, other)
    del expected
    # Judged only for a tensor that matches: a mismatch fails either way.
    observable = worst > bound or t_observable(
        stored, base, other, planned, dtype, out_dtype, bound
    )
    check = TensorCheck(
        name=name,
        planned=planned,
        max_ulps=worst,
        max_abs=largest,
        exact=equal / max(stored.numel(), 1),
        elements=stored.numel(),
        observable=observable,
        ok=worst <= bound,
    )
    if not check.ok:
        check.problem = (
            f"differs from the re-merge at the planned t by up to {largest:.2e} "
            f"({_ulps_text(worst)} ulps of {out_name}; the bound is {bound})"
        )
        check.recovered, _ = recover_t(stored, base, other)
    return check


def _failed(name: str, planned: float, problem: str, elements: int = 0) -> TensorCheck:
    """A tensor that could not be compared at all (missing, or of another shape or dtype)."""
    return TensorCheck(
        name=name,
        planned=planned,
        max_ulps=math.inf,
        max_abs=math.inf,
        exact=0.0,
        elements=elements,
        observable=True,
        ok=False,
        problem=problem,
    )


def check_weights(
    plan: Plan,
    merged_dir: Path,
    parent_dirs: dict[str, Path],
    dtype: str | None = None,
    out_dtype: str | None = None,
    merged_on: str = "cpu",
    sample: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> WeightReport:
    """Re-merge every planned tensor (or the sample) and compare it with the stored one.

    `dtype` and `out_dtype` are the recipe's (mergekit's `dtype` and `out_dtype`); `merged_on`
    is the device the merge ran on, e.g. `"cpu"` or `"cuda"` (it sets the bound).
    """
    merged = SafetensorsDir(merged_dir)
    base_ref = plan.base_model
    other_ref = next(p.ref for p in plan.parents if p.ref != base_ref)
    base, other = SafetensorsDir(parent_dirs[base_ref]), SafetensorsDir(parent_dirs[other_ref])
    if sample is None:
        sample = merged.num_params() > FULL_CHECK_MAX_PARAMS
    names = sample_tensor_names(plan) if sample else list(plan.tensors)
    checks: list[TensorCheck] = []
    for name in names:
        planned = plan.tensors[name]
        if name not in merged.where:
            checks.append(_failed(name, planned, "missing from the merged weights"))
            continue
        base_name, other_name = parent_tensor_names(plan, name)
        checks.append(
            check_tensor(
                name,
                planned,
                merged.get(name),
                base.get(base_name),
                other.get(other_name),
                dtype,
                out_dtype,
                merged_on,
            )
        )
    failures = [_failure_line(c) for c in checks if not c.ok]
    failures += [
        f"{name}: written by the merge but not in the plan, so nothing vouches for it"
        for name in merged.names()
        if name not in plan.tensors
    ]
    out_name = out_dtype or dtype or _stored_dtype(merged)
    report = WeightReport(
        passed=not failures,
        dtype=out_name,
        bound_ulps=bound_ulps(out_name, merged_on),
        sampled=bool(sample),
        not_observable=sum(1 for c in checks if not c.observable),
        tensors=checks,
        failures=failures,
    )
    if log is not None:
        log(summary_line(report))
    return report


def summary_line(report: WeightReport) -> str:
    exact = sum(1 for c in report.tensors if c.ok and c.exact == 1.0)
    text = (
        f"  {len(report.tensors)} tensors re-merged{' (sample)' if report.sampled else ''}: "
        f"{exact} exact, bound {report.bound_ulps} ulp(s) of {report.dtype}"
    )
    if report.not_observable:
        text += f"; t not observable in {report.dtype} in {report.not_observable}"
    return text


def _failure_line(check: TensorCheck) -> str:
    text = f"{check.name}: {check.problem}"
    if check.elements and math.isfinite(check.max_ulps):
        text += f", {1 - check.exact:.1%} of {check.elements} elements differ"
    if check.recovered is not None and not math.isnan(check.recovered):
        text += f"; planned t={check.planned:.4f}, inverting SLERP gives t~{check.recovered:.4f}"
    return text


def _ulps_text(value: float) -> str:
    return f"{value:.0f}" if value < 1e6 else f"{value:.2g}"


def _stored_dtype(merged: SafetensorsDir) -> str:
    names = merged.names()
    return str(merged.get(names[0]).dtype).removeprefix("torch.") if names else "unknown"


def recover_t(merged, base, other) -> tuple[float, float]:
    """The t that inverting SLERP gives for a merged tensor and its two parents, and the residual
    (the relative part of `merged` that no interpolation of the parents explains): a diagnostic.

    mergekit interpolates each tensor as a whole: `merged = c_a·a + c_b·b` with
    `c_a = sin((1-t)θ)/sin θ`, `c_b = sin(tθ)/sin θ` and θ the angle between the parents
    (plain linear interpolation when they are nearly collinear). Least squares recovers `c_a`
    and `c_b`, and `t = atan2(c_b sin θ, c_a + c_b cos θ) / θ`. Reliable for parents far apart
    and float32 weights; for near copies rounded to bfloat16 it can be far off a correct t.
    t is nan when the parents are identical.
    """
    import torch

    m = merged.to(torch.float64).flatten()
    a = base.to(torch.float64).flatten()
    b = other.to(torch.float64).flatten()
    scale = max(float(m.norm()), 1e-30)
    aa, bb, ab = float(a @ a), float(b @ b), float(a @ b)
    am, bm = float(a @ m), float(b @ m)
    det = aa * bb - ab * ab
    if aa == 0.0 or bb == 0.0 or det <= 1e-12 * aa * bb:
        diff = b - a  # collinear parents: SLERP is linear, m - a = t (b - a)
        denom = float(diff @ diff)
        if denom == 0.0:
            return math.nan, float(torch.linalg.vector_norm(m - a)) / scale
        t = float((m - a) @ diff) / denom
        return t, float(torch.linalg.vector_norm(m - a - t * diff)) / scale
    c_a = (bb * am - ab * bm) / det
    c_b = (aa * bm - ab * am) / det
    residual = float(torch.linalg.vector_norm(m - c_a * a - c_b * b)) / scale
    cos_theta = max(-1.0, min(1.0, ab / math.sqrt(aa * bb)))
    if abs(cos_theta) > 0.9995:  # mergekit's dot_threshold: linear interpolation
        return c_b, residual
    theta = math.acos(cos_theta)
    return math.atan2(c_b * math.sin(theta), c_a + c_b * math.cos(theta)) / theta, residual
