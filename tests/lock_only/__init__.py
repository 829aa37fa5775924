"""Run Python as the jobs that install only requirements/publish.lock do: `lock_only_env()`
is an environment whose Python can import publisher (this checkout), the standard library and
the lock's packages, and nothing else installed here (see sitecustomize.py beside this file)."""

from __future__ import annotations

import os
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
LOCK = REPO_ROOT / "requirements" / "publish.lock"


def locked_names() -> list[str]:
    """The lock's package names, normalised (`github-action-toolkit`)."""
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", LOCK.read_text(), flags=re.M)
    return [re.sub(r"[-_.]+", "-", name).lower() for name in pins]


def lock_only_env(
    base: dict[str, str] | None = None, source: Path = REPO_ROOT, **extra: str
) -> dict[str, str]:
    """`base` (default: this environment) for a Python that imports publisher from `source`."""
    return {
        **(os.environ if base is None else base),
        "PYTHONPATH": f"{HERE}{os.pathsep}{source}",
        "PUBLISHER_LOCK_ONLY": ",".join(locked_names()),
        **extra,
    }
