"""Verify before publishing: the weights match the plan, and the card matches its reports.

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
import re
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


# ---------------------------------------------------------------------------------------------
# the card against its sources

_LAYER_ROW = re.compile(r"^\|\s*(\d+)\s*\|(.*)$")
_THREE_DECIMALS = re.compile(r"(?<![\d.])(\d+\.\d{3})(?!\d)")
_OPEN_FENCE = re.compile(r"^(`{3,})([^`]*)$")
_TABLE_SEPARATOR = re.compile(r"^:?-+:?$")
_SPEED = re.compile(r"(\S+) tokens in (\S+) s \((\S+) tokens/s\)")
"""How `publisher.card` words a transcript's speed, e.g. `"8 tokens in 0.03 s (293.6 tokens/s)"`."""
_PARTIAL = re.compile(r"partial run(?: \(limit=[^)\n]*\))?")
_STATUS = re.compile(r"(?<![\w-])(passed|failed)(?![\w-])")
SMOKE_HEADING = "## Smoke test"
EVAL_HEADING = "## Evaluation"
TRANSCRIPT_HEADING = "### "


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and set(stripped) == {"`"} and len(stripped) >= len(fence)


def _fence_roles(text: str) -> list[tuple[str, str | None]]:
    """The lines of Markdown `text` (split on "\n" only), each with its part in a backtick code
    fence: "open", "code" or "close", or None outside one."""
    out: list[tuple[str, str | None]] = []
    fence = ""
    for line in text.split("\n"):
        if fence:
            closing = _closes(line, fence)
            fence = "" if closing else fence
            out.append((line, "close" if closing else "code"))
            continue
        match = _OPEN_FENCE.match(line)
        if match:
            fence = match.group(1)
        out.append((line, "open" if match else None))
    return out


def _lines(text: str) -> list[tuple[str, bool]]:
    """The lines of Markdown `text`, each with whether it is part of a code fence (fence lines
    included), so headings inside code are not headings."""
    return [(line, role is not None) for line, role in _fence_roles(text)]


def _section(body: str, heading: str) -> str | None:
    """The part of the card body from the line `heading` up to the next `## ` heading (fenced
    code ignored), or `None` when the card has no such heading."""
    lines = _lines(body)
    start = next(
        (i for i, (line, fenced) in enumerate(lines) if not fenced and line.rstrip() == heading),
        None,
    )
    if start is None:
        return None
    end = next(
        (
            i
            for i in range(start + 1, len(lines))
            if not lines[i][1] and lines[i][0].startswith("## ")
        ),
        len(lines),
    )
    return "\n".join(line for line, _ in lines[start:end])


def _subsections(section: str, prefix: str) -> tuple[str, list[str]]:
    """Split a section at its headings starting with `prefix` (fenced code ignored): the text
    before the first one, and each subsection (heading included)."""
    parts: list[list[str]] = [[]]
    for line, fenced in _lines(section):
        if not fenced and line.startswith(prefix):
            parts.append([])
        parts[-1].append(line)
    return "\n".join(parts[0]), ["\n".join(part) for part in parts[1:]]


def _fenced_blocks(text: str) -> list[str]:
    """The contents of the closed backtick code fences in `text`, verbatim."""
    blocks: list[str] = []
    current: list[str] = []
    for line, role in _fence_roles(text):
        if role == "open":
            current = []
        elif role == "code":
            current.append(line)
        elif role == "close":
            blocks.append("\n".join(current))
    return blocks


def _shows(text: str, value: str) -> bool:
    """Whether `text` shows `value` as a whole (`"8 tokens"` is not shown by `"18 tokens"`)."""
    if not value:
        return True
    before = r"(?<![\w.\-])" if value[0].isalnum() else ""
    after = r"(?![\w]|\.\d)" if value[-1].isalnum() else ""
    return re.search(before + re.escape(value) + after, text) is not None


def _shows_lines(text: str, block: str) -> bool:
    """Whether `block` (one or more lines) appears in `text` as whole lines."""
    return f"\n{block}\n" in f"\n{text}\n"


def _table_rows(section: str) -> list[list[str]]:
    """The data rows of the Markdown tables in `section` (header and separator rows left out),
    each as its stripped cells."""
    rows: list[list[str]] = []
    previous_was_row = False
    for line, fenced in _lines(section):
        stripped = line.strip()
        if fenced or not stripped.startswith("|"):
            previous_was_row = False
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", stripped.strip("|"))]
        if all(_TABLE_SEPARATOR.match(c) for c in cells if c) and any(cells):
            if previous_was_row and rows:
                rows.pop()  # the row above a separator is the header
            previous_was_row = False
            continue
        rows.append(cells)
        previous_was_row = True
    return rows


