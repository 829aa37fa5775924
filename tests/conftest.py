"""Shared fixtures: the tiny parents (built once per test session) and recipe files."""

from __future__ import annotations

import os
import tempfile
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# The models here are tiny: torch's intra-op threads cost more CPU than they save (spinning,
# and more so on a loaded 2-core machine or beside another pytest-xdist worker). Set before
# torch is imported; job subprocesses of the local Hub inherit it (`jobrunner._PASSTHROUGH_ENV`).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Local-parent digests are cached per user; tests keep theirs out of ~/.cache.
os.environ.setdefault("PUBLISHER_CACHE_DIR", tempfile.mkdtemp(prefix="publisher-cache-"))

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_HUB_TOKEN = "hf_sentinel_do_not_print_4242"
"""The one token the tests' local Hub accepts (`local_hub`); it must appear nowhere."""


def quiet(_: str) -> None:
    """A `log` that prints nothing."""
    return None


@pytest.fixture
def backoff_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Make huggingface_hub's retry backoff (1 s, then 2, 4, ...) instant; the list records the
    sleeps it asked for."""
    from types import SimpleNamespace

    from huggingface_hub.utils import _http

    sleeps: list[float] = []
    monkeypatch.setattr(_http, "time", SimpleNamespace(sleep=sleeps.append))
    return sleeps


@pytest.fixture
def local_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backoff_sleeps: list[float]):
    """A local Hub (accepting only LOCAL_HUB_TOKEN) with huggingface_hub pointed at it and
    instant retries (publisher's and huggingface_hub's)."""
    from publisher import hubretry
    from publisher.hubserver import LocalHub, hub_client_env

    monkeypatch.setattr(hubretry, "RETRY_DELAYS", (0.05, 0.1, 0.2))
    server = LocalHub(tmp_path / "hub-data", token=LOCAL_HUB_TOKEN, user="tester").start()
    try:
        with hub_client_env(server.endpoint, token=LOCAL_HUB_TOKEN, hf_home=tmp_path / "hf-home"):
            yield server
    finally:
        server.stop(wait=False)  # about 0.2 s a test: uvicorn's thread ends on its own


@pytest.fixture(scope="session")
def tiny_parents(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The two tiny Mistral parents (base, other), built once per session."""
    from publisher.tiny import build_tiny_parents

    return build_tiny_parents(tmp_path_factory.mktemp("tiny-parents"))


@pytest.fixture(scope="session")
def arch_parents(tmp_path_factory: pytest.TempPathFactory):
    """`arch_parents(arch) -> (base, other)`: two tiny parents of one architecture of
    `publisher.tiny_archs.ARCHITECTURES`, each pair built once per session."""
    from publisher.tiny_archs import build_arch_parents

    root = tmp_path_factory.mktemp("arch-parents")
    return lambda arch: build_arch_parents(root, arch)


TWO_PARENT_RECIPE = """\
models:
  - model: {base}
  - model: {other}
merge_method: slerp
base_model: {base}
parameters:
  t: 0.5
dtype: float32
"""
"""The plainest SLERP recipe (the `models:` form): fill in `{base}` and `{other}`."""


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


# The SLERP part of the tiny recipes: four layers, a schedule per filter and a fallback.
TINY_SLERP = """\
slices:
  - sources:
      - model: {base}
        layer_range: [0, 4]
      - model: {other}
        layer_range: [0, 4]
merge_method: slerp
base_model: {base}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
"""

TINY_RUN_RECIPE = (
    TINY_SLERP
    + """\
dtype: float32
publish:
  repo_id: tester/tiny-run
  license: apache-2.0
  smoke:
    max_new_tokens: 8
  eval:
    tasks: [publisher_tiny_qa]
    limit: 10
"""
)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_parents) -> tuple[Path, Path, str]:
    """One complete, verified `publisher run` of a tiny recipe: (recipe, run dir, stdout).

    Shared by the whole session: tests that change a run work on a copy (`copy_run`).
    """
    import contextlib
    import io

    from publisher.cli import main

    base, other = tiny_parents
    root = tmp_path_factory.mktemp("tiny-run")
    recipe = root / "tiny-run.yaml"
    recipe.write_text(TINY_RUN_RECIPE.replace("{base}", str(base)).replace("{other}", str(other)))
    run_dir = root / "run"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["run", str(recipe), "--out", str(run_dir)])
    assert code == 0, buffer.getvalue()
    return recipe, run_dir, buffer.getvalue()


@pytest.fixture
def copy_run(tmp_path: Path):
    """Copy a run directory to where a test may change it: `copy_run(run_dir) -> Path`."""
    import shutil

    def copy(run_dir: Path, name: str = "run") -> Path:
        return Path(shutil.copytree(run_dir, tmp_path / name))

    return copy
