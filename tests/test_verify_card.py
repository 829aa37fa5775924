"""Verify compares every number on the card with smoke.json and eval/results.json.

Each tamper test edits a copy of the session's finished tiny run (`tiny_run`), checks that the
edit changed the card, and runs `publisher run RECIPE --out RUN --stages verify`, which must fail
naming what was changed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from publisher.cli import main

TASK = "publisher_tiny_qa"


def _verify(recipe: Path, run: Path, *extra: str) -> int:
    return main(["run", str(recipe), "--out", str(run), "--stages", "verify", *extra])


def _report(run: Path) -> dict:
    return json.loads((run / "verify.json").read_text(encoding="utf-8"))


def _failed(run: Path) -> list[str]:
    return [c["what"] for c in _report(run)["card_checks"] if not c["ok"]]


def _fails_only_on(recipe: Path, run: Path, capsys, what: str) -> None:
    """verify exits 1, says `what`, and `what` is its only failed card check."""
    assert _verify(recipe, run) == 1
    err = capsys.readouterr().err
    assert "stage 'verify' failed" in err and what in err
    assert _failed(run) == [what]


def _tamper(run: Path, edit) -> str:
    """Apply `edit` to the run's README.md; fail the test if it changed nothing."""
    path = run / "README.md"
    old = path.read_text(encoding="utf-8")
    new = edit(old)
    assert new != old, "the tamper did not change the card"
    path.write_text(new, encoding="utf-8")
    return new


def _section(card: str, heading: str) -> tuple[int, int]:
    start = card.index(f"\n{heading}\n")
    end = card.find("\n## ", start + 1)
    return start, len(card) if end < 0 else end


def _in_smoke_section(card: str, edit) -> str:
    """Apply `edit` to the smoke-test section only."""
    start, end = _section(card, "## Smoke test")
    return card[:start] + edit(card[start:end]) + card[end:]


@pytest.fixture
def run(tiny_run, copy_run) -> tuple[Path, Path]:
    recipe, run_dir, _ = tiny_run
    return recipe, copy_run(run_dir)


def test_untouched_run_verifies_with_eval_table_and_smoke_checks(run, capsys):
    recipe, run_dir = run
    assert _verify(recipe, run_dir, "--force") == 0, capsys.readouterr().err
    report = _report(run_dir)
    assert report["passed"] and report["failures"] == []
    checks = {c["what"]: c for c in report["card_checks"]}
    assert all(c["ok"] for c in checks.values())
    for what in (
        f"eval table {TASK} acc (value ± stderr, shots)",
        f"eval table {TASK} acc_norm (value ± stderr, shots)",
        "eval table rows not in results.json",
        "eval partial-run label (limit)",
        f"model-index {TASK} acc value",
        f"model-index {TASK} acc_norm value",
        f"model-index {TASK} acc shots/limit",
        "smoke status",
        "smoke transcripts shown",
    ):
        assert what in checks, what
    smoke = json.loads((run_dir / "smoke.json").read_text())
    assert len(smoke["transcripts"]) == 2
    for number, transcript in enumerate(smoke["transcripts"], start=1):
        for label in ("generated tokens", "tokens/s", "seconds", "rendered chat template", "reply"):
            assert f"smoke prompt {number} {label}" in checks, (number, label)
        assert checks[f"smoke prompt {number} generated tokens"]["found"] == str(
            transcript["new_tokens"]
        )
        assert (
            checks[f"smoke prompt {number} rendered chat template"]["found"]
            == (transcript["rendered_prompt"])
        )
    row = checks[f"eval table {TASK} acc (value ± stderr, shots)"]
    acc = json.loads((run_dir / "eval" / "results.json").read_text())["results"][TASK]
    assert row["found"][0].startswith(f"{acc['acc,none']:.4f} ± ")


@pytest.mark.parametrize("cell", ["value", "stderr", "shots"])
def test_verify_catches_a_changed_eval_table_cell(run, capsys, cell):
    recipe, run_dir = run

    def edit(card: str) -> str:
        def change(match: re.Match) -> str:
            value, stderr, shots = match.group(2), match.group(3), match.group(4)
            if cell == "value":
                value = "0.9000" if value != "0.9000" else "0.1000"
            elif cell == "stderr":
                stderr = "0.0001" if stderr != "0.0001" else "0.0002"
            else:
                shots = str(int(shots) + 5)
            return f"{match.group(1)}{value} ± {stderr} | {shots} |"

        row = re.compile(rf"^(\| {TASK} \| acc \| )(\S+) ± (\S+) \| (\S+) \|$", re.M)
        return row.sub(change, card, count=1)

    _tamper(run_dir, edit)
    _fails_only_on(recipe, run_dir, capsys, f"eval table {TASK} acc (value ± stderr, shots)")


def test_verify_catches_an_eval_table_row_results_json_lacks(run, capsys):
    recipe, run_dir = run
    _tamper(
        run_dir,
        lambda card: re.sub(
            rf"^(\| {TASK} \| acc_norm \| .*)$",
            rf"\1\n| {TASK} | f1 | 0.9000 ± 0.0100 | 0 |",
            card,
            count=1,
            flags=re.M,
        ),
    )
    _fails_only_on(recipe, run_dir, capsys, "eval table rows not in results.json")


