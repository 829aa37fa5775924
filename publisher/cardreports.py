"""The card's report sections: the smoke test and the evaluation, as ready-made strings.

`smoke_view` and `eval_view` turn `smoke.json` and lm-eval's results into the sections the
templates show; `publisher.cardview` puts them in the `CardView`, and verify
(`publisher.cardcheck`) computes them again from the same reports to check what a card says.
The number formats live here, in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import metadata

from publisher.evalresults import EvalRow, EvalSummary
from publisher.smoke import SmokeReport

SMOKE_CHECKED = (
    "the chat template rendered each prompt, the logits were finite, and two greedy runs gave "
    "the same reply"
)
"""What a passed smoke test checked, in words the card shows."""


@dataclass
class TranscriptView:
    """One smoke-test conversation.

    Attributes:
        number: 1-based, e.g. 1.
        system: the system message as a Markdown quote, or `None`.
        user: the user message as a Markdown quote.
        rendered_prompt: what the chat template produced, verbatim.
        prompt_fence: a code fence longer than any backtick run in `rendered_prompt`, e.g. "```".
        reply: the reply, verbatim.
        reply_fence: likewise for `reply`.
        speed: e.g. `"16 tokens in 0.21 s (76.2 tokens/s)"`.
        note: how the prompt was rendered when that is worth knowing, or `None`.
    """

    number: int
    system: str | None
    user: str
    rendered_prompt: str
    prompt_fence: str
    reply: str
    reply_fence: str
    speed: str
    note: str | None = None


@dataclass
class SmokeView:
    """The smoke-test section.

    Attributes:
        status: `"passed"` or `"failed"`.
        checked: what "passed" means, in words.
        error: the failure message as a Markdown quote, or `None`.
        warnings: findings that did not fail the test, e.g. a degenerate reply.
        settings: e.g. `"cpu, float32, at most 32 new tokens"`.
        transcripts: one per prompt.
    """

    status: str
    checked: str
    error: str | None
    warnings: list[str]
    settings: str
    transcripts: list[TranscriptView]


@dataclass
class EvalRowView:
    """One row of the evaluation table.

    Attributes:
        task: lm-eval task, e.g. `"arc_challenge"`.
        metric: e.g. `"acc_norm"` or `"exact_match (strict-match)"`.
        shots: e.g. `"25"`.
        value: the merge's score, e.g. `"0.6212 ± 0.0142"`.
        parents: each evaluated parent's score, in `EvalView.parents` order, e.g. `["0.6100"]`
            (`"n/a"` where a parent lacks the metric).
        delta: the merge minus the better parent, e.g. `"+0.0112"`, or `""` without parents.
    """

    task: str
    metric: str
    shots: str
    value: str
    parents: list[str] = field(default_factory=list)
    delta: str = ""


@dataclass
class EvalView:
    """The evaluation section.

    Attributes:
        rows: the table rows.
        parents: the names of the parents evaluated alongside, e.g. `["tiny-base", "tiny-other"]`
            (empty when the parents were not evaluated).
        partial_label: e.g. `"partial run (limit=10)"`, or `None` for a full run.
        lm_eval_version: e.g. `"0.4.13"`.
        model_args: lm-eval's model arguments, e.g. `"dtype=float32"`.
    """

    rows: list[EvalRowView]
    parents: list[str]
    partial_label: str | None
    lm_eval_version: str
    model_args: str


def installed_version(package: str) -> str:
    """The installed version of `package`, e.g. `"0.4.13"`, or `"not installed"`."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def smoke_view(report: SmokeReport) -> SmokeView:
    """The smoke-test section for `report` (what `smoke.json` holds)."""
    transcripts = [
        TranscriptView(
            number=number,
            system=quote(t.system) if t.system else None,
            user=quote(t.user),
            rendered_prompt=t.rendered_prompt,
            prompt_fence=fence(t.rendered_prompt),
            reply=t.reply,
            reply_fence=fence(t.reply),
            speed=(
                f"{t.new_tokens} tokens in {t.seconds:.2f} s ({t.tokens_per_second:.1f} tokens/s)"
            ),
            note=t.note,
        )
        for number, t in enumerate(report.transcripts, start=1)
    ]
    return SmokeView(
        status="passed" if report.passed else "failed",
        checked=SMOKE_CHECKED,
        error=quote(report.error) if report.error else None,
        warnings=list(report.warnings),
        settings=f"{report.device}, {report.dtype}, at most {report.max_new_tokens} new tokens",
        transcripts=transcripts,
    )


def eval_view(summary: EvalSummary, parents: list[tuple[str, EvalSummary]] = ()) -> EvalView:
    """The evaluation section: the merge's `summary`, beside each `(name, summary)` of `parents`."""
    limits = sorted({row.limit for row in summary.rows if row.limit is not None})
    partial_label = None
    if summary.partial or limits:
        shown = ", ".join(_number(limit) for limit in limits)
        partial_label = f"partial run (limit={shown})" if shown else "partial run"
    lookup = [{_row_key(r): r for r in parent.rows} for _, parent in parents]
    return EvalView(
        rows=[
            _eval_row(row, [found.get(_row_key(row)) for found in lookup]) for row in summary.rows
        ],
        parents=[name for name, _ in parents],
        partial_label=partial_label,
        lm_eval_version=summary.lm_eval_version or installed_version("lm-eval"),
        model_args=summary.model_args,
    )


def _row_key(row: EvalRow) -> tuple[str, str, str]:
    return (row.task, row.metric, row.filter)


def _eval_row(row: EvalRow, parents: list[EvalRow | None]) -> EvalRowView:
    metric = row.metric if row.filter in ("", "none") else f"{row.metric} ({row.filter})"
    value = f"{row.value:.4f}"
    if row.stderr is not None:
        value += f" ± {row.stderr:.4f}"
    shots = "n/a" if row.num_fewshot is None else str(row.num_fewshot)
    scores = [p.value for p in parents if p is not None]
    delta = ""
    if scores:
        best = max(scores) if row.higher_is_better else min(scores)
        delta = _signed(row.value - best)
    return EvalRowView(
        task=row.task,
        metric=metric,
        shots=shots,
        value=value,
        parents=[f"{p.value:.4f}" if p is not None else "n/a" for p in parents],
        delta=delta,
    )


def _signed(value: float) -> str:
    text = f"{value:+.4f}"
    return "±0.0000" if text in ("+0.0000", "-0.0000") else text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def fence(text: str) -> str:
    """A Markdown code fence longer than any run of backticks in `text`, e.g. "```"."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def quote(text: str) -> str:
    """`text` as a Markdown block quote, line by line."""
    return "\n".join(f"> {line}".rstrip() for line in text.splitlines() or [""])
