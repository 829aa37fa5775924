"""`publisher run --push` of a recipe that controls code: the build runs where the Hub token is
not, the push where it is."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from conftest import LOCAL_HUB_TOKEN, TINY_RUN_RECIPE
from huggingface_hub import HfApi

from publisher.cli import main
from publisher.evaluate import TASKS_DIR
from publisher.isolation import child_environment, recipe_code
from publisher.recipe import load_recipe
from publisher.settings import Overrides, resolve_settings

# A custom task whose hook writes down what the eval's process can see: its environment, the
# token huggingface_hub would use, and its process id.
SPY = """\
import json
import os

from huggingface_hub import get_token


def process_docs(dataset):
    seen = {"pid": os.getpid(), "env": dict(os.environ), "token": get_token()}
    with open(os.environ["SPY_OUT"], "w") as handle:
        json.dump(seen, handle)
    return dataset
"""
SPY_TASK = """\
task: spy_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
process_docs: !function spy.process_docs
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""


def _spy_recipe(tmp_path: Path, tiny_parents) -> Path:
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    tasks = repo / "tasks"
    tasks.mkdir()
    shutil.copyfile(TASKS_DIR / "tiny_qa.jsonl", tasks / "tiny_qa.jsonl")
    (tasks / "spy.py").write_text(SPY)
    (tasks / "spy_qa.yaml").write_text(SPY_TASK.format(data=tasks / "tiny_qa.jsonl"))
    base, other = tiny_parents
    text = TINY_RUN_RECIPE.replace("{base}", str(base)).replace("{other}", str(other))
    text = text.replace(
        "    tasks: [publisher_tiny_qa]\n    limit: 10\n",
        "    tasks: [spy_qa]\n    include_paths: [tasks]\n    allow_code: true\n    limit: 2\n",
    )
    recipe = repo / "recipe.yaml"
    recipe.write_text(text)
    return recipe


def test_recipe_code_runs_without_the_token_and_the_run_still_pushes(
    tiny_parents, tiny_run, copy_run, local_hub, tmp_path, monkeypatch, capsys
):
    recipe = _spy_recipe(tmp_path, tiny_parents)
    run_dir = copy_run(tiny_run[1])  # merge and weights are current: the eval, card, verify run
    seen_file = tmp_path / "seen.json"
    monkeypatch.setenv("SPY_OUT", str(seen_file))
    monkeypatch.setenv("HF_TOKEN", LOCAL_HUB_TOKEN)
    monkeypatch.setenv("MY_API_KEY", "another-secret-value-1234")
    # the token is also saved where huggingface_hub would find it
    from huggingface_hub import constants

    token_file = Path(constants.HF_TOKEN_PATH)
    token_file.parent.mkdir(parents=True, exist_ok=True)
    token_file.write_text(LOCAL_HUB_TOKEN)

    assert main(["run", str(recipe), "--out", str(run_dir), "--push"]) == 0
    out = capsys.readouterr().out
    assert "in a process without the Hub token" in out and "published:" in out
    seen = json.loads(seen_file.read_text())  # the recipe's code ran ...
    assert seen["pid"] != os.getpid()  # ... in another process ...
    assert seen["token"] is None  # ... where huggingface_hub has no token ...
    assert LOCAL_HUB_TOKEN not in json.dumps(seen)  # ... and nothing in its environment holds it
    assert "another-secret-value-1234" not in json.dumps(seen) and "SPY_OUT" in seen["env"]
    # and this process pushed what the build verified
    assert HfApi().file_exists("tester/tiny-run", "model.safetensors")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["eval"]["status"] == "ok" and manifest["push"]["changed"] is True


def test_only_recipes_that_control_code_build_apart(tiny_run, tiny_parents, tmp_path):
    plain = load_recipe(tiny_run[0])
    assert recipe_code(plain, resolve_settings(plain, Overrides(push=True))) == []
    spy = load_recipe(_spy_recipe(tmp_path, tiny_parents))
    found = recipe_code(spy, resolve_settings(spy, Overrides(push=True)))
    assert len(found) == 1 and "lm-eval tasks" in found[0]


def test_the_childs_environment_holds_no_credential():
    env = child_environment(
        {
            "HF_TOKEN": "hf_write_token_value",
            "HUGGING_FACE_HUB_TOKEN": "hf_write_token_value",
            "GITHUB_TOKEN": "ghs_value_1234567",
            "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
            "HF_READ_TOKEN": "hf_read_only_value",
            "HF_ENDPOINT": "http://127.0.0.1:1",
            "PATH": "/usr/bin",
        }
    )
    assert env["HF_TOKEN"] == "hf_read_only_value"  # for gated parents, as in the build job
    assert {"HUGGING_FACE_HUB_TOKEN", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY"}.isdisjoint(env)
    assert "HF_READ_TOKEN" not in env and env["HF_TOKEN_PATH"] == os.devnull
    assert env["HF_ENDPOINT"] == "http://127.0.0.1:1" and env["PATH"] == "/usr/bin"
    assert "HF_TOKEN" not in child_environment({"HF_TOKEN": "hf_write_token_value"})


# Python runs `sitecustomize` at start-up from its path: here it writes down what a process sees.
PROBE = """\
import json, os, sys
from huggingface_hub import get_token
with open(os.environ["PROBE_OUT"], "w") as handle:
    json.dump({"pid": os.getpid(), "argv": sys.argv, "token": get_token()}, handle)
"""


def test_the_hf_jobs_finish_verifies_without_the_token(tmp_path, monkeypatch):
    """The finish job's verify renders the recipe's card templates: it runs in a child process
    that holds no token, and fails closed (nothing to push) when that child fails."""
    from publisher import jobrun

    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(PROBE)
    monkeypatch.setenv("PYTHONPATH", str(probe))
    monkeypatch.setenv("PROBE_OUT", str(tmp_path / "seen.json"))
    monkeypatch.setenv("HF_TOKEN", LOCAL_HUB_TOKEN)
    monkeypatch.delenv(jobrun.SPEC_ENV, raising=False)  # the child cannot verify: it fails

    assert jobrun._verify_without_token(tmp_path / "run") == 1
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["argv"][1:] == ["verify", str(tmp_path / "run")]
    assert seen["pid"] != os.getpid() and seen["token"] is None
