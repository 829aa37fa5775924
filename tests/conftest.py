"""Shared fixtures: the tiny parents (built once per test session) and recipe files."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_parents(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The two tiny Mistral parents (base, other), built once per session."""
    from publisher.tiny import build_tiny_parents

    return build_tiny_parents(tmp_path_factory.mktemp("tiny-parents"))


@pytest.fixture
def write_recipe(tmp_path: Path, tiny_parents: tuple[Path, Path]):
    """Write a recipe file; `{base}` and `{other}` are replaced by the tiny parents' paths."""

    def write(text: str, name: str = "recipe.yaml") -> Path:
        base, other = tiny_parents
        path = tmp_path / name
        body = textwrap.dedent(text).replace("{base}", str(base)).replace("{other}", str(other))
        path.write_text(body, encoding="utf-8")
        return path

    return write