def _same(expected: Any, found: Any) -> bool:
    if isinstance(expected, float) and isinstance(found, float):
        return expected == found or (math.isnan(expected) and math.isnan(found))
    return expected == found


def check_card(
    card_text: str, plan: Plan, smoke: Any | None, results: dict | None, suite: str | None
) -> list[dict[str, Any]]:
    """Compare every number the card shows with the file it came from.

    - the layer table and the tensors outside the stack: each t, as `plan.json` has it;
    - the smoke-test section (between `## Smoke test` and the next `## ` heading): the status,
      the settings, and per transcript (`### ` subsections, in order) the messages, the rendered
      chat template and the reply (verbatim, as code blocks), the token count, seconds and
      tokens/s; no section at all when there is no `smoke.json`;
    - the evaluation section (between `## Evaluation` and the next `## ` heading): one table
      row per row of the summary of `results.json`, showing exactly its value ± stderr and shots,
      no other row, the partial-run label with its limit, the lm-eval version and model
      arguments; no table rows when there are no results;
    - the `model-index`: per (dataset, metric), the value and the shots/limit arguments.

    The expected text comes from `publisher.card`'s own view functions, so the number formats
    live in one place. Returns one check record per item: `{"what", "expected", "found", "ok"}`.
    """
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    from publisher.card import _eval_view, _smoke_view

    checks: list[dict[str, Any]] = []

    def add(what: str, expected: Any, found: Any, ok: bool | None = None) -> None:
        checks.append(
            {
                "what": what,
                "expected": expected,
                "found": found,
                "ok": _same(expected, found) if ok is None else ok,
            }
        )

    match = REGEX_YAML_BLOCK.search(card_text)
    body = card_text[match.end() :] if match and match.start() == 0 else card_text

    # The layer table: each layer's row shows its groups' t, 3 decimals, in plan.groups order.
    rows: dict[int, list[str]] = {}
    for line in body.splitlines():
        row_match = _LAYER_ROW.match(line.strip())
        if row_match and int(row_match.group(1)) not in rows:
            rows[int(row_match.group(1))] = _THREE_DECIMALS.findall(row_match.group(2))
    for layer in plan.layers:
        expected = [f"{layer.groups[g]:.3f}" for g in plan.groups if g in layer.groups]
        found = rows.get(layer.index, [])[: len(expected)]
        add(f"t table, layer {layer.index}", expected, found)
    for name, t in plan.outside.items():
        line = next((ln for ln in body.splitlines() if name in ln and "|" in ln), "")
        found_values = _THREE_DECIMALS.findall(line)
        add(f"t of {name}", f"{t:.3f}", found_values[0] if found_values else None)

    # The smoke-test section: what smoke.json recorded, as publisher.card words it.
    section = _section(body, SMOKE_HEADING)
    if smoke is None:
        add(
            f"no smoke-test section without smoke.json ({SMOKE_HEADING})",
            False,
            section is not None,
        )
    else:
        if section is None:
            add(f"smoke-test section ({SMOKE_HEADING})", True, False)
            section = ""
        _check_smoke(add, section, _smoke_view(smoke))

    # Evaluation: the table rows and the model-index equal lm-eval's output, exactly.
    section = _section(body, EVAL_HEADING)
    table = _table_rows(section) if section is not None else []
    try:
        card_results = list(ModelCard(card_text).data.eval_results or [])
    except Exception as exc:  # the front matter does not parse: nothing in it can be trusted
        add("model-index parses", True, f"{type(exc).__name__}: {exc}", ok=False)
        card_results = []
    if results is None:
        add("no evaluation table without results", [], [" | ".join(row) for row in table])
        add("no evaluation claimed without results", [], [r.metric_value for r in card_results])
        return checks

    from publisher.evaluate import summarize, to_eval_results

    summary = summarize(results, suite)
    raw = results.get("results", {})
    for row in summary.rows:
        source = raw.get(row.task, {}).get(f"{row.metric},{row.filter}")
        add(f"eval {row.task} {row.metric} (summary vs results.json)", source, row.value)
    if section is None:
        add(f"evaluation section ({EVAL_HEADING})", True, False)
        section = ""
    _check_eval_section(add, section, table, _eval_view(summary))
    _check_model_index(add, card_results, to_eval_results(summary, "model"))
    return checks


