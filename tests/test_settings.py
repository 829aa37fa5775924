"""Settings are resolved once: defaults < recipe < flags, and recorded for verify and push."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_SLERP

from publisher.errors import PublisherError
from publisher.recipe import load_recipe
from publisher.settings import (
    DEFAULT_STAGES,
    Overrides,
    Settings,
    push_target,
    read_settings,
    resolve_settings,
)

RECIPE = (
    TINY_SLERP
    + """\
dtype: float32
publish:
  repo_id: tester/from-recipe
"""
)


@pytest.fixture
def recipe_with(write_recipe):
    """A loaded recipe whose publish block has these extra lines (2-space indented)."""

    def make(publish: str = ""):
        return load_recipe(write_recipe(RECIPE + publish))

    return make


def test_defaults_when_neither_recipe_nor_flags_say(recipe_with):
    settings = resolve_settings(recipe_with())
    assert settings.stages == DEFAULT_STAGES and not settings.push
    assert settings.device == "cpu" and not settings.merge.cuda
    assert settings.hub.model_dump() == {
        "repo_id": "tester/from-recipe",
        "create_pr": False,
        "private": False,
        "revision": None,
    }
    assert settings.eval.suite is None and settings.templates_dir is None


@pytest.mark.parametrize(
    ("given", "push", "stages"),
    [
        (Overrides(), True, (*DEFAULT_STAGES, "push")),  # the recipe's push: true
        (Overrides(stages="card,verify"), False, ("card", "verify")),  # stages chosen by hand
        (Overrides(push=False), False, DEFAULT_STAGES),
        (Overrides(push=False, stages="verify,push"), False, ("verify",)),  # --no-push wins
        (Overrides(push=True, stages="merge"), True, ("merge", "push")),
        (Overrides(stages="push"), True, ("push",)),
    ],
)
def test_push_is_decided_here_once(recipe_with, given, push, stages):
    settings = resolve_settings(recipe_with("  push: true\n"), given)
    assert (settings.push, settings.stages) == (push, stages)


def test_flags_win_over_the_recipe_and_the_recipe_over_defaults(recipe_with, tmp_path):
    for folder in ("my-templates", "tasks", "cli-templates"):
        (tmp_path / folder).mkdir()
    recipe = recipe_with(
        "  create_pr: true\n  private: true\n  templates: my-templates\n"
        "  eval: {tasks: [a_task], limit: 5, include_paths: [tasks]}\n"
        "  merge: {cuda: true, out_shard_size: 2B}\n"
    )
    from_recipe = resolve_settings(recipe)
    assert from_recipe.hub.create_pr and from_recipe.hub.private
    assert from_recipe.merge.cuda and from_recipe.device == "cpu"
    assert from_recipe.eval.include_paths == [str((recipe.path.parent / "tasks").resolve())]
    assert from_recipe.templates_dir == str((recipe.path.parent / "my-templates").resolve())

    flags = Overrides(
        device="cpu",
        repo_id="tester/from-flag",
        create_pr=False,
        private=False,
        templates_dir=str(tmp_path / "cli-templates"),
        eval_suite="tiny",
        eval_limit=2,
        eval_backend="vllm",
        merge={"out_shard_size": "200K"},
    )
    settings = resolve_settings(recipe, flags)
    assert settings.hub.repo_id == "tester/from-flag"
    assert not settings.hub.create_pr and not settings.hub.private
    assert not settings.merge.cuda  # --device cpu moves the merge too
    assert settings.merge.out_shard_size == "200K"
    # A suite on the command line replaces the recipe's task list.
    assert (settings.eval.suite, settings.eval.tasks, settings.eval.limit) == ("tiny", [], 2)
    assert settings.eval.backend == "vllm"
    assert settings.templates_dir == str((tmp_path / "cli-templates").resolve())
    # The card stage, given a flag or not, picks the directory these settings record.
    from publisher.card import resolve_templates_dir

    assert str(resolve_templates_dir(recipe)) == from_recipe.templates_dir
    assert str(resolve_templates_dir(recipe, tmp_path / "cli-templates")) == settings.templates_dir


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (Overrides(stages="merge,polish"), "unknown stage(s) polish"),
        (Overrides(stages=""), "no stage given"),
        (Overrides(eval_suite="openlm-v1"), "Did you mean 'openllm-v1'"),
        (Overrides(eval_backend="tpu"), "invalid eval option"),
        (Overrides(device="tpu"), "device"),
        (Overrides(merge={"out_shard_size": {"a": 1}}), "invalid merge option"),
    ],
)
def test_bad_flags_are_one_plain_error(recipe_with, given, message):
    with pytest.raises(PublisherError) as info:
        resolve_settings(recipe_with(), given)
    assert message in str(info.value)


def test_settings_round_trip_through_the_manifest(recipe_with, tmp_path):
    settings = resolve_settings(recipe_with("  create_pr: true\n"), Overrides(eval_suite="tiny"))
    manifest = tmp_path / "manifest.json"
    assert read_settings(manifest) is None
    manifest.write_text(json.dumps({"settings": settings.model_dump(mode="json")}))
    assert read_settings(manifest) == settings
    with pytest.raises(Exception):  # noqa: B017 (frozen: no stage may change them)
        settings.push = True  # type: ignore[misc]
    assert isinstance(settings, Settings)
    target = push_target(manifest)
    assert (target.repo_id, target.create_pr) == ("tester/from-recipe", True)
    again = push_target(manifest, Overrides(repo_id="tester/other", create_pr=False))
    assert (again.repo_id, again.create_pr) == ("tester/other", False)
    with pytest.raises(PublisherError, match="no repo id"):
        push_target(tmp_path / "missing.json")


@pytest.mark.parametrize("command", [["run", "recipes/x.yaml"], ["push", "runs/x"]])
def test_run_and_push_take_the_same_push_target_flags(command):
    # Declared once for both commands: `None` where not given, so settings weighs them.
    from publisher.cli import build_parser

    parser = build_parser()
    for flags, expected in (
        ([], (None, None, None)),
        (["--repo-id", "tester/x", "--create-pr", "--private"], ("tester/x", True, True)),
        (["--no-create-pr", "--no-private"], (None, False, False)),
    ):
        args = parser.parse_args([*command, *flags])
        assert (args.repo_id, args.create_pr, args.private) == expected