@pytest.mark.parametrize(
    ("label", "group"), [("tokens/s", 3), ("generated tokens", 1), ("seconds", 2)]
)
def test_verify_catches_changed_smoke_numbers(run, capsys, label, group):
    recipe, run_dir = run

    def change(match: re.Match) -> str:
        parts = [match.group(1), match.group(2), match.group(3)]
        old = parts[group - 1]
        if group == 1:
            parts[0] = str(int(old) + 1)
        else:
            parts[group - 1] = "999.9" if group == 3 and old != "999.9" else "9.99"
        assert parts[group - 1] != old
        return f"{parts[0]} tokens in {parts[1]} s ({parts[2]} tokens/s)"

    speed = re.compile(r"(\d+) tokens in (\S+) s \((\S+) tokens/s\)")
    _tamper(run_dir, lambda card: _in_smoke_section(card, lambda s: speed.sub(change, s, 1)))
    _fails_only_on(recipe, run_dir, capsys, f"smoke prompt 1 {label}")


def test_verify_catches_a_changed_smoke_status(run, capsys):
    recipe, run_dir = run
    _tamper(
        run_dir,
        lambda card: _in_smoke_section(card, lambda s: s.replace("**passed**", "**failed**", 1)),
    )
    assert _verify(recipe, run_dir) == 1
    assert "smoke status" in capsys.readouterr().err


@pytest.mark.parametrize("copy_elsewhere", [False, True])
def test_verify_catches_a_changed_character_of_the_rendered_template(run, capsys, copy_elsewhere):
    recipe, run_dir = run
    smoke = json.loads((run_dir / "smoke.json").read_text())
    rendered = smoke["transcripts"][0]["rendered_prompt"]
    assert "user" in rendered
    changed = rendered.replace("user", "usar", 1)

    def edit(card: str) -> str:
        card = _in_smoke_section(card, lambda s: s.replace(f"\n{rendered}\n", f"\n{changed}\n", 1))
        if copy_elsewhere:
            # The original text elsewhere on the card does not make the smoke section right.
            card = card.replace(
                "<!-- publisher:notes:end -->",
                f"```text\n{rendered}\n```\n<!-- publisher:notes:end -->",
                1,
            )
        return card

    _tamper(run_dir, edit)
    assert _verify(recipe, run_dir) == 1
    err = capsys.readouterr().err
    assert "smoke prompt 1 rendered chat template" in err
    assert "smoke prompt 1 rendered chat template" in _failed(run_dir)


def test_verify_catches_swapped_model_index_values(run, capsys):
    recipe, run_dir = run
    # The tiny run's acc and acc_norm can be equal; give them distinct values and re-render
    # the card from them (eval stays current: its inputs are the weights and settings).
    results_path = run_dir / "eval" / "results.json"
    results = json.loads(results_path.read_text())
    results["results"][TASK].update({"acc,none": 0.25, "acc_norm,none": 0.75})
    results_path.write_text(json.dumps(results, indent=2))
    stages = ["run", str(recipe), "--out", str(run_dir), "--stages", "card,verify"]
    assert main(stages) == 0, capsys.readouterr().err

    def swap(card: str) -> str:
        front, sep, body = card.partition("\n---\n")
        front = front.replace("value: 0.25\n", "value: @\n", 1)
        front = front.replace("value: 0.75\n", "value: 0.25\n", 1).replace(
            "value: @", "value: 0.75"
        )
        return front + sep + body

    card = _tamper(run_dir, swap)
    from huggingface_hub import ModelCard

    swapped = {r.metric_type: r.metric_value for r in ModelCard(card).data.eval_results}
    assert swapped == {"acc": 0.75, "acc_norm": 0.25}  # the same numbers, sorted, as before
    assert _verify(recipe, run_dir) == 1
    err = capsys.readouterr().err
    assert f"model-index {TASK} acc value" in err
    assert set(_failed(run_dir)) == {
        f"model-index {TASK} acc value",
        f"model-index {TASK} acc_norm value",
    }


def test_check_card_without_results_rejects_an_eval_table(run):
    from publisher.schedule import Plan
    from publisher.smoke import SmokeReport
    from publisher.verify import check_card

    _, run_dir = run
    card = (run_dir / "README.md").read_text(encoding="utf-8")
    plan = Plan.read(run_dir / "plan.json")
    smoke = SmokeReport.read(run_dir / "smoke.json")
    checks = {c["what"]: c for c in check_card(card, plan, smoke, None, None)}
    assert not checks["no evaluation table without results"]["ok"]
    assert len(checks["no evaluation table without results"]["found"]) == 2
    assert not checks["no evaluation claimed without results"]["ok"]
    # Nor may a card show a smoke-test section that no smoke.json backs.
    checks = {c["what"]: c for c in check_card(card, plan, None, None, None)}
    assert not checks["no smoke-test section without smoke.json (## Smoke test)"]["ok"]
