"""The push job's hash-pinned lock: consistent with pyproject.toml and enough for a push."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LOCAL_HUB_TOKEN
from huggingface_hub import HfApi
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.lock_only import lock_only_env

# tomllib is Python 3.11+; the project supports 3.10, where this module is skipped.
tomllib = pytest.importorskip("tomllib")

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCK_IN = REPO_ROOT / "requirements" / "publish.in"
LOCK = REPO_ROOT / "requirements" / "publish.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def _requirements(lines: list[str]) -> dict[str, Requirement]:
    reqs = (Requirement(line.split("#")[0].strip()) for line in lines)
    return {canonicalize_name(r.name): r for r in reqs}


def _pyproject() -> dict[str, Requirement]:
    data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return _requirements(data["project"]["dependencies"])


def _inputs() -> dict[str, Requirement]:
    lines = LOCK_IN.read_text(encoding="utf-8").splitlines()
    return _requirements([ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")])


def _lock() -> dict[str, tuple[str, list[str]]]:
    """`{name: (version, [sha256, ...])}` of the lock; every pin with its hashes."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        if m := PIN.match(line):
            current = canonicalize_name(m.group(1))
            pins[current] = (m.group(2), [])
        elif (h := re.search(r"--hash=sha256:([0-9a-f]{64})", line)) and current:
            pins[current][1].append(h.group(1))
        elif line.strip() and not line.lstrip().startswith("#"):
            raise AssertionError(f"unexpected line in {LOCK.name}: {line!r}")
    return pins


def test_every_pin_has_hashes_and_agrees_with_pyproject():
    pins, project, inputs = _lock(), _pyproject(), _inputs()
    assert pins and all(hashes for _, hashes in pins.values()), "pins without --hash"
    for name, req in inputs.items():
        assert name in project, f"{name}: in publish.in but not a dependency in pyproject.toml"
        assert req.specifier == project[name].specifier, f"{name}: specifiers differ"
        assert name in pins, f"{name}: not pinned; run 'make lock'"
    for name, (version, _) in pins.items():
        if name in project:
            assert project[name].specifier.contains(version, prereleases=True), (
                f"{name}=={version} in the lock breaks pyproject.toml's {project[name]}; "
                "run 'make lock'"
            )
    assert not {"torch", "mergekit", "transformers", "lm-eval"} & set(pins)


def test_a_push_needs_only_the_locked_packages(tiny_run, local_hub, tmp_path):
    """`python -m publisher push` (what the push job runs) works with only the lock installed,
    in GitHub Actions: the masks, outputs and summary too."""
    outputs = tmp_path / "outputs"
    env = lock_only_env(
        HF_TOKEN=LOCAL_HUB_TOKEN,
        GITHUB_ACTIONS="true",
        GITHUB_OUTPUT=str(outputs),
        GITHUB_STEP_SUMMARY=str(tmp_path / "summary.md"),
    )
    argv = ["push", str(tiny_run[1]), "--repo-id", "tester/lock"]
    done = subprocess.run(
        [sys.executable, "-m", "publisher", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "published:" in done.stdout and "::add-mask" in done.stdout
    assert "repo_url" in outputs.read_text()
    assert HfApi().file_exists("tester/lock", "model.safetensors")


def test_the_lock_only_python_refuses_other_packages():
    """The stand-in for the push job's environment does refuse what the lock lacks."""
    done = subprocess.run(
        [sys.executable, "-c", "import mergekit"],
        env=lock_only_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "not in requirements/publish.lock" in done.stderr
