"""Every recipe input has a bound: files, aliases, characters, numbers, paths and task code."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from publisher.cli import main
from publisher.recipe import RecipeError, load_recipe
from tests import test_recipe as recipe_tests
from tests.test_recipe import VALID, run_validate


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail the test instead of hanging it."""

    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def only_problem(path: Path, capsys) -> dict:
    with deadline(10):
        code, problems, output = run_validate(path, capsys)
    assert code == 1, output
    assert "Traceback" not in output
    assert len(problems) == 1, output
    return problems[0]


# ---------------------------------------------------------------------------------------------
# the file itself


def test_named_pipe_is_refused_without_blocking(tmp_path, capsys):
    pipe = tmp_path / "pipe.yaml"
    os.mkfifo(pipe)
    problem = only_problem(pipe, capsys)
    assert "not a regular file (it is a named pipe)" in problem["msg"]


def test_link_to_a_device_is_refused(tmp_path, capsys):
    link = tmp_path / "zero.yaml"
    link.symlink_to("/dev/zero")
    problem = only_problem(link, capsys)
    assert "not a regular file (it is a character device)" in problem["msg"]


def test_fifty_megabytes_of_tags_are_refused_by_the_size_limit(write_recipe, capsys):
    path = write_recipe(VALID + "publish:\n  tags:\n")
    with path.open("a", encoding="utf-8") as handle:
        handle.write("    - tag\n" * 5_000_000)
    assert path.stat().st_size > 50_000_000
    problem = only_problem(path, capsys)
    assert (problem["line"], problem["col"]) == ("1", "1")
    assert "recipe is larger than 512 KiB" in problem["msg"]


# ---------------------------------------------------------------------------------------------
# YAML


def alias_bomb(levels: int = 9) -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    return "\n".join(lines[: levels + 1]) + "\n"


def test_alias_bomb_is_refused_at_its_first_alias(write_recipe, capsys):
    text = alias_bomb()
    assert len(text) < 1300
    problem = only_problem(write_recipe(text), capsys)
    assert (problem["line"], problem["col"]) == ("2", "8")
    assert "expand the recipe to more than" in problem["msg"]


def test_alias_cycle_is_refused(write_recipe, capsys):
    problem = only_problem(write_recipe(VALID + "publish:\n  tags: &t [a, *t]\n"), capsys)
    assert problem["line"] == "16"
    assert "refers to a mapping or list that contains it" in problem["msg"]


def test_a_few_aliases_are_fine(write_recipe):
    text = VALID.replace("value: [0, 0.5, 1]", "value: &ramp [0, 0.5, 1]") + (
        "publish:\n  tags: *ramp_names\n".replace("*ramp_names", "[a, b]")
    )
    assert load_recipe(write_recipe(text)).publish.tags == ["a", "b"]


@pytest.mark.parametrize("char", ["\x07", "\x00", "\x1b"])
def test_control_character_is_reported_at_its_own_line(write_recipe, capsys, char):
    text = VALID.replace("dtype: float32", f"dtype: float32{char}")
    problem = only_problem(write_recipe(text), capsys)
    assert (problem["line"], problem["col"]) == ("14", "15")
    assert f"U+{ord(char):04X}" in problem["msg"]


def test_key_with_a_newline_cannot_start_a_workflow_command(write_recipe, capsys, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    path = write_recipe(VALID + '"x\\n::error file=/etc/passwd::pwned 50%": 1\n')
    assert main(["validate", str(path)]) == 1
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).splitlines()
    assert not [line for line in lines if line.startswith("::error file=/etc/passwd")]
    [problem] = [line for line in captured.err.splitlines() if line.startswith(str(path))]
    assert "unknown key 'x\\n::error file=/etc/passwd::pwned 50%'" in problem
    [annotation] = [line for line in captured.out.splitlines() if line.startswith("::error ")]
    # '%' encoded once, as GitHub decodes it
    assert "pwned 50%25'" in annotation


# ---------------------------------------------------------------------------------------------
# numbers and sections that would fail later

LATER = [
    ("shard-size-text", "merge: {out_shard_size: lots}", "out_shard_size 'lots' is not a size"),
    ("shard-size-zero", "merge: {out_shard_size: 0}", "is not a size like 5B"),
    ("shard-size-fraction", "merge: {out_shard_size: 1.5B}", "is not a size like 5B"),
    ("batch-size-zero", "eval: {batch_size: 0}", "from 1 to 4096"),
    ("batch-size-huge", "eval: {batch_size: 100000000}", "from 1 to 4096"),
    ("limit-inf", "eval: {limit: .inf}", "eval limit inf is neither"),
    ("limit-fraction-above-1", "eval: {limit: 2.5}", "eval limit 2.5 is neither"),
    ("fewshot-huge", "eval: {num_fewshot: 100000}", "less than or equal to 100"),
    ("max-new-tokens-huge", "smoke: {max_new_tokens: 1000000000}", "less than or equal to 4096"),
    ("smoke-null", "smoke:", "publish.smoke is empty (null)"),
    ("merge-null", "merge:", "publish.merge is empty (null)"),
    ("chat-template-unknown", "chat_template: chatlm", "mergekit's built-in names (auto, "),
]