def _check_smoke(add: Any, section: str, view: Any) -> None:
    """The smoke-test section against `view` (publisher.card's `SmokeView` of smoke.json)."""
    intro, parts = _subsections(section, TRANSCRIPT_HEADING)
    searched = intro.replace(view.error, "") if view.error else intro
    add("smoke status", [view.status], list(dict.fromkeys(_STATUS.findall(searched))))
    add("smoke settings", view.settings, view.settings if _shows(intro, view.settings) else None)
    if view.error:
        add("smoke error", view.error, view.error if _shows_lines(intro, view.error) else None)
    add("smoke transcripts shown", len(view.transcripts), len(parts))
    for index, t in enumerate(view.transcripts):
        part = parts[index] if index < len(parts) else ""
        what = f"smoke prompt {t.number}"
        if t.system:
            add(
                f"{what} system message",
                t.system,
                t.system if _shows_lines(part, t.system) else None,
            )
        add(f"{what} user message", t.user, t.user if _shows_lines(part, t.user) else None)
        if t.note:
            add(f"{what} note", t.note, t.note if _shows(part, t.note) else None)
        blocks = _fenced_blocks(part)
        add(
            f"{what} rendered chat template",
            t.rendered_prompt,
            t.rendered_prompt if t.rendered_prompt in blocks else (blocks[0] if blocks else None),
        )
        add(
            f"{what} reply",
            t.reply,
            t.reply if t.reply in blocks else (blocks[-1] if blocks else None),
        )
        add(
            f"{what} code blocks other than the rendered prompt and the reply",
            [],
            [b for b in blocks if b not in (t.rendered_prompt, t.reply)],
        )
        expected = _SPEED.fullmatch(t.speed)
        shown = _SPEED.findall("\n".join(line for line, fenced in _lines(part) if not fenced))
        if expected is None:  # publisher.card words the speed otherwise: compare it whole
            add(f"{what} speed", t.speed, t.speed if _shows(part, t.speed) else None)
            continue
        for number, label in enumerate(("generated tokens", "seconds", "tokens/s")):
            found = [s[number] for s in shown]
            add(
                f"{what} {label}",
                expected.group(number + 1),
                found[0] if len(found) == 1 else found,
            )


def _check_eval_section(add: Any, section: str, table: list[list[str]], view: Any) -> None:
    """The evaluation section against `view` (publisher.card's `EvalView` of the summary)."""
    expected_rows = {(r.task, r.metric): [r.value, r.shots] for r in view.rows}
    shown: dict[tuple[str, str], list[list[str]]] = {}
    for cells in table:
        key = (cells[0], cells[1] if len(cells) > 1 else "")
        shown.setdefault(key, []).append(cells[2:])
    for (task, metric), expected in expected_rows.items():
        found = shown.get((task, metric), [])
        add(
            f"eval table {task} {metric} (value ± stderr, shots)",
            expected,
            found[0] if len(found) == 1 else (found or None),
        )
    add(
        "eval table rows not in results.json",
        [],
        [
            " | ".join((*key, *cells))
            for key, rows in shown.items()
            if key not in expected_rows
            for cells in rows
        ],
    )
    add(
        "eval partial-run label (limit)",
        [view.partial_label] if view.partial_label else [],
        list(dict.fromkeys(_PARTIAL.findall(section))),
    )
    if view.lm_eval_version:
        version = view.lm_eval_version
        add("eval lm-eval version", version, version if _shows(section, version) else None)
    if view.model_args:
        args = view.model_args
        shown_args = _shows(section, f"`{args}`")  # the card quotes them as code
        add("eval model arguments", args, args if shown_args else None)


def _check_model_index(add: Any, card_results: list[Any], expected_results: list[Any]) -> None:
    """The card's model-index against the summary's, per (dataset, metric)."""

    def key(result: Any) -> tuple[str, str]:
        return (str(result.dataset_name), str(result.metric_type))

    shown: dict[tuple[str, str], list[Any]] = {}
    for result in card_results:
        shown.setdefault(key(result), []).append(result)
    for result in expected_results:
        name, metric = key(result)
        found = shown.get((name, metric), [])
        one = found[0] if len(found) == 1 else None
        add(
            f"model-index {name} {metric} value",
            result.metric_value,
            one.metric_value if one else ([r.metric_value for r in found] or None),
        )
        add(
            f"model-index {name} {metric} shots/limit",
            result.dataset_args,
            one.dataset_args if one else None,
        )
    wanted = {key(r) for r in expected_results}
    add(
        "model-index entries not in results.json",
        [],
        [" ".join(key(r)) for r in card_results if key(r) not in wanted],
    )


def verify_run(
    run: Any,
    parent_dirs: dict[str, Path],
    dtype: str = "float32",
    expect_smoke: bool = True,
    expect_eval: bool = True,
    sample: bool | None = None,
) -> VerifyReport:
    """Check a run directory before publishing: weights against the plan, card against reports."""
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
        # Bytes decoded as they are: reading as text would turn a rendered "\r\n" into "\n".
        card_text = run.card.read_bytes().decode("utf-8")
        card_checks = check_card(card_text, plan, smoke, results, suite)
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
