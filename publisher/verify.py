"""Verify before publishing: the weights are the merge the plan describes, and the card shows
exactly what the reports say.

The weights: `publisher.weights` merges every tensor again with mergekit's own SLERP at the
planned t and compares it with the stored one (exact for a CPU merge; within 1 ulp in bfloat16
and float16, 4 in float32, for a merge run on a GPU); its report says, per tensor, the largest
difference in ulps, the share of exact elements, and whether the weights can show t at all
(parents so close that a t 0.05 away stores the same values cannot). The pipeline runs that check as
its own stage right after the merge; `verify_run` takes its report when it describes the current
weights and runs the check itself otherwise.

The card: `publisher.cardcheck` compares `card.json`, and the card rendered from it, with the
files every number came from; the card's "t not observable" count must equal the weight
check's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from publisher.errors import PublisherError
from publisher.schedule import Plan
from publisher.settings import read_settings
from publisher.weights import WeightReport, check_weights


class VerifyError(PublisherError):
    """Verification failed; the message lists what did not match."""


@dataclass
class VerifyReport:
    """What `verify.json` holds.

    Attributes:
        passed: the weights and the card both passed.
        weights: the weight check: per tensor the largest difference from the re-merge in ulps,
            the share of exact elements and whether t is observable; the count of tensors whose
            t is not observable in the output dtype.
        card_checks: one record per number the card shows, `{"what", "expected", "found", "ok"}`.
        failures: one line per problem, naming the tensor or the card item.
        verified_files: each file verify vouches for, with its sha256 (a push compares them).
    """

    passed: bool
    weights: WeightReport
    card_checks: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    verified_files: dict[str, str] = field(default_factory=dict)

    def write(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return Path(path)


def verify_run(
    run: Any,
    parent_dirs: dict[str, Path],
    weights: WeightReport | None = None,
    dtype: str | None = None,
    out_dtype: str | None = None,
    expect_smoke: bool = True,
    expect_eval: bool = True,
    sample: bool | None = None,
    templates_dir: Path | None = None,
) -> VerifyReport:
    """Check a run directory before publishing: weights against the plan, card against reports
    (`publisher.cardcheck`). The eval suite and card templates are the ones the run's
    `manifest.json` records; `templates_dir` overrides the latter.

    `weights` is the weight check's report for the weights as they are now (the pipeline's
    `weights` stage); without it the check runs here, with `dtype` and `out_dtype` (mergekit's;
    by default those of the run directory's recipe).
    """
    from publisher.cardcheck import check_card
    from publisher.smoke import SmokeReport

    plan = Plan.read(run.plan)
    recipe = _run_recipe(run)
    if weights is None:
        weights = check_weights(
            plan,
            run.merged,
            parent_dirs,
            dtype=dtype or recipe.get("dtype"),
            out_dtype=out_dtype or recipe.get("out_dtype"),
            merged_on=run.merged_on(),
            sample=sample,
        )
    failures = list(weights.failures)
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
        # The suite and templates the run resolved (recipe or flags), as the manifest records.
        settings = read_settings(run.manifest)
        suite = settings.eval.suite if settings else None
        if templates_dir is None and settings and settings.templates_dir:
            templates_dir = Path(settings.templates_dir)
        card_checks = check_card(run, plan, smoke, results, suite, templates_dir, weights)
        failures += [
            f"card: {c['what']}: expected {c['expected']}, found {c['found']}"
            for c in card_checks
            if not c["ok"]
        ]
    return VerifyReport(
        passed=not failures,
        weights=weights,
        card_checks=card_checks,
        failures=failures,
        verified_files=run.verified_files(),
    )


def _run_recipe(run: Any) -> dict[str, Any]:
    """The run directory's copy of the recipe, as plain YAML data ({} when there is none)."""
    if not run.recipe.exists():
        return {}
    import yaml

    data = yaml.safe_load(run.recipe.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}