@pytest.mark.parametrize(("text", "fragment"), [x[1:] for x in LATER], ids=[x[0] for x in LATER])
def test_numbers_that_would_fail_later_are_refused(write_recipe, capsys, text, fragment):
    body = VALID + "publish:\n  " + text + "\n"
    recipe_tests.test_broken_recipe_is_reported_at_its_line(
        write_recipe, capsys, body, 16, fragment
    )


# ---------------------------------------------------------------------------------------------
# paths stay inside the recipe's repository


@pytest.fixture
def repo(tmp_path: Path, tiny_parents) -> Path:
    """A repository (it has .git) with recipes/, templates/ and tasks/, and a secret outside."""
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    (root / "recipes").mkdir()
    (root / "my-templates").mkdir()
    (root / "my-templates" / "usage.md.j2").write_text("usage\n")
    (root / "tasks").mkdir()
    (root / "tasks" / "plain.yaml").write_text("task: plain\ndataset_path: json\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("hf_SECRET\n")
    return root


def write_in(repo: Path, publish: str, tiny_parents) -> Path:
    base, other = tiny_parents
    path = repo / "recipes" / "recipe.yaml"
    text = VALID.replace("{base}", str(base)).replace("{other}", str(other))
    path.write_text(text + "publish:\n" + publish)
    return path


ESCAPES = [
    ("templates-root", "  templates: /\n", 16),
    ("templates-etc", "  templates: /etc\n", 16),
    ("templates-up", "  templates: ../..\n", 16),
    ("templates-link", "  templates: link-out\n", 16),
    ("include-etc", "  eval:\n    include_paths: [../tasks, /etc]\n", 17),
    ("include-link", "  eval:\n    include_paths:\n      - link-out\n", 18),
    ("task-yaml-up", "  eval:\n    tasks: [../../outside/x.yaml]\n", 17),
    ("chat-template-up", "  chat_template: ../../outside/chat.jinja\n", 16),
]


@pytest.mark.parametrize(("publish", "line"), [e[1:] for e in ESCAPES], ids=[e[0] for e in ESCAPES])
def test_paths_leaving_the_repository_are_refused(repo, tiny_parents, capsys, publish, line):
    (repo / "recipes" / "link-out").symlink_to(repo.parent / "outside")
    path = write_in(repo, publish, tiny_parents)
    problem = only_problem(path, capsys)
    assert int(problem["line"]) == line, problem
    assert "leaves the recipe's repository" in problem["msg"]


def test_paths_inside_the_repository_pass(repo, tiny_parents, capsys):
    (repo / "chat.jinja").write_text("{{ messages }}")
    publish = (
        "  templates: ../my-templates\n  chat_template: ../chat.jinja\n"
        "  eval:\n    include_paths: [../tasks]\n    tasks: [plain, ../tasks/plain.yaml]\n"
    )
    code, problems, output = run_validate(write_in(repo, publish, tiny_parents), capsys)
    assert code == 0, output


def test_chat_template_file_is_read_from_inside_the_repository(repo):
    from publisher.recipe_paths import PathError, chat_template_text

    (repo / "chat.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    recipes = repo / "recipes"
    assert chat_template_text("../chat.jinja", recipes).startswith("{% for m in messages %}")
    assert chat_template_text("chatml", recipes) == "chatml"
    (recipes / "out.jinja").symlink_to(repo.parent / "outside" / "secret.txt")
    with pytest.raises(PathError, match="outside the repository"):
        chat_template_text("out.jinja", recipes)


def test_template_linking_out_is_refused_by_validate_and_by_the_loader(repo, tiny_parents, capsys):
    from publisher.card import _environment
    from publisher.recipe_paths import PathError

    secret = repo.parent / "outside" / "secret.txt"
    (repo / "my-templates" / "modelcard.md.j2").symlink_to(secret)
    path = write_in(repo, "  templates: ../my-templates\n", tiny_parents)
    problem = only_problem(path, capsys)
    assert problem["line"] == "16"
    assert "is a link out of the repository" in problem["msg"]
    # the same check where the card is rendered, whatever validate saw
    env = _environment(repo / "my-templates")
    assert env.get_template("usage.md.j2").render() == "usage\n"
    with pytest.raises(PathError, match="modelcard.md.j2.*outside the repository"):
        env.get_template("modelcard.md.j2")


# ---------------------------------------------------------------------------------------------
# code in custom lm-eval tasks

CODE_TASK = "task: hooked\ndataset_path: json\nprocess_docs: !function utils.process_docs\n"


@pytest.mark.parametrize(
    ("files", "publish", "line", "fragment"),
    [
        (
            {"hooked.yaml": CODE_TASK},
            "    include_paths: [../tasks]\n",
            17,
            "hooked.yaml:3: !function",
        ),
        ({"utils.py": "x = 1\n"}, "    include_paths: [../tasks]\n", 17, "utils.py: a Python file"),
        (
            {"remote.yaml": "task: r\ndataset_kwargs: {trust_remote_code: true}\n"},
            "    include_paths: [../tasks]\n",
            17,
            "dataset_kwargs.trust_remote_code",
        ),
        ({"hooked.yaml": CODE_TASK}, "    tasks: [../tasks/hooked.yaml]\n", 17, "!function"),
        (
            {"plain.yaml": "task: p\ninclude: sub/base.yaml\n", "sub/base.yaml": CODE_TASK},
            "    tasks: [../tasks/plain.yaml]\n",
            17,
            "base.yaml:3: !function",
        ),
        (
            {"loader.yaml": "task: l\nclass: !!python/name:os.system\n"},
            "    include_paths: [../tasks]\n",
            17,
            "tag:yaml.org,2002:python/name:os.system",
        ),
    ],
    ids=[
        "function-tag",
        "python-file",
        "remote-dataset-code",
        "task-file",
        "include",
        "python-tag",
    ],
)
def test_task_code_is_refused_unless_allowed(
    repo, tiny_parents, capsys, files, publish, line, fragment
):
    for name, text in files.items():
        (repo / "tasks" / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / "tasks" / name).write_text(text)
    path = write_in(repo, "  eval:\n" + publish, tiny_parents)
    problem = only_problem(path, capsys)
    assert int(problem["line"]) == line, problem
    assert fragment in problem["msg"] and "publish.eval.allow_code: true" in problem["msg"]
    allowed = write_in(repo, "  eval:\n    allow_code: true\n" + publish, tiny_parents)
    assert run_validate(allowed, capsys)[0] == 0


def test_task_include_leaving_the_repository_is_refused(repo, tiny_parents, capsys):
    (repo.parent / "outside" / "evil.yaml").write_text(CODE_TASK)
    (repo / "tasks" / "inc.yaml").write_text("task: i\ninclude: ../../outside/evil.yaml\n")
    publish = "  eval:\n    allow_code: true\n    tasks: [../tasks/inc.yaml]\n"
    problem = only_problem(write_in(repo, publish, tiny_parents), capsys)
    assert problem["line"] == "18"
    assert "include" in problem["msg"] and "outside the repository" in problem["msg"]


@pytest.mark.parametrize(
    ("task", "line", "fragment"),
    [
        ("dataset_kwargs:\n  data_files: /etc/passwd\n", 4, "data_files '/etc/passwd'"),
        (
            "dataset_kwargs:\n  data_files:\n    test: [ok.jsonl, ../../outside/secret.txt]\n",
            5,
            "'..'",
        ),
        ("dataset_kwargs:\n  data_files: {test: link-out/secret.txt}\n", 4, "outside the"),
        ("dataset_kwargs:\n  data_dir: ~/.cache/huggingface\n", 4, "data_dir"),
    ],
    ids=["absolute", "climbs-out", "link-out", "data-dir-home"],
)
def test_task_data_files_leaving_the_repository_are_refused(
    repo, tiny_parents, capsys, task, line, fragment
):
    (repo / "tasks" / "link-out").symlink_to(repo.parent / "outside")
    (repo / "tasks" / "data.yaml").write_text("task: d\ndataset_path: json\n" + task)
    # a task file, not a directory: the directory's own link check does not run first
    problem = only_problem(
        write_in(repo, "  eval:\n    tasks: [../tasks/data.yaml]\n", tiny_parents), capsys
    )
    assert problem["line"] == "17", problem  # the recipe's tasks entry
    assert f"data.yaml:{line}:" in problem["msg"] and fragment in problem["msg"], problem
    assert "keep task data inside the repository" in problem["msg"]
    # and again where the eval reads the tasks, with or without allow_code
    from publisher.evaluate import EvalError, _include_paths
    from publisher.recipe import EvalSettings

    settings = EvalSettings(tasks=[str(repo / "tasks" / "data.yaml")], allow_code=True)
    with pytest.raises(EvalError, match="data.yaml"):
        _include_paths(settings)


def test_task_data_inside_the_repository_or_remote_passes(repo, tiny_parents, capsys):
    (repo / "tasks" / "data").mkdir()
    (repo / "tasks" / "data.yaml").write_text(
        "task: d\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        "    test: data/test.jsonl\n    train: hf://datasets/me/d/train.jsonl\n"
    )
    path = write_in(repo, "  eval:\n    include_paths: [../tasks]\n", tiny_parents)
    assert run_validate(path, capsys)[0] == 0


def test_lm_eval_prompt_templates_cannot_reach_python(tmp_path, monkeypatch):
    """A custom task's prompt template is code too: lm-eval renders it with a plain Jinja
    environment, so `doc_to_text` could read the environment with allow_code off. The eval
    stage renders prompts in Jinja's sandbox instead."""
    from jinja2 import BaseLoader, Environment, StrictUndefined
    from jinja2.exceptions import SecurityError
    from lm_eval import utils

    from publisher.evaluate import EvalError, run_eval
    from publisher.recipe import EvalSettings

    hostile = "{{ cycler.__init__.__globals__.os.environ }}"
    monkeypatch.setattr(utils, "env", Environment(loader=BaseLoader, undefined=StrictUndefined))
    assert "PATH" in utils.apply_template(hostile, {})  # lm-eval's own environment: Python
    with pytest.raises(EvalError, match="unknown eval backend"):
        run_eval(tmp_path, EvalSettings(tasks=["x"]), tmp_path / "out", backend="none")
    with pytest.raises(SecurityError):
        utils.apply_template(hostile, {})
    # lm-eval's own kind of template still renders, its regex_replace filter included
    template = "Q: {{question}}{{ ' A-B' | regex_replace('-', '+') }}\n"
    assert utils.apply_template(template, {"question": "x"}) == "Q: x A+B\n"


def test_eval_stage_checks_task_code_again(repo):
    from publisher.evaluate import EvalError, _include_paths
    from publisher.recipe import EvalSettings

    (repo / "tasks" / "hooked.yaml").write_text(CODE_TASK)
    settings = EvalSettings(include_paths=[str(repo / "tasks")])
    with pytest.raises(EvalError, match="allow_code"):
        _include_paths(settings)
    assert _include_paths(settings.model_copy(update={"allow_code": True})) == [repo / "tasks"]


def test_validate_markdown_carries_the_problems_into_the_preview_comment(
    repo, tiny_parents, tmp_path, capsys
):
    import subprocess

    (repo / "tasks" / "hooked.yaml").write_text(CODE_TASK)
    path = write_in(repo, "  eval:\n    include_paths: [../tasks]\n", tiny_parents)
    previews = tmp_path / "previews" / "recipe"
    previews.mkdir(parents=True)
    markdown = previews / "problems.md"
    assert main(["validate", str(path), "--markdown", str(markdown)]) == 1
    capsys.readouterr()
    # what recipe-pr.yml's failure note writes
    (previews / "failed.md").write_text("### recipe failed\n\n" + markdown.read_text())
    script = Path(__file__).resolve().parent.parent / ".github" / "scripts" / "preview-comment.sh"
    comment = subprocess.run(
        ["bash", str(script), str(previews.parent)], capture_output=True, text=True, check=True
    ).stdout
    assert f"{path}:17:" in comment
    assert "publish.eval.allow_code: true" in comment


def test_recipe_error_is_a_publisher_error():
    from publisher.errors import PublisherError

    assert issubclass(RecipeError, PublisherError)


def test_preview_workflow_puts_the_problems_in_its_failure_note():
    import yaml

    workflow = Path(__file__).resolve().parent.parent / ".github" / "workflows" / "recipe-pr.yml"
    steps = {
        s.get("name"): s for s in yaml.safe_load(workflow.read_text())["jobs"]["preview"]["steps"]
    }
    assert '--markdown "$OUT/problems.md"' in steps["Validate"]["run"]
    assert 'cat "$OUT/problems.md"' in steps["Note the failure for the comment"]["run"]


def test_names_and_paths_hold_no_control_characters(write_recipe, capsys):
    text = VALID.replace("base_model: {base}", 'base_model: "{base}\\n::error::x"')
    problem = only_problem(write_recipe(text + "publish:\n  tags: [ok]\n"), capsys)
    assert problem["line"] == "8" and "holds a control character" in problem["msg"]
    problem = only_problem(write_recipe(VALID + 'publish:\n  tags: [ok, "a\\tb"]\n'), capsys)
    assert (problem["line"], problem["col"]) == ("16", "14")  # the second tag


def test_cli_errors_escape_what_they_quote(capsys):
    from publisher.console import err

    err("error: parent 'x\n::error file=/etc/passwd::y' \x1b[2J not found")
    err = capsys.readouterr().err
    assert err == "error: parent 'x\\n::error file=/etc/passwd::y' \\x1b[2J not found\n"
