"""`publisher run` end to end on the tiny parents: real mergekit, transformers and lm-eval."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from publisher.cli import main


@pytest.fixture
def finished_run(tiny_run):
    return tiny_run


def copy_tiny_task(run_dir: Path, dest: Path, name: str) -> Path:
    """The run's copy of publisher's tiny task, at `dest` as task `name` with its data beside it
    (task data must stay inside the recipe's repository)."""
    shutil.copytree(run_dir / "eval" / "tasks", dest)
    for yaml_file in dest.glob("*.yaml"):
        text = yaml_file.read_text().replace("publisher_tiny_qa", name)
        yaml_file.write_text(text.replace(str(run_dir / "eval" / "tasks"), str(dest)))
    return dest


def layer_rows(card: str) -> dict[int, list[float]]:
    rows = {}
    for line in card.splitlines():
        match = re.match(r"^\|\s*(\d+)\s*\|(.*)$", line)
        if match:
            rows.setdefault(
                int(match.group(1)),
                [float(v) for v in re.findall(r"\b\d\.\d{3}\b", match.group(2))],
            )
    return rows


def test_run_writes_every_report(finished_run):
    _, run_dir, output = finished_run
    for name in (
        "recipe.yaml",
        "plan.json",
        "merged/model.safetensors",
        "weights.json",
        "smoke.json",
        "eval/results.json",
        "verify.json",
        "README.md",
        "schedule.png",
        "manifest.json",
    ):
        assert (run_dir / name).exists(), name
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [
        manifest["stages"][s]["status"]
        for s in ("plan", "merge", "weights", "smoke", "eval", "card", "verify")
    ] == ["ok"] * 7
    assert manifest["tool_versions"]["mergekit"] == "0.1.5"
    assert "cpus" in manifest["hardware"]
    assert str(run_dir.resolve()) in output  # says where the run and card are


def test_card_table_equals_plan(finished_run):
    _, run_dir, _ = finished_run
    plan = json.loads((run_dir / "plan.json").read_text())
    card = (run_dir / "README.md").read_text()
    rows = layer_rows(card)
    view = json.loads((run_dir / "card.json").read_text())["view"]
    columns = [g["name"] for g in view["groups"]]
    assert columns == ["self_attn", "mlp"]  # `default` is 0.5 everywhere: one sentence
    assert "`default` tensors use t = 0.500 in every layer." in card
    for layer in plan["layers"]:
        expected = [round(layer["groups"][g], 3) for g in columns]
        assert rows[layer["index"]] == expected
        assert layer["groups"]["default"] == 0.5


def test_card_smoke_replies_equal_smoke_json(finished_run):
    _, run_dir, _ = finished_run
    card = (run_dir / "README.md").read_text()
    smoke = json.loads((run_dir / "smoke.json").read_text())
    assert smoke["passed"] and len(smoke["transcripts"]) == 2
    for transcript in smoke["transcripts"]:
        assert transcript["reply"].strip()
        assert transcript["reply"] in card
        assert transcript["user"] in card


def test_card_eval_numbers_equal_results_json(finished_run):
    _, run_dir, _ = finished_run
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    task = results["results"]["publisher_tiny_qa"]
    card = ModelCard((run_dir / "README.md").read_text())
    values = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert values == {"acc": task["acc,none"], "acc_norm": task["acc_norm,none"]}
    body = card.text
    assert "partial" in body.lower()  # a run with a limit is labelled so
    assert str(Path.home()) not in (run_dir / "eval" / "results.json").read_text()


def test_second_run_skips_unchanged_stages_and_force_redoes_them(
    finished_run, tmp_path, capsys, copy_run
):
    recipe, original, _ = finished_run
    run_dir = copy_run(original)
    card_before = (run_dir / "README.md").read_bytes()
    assert main(["run", str(recipe), "--out", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("unchanged, skipped") == 7, out
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {s["status"] for s in manifest["stages"].values()} == {"skipped"}
    assert (run_dir / "README.md").read_bytes() == card_before

    assert (
        main(["run", str(recipe), "--out", str(run_dir), "--stages", "merge,smoke", "--force"]) == 0
    )
    out = capsys.readouterr().out
    assert "skipped" not in out and out.count(": done in") == 2
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["merge"]["status"] == "ok"


def test_verify_catches_a_corrupted_tensor(finished_run, tmp_path, capsys, copy_run):
    recipe, run_dir, _ = finished_run
    run = copy_run(run_dir)
    from safetensors.torch import load_file, save_file

    weights = run / "merged" / "model.safetensors"
    tensors = load_file(weights)
    name = "model.layers.2.mlp.up_proj.weight"
    tensors[name] = tensors[name] + 0.01 * tensors[name].abs().mean()
    save_file(tensors, weights, metadata={"format": "pt"})
    # The smoke and eval reports and the weight check are now stale (they were of other
    # weights), so the card is re-rendered without them and verify re-merges the weights itself.
    assert main(["run", str(recipe), "--out", str(run), "--stages", "card,verify"]) == 1
    err = capsys.readouterr().err
    assert "stage 'verify' failed" in err
    assert re.search(
        re.escape(name) + r": differs from the re-merge at the planned t by up to \d\.\d\de-04 "
        r"\([\d.e+]+ ulps of float32; the bound is 0\), 100\.0% of 8192 elements differ",
        err,
    ), err
    report = (
        json.loads((run / "verify.json").read_text()) if (run / "verify.json").exists() else None
    )
    assert report is None or not report["passed"]


def test_verify_catches_a_tampered_eval_number(finished_run, tmp_path, capsys, copy_run):
    recipe, run_dir, _ = finished_run
    run = copy_run(run_dir)
    assert main(["run", str(recipe), "--out", str(run), "--stages", "card,verify"]) == 0
    card = (run / "README.md").read_text()
    acc = json.loads((run / "eval" / "results.json").read_text())["results"]["publisher_tiny_qa"][
        "acc,none"
    ]
    tampered = card.replace(f"value: {acc}\n", "value: 0.99\n", 1)
    assert tampered != card
    (run / "README.md").write_text(tampered)
    assert main(["run", str(recipe), "--out", str(run), "--stages", "verify"]) == 1
    err = capsys.readouterr().err
    assert "README.md is the templates' rendering of card.json" in err
    assert f"value: {acc}" in err and "value: 0.99" in err


def test_verify_catches_tampered_results_json(finished_run, tmp_path, copy_run):
    _, run_dir, _ = finished_run
    run = copy_run(run_dir)
    results_path = run / "eval" / "results.json"
    results = json.loads(results_path.read_text())
    results["results"]["publisher_tiny_qa"]["acc_norm,none"] = 0.123
    results_path.write_text(json.dumps(results))
    from publisher.parents import resolve_parents
    from publisher.recipe import load_recipe
    from publisher.rundir import RunDir
    from publisher.verify import verify_run

    recipe = load_recipe(run_dir.parent / "tiny-run.yaml")
    dirs = {p.ref: Path(p.path) for p in resolve_parents(recipe)}
    report = verify_run(RunDir(run), dirs)
    assert not report.passed
    assert any("model-index" in f for f in report.failures)


def test_a_failing_stage_stops_the_run(finished_run, tmp_path, capsys):
    recipe, run_dir, _ = finished_run
    # A custom task whose data is not JSON: lm-eval fails on it, past every earlier stage.
    tasks = copy_tiny_task(run_dir, tmp_path / "broken-tasks", "broken_qa")
    (tasks / "tiny_qa.jsonl").write_text("question: not JSON\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        recipe.read_text()
        .replace("[publisher_tiny_qa]", "[broken_qa]")
        .replace("    limit: 10\n", "    limit: 10\n    include_paths: [broken-tasks]\n")
    )
    out = tmp_path / "run"
    assert main(["run", str(broken), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "stage 'eval' failed" in captured.err and "broken_qa" in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert not (out / "README.md").exists() and not (out / "verify.json").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["eval"]["status"] == "failed"
    assert "card" not in manifest["stages"]


def test_unknown_stage_is_a_clear_error(finished_run, tmp_path, capsys):
    recipe, _, _ = finished_run
    run_dir = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(run_dir), "--stages", "merge,polish"]) == 1
    assert "unknown stage(s) polish" in capsys.readouterr().err


def test_merge_flags_override_the_recipe_and_void_the_last_verify(finished_run, copy_run, capsys):
    recipe, original, _ = finished_run
    run = copy_run(original)
    assert (run / "verify.json").exists()
    args = ["run", str(recipe), "--out", str(run), "--stages", "merge", "--out-shard-size", "200K"]
    assert main([*args, "--num-threads", "1"]) == 0
    shards = sorted((run / "merged").glob("*.safetensors"))
    assert len(shards) > 1 and (run / "merged" / "model.safetensors.index.json").exists()
    assert all(shard.stat().st_size <= 200_000 * 1.1 for shard in shards)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["settings"]["merge"]["out_shard_size"] == "200K"
    assert manifest["settings"]["merge"]["num_threads"] == 1
    # The flags win over auto-tuning, which still chose (and explained) what they left out.
    chosen = manifest["merge_options"]
    assert chosen["options"]["out_shard_size"] == "200K" and chosen["options"]["num_threads"] == 1
    assert chosen["reasons"]["num_threads"] == "set by the recipe or a flag"
    assert chosen["reasons"]["async_write"] != "set by the recipe or a flag"
    # The weights changed hands after the last verify: its pass no longer counts.
    assert not (run / "verify.json").exists()
    capsys.readouterr()
    assert main(["push", str(run), "--repo-id", "tester/tiny-run"]) == 1
    assert "verify" in capsys.readouterr().err


def test_published_eval_results_name_no_runner_paths(finished_run):
    _, run_dir, _ = finished_run
    results = (run_dir / "eval" / "results.json").read_text()
    assert str(run_dir.resolve()) not in results
    assert json.loads(results)["config"]["model_args"]["pretrained"] == "merged"
    card = (run_dir / "README.md").read_text()
    assert str(run_dir.resolve()) not in card
    # The card's lm_eval command names the published model, never a runner's directory.
    assert "pretrained=tester/tiny-run," in card and "pretrained=/" not in card
    for parent in (run_dir / "eval" / "parents").glob("*.json"):
        parent_results = json.loads(parent.read_text())
        assert parent_results["config"]["model_args"]["pretrained"] == parent.stem
        assert "/tmp/" not in parent.read_text() and str(Path.home()) not in parent.read_text()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--eval-limit", "-3"], "must be greater than 0"),
        (["--out-shard-size", "lots"], "is not a size like 5B"),
    ],
)
def test_bad_run_flags_are_refused_before_any_stage(finished_run, tmp_path, capsys, flags, message):
    recipe, _, _ = finished_run
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(recipe), "--out", str(tmp_path / "run"), *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_no_stages_and_a_file_as_run_directory_are_clear_errors(finished_run, tmp_path, capsys):
    recipe, _, _ = finished_run
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--stages", ""]) == 1
    assert "no stage given" in capsys.readouterr().err
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert main(["run", str(recipe), "--out", str(a_file)]) == 1
    assert "is a file" in capsys.readouterr().err


def test_eval_dtype_and_task_directories_come_from_the_recipe(finished_run, copy_run, tmp_path):
    recipe, original, _ = finished_run
    run = copy_run(original)
    # A custom task directory beside the recipe, given relative to it.
    recipe_dir = tmp_path / "recipes"
    copy_tiny_task(original, recipe_dir / "my-tasks", "my_tiny_qa")
    custom = recipe_dir / "custom.yaml"
    custom.write_text(
        recipe.read_text()
        .replace("tasks: [publisher_tiny_qa]", "tasks: [my_tiny_qa]\n    dtype: float32")
        .replace("    limit: 10\n", "    limit: 10\n    include_paths: [my-tasks]\n")
    )
    assert main(["run", str(custom), "--out", str(run), "--stages", "eval"]) == 0
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["config"]["model_args"]["dtype"] == "float32"
    assert "my_tiny_qa" in results["results"]


def test_stages_report_through_the_reporter_they_are_handed(finished_run, tmp_path):
    # Grouping reaches the pipeline through its `log`, never through an import of the shells.
    from contextlib import contextmanager

    from publisher.pipeline import run_pipeline
    from publisher.recipe import load_recipe
    from publisher.settings import Overrides, resolve_settings

    class Recording:
        def __init__(self):
            self.lines: list[str] = []
            self.groups: list[str] = []

        def __call__(self, text: str) -> None:
            self.lines.append(text)

        @contextmanager
        def group(self, title: str):
            self.groups.append(title)
            yield

        def mask(self, secret: str) -> None:
            raise AssertionError("nothing to mask without a push")

    recipe, _, _ = finished_run
    recording = Recording()
    loaded = load_recipe(recipe)
    settings = resolve_settings(loaded, Overrides(stages="plan"))
    run_pipeline(loaded, tmp_path / "run", settings, recording)
    assert recording.groups == ["plan"]
    assert "[1/1] plan ..." in recording.lines


def test_top_level_debug_shows_the_traceback(tmp_path, capsys):
    missing = str(tmp_path / "missing.yaml")
    assert main(["plan", missing]) == 1
    assert "Traceback" not in capsys.readouterr().err
    from publisher.errors import PublisherError

    for argv in (["--debug", "plan", missing], ["plan", "--debug", missing]):
        with pytest.raises(PublisherError):
            main(argv)
